"""The core package never imports torch, transformers or jax (they are optional); the JAX helper
module itself imports no jax (it works on whatever arrays it is given)."""

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow
def test_core_modules_do_not_import_torch_transformers_or_jax():
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import simfluence_cli, simfluence_cli.integrations
        skipped = {"simfluence_cli.integrations.pytorch", "simfluence_cli.integrations.huggingface"}
        for m in pkgutil.walk_packages(simfluence_cli.__path__, "simfluence_cli."):
            if m.name in skipped or m.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(m.name)
            except ImportError as e:  # a module needing another optional extra
                assert "torch" not in str(e) and "transformers" not in str(e), (m.name, e)
        import simfluence_cli.integrations.jax  # walked above too: no jax, no optax
        banned = ("torch", "transformers", "jax", "jaxlib", "optax")
        bad = sorted(k for k in sys.modules if k.split(".")[0] in banned)
        assert not bad, bad[:5]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")

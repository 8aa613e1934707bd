"""The core package never imports torch or transformers (they are optional extras)."""

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow
def test_core_modules_do_not_import_torch_or_transformers():
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
        bad = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "transformers"))
        assert not bad, bad[:5]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")

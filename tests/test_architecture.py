"""The package's layer contracts (pyproject.toml [tool.importlinter]) hold: checked by
import-linter itself, not by a hand-written graph walk."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run(
        [str(exe), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_importing_the_package_loads_no_heavy_dependency():
    code = (
        "import sys, simfluence_cli; "
        "print(','.join(m for m in ('pyarrow', 'scipy', 'torch', 'pandas') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ""


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(args):
    exe = Path(sys.executable).with_name("ruff")
    if not exe.exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    r = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

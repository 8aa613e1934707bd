"""Every example in README.md and docs/*.md runs, against a store built like `make demo`'s.

Code blocks tagged ``sh``/``bash`` run as bash scripts (``set -euo pipefail``), ``python`` blocks
with this interpreter, and ``console`` blocks command by command (``$ cmd``; an example whose
shown output starts with ``error:`` must fail, every other one must succeed). Each block runs in
its own copy of a working directory holding ``demo-store/`` and ``sample_runs/``, so blocks cannot
depend on each other. A block whose info string says ``no-test (reason)`` is skipped with that
reason (e.g. commands for a Dask cluster); everything else must run. docs/cli-reference.md is
checked to be what ``docs/cli_reference.py`` generates from the commands' ``--help``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```([\w-]*)([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
RUNNABLE = {"sh", "bash", "python", "console"}
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _blocks():
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            lang, info, body = m.group(1), m.group(2).strip(), m.group(3)
            if lang not in RUNNABLE:
                continue
            line = text.count("\n", 0, m.start()) + 1
            yield pytest.param(lang, info, body, id=f"{page.relative_to(ROOT)}:{line}")


def _env(work: Path) -> dict:
    env = dict(os.environ)
    env.pop("SIMFLUENCE_STORE", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "120"
    env["HOME"] = str(work)  # nothing an example writes lands outside its directory
    env["TMPDIR"] = str(work / "tmp")
    return env


def _sf(*args: str, cwd: Path) -> None:
    r = subprocess.run(
        [str(BIN / "simfluence"), "-q", *args], cwd=cwd, capture_output=True, text=True
    )
    assert r.returncode == 0, f"simfluence {' '.join(args)}: {r.stderr}"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A directory like the checkout after `make demo`: sample_runs/ and demo-store/."""
    d = tmp_path_factory.mktemp("demo")
    (d / "sample_runs").symlink_to(ROOT / "sample_runs")
    for fam in ("fit", "heldout-random", "heldout-leave30", "heldout-classordered"):
        _sf("ingest", f"sample_runs/{fam}", "--tag", fam, "--store", "demo-store", cwd=d)
    _sf(
        "fit",
        *("--store", "demo-store", "--runs", "fit", "--method", "linear", "--l2", "auto"),
        *("--name", "linear"),
        cwd=d,
    )
    _sf(
        "import-scores",
        "sample_runs/tracin_scores.csv.gz",
        "--store",
        "demo-store",
        "--name",
        "tracin",
        "--scale",
        "fit",
        "--runs",
        "fit",
        cwd=d,
    )
    return d


def _work(demo_dir: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "tmp").mkdir()
    (work / "sample_runs").symlink_to(ROOT / "sample_runs")
    shutil.copytree(demo_dir / "demo-store", work / "demo-store", symlinks=True)
    (work / ".venv").symlink_to(BIN.parent)  # examples may say .venv/bin/simfluence
    return work


@pytest.mark.parametrize(("lang", "info", "body"), list(_blocks()))
def test_documented_example_runs(lang, info, body, demo_dir, tmp_path):
    if "no-test" in info:
        reason = info.split("no-test", 1)[1].strip(" ()") or "marked no-test"
        pytest.skip(reason)
    work = _work(demo_dir, tmp_path)
    env = _env(work)
    if lang == "python":
        cmds = [([sys.executable, "-c", body], False)]
    elif lang == "console":
        lines = body.splitlines()
        cmds = []
        for i, ln in enumerate(lines):
            if not ln.startswith("$ ") or ln.strip() == "$ echo $?":
                continue
            out = lines[i + 1] if i + 1 < len(lines) else ""
            cmds.append((["bash", "-c", ln[2:]], out.startswith("error:")))
    else:
        cmds = [(["bash", "-c", "set -euo pipefail\n" + body], False)]
    for argv, must_fail in cmds:
        r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        shown = f"{argv[-1]}\n--- stdout\n{r.stdout[-2000:]}\n--- stderr\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, shown
        if must_fail:
            assert r.returncode != 0, shown
        else:
            assert r.returncode == 0, shown


def test_cli_reference_is_current():
    r = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_dotted_references_to_the_package_resolve():
    """Every ``simfluence_cli.a.b`` named in a docstring, comment or doc page is a module or
    an attribute of one (docstrings named modules that had moved: simfluence_cli.models,
    simfluence_cli.curriculum, simfluence_cli.evaluation, ...)."""
    import importlib

    files = [*ROOT.glob("simfluence_cli/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]
    broken = []
    for f in files:
        for no, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            for ref in re.findall(r"\bsimfluence_cli(?:\.[A-Za-z_]\w*)+", line):
                parts = ref.split(".")
                for i in range(len(parts), 0, -1):  # the longest importable prefix
                    try:
                        obj = importlib.import_module(".".join(parts[:i]))
                    except ImportError:
                        continue
                    for attr in parts[i:]:
                        obj = getattr(obj, attr, None)
                    break
                if obj is None:
                    broken.append(f"{f.relative_to(ROOT)}:{no}: {ref}")
    assert not broken, "\n".join(broken)

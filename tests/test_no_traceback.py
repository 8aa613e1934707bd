"""No traceback, ever, from ordinary misuse: every subcommand, run against a --store that
cannot be created (under a regular file, under /proc), non-UTF-8 input files, a read-only
store, and Ctrl-C at several moments (a real subprocess), prints one error line and exits
1, 2 or 130 (reads of a read-only store still work)."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.store.run_store import RunStore

BIN = Path(sys.executable).parent / "simfluence"
SF = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "simfluence_entry"]

# every subcommand with arguments that are valid against the fixture store; {s} = store,
# {cur} = a curriculum file, {scores} = a score table, {ids} = an ID list file
COMMANDS = {
    "ingest": ["ingest", "{logs}", "--store", "{s}"],
    "info": ["info", "--store", "{s}"],
    "fit": ["fit", "--store", "{s}", "--l2", "0.1", "-n", "m2"],
    "simulate": ["simulate", "{cur}", "--store", "{s}", "-m", "m", "-f", "csv"],
    "curriculum": ["curriculum", "syn-000", "--store", "{s}"],
    "eval": ["eval", "--store", "{s}", "-m", "m", "--allow-fitting-runs", "-f", "csv"],
    "import-scores": ["import-scores", "{scores}", "--store", "{s}", "-n", "x", "--scale", "1"],
    "top": ["top", "--store", "{s}", "-m", "m", "-f", "csv"],
    "plot": ["plot", "--store", "{s}", "-m", "m", "--run", "syn-000"],
    "whatif": ["whatif", "--store", "{s}", "-m", "m", "-b", "{cur}", "--drop", "e0", "-f", "csv"],
    "groups": ["groups", "--store", "{s}", "-m", "m", "-b", "{cur}", "-g", "@{ids}", "-f", "csv"],
    "design": [
        "design",
        "--store",
        "{s}",
        "-m",
        "m",
        "--steps",
        "3",
        "--pool",
        "@{ids}",
        "-o",
        "-",
    ],
    "verify": ["verify", "--store", "{s}"],
    "plan": ["plan", "--store", "{s}", "-n", "2", "--steps", "3"],
    "calibrate": ["calibrate", "--store", "{s}", "-m", "m"],
}
WRITES = {"ingest", "fit", "import-scores", "calibrate"}


def test_every_subcommand_is_swept():
    import typer.main

    assert set(typer.main.get_command(app).commands) == set(COMMANDS)


def _files(root: Path, utf8: bool = True) -> dict:
    bad = b"\xff\xfe\x00bad \xe9\n"
    f = {}
    f["cur"] = root / "cur.txt"
    f["cur"].write_bytes(b"e0 e1\ne2 e3\n" if utf8 else bad)
    f["ids"] = root / "ids.txt"
    f["ids"].write_bytes(b"e0\ne1\n" if utf8 else bad)
    f["scores"] = root / "scores.csv"
    f["scores"].write_bytes(
        b"test_id,example_id,score\nt0,e0,0.1\n"
        if utf8
        else b"test_id,example_id,score\nt\xff,e0,1\n"
    )
    f["logs"] = root / ("run.jsonl" if utf8 else "bad.jsonl")
    if not utf8:
        f["logs"].write_bytes(bad)
    return f


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory):
    root = Path(tempfile.mkdtemp(prefix="sf-notb-"))  # world-readable: see the read-only test
    os.chmod(root, 0o755)
    store = root / "store"
    rs, _, _ = make_runs(6, 2, 3, 8, 2, seed=1)
    RunStore(store, create=True).add_runset(rs, tags=["fit"])
    r = CliRunner().invoke(app, ["fit", "--store", str(store), "--l2", "0.1", "-n", "m"])
    assert r.exit_code == 0, r.stderr
    logs = root / "run.jsonl"
    from simfluence_cli.io.run_logger import RunLogger

    with RunLogger(str(logs), test_ids=["t0", "t1"]) as log:
        log.initial([1.0, 2.0])
        log.step(["e0", "e1"], [0.9, 1.9])
    yield root, store
    shutil.rmtree(root, ignore_errors=True)


def _args(name, **kw):
    return [a.format(**{k: str(v) for k, v in kw.items()}) for a in COMMANDS[name]]


def _assert_clean(r, name, codes=(1, 2, 130)):
    out = (r.stderr or "") + (r.stdout or "")
    assert "Traceback" not in out, (name, out)
    assert r.exit_code in codes, (name, r.exit_code, out)
    if r.exit_code:
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith(("error:", "Error"))]
        assert errors or "Usage:" in r.stderr, (name, r.stderr)


@pytest.mark.sweep
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_store_that_cannot_be_created(name, fixture_store, tmp_path):
    root, _ = fixture_store
    afile = tmp_path / "afile"
    afile.write_text("x")
    files = _files(tmp_path)
    files["logs"] = root / "run.jsonl"
    for bad_store in (afile / "store", Path("/proc/simfluence-store")):
        r = CliRunner().invoke(app, _args(name, s=bad_store, **files))
        _assert_clean(r, name)


@pytest.mark.sweep
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_non_utf8_inputs(name, fixture_store, tmp_path):
    root, store = fixture_store
    work = tmp_path / "store"
    shutil.copytree(store, work)
    files = _files(tmp_path, utf8=False)
    r = CliRunner().invoke(app, _args(name, s=work, **files))
    takes_file = any("{" + k + "}" in " ".join(COMMANDS[name]) for k in files)
    if takes_file:
        _assert_clean(r, name)
    else:
        _assert_clean(r, name, codes=(0, 1, 2))


def _as_nobody():
    """A prefix running a command as an unprivileged user (root ignores file modes)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and no setpriv to drop privileges: chmod cannot stop writes")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.slow
def test_read_only_store(fixture_store):
    root, store = fixture_store
    prefix = _as_nobody()
    ro = root / "ro-store"
    shutil.copytree(store, ro)
    (root / "ro-files").mkdir(exist_ok=True)
    files = _files(root / "ro-files")
    files["logs"] = root / "run.jsonl"
    for p in [ro, *ro.rglob("*")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    for p in (root / "ro-files").iterdir():
        os.chmod(p, 0o644)
    os.chmod(root / "ro-files", 0o755)
    os.chmod(root / "run.jsonl", 0o644)
    try:
        for name in sorted(COMMANDS):
            args = _args(name, s=ro, **files)
            if name == "plot":
                args += ["--width", "40"]
            p = subprocess.run(
                prefix + SF + args,
                capture_output=True,
                text=True,
                cwd=root,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
            out = p.stdout + p.stderr
            assert "Traceback" not in out, (name, out)
            if name in WRITES:
                assert p.returncode == 1, (name, out)
                assert "not writable" in p.stderr and len(p.stderr.strip().splitlines()) == 1
            else:
                assert p.returncode == 0, (name, out)
    finally:
        for p in [ro, *ro.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


@pytest.mark.slow
def test_ctrl_c_at_any_moment(fixture_store):
    root, store = fixture_store
    work = root / "sigint-store"
    if not work.exists():
        shutil.copytree(store, work)
    cmd = SF + ["fit", "--store", str(work), "--l2", "auto", "-n", "m3", "--replace"]
    got = []
    for delay in (0.02, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.5):
        p = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C as a terminal delivers it, whatever the suite inherited (a background
            # job starts with SIGINT ignored, and so would every child)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        if "Fatal Python error: init_" in err:
            # CPython itself was still starting (init_import_site, init_sys_streams: before any
            # program code runs): it reports a fatal startup error that no program can intercept
            got.append("startup")
            continue
        if "KeyboardInterrupt" in err and "simfluence_cli" not in err:
            # the installed `simfluence` script was still importing its entry module (Python's
            # import machinery, before simfluence_entry.main can defer the signal): no program
            # code of ours ran yet, and nothing was written
            got.append("startup")
            continue
        assert "Traceback" not in err, (delay, err)
        # -SIGINT: killed before the interpreter installed its handler (first milliseconds)
        assert p.returncode in (0, 130, -signal.SIGINT), (delay, p.returncode, err)
        got.append(p.returncode)
    assert 130 in got


def test_internal_errors_are_one_line(monkeypatch, fixture_store):
    """A bug (any unexpected exception) is one 'internal error' line, not a traceback."""
    _, store = fixture_store
    import simfluence_cli.store.run_store as rsmod

    def boom(self):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(rsmod.RunStore, "info", boom)
    r = CliRunner().invoke(app, ["info", "--store", str(store)])
    assert r.exit_code == 1 and "internal error: ZeroDivisionError: boom" in r.stderr
    assert not isinstance(r.exception, ZeroDivisionError)
    assert typer  # imported for the command listing

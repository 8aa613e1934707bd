"""Concurrent use of one store by real processes: nothing is lost or half-written.

Two ingests at once (into an existing and into a brand-new store), an ingest during a fit,
readers during writes: every command either completes (the second waits for the write lock)
or fails fast with "store is locked by PID ..." and the store unchanged; after retrying, every
run is present and ``verify`` is clean. A lock left by a killed process is broken with a
warning.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs, write_jsonl
from simfluence_cli.store.integrity import verify_store
from simfluence_cli.store.run_store import RunStore


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "simfluence_cli", *map(str, args)]


def env(timeout: float = 60) -> dict:
    return {**os.environ, "SIMFLUENCE_LOCK_TIMEOUT": str(timeout), "NO_COLOR": "1"}


def make_logs(
    directory: Path, prefix: str, n_runs: int = 4, n_steps: int = 40, seed: int = 0
) -> set[str]:
    rs, _, _ = make_runs(40, 30, n_runs, n_steps, 4, seed=seed, noise=0.01)
    for r in rs.runs:
        r.run_id = f"{prefix}-{r.run_id}"
    write_jsonl(rs, directory)
    return {r.run_id for r in rs.runs}


def start(cmd, timeout: float = 60) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env(timeout), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(p: subprocess.Popen) -> tuple[int, str]:
    out, err = p.communicate(timeout=300)
    return p.returncode, err


def assert_clean(store: Path, ids: set[str]) -> None:
    st = RunStore(store)
    assert set(st.run_ids()) == ids
    assert set(st.load().run_ids) == ids
    rep = verify_store(store)
    assert rep.ok and not rep.findings, [f.line() for f in rep.findings]


@pytest.mark.slow
@pytest.mark.parametrize("existing", [True, False], ids=["existing-store", "new-store"])
def test_two_ingests_at_once_both_complete(tmp_path, existing):
    store = tmp_path / "s"
    a = make_logs(tmp_path / "a", "a", seed=1)
    b = make_logs(tmp_path / "b", "b", seed=2)
    ids = set()
    if existing:
        ids = make_logs(tmp_path / "c", "c", n_runs=1, seed=3)
        RunStore(store, create=True).ingest([tmp_path / "c"])
    pa = start(cli("ingest", tmp_path / "a", "--store", store))
    pb = start(cli("ingest", tmp_path / "b", "--store", store))
    (ca, ea), (cb, eb) = finish(pa), finish(pb)
    assert (ca, cb) == (0, 0), (ea, eb)
    assert_clean(store, ids | a | b)


@pytest.mark.slow
def test_ingest_while_fitting_waits_then_completes(tmp_path):
    store = tmp_path / "s"
    base = make_logs(tmp_path / "base", "base", n_runs=6, n_steps=80, seed=1)
    more = make_logs(tmp_path / "more", "more", seed=2)
    RunStore(store, create=True).ingest([tmp_path / "base"], tags=["fit"])
    pf = start(cli("fit", "--store", store, "--runs", "fit", "--name", "m"))  # l2 auto: slower
    deadline = time.monotonic() + 60
    while not (store / ".lock").exists() and pf.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # start the ingest while the fit holds the lock
    pi = start(cli("ingest", tmp_path / "more", "--store", store))
    (cf, ef), (ci, ei) = finish(pf), finish(pi)
    assert (cf, ci) == (0, 0), (ef, ei)
    assert_clean(store, base | more)
    # the model was fitted on the runs that existed when it took the lock: still current
    man = json.loads((store / "models" / "m" / "model.json").read_text())
    assert set(man["config"]["runs"]) == base


HOLD = """
import sys, time
from simfluence_cli.store import RunStore
with RunStore(sys.argv[1]).write_lock():
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow
def test_second_writer_fails_fast_with_the_holder_pid(tmp_path):
    store = tmp_path / "s"
    base = make_logs(tmp_path / "base", "base", n_runs=1, seed=1)
    make_logs(tmp_path / "more", "more", n_runs=1, seed=2)
    RunStore(store, create=True).ingest([tmp_path / "base"])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(store), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
        p = subprocess.run(
            cli("ingest", tmp_path / "more", "--store", store),
            env=env(0.3),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 1
        assert f"store is locked by PID {holder.pid}" in p.stderr
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
        assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
        # a fit fails fast the same way
        p = subprocess.run(
            cli("fit", "--store", store, "--l2", "1"),
            env=env(0.3),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 1 and f"store is locked by PID {holder.pid}" in p.stderr
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale; the retry succeeds and nothing was lost
    p = subprocess.run(
        cli("ingest", tmp_path / "more", "--store", store),
        env=env(5),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "stale" in p.stderr and f"PID {holder.pid}" in p.stderr
    assert_clean(store, base | {"more-syn-000"})


def test_stale_lock_of_dead_pid_is_broken_with_a_warning(tmp_path):
    store = tmp_path / "s"
    ids = make_logs(tmp_path / "logs", "r", n_runs=2, seed=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.mkdir()
    (store / ".lock").write_text(
        json.dumps(
            {
                "pid": dead.pid,
                "host": socket.gethostname(),
                "since": "2026-01-01T00:00:00+00:00",
                "command": "simfluence ingest",
            }
        )
    )
    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "logs"), "--store", str(store)])
    assert r.exit_code == 0, r.stderr
    assert f"warning: broke a stale write lock of PID {dead.pid}" in r.stderr
    assert not (store / ".lock").exists()
    assert_clean(store, ids)


READER = """
import sys
from simfluence_cli.store import RunStore
st = RunStore(sys.argv[1])
n = 0
for _ in range(int(sys.argv[2])):
    rs = st.load()
    info = st.info()
    assert len(rs.run_ids) == info["runs"] >= 2, (rs.run_ids, info["runs"])
    n += 1
print(n)
"""


@pytest.mark.slow
def test_readers_never_see_a_half_written_run(tmp_path):
    """Readers loop over load()/info() while a writer replaces runs again and again."""
    store = tmp_path / "s"
    rs, _, _ = make_runs(30, 20, 2, 30, 3, seed=1)
    st = RunStore(store, create=True)
    st.add_runset(rs)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(store), "150"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    k = 0
    while reader.poll() is None and k < 200:
        rs.runs[k % 2].losses[-1, 0] += 0.01  # new content: each commit replaces a run
        st.add_runset(rs.subset([rs.run_ids[k % 2]]), replace=True)
        k += 1
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert int(out) == 150 and k > 3
    assert verify_store(store).ok


@pytest.mark.slow
def test_failing_and_succeeding_first_ingests_at_once(tmp_path):
    """A bad ingest that created the new store removes it only while holding the lock; the
    good one (waiting, or first) still completes."""
    store = tmp_path / "s"
    good = make_logs(tmp_path / "good", "g", seed=1)
    bad = tmp_path / "bad"
    make_logs(bad, "b", n_runs=3, seed=2)
    (bad / "zz-broken.jsonl").write_text(
        '{"step": 0, "batch": [], "loss": {"t0": NaN}}\n{"step": 1, "batch": ["e1"]}\n'
    )
    for order in ((bad, tmp_path / "good"), (tmp_path / "good", bad)):
        import shutil

        shutil.rmtree(store, ignore_errors=True)
        procs = [start(cli("ingest", d, "--store", store)) for d in order]
        codes = {d.name: finish(p) for d, p in zip(order, procs)}
        assert codes["bad"][0] == 1 and "non-finite loss" in codes["bad"][1]
        assert codes["good"][0] == 0, codes["good"][1]
        assert_clean(store, good)

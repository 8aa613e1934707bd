"""Crash safety: SIGKILL `ingest` and `fit` (real subprocesses) at random moments.

Kills land at a random moment while the command holds the write lock (ingest reads, validates
and writes under it; fit and import-scores commit under it), i.e. in the phase that can
corrupt, and for fit also anywhere in its run (it computes without the lock, streaming its
parameters into ``.staging/``, which the next write removes).

After every kill: the store opens (``RunStore(path).info()``), ``verify`` finds no error
(leftovers of the interrupted write are at most warnings), the runs are either all those of
before or all those of after (ingest is all-or-nothing), ``load`` reads exactly the manifest's
runs, every non-hidden file in the partition directories is a complete Parquet file (temp
files start with '.'), models that exist load; and re-running the command completes, after
which ``verify`` is clean without warnings. ``bench/crash_campaign.py`` does this many times.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from simfluence_cli.io.synthetic import make_runs, write_jsonl
from simfluence_cli.store import _lock
from simfluence_cli.store.integrity import verify_store
from simfluence_cli.store.run_store import PARTS, RunStore
from simfluence_cli.store.saved_models import list_models, load_model

ENV = {**os.environ, "SIMFLUENCE_LOCK_TIMEOUT": "30", "NO_COLOR": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "simfluence_cli", *map(str, args)]


def make_logs(directory: Path, n_runs: int, n_steps: int, seed: int, prefix: str) -> list[str]:
    rs, _, _ = make_runs(60, 40, n_runs, n_steps, 4, seed=seed, noise=0.01)
    for r in rs.runs:
        r.run_id = f"{prefix}-{r.run_id}"
    write_jsonl(rs, directory)
    return sorted(r.run_id for r in rs.runs)


def run_to_completion(cmd: list[str]) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def kill_at(cmd: list[str], delay: float) -> int | None:
    """Start cmd, SIGKILL it after ``delay`` seconds; returns its exit code if it finished first."""
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=delay)
        return p.returncode
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return None


def holds_lock(store: Path, pid: int) -> bool:
    holder = _lock._read(Path(store) / _lock.LOCK_NAME)
    return bool(holder) and holder.get("pid") == pid


def kill_after_lock(cmd: list[str], store: Path, delay: float) -> int | None:
    """Start cmd, wait until it holds the store's write lock (its write phase: ingest reads
    and writes, fit loads, fits and saves under the lock), then SIGKILL it ``delay`` s later."""
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while p.poll() is None and not holds_lock(store, p.pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    try:
        p.wait(timeout=delay)
        return p.returncode
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return None


def locked_time(cmd: list[str], store: Path) -> float:
    """Seconds a complete run of cmd holds the write lock (for choosing kill delays)."""
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while p.poll() is None and not holds_lock(store, p.pid):
        time.sleep(0.002)
    t = time.perf_counter()
    assert p.wait(timeout=300) == 0, p.stderr.read()
    return time.perf_counter() - t


def check_after_kill(store: Path, allowed: list[set[str]]) -> set[str]:
    """The invariants that must hold after any kill; returns the run ids present."""
    st = RunStore(store)
    info = st.info()
    rep = verify_store(store)
    assert rep.ok, [f.line() for f in rep.errors]
    ids = set(st.run_ids())
    assert ids in allowed, f"partial ingest visible: {sorted(ids)}"
    assert info["runs"] == len(ids)
    named = {e[k] for e in st.runs() for k in ("curriculum_file", "losses_file")}
    if ids:
        assert set(st.load().run_ids) == ids
    for part in PARTS:
        d = store / part
        for f in d.iterdir() if d.is_dir() else []:
            if f.name.startswith("."):
                continue  # temp file: hidden from globs, never read
            if f"{part}/{f.name}" not in named:
                pq.read_table(f)  # a visible leftover must at least be a complete file
    for m in list_models(st):
        load_model(st, m["name"])
    return ids


@pytest.fixture
def setup(tmp_path):
    store = tmp_path / "s"
    base = tmp_path / "base"
    new = tmp_path / "new"
    base_ids = make_logs(base, 3, 40, seed=1, prefix="base")
    new_ids = make_logs(new, 8, 60, seed=2, prefix="new")
    run_to_completion(cli("ingest", base, "--store", store, "--tag", "fit"))
    return store, new, set(base_ids), set(new_ids)


@pytest.mark.slow
def test_sigkill_ingest_at_random_moments(setup, tmp_path):
    store, new, base_ids, new_ids = setup
    cmd = cli("ingest", new, "--store", store, "--tag", "fit")
    # how long a complete run takes, measured on a copy (then kills spread over that time)
    import shutil

    pristine = tmp_path / "pristine"
    shutil.copytree(store, pristine)
    shutil.copytree(store, tmp_path / "probe")
    full = locked_time(cli("ingest", new, "--store", tmp_path / "probe"), tmp_path / "probe")
    rng = random.Random(6)
    allowed = [base_ids, base_ids | new_ids]
    kills = attempts = 0
    # Timing decides whether a kill lands before the commit; an attempt that committed first is
    # checked too, then the store is reset so that the next attempt has something to interrupt.
    while kills < 3 and attempts < 20:
        attempts += 1
        code = kill_after_lock(cmd, store, rng.uniform(0.0, 0.8) * full)
        if code is None:
            kills += 1
        ids = check_after_kill(store, allowed)
        if ids == base_ids | new_ids:
            shutil.rmtree(store)
            shutil.copytree(pristine, store)
    assert kills >= 1, f"no kill landed in {attempts} attempts (locked phase {full:.3f} s)"
    run_to_completion(cmd)
    assert check_after_kill(store, allowed) == base_ids | new_ids
    rep = verify_store(store)
    assert rep.ok and not rep.findings, [f.line() for f in rep.findings]


@pytest.mark.slow
def test_sigkill_fit_at_random_moments(setup, tmp_path):
    store, new, base_ids, _ = setup
    cmd = cli("fit", "--store", store, "--l2", "1", "--name", "m", "--replace")
    full = locked_time(cmd, store)  # a first complete fit: later kills interrupt a refit
    t0 = time.perf_counter()
    run_to_completion(cmd)
    wall = time.perf_counter() - t0
    rng = random.Random(7)
    # the fit computes without the lock (staging its parameters) and locks only to commit:
    # kills anywhere in the run, and kills in the commit
    for delay in [rng.uniform(0.3, 1.0) * wall for _ in range(4)] + [None] * 2:
        if delay is None:
            kill_after_lock(cmd, store, rng.uniform(0.0, 1.0) * full)
        else:
            kill_at(cmd, delay)
        check_after_kill(store, [base_ids])
        assert [m["name"] for m in list_models(RunStore(store))] == ["m"]
    run_to_completion(cmd)
    check_after_kill(store, [base_ids])
    p = run_to_completion(cli("verify", "--store", store))
    assert "is consistent" in p.stderr and p.stdout == ""


@pytest.mark.slow
def test_sigkill_first_ingest_into_a_new_store(tmp_path):
    """Killed before its first commit, a new store is 'no store yet'; re-running completes."""
    logs = tmp_path / "logs"
    ids = set(make_logs(logs, 8, 60, seed=3, prefix="n"))
    probe = locked_time(cli("ingest", logs, "--store", tmp_path / "probe"), tmp_path / "probe")
    rng = random.Random(8)
    store = tmp_path / "s"
    cmd = cli("ingest", logs, "--store", store)
    for _ in range(3):
        kill_after_lock(cmd, store, rng.uniform(0.0, 1.0) * probe)
        if (store / "manifest.json").exists():
            check_after_kill(store, [ids])
            break
    run_to_completion(cmd)
    check_after_kill(store, [ids])
    rep = verify_store(store)
    assert rep.ok and not rep.findings, [f.line() for f in rep.findings]

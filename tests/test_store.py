"""The run store: round trips, idempotence, conflicts, atomicity, locking, layout."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simfluence_cli.errors import (
    ConflictError,
    SelectionError,
    StoreError,
    StoreLockedError,
    StoreVersionError,
)
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.runs import Run, RunSet
from simfluence_cli.store import _lock
from simfluence_cli.store.run_store import RunStore, run_key


def tree_hash(root: Path) -> str:
    """Hash of every file's relative path and bytes under root (the store's exact state)."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def assert_same_runs(a: RunSet, b: RunSet, ids=None):
    """Same curricula (as IDs) and losses (by test id, NaN where not logged)."""
    ids = ids or a.run_ids
    for rid in ids:
        ra, rb = a[rid], b[rid]
        np.testing.assert_array_equal(ra.batch_ptr, rb.batch_ptr)
        np.testing.assert_array_equal(a.example_ids[ra.batch_idx], b.example_ids[rb.batch_idx])
        np.testing.assert_array_equal(ra.loss_steps, rb.loss_steps)
        cols = np.searchsorted(b.test_ids, a.test_ids)
        np.testing.assert_array_equal(b.test_ids[cols], a.test_ids)
        np.testing.assert_array_equal(ra.losses, rb.losses[:, cols])


@pytest.fixture
def runs():
    rs, _, _ = make_runs(12, 5, 4, 9, 3, log_every=2, seed=3, noise=0.01)
    return rs


def test_add_runset_load_round_trip(tmp_path, runs):
    store = RunStore(tmp_path / "s", create=True)
    rep = store.add_runset(runs, tags=["fit"])
    assert rep.added == runs.run_ids and rep.loss_rows == sum(
        int((~np.isnan(r.losses)).sum()) for r in runs
    )
    back = store.load("fit")
    assert back.run_ids == sorted(runs.run_ids)
    assert list(back.example_ids) == sorted(runs.example_ids)
    assert list(back.test_ids) == sorted(runs.test_ids)
    assert back.runs[0].losses.dtype == np.float64
    assert all(r.tags == ("fit",) for r in back)
    assert_same_runs(runs, back)


def test_load_union_index_space_and_nan(tmp_path):
    # two runs with different example pools and test sets
    a = RunSet.from_batches(
        {"r1": ([["x", "y"], ["y", "z"]], np.array([[1.0, 2.0], [0.9, 1.8], [0.8, 1.7]]))},
        test_ids=["t1", "t2"],
    )
    b = RunSet.from_batches(
        {"r2": ([["w"], ["x"]], {0: np.array([3.0]), 2: np.array([2.5])})}, test_ids=["t3"]
    )
    store = RunStore(tmp_path / "s", create=True)
    store.add_runset(a)
    store.add_runset(b)
    both = store.load("all")
    assert list(both.example_ids) == ["w", "x", "y", "z"]
    assert list(both.test_ids) == ["t1", "t2", "t3"]
    r2 = both["r2"]
    assert list(r2.loss_steps) == [0, 2]
    assert np.isnan(r2.losses[:, :2]).all() and list(r2.losses[:, 2]) == [3.0, 2.5]
    only = store.load("r2")  # union space of the selection only
    assert list(only.example_ids) == ["w", "x"] and list(only.test_ids) == ["t3"]
    assert store.load(["r2", "r1"]).run_ids == ["r2", "r1"]


def test_idempotent_conflict_replace_and_tags(tmp_path, runs):
    root = tmp_path / "s"
    store = RunStore(root, create=True)
    store.add_runset(runs, tags=["fit"])
    before = tree_hash(root)
    rep = store.add_runset(runs, tags=["fit"])
    assert rep.unchanged == runs.run_ids and not rep.changed
    assert tree_hash(root) == before  # a no-op writes nothing
    rep = store.add_runset(runs, tags=["extra"])
    assert rep.retagged == runs.run_ids
    assert store.tags() == {"extra": 4, "fit": 4}

    other, _, _ = make_runs(12, 5, 4, 9, 3, seed=99)
    before = tree_hash(root)
    with pytest.raises(ConflictError, match="--replace"):
        store.add_runset(other)
    assert tree_hash(root) == before
    old_files = {r["losses_file"] for r in store.runs()}
    rep = store.add_runset(other, replace=True)
    assert rep.replaced == other.run_ids
    assert_same_runs(other, store.load())
    new_files = {r["losses_file"] for r in store.runs()}
    assert not new_files & old_files
    assert {f"losses/{p.name}" for p in (root / "losses").iterdir()} == new_files  # old deleted
    assert store.tags() == {"extra": 4, "fit": 4}  # tags survive a replace


def test_data_hash(tmp_path, runs):
    store = RunStore(tmp_path / "s", create=True)
    store.add_runset(runs)
    ids = store.select("all")
    h = store.data_hash(ids)
    assert h == store.data_hash(list(reversed(ids))) and len(h) == 64
    assert h != store.data_hash(ids[:2])
    store2 = RunStore(tmp_path / "s2", create=True)
    store2.add_runset(runs, tags=["other"])
    assert store2.data_hash(ids) == h  # content, not tags or time
    with pytest.raises(SelectionError):
        store.data_hash(["nope"])


def test_missing_and_foreign_and_newer_store(tmp_path, runs):
    with pytest.raises(StoreError, match="simfluence ingest"):
        RunStore(tmp_path / "nope")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not a run store"):
        RunStore(tmp_path / "foreign", create=True)
    (tmp_path / "mine" / "losses").mkdir(parents=True)  # a user's folder, not a store
    (tmp_path / "mine" / "losses" / "data.parquet").write_text("precious")
    with pytest.raises(StoreError, match="not a run store"):
        RunStore(tmp_path / "mine", create=True)
    assert (tmp_path / "mine" / "losses" / "data.parquet").read_text() == "precious"
    store = RunStore(tmp_path / "s", create=True)
    store.add_runset(runs)
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    man["format"] = 99
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StoreVersionError, match="upgrade"):
        RunStore(tmp_path / "s")


def test_run_ids_cannot_escape_the_store(tmp_path):
    ids = ["../../etc/passwd", "a/b", "ünï cødé", ".hidden", "a_b"]
    rs = RunSet.from_batches({i: ([["e1"], ["e2"]], np.ones((3, 1))) for i in ids}, ["t"])
    store = RunStore(tmp_path / "s", create=True)
    store.add_runset(rs)
    files = [p for p in (tmp_path / "s").rglob("*.parquet")]
    assert all(tmp_path / "s" in p.parents for p in files)
    assert len({run_key(i) for i in ids}) == len(ids)
    assert all(not p.name.startswith(".") for p in files)
    assert sorted(store.load().run_ids) == sorted(ids)


def test_failed_commit_leaves_store_unchanged(tmp_path, runs, monkeypatch):
    root = tmp_path / "s"
    store = RunStore(root, create=True)
    store.add_runset(runs.subset(runs.run_ids[:2]))
    before = tree_hash(root)
    import simfluence_cli.store.run_store as store_mod

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(store_mod, "write_bytes_atomic", boom)
    with pytest.raises(OSError):
        store.add_runset(runs)
    assert tree_hash(root) == before  # no pending or renamed partition files left
    monkeypatch.undo()
    # a failed first write into a new store leaves no directory behind
    monkeypatch.setattr(store_mod, "write_bytes_atomic", boom)
    with pytest.raises(OSError):
        RunStore(tmp_path / "new", create=True).add_runset(runs)
    assert not (tmp_path / "new").exists()


def test_leftovers_ignored_then_cleaned(tmp_path, runs):
    root = tmp_path / "s"
    store = RunStore(root, create=True)
    store.add_runset(runs.subset(runs.run_ids[:2]))
    stray = root / "losses" / "crashed-0123456789.g9.parquet"
    stray.write_bytes(b"partial")
    tmp = root / ".manifest.json.abc.tmp"
    tmp.write_text("{}")
    assert store.load().run_ids == sorted(runs.run_ids[:2])  # readers ignore them
    store.add_runset(runs)  # the next writer removes them under the lock
    assert not stray.exists() and not tmp.exists()


def test_parquet_layout_and_metadata(tmp_path, runs):
    root = tmp_path / "s"
    store = RunStore(root, create=True)
    store.add_runset(runs, tags=["fit"])
    entry = store.runs()[0]
    t = pq.read_table(root / entry["losses_file"])
    assert t.column_names == ["run", "step", "test_id", "loss"]
    assert (
        str(t.schema.field("test_id").type) == "dictionary<values=string, indices=int32, ordered=0>"
    )
    meta = t.schema.metadata
    assert meta[b"simfluence.store_format"] == b"1"
    assert "loss" in json.loads(meta[b"simfluence.columns"])
    c = pq.read_table(root / entry["curriculum_file"])
    assert c.column_names == ["run", "step", "example_id"]
    r = pq.read_table(root / "runs.parquet").to_pylist()
    assert [x["run"] for x in r] == sorted(runs.run_ids) and r[0]["tags"] == ["fit"]


def test_duckdb_and_pandas_read_the_store(tmp_path, runs):
    duckdb = pytest.importorskip("duckdb")
    pd = pytest.importorskip("pandas")
    root = tmp_path / "s"
    store = RunStore(root, create=True)
    store.add_runset(runs, tags=["fit"])
    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT run, count(*) AS n, min(step) AS first
        FROM read_parquet('{root}/losses/*.parquet') GROUP BY run ORDER BY run""").fetchall()
    assert rows == [(r["run"], r["loss_rows"], 0) for r in store.runs()]
    got = con.execute(f"""
        SELECT l.loss FROM read_parquet('{root}/losses/*.parquet') l
        JOIN read_parquet('{root}/runs.parquet') r USING (run)
        WHERE list_contains(r.tags, 'fit') AND l.run = 'syn-001' AND l.step = 0
        ORDER BY l.test_id""").fetchall()
    assert [g[0] for g in got] == list(runs["syn-001"].losses[0])
    df = pd.read_parquet(root / "curriculum")
    assert len(df) == sum(len(r.batch_idx) for r in runs)
    first = df[(df.run == "syn-000") & (df.step == 1)].example_id.astype(str).tolist()
    assert first == list(runs.example_ids[runs["syn-000"].batch(1)])


def test_info(tmp_path, runs):
    store = RunStore(tmp_path / "s", create=True)
    store.add_runset(runs, tags=["fit"])
    d = store.info()
    for k in ("runs", "train_examples", "test_examples", "steps", "loss_rows"):
        assert isinstance(d[k], int)
    assert d["runs"] == 4 and d["steps"] == 36 and d["test_examples"] == 5
    assert d["train_examples"] == 12 and d["tags"] == {"fit": 4}
    assert d["coverage"]["min"] <= d["coverage"]["median"] <= d["coverage"]["max"]
    (tmp_path / "s" / "models" / "m1").mkdir(parents=True)
    (tmp_path / "s" / "models" / "m1" / "model.json").write_text("{}")
    assert store.info()["models"] == ["m1"]


# ---- locking --------------------------------------------------------------------------------


def _write_lock(root: Path, pid: int):
    import socket

    root.mkdir(parents=True, exist_ok=True)
    (root / ".lock").write_text(
        json.dumps({"pid": pid, "host": socket.gethostname(), "since": "2026-01-01T00:00:00+00:00"})
    )


@pytest.mark.slow
def test_live_lock_blocks_writers(tmp_path, runs):
    root = tmp_path / "s"
    store = RunStore(root, create=True)
    store.add_runset(runs.subset(runs.run_ids[:1]))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _write_lock(root, holder.pid)
        with pytest.raises(StoreLockedError, match=f"locked by PID {holder.pid}"):
            with store.write_lock(timeout=0.3):
                pass
        os.environ["SIMFLUENCE_LOCK_TIMEOUT"] = "0.2"
        try:
            with pytest.raises(StoreLockedError):
                store.add_runset(runs)
        finally:
            del os.environ["SIMFLUENCE_LOCK_TIMEOUT"]
        assert store.load().run_ids == runs.run_ids[:1]
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_broken(tmp_path, runs):
    root = tmp_path / "s"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(root, dead.pid)
    store = RunStore(root, create=True)
    with pytest.warns(UserWarning, match=f"stale write lock of PID {dead.pid}"):
        store.add_runset(runs)
    assert not (root / ".lock").exists()
    assert store.load().run_ids == runs.run_ids


def test_lock_is_reentrant_and_released(tmp_path, runs):
    store = RunStore(tmp_path / "s", create=True)
    with store.write_lock():
        assert (tmp_path / "s" / ".lock").exists()
        store.add_runset(runs)  # takes the same lock again
        assert (tmp_path / "s" / ".lock").exists()
    assert not (tmp_path / "s" / ".lock").exists()
    assert not _lock._held


# ---- laws -------------------------------------------------------------------------------------


@st.composite
def runsets(draw):
    n_ex = draw(st.integers(1, 6))
    n_te = draw(st.integers(1, 4))
    ex = [draw(st.text("abcé/._-", min_size=1, max_size=4)) for _ in range(n_ex)]
    ex = list(dict.fromkeys(ex))
    te = list(dict.fromkeys(draw(st.text("tu0", min_size=1, max_size=3)) for _ in range(n_te)))
    runs = {}
    for r in range(draw(st.integers(1, 3))):
        T = draw(st.integers(1, 5))
        batches = [draw(st.lists(st.sampled_from(ex), min_size=1, max_size=3)) for _ in range(T)]
        L = np.asarray(
            draw(
                st.lists(
                    st.lists(st.floats(-5, 5, allow_nan=False), min_size=len(te), max_size=len(te)),
                    min_size=T + 1,
                    max_size=T + 1,
                )
            )
        )
        mask = np.asarray(
            draw(
                st.lists(
                    st.lists(st.booleans(), min_size=len(te), max_size=len(te)),
                    min_size=T + 1,
                    max_size=T + 1,
                )
            )
        )
        mask[0] = True  # step 0 logs every test
        L[~mask] = np.nan
        keep = ~np.isnan(L).all(axis=1)
        runs[f"r{r}"] = (batches, {int(s): L[s] for s in np.flatnonzero(keep)})
    return RunSet.from_batches(runs, te)


@pytest.mark.slow
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rs=runsets())
def test_round_trip_law(tmp_path_factory, rs):
    """load(add_runset(x)) == x, and the content hash does not depend on the ID order."""
    root = tmp_path_factory.mktemp("law")
    store = RunStore(root / "s", create=True)
    store.add_runset(rs)
    back = store.load()
    # all-NaN test columns are not stored; compare on the tests that were logged
    for run in rs:
        rb = back[run.run_id]
        np.testing.assert_array_equal(rs.example_ids[run.batch_idx], back.example_ids[rb.batch_idx])
        np.testing.assert_array_equal(run.loss_steps, rb.loss_steps)
        for j, t in enumerate(rs.test_ids):
            k = np.searchsorted(back.test_ids, t)
            if k < len(back.test_ids) and back.test_ids[k] == t:
                np.testing.assert_array_equal(run.losses[:, j], rb.losses[:, k])
    perm = RunSet(
        rs.example_ids[::-1].copy(),
        rs.test_ids,
        [
            Run(
                r.run_id, r.batch_ptr, len(rs.example_ids) - 1 - r.batch_idx, r.loss_steps, r.losses
            )
            for r in rs
        ],
    )
    rep = store.add_runset(perm)  # same content in another index order: a no-op
    assert rep.unchanged == rs.run_ids


@pytest.mark.slow
def test_kill_at_any_moment(tmp_path, runs):
    """SIGKILL an ingest at several moments: the store is always as before or as after."""
    import signal
    import time

    from simfluence_cli.io.synthetic import write_jsonl

    root = tmp_path / "s"
    store = RunStore(root, create=True)
    seed = runs["syn-000"]
    store.add_runset(
        RunSet(
            runs.example_ids,
            runs.test_ids,
            [Run("seed", seed.batch_ptr, seed.batch_idx, seed.loss_steps, seed.losses)],
        )
    )
    big, _, _ = make_runs(30, 40, 6, 200, 4, seed=11)
    write_jsonl(big, tmp_path / "logs")
    before = store.select("all")
    code = (
        "import sys; from simfluence_cli.store import RunStore; "
        f"RunStore({str(root)!r}).ingest([{str(tmp_path / 'logs')!r}], "
        "progress=lambda d, t, l: print(d, flush=True))"
    )
    for after, extra in ((2, 0.0), (6, 0.0), (6, 0.03)):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(after):  # kill after `after` runs were parsed (6 = during the commit)
            p.stdout.readline()
        time.sleep(extra)
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        ids = RunStore(root).select("all")
        assert ids in (before, sorted(before + big.run_ids))
        RunStore(root).load()  # every file the manifest names is readable
    import warnings

    with warnings.catch_warnings():  # a killed writer may leave a stale lock: broken, warned
        warnings.simplefilter("ignore")
        RunStore(root).ingest([tmp_path / "logs"])  # cleans leftovers
    assert_same_runs(big, RunStore(root).load(), big.run_ids)
    named = {r[f] for r in RunStore(root).runs() for f in ("curriculum_file", "losses_file")}
    on_disk = {f"{d}/{p.name}" for d in ("curriculum", "losses") for p in (root / d).iterdir()}
    assert on_disk == named and not (root / ".lock").exists()


def test_failed_first_ingest_keeps_a_directory_the_user_made(tmp_path):
    from simfluence_cli.errors import InputError

    d = tmp_path / "mystore"
    d.mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{")
    with pytest.raises(InputError):
        RunStore(d, create=True).ingest([bad])
    assert d.is_dir() and list(d.iterdir()) == []

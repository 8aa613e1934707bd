"""RunStore.load(loss_steps=n): only each run's first n logged steps, the rest as a full load."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simfluence_cli.analysis.effects import removal_curricula, removal_effect
from simfluence_cli.errors import UsageError
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet
from simfluence_cli.store import run_store
from simfluence_cli.store.run_store import RunStore, _step_prefix


def assert_prefix_of(part: RunSet, full: RunSet, n: int) -> None:
    """``part`` is ``full`` with each run's losses cut to the first n logged steps."""
    assert part.run_ids == full.run_ids
    np.testing.assert_array_equal(part.example_ids, full.example_ids)
    np.testing.assert_array_equal(part.test_ids, full.test_ids)
    for a, b in zip(part.runs, full.runs):
        np.testing.assert_array_equal(a.batch_ptr, b.batch_ptr)
        np.testing.assert_array_equal(a.batch_idx, b.batch_idx)
        np.testing.assert_array_equal(a.loss_steps, b.loss_steps[:n])
        np.testing.assert_array_equal(a.losses, b.losses[:n])  # NaN where not logged, as full
        assert a.tags == b.tags and a.optimizer == b.optimizer
        if b.lr is None:
            assert a.lr is None
        else:
            np.testing.assert_array_equal(a.lr, b.lr)


@st.composite
def stores_runs(draw):
    """Runs with ragged loss logging (a run's tests: all at step 0, some at later steps; not
    every run logs every test), optional learning rates."""
    n_te = draw(st.integers(1, 5))
    te = [f"t{j}" for j in range(n_te)]
    ex = [f"e{i}" for i in range(draw(st.integers(1, 6)))]
    runs, lrs = {}, {}
    for r in range(draw(st.integers(1, 3))):
        T = draw(st.integers(1, 7))
        batches = [draw(st.lists(st.sampled_from(ex), min_size=1, max_size=3)) for _ in range(T)]
        own = np.asarray(draw(st.lists(st.booleans(), min_size=n_te, max_size=n_te)))
        own[draw(st.integers(0, n_te - 1))] = True
        logged = {}
        for s in range(T + 1):
            mask = own & draw(st.lists(st.booleans(), min_size=n_te, max_size=n_te))
            if s == 0 or mask.any():
                vals = np.asarray(draw(st.lists(st.floats(0, 5), min_size=n_te, max_size=n_te)))
                logged[s] = np.where(own if s == 0 else mask, vals, np.nan)
        runs[f"r{r}"] = (batches, logged)
        if draw(st.booleans()):
            lrs[f"r{r}"] = np.asarray(draw(st.lists(st.floats(0, 1), min_size=T, max_size=T)))
    rs = RunSet.from_batches(runs, te)
    for run in rs.runs:
        run.lr = lrs.get(run.run_id)
    return rs


@pytest.mark.slow
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rs=stores_runs(), n=st.integers(1, 4), batch=st.integers(1, 9))
def test_prefix_load_equals_the_full_load_cut_to_n_logged_steps(
    tmp_path_factory, monkeypatch, rs, n, batch
):
    """Law: load(loss_steps=n) == load() with every run's losses cut to the first n logged
    steps; curricula, lr, tags and the ID spaces unchanged (any batch size of the read)."""
    monkeypatch.setattr(run_store, "_PREFIX_BATCH", batch)
    store = RunStore(tmp_path_factory.mktemp("prefix") / "s", create=True)
    store.add_runset(rs, tags=["fit"])
    full = store.load()
    assert_prefix_of(store.load(loss_steps=n), full, n)
    tests = list(full.test_ids[::-1])
    assert_prefix_of(store.load(tests=tests, loss_steps=n), store.load(tests=tests), n)


def test_prefix_load_reads_the_initial_losses_of_multi_batch_files(tmp_path, monkeypatch):
    rs, _, _ = make_runs(12, 5, 4, 9, 3, log_every=2, seed=3, noise=0.01)
    store = RunStore(tmp_path / "s", create=True)
    store.add_runset(rs)
    full = store.load()
    for batch in (1, 3, 5, 7, 4096):  # step 0's 5 rows: inside, at and across batch ends
        monkeypatch.setattr(run_store, "_PREFIX_BATCH", batch)
        for n in (1, 2, 5, 100):
            assert_prefix_of(store.load(loss_steps=n), full, n)
    with pytest.raises(UsageError):
        store.load(loss_steps=0)


def _loss_file(path, steps, tests, dictionary):
    table = pa.table(
        {
            "step": pa.array(steps, pa.int64()),
            "test_id": pa.DictionaryArray.from_arrays(
                pa.array(tests, pa.int32()), pa.array(dictionary)
            ),
            "loss": pa.array(np.arange(len(steps), dtype=np.float64)),
        }
    )
    pq.write_table(table, path)
    return pq.ParquetFile(path)


def test_step_prefix_gives_up_on_unsorted_files_and_partial_dictionaries(tmp_path):
    cols = ["step", "test_id", "loss"]
    ok = _loss_file(tmp_path / "a.parquet", [0, 0, 1, 1, 2], [0, 1, 0, 1, 0], ["t0", "t1"])
    got = _step_prefix(ok, cols, 2, 2)
    assert got.num_rows == 4 and got.column("step").to_pylist() == [0, 0, 1, 1]
    assert _step_prefix(ok, cols, 9, 2).num_rows == 5
    assert _step_prefix(ok, cols, 1, 3) is None  # the run logs a test the dictionary lacks
    bad = _loss_file(tmp_path / "b.parquet", [0, 1, 0], [0, 0, 1], ["t0", "t1"])
    assert _step_prefix(bad, cols, 1, 2) is None  # not sorted by step: read it all


def test_removal_effect_from_the_prefix_load_is_bitwise_the_full_loads(tmp_path):
    rs, _, _ = make_runs(10, 3, 4, 12, 2, seed=5, noise=0.01)
    store = RunStore(tmp_path / "s", create=True)
    store.add_runset(rs)
    full = store.load()
    sim = Simulator(method="optimizer-aware").fit(full)
    part = removal_curricula(store, full.run_ids)
    assert all(len(r.loss_steps) == 1 for r in part.runs)
    np.testing.assert_array_equal(removal_effect(sim, part), removal_effect(sim, full))

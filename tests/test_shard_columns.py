"""Dask shards load only their own test columns: the store's column subset, the standardised
source, the worker-side design cache, and a real LocalCluster against the in-process fit."""

from dataclasses import replace

import numpy as np
import pytest

from simfluence_cli.errors import SelectionError
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model import sharding
from simfluence_cli.model.normal_equations import Design
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.model.solvers import plan_chunks, solve_tests
from simfluence_cli.model.standardise import loss_scale, rescaled
from simfluence_cli.runs import RunSet
from simfluence_cli.store.run_store import RunStore


def _patchy(rs: RunSet) -> RunSet:
    """Tests logged differently per run: run 0 logs test 3 every other step, run 1 never
    logs test 5, run 2 skips steps 1-9 of tests 0-2 (several logging groups)."""
    out = []
    for k, r in enumerate(rs.runs):
        L = r.losses.copy()
        if k == 0:
            L[1:-1:2, 3] = np.nan
        elif k == 1:
            L[:, 5] = np.nan
        elif k == 2:
            L[1:10, :3] = np.nan
        out.append(replace(r, losses=L))
    return RunSet(rs.example_ids, rs.test_ids, out)


def _store(tmp_path_factory, patchy: bool) -> RunStore:
    rs, _, _ = make_runs(40, 11, 4, 40, 3, seed=5, noise=0.01)
    store = RunStore(tmp_path_factory.mktemp("cols") / "store", create=True)
    store.add_runset(_patchy(rs) if patchy else rs, tags=("fit",))
    return store


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    return _store(tmp_path_factory, patchy=True)


@pytest.fixture(scope="module")
def uniform(tmp_path_factory):
    return _store(tmp_path_factory, patchy=False)


def _close(got: np.ndarray, ref: np.ndarray, patchy: bool) -> None:
    """Bitwise equal, also when tests are logged differently (several logging groups per
    run): the shard's design keeps the coordinator's groups (Design.group_as)."""
    np.testing.assert_array_equal(got, ref)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(np.nan_to_num(a), np.nan_to_num(b))


def test_store_loads_a_column_subset_in_the_order_given(stored):
    full = stored.load("fit")
    want = [full.test_ids[j] for j in (7, 3, 5)]
    sub = stored.load("fit", tests=want)
    assert sub.test_ids.tolist() == want
    np.testing.assert_array_equal(sub.example_ids, full.example_ids)
    cols = [7, 3, 5]
    for a, b in zip(sub.runs, full.runs):
        assert a.run_id == b.run_id
        np.testing.assert_array_equal(a.batch_idx, b.batch_idx)
        np.testing.assert_array_equal(a.batch_ptr, b.batch_ptr)
        logged = np.isfinite(b.losses[:, cols]).any(axis=1)  # steps these tests were logged
        np.testing.assert_array_equal(a.loss_steps, b.loss_steps[logged])
        _same(a.losses, b.losses[logged][:, cols])


def test_store_subset_of_an_unknown_test_is_an_error(stored):
    with pytest.raises(SelectionError, match="nope"):
        stored.load("fit", tests=[stored.load("fit").test_ids[0], "nope"])


def test_scaled_source_subset_equals_the_scaled_full_runs(stored):
    full = stored.load("fit")
    scaled = rescaled(full, loss_scale(full))
    want = [full.test_ids[j] for j in (2, 9)]
    sub = scaled.source.load(full.run_ids, tests=want)
    for a, b in zip(sub.runs, scaled.runs):
        logged = np.isfinite(b.losses[:, [2, 9]]).any(axis=1)
        _same(a.losses, b.losses[logged][:, [2, 9]])


@pytest.mark.parametrize("patchy", [True, False])
@pytest.mark.parametrize("kind", ["store", "scattered"])
def test_worker_shard_builds_the_design_of_its_tests_only(stored, uniform, kind, patchy):
    full = (stored if patchy else uniform).load("fit")
    runs = rescaled(full, loss_scale(full))
    design = Design(runs)
    theta0 = np.concatenate([np.ones(runs.n_examples), np.zeros(runs.n_examples)])
    _, chunks = plan_chunks(design, "linear", "cg")
    ref = solve_tests(design, "linear", 0.1, theta0, solver="cg", chunks=chunks)
    source = runs.source if kind == "store" else runs
    key = repr(source) if kind == "store" else f"scattered-{id(runs)}"
    sharding._SHARED.pop("dask", None)
    try:
        for part in sharding.chunk_shards(chunks, 3):
            tests = np.concatenate(part)
            ids = runs.test_ids[tests].tolist()
            labels = design.group_labels()[:, tests]
            args = (
                source,
                key,
                runs.run_ids,
                part,
                ids,
                labels,
                "linear",
                0.1,
                theta0,
                "cg",
                1e-10,
            )
            got_tests, th, _ = sharding._shard_dask(*args, runs.n_examples)
            np.testing.assert_array_equal(got_tests, tests)
            assert sharding._SHARED["dask"][2].n_tests == len(tests)  # only the shard's columns
            _close(th, ref[:, tests], patchy)
            # a later shard inside the cached columns reuses the design: nothing rebuilt
            cached = sharding._SHARED["dask"][2]
            sub = [part[-1][-1:]]
            sharding._shard_dask(
                source, key, runs.run_ids, sub, runs.test_ids[sub[0]].tolist(), None, *args[6:],
                runs.n_examples,
            )  # fmt: skip
            assert sharding._SHARED["dask"][2] is cached
    finally:
        sharding._SHARED.pop("dask", None)


def test_worker_detects_a_different_store(stored):
    full = stored.load("fit")
    theta0 = np.concatenate([np.ones(full.n_examples), np.zeros(full.n_examples)])
    sharding._SHARED.pop("dask", None)
    try:
        with pytest.raises(Exception, match="same store"):
            sharding._shard_dask(
                full.source, "k", full.run_ids, [np.arange(2)], full.test_ids[:2].tolist(),
                Design(full).group_labels()[:, :2], "linear", 0.1, theta0, "cg", 1e-10,
                full.n_examples + 1,
            )  # fmt: skip
    finally:
        sharding._SHARED.pop("dask", None)


def _worker_design_tests():
    hit = sharding._SHARED.get("dask")
    return None if hit is None else int(hit[2].n_tests)


@pytest.mark.slow
@pytest.mark.parametrize("patchy", [True, False])
def test_local_cluster_shards_hold_their_columns_and_equal_the_in_process_fit(
    stored, uniform, patchy
):
    distributed = pytest.importorskip("distributed")
    loaded = (stored if patchy else uniform).load("fit")
    local = Simulator(l2=0.1).fit(loaded, solver="cg")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        for runs, source in [(loaded, "loaded by workers"), (loaded.subset(loaded.run_ids), None)]:
            sim = Simulator(l2=0.1).fit(runs, solver="cg", dask=client)
            if source:
                assert sim.solver_stats_["source"] == source
            _close(sim.A_, local.A_, patchy)
            _close(sim.B_, local.B_, patchy)
            shard = -(-loaded.n_tests // sim.solver_stats_["shards"])  # largest shard
            held = [v for v in client.run(_worker_design_tests).values() if v is not None]
            assert held and max(held) <= shard < loaded.n_tests

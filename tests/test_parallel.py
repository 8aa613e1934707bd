"""Sharding the fit over test examples: local processes and a real Dask LocalCluster."""

import numpy as np
import pytest

from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.sharding import shards
from simfluence_cli.model.simulator import Simulator


@pytest.fixture(scope="module")
def data():
    rs, _, _ = make_runs(60, 13, 4, 60, 3, seed=2, noise=0.01, log_every=2)
    ref = Simulator(l2=0.1).fit(rs, solver="cg")
    return rs, ref


def test_shards_cover_tests_once():
    for m, k in [(1, 4), (10, 3), (13, 52), (100, 7)]:
        s = shards(m, k)
        assert np.array_equal(np.concatenate(s), np.arange(m))
        assert all(len(x) > 0 for x in s)


def test_workers_processes_equal_single_process(data):
    rs, ref = data
    seen = []
    sim = Simulator(l2=0.1).fit(rs, solver="cg", workers=2, progress=seen.append)
    np.testing.assert_array_equal(sim.A_, ref.A_)
    np.testing.assert_array_equal(sim.B_, ref.B_)
    assert sum(seen) == rs.n_tests
    assert sim.solver_stats_["workers"] == 2


def test_workers_direct_solver(data):
    rs, _ = data
    a = Simulator(l2=0.1).fit(rs, solver="direct")
    b = Simulator(l2=0.1).fit(rs, solver="direct", workers=2)
    np.testing.assert_array_equal(a.A_, b.A_)


@pytest.mark.slow
def test_dask_local_cluster_equals_single_process(data, tmp_path):
    distributed = pytest.importorskip("distributed")
    rs, ref = data
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        # the RunSet is scattered to the workers
        sim = Simulator(l2=0.1).fit(rs, solver="cg", dask=client)
        np.testing.assert_array_equal(sim.A_, ref.A_)
        np.testing.assert_array_equal(sim.B_, ref.B_)
        assert sim.solver_stats_["dask_workers"] == 2
        # workers read the same store path (shared file system)
        store_mod = pytest.importorskip("simfluence_cli.store.run_store")
        store = store_mod.RunStore(tmp_path / "store", create=True)
        store.add_runset(rs, tags=("fit",))
        loaded = store.load("all")
        local = Simulator(l2=0.1).fit(loaded, solver="cg")
        sim2 = Simulator(l2=0.1).fit(loaded, solver="cg", dask=cluster.scheduler_address)
        assert sim2.solver_stats_["source"] == "loaded by workers"
        np.testing.assert_array_equal(sim2.A_, local.A_)
        np.testing.assert_array_equal(sim2.B_, local.B_)


def _reference_rollout(A, B, idx, L0, method, lo, hi):
    """The rollout semantics written out one curriculum, step and test at a time: padding (-1)
    contributes nothing, an all-padding step leaves the loss unchanged, losses are clamped to
    [lo, hi] when given and otherwise saturate at the largest float (never inf or NaN)."""
    fmax = np.finfo(np.float64).max
    C, T, _ = idx.shape
    m = A.shape[1]
    out = np.empty((C, T + 1, m))
    for c in range(C):
        L = np.array(L0[c], dtype=np.float64)
        out[c, 0] = L
        for t in range(T):
            rows = [i for i in idx[c, t] if i >= 0]
            if rows:
                for j in range(m):
                    beta = sum(B[i, j] for i in rows)
                    alpha = 1.0 if method == "additive" else sum(A[i, j] for i in rows)
                    with np.errstate(over="ignore"):
                        new = alpha * L[j] + beta
                    if lo is not None:
                        new = min(max(new, lo[j]), hi[j])
                    else:
                        new = min(max(new, -fmax), fmax)
                    L[j] = new
            out[c, t + 1] = L
    return out


def test_rollout_kernel_semantics_chunked_threaded_and_final_mode():
    """The one rollout kernel (Simulator.simulate and the CV of l2='auto' both call it)
    against the semantics written out; column chunks, threads and final=True agree."""
    from simfluence_cli.model.rollout import rollout

    rng = np.random.default_rng(0)
    n, m, C, T, b = 12, 150, 3, 9, 3  # m > one column chunk (128)
    A = rng.uniform(0.3, 0.34, (n + 1, m))
    B = rng.normal(0, 0.02, (n + 1, m))
    idx = rng.integers(-1, n + 1, (C, T, b))
    idx[2, 5:] = -1  # a shorter curriculum
    idx[0, 3] = -1  # an all-padding step inside a curriculum
    L0 = rng.uniform(1, 3, (C, m))
    for method in ("linear", "additive", "multiplicative"):
        for lo, hi in ((np.full(m, 0.5), np.full(m, 2.5)), (None, None)):
            ref = _reference_rollout(A, B, idx, L0, method, lo, hi)
            got = rollout(A, B, idx, L0, method, lo, hi, threads=2)
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
            np.testing.assert_array_equal(got, rollout(A, B, idx, L0, method, lo, hi, threads=1))
            np.testing.assert_array_equal(
                rollout(A, B, idx, L0, method, lo, hi, final=True), got[:, -1]
            )
            np.testing.assert_array_equal(got[0, 4], got[0, 3])  # padding step: unchanged
    # unclipped divergence saturates at the largest float instead of overflowing to inf/NaN
    big = np.full((2, 1), 1e200)
    out = rollout(
        big, np.zeros((2, 1)), np.zeros((1, 4, 1), np.int64), np.ones((1, 1)), "linear", None, None
    )
    assert np.isfinite(out).all() and out[0, -1, 0] == np.finfo(np.float64).max


def test_simulate_final_equals_last_trajectory_step(data):
    rs, ref = data
    cur = [
        [list(rs.example_ids[i : i + 3]) for i in range(0, 30, 3)],
        [list(rs.example_ids[i : i + 3]) for i in range(30, 45, 3)],
    ]
    traj = ref.simulate(cur)
    fin = ref.simulate(cur, return_="final")
    np.testing.assert_array_equal(fin[0], traj[0, -1])
    np.testing.assert_array_equal(fin[1], traj[1, 5])


@pytest.mark.slow
def test_cli_fit_solver_workers_and_dask(tmp_path, data):
    from typer.testing import CliRunner

    from simfluence_cli.cli import app
    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import load_model

    rs, _ = data
    store = RunStore(tmp_path / "st", create=True)
    store.add_runset(rs, tags=("fit",))
    runner = CliRunner()
    base = ["--quiet", "fit", "--store", str(store.path), "--l2", "0.1"]
    r = runner.invoke(app, base + ["--solver", "cg", "--name", "one"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, base + ["--solver", "cg", "--workers", "2", "--name", "two"])
    assert r.exit_code == 0, r.stderr
    one, two = load_model(store, "one"), load_model(store, "two")
    np.testing.assert_array_equal(one.A_, two.A_)
    r = runner.invoke(app, base + ["--solver", "lu"])
    assert r.exit_code == 2
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        r = runner.invoke(
            app, base + ["--solver", "cg", "--dask", cluster.scheduler_address, "--name", "dask"]
        )
        assert r.exit_code == 0, r.stderr
    np.testing.assert_array_equal(load_model(store, "dask").B_, one.B_)

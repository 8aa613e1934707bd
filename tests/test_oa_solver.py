"""The optimizer-aware solve (model/oa_system.py on solvers.pcg): exact against a dense solve."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_optimizer_aware import oa_runs

from simfluence_cli.model import optimizer_aware as oa
from simfluence_cli.model.oa_system import OAChunkSystem
from simfluence_cli.model.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]


def _baseline():
    spec = importlib.util.spec_from_file_location("oa_baseline", ROOT / "bench" / "baseline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _problem(ar, H, transform="logodds"):
    runs, _ = oa_runs(m=5, R=6, T=40, noise=0.01, transform=transform, H=3, seed=4)
    runs.runs[0].losses[5:9, 2] = np.nan  # a gap: masked observations of one test
    runs.runs[3].losses[20, 0] = np.nan
    sched = oa.Schedule.from_runs(runs)
    return runs, sched, oa.Observations(runs, sched, H)


def _dense_solve(obs, y0, dprev, dy, Mk, ar, l2):
    """Per test, the full ridge system over [X | D] (penalty l2 on a, B; the solver's tiny
    eps on the dense block) solved directly: (P + p, k) parameters."""
    Zd = obs.Z.toarray()
    n = Zd.shape[1]
    sys_ = OAChunkSystem(obs, y0, dprev, dy, Mk, ar, l2)
    out = []
    for j in range(y0.shape[1]):
        keep = Mk[:, j] > 0
        X = np.hstack([y0[:, j, None] * Zd, Zd])[keep]
        D = np.hstack(([dprev[:, j, None]] if ar else []) + [obs.Phi])[keep]
        F = np.hstack([X, D])
        G = F.T @ F
        G[: 2 * n, : 2 * n] += l2 * np.eye(2 * n)
        if D.shape[1]:
            Sinv = np.linalg.inv(sys_.S[j])  # D^T M D + eps I: the same dense block
            G[2 * n :, 2 * n :] = Sinv
        out.append(np.linalg.solve(G, F.T @ dy[keep, j]))
    return np.array(out).T


@pytest.mark.parametrize(
    "ar,H,l2", [(True, 3, 0.1), (False, 3, 1.0), (True, 0, 0.01), (False, 0, 1)]
)
def test_equals_the_dense_direct_solve_and_the_previous_solver(ar, H, l2):
    runs, sched, obs = _problem(ar, H)
    cfg = oa.Config("logodds", ar, H, l2)
    st: dict = {}
    a, B, rho, gamma, _ = oa.fit_params(runs, sched, cfg, obs=obs, tol=1e-12, stats=st)
    assert st["cg_not_converged"] == 0
    new = np.vstack([a, B] + ([rho[None]] if ar else []) + [gamma.T])
    y0, dprev, dy, Mk = obs.losses(np.arange(runs.n_tests), "logodds")
    assert (Mk == 0).any()  # the masked path is exercised
    ref = _dense_solve(obs, y0, dprev, dy, Mk, ar, l2)
    scale = np.abs(ref).max(axis=0)
    assert np.max(np.abs(new - ref).max(axis=0) / scale) < 1e-8
    oa_, oB, orho, og, _ = _baseline().oa_schur_cg_chunk(
        obs, y0, dprev, dy, Mk, ar, l2, 1e-12, 20000
    )
    old = np.vstack([oa_, oB] + ([orho[None]] if ar else []) + [og.T])
    assert np.max(np.abs(new - old).max(axis=0) / scale) < 1e-8


def test_chunking_does_not_change_the_parameters():
    runs, sched, obs = _problem(True, 3)
    cfg = oa.Config("logodds", True, 3, 0.1)
    whole = oa.fit_params(runs, sched, cfg, obs=obs, tol=1e-12, chunks=[np.arange(5)])
    split = oa.fit_params(
        runs, sched, cfg, obs=obs, tol=1e-12, chunks=[np.array([0, 1]), np.array([2, 3, 4])]
    )
    for w, s in zip(whole[:4], split[:4]):
        np.testing.assert_allclose(s, w, rtol=1e-9, atol=1e-12)


def test_the_reduced_operator_is_symmetric_positive_definite():
    _, _, obs = _problem(True, 3)
    y0, dprev, dy, Mk = obs.losses(np.arange(5), "logodds")
    s = OAChunkSystem(obs, y0, dprev, dy, Mk, True, 0.1)
    rng = np.random.default_rng(0)
    U, V = rng.normal(size=(2, 2 * obs.Z.shape[1], 5))
    cols = np.arange(5)
    uAv = np.einsum("ij,ij->j", U, s.matvec(V, cols))
    vAu = np.einsum("ij,ij->j", V, s.matvec(U, cols))
    np.testing.assert_allclose(uAv, vAu, rtol=1e-10)
    assert (np.einsum("ij,ij->j", U, s.matvec(U, cols)) > 0).all()


@pytest.fixture(scope="module")
def oa_data():
    runs, _ = oa_runs(m=13, R=5, T=40, noise=0.01, seed=5)
    kw = dict(l2=0.1, transform="identity", ar=True, time_basis=3)
    ref = Simulator("optimizer-aware", **kw).fit(runs)
    assert ref.solver_stats_["shards"] > 1  # several chunks: the sharding is exercised
    return runs, kw, ref


def _same(sim, ref):
    for name in ("A_", "B_", "ar_", "basis_"):
        np.testing.assert_array_equal(getattr(sim, name), getattr(ref, name))


def test_workers_processes_equal_single_process(oa_data):
    runs, kw, ref = oa_data
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "--workers ignored" warning any more
        sim = Simulator("optimizer-aware", **kw).fit(runs, workers=2, progress=seen.append)
    _same(sim, ref)
    assert sum(seen) == runs.n_tests
    assert sim.solver_stats_["workers"] == 2
    assert sim.solver_stats_["cg_not_converged"] == 0


def test_param_sink_streams_every_test_once(oa_data):
    runs, kw, ref = oa_data
    got = {}

    def sink(tests, A, B):
        for j, t in enumerate(tests):
            assert int(t) not in got
            got[int(t)] = (A[:, j].copy(), B[:, j].copy())

    sim = Simulator("optimizer-aware", **kw).fit(runs, param_sink=sink, keep_params=False)
    assert sim.A_ is None and sorted(got) == list(range(runs.n_tests))
    for t, (A, B) in got.items():
        np.testing.assert_array_equal(A, ref.A_[:, t])
        np.testing.assert_array_equal(B, ref.B_[:, t])


@pytest.mark.slow
def test_dask_local_cluster_equals_single_process(oa_data, tmp_path):
    distributed = pytest.importorskip("distributed")
    from simfluence_cli.store.run_store import RunStore

    runs, kw, ref = oa_data
    store = RunStore(tmp_path / "store", create=True)
    store.add_runset(runs, tags=("fit",))
    loaded = store.load("all")
    local = Simulator("optimizer-aware", **kw).fit(loaded)
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        sim = Simulator("optimizer-aware", **kw).fit(runs, dask=client)  # runs scattered
        _same(sim, ref)
        assert sim.solver_stats_["dask_workers"] == 2
        # the workers reload the runs from the store path
        sim2 = Simulator("optimizer-aware", **kw).fit(loaded, dask=cluster.scheduler_address)
        _same(sim2, local)


def test_chunks_follow_the_memory_budget():
    from types import SimpleNamespace

    from simfluence_cli.model.solvers import _CG_CHUNK_BYTES, CG_MIN_CHUNK

    def sizes(n, n_obs, m, min_chunks=1):
        fake = SimpleNamespace(Z=SimpleNamespace(shape=(n_obs, n)), n_obs=n_obs)
        chunks = oa.plan_chunks(fake, np.arange(m), min_chunks=min_chunks)
        assert np.array_equal(np.concatenate(chunks), np.arange(m))
        return {len(c) for c in chunks[:-1]} or {len(chunks[0])}

    per_test = 8 * (oa.OA_OBS_ARRAYS * 32_000 + 8 * 4_000)  # M: 64 runs x 500 steps
    (k,) = sizes(2_000, 32_000, 200)
    assert k == _CG_CHUNK_BYTES // per_test
    assert sizes(20_000, 128_000, 1_000) == {CG_MIN_CHUNK}  # L: the floor
    assert sizes(300, 1_000, 100) == {100}  # small: one chunk
    assert max(sizes(300, 1_000, 100, min_chunks=8)) <= 13  # shared among threads / workers


def test_set_l2_gives_the_system_built_for_that_l2():
    runs, sched, obs = _problem(True, 3)
    y0, dprev, dy, Mk = obs.losses(np.arange(runs.n_tests), "logodds")
    s = OAChunkSystem(obs, y0, dprev, dy, Mk, True, 10.0)
    s.set_l2(0.1)
    fresh = OAChunkSystem(obs, y0, dprev, dy, Mk, True, 0.1)
    for got, want in zip(s.solve(1e-10)[:4], fresh.solve(1e-10)[:4]):
        np.testing.assert_array_equal(got, want)
    # one l2 per column: each column solves its own system
    l2 = np.array([0.01, 0.1, 1.0, 10.0, 100.0])
    s.set_l2(l2)
    a, B = s.solve(1e-10)[:2]
    for j, v in enumerate(l2):
        aj, Bj = OAChunkSystem(obs, y0, dprev, dy, Mk, True, v).solve(1e-10)[:2]
        np.testing.assert_allclose(a[:, j], aj[:, j], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(B[:, j], Bj[:, j], rtol=1e-7, atol=1e-9)


@pytest.mark.slow
def test_batched_cv_scores_equal_one_config_at_a_time():
    runs, _, _ = _problem(True, 3)
    folds = oa._folds(runs.run_ids, 3)
    cols = np.arange(runs.n_tests)
    cfgs = [
        oa.Config(t, ar, 3, l2)
        for t in ("identity", "log", "logodds")
        for ar in (False, True)
        for l2 in (0.01, 1.0, 100.0)
    ]
    batched = oa.cv_scores(runs, folds, cfgs, cols, "observed", 0.1, {})
    one = [oa.cv_scores(runs, folds, [c], cols, "observed", 0.1, {})[0] for c in cfgs]
    # warm starts along the l2 grid: equal to the CG tolerance (1e-6), not bitwise
    np.testing.assert_allclose(batched, one, rtol=1e-5)
    assert np.argmin(batched) == np.argmin(one)

"""Multi-shift CG (model/shifted_cg.py): one Krylov sequence for the whole l2 grid of the CV."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model import shifted_cg as sc
from simfluence_cli.model import simulator as _sim
from simfluence_cli.model.normal_equations import ChunkSystem, Design, SparseDesign
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.model.solvers import CG_RESIDUAL_SLACK, _ChunkSolver, solve_tests

GRID = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3]


def _theta0(method, n, b):
    if method == "linear":
        return np.concatenate([np.full(n, 1.0 / b), np.zeros(n)])
    return np.full(n, 1.0 / b) if method == "multiplicative" else np.zeros(n)


def _true_rel(system, theta0, l2, x):
    """||r + l2 theta0 - (G + l2 I) x|| / ||r + l2 theta0|| per column (the CG stopping rule)."""
    b = system.rhs + l2 * theta0[:, None]
    res = b - system.matvec(x) - l2 * x
    return np.linalg.norm(res, axis=0) / np.linalg.norm(b, axis=0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    P=st.integers(2, 30),
    k=st.integers(1, 5),
    cond=st.sampled_from([1.0, 1e2, 1e4]),
    shifts=st.lists(st.sampled_from(GRID + [0.37, 5e3]), min_size=1, max_size=8, unique=True),
    seed=st.integers(0, 10_000),
)
def test_shifted_cg_solves_every_shift(P, k, cond, shifts, seed):
    """Each shift's solution is the solution of its own system (true residual at the
    tolerance), for any SPD G, right-hand sides and grid (a column converged for some shifts
    keeps those solutions while the others iterate)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(P + 5, P)) * np.geomspace(1.0, np.sqrt(cond), P)
    G = X.T @ X
    b = rng.normal(size=(P, k))
    shifts = np.sort(np.asarray(shifts))
    bnorm = np.tile(np.linalg.norm(b, axis=0), (len(shifts), 1))
    tol = 1e-9
    Y, conv = sc.shifted_cg(lambda V, c: G @ V, b, shifts, bnorm, tol, 10_000)
    assert conv.all()
    for s, sigma in enumerate(shifts):
        H = G + sigma * np.eye(P)
        rel = np.linalg.norm(b - H @ Y[s], axis=0) / bnorm[s]
        assert rel.max() <= CG_RESIDUAL_SLACK * tol
        exact = np.linalg.solve(H, b)
        scale = np.abs(exact).max()
        assert np.abs(Y[s] - exact).max() <= 1e-5 * scale * max(1.0, np.linalg.cond(H) * tol)


@pytest.mark.parametrize("method", ["linear", "additive", "multiplicative"])
@pytest.mark.parametrize("log_every", [1, 3])
def test_penalty_path_meets_the_tolerance_and_matches_the_pcg_path(method, log_every):
    """Every penalty of the grid meets pcg's convergence test on its true residual (tol, with
    pcg's slack for the recursive-vs-true gap), and the solutions agree with the block-Jacobi
    PCG path (solve_tests) to the tolerance."""
    rs, _, _ = make_runs(40, 6, 5, 60, 3, method=method, seed=2, noise=0.01, log_every=log_every)
    d = Design(rs)
    theta0 = _theta0(method, 40, 3)
    tests = np.arange(6)
    system = SparseDesign(d, method).chunk(tests)
    tol = 1e-8
    got = sc.solve_penalty_path(system, _ChunkSolver(system, theta0), GRID, tol)
    ref = solve_tests(d, method, GRID, theta0, solver="cg", tol=1e-12)
    for l2, x, want in zip(GRID, got, ref):
        assert _true_rel(system, theta0, l2, x).max() <= CG_RESIDUAL_SLACK * tol
        assert np.abs(x - want).max() <= 1e-4 * np.abs(want).max()


def test_budget_exhausted_hands_the_rest_to_pcg(monkeypatch):
    """With no products left in the shifted budget, every penalty is finished by the
    preconditioned solver from the shifted iterate and still meets the tolerance."""
    rs, _, _ = make_runs(30, 4, 4, 50, 2, seed=4, noise=0.02, log_every=2)
    d = Design(rs)
    theta0 = _theta0("linear", 30, 2)
    system = SparseDesign(d, "linear").chunk(np.arange(4))
    solver = _ChunkSolver(system, theta0)
    finished = []
    orig = solver.solve
    monkeypatch.setattr(solver, "solve", lambda l2, **kw: finished.append(l2) or orig(l2, **kw))
    monkeypatch.setattr(sc, "BUDGET_PER_SHIFT", 0)
    got = sc.solve_penalty_path(system, solver, GRID, 1e-8)
    assert sorted(finished) == sorted(GRID)
    for l2, x in zip(GRID, got):
        assert _true_rel(system, theta0, l2, x).max() <= CG_RESIDUAL_SLACK * 1e-8


def test_drift_of_the_smallest_penalty_sends_every_penalty_to_the_check(monkeypatch):
    """When the smallest penalty's true residual fails the check (here: no slack at all, so it
    always does), every penalty is checked and each failing one is finished by the
    preconditioned solver; all of them then meet the tolerance."""
    rs, _, _ = make_runs(30, 4, 4, 50, 2, seed=9, noise=0.02)
    d = Design(rs)
    theta0 = _theta0("linear", 30, 2)
    system = SparseDesign(d, "linear").chunk(np.arange(4))
    solver = _ChunkSolver(system, theta0)
    finished = []
    orig = solver.solve
    monkeypatch.setattr(solver, "solve", lambda l2, **kw: finished.append(l2) or orig(l2, **kw))
    monkeypatch.setattr(sc, "CHECK_SLACK", 0.0)
    got = sc.solve_penalty_path(system, solver, GRID, 1e-8)
    assert sorted(finished) == sorted(GRID)
    for l2, x in zip(GRID, got):
        assert _true_rel(system, theta0, l2, x).max() <= CG_RESIDUAL_SLACK * 1e-8


def test_grid_with_a_zero_penalty_uses_the_pcg_path():
    """l2 = 0 is not shifted-CG material (unobserved parameters must be pinned to theta0):
    the whole grid then goes through solve_tests, with its very numbers."""
    rs, _, _ = make_runs(25, 3, 3, 40, 2, seed=8, noise=0.01)
    d = Design(rs)
    theta0 = _theta0("linear", 25, 2)
    system = SparseDesign(d, "linear").chunk(np.arange(3))
    grid = [0.0, 0.1, 10.0]
    assert sc.solve_penalty_path(system, _ChunkSolver(system, theta0), grid, 1e-6) is None
    got = sc.solve_grid(d, "linear", grid, theta0, np.arange(3), None, solver="cg", tol=1e-6)
    want = solve_tests(d, "linear", grid, theta0, solver="cg", tol=1e-6, chunks=[np.arange(3)])
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("method", ["linear", "additive", "multiplicative"])
@pytest.mark.parametrize("log_every", [1, 4])
def test_cv_choice_and_curve_match_the_exact_cv(method, log_every):
    """The CV's choice equals the one of exact (direct) solves and its curve is within 1%
    of theirs: each fold's solve meets the CV tolerance 1e-6 on its residual, which leaves the
    small penalties' MSE of sparse logging ill-conditioned (measured here: <= 0.62% with
    shifted CG, <= 0.21% with the PCG path it replaced; elsewhere 0.11% vs 0.72%)."""
    rs, _, _ = make_runs(30, 8, 6, 60, 2, method=method, seed=6, noise=0.02, log_every=log_every)
    exact = Simulator(method=method, l2="auto").fit(rs, solver="direct")
    got = Simulator(method=method, l2="auto").fit(rs, solver="cg")
    assert got.l2_ == exact.l2_
    np.testing.assert_allclose(
        [c["cv_mse"] for c in got.cv_curve_], [c["cv_mse"] for c in exact.cv_curve_], rtol=1e-2
    )


@pytest.fixture(scope="module")
def demo_fit_runs(tmp_path_factory):
    from pathlib import Path

    from simfluence_cli.store.run_store import RunStore

    st = RunStore(tmp_path_factory.mktemp("demo") / "store", create=True)
    st.ingest([Path(__file__).resolve().parents[1] / "sample_runs" / "fit"], tags=["fit"])
    return st.load("fit")


@pytest.mark.slow
def test_cv_on_the_demo_runs_spends_fewer_products_than_the_pcg_path(demo_fit_runs, monkeypatch):
    """On the demo's fitting runs the shifted CV spends < 0.7x the operator products of the
    warm-started PCG path it replaced (measured 168 vs 315), with the same choice and a curve
    within 1e-4 relative."""
    in_cv, calls = [False], []
    matvec, select = ChunkSystem.matvec, Simulator._select_l2

    def counted(s, V, c=None):
        if in_cv[0]:
            calls.append(1)
        return matvec(s, V, c)

    def cv(self, *a):
        in_cv[0] = True
        try:
            return select(self, *a)
        finally:
            in_cv[0] = False

    monkeypatch.setattr(ChunkSystem, "matvec", counted)
    monkeypatch.setattr(Simulator, "_select_l2", cv)
    new = Simulator(l2="auto").fit(demo_fit_runs, solver="cg")
    n_new, calls[:] = len(calls), []

    def pcg_path(design, method, grid, theta0, tests, run_ids, *, solver, tol):
        tests = np.asarray(tests)
        return solve_tests(
            design, method, list(grid), theta0, tests=tests, run_ids=run_ids,
            solver=solver, tol=tol, chunks=[tests], threads=1,
        )  # fmt: skip

    monkeypatch.setattr(_sim, "solve_grid", pcg_path)
    old = Simulator(l2="auto").fit(demo_fit_runs, solver="cg")
    assert new.l2_ == old.l2_ == 1.0
    assert n_new < 0.7 * len(calls)
    np.testing.assert_allclose(
        [c["cv_mse"] for c in new.cv_curve_], [c["cv_mse"] for c in old.cv_curve_], rtol=1e-4
    )
    assert np.array_equal(new.A_, old.A_) and np.array_equal(new.B_, old.B_)  # final fit as before

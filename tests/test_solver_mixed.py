"""Mixed-precision CG (float32 products, float64 residual replacement): same stopping rule on
the true residual, solutions equal to the direct solve within the solver's tolerance."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model import solvers
from simfluence_cli.model.normal_equations import Design, SparseDesign
from simfluence_cli.model.solvers import pcg, solve_tests


def _theta0(method, n, b):
    if method == "linear":
        return np.concatenate([np.full(n, 1.0 / b), np.zeros(n)])
    return np.full(n, 1.0 / b) if method == "multiplicative" else np.zeros(n)


def _rel(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    P=st.integers(2, 40),
    k=st.integers(1, 6),
    cond=st.sampled_from([1.0, 1e2, 1e4]),
    err=st.sampled_from([0.0, 1e-7, 1e-4]),
    tol=st.sampled_from([1e-6, 1e-10]),
    seed=st.integers(0, 10_000),
)
def test_true_residual_meets_tol_whatever_the_low_product(P, k, cond, err, tol, seed):
    """Law: with a low-precision product off by a relative ``err`` (float32 is ~1e-7), every
    column that reports convergence has TRUE relative residual <= tol (not just the
    recursive one), and the solution is the exact one to cond * tol."""
    rng = np.random.default_rng(seed)
    Hs = []
    for _ in range(k):
        Q = np.linalg.qr(rng.normal(size=(P, P)))[0]
        Hs.append(Q @ np.diag(np.geomspace(1.0, cond, P)) @ Q.T)
    E = [rng.normal(size=(P, P)) * err / np.sqrt(P) * np.linalg.norm(H, 2) for H in Hs]
    b = rng.normal(size=(P, k))

    def mv(V, cols):
        return np.stack([Hs[c] @ V[:, i] for i, c in enumerate(cols)], axis=1)

    def mv_lo(V, cols):  # a perturbed (non-symmetric) product, rounded through float32
        out = np.stack([(Hs[c] + E[c]) @ V[:, i] for i, c in enumerate(cols)], axis=1)
        return out.astype(np.float32).astype(np.float64)

    x, it, conv, rel = pcg(mv, b, lambda R, cols: R, np.zeros((P, k)), tol=tol, matvec_lo=mv_lo)
    assert conv.all()
    assert (rel <= tol).all()
    for c in range(k):
        want = np.linalg.solve(Hs[c], b[:, c])
        assert np.linalg.norm(x[:, c] - want) <= 10 * cond * tol * np.linalg.norm(want)


def test_low_product_is_used_for_the_directions():
    """The float64 product runs only for the initial residual, replacements and the final check."""
    rng = np.random.default_rng(1)
    P, k = 60, 3
    X = rng.normal(size=(P, P))
    H = X @ X.T + np.eye(P)
    b = rng.normal(size=(P, k))
    calls = {"hi": 0, "lo": 0}

    def mv(V, cols):
        calls["hi"] += 1
        return H @ V

    def mv_lo(V, cols):
        calls["lo"] += 1
        return (H.astype(np.float32) @ V.astype(np.float32)).astype(np.float64)

    x, it, conv, rel = pcg(mv, b, lambda R, c: R, np.zeros((P, k)), tol=1e-10, matvec_lo=mv_lo)
    assert conv.all() and (rel <= 1e-10).all()
    assert calls["lo"] == it.max() and calls["hi"] < calls["lo"] / 4
    np.testing.assert_allclose(x, np.linalg.solve(H, b), rtol=1e-6, atol=1e-8)


@pytest.fixture
def mixed_everywhere(monkeypatch):
    monkeypatch.setattr(solvers, "MIXED_MIN_NNZ", 0)


@pytest.mark.parametrize("method", ["linear", "additive", "multiplicative"])
@pytest.mark.parametrize("log_every", [1, 3])
def test_mixed_cg_equals_direct_solve(mixed_everywhere, method, log_every):
    """float32 products (forced on a small design) against the dense direct solve, with and
    without logging gaps, lr-scaled coefficients (gaps give fractional entries) included."""
    rs, _, _ = make_runs(30, 5, 3, 60, 3, method=method, seed=4, noise=0.01, log_every=log_every)
    d = Design(rs)
    th0 = _theta0(method, 30, 3)
    for l2 in (0.01, 1.0):
        direct = solve_tests(d, method, l2, th0, solver="direct")
        stats = {}
        mixed = solve_tests(d, method, l2, th0, solver="cg", tol=1e-12, stats=stats)
        assert stats["cg_not_converged"] == 0 and stats["cg_float32_products"]
        assert _rel(mixed, direct) < 1e-8


def test_mixed_is_on_only_for_large_designs(monkeypatch):
    rs, _, _ = make_runs(30, 4, 2, 40, 3, seed=0)
    cs = SparseDesign(Design(rs), "linear").chunk(np.arange(4))
    assert solvers._ChunkSolver(cs, np.zeros(60)).low is None  # 240 nonzeros: float64 only
    stats = {}
    solve_tests(Design(rs), "linear", 1.0, np.zeros(60), solver="cg", stats=stats)
    assert stats["cg_float32_products"] is False
    monkeypatch.setattr(solvers, "MIXED_MIN_NNZ", cs.nnz)
    low = solvers._ChunkSolver(cs, np.zeros(60)).low
    V = np.random.default_rng(0).normal(size=(60, 4))
    out = low.matvec(V.astype(np.float32), np.arange(4))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, cs.matvec(V), rtol=1e-5, atol=1e-5 * np.abs(out).max())
    monkeypatch.setattr(solvers, "MIXED_PRECISION", False)
    assert solvers._ChunkSolver(cs, np.zeros(60)).low is None


def test_mixed_path_warm_start_and_threads_deterministic(mixed_everywhere):
    """A penalty path (warm starts) under mixed precision: same numbers on 1 or 2 threads."""
    rs, _, _ = make_runs(40, 8, 3, 50, 4, seed=3, noise=0.01)
    d = Design(rs)
    th0 = _theta0("linear", 40, 4)
    grid = [10.0, 0.1, 0.001]
    one = solve_tests(d, "linear", grid, th0, solver="cg", threads=1)
    two = solve_tests(d, "linear", grid, th0, solver="cg", threads=2)
    for a, b, lam in zip(one, two, grid):
        assert np.array_equal(a, b)
        ref = solve_tests(d, "linear", lam, th0, solver="direct")
        assert _rel(a, ref) < 1e-7

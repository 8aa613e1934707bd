"""The optimizer-aware CV's l2 grid by one multi-shift CG sequence (OAChunkSystem.solve_path)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_oa_solver import _problem

from simfluence_cli.model import optimizer_aware as oa
from simfluence_cli.model import shifted_cg as sc
from simfluence_cli.model.oa_system import OAChunkSystem, _ShiftView
from simfluence_cli.model.solvers import CG_RESIDUAL_SLACK

GRID = list(oa.OA_L2_GRID)


def _system(ar, H, transform="logodds", l2=1.0):
    runs, _, obs = _problem(ar, H, transform)
    y0, dprev, dy, Mk = obs.losses(np.arange(runs.n_tests), transform)
    return OAChunkSystem(obs, y0, dprev, dy, Mk, ar, l2)


def _true_rel(s: OAChunkSystem, l2: float, U: np.ndarray) -> np.ndarray:
    """||rhs - (gram + l2 I) U|| / ||rhs|| per column (pcg's stopping rule, shrink target 0)."""
    cols = np.arange(s.k)
    res = s.rhs - s.gram(U, cols) - l2 * U
    return np.linalg.norm(res, axis=0) / np.linalg.norm(s.rhs, axis=0)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ar=st.booleans(),
    H=st.sampled_from([0, 3]),
    l2=st.floats(1e-3, 1e3),
    seed=st.integers(0, 1000),
)
def test_l2_enters_the_reduced_operator_as_a_pure_shift(ar, H, l2, seed):
    """The dense columns are not penalised: matvec at any l2 > 0 is gram + l2 I (bitwise:
    matvec is computed that way), and gram itself does not depend on the penalty."""
    s = _system(ar, H)
    cols = np.arange(s.k)
    V = np.random.default_rng(seed).normal(size=(2 * s.n, s.k))
    g = s.gram(V, cols)
    s.set_l2(l2)
    np.testing.assert_array_equal(s.gram(V, cols), g)
    np.testing.assert_array_equal(s.matvec(V, cols), g + l2 * V)


@pytest.mark.parametrize("transform", ["identity", "logodds"])
@pytest.mark.parametrize("ar,H", [(True, 3), (False, 3), (True, 0), (False, 0)])
def test_path_meets_the_tolerance_and_matches_one_pcg_per_penalty(ar, H, transform):
    """Every penalty of the grid meets pcg's test on its true residual, and its (a, B, rho,
    gamma) agree with a tight block-Jacobi PCG solve at that penalty."""
    s = _system(ar, H, transform)
    tol = 1e-8
    got = s.solve_path(GRID, tol)
    for l2, sol in zip(GRID, got):
        U = np.vstack(sol[:2])
        assert _true_rel(s, l2, U).max() <= CG_RESIDUAL_SLACK * tol
        s.set_l2(l2)
        want = s.solve(1e-12)[:4]
        for x, w in zip(sol, want):
            if w.size:  # (gamma is empty without a time basis)
                assert np.abs(x - w).max() <= 1e-5 * max(np.abs(w).max(), 1e-12)


def test_grid_order_is_kept():
    """Unsorted grids come back in their own order."""
    s = _system(True, 3)
    grid = [10.0, 0.01, 1.0]
    got = s.solve_path(grid, 1e-9)
    want = s.solve_path(sorted(grid), 1e-9)
    for l2, sol in zip(grid, got):
        ref = want[sorted(grid).index(l2)]
        for x, w in zip(sol, ref):
            np.testing.assert_array_equal(x, w)


def test_a_zero_penalty_is_not_a_shift():
    """l2 = 0 (unobserved parameters pinned through ``empty``): no shifted path."""
    assert _system(True, 3).solve_path([0.0, 1.0], 1e-6) is None


def test_budget_exhausted_hands_every_penalty_to_the_block_jacobi_pcg(monkeypatch):
    s = _system(True, 3)
    finished = []
    orig = _ShiftView.solve
    monkeypatch.setattr(
        _ShiftView, "solve", lambda self, l2, **kw: finished.append(l2) or orig(self, l2, **kw)
    )
    monkeypatch.setattr(sc, "BUDGET_PER_SHIFT", 0)
    got = s.solve_path(GRID, 1e-8)
    assert sorted(finished) == sorted(GRID)
    for l2, sol in zip(GRID, got):
        assert _true_rel(s, l2, np.vstack(sol[:2])).max() <= CG_RESIDUAL_SLACK * 1e-8


def test_shrink_target_zero_spends_no_product_on_it(monkeypatch):
    """The OA ridge shrinks toward 0: solve_penalty_path skips the product G theta0, so its
    products are the shifted sequence's plus the one true-residual check."""
    s = _system(True, 3)
    calls, in_seq = [], []
    orig, seq = OAChunkSystem.gram, sc.shifted_cg
    monkeypatch.setattr(
        OAChunkSystem, "gram", lambda self, V, c: calls.append(1) or orig(self, V, c)
    )

    def counted(matvec, *a):
        Y, conv = seq(lambda V, c: in_seq.append(1) or matvec(V, c), *a)
        assert conv.all()
        return Y, conv

    monkeypatch.setattr(sc, "shifted_cg", counted)
    s.solve_path(GRID, 1e-6)
    assert len(in_seq) > 0 and len(calls) == len(in_seq) + 1


def _configs(l2s, transforms=("identity", "logodds")):
    return [oa.Config(t, True, 3, v) for t in transforms for v in l2s]


def test_cv_path_agrees_with_the_warm_started_pcg_path(monkeypatch):
    """_solve_configs with the shifted path equals the per-penalty PCG path to the CV
    tolerance; a single penalty per transform takes the PCG path, bitwise as before."""
    runs, _, obs = _problem(True, 3)
    cols = np.arange(runs.n_tests)
    for cfgs, exact in ((_configs(GRID), False), (_configs([0.1]), True)):
        losses = {t: obs.losses(cols, t) for t in ("identity", "logodds")}
        new = oa._solve_configs(obs, cfgs, losses, True, tol=1e-6)
        monkeypatch.setattr(oa, "OA_CV_SHIFTED", False)
        old = oa._solve_configs(obs, cfgs, losses, True, tol=1e-6)
        monkeypatch.setattr(oa, "OA_CV_SHIFTED", True)
        for x, w in zip(new, old):
            if exact:
                np.testing.assert_array_equal(x, w)
            else:
                np.testing.assert_allclose(x, w, rtol=1e-3, atol=1e-4 * np.abs(w).max())


@pytest.fixture(scope="module")
def demo_fit_runs(tmp_path_factory):
    from pathlib import Path

    from simfluence_cli.store.run_store import RunStore

    st_ = RunStore(tmp_path_factory.mktemp("demo") / "store", create=True)
    st_.ingest([Path(__file__).resolve().parents[1] / "sample_runs" / "fit"], tags=["fit"])
    return st_.load("fit")


@pytest.mark.slow
def test_default_fit_on_the_demo_runs_spends_fewer_products(demo_fit_runs, monkeypatch):
    """The default (CV) optimizer-aware fit of the demo's fitting runs: fewer operator
    products than the per-penalty PCG path (measured 433 vs 519 with the final fit), the same
    chosen configuration, a CV curve within 1e-6 relative (measured 9.7e-8) and bit-identical
    final parameters (the final fit does not go through the CV)."""
    from simfluence_cli.model.simulator import Simulator

    calls = []
    orig = OAChunkSystem.gram
    monkeypatch.setattr(
        OAChunkSystem, "gram", lambda self, V, c: calls.append(1) or orig(self, V, c)
    )
    new = Simulator(method="optimizer-aware", l2="auto").fit(demo_fit_runs)
    n_new, calls[:] = len(calls), []
    monkeypatch.setattr(oa, "OA_CV_SHIFTED", False)
    old = Simulator(method="optimizer-aware", l2="auto").fit(demo_fit_runs)
    assert new.config_ == old.config_
    assert n_new < 0.9 * len(calls)
    np.testing.assert_allclose(
        [c["cv_mse"] for c in new.cv_curve_], [c["cv_mse"] for c in old.cv_curve_], rtol=1e-6
    )
    assert [{**c, "cv_mse": 0} for c in new.cv_curve_] == [
        {**c, "cv_mse": 0} for c in old.cv_curve_
    ]
    for name in ("A_", "B_", "ar_", "basis_"):
        assert np.array_equal(getattr(new, name), getattr(old, name))

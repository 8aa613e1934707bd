"""Correctness of the Simfluence fit and rollouts (closed form, recovery, order, TracIn, gaps)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simfluence_cli.errors import ModelError, SimfluenceWarning, UsageError
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model import normal_equations as _design
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet

TINY = 1e-9  # a negligible penalty


def _rel(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


def _dense_rows(run, n):
    """Independent, loop-based gap-model design of one run: (X_A, X_B, y_lin, y_add) per test.

    Between logged steps s < t: L_t - L_s + sum_{u=s+1..t} Lhat_{u-1}
    = sum_u sum_{i in c_u} [A_i Lhat_{u-1} + B_i], Lhat = straight line between L_s and L_t.
    """
    M = run.losses.shape[1]
    XA, XB, ylin, yadd = [], [], [], []
    for k in range(len(run.loss_steps) - 1):
        s, t = run.loss_steps[k], run.loss_steps[k + 1]
        Ls, Lt = run.losses[k], run.losses[k + 1]
        xa, xb, acc = np.zeros((n, M)), np.zeros(n), np.zeros(M)
        for u in range(s + 1, t + 1):
            lam = (u - 1 - s) / (t - s)
            Lhat = (1 - lam) * Ls + lam * Lt
            acc += Lhat
            for i in run.batch(u):
                xa[i] += Lhat
                xb[i] += 1
        XA.append(xa)
        XB.append(xb)
        ylin.append(Lt - Ls + acc)
        yadd.append(Lt - Ls)
    return np.array(XA), np.array(XB), np.array(ylin), np.array(yadd)


def _closed_form(runs, method, l2, theta0):
    """Ridge solution per test via numpy lstsq on the dense, penalty-augmented design."""
    n = runs.n_examples
    parts = [_dense_rows(r, n) for r in runs.runs]
    XA = np.concatenate([p[0] for p in parts])  # (obs, n, M)
    XB = np.concatenate([p[1] for p in parts])  # (obs, n)
    ylin = np.concatenate([p[2] for p in parts])
    yadd = np.concatenate([p[3] for p in parts])
    out = []
    for j in range(runs.n_tests):
        if method == "linear":
            X, y = np.hstack([XA[:, :, j], XB]), ylin[:, j]
        elif method == "multiplicative":
            X, y = XA[:, :, j], ylin[:, j]
        else:
            X, y = XB, yadd[:, j]
        P = X.shape[1]
        Xa = np.vstack([X, np.sqrt(l2) * np.eye(P)])
        ya = np.concatenate([y, np.sqrt(l2) * theta0])
        out.append(np.linalg.lstsq(Xa, ya, rcond=None)[0])
    return np.array(out)  # (M, P)


def _closed_form_standardised(runs, method, l2, theta0, scale):
    """The fit's problem: the ridge closed form on each test's losses divided by its scale
    (``Simulator.loss_scale_``), B scaled back to loss units."""
    from dataclasses import replace

    std = RunSet(
        runs.example_ids, runs.test_ids, [replace(r, losses=r.losses / scale) for r in runs.runs]
    )
    out = _closed_form(std, method, l2, theta0)
    n = runs.n_examples
    if method == "linear":
        out[:, n:] *= scale[:, None]
    elif method == "additive":
        out *= scale[:, None]
    return out


def _theta(sim):
    if sim.method == "linear":
        return np.vstack([sim.A_, sim.B_]).T
    return (sim.A_ if sim.method == "multiplicative" else sim.B_).T


# -- recovery -----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["linear", "additive", "multiplicative"]),
    extra=st.integers(0, 7),
    m=st.integers(1, 4),
    batch=st.integers(1, 3),
    n_runs=st.integers(3, 6),
    seed=st.integers(0, 10_000),
)
def test_noise_free_runs_are_recovered(method, extra, m, batch, n_runs, seed):
    n = 2 * batch + 1 + extra  # batches must vary for the parameters to be identifiable
    steps = max(8, 6 * n // batch)
    runs, A, B = make_runs(n, m, n_runs, steps, batch, method=method, seed=seed, spread=0.2)
    sim = Simulator(method=method, l2=TINY).fit(runs)
    if method != "additive":
        assert _rel(sim.A_, A) < 1e-6
    if method != "multiplicative":
        assert _rel(sim.B_, B) < 1e-6


@pytest.mark.parametrize("method", ["linear", "additive", "multiplicative"])
def test_fit_equals_dense_closed_form_and_one_step_prediction(method):
    runs, _, _ = make_runs(7, 3, 4, 12, 2, method=method, seed=3, noise=0.01)
    sim = Simulator(method=method, l2=0.3, prior="no-change").fit(runs)
    ref = _closed_form_standardised(runs, method, 0.3, sim._theta0(7), sim.loss_scale_)
    assert _rel(_theta(sim), ref) < 1e-9
    # one-step prediction on a fitting run, from the observed previous loss
    A = ref[:, :7].T if method != "additive" else np.zeros((7, 3))
    B = ref[:, -7:].T if method != "multiplicative" else np.zeros((7, 3))
    run = runs.runs[1]
    for t in (1, 5, 12):
        c = run.batch(t)
        alpha = A[c].sum(0) if method != "additive" else 1.0
        expect = alpha * run.losses[t - 1] + B[c].sum(0)
        got = sim.simulate([[list(runs.example_ids[c])]], init_loss=run.losses[t - 1])[0, 1]
        sim_noclip = Simulator.from_params(
            sim.A_, sim.B_, sim.example_ids_, sim.test_ids_, method=method, clip="none"
        )
        got_nc = sim_noclip.simulate([[list(runs.example_ids[c])]], init_loss=run.losses[t - 1])
        np.testing.assert_allclose(got_nc[0, 1], expect, rtol=1e-9)
        np.testing.assert_allclose(got, np.clip(expect, *sim.bounds_), rtol=1e-9)


@pytest.mark.parametrize("method", ["linear", "additive", "multiplicative"])
def test_sparse_logging_design_matches_gap_model(method):
    """Irregular logging: the fit equals an independent loop-based gap-model design."""
    rs, _, _ = make_runs(6, 2, 3, 20, 2, method=method, seed=5, noise=0.01)
    keep = np.array([0, 1, 2, 5, 9, 10, 16, 20])
    for r in rs.runs:
        r.loss_steps, r.losses = r.loss_steps[keep], r.losses[keep]
    sim = Simulator(method=method, l2=0.1, prior="zero").fit(rs)
    ref = _closed_form_standardised(rs, method, 0.1, sim._theta0(6), sim.loss_scale_)
    assert _rel(_theta(sim), ref) < 1e-9


def test_sparse_logging_every_5_still_fits():
    for method in ("additive", "linear", "multiplicative"):
        rs, A, B = make_runs(13, 3, 8, 60, 2, method=method, seed=2, log_every=5)
        sim = Simulator(method=method, l2=TINY).fit(rs)
        assert all(len(r.loss_steps) == 13 for r in rs.runs)
        if method == "additive":  # telescopes exactly over a gap
            assert _rel(sim.B_, B) < 1e-6
        # rollouts of unseen random curricula stay close to the truth
        held, _, _ = make_runs(
            13, 3, 2, 60, 2, method=method, seed=99, params=(A, B), init_loss=rs.runs[0].losses[0]
        )
        cur = [[list(held.example_ids[r.batch(t)]) for t in range(1, 61)] for r in held.runs]
        traj = sim.simulate(cur, init_loss=held.runs[0].losses[0])
        truth = np.stack([r.losses for r in held.runs])
        assert np.max(np.abs(traj - truth) / truth) < 0.05


def test_sparse_logging_mixed_patterns_per_test():
    """Tests logged on different steps in one run (NaN holes) are still fitted exactly (additive)."""
    rs, _, B = make_runs(5, 3, 4, 30, 1, method="additive", seed=8)
    for r in rs.runs:
        r.losses = r.losses.copy()
        r.losses[1::3, 0] = np.nan
        r.losses[2::4, 2] = np.nan
    sim = Simulator(method="additive", l2=TINY).fit(rs)
    assert _rel(sim.B_, B) < 1e-6


# -- order, TracIn, vectorisation, clipping ----------------------------------------------------


def test_order_matters_when_alpha_not_one():
    runs, _, _ = make_runs(6, 2, 4, 30, 2, seed=1, spread=0.1)
    sim = Simulator(method="linear", l2=1e-6, clip="none").fit(runs)
    a = [["e0", "e1"], ["e2", "e3"], ["e4", "e5"]]
    alphas = np.array([sim.A_[[2 * k, 2 * k + 1]].sum(0) for k in range(3)])
    assert np.min(np.abs(alphas - 1)) > 1e-3  # alpha != 1
    b = [["e4", "e5"], ["e2", "e3"], ["e0", "e1"]]
    out = sim.simulate([a, b], init_loss=[2.0, 2.0])
    assert np.max(np.abs(out[0, -1] - out[1, -1])) > 1e-6
    # additive is order-free: same final loss
    add = Simulator.from_params(
        None, sim.B_, sim.example_ids_, sim.test_ids_, method="additive", clip="none"
    )
    o2 = add.simulate([a, b], init_loss=[2.0, 2.0])
    np.testing.assert_allclose(o2[0, -1], o2[1, -1], rtol=1e-14)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 30), batch=st.integers(1, 4))
def test_additive_with_minus_tracin_score_reproduces_tracin(seed, T, batch):
    rng = np.random.default_rng(seed)
    n, m = 8, 3
    score = rng.normal(size=(n, m))  # score = predicted decrease of test loss
    ex, te = [f"x{i}" for i in range(n)], [f"z{j}" for j in range(m)]
    sim = Simulator.from_params(None, -score, ex, te, method="additive", clip="none")
    idx = rng.integers(0, n, (T, batch))
    cur = [[ex[i] for i in row] for row in idx]
    L0 = rng.uniform(1, 2, m)
    traj = sim.simulate([cur], init_loss=L0)[0]
    tracin_change = -score[idx.reshape(-1)].sum(0)  # TracIn: sum of -score over occurrences
    np.testing.assert_allclose(traj[-1] - traj[0], tracin_change, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.diff(traj, axis=0), -score[idx].sum(1), atol=1e-12)


def test_simulate_is_vectorised_over_curricula():
    runs, _, _ = make_runs(8, 4, 4, 20, 2, seed=4, noise=0.01)
    sim = Simulator(l2=0.1).fit(runs)
    rng = np.random.default_rng(0)
    curs = [
        [list(rng.choice(runs.example_ids, 2, replace=False)) for _ in range(T)] for T in (5, 9, 7)
    ]
    out = sim.simulate(curs)
    assert out.shape == (3, 10, 4)
    for c, cur in enumerate(curs):
        alone = sim.simulate([cur])
        np.testing.assert_array_equal(out[c, : len(cur) + 1], alone[0])
        assert np.all(np.isnan(out[c, len(cur) + 1 :]))
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(sim.init_loss_mean_, (3, 4)))
    sub = sim.simulate(curs, tests=["t2", "t0"])
    np.testing.assert_array_equal(sub, out[:, :, [2, 0]])
    per = sim.simulate(curs, init_loss=np.arange(12.0).reshape(3, 4) + 1)
    np.testing.assert_array_equal(per[:, 0], np.arange(12.0).reshape(3, 4) + 1)


def test_clip_keeps_losses_nonnegative_and_finite():
    n = 4
    ex, te = [f"e{i}" for i in range(n)], ["a", "b"]
    A = np.array([[1.5, 0.5], [0.5, 0.5], [0.2, 0.2], [0.5, 0.5]])
    B = np.array([[0.0, -1.0], [0.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    cur = [["e0", "e1"]] * 2000  # alpha = 2 for test a (blows up), beta = -2 for test b
    free = Simulator.from_params(A, B, ex, te, clip="none").simulate([cur], init_loss=[1.0, 1.0])
    assert not np.all(np.isfinite(free)) or np.max(free) > 1e100
    assert np.min(free[np.isfinite(free)]) < 0
    lo, hi = np.array([0.5, 0.2]), np.array([2.0, 1.5])
    sim = Simulator.from_params(A, B, ex, te, loss_range=(lo, hi))
    out = sim.simulate([cur], init_loss=[1.0, 1.0])
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    blo, bhi = sim.bounds_  # widened by clip_margin * range, never below 0
    np.testing.assert_allclose(blo, np.maximum(lo - 0.5 * (hi - lo), 0))
    np.testing.assert_allclose(bhi, hi + 0.5 * (hi - lo))
    assert np.all(out[:, 1:] <= bhi + 1e-12) and np.all(out[:, 1:] >= blo - 1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000))
def test_fitted_rollouts_with_clip_stay_in_range(seed):
    runs, _, _ = make_runs(6, 3, 3, 10, 2, seed=seed, noise=0.2)
    sim = Simulator(l2=1e-4).fit(runs)
    rng = np.random.default_rng(seed)
    cur = [[f"e{rng.integers(6)}"] * 2 for _ in range(300)]  # unlike the fitting runs
    out = sim.simulate([cur])
    lo, hi = sim.bounds_
    assert np.all(np.isfinite(out)) and np.all(out[:, 1:] >= lo) and np.all(out[:, 1:] <= hi)
    assert np.all(lo >= 0)


# -- l2 = auto ----------------------------------------------------------------------------------


def test_l2_auto_records_choice_and_curve_and_groups_by_run(monkeypatch):
    runs, _, _ = make_runs(8, 3, 6, 25, 2, seed=7, noise=0.05)
    calls = []
    orig = _design.Design.equations

    def spy(self, method, run_ids=None):
        calls.append(None if run_ids is None else list(run_ids))
        return orig(self, method, run_ids)

    monkeypatch.setattr(_design.Design, "equations", spy)
    grid = (1e-3, 1e-1, 10.0, 1e3)
    sim = Simulator(l2="auto", cv_folds=3, l2_grid=grid).fit(runs)
    assert sim.l2_ in grid
    assert [c["l2"] for c in sim.cv_curve_] == list(grid)
    mse = [c["cv_mse"] for c in sim.cv_curve_]
    assert all(np.isfinite(mse)) and sim.l2_ == grid[int(np.argmin(mse))]
    folds = sim.cv_folds_
    assert len(folds) == 3 and sorted(sum(folds, [])) == sorted(runs.run_ids)  # a partition
    train_sets = [set(c) for c in calls if c is not None]
    assert len(train_sets) == 3
    for fold, train in zip(folds, train_sets):  # whole runs held out, never split
        assert train == set(runs.run_ids) - set(fold)
    assert calls[-1] is None  # final fit on all runs with the chosen penalty
    from simfluence_cli.errors import SimfluenceWarning

    # one run cannot be cross-validated by run: l2 = 1 with a warning (issue 6), not an error
    with pytest.warns(SimfluenceWarning, match="at least 2 fitting runs"):
        one = Simulator(l2="auto").fit(runs.subset(runs.run_ids[:1]))
    assert one.l2_ == 1.0 and one.cv_curve_ is None


def test_prior_is_the_shrink_target():
    runs, _, _ = make_runs(5, 2, 3, 10, 2, seed=0, noise=0.05)
    big = 1e9
    nc = Simulator(l2=big, prior="no-change").fit(runs)
    np.testing.assert_allclose(nc.A_, 0.5, atol=1e-6)
    np.testing.assert_allclose(nc.B_, 0.0, atol=1e-6)
    z = Simulator(l2=big, prior="zero").fit(runs)
    np.testing.assert_allclose(z.A_, 0.0, atol=1e-6)


# -- unseen examples, errors --------------------------------------------------------------------


def _runs_with_unused_example():
    rs, _, _ = make_runs(4, 2, 3, 10, 2, seed=0, noise=0.01)
    return RunSet(np.append(rs.example_ids, "never"), rs.test_ids, rs.runs)


def test_unseen_policies():
    rs = _runs_with_unused_example()
    with pytest.warns(SimfluenceWarning, match="never occur"):
        sim = Simulator(l2=0.1, clip="none").fit(rs)
    assert sim.example_counts_[-1] == 0 and sim.unseen_ids([[["e0", "never", "ghost"]]]) == [
        "ghost",
        "never",
    ]
    cur = [["e0", "never"], ["e1", "e2"]]
    with pytest.raises(ModelError, match="never"):
        sim.simulate([cur])
    prior = sim.simulate([cur], unseen="prior")
    A, B = sim.A_.copy(), sim.B_.copy()
    A[-1], B[-1] = 1.0 / sim.batch_size_, 0.0  # the shrink target
    ref = Simulator.from_params(A, B, sim.example_ids_, sim.test_ids_, clip="none")
    np.testing.assert_allclose(
        prior, ref.simulate([cur], init_loss=sim.init_loss_mean_), rtol=1e-12
    )
    skip = sim.simulate([cur], unseen="skip")
    np.testing.assert_allclose(skip, sim.simulate([[["e0"], ["e1", "e2"]]]), rtol=1e-12)
    with pytest.raises(UsageError):
        sim.simulate([cur], unseen="bogus")


def test_bad_configuration_is_a_usage_error():
    runs, _, _ = make_runs(6, 2, 2, 5, 2, seed=0)
    for kw in (
        {"method": "quadratic"},
        {"prior": "one"},
        {"clip": "soft"},
        {"l2": -1.0},
        {"l2": "big"},
        {"l2": float("nan")},
    ):
        sim = Simulator(**kw)  # the constructor only stores (scikit-learn convention) ...
        with pytest.raises(UsageError):
            sim.fit(runs)  # ... and fit validates, before touching the data
    with pytest.raises(ModelError):
        Simulator().simulate([[["a"]]])


def test_unpenalised_singular_fit_falls_back_to_min_norm():
    """Two examples that always share a batch cannot be told apart: l2 = 0 still gives a fit."""
    batches = [["a", "b"]] * 6
    L = np.linspace(2, 1, 7)[:, None]
    rs = RunSet.from_batches({"r": (batches, L)}, ["z"])
    with pytest.warns(SimfluenceWarning, match="always occur together"):
        sim = Simulator(method="additive", l2=0.0).fit(rs)
    np.testing.assert_allclose(sim.B_[:, 0].sum(), L[1, 0] - L[0, 0], rtol=1e-9)


def test_runs_with_different_test_sets_and_batch_sizes():
    """A test logged in only some runs is fitted from those; batch sizes may vary."""
    rs, _, B = make_runs(6, 2, 4, 30, 2, method="additive", seed=3)
    rs2, _, _ = make_runs(
        6, 2, 2, 20, 3, method="additive", seed=4, params=(np.full((6, 2), 1 / 3), B)
    )
    for r in rs2.runs:
        r.run_id = "b-" + r.run_id
        r.losses = r.losses.copy()
        r.losses[:, 1] = np.nan  # test t1 never logged in these runs
    both = RunSet(rs.example_ids, rs.test_ids, rs.runs + rs2.runs)
    with pytest.warns(SimfluenceWarning, match=r"batch sizes vary .* 40 of 160 steps"):
        sim = Simulator(method="additive", l2=TINY).fit(both)
    assert _rel(sim.B_, B) < 1e-6
    assert sim.batch_size_ == 2.0 and np.all(np.isfinite(sim.init_loss_mean_))


@pytest.mark.parametrize("method", ["linear", "optimizer-aware"])
def test_simulate_all_tests_in_order_passes_the_parameters_without_a_copy(monkeypatch, method):
    """simulate() hands A_ / B_ themselves to the rollout when every test is selected in
    order (a copy would be 320 MB at 20,000 x 1,000), columns otherwise; same results."""
    import simfluence_cli.model.optimizer_aware as oa
    import simfluence_cli.model.rollout as ro

    runs, _, _ = make_runs(12, 6, 3, 15, 3, seed=2)
    sim = Simulator(method, l2=1.0, **({"ar": True, "time_basis": 0} if method != "linear" else {}))
    sim.fit(runs)
    seen = []
    mod, name = (ro, "rollout") if method == "linear" else (oa, "simulate_params")
    real = getattr(mod, name)

    def spy(*args, **kw):
        A = args[0] if method == "linear" else args[1]
        seen.append(A)
        return real(*args, **kw)

    monkeypatch.setattr(mod, name, spy)
    cur = [[[runs.example_ids[(t + j) % 12] for j in range(3)] for t in range(8)]]
    every = sim.simulate(cur)
    assert seen[-1] is sim.A_
    tests = list(sim.test_ids_[::-1])
    rev = sim.simulate(cur, tests=tests)
    assert seen[-1] is not sim.A_
    np.testing.assert_array_equal(rev, every[..., ::-1])

"""Exact removal deltas of the optimizer-aware recurrence (model.oa_removal): agreement with
rolling every one-example-removed curriculum again, with and without the clip acting."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simfluence_cli.model.oa_removal import oa_removal_deltas
from simfluence_cli.model.optimizer_aware import rollout


def _brute_force(a, B, rho, drift, w, idx, L0, tr, lo, hi, neutral):
    T = idx.shape[1]
    phi, gamma = np.eye(T), drift.T
    base = rollout(a, B, rho, gamma, idx, w, phi, L0, tr, lo, hi, final=True)
    out = np.zeros(a.shape)
    for i in range(a.shape[0]):
        if i == neutral or not (idx == i).any():
            continue
        sub = np.where(idx == i, neutral, idx)
        out[i] = (rollout(a, B, rho, gamma, sub, w, phi, L0, tr, lo, hi, final=True) - base).sum(0)
    return out, base


@st.composite
def problems(draw):
    R = draw(st.integers(2, 7))
    m = draw(st.integers(1, 4))
    C = draw(st.integers(1, 3))
    T = draw(st.integers(1, 40))
    b = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    tr = draw(st.sampled_from(["identity", "log", "logodds"]))
    clip = draw(st.sampled_from(["none", "wide", "tight"]))
    budget = draw(st.sampled_from([1, 2000, 10**7]))
    rng = np.random.default_rng(seed)
    a = rng.uniform(-0.3, 0.1, (R, m))
    B = rng.normal(0, 0.1, (R, m))
    neutral = R - 1
    a[neutral], B[neutral] = 0.0, 0.0  # the optimizer-aware "no change" row
    rho = rng.uniform(-0.9, 0.9, m)
    drift = rng.normal(0, 0.02, (T, m))
    idx = rng.integers(-1, R - 1, (C, T, b))  # -1 = padding; repeats within a batch
    idx[0, rng.integers(0, T)] = -1  # an all-padding step
    if C > 1:
        idx[1, T // 2 :] = -1  # a shorter curriculum
    sizes = (idx >= 0).sum(axis=2)
    w = np.where(sizes > 0, rng.uniform(0.2, 2.0, (C, T)) / np.maximum(sizes, 1), 0.0)
    L0 = rng.uniform(0.5, 3.0, (C, m))
    lo = hi = None
    if clip == "wide":
        lo, hi = np.full(m, 0.05), np.full(m, 50.0)
    elif clip == "tight":  # the clip acts on many steps
        lo, hi = rng.uniform(0.3, 1.2, m), rng.uniform(1.5, 2.5, m)
    return a, B, rho, drift, w, idx, L0, tr, lo, hi, neutral, budget


@settings(max_examples=150, deadline=None)
@given(problems())
def test_oa_removal_deltas_equal_rolling_every_removal_again(p):
    *args, neutral, budget = p
    got, final = oa_removal_deltas(*args, neutral, budget=budget)
    want, base = _brute_force(*args, neutral)
    np.testing.assert_allclose(final, base, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * (1 + np.abs(want).max()))
    absent = [i for i in range(args[0].shape[0]) if not (args[5] == i).any()]
    assert not got[absent].any()


def _problem(clip_lo):
    rng = np.random.default_rng(7)
    R, m, C, T, b = 30, 6, 4, 120, 4
    a = rng.uniform(-0.05, 0.0, (R, m))
    B = rng.normal(-0.02, 0.01, (R, m))
    a[-1] = B[-1] = 0.0
    rho = np.full(m, 0.5)
    idx = rng.integers(0, R - 1, (C, T, b))
    w = np.full((C, T), 0.25)
    lo = np.full(m, clip_lo)
    return a, B, rho, np.zeros((T, m)), w, idx, np.full((C, m), 2.0), "log", lo, lo + 10, R - 1


def test_the_certificate_passes_when_the_clip_is_far_and_falls_back_when_it_acts():
    """Far from the bounds every removal is propagated by the tables (none rolled again);
    a lower bound the losses reach makes removals near it take single exact steps, still exact."""
    for clip_lo, far in ((1e-4, True), (0.4, False)):
        p = _problem(clip_lo)
        stats: dict = {}
        got, _ = oa_removal_deltas(*p, stats=stats)
        want, base = _brute_force(*p)
        assert np.abs(want).max() > 1e-4  # removals change the final losses
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        assert stats["removals"] > 0
        if far:
            assert stats["rerolled"] == stats["exact_steps"] == 0
        else:
            assert (base <= p[8] + 1e-12).any()  # some tests end at the bound
            assert stats["exact_steps"] > 0 and stats["rerolled"] == 0


def test_removal_effect_of_an_optimizer_aware_model_equals_the_rerolled_path():
    """analysis.effects.removal_effect (exact 2-D deltas) == rolling every removal again, on a
    fitted optimizer-aware model with AR memory, a time basis, an lr schedule and the log
    transform."""
    from simfluence_cli.analysis.effects import _removal_rerolled, removal_effect
    from simfluence_cli.io.synthetic import make_params, make_runs
    from simfluence_cli.model.simulator import Simulator

    n, m, b = 12, 5, 3
    A, Bp = make_params(n, m, b, seed=5, spread=0.3)
    rs, _, _ = make_runs(n, m, 4, 30, b, seed=5, params=(A, Bp))
    for r in rs.runs:  # a decaying learning-rate schedule
        r.lr = np.linspace(1.0, 0.3, r.n_steps)
    sim = Simulator(
        method="optimizer-aware", l2=1.0, clip="observed", ar=True, time_basis=4, transform="log"
    ).fit(rs)
    assert np.abs(sim.ar_).max() > 0 and np.abs(sim.basis_).max() > 0
    got = removal_effect(sim, rs)
    neutral = sim.with_no_change_example("\x00neutral")
    bases = [r.index_matrix() for r in rs.runs]
    L0s = [r.losses[0] for r in rs.runs]
    want = _removal_rerolled(sim, neutral, bases, L0s, list(sim.test_ids_), None) / len(rs)
    assert np.abs(got).max() > 1e-6  # removals do change the final losses
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())

"""Exact removal deltas (model.rollout.removal_deltas): the clamped-affine composition law and
agreement with rolling every one-example-removed curriculum again."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simfluence_cli.model.rollout import compose_clamped, removal_deltas, rollout

_FMAX = float(np.finfo(np.float64).max)
finite = st.floats(-1e3, 1e3, allow_nan=False)


def _clamp_map(draw):
    a, b = draw(finite), draw(finite)
    l, h = sorted((draw(finite), draw(finite)))
    unbounded = draw(st.booleans())
    return (a, b, -_FMAX, _FMAX) if unbounded else (a, b, l, h)


def _apply(f, x):
    a, b, lo, hi = f
    return min(max(a * x + b, lo), hi)


@pytest.mark.slow
@given(st.data(), finite)
def test_composition_of_clamped_affine_maps_is_a_clamped_affine_map(data, x):
    """clip(c clip(a x + b, l, h) + d, l2, h2) == clip(a' x + b', l', h') with l' <= h',
    for negative, zero and positive multipliers, bounded or not."""
    f = _clamp_map(data.draw)
    g = _clamp_map(data.draw)
    a, b, lo, hi = compose_clamped(f, g)
    assert lo <= hi
    got = min(max(a * x + b, lo), hi)
    want = _apply(g, _apply(f, x))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9 * (1 + abs(a * x) + abs(b)))


def _brute_force(A, B, idx, L0, method, lo, hi, neutral):
    """Sum over curricula of final(without i) - final, each removal rolled from step 0."""
    R, m = A.shape
    out = np.zeros((R, m))
    base = rollout(A, B, idx, L0, method, lo, hi, final=True, threads=1)
    for i in range(R):
        if i == neutral or not (idx == i).any():
            continue
        rem = rollout(A, B, np.where(idx == i, neutral, idx), L0, method, lo, hi, final=True)
        out[i] = (rem - base).sum(axis=0)
    return out, base


@st.composite
def problems(draw):
    R = draw(st.integers(2, 7))
    m = draw(st.integers(1, 4))
    C = draw(st.integers(1, 3))
    T = draw(st.integers(1, 40))
    b = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    method = draw(st.sampled_from(["linear", "additive", "multiplicative"]))
    clip = draw(st.booleans())
    budget = draw(st.sampled_from([1, 500, 10**4, 10**7]))  # groups of curricula x columns
    rng = np.random.default_rng(seed)
    A = rng.uniform(-1.3, 1.6, (R, m)) / b  # negative multipliers included
    B = rng.normal(0, 0.3, (R, m))
    neutral = R - 1
    A[neutral], B[neutral] = (0.0 if method == "additive" else 1.0 / b), 0.0
    idx = rng.integers(-1, R - 1, (C, T, b))  # -1 = padding; repeats within a batch
    idx[0, rng.integers(0, T)] = -1  # an all-padding step
    if C > 1:
        idx[1, T // 2 :] = -1  # a shorter curriculum
    lo = hi = None
    if clip:
        lo = rng.uniform(-2, 0.5, m)
        hi = lo + rng.uniform(0, 3, m)
    L0 = rng.normal(0.5, 1, (C, m))
    return A, B, idx, L0, method, lo, hi, neutral, budget


@given(problems())
def test_removal_deltas_equal_rolling_every_removal_again(p):
    A, B, idx, L0, method, lo, hi, neutral, budget = p
    got, final = removal_deltas(A, B, idx, L0, method, lo, hi, neutral, budget=budget)
    want, base = _brute_force(A, B, idx, L0, method, lo, hi, neutral)
    np.testing.assert_array_equal(final, base)  # the unchanged rollout, bit for bit
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * (1 + np.abs(want).max()))
    absent = [i for i in range(A.shape[0]) if not (idx == i).any()]
    assert not got[absent].any()


def test_diverging_unclipped_curricula_fall_back_to_rolling_again():
    """Tables that overflow (|alpha| products beyond float range) are not trusted: the removal
    is rolled again, with the rollout's saturation at the largest float."""
    rng = np.random.default_rng(3)
    R, m, T, b = 4, 2, 300, 1
    A = rng.uniform(5, 9, (R, m))
    A[-1] = 1.0
    B = rng.normal(0, 1, (R, m))
    B[-1] = 0.0
    idx = rng.integers(0, R - 1, (2, T, b))
    L0 = np.ones((2, m))
    got, final = removal_deltas(A, B, idx, L0, "linear", None, None, R - 1)
    want, base = _brute_force(A, B, idx, L0, "linear", None, None, R - 1)
    np.testing.assert_array_equal(final, base)
    np.testing.assert_array_equal(got, want)


def test_removal_effect_equals_the_rerolled_path_on_a_clipped_model():
    """analysis.effects.removal_effect (exact deltas) == rolling every removal again."""
    from simfluence_cli.analysis.effects import _removal_rerolled, removal_effect
    from simfluence_cli.io.synthetic import make_params, make_runs
    from simfluence_cli.model.simulator import Simulator

    n, m, b = 12, 5, 3
    A, Bp = make_params(n, m, b, seed=5, spread=0.3)
    rs, _, _ = make_runs(n, m, 4, 30, b, seed=5, params=(A, Bp))
    sim = Simulator(method="linear", l2=1.0, clip="observed").fit(rs)
    got = removal_effect(sim, rs)
    neutral = sim.with_no_change_example("\x00neutral")
    bases = [r.index_matrix() for r in rs.runs]
    L0s = [r.losses[0] for r in rs.runs]
    want = _removal_rerolled(sim, neutral, bases, L0s, list(sim.test_ids_), None) / len(rs)
    assert sim.bounds_[0] is not None
    assert np.abs(got).max() > 1e-4  # removals do change the final losses
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

"""Curriculum distances (analysis/curriculum_distance.py) and the change intervals they scale
(Calibration.change, whatif --interval)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hs

from simfluence_cli.analysis.curriculum_distance import (
    POWER,
    WINDOWS,
    distances,
    edit_scale,
    reference,
    replacement_scale,
)
from simfluence_cli.analysis.intervals import calibrate
from simfluence_cli.analysis.whatif import NEUTRAL
from simfluence_cli.io.synthetic import make_params, make_runs
from simfluence_cli.model.simulator import Simulator

POOL = [f"e{i}" for i in range(12)]


def _curriculum(rng, steps=20, b=3):
    return [list(rng.choice(POOL, b, replace=False)) for _ in range(steps)]


curricula = hs.integers(0, 2**31 - 1).map(lambda s: _curriculum(np.random.default_rng(s)))


def _replace(cur, ids, by=NEUTRAL):
    """``cur`` with every occurrence of ``ids`` replaced in place by ``by``."""
    ids = set(ids)
    return [[by if e in ids else e for e in b] for b in cur]


def test_distances_of_simple_edits_by_hand():
    a = [["a", "b"], ["c", "d"]]
    np.testing.assert_array_equal(distances(a, a), [0.0, 0.0])
    # one of 4 occurrences replaced: |counts| differ by 2 of 8 occurrences in all
    np.testing.assert_array_equal(distances(a, [["a", "b"], ["c", "x"]]), [0.25, 0.25])
    # the same examples, other steps: the run counts agree, the windows do not
    np.testing.assert_array_equal(distances(a, [["c", "d"], ["a", "b"]]), [1.0, 0.0])
    np.testing.assert_array_equal(distances(a, []), [1.0, 1.0])
    assert np.all(distances([], []) == 0.0)


def test_order_inside_a_window_and_batch_boundaries_do_not_count():
    rng = np.random.default_rng(0)
    cur = _curriculum(rng, steps=10 * WINDOWS, b=2)
    w = len(cur) // WINDOWS
    flat = [[e for b in cur[k : k + w] for e in b] for k in range(0, len(cur), w)]
    regrouped = []  # each window's occurrences reversed and cut into other batches of 2
    for f in flat:
        f = list(reversed(f))
        regrouped += [f[i : i + 2] for i in range(0, len(f), 2)]
    assert len(regrouped) == len(cur)
    np.testing.assert_array_equal(distances(cur, regrouped), [0.0, 0.0])


@given(curricula, curricula)
def test_distances_are_symmetric_and_in_unit_interval(a, b):
    d = distances(a, b)
    np.testing.assert_array_equal(d, distances(b, a))
    assert np.all((d >= 0) & (d <= 1))
    assert d[1] <= d[0] + 1e-12  # coarser counts never differ more than finer ones


@pytest.mark.slow
@given(curricula, hs.integers(0, 2**31 - 1))
def test_in_place_replacement_distance_is_its_share_and_monotone(cur, seed):
    """Law: replacing m of N occurrences in place by a new ID gives both distances m / N, so
    nested replaced sets give non-decreasing distances and scales."""
    order = list(np.random.default_rng(seed).permutation(POOL))
    N = sum(len(b) for b in cur)
    ref = np.array([0.5, 0.1])
    prev = np.zeros(2)
    prev_scale = 0.0
    for k in range(len(order) + 1):
        edited = _replace(cur, order[:k])
        m = sum(e in set(order[:k]) for b in cur for e in b)
        d = distances(cur, edited)
        np.testing.assert_allclose(d, [m / N, m / N], rtol=0, atol=1e-15)
        assert np.all(d >= prev)
        s = edit_scale(cur, [edited], ref)[0]
        assert s >= prev_scale
        np.testing.assert_allclose(s, (max(d / ref)) ** POWER)
        prev, prev_scale = d, s


def test_edit_scale_without_reference_is_one_and_zero_edit_is_zero():
    cur = _curriculum(np.random.default_rng(1))
    np.testing.assert_array_equal(edit_scale(cur, [cur, cur[:5]], None), [1.0, 1.0])
    np.testing.assert_array_equal(edit_scale(cur, [cur], np.array([np.nan, 0.1])), [1.0])
    assert edit_scale(cur, [cur], np.array([0.5, 0.1]))[0] == 0.0


def test_reference_is_the_mean_pair_distance_and_needs_two_runs():
    rng = np.random.default_rng(2)
    cs = [_curriculum(rng) for _ in range(4)]
    want = np.mean([distances(cs[i], cs[j]) for i in range(4) for j in range(i + 1, 4)], axis=0)
    np.testing.assert_allclose(reference(cs), want)
    assert np.all(np.isnan(reference(cs[:1])))
    many = [_curriculum(rng, steps=4) for _ in range(30)]  # 435 pairs > MAX_PAIRS: sampled
    r = reference(many)
    assert np.all(np.isfinite(r)) and np.all(r > 0)
    np.testing.assert_array_equal(r, reference(many))  # seeded


# -- Calibration.change ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cal_runs():
    params = make_params(16, 6, 2, seed=3, spread=0.05)
    runs, _, _ = make_runs(
        16, 6, 24, 30, 2, seed=3, noise=0.02, params=params, init_loss=np.full(6, 2.0)
    )
    sim = Simulator("linear", l2=0.1).fit(runs)
    return calibrate(sim, runs, folds=8), runs


def _batches(runs, k):
    run = runs.runs[k]
    return [[str(runs.example_ids[q]) for q in run.batch(t)] for t in range(1, run.n_steps + 1)]


def test_change_reference_is_the_fitting_runs_pair_distance(cal_runs):
    cal, runs = cal_runs
    want = reference([_batches(runs, k) for k in range(len(runs))])
    np.testing.assert_array_equal(cal.change_reference, want)
    assert 0 < cal.change_reference[1] < cal.change_reference[0] <= 1


def test_zero_edit_gives_the_interval_zero(cal_runs):
    cal, runs = cal_runs
    cur = _batches(runs, 0)
    lo, hi = cal.change(cur, [cur], runs.runs[0].losses[0], 0.9)
    np.testing.assert_array_equal(lo, 0.0)
    np.testing.assert_array_equal(hi, 0.0)
    mlo, mhi = cal.change(cur, [cur], runs.runs[0].losses[0], 0.9, reduce="mean")
    assert mlo[0] == mhi[0] == 0.0


def test_change_half_width_grows_with_the_edit_and_reaches_the_pair_quantile(cal_runs):
    """Nested in-place removals: the part of the width beyond the fold models' spread is
    2 * scale * q, non-decreasing in the number of removed examples; an edit as far from its
    base as two fitting runs are from each other gets about the unscaled pair quantile."""
    cal, runs = cal_runs
    cur = _batches(runs, 1)
    L0 = runs.runs[1].losses[0]
    ids = list(dict.fromkeys(e for b in cur for e in b))
    edited = [_replace(cur, ids[:k]) for k in (0, 1, 2, 4, 8)]
    lo, hi = cal.change(cur, edited, L0, 0.9, reduce="mean")
    fold = cal._fold_sim([cur, *edited], L0, None, "error", final=True).mean(axis=-1)
    delta = fold[:, 1:] - fold[:, :1]
    extra = (hi - lo) - (delta.max(axis=0) - delta.min(axis=0))
    assert extra[0] == 0.0
    assert np.all(np.diff(extra) >= -1e-12) and extra[-1] > 0
    s = edit_scale(cur, edited, cal.change_reference)
    res = np.nanmean(cal.obs_final - cal.pred_final, axis=1)
    i, j = np.triu_indices(len(res), 1)
    from simfluence_cli.analysis.intervals import _quantile_abs

    q = _quantile_abs(res[i] - res[j], 0.9)
    np.testing.assert_allclose(extra, 2 * s * q, rtol=1e-12, atol=1e-15)
    # another fitting run as the "edit": scale about 1
    other = edit_scale(cur, [_batches(runs, 2)], cal.change_reference)[0]
    assert 0.7 < other < 1.4


@given(curricula, hs.sampled_from(POOL))
def test_replacement_scale_is_the_edit_scale_of_a_neutral_removal(cur, e):
    ref = np.array([0.6, 0.07])
    share = sum(x == e for b in cur for x in b) / sum(len(b) for b in cur)
    want = edit_scale(cur, [_replace(cur, [e])], ref)[0]
    np.testing.assert_allclose(replacement_scale(share, ref), want, rtol=1e-12, atol=0)
    assert replacement_scale(share, None) == 1.0


def test_removal_interval_is_scaled_by_the_examples_share(cal_runs):
    """top's removal interval: fold effects widened by s q, s the largest replacement scale
    of the example over the curricula; an example no curriculum holds gets [0, 0]."""
    from simfluence_cli.analysis.intervals import _quantile_abs

    cal, runs = cal_runs
    sub = runs.subset(list(runs.run_ids)[:3])
    ids = [str(e) for e in runs.example_ids[:3]]
    lo, hi = cal.removal(sub, ids, 0.9)
    ref = cal.change_reference
    cal.change_reference = None
    try:
        ulo, uhi = cal.removal(sub, ids, 0.9)  # unscaled: the fitting-pair quantile q
    finally:
        cal.change_reference = ref
    res = np.nanmean(cal.obs_final, axis=1) - np.nanmean(cal.pred_final, axis=1)
    i, j = np.triu_indices(len(res), 1)
    q = _quantile_abs(res[i] - res[j], 0.9)
    s = np.zeros(len(ids))
    for k in range(3):
        cur = _batches(sub, k)
        N = sum(len(b) for b in cur)
        share = np.array([sum(x == e for b in cur for x in b) for e in ids]) / N
        s = np.maximum(s, replacement_scale(share, ref))
    np.testing.assert_allclose(lo, ulo + (1 - s) * q, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hi, uhi - (1 - s) * q, rtol=0, atol=1e-12)
    assert np.all(s > 0)
    none_lo, none_hi = cal.removal(sub, ["not-an-example"], 0.9)
    assert none_lo[0] == 0.0 == none_hi[0]

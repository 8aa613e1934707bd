"""Metric definitions on hand-computed cases, and the vectorised Spearman against scipy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from simfluence_cli.analysis.metrics import run_errors, run_spearman, spearman, summarise_runs


def spearmanr(x, y):
    """scipy's Spearman, the reference (imported here: scipy.stats costs ~1 s at collection)."""
    from scipy.stats import spearmanr as reference

    return reference(x, y)


def test_spearman_hand_case():
    # d = 0, 1, 1, 0 -> rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_spearman_ties_match_scipy():
    x, y = [1, 2, 2, 3, 5], [1, 2, 3, 4, 4]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def test_spearman_constant_is_nan():
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert np.isnan(spearman([1, 2, 3], [2, 2, 2]))
    assert np.isnan(spearman([1.0], [2.0]))


def test_spearman_drops_nan_pairs():
    assert spearman([1, 2, np.nan, 4], [1, 2, 100, 3]) == pytest.approx(
        spearman([1, 2, 4], [1, 2, 3])
    )


def test_spearman_vectorised_over_axis():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    rows = spearman(X, Y, axis=1)
    cols = spearman(X, Y, axis=0)
    assert rows.shape == (5,) and cols.shape == (7,)
    for i in range(5):
        assert rows[i] == pytest.approx(spearmanr(X[i], Y[i]).statistic)
    for j in range(7):
        assert cols[j] == pytest.approx(spearmanr(X[:, j], Y[:, j]).statistic)


@settings(max_examples=60, deadline=None)
@given(arrays(np.int8, st.integers(3, 12), elements=st.integers(-3, 3)), st.integers(0, 2**31 - 1))
def test_spearman_equals_scipy_with_ties(x, seed):
    y = np.random.default_rng(seed).integers(-2, 3, len(x))
    ours = spearman(x, y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert np.isnan(ours)
    else:
        assert ours == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_run_errors_hand_case():
    sim = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    obs = np.array([[1.0, 1.0], [2.0, 3.0], [5.0, 3.0]])
    e = run_errors(sim, obs)
    # errors after step 0: [0, -1], [-2, 0]
    assert e["all_steps_mse"] == pytest.approx((0 + 1 + 4 + 0) / 4)
    assert e["all_steps_mae"] == pytest.approx(3 / 4)
    assert e["final_step_mse"] == pytest.approx((4 + 0) / 2)
    assert e["final_step_mae"] == pytest.approx(1.0)
    assert np.isnan(e["final_spearman"])  # simulated final losses are constant
    np.testing.assert_array_equal(e["count"], [2, 2])
    np.testing.assert_allclose(e["sse"], [4, 1])


def test_run_errors_ignores_unlogged():
    sim = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 4.0]])
    obs = np.array([[1.0, 1.0], [np.nan, 3.0], [3.5, 4.0]])
    e = run_errors(sim, obs)
    assert e["all_steps_mse"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert e["final_spearman"] == pytest.approx(1.0)


def test_run_spearman_conventions():
    obs = np.array([[1.0, 5.0, 2.0], [2.0, 5.0, 1.0], [3.0, 5.0, 3.0]])
    sim = np.array([[1.0, 1.0, 7.0], [2.0, 2.0, 7.0], [3.0, 3.0, 7.0]])
    rs = run_spearman(sim, obs)
    assert rs[0] == pytest.approx(1.0)
    assert np.isnan(rs[1])  # observed does not vary across runs: no information
    assert rs[2] == 0.0  # prediction does not vary: no counterfactual skill


def test_summarise_runs_means_and_std():
    a = run_errors(
        np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]]), np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 4.0]])
    )
    b = run_errors(
        np.array([[1.0, 1.0, 1.0], [3.0, 2.0, 1.0]]), np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    )
    s = summarise_runs([a, b])
    assert s["all_steps_mse"] == pytest.approx((1 / 3 + 8 / 3) / 2)
    assert s["final_spearman"] == pytest.approx((1.0 + -1.0) / 2)
    assert s["final_spearman_std"] == pytest.approx(1.0)
    assert s["n_runs"] == 2
    assert s["mae"] == s["all_steps_mae"]

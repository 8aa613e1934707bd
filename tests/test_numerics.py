"""Numerical defects found in review (issue 10, item 4), each with its regression test.

1. ``l2="auto"`` with test examples logged in only some runs (NaN clip bounds and errors
   used to make the whole CV curve NaN, and argmin then chose the smallest penalty).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from simfluence_cli.errors import SimfluenceWarning
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet

GRID = (1e-3, 1e-1, 10.0, 1e3)


def _quiet_fit(runs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimfluenceWarning)
        return Simulator(**kw).fit(runs)


def _drop_test(runs: RunSet, j: int) -> RunSet:
    keep = [i for i in range(runs.n_tests) if i != j]
    return RunSet(
        runs.example_ids,
        runs.test_ids[keep],
        [replace(r, losses=r.losses[:, keep]) for r in runs.runs],
    )


def _unlog(runs: RunSet, j: int, run_ids) -> RunSet:
    """The same runs with test j not logged (NaN) in the given runs."""
    out = []
    for r in runs.runs:
        if r.run_id in run_ids:
            L = r.losses.copy()
            L[:, j] = np.nan
            r = replace(r, losses=L)
        out.append(r)
    return RunSet(runs.example_ids, runs.test_ids, out)


# -- 1. l2 = auto with tests logged in only some runs -------------------------------------------


@pytest.fixture(scope="module")
def cv_runs():
    rs, _, _ = make_runs(10, 4, 4, 25, 2, seed=3, noise=0.05)
    return rs


def test_l2_auto_test_logged_in_one_run_only_equals_dropping_it(cv_runs):
    ids = cv_runs.run_ids
    partial = _unlog(cv_runs, 3, ids[1:])  # t3 logged in the first run only
    # one run per fold: t3 is never both trained on and scored, so it cannot inform the CV
    got = _quiet_fit(partial, l2="auto", cv_folds=4, l2_grid=GRID)
    ref = _quiet_fit(_drop_test(cv_runs, 3), l2="auto", cv_folds=4, l2_grid=GRID)
    curve = [c["cv_mse"] for c in got.cv_curve_]
    assert all(v is not None and np.isfinite(v) for v in curve)
    np.testing.assert_allclose(curve, [c["cv_mse"] for c in ref.cv_curve_], rtol=1e-9)
    assert got.l2_ == ref.l2_
    assert ref.l2_ != GRID[0]  # the data choose an interior penalty: not the grid minimum
    assert np.isfinite(got.A_).all() and np.isfinite(got.B_).all()


def test_l2_auto_test_logged_in_some_runs_has_a_finite_curve(cv_runs):
    partial = _unlog(cv_runs, 0, cv_runs.run_ids[:2])  # t0 logged in 2 of 4 runs
    sim = _quiet_fit(partial, l2="auto", cv_folds=4, l2_grid=GRID)
    curve = np.array([c["cv_mse"] for c in sim.cv_curve_], dtype=float)
    assert np.isfinite(curve).all()
    assert sim.l2_ == GRID[int(np.argmin(curve))]
    # also when step 0 is not logged for one test in one run (its rollout cannot start there)
    r0 = partial.runs[2]
    L = r0.losses.copy()
    L[0, 1] = np.nan
    partial.runs[2] = replace(r0, losses=L)
    sim = _quiet_fit(partial, l2="auto", cv_folds=4, l2_grid=GRID)
    assert all(c["cv_mse"] is not None and np.isfinite(c["cv_mse"]) for c in sim.cv_curve_)


def test_l2_auto_warns_when_no_penalty_can_be_scored(cv_runs):
    # 2 runs logging disjoint tests: no test is ever trained on and scored in one fold
    ids = cv_runs.run_ids[:2]
    rs = _unlog(_unlog(cv_runs.subset(ids), 0, ids[:1]), 1, ids[:1])
    rs = _unlog(_unlog(rs, 2, ids[1:]), 3, ids[1:])
    with pytest.warns(SimfluenceWarning, match="could not compare penalties"):
        sim = Simulator(l2="auto", cv_folds=2, l2_grid=GRID).fit(rs)
    assert sim.l2_ == 1.0 and sim.cv_curve_ is None


def test_l2_auto_diverging_penalty_is_not_chosen(cv_runs):
    # without clipping an unpenalised fit on few runs can blow up in the rollout; such a
    # penalty scores inf (it used to be NaN, which np.argmin picks first)
    sim = Simulator(l2="auto", cv_folds=2, l2_grid=GRID, clip="none")
    sse = np.array([[np.inf, np.inf], [1.0, 2.0], [0.5, 0.5], [3.0, 3.0]])
    sim.warnings_ = []
    l2, curve = sim._cv_choice(sse, np.array([2.0, 2.0]))
    assert l2 == 10.0 and curve[0]["cv_mse"] is None and curve[2]["cv_mse"] == 0.25

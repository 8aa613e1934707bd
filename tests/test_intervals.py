"""CV+ prediction intervals (analysis/intervals.py) and their CLI surface (--interval)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from simfluence_cli.analysis.intervals import (
    _cv_plus,
    calibrate,
    check_level,
    interval_columns,
    refit_like,
)
from simfluence_cli.errors import SelectionError, UsageError
from simfluence_cli.io.synthetic import make_params, make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet


def _split(runs: RunSet, n_fit: int):
    ids = list(runs.run_ids)
    return runs.subset(ids[:n_fit]), runs.subset(ids[n_fit:])


@pytest.fixture(scope="module")
def noisy():
    """Exchangeable runs (same parameters, random curricula, iid logging noise)."""
    params = make_params(16, 6, 2, seed=3, spread=0.05)
    runs, _, _ = make_runs(
        16, 6, 24, 30, 2, seed=3, noise=0.02, params=params, init_loss=np.full(6, 2.0)
    )
    fit, held = _split(runs, 16)
    sim = Simulator("linear", l2=0.1).fit(fit)
    return sim, calibrate(sim, fit, folds=8), held


def test_cv_plus_ranks_by_hand():
    # 9 runs, level 0.8: the ceil(0.8 * 10) = 8th smallest of mu + r and of -(mu - r)
    mu = np.zeros(9)
    r = np.arange(1.0, 10.0)
    lo, hi = _cv_plus(mu, r, 0.8)
    assert hi == 8.0 and lo == -8.0
    # too few runs for the level: unbounded
    lo, hi = _cv_plus(mu, r, 0.95)
    assert np.isinf(hi) and np.isinf(lo) and lo < 0
    # NaN residuals (unlogged) are left out: 8 runs, level 0.75 -> 7th smallest
    r2 = r.copy()
    r2[-1] = np.nan
    lo, hi = _cv_plus(mu, r2, 0.75)
    assert hi == 7.0


def test_level_checks_and_column_names():
    assert interval_columns(0.9) == ("lo_90", "hi_90")
    assert interval_columns(0.95) == ("lo_95", "hi_95")
    assert interval_columns(0.975) == ("lo_97_5", "hi_97_5")
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(UsageError):
            check_level(bad)


def test_refit_like_keeps_configuration_and_chosen_penalty():
    runs, _, _ = make_runs(12, 4, 6, 20, 2, seed=5, noise=0.001)
    sim = Simulator("multiplicative", l2="auto", prior="zero", cv_folds=3).fit(runs)
    sub = runs.subset(list(runs.run_ids)[:4])
    copy = refit_like(sim, sub)
    assert copy is not sim and copy.method == "multiplicative" and copy.prior == "zero"
    assert copy.l2 == sim.l2_ and copy.cv_curve_ is None  # no second penalty search
    ref = Simulator("multiplicative", l2=sim.l2_, prior="zero").fit(sub)
    np.testing.assert_allclose(copy.A_, ref.A_)
    assert sim.run_ids_ == list(runs.run_ids)  # the original is untouched


def test_coverage_is_near_nominal_on_exchangeable_runs(noisy):
    sim, cal, held = noisy
    cov90 = cal.coverage(held, 0.9)
    cov50 = cal.coverage(held, 0.5)
    c90 = np.mean([r["coverage_all"] for r in cov90])
    c50 = np.mean([r["coverage_all"] for r in cov50])
    assert 0.8 <= c90 <= 0.99
    assert 0.35 <= c50 <= 0.7
    assert np.mean([r["width_all"] for r in cov50]) < np.mean([r["width_all"] for r in cov90])


def test_trajectory_intervals_shape_and_step_zero(noisy):
    sim, cal, held = noisy
    ex = held.example_ids
    run = held.runs[0]
    cur = [[str(ex[k]) for k in run.batch(t)] for t in range(1, run.n_steps + 1)]
    L0 = run.losses[0]
    lo, hi = cal.trajectory([cur, cur[:10]], L0, 0.9)
    assert lo.shape == hi.shape == (2, run.n_steps + 1, held.n_tests)
    np.testing.assert_allclose(lo[:, 0], np.broadcast_to(L0, (2, held.n_tests)))
    np.testing.assert_allclose(hi[:, 0], lo[:, 0])
    assert np.all(hi[0, 1:] > lo[0, 1:])
    # the final-loss interval of the same curriculum uses final-step residuals
    flo, fhi = cal.final([cur], L0, 0.9)
    assert flo.shape == (1, held.n_tests) and np.all(fhi > flo)
    mlo, mhi = cal.final([cur], L0, 0.9, reduce="mean")
    assert mlo.shape == (1,) and mlo[0] < mhi[0]


def test_change_of_identical_curricula_is_zero(noisy):
    sim, cal, held = noisy
    ex = held.example_ids
    run = held.runs[1]
    cur = [[str(ex[k]) for k in run.batch(t)] for t in range(1, run.n_steps + 1)]
    lo, hi = cal.change(cur, [cur, cur[:5]], run.losses[0], 0.9)
    assert lo.shape == (2, held.n_tests)
    assert np.all(lo[0] == 0) and np.all(hi[0] == 0)  # no edit: no change, no error
    assert np.all(lo[1] < hi[1])
    # each fold model's own predicted change lies inside the interval
    short = [fm.simulate([cur[:5]], run.losses[0])[0, -1] for fm in cal.fold_models]
    full = [fm.simulate([cur], run.losses[0])[0, -1] for fm in cal.fold_models]
    delta = np.asarray(short) - np.asarray(full)
    assert np.all(delta >= lo[1] - 1e-12) and np.all(delta <= hi[1] + 1e-12)


def test_calibration_needs_three_runs():
    runs, _, _ = make_runs(8, 3, 2, 10, 2, seed=1)
    sim = Simulator("linear", l2=0.1).fit(runs)
    with pytest.raises(SelectionError):
        calibrate(sim, runs)


# -- CLI ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import save_model

    root = tmp_path_factory.mktemp("iv")
    params = make_params(16, 4, 2, seed=9, spread=0.05)
    runs, _, _ = make_runs(16, 4, 14, 20, 2, seed=9, noise=0.01, params=params)
    st = RunStore(root / "store", create=True)
    fit, held = _split(runs, 10)
    st.add_runset(fit, tags=["fit"])
    st.add_runset(held, tags=["held"])
    ids = st.select("fit")
    sim = Simulator("linear", l2=0.1).fit(st.load(ids))
    with st.write_lock():
        save_model(st, "lin", sim, runs=ids, data_hash=st.data_hash(ids))
    return root


def _cli(root, *args, input=None):
    from typer.testing import CliRunner

    from simfluence_cli.cli import app

    return CliRunner().invoke(
        app, [args[0], "--store", str(root / "store"), *args[1:]], input=input
    )


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.slow
def test_cli_simulate_interval_columns(store):
    cur = _cli(store, "curriculum", "syn-010")
    assert cur.exit_code == 0
    r = _cli(
        store, "simulate", "-", "-m", "lin", "--init-loss", "run:syn-010", "--interval", "0.9",
        "-f", "csv", input=cur.stdout,
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    rows = _rows(r.stdout)
    assert list(rows[0]) == ["step", "test_id", "loss", "lo_90", "hi_90"]
    assert len(rows) == 21 * 4
    for row in rows:
        lo, hi, loss = float(row["lo_90"]), float(row["hi_90"]), float(row["loss"])
        if row["step"] == "0":
            assert lo == hi == loss
        else:
            assert lo < hi
    assert "no saved calibration; refitting on 8 folds" in r.stderr


@pytest.mark.parametrize("level", ["1.5", "0", "1", "-0.1"])
def test_cli_interval_level_out_of_range_is_usage_error(store, level):
    # rejected while parsing, before anything is simulated: one wording for every bad level
    r = _cli(store, "simulate", "-", "-m", "lin", "--interval", level, input="e1 e2\n")
    assert r.exit_code == 2
    assert "strictly between 0 and 1" in r.stderr and f"got {float(level):g}" in r.stderr
    assert r.stdout == "" and "simulated" not in r.stderr


def test_cli_whatif_interval_reports_zero(store):
    r = _cli(store, "whatif", "-m", "lin", "--base", "syn-010", "--interval", "0.9", "-f", "csv")
    assert r.exit_code == 0, r.stderr
    rows = _rows(r.stdout)
    assert {"lo_90", "hi_90"} <= set(rows[0])
    for row in rows:  # no edit: every change is 0 and so is its interval
        assert float(row["change"]) == 0.0
        assert float(row["lo_90"]) == 0 == float(row["hi_90"])
    assert "does not differ from the base" in r.stderr and "edit scale 0.00" in r.stderr


def test_cli_whatif_note_reflects_the_scaled_interval(store):
    """The note's interval is the library's (scaled) interval of the mean change; a larger
    edit of the same base gets a larger scale and a wider interval."""
    import json

    from simfluence_cli.analysis.intervals import stored_calibration
    from simfluence_cli.analysis.whatif import Edits, apply_edits, run_batches
    from simfluence_cli.store.run_store import RunStore

    st = RunStore(store / "store")
    _, cal, _ = stored_calibration(st, "lin")
    held = st.load("held")
    base = run_batches(held, "syn-010")
    L0 = held["syn-010"].losses[0]
    ids = list(dict.fromkeys(e for b in base for e in b))
    widths, scales = [], []
    for k in (1, 6):
        r = _cli(
            store, "whatif", "-m", "lin", "--base", "syn-010", "--drop", ",".join(ids[:k]),
            "--interval", "0.9", "-f", "json",
        )  # fmt: skip
        assert r.exit_code == 0, r.stderr
        doc = json.loads(r.stdout)
        iv = doc["summary"]["interval"]
        edited = apply_edits(base, Edits(drop=ids[:k]))
        mlo, mhi = cal.change(base, [edited], L0, 0.9, reduce="mean")
        assert (iv["mean_change_lo"], iv["mean_change_hi"]) == (float(mlo[0]), float(mhi[0]))
        assert f"[{mlo[0]:+.4g}, {mhi[0]:+.4g}]" in r.stderr
        assert f"edit scale {iv['edit_scale']:.2f}" in r.stderr
        assert ("includes 0" in r.stderr) == bool(mlo[0] <= 0 <= mhi[0])
        assert 0 < iv["edit_scale"]
        assert ("extrapolated" in r.stderr) == (iv["edit_scale"] > 1)
        widths.append(mhi[0] - mlo[0])
        scales.append(iv["edit_scale"])
    assert scales[0] < scales[1]


def test_cli_whatif_warns_when_the_edit_is_larger_than_fitting_run_differences(store):
    ids = "e0,e1,e2"
    r = _cli(store, "whatif", "-m", "lin", "--base", "syn-010", "--only", ids, "--interval", "0.9")
    assert r.exit_code == 0, r.stderr
    assert "interval is extrapolated and may under-cover" in r.stderr


@pytest.mark.slow
def test_cli_eval_interval_coverage(store):
    r = _cli(store, "eval", "-m", "lin", "--runs", "held", "--interval", "0.9", "-f", "csv")
    assert r.exit_code == 0, r.stderr
    rows = {row["model"]: row for row in _rows(r.stdout)}
    cov = float(rows["lin"]["coverage_all"])
    assert 0.6 <= cov <= 1.0
    assert float(rows["lin"]["width_all"]) > 0
    assert rows["constant"]["coverage_all"] == ""  # baselines have no interval


def test_cli_top_interval_brackets_fold_effects(store):
    r = _cli(
        store, "top", "-m", "lin", "--test", "all", "--k", "2", "--interval", "0.8", "-f", "csv"
    )
    assert r.exit_code == 0, r.stderr
    rows = _rows(r.stdout)
    assert len(rows) == 4 and {"lo_80", "hi_80"} <= set(rows[0])
    for row in rows:
        assert float(row["lo_80"]) < float(row["hi_80"])
    assert "interval that includes 0" in r.stderr
    bad = _cli(store, "top", "-m", "lin", "--test", "all", "--measure", "coefficient",
               "--interval", "0.9")  # fmt: skip
    assert bad.exit_code == 2

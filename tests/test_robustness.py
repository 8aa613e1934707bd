"""Numerical robustness of fit and simulate on awkward but legal data.

Training examples never seen, examples that always co-occur, constant trajectories, losses
from 1e-8 to 1e4, a single run: the fit returns finite parameters and names the affected
examples in a SimfluenceWarning (also kept in ``Simulator.warnings_``; the fit CLI prints them
on stderr). Simulate never emits NaN for finite inputs (and stays finite with clipping).
"""

from __future__ import annotations

import csv
import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.errors import SimfluenceWarning
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import Run, RunSet
from simfluence_cli.store.run_store import RunStore

METHODS = ["linear", "additive", "multiplicative"]


def fit(rs, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sim = Simulator(**kw).fit(rs)
    msgs = [str(w.message) for w in caught if issubclass(w.category, SimfluenceWarning)]
    assert msgs == sim.warnings_
    assert np.isfinite(sim.A_).all() and np.isfinite(sim.B_).all()
    return sim, msgs


@pytest.fixture(scope="module")
def runs():
    rs, _, _ = make_runs(12, 5, 4, 30, 3, seed=1, noise=0.01)
    return rs


def curricula(rs, k=2):
    return [
        [list(rs.example_ids[r.batch(t)]) for t in range(1, r.n_steps + 1)] for r in rs.runs[:k]
    ]


@pytest.mark.parametrize("method", METHODS)
def test_clean_data_has_no_warnings(runs, method):
    _, msgs = fit(runs, method=method, l2=1.0)
    assert msgs == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("l2", [0.0, 1.0])
def test_never_seen_examples_are_named_and_stay_at_the_prior(runs, method, l2):
    rs = RunSet(
        np.append(runs.example_ids, ["ghost", "ghost2"]).astype(object), runs.test_ids, runs.runs
    )
    sim, msgs = fit(rs, method=method, l2=l2)
    (msg,) = msgs
    assert "never occur" in msg and "'ghost'" in msg and "'ghost2'" in msg
    a0 = 1 / 3 if method != "additive" else 0.0
    np.testing.assert_allclose(sim.A_[-2:], a0)
    np.testing.assert_allclose(sim.B_[-2:], 0.0)


def _cooccurring_runs(n_runs=3, T=30, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n_runs):
        idx = []
        for t in range(T):  # e0, e1 only ever appear together (steps t % 3 == 0)
            idx += [0, 1, 2] if t % 3 == 0 else list(rng.choice(np.arange(2, 12), 3, replace=False))
        L = 2 + np.cumsum(rng.normal(0, 0.01, (T + 1, 4)), axis=0)
        out.append(Run(f"r{r}", np.arange(0, 3 * T + 1, 3), np.asarray(idx), np.arange(T + 1), L))
    return RunSet(
        np.asarray([f"e{i:02d}" for i in range(12)], object),
        np.asarray([f"t{j}" for j in range(4)], object),
        out,
    )


@pytest.mark.parametrize("l2", [0.0, "auto"])
def test_always_cooccurring_examples_are_named(l2):
    sim, msgs = fit(_cooccurring_runs(), l2=l2)
    (msg,) = msgs
    assert "always occur together" in msg and "{e00, e01}" in msg
    # only their sum is identified: the penalty splits it evenly
    np.testing.assert_allclose(sim.A_[0], sim.A_[1], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sim.B_[0], sim.B_[1], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("value", [0.0, 1.5, 1e-8, 1e4])
def test_constant_trajectories_are_named_and_simulate_constant(runs, value):
    rs = RunSet(
        runs.example_ids,
        runs.test_ids,
        [
            Run(r.run_id, r.batch_ptr, r.batch_idx, r.loss_steps, np.full_like(r.losses, value))
            for r in runs.runs
        ],
    )
    sim, msgs = fit(rs, l2="auto")
    assert len(msgs) == 1 and "constant loss" in msgs[0] and "'t0'" in msgs[0]
    out = sim.simulate(curricula(rs))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, value, atol=1e-6 * max(value, 1))


def test_single_run_with_l2_auto_fits_with_a_warning(runs):
    sim, msgs = fit(runs.subset(runs.run_ids[:1]), l2="auto")
    assert sim.l2_ == 1.0 and sim.cv_curve_ is None
    assert any("at least 2 fitting runs" in m for m in msgs)


@pytest.mark.sweep
@pytest.mark.parametrize("scale", [1e-8, 1e-4, 1.0, 1e2, 1e4])
@pytest.mark.parametrize("method", METHODS)
def test_loss_scales_from_1e_8_to_1e4(runs, scale, method):
    rs = RunSet(
        runs.example_ids,
        runs.test_ids,
        [
            Run(r.run_id, r.batch_ptr, r.batch_idx, r.loss_steps, r.losses * scale)
            for r in runs.runs
        ],
    )
    sim, msgs = fit(rs, method=method, l2="auto")
    assert msgs == []
    out = sim.simulate(curricula(rs), init_loss=rs.runs[0].losses[0])
    assert np.isfinite(out).all()
    # the simulation is on the data's scale (relative error, not absolute)
    err = np.abs(out[0, -1] - rs.runs[0].losses[-1]) / scale
    assert err.max() < 0.5


def test_mixed_scales_across_tests(runs):
    f = np.array([1e-8, 1e-4, 1.0, 1e2, 1e4])
    rs = RunSet(
        runs.example_ids,
        runs.test_ids,
        [Run(r.run_id, r.batch_ptr, r.batch_idx, r.loss_steps, r.losses * f) for r in runs.runs],
    )
    sim, _ = fit(rs, l2="auto")
    out = sim.simulate(curricula(rs))
    assert np.isfinite(out).all()
    rel = np.abs(out[0, -1] - rs.runs[0].losses[-1]) / f
    assert rel.max() < 0.5


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n=st.integers(1, 6),
    m=st.integers(1, 4),
    T=st.integers(1, 12),
    b=st.integers(1, 3),
    method=st.sampled_from(METHODS),
    clip=st.sampled_from(["observed", "none"]),
    prior=st.sampled_from(["no-change", "zero"]),
    data=st.data(),
)
def test_simulate_never_emits_nan_for_finite_input(n, m, T, b, method, clip, prior, data):
    """Any finite parameters, finite initial losses (up to 1e308), any curriculum."""
    fin = st.floats(-1e3, 1e3, allow_nan=False)
    A = data.draw(arrays(np.float64, (n, m), elements=fin))
    B = data.draw(arrays(np.float64, (n, m), elements=fin))
    L0 = data.draw(arrays(np.float64, (m,), elements=st.floats(0, 1e308)))
    ids = [f"e{i}" for i in range(n)]
    cur = data.draw(
        st.lists(st.lists(st.sampled_from(ids), min_size=1, max_size=b), min_size=T, max_size=T)
    )
    lo = data.draw(arrays(np.float64, (m,), elements=st.floats(0, 1e3)))
    sim = Simulator.from_params(
        A,
        B,
        ids,
        [f"t{j}" for j in range(m)],
        method=method,
        prior=prior,
        clip=clip,
        loss_range=(lo, lo + 1.0),
        batch_size=b,
    )
    out = sim.simulate([cur], init_loss=L0)
    assert not np.isnan(out).any()
    if clip == "observed":
        assert np.isfinite(out[:, 1:]).all()


def test_fit_cli_prints_named_warnings_on_stderr(tmp_path):
    st_ = RunStore(tmp_path / "s", create=True)
    st_.add_runset(_cooccurring_runs(), tags=["fit"])
    r = CliRunner().invoke(app, ["fit", "--store", str(tmp_path / "s"), "--l2", "1"])
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "always occur together" in lines[0] and "e00" in lines[0]
    # one run, l2 auto: fits, with a warning (was a usage error)
    st1 = RunStore(tmp_path / "one", create=True)
    st1.add_runset(_cooccurring_runs(n_runs=1))
    r = CliRunner().invoke(app, ["fit", "--store", str(tmp_path / "one"), "--method", "linear"])
    assert r.exit_code == 0, r.stderr
    assert "warning: --l2 auto needs at least 2 fitting runs" in r.stderr
    r = CliRunner().invoke(
        app,
        ["simulate", "-", "--store", str(tmp_path / "one"), "--format", "csv"],
        input="e00 e01 e02\ne03 e04 e05\n",
    )
    assert r.exit_code == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))[1:]
    assert rows and all(np.isfinite(float(x[2])) for x in rows)


@pytest.mark.parametrize("final", [False, True])
def test_unclipped_divergence_saturates_instead_of_nan(final):
    """clip='none': 1e308 * 2 overflows; a later alpha of 0 must not turn inf into NaN."""
    sim = Simulator.from_params(
        np.array([[2.0], [0.0]]), np.zeros((2, 1)), ["e0", "e1"], ["t0"], clip="none"
    )
    out = sim.simulate(
        [[["e0"], ["e1"]]], init_loss=np.array([1e308]), return_="final" if final else "trajectory"
    )
    assert not np.isnan(out).any() and np.isfinite(out).all()
    assert out.ravel()[-1] == 0.0


def test_walking_a_directory_skips_tables_that_are_not_run_logs(tmp_path):
    """sample_runs/ layout: run logs next to examples.csv and a TracIn score table."""
    import gzip

    from simfluence_cli.io.synthetic import write_jsonl

    rs, _, _ = make_runs(8, 3, 2, 5, 2, seed=4)
    write_jsonl(rs, tmp_path / "logs" / "fit")
    (tmp_path / "logs" / "examples.csv").write_text("example_id,label\ne0,1\n")
    with gzip.open(tmp_path / "logs" / "tracin_scores.csv.gz", "wt") as fh:
        fh.write("test_id,example_id,score\nt0,e0,0.1\n")
    store = tmp_path / "s"
    r = CliRunner().invoke(app, ["ingest", str(tmp_path / "logs"), "--store", str(store)])
    assert r.exit_code == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note: skipped")]
    assert len(notes) == 2 and any("examples.csv" in n for n in notes)
    assert RunStore(store).run_ids() == sorted(rs.run_ids)
    # named explicitly, the same file is an error (exit 1, one line)
    r = CliRunner().invoke(
        app, ["ingest", str(tmp_path / "logs" / "examples.csv"), "--store", str(store)]
    )
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "examples.csv" in r.stderr

"""`simfluence fit`, `simulate` and `curriculum` through the CLI against a real run store."""

import csv
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from simfluence_cli import RunStore
from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet
from simfluence_cli.store.saved_models import load_model

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def data():
    rs, A, B = make_runs(12, 3, 5, 30, 2, seed=0, noise=0.002)
    # an extra run holding an example ("x_only") no fitting run trains on
    extra, _, _ = make_runs(12, 3, 1, 10, 2, seed=5, params=(A, B))
    r = extra.runs[0]
    r.run_id = "side-000"
    ex = np.append(rs.example_ids, "x_only")
    r.batch_idx = r.batch_idx.copy()
    r.batch_idx[0] = 12
    return RunSet(rs.example_ids, rs.test_ids, rs.runs), RunSet(ex, rs.test_ids, [r])


@pytest.fixture
def store(tmp_path, data):
    fit, side = data
    st = RunStore(tmp_path / "s", create=True)
    st.add_runset(fit, tags=["fit"])
    st.add_runset(side, tags=["side"])
    return st


def test_fit_saves_model_and_reports(store):
    res = invoke(
        "fit", "--store", store.path, "--runs", "fit", "--method", "linear", "--l2", "0.1", "--json"
    )
    assert res.exit_code == 0, res.stderr
    man = json.loads(res.stdout)
    assert man["name"] == "linear" and man["config"]["method"] == "linear"
    assert man["l2"] == 0.1 and man["config"]["runs"] == [f"syn-{i:03d}" for i in range(5)]
    assert man["config"]["data_hash"] == store.data_hash(man["config"]["runs"])
    assert "saved model 'linear'" in res.stderr
    sim = load_model(store, "linear")
    assert sim.A_.shape == (12, 3)


def test_default_method_auto_fits_and_records_optimizer_aware(store):
    res = invoke("fit", "--store", store.path, "--runs", "fit", "--l2", "0.1", "--json")
    assert res.exit_code == 0, res.stderr
    man = json.loads(res.stdout)
    assert man["name"] == "optimizer-aware" and man["config"]["method"] == "optimizer-aware"
    assert "optimizer_aware" in man and "l2=0.1 (given)" in res.stderr
    # the resolved method is what identifies the fit: naming it is the same configuration
    res = invoke("fit", "-s", store.path, "-r", "fit", "--method", "optimizer-aware", "--l2", "0.1")
    assert res.exit_code == 0 and "up to date" in res.stderr


def test_default_method_auto_is_linear_when_losses_are_not_logged_every_step(tmp_path):
    sparse, _, _ = make_runs(12, 3, 4, 30, 2, seed=0, noise=0.002, log_every=3)
    st = RunStore(tmp_path / "sparse", create=True)
    st.add_runset(sparse)
    res = invoke("fit", "--store", st.path, "--l2", "0.1", "--json")
    assert res.exit_code == 0, res.stderr
    man = json.loads(res.stdout)
    assert man["name"] == "linear" and man["config"]["method"] == "linear"
    # one note says why: which runs lack a loss at some steps, and what to log instead
    assert (
        "note: method auto is linear here: 4 of 4 fitting run(s) log test losses at only some "
        "steps (e.g. syn-000: 11 of 31); the optimizer-aware method needs a loss after every step"
    ) in " ".join(res.stderr.split())
    # the library resolves "auto" the same way from the runs themselves
    assert Simulator("auto", l2=0.1).fit(sparse).method == "linear"
    every, _, _ = make_runs(12, 3, 4, 30, 2, seed=0, noise=0.002)
    assert Simulator("auto", l2=0.1).fit(every).method == "optimizer-aware"


def test_fit_auto_records_cv_and_methods(store):
    res = invoke("fit", "-s", store.path, "-r", "fit", "--method", "additive", "--json")
    assert res.exit_code == 0, res.stderr
    man = json.loads(res.stdout)
    assert man["name"] == "additive" and man["config"]["l2"] == "auto"
    assert man["l2"] in [c["l2"] for c in man["cv_curve"]] and len(man["cv_curve"]) == 7
    assert "CV rollout MSE" in res.stderr


def test_refit_same_is_noop_and_different_is_refused(store):
    lin = ("--method", "linear")
    assert invoke("fit", "-s", store.path, "-r", "fit", *lin, "--l2", "1").exit_code == 0
    before = json.loads((store.path / "models/linear/model.json").read_text())
    res = invoke("fit", "-s", store.path, "-r", "fit", *lin, "--l2", "1")
    assert res.exit_code == 0 and "up to date" in res.stderr
    assert json.loads((store.path / "models/linear/model.json").read_text()) == before
    res = invoke("fit", "-s", store.path, "-r", "fit", *lin, "--l2", "1", "--prior", "zero")
    assert res.exit_code == 1
    assert "different configuration" in res.stderr and '"no-change" -> "zero"' in res.stderr
    assert "existing:" in res.stderr and "new:" in res.stderr and "--replace" in res.stderr
    res = invoke("fit", "-s", store.path, "-r", "all", *lin, "--l2", "1")  # different runs
    assert res.exit_code == 1 and "runs: 5 -> 6" in res.stderr
    res = invoke(
        "fit", "-s", store.path, "-r", "fit", *lin, "--l2", "1", "--prior", "zero", "--replace"
    )
    assert res.exit_code == 0
    assert (
        json.loads((store.path / "models/linear/model.json").read_text())["config"]["prior"]
        == "zero"
    )


@pytest.mark.slow
def test_fit_usage_errors(store, tmp_path):
    for args, code in (
        (["--l2", "-1"], 2),
        (["--l2", "lots"], 2),
        (["--method", "cubic"], 2),
        (["--name", "../x"], 2),
        (["--runs", "nosuchtag"], 1),
    ):
        res = invoke("fit", "-s", store.path, *args)
        assert res.exit_code == code, (args, res.stderr)
        assert "Traceback" not in res.stderr
    res = invoke("fit", "-s", tmp_path / "missing")
    assert res.exit_code == 1 and "no run store" in res.stderr


@pytest.fixture
def fitted(store):
    lin = ("--method", "linear")
    assert invoke("fit", "-s", store.path, "-r", "fit", *lin, "--l2", "0.1").exit_code == 0
    return store


def _curriculum(store, run="syn-001"):
    res = invoke("curriculum", run, "-s", store.path)
    assert res.exit_code == 0, res.stderr
    return res.stdout


def test_curriculum_command_round_trips(fitted):
    text = _curriculum(fitted)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    rs = fitted.load(["syn-001"])
    assert len(lines) == rs.runs[0].n_steps
    assert lines[0].split() == list(rs.example_ids[rs.runs[0].batch(1)])
    res = invoke("curriculum", "syn-*", "-s", fitted.path)
    assert res.exit_code == 1 and "matches 5 runs" in res.stderr


def test_simulate_long_csv_matches_python_api(fitted, tmp_path):
    cur = tmp_path / "c.txt"
    cur.write_text(_curriculum(fitted))
    res = invoke(
        "simulate",
        cur,
        "-s",
        fitted.path,
        "--model",
        "linear",
        "-f",
        "csv",
        "--init-loss",
        "run:syn-001",
    )
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0]) == ["step", "test_id", "loss"]
    assert len(rows) == 31 * 3 and rows[0]["step"] == "0" and rows[-1]["step"] == "30"
    sim = load_model(fitted, "linear")
    run = fitted.load(["syn-001"]).runs[0]
    from simfluence_cli.io.curriculum import read_curriculum

    ref = sim.simulate([read_curriculum(str(cur))], init_loss=run.losses[0])[0]
    got = np.array([float(r["loss"]) for r in rows]).reshape(31, 3)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(got[0], run.losses[0])
    # close to the run's own logged losses (it is a fitting run, low noise)
    assert np.max(np.abs(got - run.losses)) < 0.05


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "table"])
def test_simulate_formats(fitted, tmp_path, fmt):
    cur = tmp_path / "c.txt"
    cur.write_text("# two steps\ne0 e1\n\ne2 e3  # trailing comment\n")
    args = ["simulate", cur, "-s", fitted.path, "-f", fmt, "--tests", "t2,t0"]
    out = tmp_path / f"o.{fmt}"
    if fmt == "parquet":
        args += ["-o", out]
    res = invoke(*args)
    assert res.exit_code == 0, res.stderr
    if fmt == "json":
        recs = json.loads(res.stdout)
        assert [(r["step"], r["test_id"]) for r in recs][:3] == [(0, "t2"), (0, "t0"), (1, "t2")]
    elif fmt == "jsonl":
        assert len(res.stdout.splitlines()) == 6
    elif fmt == "parquet":
        t = pq.read_table(out)
        assert t.num_rows == 6 and t.column_names == ["step", "test_id", "loss"]
        assert b"simfluence.columns" in t.schema.metadata
    else:
        assert "t2" in res.stdout and "loss" in res.stdout


def test_simulate_stdin_and_init_file(fitted, tmp_path):
    init = tmp_path / "init.csv"
    init.write_text("test_id,loss\nt0,1.0\nt1,2.0\nt2,3.0\nzz,9\n")
    res = invoke(
        "simulate", "-", "-s", fitted.path, "--init-loss", init, "-f", "csv", input="e0 e1\ne4 e5\n"
    )
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [float(r["loss"]) for r in rows[:3]] == [1.0, 2.0, 3.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("test_id,loss\nt0,1.0\nt1,abc\n")
    res = invoke("simulate", "-", "-s", fitted.path, "--init-loss", bad, input="e0 e1\n")
    assert res.exit_code == 1 and f"{bad}:3:" in res.stderr and "loss" in res.stderr
    short = tmp_path / "short.csv"
    short.write_text("test_id,loss\nt0,1.0\n")
    res = invoke("simulate", "-", "-s", fitted.path, "--init-loss", short, input="e0 e1\n")
    assert res.exit_code == 1 and "t1" in res.stderr


def test_simulate_unknown_and_unseen_ids(fitted, tmp_path):
    cur = tmp_path / "c.txt"
    cur.write_text("e0 e1\n# comment\nghost e2\ne3 x_only\n")
    res = invoke("simulate", cur, "-s", fitted.path)
    assert res.exit_code == 1
    assert "ghost (line 3)" in res.stderr and "unknown" in res.stderr and "x_only" not in res.stderr
    cur.write_text("e0 e1\n# comment\ne2 e3\ne3 x_only\n")
    res = invoke("simulate", cur, "-s", fitted.path)
    assert res.exit_code == 1 and "x_only (line 4)" in res.stderr and "--unseen" in res.stderr
    for policy in ("prior", "skip"):
        res = invoke("simulate", cur, "-s", fitted.path, "--unseen", policy, "-f", "csv")
        assert res.exit_code == 0, res.stderr
        assert "x_only" in res.stderr  # a warning says which examples were handled
        assert len(res.stdout.splitlines()) == 1 + 4 * 3


def test_simulate_errors(fitted, tmp_path):
    cur = tmp_path / "c.txt"
    cur.write_text("e0 e1\n")
    res = invoke("simulate", cur, "-s", fitted.path, "--model", "nope")
    assert res.exit_code == 1 and "available: linear" in res.stderr
    res = invoke("simulate", cur, "-s", fitted.path, "--tests", "t0,tX")
    assert res.exit_code == 1 and "tX" in res.stderr
    res = invoke("simulate", cur, "-s", fitted.path, "--init-loss", "run:nope")
    assert res.exit_code == 1 and "nope" in res.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    res = invoke("simulate", empty, "-s", fitted.path)
    assert res.exit_code == 1 and "no training steps" in res.stderr
    res = invoke("simulate", tmp_path / "missing.txt", "-s", fitted.path)
    assert res.exit_code == 1 and "cannot read" in res.stderr
    res = invoke("simulate", cur, "-s", fitted.path, "-f", "table", "-o", tmp_path / "x")
    assert res.exit_code == 2
    for r in (res,):
        assert "Traceback" not in r.stderr


def test_simulate_batch_size_warning_and_default_model(store, tmp_path):
    cur = tmp_path / "c.txt"
    cur.write_text("e0 e1 e2\n")
    res = invoke("simulate", cur, "-s", store.path)
    assert res.exit_code == 2 and "no models" in res.stderr
    invoke("fit", "-s", store.path, "-r", "fit", "--method", "linear", "--l2", "1")
    res = invoke("simulate", cur, "-s", store.path, "-f", "csv")  # the only model is the default
    assert res.exit_code == 0 and "batch sizes [3]" in res.stderr
    invoke("fit", "-s", store.path, "-r", "fit", "--l2", "1", "--method", "additive")
    res = invoke("simulate", cur, "-s", store.path)
    assert res.exit_code == 2 and "additive, linear" in res.stderr


def test_help_states_meanings():
    res = invoke("fit", "--help")
    assert "no-change" in res.stdout and "cross-validation" in res.stdout
    res = invoke("simulate", "--help")
    assert "step,test_id,loss" in res.stdout and "--unseen" in res.stdout

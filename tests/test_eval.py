"""simfluence eval: baselines, the evaluation core, and the CLI (default runs, flags, output)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from simfluence_cli.analysis.evaluation import evaluate
from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.baselines import ConstantBaseline, MeanTrajectoryBaseline
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import save_model

RESULT_KEYS = {
    "model",
    "all_steps_mse",
    "final_step_mse",
    "final_spearman",
    "final_spearman_std",
    "run_spearman",
    "n_runs",
    "all_steps_mae",
}


@pytest.fixture(scope="module")
def synth():
    # few steps over a larger pool: which examples a run sees changes its final losses
    rs, A, B = make_runs(40, 8, 60, 15, 2, seed=3, noise=1e-4, spread=0.3)
    return rs, A, B


def _split(rs):
    return rs.subset(rs.run_ids[:40]), rs.subset(rs.run_ids[40:])


def test_run_spearman_separates_true_simulator_from_mean_trajectory(synth):
    rs, A, B = synth
    fit, held = _split(rs)
    true = Simulator.from_params(A, B, rs.example_ids, rs.test_ids, batch_size=2, clip="none")
    models = {
        "true": true,
        "linear": Simulator(l2=1e-3).fit(fit),
        "constant": ConstantBaseline(),
        "mean-trajectory": MeanTrajectoryBaseline().fit(fit),
    }
    ev = evaluate(models, held)
    s = {r["model"]: r for r in ev.summary_rows()}
    assert s["true"]["run_spearman"] > 0.99
    assert s["linear"]["run_spearman"] > 0.8
    assert s["mean-trajectory"]["run_spearman"] == 0.0
    # ... although mean-trajectory ranks test examples well (it knows which are hard)
    assert s["mean-trajectory"]["final_spearman"] > 0.5
    assert s["true"]["all_steps_mse"] < 1e-6
    assert (
        s["linear"]["all_steps_mse"]
        < s["mean-trajectory"]["all_steps_mse"]
        < s["constant"]["all_steps_mse"]
    )
    assert all(r["n_runs"] == 20 and r["n_tests"] == 8 for r in s.values())
    assert len(ev.run_rows()) == 4 * 20
    assert len(ev.test_rows()) == 4 * 8


def test_constant_baseline_repeats_l0():
    out = ConstantBaseline().simulate(
        np.zeros((2, 3, 1), dtype=np.int64), np.array([[1.0, 2.0], [3.0, 4.0]])
    )
    assert out.shape == (2, 4, 2)
    np.testing.assert_array_equal(out[1, 3], [3.0, 4.0])


def test_mean_trajectory_interpolates_sparse_logging_and_holds_the_end():
    rs = RunSet.from_batches(
        {
            "a": ([["x"]] * 4, {0: [1.0], 2: [3.0], 4: [5.0]}),
            "b": ([["x"]] * 2, np.array([[3.0], [3.0], [3.0]])),
        },
        test_ids=["t"],
    )
    mt = MeanTrajectoryBaseline().fit(rs)
    np.testing.assert_allclose(mt.mean_[:, 0], [2.0, 2.5, 3.0, 4.0, 5.0])
    out = mt.simulate([[["x"]] * 6], None)
    np.testing.assert_allclose(out[0, :, 0], [2.0, 2.5, 3.0, 4.0, 5.0, 5.0, 5.0])


# ---- CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory, synth):
    rs, _, _ = synth
    fit, held = _split(rs)
    path = tmp_path_factory.mktemp("evalstore") / "store"
    st = RunStore(path, create=True)
    st.add_runset(fit, tags=["fit"])
    st.add_runset(held, tags=["heldout"])
    for name, method in (("lin", "linear"), ("add", "additive")):
        sim = Simulator(method=method, l2=1e-3).fit(fit)
        with st.write_lock():
            save_model(
                st, name, sim, runs=fit.run_ids, data_hash=st.data_hash(fit.run_ids), selector="fit"
            )
    return path


def _run(args):
    res = CliRunner().invoke(app, args)
    return res


def test_eval_json_defaults_to_runs_not_fitted_on(store):
    res = _run(
        ["eval", "--store", str(store), "--model", "lin", "--model", "add", "--format", "json"]
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    names = [r["model"] for r in doc["results"]]
    assert names == ["lin", "add", "constant", "mean-trajectory"]
    for r in doc["results"]:
        assert RESULT_KEYS <= set(r)
        assert r["n_runs"] == 20
        assert r["on_fitting_runs"] == 0
    assert all(rid.startswith("syn-0") and int(rid[4:]) >= 40 for rid in doc["runs"])
    assert doc["fitting_runs_evaluated"] == []
    lin = doc["models"][0]
    assert lin["name"] == "lin" and lin["data_hash"] and lin["fitted_at"]
    assert lin["config"]["method"] == "linear" and len(lin["fitting_runs"]) == 40
    assert len(doc["baselines"]["mean-trajectory"]["runs"]) == 40
    by = {r["model"]: r for r in doc["results"]}
    assert by["lin"]["run_spearman"] > by["mean-trajectory"]["run_spearman"]


def test_eval_drops_fitting_runs_from_an_explicit_selection(store):
    res = _run(["eval", "--store", str(store), "-m", "lin", "--runs", "all", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    assert "left out 40 run(s)" in res.stderr
    assert len(json.loads(res.stdout)["runs"]) == 20


def test_eval_on_fitting_runs_needs_the_flag_and_is_flagged(store):
    res = _run(["eval", "--store", str(store), "-m", "lin", "--runs", "fit", "--format", "json"])
    assert res.exit_code == 1
    assert "--allow-fitting-runs" in res.stderr
    res = _run(
        [
            "eval",
            "--store",
            str(store),
            "-m",
            "lin",
            "--runs",
            "fit",
            "--allow-fitting-runs",
            "--format",
            "json",
        ]
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert len(doc["fitting_runs_evaluated"]) == 40
    assert doc["results"][0]["on_fitting_runs"] == 40
    assert "fitted on" in res.stderr


def test_eval_breakdowns_and_csv(store):
    res = _run(["eval", "--store", str(store), "-m", "lin", "--by", "run", "--format", "csv"])
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("model,run,all_steps_mse")
    assert len(lines) == 1 + 3 * 20
    assert "data_hash=" in res.stderr  # provenance of csv output on stderr
    res = _run(["eval", "--store", str(store), "-m", "lin", "--by", "test", "--format", "json"])
    doc = json.loads(res.stdout)
    assert len(doc["results"]) == 3 * 8
    assert {"model", "test_id", "run_spearman"} <= set(doc["results"][0])
    res = _run(["eval", "--store", str(store), "-m", "lin", "--format", "table"])
    assert res.exit_code == 0
    assert "mean-trajectory" in res.stdout and "spearman" in res.stdout and "lin " in res.stdout


@pytest.mark.slow
def test_eval_errors(store):
    res = _run(["eval", "--store", str(store), "-m", "nope"])
    assert res.exit_code == 1 and "no model named 'nope'" in res.stderr
    res = _run(["eval", "--store", str(store), "-m", "lin", "-m", "lin"])
    assert res.exit_code == 2
    res = _run(["eval", "--store", str(store), "-m", "lin", "--tests", "t0,zz"])
    assert res.exit_code == 1 and "zz" in res.stderr

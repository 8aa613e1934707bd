"""simfluence top: the removal-effect measure (counterfactual), the coefficient measure, the CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from simfluence_cli.analysis.effects import coefficient_effect, removal_effect, top_examples
from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_params, make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import save_model

N, M, B = 10, 3, 2


def _additive_params():
    Bp = np.full((N, M), -0.001)
    Bp[0] = -0.05  # e0 clearly helpful for every test example
    Bp[1] = +0.03  # e1 clearly harmful
    return np.full((N, M), 1.0 / B), Bp


@pytest.fixture(scope="module")
def additive():
    A, Bp = _additive_params()
    rs, _, _ = make_runs(N, M, 4, 12, B, method="additive", seed=2, params=(A, Bp))
    sim = Simulator.from_params(
        A, Bp, rs.example_ids, rs.test_ids, method="additive", batch_size=B, clip="none"
    )
    return rs, sim, Bp


def test_removal_effect_of_additive_model_is_minus_b_times_occurrences(additive):
    rs, sim, Bp = additive
    eff = removal_effect(sim, rs)
    occ = np.mean([np.bincount(r.batch_idx, minlength=N) for r in rs.runs], axis=0)
    np.testing.assert_allclose(eff, -Bp * occ[:, None], atol=1e-12)
    rows = top_examples(eff.mean(axis=1), sim.example_ids_, 1, "removal_effect")
    assert rows[0]["direction"] == "helpful" and rows[0]["example_id"] == "e0"
    assert rows[0]["removal_effect"] > 0
    assert rows[1]["direction"] == "harmful" and rows[1]["example_id"] == "e1"
    assert rows[1]["removal_effect"] < 0


def test_removal_fills_the_slot_with_a_neutral_example():
    """Linear model: removal == replacing the example by one with A = 1/b, B = 0 (brute force)."""
    A, Bp = make_params(N, M, B, seed=4, spread=0.2)
    rs, _, _ = make_runs(N, M, 3, 10, B, seed=4, params=(A, Bp))
    sim = Simulator.from_params(A, Bp, rs.example_ids, rs.test_ids, batch_size=B, clip="none")
    eff = removal_effect(sim, rs)
    ids = list(rs.example_ids) + ["neutral"]
    big = Simulator.from_params(
        np.vstack([A, np.full((1, M), 1.0 / B)]),
        np.vstack([Bp, np.zeros((1, M))]),
        ids,
        rs.test_ids,
        batch_size=B,
        clip="none",
    )
    for i in (0, 3, 7):
        total = 0.0
        for r in rs.runs:
            cur = [[rs.example_ids[j] for j in r.batch(t)] for t in range(1, r.n_steps + 1)]
            rep = [["neutral" if e == f"e{i}" else e for e in b] for b in cur]
            out = big.simulate([cur, rep], r.losses[0])
            total = total + out[1, -1] - out[0, -1]
        np.testing.assert_allclose(eff[i], total / len(rs.runs), atol=1e-12)


def test_coefficient_measure_signs(additive):
    _, sim, Bp = additive
    np.testing.assert_allclose(coefficient_effect(sim), -Bp)
    np.testing.assert_allclose(coefficient_effect(sim, ["t1"]), -Bp[:, [1]])


def test_top_examples_ties_and_k():
    rows = top_examples(
        np.array([0.0, 1.0, 1.0, -2.0]),
        np.array(["d", "c", "b", "a"], dtype=object),
        2,
        "v",
        counts=np.array([1, 2, 3, 4]),
    )
    assert [r["example_id"] for r in rows] == ["b", "c", "a", "d"]  # ties broken by id
    assert rows[2]["occurrences"] == 4


@pytest.fixture(scope="module")
def store(tmp_path_factory, additive):
    rs, sim, _ = additive
    path = tmp_path_factory.mktemp("topstore") / "store"
    st = RunStore(path, create=True)
    st.add_runset(rs, tags=["fit"])
    sim.example_counts_ = np.sum([np.bincount(r.batch_idx, minlength=N) for r in rs.runs], axis=0)
    sim.run_ids_ = rs.run_ids
    with st.write_lock():
        save_model(st, "add", sim, runs=rs.run_ids, data_hash=st.data_hash(rs.run_ids))
    return path


def test_cli_top_json_and_table(store):
    r = CliRunner().invoke(
        app,
        [
            "top",
            "--store",
            str(store),
            "-m",
            "add",
            "--test",
            "all",
            "--k",
            "2",
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["measure"] == "removal" and "positive = helpful" in doc["definition"]
    res = doc["results"]
    assert len(res) == 4
    assert res[0]["example_id"] == "e0" and res[0]["direction"] == "helpful"
    assert res[2]["example_id"] == "e1" and res[2]["direction"] == "harmful"
    assert res[0]["removal_effect"] > 0 > res[2]["removal_effect"]
    r = CliRunner().invoke(
        app,
        [
            "top",
            "--store",
            str(store),
            "-m",
            "add",
            "--test",
            "t2",
            "--k",
            "1",
            "--measure",
            "coefficient",
            "--format",
            "table",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert "step_effect" in r.stdout and "positive = helpful" in r.stdout and "e0" in r.stdout


def test_cli_top_errors(store):
    r = CliRunner().invoke(app, ["top", "--store", str(store), "-m", "add", "--test", "zz"])
    assert r.exit_code == 1 and "zz" in r.stderr
    r = CliRunner().invoke(
        app, ["top", "--store", str(store), "-m", "add", "--test", "all", "--k", "0"]
    )
    assert r.exit_code == 2

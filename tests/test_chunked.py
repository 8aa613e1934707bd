"""Test-chunked use of stored models: eval, top and simulate load a model's parameters one chunk
of test examples at a time ($SIMFLUENCE_TEST_CHUNK); results equal the one-chunk ones."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from simfluence_cli.analysis.effects import mean_effect
from simfluence_cli.analysis.evaluation import evaluate
from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store import saved_models as models_mod
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import StoredModel, load_model, param_chunk_size, save_model

N, M = 30, 7


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rs, _, _ = make_runs(N, M, 10, 12, 2, seed=5, noise=1e-3, spread=0.3)
    fit, held = rs.subset(rs.run_ids[:6]), rs.subset(rs.run_ids[6:])
    path = tmp_path_factory.mktemp("chunked") / "store"
    st = RunStore(path, create=True)
    st.add_runset(fit, tags=["fit"])
    st.add_runset(held, tags=["heldout"])
    sim = Simulator(l2=1e-3).fit(st.load(fit.run_ids))
    mp = pytest.MonkeyPatch()
    mp.setattr(models_mod, "ROW_GROUP_ROWS", 2 * N)  # 2 tests per row group: several groups
    with st.write_lock():
        save_model(st, "lin", sim, runs=list(fit.run_ids), data_hash=st.data_hash(fit.run_ids))
    mp.undo()
    return path, st, sim, held


def _chunk(monkeypatch, k):
    monkeypatch.setenv("SIMFLUENCE_TEST_CHUNK", str(k))


def test_chunk_size_default_and_env(monkeypatch):
    monkeypatch.delenv("SIMFLUENCE_TEST_CHUNK", raising=False)
    assert param_chunk_size(20_000) == 128 * 2**20 // (16 * 20_000) == 419
    assert param_chunk_size(10**9) == 1 and param_chunk_size(10, n_tests=5) == 5
    _chunk(monkeypatch, 3)
    assert param_chunk_size(20_000) == 3
    _chunk(monkeypatch, 0)
    with pytest.raises(Exception, match="SIMFLUENCE_TEST_CHUNK"):
        param_chunk_size(10)


def test_subset_load_reads_only_needed_row_groups(setup):
    path, st, sim, _ = setup
    pf = pq.ParquetFile(
        path
        / "models"
        / "lin"
        / load_model(st, "lin", parameters=False).manifest_["files"]["parameters"]
    )
    assert pf.metadata.num_row_groups == 4  # 2 tests per group, 7 tests
    full = load_model(st, "lin")
    np.testing.assert_array_equal(full.A_, sim.A_)
    for subset in (["t6"], ["t3", "t0"], ["t1", "t2", "t5"], list(sim.test_ids_)[::-1]):
        part = load_model(st, "lin", tests=subset)
        cols = [list(sim.test_ids_).index(t) for t in subset]
        assert list(part.test_ids_) == subset
        np.testing.assert_array_equal(part.A_, sim.A_[:, cols])
        np.testing.assert_array_equal(part.B_, sim.B_[:, cols])
        np.testing.assert_array_equal(part.loss_max_, sim.loss_max_[cols])
    meta = load_model(st, "lin", parameters=False)
    assert meta.A_ is None and list(meta.test_ids_) == list(sim.test_ids_)


def _close(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    elif isinstance(a, (float, np.ndarray, np.floating)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15, equal_nan=True)
    else:
        assert a == b


@pytest.mark.parametrize("k", [1, 2, 3])
def test_evaluate_chunked_equals_unchunked(setup, monkeypatch, k):
    _, st, sim, held = setup
    ref = evaluate({"lin": load_model(st, "lin")}, held)
    _chunk(monkeypatch, k)
    ev = evaluate({"lin": StoredModel(st, "lin")}, held)
    _close(ev.results[0].per_run, ref.results[0].per_run)
    _close(ev.results[0].summary, ref.results[0].summary)
    _close(ev.summary_rows(), ref.summary_rows())
    _close(ev.test_rows(), ref.test_rows())
    _close(ev.run_rows(), ref.run_rows())
    sub = ["t4", "t1", "t2"]
    _close(
        evaluate({"lin": StoredModel(st, "lin")}, held, tests=sub).summary_rows(),
        evaluate({"lin": load_model(st, "lin")}, held, tests=sub).summary_rows(),
    )


@pytest.mark.parametrize("measure", ["removal", "coefficient"])
def test_mean_effect_chunked_equals_unchunked(setup, monkeypatch, measure):
    _, st, sim, held = setup
    runs = st.load(list(sim.run_ids_))
    for tests in (None, ["t5", "t0", "t3"]):
        ref = mean_effect(load_model(st, "lin"), measure, tests, runs)
        _chunk(monkeypatch, 2)
        got = mean_effect(StoredModel(st, "lin"), measure, tests, runs)
        monkeypatch.delenv("SIMFLUENCE_TEST_CHUNK")
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
        assert np.abs(ref).max() > 0


def _cli(args, monkeypatch, k):
    _chunk(monkeypatch, k)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("by", ["summary", "run", "test"])
def test_cli_eval_chunked_equals_one_chunk(setup, monkeypatch, by):
    path = setup[0]
    args = ["eval", "--store", str(path), "-m", "lin", "--by", by, "--format", "json"]
    one = json.loads(_cli(args, monkeypatch, 1000))
    two = json.loads(_cli(args, monkeypatch, 2))
    _close(two["results"], one["results"])


@pytest.mark.parametrize("measure", ["removal", "coefficient"])
def test_cli_top_chunked_equals_one_chunk(setup, monkeypatch, measure):
    path = setup[0]
    for test in ("all", "t1,t4,t6"):
        args = [
            "top",
            "--store",
            str(path),
            "-m",
            "lin",
            "--test",
            test,
            "--k",
            "5",
            "--measure",
            measure,
            "--format",
            "json",
        ]
        one = json.loads(_cli(args, monkeypatch, 1000))["results"]
        two = json.loads(_cli(args, monkeypatch, 3))["results"]
        assert [r["example_id"] for r in two] == [r["example_id"] for r in one]
        _close(two, one)


@pytest.mark.slow
def test_cli_simulate_chunked_equals_one_chunk(setup, monkeypatch, tmp_path):
    path, st, sim, _ = setup
    run = st.load(list(sim.run_ids_)[:1]).runs[0]
    cur = tmp_path / "cur.txt"
    cur.write_text(
        "\n".join(" ".join(str(sim.example_ids_[j]) for j in row) for row in run.index_matrix())
        + "\n"
    )
    for extra in ([], ["--tests", "t6,t2,t3"], ["--init-loss", f"run:{run.run_id}"]):
        args = ["simulate", str(cur), "--store", str(path), "-m", "lin", "--format", "csv", *extra]
        one = _cli(args, monkeypatch, 1000)
        two = _cli(args, monkeypatch, 2)
        assert two == one
        ref = load_model(st, "lin").simulate(
            [[[str(sim.example_ids_[j]) for j in row] for row in run.index_matrix()]]
        )
        if not extra:
            vals = np.loadtxt(io.StringIO(one), delimiter=",", skiprows=1, usecols=2)
            np.testing.assert_array_equal(vals, ref[0].reshape(-1))

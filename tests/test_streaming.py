"""Parameters streamed to Parquet as the fit produces them (ParameterWriter) equal the
collected fit bit for bit, in the same file layout; the manifest still commits last."""

from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet
from simfluence_cli.store import saved_models as models_mod
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import ParameterWriter, load_model, read_manifest, save_model

N, M = 12, 9


@pytest.fixture(scope="module")
def runs():
    rs, _, _ = make_runs(N, M, 5, 20, 2, seed=11, noise=1e-3, spread=0.3)
    return rs


def _params_file(st, name):
    man = read_manifest(st, name)
    return pq.ParquetFile(st.path / "models" / name / man["files"]["parameters"])


@pytest.mark.filterwarnings("ignore:model .* is stale")  # the runs are never ingested
@pytest.mark.parametrize(
    "method,workers,solver,tiny",
    [
        ("linear", 1, "direct", False),
        ("linear", 2, "direct", False),
        ("linear", 1, "cg", True),
        ("additive", 1, "auto", False),
        ("multiplicative", 2, "auto", True),
    ],
)
def test_streamed_parameters_equal_collected_fit(
    tmp_path, monkeypatch, runs, method, workers, solver, tiny
):
    if tiny:  # losses ~1e-6 are fitted rescaled: B is scaled back per test in the sink too
        runs = RunSet(
            runs.example_ids, runs.test_ids, [replace(r, losses=r.losses * 1e-6) for r in runs.runs]
        )
    monkeypatch.setattr(models_mod, "ROW_GROUP_ROWS", 2 * N)  # several row groups
    st = RunStore(tmp_path / "s", create=True)
    ids = list(runs.run_ids)
    ref = Simulator(method=method, l2=0.1).fit(runs, solver=solver, workers=workers)
    got = []
    writer = ParameterWriter(st, "stream", runs.example_ids, runs.test_ids, method)
    sim = Simulator(method=method, l2=0.1)
    sim.fit(
        runs,
        param_sink=lambda t, A, B: (got.append(t), writer(t, A, B)),
        keep_params=False,
        solver=solver,
        workers=workers,
    )
    assert sim.A_ is None and sim.B_ is None
    assert sorted(np.concatenate(got).tolist()) == list(range(M))
    with st.write_lock():
        save_model(st, "stream", sim, runs=ids, data_hash="h", parameters=writer)
        save_model(st, "collected", ref, runs=ids, data_hash="h")
    loaded = load_model(st, "stream")
    np.testing.assert_array_equal(loaded.A_, load_model(st, "collected").A_)
    np.testing.assert_array_equal(loaded.B_, load_model(st, "collected").B_)
    if method != "additive":
        np.testing.assert_array_equal(loaded.A_, ref.A_)
    np.testing.assert_array_equal(loaded.B_, ref.B_)
    a, b = _params_file(st, "stream"), _params_file(st, "collected")
    assert a.metadata.num_row_groups == b.metadata.num_row_groups == -(-M // 2)
    assert a.read().equals(b.read())
    assert not list((st.path / "models" / "stream").glob(".*"))  # no temp file left
    # a sink with keep_params=True keeps the same A_, B_ as the collected fit
    kept = Simulator(method=method, l2=0.1).fit(runs, param_sink=lambda *a: None, solver=solver)
    np.testing.assert_array_equal(kept.A_, ref.A_)
    np.testing.assert_array_equal(kept.B_, ref.B_)


def test_abort_and_failed_save_leave_the_previous_model(tmp_path, runs):
    st = RunStore(tmp_path / "s", create=True)
    ids = list(runs.run_ids)
    sim = Simulator(l2=1.0).fit(runs)
    with st.write_lock():
        save_model(st, "m", sim, runs=ids, data_hash="h")
    before = {p.name: p.read_bytes() for p in (st.path / "models" / "m").iterdir()}
    w = ParameterWriter(st, "m", runs.example_ids, runs.test_ids, "linear")
    w(np.arange(3), np.zeros((N, 3)), np.zeros((N, 3)))
    w.abort()
    assert {p.name: p.read_bytes() for p in (st.path / "models" / "m").iterdir()} == before
    # a conflicting configuration: ConflictError, the streamed temp file is removed
    w = ParameterWriter(st, "m", runs.example_ids, runs.test_ids, "linear")
    other = Simulator(l2=2.0)
    other.fit(runs, param_sink=w, keep_params=False)
    with st.write_lock(), pytest.raises(Exception, match="different configuration"):
        save_model(st, "m", other, runs=ids, data_hash="h", parameters=w)
    assert {p.name: p.read_bytes() for p in (st.path / "models" / "m").iterdir()} == before
    with pytest.raises(Exception, match="param_sink"):
        Simulator().fit(runs, keep_params=False)


def test_abort_of_a_new_model_leaves_no_directory(tmp_path, runs):
    """An interrupted first fit of a name (Ctrl-C, an error) leaves the store as it was: no
    empty model directory for verify to warn about."""
    st = RunStore(tmp_path / "s", create=True)
    w = ParameterWriter(st, "new", runs.example_ids, runs.test_ids, "linear")
    w(np.arange(3), np.zeros((N, 3)), np.zeros((N, 3)))
    assert (st.path / "models" / "new").is_dir()
    w.abort()
    assert not (st.path / "models" / "new").exists()


def test_cli_fit_streams_and_equals_python_fit(tmp_path, runs):
    st = RunStore(tmp_path / "s", create=True)
    st.add_runset(runs, tags=["fit"])
    r = CliRunner().invoke(
        app,
        ["fit", "--store", str(st.path), "--method", "linear", "--l2", "0.5", "--name", "m"]
        + ["--workers", "2"],
    )
    assert r.exit_code == 0, r.stderr
    ref = Simulator(l2=0.5).fit(st.load("all"))
    got = load_model(st, "m")
    np.testing.assert_array_equal(got.A_, ref.A_)
    np.testing.assert_array_equal(got.B_, ref.B_)
    assert not list((st.path / "models" / "m").glob(".*"))

"""Model artifacts: Parquet parameters with meanings, manifest, conflicts, round trips."""

import json
import types

import numpy as np
import pyarrow.parquet as pq
import pytest

from simfluence_cli.errors import ConflictError, ModelError, SelectionError, UsageError
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.saved_models import (
    check_existing,
    list_models,
    load_model,
    model_config,
    model_dir,
    read_manifest,
    save_model,
)


@pytest.fixture
def store(tmp_path):
    return types.SimpleNamespace(path=tmp_path)


@pytest.fixture(scope="module")
def runs():
    return make_runs(6, 4, 4, 15, 2, seed=0, noise=0.01)[0]


@pytest.mark.parametrize("method", ["linear", "additive", "multiplicative"])
def test_round_trip_is_exact(store, runs, method):
    sim = Simulator(method=method, l2="auto", cv_folds=2).fit(runs)
    man = save_model(store, "m", sim, runs=runs.run_ids, data_hash="h1", selector="all")
    back = load_model(store, "m")
    for attr in ("A_", "B_", "init_loss_mean_", "loss_min_", "loss_max_", "example_counts_"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(sim, attr))
    assert list(back.test_ids_) == list(sim.test_ids_)
    assert back.l2_ == sim.l2_ and back.cv_curve_ == sim.cv_curve_ and back.method == method
    assert man["config"]["runs"] == runs.run_ids and man["config"]["data_hash"] == "h1"
    for key in ("l2", "cv_curve", "tool_version", "fitted_at", "fit_seconds", "files"):
        assert key in man
    cur = [[["e0", "e1"], ["e2", "e3"]]]
    np.testing.assert_array_equal(back.simulate(cur), sim.simulate(cur))


def test_parameter_file_schema_and_meanings(store, runs):
    sim = Simulator(method="additive", l2=0.1).fit(runs)
    man = save_model(store, "add", sim, runs=runs.run_ids, data_hash="h")
    t = pq.read_table(model_dir(store, "add") / man["files"]["parameters"])
    assert t.column_names == ["test_id", "example_id", "A", "B"]
    assert t.num_rows == 6 * 4 and t["A"].null_count == t.num_rows  # additive: alpha fixed at 1
    meanings = json.loads(t.schema.metadata[b"simfluence.columns"])
    assert "beta" in meanings["B"] and "alpha" in meanings["A"]
    rows = t.to_pylist()
    assert rows[1]["test_id"] == "t0" and rows[1]["example_id"] == "e1"
    assert rows[1]["B"] == sim.B_[1, 0]


def test_load_subset_of_tests(store, runs):
    sim = Simulator(l2=0.1).fit(runs)
    save_model(store, "lin", sim, runs=runs.run_ids, data_hash="h")
    sub = load_model(store, "lin", tests=["t3", "t1"])
    np.testing.assert_array_equal(sub.A_, sim.A_[:, [3, 1]])
    np.testing.assert_array_equal(sub.loss_max_, sim.loss_max_[[3, 1]])
    with pytest.raises(SelectionError, match="nope"):
        load_model(store, "lin", tests=["nope"])


def test_conflicting_refit_is_refused_unless_replace(store, runs):
    sim = Simulator(l2=0.1).fit(runs)
    save_model(store, "m", sim, runs=runs.run_ids, data_hash="h")
    same = model_config(sim, runs.run_ids, "h")
    assert check_existing(store, "m", same)["config"] == same  # same config + data: up to date
    assert check_existing(store, "m", same, replace=True) is None
    other = Simulator(method="additive", l2=0.1).fit(runs)
    with pytest.raises(ConflictError) as err:
        save_model(store, "m", other, runs=runs.run_ids, data_hash="h")
    msg = str(err.value)
    assert 'method: "linear" -> "additive"' in msg and "existing:" in msg and "new:" in msg
    with pytest.raises(ConflictError, match=r"data has changed since .*h -> changed.*--replace"):
        save_model(store, "m", sim, runs=runs.run_ids, data_hash="changed")
    save_model(store, "m", other, runs=runs.run_ids, data_hash="h", replace=True)
    assert read_manifest(store, "m")["config"]["method"] == "additive"


def test_old_generations_are_cleaned(store, runs):
    sim = Simulator(l2=0.1).fit(runs)
    gens = []
    for _ in range(3):
        gens.append(save_model(store, "m", sim, runs=runs.run_ids, data_hash="h")["files"])
    d = model_dir(store, "m")
    (d / ".parameters-x.parquet.tmp").write_bytes(b"junk")  # an interrupted write
    gens.append(save_model(store, "m", sim, runs=runs.run_ids, data_hash="h")["files"])
    names = {p.name for p in d.iterdir()}
    assert names == {"model.json", *gens[-1].values()}  # exactly one generation


def test_names_and_missing_models(store, runs):
    with pytest.raises(UsageError):
        model_dir(store, "../evil")
    with pytest.raises(ModelError, match="fit one"):
        read_manifest(store, "none")
    sim = Simulator(l2=0.1).fit(runs)
    save_model(store, "a", sim, runs=runs.run_ids, data_hash="h")
    save_model(store, "b", sim, runs=runs.run_ids, data_hash="h")
    assert [m["name"] for m in list_models(store)] == ["a", "b"]
    with pytest.raises(ModelError, match="available: a, b"):
        load_model(store, "c")

"""A researcher's notebook session: command outputs read back with pandas / json, library
result objects shown in a cell, plots as figures, what a saved result records about itself."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore


def cli(*args, input=None):
    r = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small store: 4 fitting runs (tag fit), 2 held-out runs (tag held), a model 'lin'."""
    path = tmp_path_factory.mktemp("nb") / "store"
    rs, _, _ = make_runs(10, 5, 6, 12, 2, seed=1, noise=0.01)
    st = RunStore(path, create=True)
    st.add_runset(rs.subset(rs.run_ids[:4]), tags=["fit"])
    st.add_runset(rs.subset(rs.run_ids[4:]), tags=["held"])
    st.models.fit("lin", Simulator(l2=0.1), runs="fit")
    return st


def test_info_summary_honours_json_format_and_refuses_row_formats(store, tmp_path):
    """`info -f json` / `-o x.json` wrote the text summary into the file; csv did too."""
    ref = json.loads(cli("info", "--store", store.path, "--json").stdout)
    assert ref["runs"] == 6
    assert json.loads(cli("info", "--store", store.path, "-f", "json").stdout) == ref
    out = tmp_path / "info.json"
    assert cli("info", "--store", store.path, "-o", out).exit_code == 0
    assert json.loads(out.read_text()) == ref
    for args in (
        ["-f", "csv"],
        ["-f", "parquet", "-o", tmp_path / "x"],
        ["-o", tmp_path / "i.csv"],
    ):
        r = cli("info", "--store", store.path, *args)
        assert r.exit_code == 2 and "use --format json" in r.output and "--list" in r.output
    assert not (tmp_path / "i.csv").exists()
    text = cli("info", "--store", store.path).stdout  # a pipe, no format asked: the text
    assert text.startswith(f"store: {store.path}\nruns: 6\n")
    listed = cli("info", "--store", store.path, "--list", "-f", "csv").stdout.splitlines()
    assert listed[0].startswith("run,tags,steps") and len(listed) == 7


def test_json_outputs_hold_null_never_the_invalid_token_nan(tmp_path):
    """JSON has no NaN: a non-finite number anywhere in a document (not only in its rows)
    is null, so strict readers (jq, JSON.parse, json.loads(parse_constant=...)) accept it."""
    import numpy as np

    from simfluence_cli.cli._output import Format, render_object, render_rows

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON token {c}"))

    doc = {"a": float("nan"), "b": [np.float64("inf"), 1.5], "c": {"d": (np.nan,)}, "e": "x"}
    render_object(doc, str(tmp_path / "o.json"))
    assert strict((tmp_path / "o.json").read_text()) == {
        "a": None,
        "b": [None, 1.5],
        "c": {"d": [None]},
        "e": "x",
    }
    rows = [{"x": np.nan, "tags": [1.0, float("nan")]}]
    render_rows(rows, ["x", "tags"], Format.json, str(tmp_path / "r.json"), document=doc)
    got = strict((tmp_path / "r.json").read_text())
    assert got["results"] == [{"x": None, "tags": [1.0, None]}] and got["a"] is None
    render_rows(rows, ["x", "tags"], Format.jsonl, str(tmp_path / "r.jsonl"))
    assert strict((tmp_path / "r.jsonl").read_text()) == {"x": None, "tags": [1.0, None]}


def test_result_objects_show_a_short_summary_in_a_cell(store):
    """Showing a result in a notebook cell printed every array in full (an eval result of the
    demo store: 295,000 characters); now: scalars, array shapes, list sizes."""
    from simfluence_cli import StoredModel, evaluate_models
    from simfluence_cli.analysis.curriculum_design import design_curriculum
    from simfluence_cli.analysis.groups import group_effects
    from simfluence_cli.analysis.plots import trajectories
    from simfluence_cli.analysis.whatif import Edits, run_batches, whatif

    held = store.load("held")
    rid = held.run_ids[0]
    base, L0 = run_batches(held, rid), held[rid].losses[0]
    sim = store.models["lin"]
    shown = {
        "WhatIf": whatif(sim, base, Edits(drop=["e1"]), L0),
        "DesignResult": design_curriculum(sim, 5, init_loss=L0),
        "GroupEffects": group_effects(sim, base, {"g": ["e1", "e2"]}, L0),
        "Trajectories": trajectories(sim, "lin", held, rid, ["t0"]),
        "StoreEvaluation": evaluate_models(store, ["lin"]),
        "Run": held[rid],
        "FitResult": store.models.fit("lin", Simulator(l2=0.1), runs="fit"),
        "StoredModel": StoredModel(store, "lin"),
    }
    for name, obj in shown.items():
        r = repr(obj)
        assert r.startswith(f"{name}(") and len(r) < 400, (name, len(r), r)
        assert "\n" not in r and "...," not in r, r  # no numpy array print-out
    assert "trajectories=array(2, 13, 5) float64" in repr(shown["WhatIf"])
    assert "losses=array(13, 5) float64" in repr(shown["Run"])
    assert "results=[3 items]" in repr(shown["StoreEvaluation"].evaluation)
    assert "'lin' in " in repr(shown["StoredModel"]) and "10 examples x 5 tests" in repr(
        shown["StoredModel"]
    )


def test_parameter_files_state_the_meaning_of_their_method(store):
    """An optimizer-aware model's parameter file said 'A: multiplier: alpha(c_t) = sum of A
    over the batch', the paper's meaning; its A is a deviation from no change (0)."""
    import pyarrow.parquet as pq

    store.models.fit("oa", Simulator("optimizer-aware", l2=0.1), runs="fit")
    meanings = {}
    for name in ("lin", "oa"):
        man = store.models.manifest(name)
        path = store.path / "models" / name / man["files"]["parameters"]
        meanings[name] = json.loads(pq.read_schema(path).metadata[b"simfluence.columns"])
    assert meanings["lin"]["A"].startswith("multiplier: alpha(c_t) = sum of A over the batch")
    assert meanings["oa"]["A"].startswith("a_i: coefficient on the previous transformed loss")
    assert "0 = no change" in meanings["oa"]["A"] and "negative B lowers" in meanings["oa"]["B"]
    assert store.models["oa"].method == "optimizer-aware"  # the file still loads


def test_a_model_json_is_enough_to_refit_the_model_bit_for_bit(store):
    """docs/store-format.md: config + runs in model.json reproduce the stored parameters."""
    import numpy as np

    from simfluence_cli import SimulatorConfig

    store.models.fit("auto", Simulator(l2="auto"), runs="fit")
    man = store.models.manifest("auto")
    cfg = SimulatorConfig.from_json(man["config"])
    again = Simulator.from_config(cfg).fit(store.load(man["config"]["runs"]))
    stored = store.models["auto"]
    assert again.l2_ == stored.l2_ == man["l2"]
    np.testing.assert_array_equal(again.A_, stored.A_)
    np.testing.assert_array_equal(again.B_, stored.B_)


def test_outputs_record_what_produced_them(store, tmp_path):
    """A Parquet output carries the command, every option (defaults too), the model's fit
    (data hash, fit time, parameter generation) and the versions; a designed curriculum's
    header names the fit and the version that designed it."""
    import pyarrow.parquet as pq

    out = tmp_path / "sim.parquet"
    cur = tmp_path / "cur.txt"
    cur.write_text("e0 e1\ne2 e3\n")
    r = cli("simulate", cur, "--store", store.path, "-m", "lin", "--tests", "t0", "-o", out)
    assert r.exit_code == 0, r.output
    prov = json.loads(pq.read_schema(out).metadata[b"simfluence.provenance"])
    man = store.models.manifest("lin")
    assert prov["command"] == "simfluence simulate"
    assert prov["options"]["tests"] == "t0" and prov["options"]["unseen"] == "error"
    assert prov["models"]["lin"] == {
        "kind": "simfluence",
        "method": "linear",
        "data_hash": man["config"]["data_hash"],
        "fitted_at": man["fitted_at"],
        "parameters": man["files"]["parameters"],
    }
    assert set(prov["versions"]) == {"simfluence", "python", "numpy", "scipy", "pyarrow"}
    assert pq.read_table(out).num_rows == 3  # steps 0..2 x one test: the data is unchanged
    top = tmp_path / "top.parquet"
    assert (
        cli("top", "--store", store.path, "-m", "lin", "--tests", "all", "-o", top).exit_code == 0
    )
    meta = pq.read_schema(top).metadata
    prov = json.loads(meta[b"simfluence.provenance"])
    assert prov["command"] == "simfluence top" and prov["options"]["measure"] == "removal"
    assert prov["models"]["lin"]["data_hash"] == man["config"]["data_hash"]
    assert b"column:removal_effect" in meta  # the column meanings stay
    designed = tmp_path / "d.txt"
    r = cli("design", "--store", store.path, "-m", "lin", "--steps", "3", "-o", designed)
    assert r.exit_code == 0, r.output
    head = dict(
        line[2:].split(": ", 1) for line in designed.read_text().splitlines()[1:] if line[:1] == "#"
    )
    assert head["model_fitted_at"] == man["fitted_at"]
    assert head["model_data_hash"] == man["config"]["data_hash"]
    assert head["init_loss"] == "mean" and head["simfluence_version"]


def test_a_model_json_records_the_library_versions_of_its_fit(store):
    """tool_version alone did not say which numpy / scipy solved the fit."""
    import platform

    import numpy
    import scipy

    store.models.fit("versioned", Simulator(l2=0.2), runs="fit")
    got = store.models.manifest("versioned")["versions"]
    assert got["numpy"] == numpy.__version__ and got["scipy"] == scipy.__version__
    assert got["python"] == platform.python_version() and "pyarrow" in got


def test_info_list_keeps_tags_a_list_where_the_format_has_lists(store, tmp_path):
    """`info --list -f jsonl` gave tags as the text 'fit,extra', unlike runs.parquet's list."""
    import pandas as pd

    held = store.load("held")
    store = RunStore(tmp_path / "tagged", create=True)  # the shared store stays as it is
    store.add_runset(held.subset(["syn-004"]), tags=["fit"])
    store.add_runset(held.subset(["syn-005"]), tags=["held", "extra"])
    jsonl = cli("info", "--store", store.path, "--list", "-f", "jsonl").stdout
    rows = {r["run"]: r["tags"] for r in map(json.loads, jsonl.splitlines())}
    assert rows["syn-005"] == ["extra", "held"] and rows["syn-004"] == ["fit", "held"]
    out = tmp_path / "runs.parquet"
    assert cli("info", "--store", store.path, "--list", "-o", out).exit_code == 0
    assert list(pd.read_parquet(out).set_index("run").loc["syn-005", "tags"]) == ["extra", "held"]
    csv = cli("info", "--store", store.path, "--list", "-f", "csv").stdout
    assert '"extra,held"' in csv or "extra,held" in csv  # one text cell, quoted by csv

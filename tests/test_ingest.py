"""`simfluence ingest` / `info`: the three encodings, detection, bad input, all-or-nothing."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_store import assert_same_runs, tree_hash
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.errors import InputError
from simfluence_cli.io.synthetic import make_runs, write_gptdynamics, write_jsonl, write_tables
from simfluence_cli.store.run_store import RunStore

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs():
    rs, _, _ = make_runs(15, 6, 3, 8, 3, log_every=3, seed=5, noise=0.01)
    return rs


@pytest.fixture
def store(tmp_path, runs):
    """A store already holding one run, to check that failures leave it byte-for-byte alone."""
    write_jsonl(runs.subset(["syn-000"]), tmp_path / "seed")
    r = cli("ingest", tmp_path / "seed", "--store", tmp_path / "st", "--tag", "seed")
    assert r.exit_code == 0, r.stderr
    return tmp_path / "st"


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["jsonl", "jsonl.gz", "csv", "csv.gz", "parquet", "gptdyn"])
def test_round_trip_each_encoding(tmp_path, runs, encoding):
    src = tmp_path / "logs"
    if encoding.startswith("jsonl"):
        write_jsonl(runs, src, gz=encoding.endswith(".gz"))
    elif encoding == "gptdyn":
        write_gptdynamics(runs, src)
    else:
        write_tables(runs, src / f"curriculum.{encoding}", src / f"losses.{encoding}")
    r = cli("ingest", src, "--store", tmp_path / "st", "--tag", "fit")
    assert r.exit_code == 0, r.stderr
    assert "3 added" in r.stderr
    back = RunStore(tmp_path / "st").load("fit")
    assert back.run_ids == runs.run_ids
    assert_same_runs(runs, back)


def test_same_content_any_format_is_unchanged(tmp_path, runs):
    write_jsonl(runs, tmp_path / "a")
    write_tables(runs, tmp_path / "b" / "c.parquet", tmp_path / "b" / "l.csv")
    write_gptdynamics(runs, tmp_path / "c")
    st = tmp_path / "st"
    assert cli("ingest", tmp_path / "a", "--store", st).exit_code == 0
    before = tree_hash(st)
    for src in ("b", "c", "a"):
        r = cli("ingest", tmp_path / src, "--store", st, "--json")
        assert r.exit_code == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["unchanged"] == runs.run_ids and rep["added"] == []
    assert tree_hash(st) == before


def test_conflict_and_replace(tmp_path, runs):
    st = tmp_path / "st"
    write_jsonl(runs, tmp_path / "a")
    assert cli("ingest", tmp_path / "a", "--store", st).exit_code == 0
    other, _, _ = make_runs(15, 6, 3, 8, 3, seed=77)
    write_jsonl(other, tmp_path / "b")
    before = tree_hash(st)
    r = cli("ingest", tmp_path / "b", "--store", st)
    assert r.exit_code == 1 and "--replace" in r.stderr and "syn-000" in r.stderr
    assert tree_hash(st) == before
    r = cli("ingest", tmp_path / "b", "--store", st, "--replace", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["replaced"] == other.run_ids
    assert_same_runs(other, RunStore(st).load())


def test_directory_walk_detection_and_many_paths(tmp_path, runs):
    src = tmp_path / "logs"
    write_jsonl(runs.subset(["syn-000"]), src / "nested" / "deeper", gz=True)
    write_gptdynamics(runs.subset(["syn-001"]), src)  # run id = path below src
    (src / "README.md").write_text("not a log")
    (src / ".hidden.jsonl").write_text("garbage")
    (src / "nested" / "notes.txt").write_text("x")
    one = tmp_path / "single"
    write_jsonl(runs.subset(["syn-002"]), one)
    odd = tmp_path / "syn-002.log"  # unknown suffix: sniffed from its contents
    odd.write_bytes((one / "syn-002.jsonl").read_bytes())
    r = cli("ingest", src, odd, "--store", tmp_path / "st", "--json")
    assert r.exit_code == 0, r.stderr
    assert sorted(json.loads(r.stdout)["added"]) == runs.run_ids
    assert_same_runs(runs, RunStore(tmp_path / "st").load())


def test_format_forces_encoding(tmp_path, runs):
    write_jsonl(runs.subset(["syn-000"]), tmp_path / "a")
    weird = tmp_path / "syn-000.txt"
    weird.write_text("\n" + (tmp_path / "a" / "syn-000.jsonl").read_text())
    r = cli("ingest", weird, "--store", tmp_path / "st", "--format", "jsonl")
    assert r.exit_code == 0, r.stderr
    r = cli("ingest", tmp_path / "a", "--store", tmp_path / "st2", "--format", "table")
    assert r.exit_code == 1 and "no training logs found" in r.stderr
    r = cli("ingest", tmp_path / "a", "--store", tmp_path / "st2", "--format", "yaml")
    assert r.exit_code == 2


def test_undetectable_file_asks_for_format(tmp_path):
    f = tmp_path / "mystery.dat"
    f.write_text("hello world\n")
    r = cli("ingest", f, "--store", tmp_path / "st")
    assert r.exit_code == 1 and "--format" in r.stderr and str(f) in r.stderr
    assert not (tmp_path / "st").exists()


def test_integer_ids_and_run_key(tmp_path):
    f = tmp_path / "stem.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(o)
            for o in [
                {"step": 0, "batch": [], "loss": {"1": 2.0, "2": 3.0}, "run": "named"},
                {"step": 1, "batch": [17, 5], "loss": {"1": 1.5}},
                {"step": 2, "batch": ["17", 3]},
            ]
        )
        + "\n"
    )
    r = cli("ingest", f, "--store", tmp_path / "st")
    assert r.exit_code == 0, r.stderr
    rs = RunStore(tmp_path / "st").load("named")
    run = rs["named"]
    assert list(rs.example_ids[run.batch_idx]) == ["17", "5", "17", "3"]
    assert list(run.loss_steps) == [0, 1] and list(rs.test_ids) == ["1", "2"]
    assert run.losses[1, 0] == 1.5 and np.isnan(run.losses[1, 1])


def test_gptdynamics_without_step0_starts_at_first_checkpoint(tmp_path):
    d = tmp_path / "gd-run"
    d.mkdir()
    (d / "train_samples_id.json").write_text(
        "".join(json.dumps({"step": s, "samples_id": [s, s + 1]}) + "\n" for s in range(4))
    )
    (d / "all_loss_trajectory.out").write_text(
        "".join(
            json.dumps(
                {
                    "id": t,
                    "loss_trajectory": [{"step": s, "loss": 1.0 + t + s / 10} for s in range(1, 5)],
                }
            )
            + "\n"
            for t in (7, 8)
        )
    )
    r = cli("ingest", d, "--store", tmp_path / "st")
    assert r.exit_code == 0, r.stderr
    assert "starts at checkpoint 1" in r.stderr
    rs = RunStore(tmp_path / "st").load()
    run = rs["gd-run"]
    assert run.n_steps == 3 and list(run.loss_steps) == [0, 1, 2, 3]
    assert list(rs.example_ids[run.batch(1)]) == ["1", "2"]  # 0-based step 1 = second batch
    assert run.losses[0, 0] == pytest.approx(8.1)  # test 7 at checkpoint 1


# ---- bad input: one line naming FILE:LINE and the field, exit 1, store unchanged ---------------


def _jsonl(lines):
    return "".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines)


S0 = {"step": 0, "batch": [], "loss": {"t0": 1.0, "t1": 2.0}}
S1 = {"step": 1, "batch": ["e1", "e2"], "loss": {"t0": 0.9}}

BAD_A = {
    "malformed-json": (
        _jsonl(
            [S0, '{"step": 1, "batch": ["e1"'],
        ),
        2,
        None,
        "malformed JSON",
    ),
    "missing-step": (_jsonl([S0, {"batch": ["e1"]}]), 2, "step", "missing"),
    "mistyped-step": (_jsonl([S0, {"step": "1", "batch": ["e1"]}]), 2, "step", "integer"),
    "nan-loss": (
        _jsonl([S0, '{"step": 1, "batch": ["e1"], "loss": {"t0": NaN}}']),
        2,
        "loss.t0",
        "non-finite",
    ),
    "inf-loss": (
        _jsonl([S0, S1, '{"step": 2, "batch": ["e1"], "loss": {"t1": Infinity}}']),
        3,
        "loss.t1",
        "non-finite",
    ),
    "string-loss": (
        _jsonl([S0, {"step": 1, "batch": ["e1"], "loss": {"t0": "0.5"}}]),
        2,
        "loss.t0",
        "expected a number",
    ),
    "duplicate-step": (_jsonl([S0, S1, S1]), 3, "step", "duplicate step 1"),
    "decreasing-step": (
        _jsonl([S0, S1, {"step": 2, "batch": ["e1"]}, S1]),
        4,
        "step",
        "decreasing",
    ),
    "gap": (_jsonl([S0, {"step": 2, "batch": ["e1"]}]), 2, "step", "no batch"),
    "batch-on-step-0": (_jsonl([{**S0, "batch": ["e1"]}, S1]), 1, "batch", "a batch on step 0"),
    "no-step-0": (_jsonl([S1]), 1, "step", "missing step 0"),
    "negative-step": (_jsonl([{**S0, "step": -1}]), 1, "step", "negative step"),
    "no-step-0-losses": (
        _jsonl([{"step": 0, "batch": []}, S1]),
        1,
        "loss",
        "missing step 0 losses",
    ),
    "missing-batch": (_jsonl([S0, {"step": 1, "loss": {"t0": 1.0}}]), 2, "batch", "missing"),
    "empty-batch": (_jsonl([S0, {"step": 1, "batch": []}]), 2, "batch", "empty"),
    "bad-id": (_jsonl([S0, {"step": 1, "batch": [1.5]}]), 2, "batch", "string or integer"),
    "test-without-step0": (
        _jsonl([S0, {"step": 1, "batch": ["e1"], "loss": {"t9": 1.0}}]),
        2,
        "loss.t9",
        "no step-0 loss",
    ),
    "not-an-object": (_jsonl([S0, "[1, 2]"]), 2, None, "expected a JSON object"),
    "two-runs": (_jsonl([{**S0, "run": "a"}, {**S1, "run": "b"}]), 2, "run", "differs"),
}


@pytest.mark.sweep
@pytest.mark.parametrize("case", sorted(BAD_A))
def test_bad_jsonl(tmp_path, store, case):
    text, line, fld, what = BAD_A[case]
    f = tmp_path / "bad" / f"{case}.jsonl"
    f.parent.mkdir()
    f.write_text(text)
    _expect_failure(store, [f], f, line, fld, what)


def test_empty_run(tmp_path, store):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    _expect_failure(store, [f], f, None, None, "empty run")
    g = tmp_path / "only0.jsonl.gz"
    g.write_bytes(gzip.compress(_jsonl([S0]).encode()))
    _expect_failure(store, [g], g, None, None, "no training steps")


CUR = "run,step,example_id\nr,1,e1\nr,1,e2\nr,2,e3\n"
LOS = "run,step,test_id,loss\nr,0,t0,1.0\nr,0,t1,2.0\nr,2,t0,0.5\n"

BAD_B = {
    "unknown-column": (
        {"c.csv": CUR.replace("example_id", "example_id,weight").replace("e1\n", "e1,1\n")},
        "c.csv",
        1,
        "weight",
        "unknown column",
    ),
    "missing-column": (
        {"l.csv": "run,test_id,loss\nr,t0,1.0\n"},
        "l.csv",
        1,
        "step",
        "missing column",
    ),
    "loss-without-curriculum": ({"l.csv": LOS}, "l.csv", 2, "run", "no curriculum"),
    "curriculum-without-losses": ({"c.csv": CUR}, "c.csv", 2, "run", "no losses"),
    "nan-loss": ({"c.csv": CUR, "l.csv": LOS + "r,1,t1,nan\n"}, "l.csv", 5, "loss", "non-finite"),
    "bad-step": ({"c.csv": CUR, "l.csv": LOS + "r,x,t1,1.0\n"}, "l.csv", 5, "step", "integer"),
    "bad-loss": ({"c.csv": CUR, "l.csv": LOS + "r,1,t1,abc\n"}, "l.csv", 5, "loss", "number"),
    "empty-loss": ({"c.csv": CUR, "l.csv": LOS + "r,1,t1,\n"}, "l.csv", 5, "loss", "empty value"),
    "duplicate": (
        {"c.csv": CUR, "l.csv": LOS + "r,0,t1,2.5\n"},
        "l.csv",
        5,
        "test_id",
        "duplicate loss",
    ),
    "batch-on-step-0": (
        {"c.csv": CUR + "r,0,e9\n", "l.csv": LOS},
        "c.csv",
        5,
        "step",
        "a batch on step 0",
    ),
    "step-gap": (
        {"c.csv": CUR + "r,4,e9\n", "l.csv": LOS},
        "c.csv",
        5,
        "step",
        "step 3 has no curriculum",
    ),
    "no-step-0": (
        {"c.csv": CUR, "l.csv": "run,step,test_id,loss\nr,1,t0,1.0\n"},
        "l.csv",
        2,
        "step",
        "missing step 0",
    ),
    "loss-after-end": (
        {"c.csv": CUR, "l.csv": LOS + "r,3,t0,0.1\n"},
        "l.csv",
        5,
        "step",
        "outside 0..2",
    ),
    "ragged-row": ({"c.csv": CUR, "l.csv": LOS + "r,1,t0\n"}, "l.csv", 5, None, "fields"),
}


@pytest.mark.sweep
@pytest.mark.parametrize("case", sorted(BAD_B))
def test_bad_tables(tmp_path, store, case):
    files, bad, line, fld, what = BAD_B[case]
    d = tmp_path / "bad"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    _expect_failure(store, [d], d / bad, line, fld, what)


def test_bad_parquet_row(tmp_path, store):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "bad"
    d.mkdir()
    (d / "c.csv").write_text(CUR)
    pq.write_table(
        pa.table(
            {
                "run": ["r"] * 3,
                "step": [0, 0, 1],
                "test_id": ["t0", "t1", "t0"],
                "loss": [1.0, float("inf"), 0.5],
            }
        ),
        d / "l.parquet",
    )
    _expect_failure(store, [d], d / "l.parquet", "row 2", "loss", "non-finite")


BAD_C = {
    "malformed": (
        "all_loss_trajectory.out",
        '{"id": 1, "loss_trajectory": [\n',
        1,
        None,
        "malformed JSON",
    ),
    "inf": (  # NaN means "not logged" (a note); an infinite loss is still an error
        "all_loss_trajectory.out",
        '{"id": 1, "loss_trajectory": [{"step": 0, "loss": 1.0}, {"step": 1, "loss": Infinity}]}\n',
        1,
        "loss_trajectory.loss",
        "non-finite",
    ),
    "dup-step": (
        "train_samples_id.json",
        '{"step": 1, "samples_id": [1]}\n{"step": 1, "samples_id": [2]}\n',
        2,
        "step",
        "duplicate",
    ),
    "missing-samples": ("train_samples_id.json", '{"step": 1}\n', 1, "samples_id", "missing"),
}


@pytest.mark.sweep
@pytest.mark.parametrize("case", sorted(BAD_C))
def test_bad_gptdynamics(tmp_path, store, case):
    name, text, line, fld, what = BAD_C[case]
    d = tmp_path / "gd"
    d.mkdir()
    (d / "train_samples_id.json").write_text('{"step": 1, "samples_id": [1, 2]}\n')
    (d / "all_loss_trajectory.out").write_text(
        '{"id": 1, "loss_trajectory": [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]}\n'
    )
    (d / name).write_text(text)
    _expect_failure(store, [d], d / name, line, fld, what)


def _expect_failure(store, paths, file, line, fld, what):
    before = tree_hash(store)
    r = cli("ingest", *paths, "--store", store, "--tag", "x")
    assert r.exit_code == 1, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    loc = f"{file}:{line}:" if line is not None else f"{file}:"
    assert loc in err, err
    if fld:
        assert f"field '{fld}'" in err, err
    assert what in err, err
    assert ";" in err  # what was wrong; how to fix
    assert tree_hash(store) == before


def test_all_or_nothing_across_files(tmp_path, store, runs):
    good = tmp_path / "good"
    write_jsonl(runs.subset(["syn-001", "syn-002"]), good)
    bad = good / "zz-bad.jsonl"
    bad.write_text(_jsonl([S0, S1, S1]))
    _expect_failure(store, [good], bad, 3, "step", "duplicate")
    assert RunStore(store).select("all") == ["syn-000"]


def test_duplicate_run_ids_in_one_call(tmp_path, store, runs):
    write_jsonl(runs.subset(["syn-001"]), tmp_path / "a")
    write_jsonl(runs.subset(["syn-001"]), tmp_path / "b")
    before = tree_hash(store)
    r = cli("ingest", tmp_path / "a", tmp_path / "b", "--store", store)
    assert r.exit_code == 1 and "appears twice" in r.stderr
    assert tree_hash(store) == before


def test_debug_shows_traceback(tmp_path, store):
    f = tmp_path / "x.jsonl"
    f.write_text("{")
    r = runner.invoke(app, ["--debug", "ingest", str(f), "--store", str(store)])
    assert r.exit_code != 0 and isinstance(r.exception, InputError)


# ---- info -----------------------------------------------------------------------------------


def test_info_json_and_text(tmp_path, store, runs):
    write_jsonl(runs, tmp_path / "all")
    assert cli("ingest", tmp_path / "all", "--store", store, "--tag", "fit").exit_code == 0
    r = cli("info", "--store", store, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    for k in ("runs", "train_examples", "test_examples", "steps", "loss_rows"):
        assert isinstance(d[k], int), k
    assert d["runs"] == 3 and d["tags"] == {"fit": 3, "seed": 1} and d["steps"] == 24
    assert d["test_examples"] == 6 and d["train_examples"] == 15
    r = cli("info", "--store", store)
    assert r.exit_code == 0 and "runs: 3" in r.stdout and "coverage" in r.stdout
    r = cli("info", "--store", store, "--list", "--format", "csv")
    assert r.stdout.splitlines()[0].startswith("run,tags,steps") and len(r.stdout.splitlines()) == 4
    r = cli("info", "--store", tmp_path / "missing")
    assert r.exit_code == 1 and "simfluence ingest" in r.stderr


@pytest.mark.slow
def test_cli_subprocess(tmp_path, runs):
    """The real entry point (python -m simfluence_cli), as a user would run it."""
    write_tables(runs, tmp_path / "logs" / "cur.csv.gz", tmp_path / "logs" / "loss.csv.gz")
    env = {**os.environ, "SIMFLUENCE_STORE": str(tmp_path / "st")}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "simfluence_cli",
            "ingest",
            str(tmp_path / "logs"),
            "--tag",
            "fit",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["added"] == runs.run_ids
    assert "3 added" in p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "simfluence_cli", "info", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0 and json.loads(p.stdout)["loss_rows"] == sum(
        int((~np.isnan(r.losses)).sum()) for r in runs
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    p = subprocess.run(
        [sys.executable, "-m", "simfluence_cli", "ingest", str(bad)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 1 and p.stderr.startswith(f"error: {bad}:1:")
    assert "Traceback" not in p.stderr


def test_progress_callback(tmp_path, runs):
    write_jsonl(runs, tmp_path / "a")
    seen = []
    RunStore(tmp_path / "st", create=True).ingest(
        [tmp_path / "a"], progress=lambda done, total, label: seen.append((done, total))
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_tables_in_any_row_order(tmp_path, runs):
    """Long tables may interleave runs and steps; batch order = file order within a step."""
    import pyarrow.csv as pacsv

    from simfluence_cli.io.synthetic import runs_to_tables

    cur, los = runs_to_tables(runs)
    rng = np.random.default_rng(0)
    los = los.take(rng.permutation(los.num_rows))
    steps = cur.column("step").to_numpy()
    order = np.lexsort((np.arange(len(steps)), -steps))  # later steps first, batches intact
    cur = cur.take(order)
    d = tmp_path / "shuffled"
    d.mkdir()
    pacsv.write_csv(cur, d / "cur.csv")
    pacsv.write_csv(los, d / "loss.csv")
    r = cli("ingest", d, "--store", tmp_path / "st", "--json")
    assert r.exit_code == 0, r.stderr
    assert_same_runs(runs, RunStore(tmp_path / "st").load())
    write_jsonl(runs, tmp_path / "a")  # same content as the ordered encoding-A logs
    r = cli("ingest", tmp_path / "a", "--store", tmp_path / "st", "--json")
    assert json.loads(r.stdout)["unchanged"] == runs.run_ids


def test_tables_spill_to_disk_beyond_the_buffer_budget(tmp_path, runs, monkeypatch):
    """With a tiny buffer budget every block is spilled per run; the result is the same."""
    import tempfile

    monkeypatch.setenv("SIMFLUENCE_INGEST_BUFFER_MB", "0.0001")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    write_tables(runs, tmp_path / "b" / "cur.csv", tmp_path / "b" / "loss.parquet")
    r = cli("ingest", tmp_path / "b", "--store", tmp_path / "st")
    assert r.exit_code == 0, r.stderr
    assert_same_runs(runs, RunStore(tmp_path / "st").load())
    assert list((tmp_path / "tmp").iterdir()) == []  # spill directory removed
    bad = tmp_path / "bad"
    write_tables(runs, bad / "cur.csv", bad / "loss.csv")
    with open(bad / "loss.csv", "a") as fh:
        fh.write("syn-001,0,t0,1.0\n")  # duplicate of a spilled row
    r = cli("ingest", bad, "--store", tmp_path / "st")
    assert r.exit_code == 1 and "duplicate loss" in r.stderr and "loss.csv:" in r.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.sweep
@pytest.mark.parametrize("case", sorted(BAD_B))
def test_bad_tables_parsed_in_parallel_ranges(tmp_path, store, case, monkeypatch):
    """Large plain CSVs are parsed as concurrent byte ranges: messages keep exact lines."""
    import simfluence_cli.io.tables as readers

    monkeypatch.setattr(readers, "_SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(readers.os, "cpu_count", lambda: 3)
    test_bad_tables(tmp_path, store, case)


def test_parallel_ranges_round_trip(tmp_path, runs, monkeypatch):
    import simfluence_cli.io.tables as readers

    monkeypatch.setattr(readers, "_SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(readers.os, "cpu_count", lambda: 4)
    write_tables(runs, tmp_path / "b" / "cur.csv", tmp_path / "b" / "loss.csv")
    assert len(readers._csv_ranges(tmp_path / "b" / "loss.csv")) == 4
    r = cli("ingest", tmp_path / "b", "--store", tmp_path / "st")
    assert r.exit_code == 0, r.stderr
    assert_same_runs(runs, RunStore(tmp_path / "st").load())

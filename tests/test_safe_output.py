"""Safe paths and output: user-supplied names never escape the store; CSV output round-trips.

Run ids come from log contents (the "run" key / column) and model names from the command
line: hostile ones (``../../etc/x``, absolute paths, NUL, very long) either land inside the
store under a safe file name or are refused with one clear line. CSV output quotes IDs with
commas, quotes and newlines so ``csv.reader`` reads back exactly the IDs.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.cli._output import Format, render_rows
from simfluence_cli.runs import Run, RunSet
from simfluence_cli.store.integrity import verify_store
from simfluence_cli.store.run_store import RunStore


def cli(*args, input=None):
    r = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def files_outside(root: Path, store: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and store not in p.parents
    }


def jsonl_run(path: Path, run_id: str) -> None:
    lines = [
        {"step": 0, "batch": [], "loss": {"t0": 2.0, "t1": 1.0}, "run": run_id},
        {"step": 1, "batch": ["e0", "e1"], "loss": {"t0": 1.9, "t1": 0.9}},
        {"step": 2, "batch": ["e1", "e2"], "loss": {"t0": 1.8, "t1": 0.95}},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


HOSTILE_OK = [
    "../../etc/x",
    "/etc/passwd",
    "..",
    ".",
    "a/../../b",
    "~root/x",
    "C:\\Windows\\x",
    "run with spaces",
    "é/ü/../..",
    "x" * 5000,
    "-rf",
    ".hidden",
    "*",
    "manifest.json",
]
HOSTILE_BAD = ["a\x00b", "a\nb", "tab\there", "", "   ", "a,b"]


@pytest.mark.sweep
@pytest.mark.parametrize("run_id", HOSTILE_OK, ids=lambda s: repr(s[:20]))
def test_hostile_run_ids_land_inside_the_store(tmp_path, run_id):
    store = tmp_path / "deep" / "s"
    jsonl_run(tmp_path / "log.jsonl", run_id)
    before = files_outside(tmp_path, store)
    r = cli("ingest", tmp_path / "log.jsonl", "--store", store)
    assert r.exit_code == 0, r.stderr
    assert files_outside(tmp_path, store) == before  # nothing written outside the store
    st_ = RunStore(store)
    assert st_.run_ids() == [run_id]
    for part in ("curriculum_file", "losses_file"):
        rel = st_.runs()[0][part]
        p = (store / rel).resolve()
        assert p.is_relative_to(store.resolve()) and p.parent.name in ("curriculum", "losses")
        assert len(p.name) < 100 and not p.name.startswith(".")
    assert st_.load().run_ids == [run_id]
    assert verify_store(store).ok
    assert not Path("/etc/x").exists()


@pytest.mark.sweep
@pytest.mark.parametrize("run_id", HOSTILE_BAD, ids=repr)
def test_unusable_run_ids_are_refused_clearly(tmp_path, run_id):
    store = tmp_path / "s"
    jsonl_run(tmp_path / "log.jsonl", run_id)
    r = cli("ingest", tmp_path / "log.jsonl", "--store", store)
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "run" in r.stderr and not store.exists()


def test_hostile_run_ids_in_long_tables(tmp_path):
    cur = tmp_path / "cur.csv"
    loss = tmp_path / "loss.csv"
    rid = "../../../outside"
    cur.write_text(f"run,step,example_id\n{rid},1,e0\n{rid},2,e1\n")
    loss.write_text(f"run,step,test_id,loss\n{rid},0,t0,1.0\n{rid},2,t0,0.5\n")
    store = tmp_path / "s"
    r = cli("ingest", cur, loss, "--store", store)
    assert r.exit_code == 0, r.stderr
    assert RunStore(store).run_ids() == [rid]
    assert not (tmp_path.parent / "outside").exists()
    assert files_outside(tmp_path, store) == {"cur.csv", "loss.csv"}


@pytest.fixture
def fitted(tmp_path):
    store = tmp_path / "s"
    jsonl_run(tmp_path / "log.jsonl", "r1")
    jsonl_run(tmp_path / "log2.jsonl", "r2")
    assert (
        cli("ingest", tmp_path / "log.jsonl", tmp_path / "log2.jsonl", "--store", store).exit_code
        == 0
    )
    return store


@pytest.mark.sweep
@pytest.mark.parametrize(
    "name",
    ["../../x", "/abs/path", "a/b", "..", ".hidden", "a\x00b", "x" * 65, "-n", "a b", "é"],
    ids=repr,
)
def test_hostile_model_names_are_refused(fitted, tmp_path, name):
    before = files_outside(tmp_path, fitted)
    r = cli("fit", "--store", fitted, "--l2", "1", "--name", name)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "invalid model name" in r.stderr
    assert not (fitted / "models").exists() or not any((fitted / "models").iterdir())
    assert files_outside(tmp_path, fitted) == before
    scores = tmp_path / "scores.csv"
    scores.write_text("test_id,example_id,score\nt0,e0,0.1\n")
    r = cli("import-scores", scores, "--store", fitted, "--name", name, "--scale", "1")
    assert r.exit_code == 2 and "invalid model name" in r.stderr, r.stderr


def test_longest_valid_model_name_lands_inside(fitted):
    name = "m" * 64
    r = cli("fit", "--store", fitted, "--l2", "1", "--name", name)
    assert r.exit_code == 0, r.stderr
    assert (fitted / "models" / name / "model.json").is_file()
    assert verify_store(fitted).ok


# ---- CSV output ------------------------------------------------------------------------------

TRICKY = [
    "plain",
    "a,b",
    'say "hi"',
    "two\nlines",
    "cr\rhere",
    " lead",
    "trail ",
    "=1+1",
    "é,ü",
    '"',
    ",",
    "semi;colon",
    "tab\tin",
]


def _store_with_tests(root: Path, tests: list[str]) -> Path:
    m = len(tests)
    rng = np.random.default_rng(0)
    runs = []
    for r in range(2):
        T = 12
        idx = np.concatenate([rng.permutation(6)[:2] for _ in range(T)])
        L = 2 + np.cumsum(rng.normal(-0.01, 0.01, (T + 1, m)), axis=0)
        runs.append(Run(f"r{r}", np.arange(0, 2 * T + 1, 2), idx, np.arange(T + 1), L))
    rs = RunSet(np.asarray([f"e{i}" for i in range(6)], object), np.asarray(tests, object), runs)
    st_ = RunStore(root, create=True)
    st_.add_runset(rs)
    return root


def test_simulate_csv_quotes_tricky_test_ids(tmp_path):
    store = _store_with_tests(tmp_path / "s", TRICKY)
    assert cli("fit", "--store", store, "--l2", "1").exit_code == 0
    r = cli("simulate", "-", "--store", store, "--format", "csv", input="e0 e1\ne2 e3\n")
    assert r.exit_code == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert rows[0] == ["step", "test_id", "loss"]
    got = [row[1] for row in rows[1:]]
    assert sorted(set(got)) == sorted(TRICKY) and len(got) == 3 * len(TRICKY)
    assert all(len(row) == 3 and np.isfinite(float(row[2])) for row in rows[1:])
    # -o FILE writes the same bytes
    out = tmp_path / "out.csv"
    r2 = cli("simulate", "-", "--store", store, "-o", out, input="e0 e1\ne2 e3\n")
    assert r2.exit_code == 0 and out.read_bytes().decode() == r.stdout


def test_simulate_csv_plain_ids_fast_path_round_trips(tmp_path):
    tests = ["t0", "t 1", "t-2", "t.3"]
    store = _store_with_tests(tmp_path / "s", tests)
    assert cli("fit", "--store", store, "--l2", "1").exit_code == 0
    r = cli("simulate", "-", "--store", store, "--format", "csv", input="e0 e1\n")
    rows = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert sorted({row[1] for row in rows[1:]}) == sorted(tests)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(st.text(max_size=12) | st.sampled_from(TRICKY), min_size=1, max_size=8))
def test_render_rows_csv_round_trips_any_text(values):
    buf = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(buf):
        render_rows([{"id": v, "x": i} for i, v in enumerate(values)], ["id", "x"], Format.csv)
    rows = list(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert rows[0] == ["id", "x"]
    assert [r[0] for r in rows[1:]] == values
    assert [int(r[1]) for r in rows[1:]] == list(range(len(values)))


def test_curriculum_output_refuses_ids_it_cannot_round_trip(tmp_path):
    lines = [
        {"step": 0, "batch": [], "loss": {"t0": 2.0}},
        {"step": 1, "batch": ["a b", "c#d"], "loss": {"t0": 1.9}},
    ]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    store = tmp_path / "s"
    assert cli("ingest", tmp_path / "r.jsonl", "--store", store).exit_code == 0
    r = cli("curriculum", "r", "--store", store)
    assert r.exit_code == 1 and "'a b'" in r.stderr and r.stdout == ""
    # plain IDs round-trip through the text format
    lines[1]["batch"] = ["a", "b"]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert cli("ingest", tmp_path / "p.jsonl", "--store", store).exit_code == 0
    r = cli("curriculum", "p", "--store", store)
    assert r.exit_code == 0 and r.stdout.splitlines()[1:] == ["a b"]

"""Terminal tables at 80 and 120 columns: headers break only at '_' (never mid-word), numbers
right-aligned with 4 significant digits, nothing cut to '…', the table fits; the same column
names as csv/json; simulate on a terminal prints first and last steps; whatif's summary
comes after its table."""

import json

import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import _output, app
from simfluence_cli.cli._output import build_table
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.runs import RunSet
from simfluence_cli.store.run_store import RunStore


def cli(*args, width=80):
    r = CliRunner(env={"COLUMNS": str(width), "NO_COLOR": "1"})
    return r.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "store"
    rs, _, _ = make_runs(8, 3, 6, 30, 2, seed=4, spread=0.3)
    runs = [
        r.__class__(**{**r.__dict__, "run_id": f"long-run-name-{k:03d}"})
        for k, r in enumerate(rs.runs)
    ]
    rs = RunSet(rs.example_ids, rs.test_ids, runs)
    st = RunStore(path, create=True)
    st.add_runset(rs.subset(rs.run_ids[:4]), tags=["fit"])
    st.add_runset(rs.subset(rs.run_ids[4:]), tags=["heldout"])
    assert cli("fit", "--store", path, "--runs", "fit", "--l2", "0.1", "-n", "m").exit_code == 0
    return path


def _headers(out: str) -> list[str]:
    """Column names of the first table in ``out`` (header lines joined per column)."""
    lines = out.splitlines()
    top = next(i for i, ln in enumerate(lines) if ln.startswith("┏"))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("┡"))
    cols: list[list[str]] = []
    for ln in lines[top + 1 : end]:
        cells = [c.strip() for c in ln.strip("┃").split("┃")]
        cols = cols or [[] for _ in cells]
        for k, c in enumerate(cells):
            if c:
                cols[k].append(c)
    for frags in cols:  # a header may break only after '_'
        assert all(f.endswith("_") for f in frags[:-1]), frags
    return ["".join(f) for f in cols]


CASES = {
    "info": ["info", "--list"],
    "eval": ["eval", "-m", "m", "--runs", "heldout"],
    "top": ["top", "-m", "m"],
    "whatif": ["whatif", "-m", "m", "-b", "long-run-name-004", "--drop", "e1"],
    "groups": ["groups", "-m", "m", "-b", "long-run-name-004", "-g", "a=e0,e1", "-g", "b=e2"],
}


@pytest.mark.sweep
@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("name", sorted(CASES))
def test_tables_fit_without_cuts(store, name, width):
    r = cli(*CASES[name], "--store", store, "-f", "table", width=width)
    assert r.exit_code == 0, r.stderr
    assert "…" not in r.stdout
    assert max(len(ln) for ln in r.stdout.splitlines()) <= width
    headers = _headers(r.stdout)
    csv = cli(*CASES[name], "--store", store, "-f", "csv", width=width)
    assert set(headers) <= set(csv.stdout.splitlines()[0].split(",")), (headers, csv.stdout[:200])


def test_numbers_right_aligned_with_four_significant_digits():
    t = build_table(["x_value", "id"], [["0.002730", "a"], ["12.00", "bb"]], {0}, width=80)
    assert t.columns[0].justify == "right" and t.columns[0].no_wrap
    assert _output._fmt_cell(0.0027302) == "0.002730" and _output._fmt_cell(12.0) == "12.00"
    assert _output._fmt_cell(3) == "3"


@pytest.mark.slow
def test_eval_column_names_are_the_same_in_every_format(store):
    csv = cli(
        "eval", "-m", "m", "--store", store, "--runs", "all", "--allow-fitting-runs", "-f", "csv"
    )
    cols = csv.stdout.splitlines()[0].split(",")
    assert "all_steps_mae" in cols and "on_fitting_runs" in cols and "mae" not in cols
    js = json.loads(
        cli(
            "eval",
            "-m",
            "m",
            "--store",
            store,
            "--runs",
            "all",
            "--allow-fitting-runs",
            "-f",
            "json",
        ).stdout
    )
    assert list(js["results"][0]) == cols
    table = cli(
        "eval",
        "-m",
        "m",
        "--store",
        store,
        "--runs",
        "all",
        "--allow-fitting-runs",
        "-f",
        "table",
        width=120,
    )
    assert set(_headers(table.stdout)) <= set(cols)
    assert "on_fitting_runs" in _headers(table.stdout)


def test_simulate_on_a_terminal_prints_first_and_last_steps(store, tmp_path, monkeypatch):
    cur = tmp_path / "c.txt"
    cur.write_text("e0 e1\n" * 40)
    monkeypatch.setattr(_output, "stdout_is_terminal", lambda: True)
    r = cli("simulate", cur, "--store", store, "-m", "m")
    assert r.exit_code == 0, r.stderr
    steps = [ln.split("│")[1].strip() for ln in r.stdout.splitlines() if ln.startswith("│")]
    assert steps == ["0", "1", "2", "38", "39", "40"]
    assert "first and last 3 of 41 steps" in " ".join(r.stdout.split()) and "-f csv" in r.stderr
    full = cli("simulate", cur, "--store", store, "-m", "m", "-f", "table")
    assert len([ln for ln in full.stdout.splitlines() if ln.startswith("│")]) >= 41 * 3


@pytest.mark.slow
def test_whatif_summary_comes_after_the_table(store):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "simfluence_entry", "whatif", "--store", str(store)]
    cmd += ["-m", "m", "-b", "long-run-name-004", "--drop", "e1", "-f", "table"]
    p = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream: the order the user sees
        text=True,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"},
    )
    assert p.returncode == 0, p.stdout
    out = p.stdout
    assert out.index("mean final loss") > out.rindex("└"), out

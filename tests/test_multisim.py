"""`simfluence simulate` of several curricula in one call: files, directories, headed streams."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from simfluence_cli import RunStore
from simfluence_cli.cli import app
from simfluence_cli.errors import InputError, UsageError
from simfluence_cli.io.curriculum import read_curricula, split_curricula
from simfluence_cli.io.synthetic import make_runs

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    rs, _, _ = make_runs(12, 3, 5, 30, 2, seed=0, noise=0.002)
    st = RunStore(tmp_path_factory.mktemp("multisim") / "s", create=True)
    st.add_runset(rs, tags=["fit"])
    res = invoke("fit", "-s", st.path, "-r", "fit", "--method", "linear", "--l2", "0.1")
    assert res.exit_code == 0, res.stderr
    return st


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


# --- reading ---------------------------------------------------------------------------------


def test_plan_stream_splits_at_headers_with_file_line_numbers():
    text = "# a-0: shuffle (x); 2 steps\ne0 e1\ne2 e3\n# a-1: subset (y); 1 steps\n\ne4 e5\n"
    curs = split_curricula(text, "p.txt")
    assert [c.name for c in curs] == ["a-0", "a-1"]
    assert [c.batches for c in curs] == [[["e0", "e1"], ["e2", "e3"]], [["e4", "e5"]]]
    assert curs[1].lines == [6] and curs[1].source == "p.txt"


def test_concatenated_curriculum_outputs_split_by_run_id():
    text = "# curriculum of run r-1: 1 steps (x)\ne0\n# curriculum of run r-2: 1 steps (x)\ne1\n"
    assert [c.name for c in split_curricula(text)] == ["r-1", "r-2"]


@pytest.mark.parametrize(
    "text",
    [
        "# design: best\n# model: linear\n# seed: 0\ne0 e1\ne2\n",  # consecutive headers
        "e0 e1\n# part: two\ne2\n# part2: three\ne3\n",  # a step before the first header
        "# only: one\ne0\ne1\n",  # one header
        "# x: 1\ne0\n# y: 2\n",  # the last header has no steps
    ],
)
def test_other_comment_layouts_stay_one_curriculum(text):
    (cur,) = split_curricula(text, "c.txt")
    assert [b for b in cur.batches] == [
        ln.split("#")[0].split() for ln in text.splitlines() if ln.split("#")[0].strip()
    ]


def test_read_curricula_names_files_dirs_and_stdin(tmp_path, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    (d / "b.txt").write_text("e1\n")
    (d / "a.txt").write_text("e0\n")
    (d / "notes.md").write_text("not a curriculum\n")
    one = tmp_path / "one.txt"
    one.write_text("# plan-9: shuffle; 1 steps\ne2\n")  # one curriculum: named by its stem
    monkeypatch.setattr("sys.stdin", io.StringIO("# s-0: x\ne3\n# s-1: y\ne4\n"))
    curs = read_curricula([str(d), str(one), "-"])
    assert [c.name for c in curs] == ["a", "b", "one", "s-0", "s-1"]
    assert [c.batches for c in curs] == [[["e0"]], [["e1"]], [["e2"]], [["e3"]], [["e4"]]]


def test_read_curricula_refuses_duplicates_and_empty_dirs(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "c.txt").write_text("e0\n")
    with pytest.raises(UsageError, match="two curricula named 'c'.*x/c.txt and .*y/c.txt"):
        read_curricula([str(tmp_path / "x" / "c.txt"), str(tmp_path / "y" / "c.txt")])
    with pytest.raises(UsageError, match="more than once"):
        read_curricula(["-", "-"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*no curriculum files"):
        read_curricula([str(tmp_path / "empty")])


# --- the command -----------------------------------------------------------------------------


def _write(tmp_path, name, steps):
    p = tmp_path / f"{name}.txt"
    p.write_text(
        "".join(f"e{(2 * k) % 12} e{(2 * k + 1 + len(name)) % 12}\n" for k in range(steps))
    )
    return p


def test_several_files_equal_single_calls_row_for_row(fitted, tmp_path):
    a, b = _write(tmp_path, "a", 4), _write(tmp_path, "bb", 7)  # different lengths
    res = invoke("simulate", a, b, "-s", fitted.path, "-f", "csv")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "curriculum,step,test_id,loss"
    assert len(lines) == 1 + (5 + 8) * 3  # each curriculum its own steps, no padding
    for cur, n in ((a, 4), (b, 7)):
        single = invoke("simulate", cur, "-s", fitted.path, "-f", "csv")
        assert single.stdout.splitlines()[0] == "step,test_id,loss"  # unchanged for one
        mine = [ln.split(",", 1)[1] for ln in lines[1:] if ln.split(",", 1)[0] == cur.stem]
        assert mine == single.stdout.splitlines()[1:] and len(mine) == (n + 1) * 3
    assert "simulated 2 curricula (11 steps) x 3 test(s)" in res.stderr


def test_plan_output_read_back_from_stdin_equals_its_files(fitted, tmp_path):
    plan = ["plan", "-n", "3", "--steps", "4", "--batch-size", "2", "-s", fitted.path]
    stream = invoke(*plan)
    assert stream.exit_code == 0, stream.stderr
    assert invoke(*plan, "-o", tmp_path / "p").exit_code == 0
    via_stdin = invoke("simulate", "-", "-s", fitted.path, "-f", "csv", input=stream.stdout)
    via_dir = invoke("simulate", tmp_path / "p", "-s", fitted.path, "-f", "csv")
    assert via_stdin.exit_code == 0, via_stdin.stderr
    assert via_stdin.stdout == via_dir.stdout
    names = [r["curriculum"] for r in _rows(via_dir.stdout)]
    assert sorted(set(names)) == ["plan-000", "plan-001", "plan-002"]


def test_name_column_for_one_and_formats(fitted, tmp_path):
    a, b = _write(tmp_path, "a", 2), _write(tmp_path, "b", 3)
    res = invoke("simulate", a, "-s", fitted.path, "-f", "csv", "--name-column")
    assert _rows(res.stdout)[0]["curriculum"] == "a" and len(_rows(res.stdout)) == 9
    csv_rows = _rows(invoke("simulate", a, b, "-s", fitted.path, "-f", "csv").stdout)
    recs = json.loads(invoke("simulate", a, b, "-s", fitted.path, "-f", "json").stdout)
    lines = invoke("simulate", a, b, "-s", fitted.path, "-f", "jsonl").stdout.splitlines()
    out = tmp_path / "m.parquet"
    assert invoke("simulate", a, b, "-s", fitted.path, "-o", out).exit_code == 0
    t = pq.read_table(out)
    assert t.column_names == ["curriculum", "step", "test_id", "loss"]
    assert b"simfluence.columns" in t.schema.metadata
    ref = [(r["curriculum"], int(r["step"]), r["test_id"], float(r["loss"])) for r in csv_rows]
    assert [(r["curriculum"], r["step"], r["test_id"], r["loss"]) for r in recs] == ref
    assert [tuple(json.loads(ln).values()) for ln in lines] == ref
    assert list(zip(*[t.column(c).to_pylist() for c in t.column_names])) == ref


def test_batched_in_groups_not_one_call_per_curriculum(fitted, tmp_path, monkeypatch):
    import simfluence_cli.store.saved_models as sm

    paths = [_write(tmp_path, f"c{k}", 3 + k) for k in range(5)]
    whole = invoke("simulate", *paths, "-s", fitted.path, "-f", "csv").stdout
    calls = []
    real = sm.simulate_chunks

    def counting(model, curricula, *a, **kw):
        calls.append(len(curricula))
        return real(model, curricula, *a, **kw)

    monkeypatch.setattr(sm, "simulate_chunks", counting)
    assert invoke("simulate", *paths, "-s", fitted.path, "-f", "csv").stdout == whole
    assert calls == [5]  # one batched rollout
    calls.clear()
    monkeypatch.setattr(sm, "SIMULATE_GROUP_BYTES", 2 * 8 * 3 * 8)  # 2 curricula of <= 7 steps
    assert invoke("simulate", *paths, "-s", fitted.path, "-f", "csv").stdout == whole
    assert calls == [2, 2, 1]  # memory-sized groups (3+4, 5+6, 7 steps), same numbers


def test_interval_and_per_curriculum_init_loss(fitted, tmp_path):
    curs = []
    for rid in ("syn-001", "syn-003"):
        res = invoke("curriculum", rid, "-s", fitted.path)
        curs.append(res.stdout)
    stream = "".join(curs)  # two `curriculum` outputs one after the other
    res = invoke(
        "simulate", "-", "-s", fitted.path, "-f", "csv", "--init-loss", "run:{curriculum}",
        "--interval", "0.8", input=stream,
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    rows = _rows(res.stdout)
    assert list(rows[0]) == ["curriculum", "step", "test_id", "loss", "lo_80", "hi_80"]
    runs = fitted.load(["syn-001", "syn-003"]).runs
    for k, (rid, run) in enumerate(zip(("syn-001", "syn-003"), runs)):
        step0 = [float(r["loss"]) for r in rows if r["curriculum"] == rid and r["step"] == "0"]
        np.testing.assert_array_equal(step0, run.losses[0])
        single = invoke(
            "simulate", "-", "-s", fitted.path, "-f", "csv", "--init-loss", f"run:{rid}",
            "--interval", "0.8", input=curs[k],
        )  # fmt: skip
        mine = [",".join(list(r.values())[1:]) for r in rows if r["curriculum"] == rid]
        assert mine == single.stdout.splitlines()[1:]


def test_errors_name_the_file_and_line(fitted, tmp_path):
    a = _write(tmp_path, "a", 2)
    bad = tmp_path / "bad.txt"
    bad.write_text("e0 e1\n# note\ne2 ghost\n")
    res = invoke("simulate", a, bad, "-s", fitted.path)
    assert res.exit_code == 1 and "ghost (line 3)" in res.stderr and "bad.txt" in res.stderr
    stream = "# p-0: x\ne0\n# p-1: y\ne1\ne2 ghost\n"
    res = invoke("simulate", "-", "-s", fitted.path, input=stream)
    assert res.exit_code == 1 and "ghost (line 5)" in res.stderr
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("e0\n")
    res = invoke("simulate", a, tmp_path / "d", "-s", fitted.path)
    assert res.exit_code == 2 and "two curricula named 'a'" in res.stderr
    assert "Traceback" not in res.stderr


def test_real_process_with_several_files(fitted, tmp_path):
    a, b = _write(tmp_path, "a", 2), _write(tmp_path, "b", 3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simfluence_cli",
            "simulate",
            str(a),
            str(b),
            "-s",
            str(fitted.path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)  # not a terminal: csv
    assert [(r["curriculum"], r["step"]) for r in rows[::3]] == [
        ("a", "0"), ("a", "1"), ("a", "2"), ("b", "0"), ("b", "1"), ("b", "2"), ("b", "3"),
    ]  # fmt: skip


def test_terminal_summary_is_one_row_per_curriculum(fitted, tmp_path, monkeypatch):
    import simfluence_cli.cli.fit_cmd as fc
    from simfluence_cli.cli._output import Format

    a, b = _write(tmp_path, "a", 2), _write(tmp_path, "b", 5)
    rows = _rows(invoke("simulate", a, b, "-s", fitted.path, "-f", "csv").stdout)
    monkeypatch.setattr(fc, "resolve_format", lambda fmt, output="-": Format.table)  # a TTY
    res = invoke("simulate", a, b, "-s", fitted.path)
    assert res.exit_code == 0, res.stderr
    body = [ln for ln in res.stdout.splitlines() if ln.startswith("│")]
    assert len(body) == 2 and "summary of 27 rows" in res.stderr
    for line, (name, steps) in zip(body, (("a", 2), ("b", 5))):
        cells = [c.strip() for c in line.strip("│").split("│")]
        final = [
            float(r["loss"]) for r in rows if r["curriculum"] == name and r["step"] == str(steps)
        ]
        assert cells[:2] == [name, str(steps)]
        assert float(cells[2]) == pytest.approx(np.mean(final), rel=1e-3)


def test_reader_closing_the_pipe_ends_quietly(fitted, tmp_path):
    """`simulate ... | head`: the reader stops early; exit 0 with no error line, like one curriculum."""
    stream = "".join(
        f"# c-{k}: x\n" + "".join(f"e{(k + s) % 12} e{(k + 2 * s + 1) % 12}\n" for s in range(100))
        for k in range(200)
    )  # 200 x 101 x 3 rows: far more than a pipe holds
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simfluence_cli", "simulate", "-", "-s", str(fitted.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    proc.stdin.write(stream.encode())
    proc.stdin.close()
    assert proc.stdout.readline() == b"curriculum,step,test_id,loss\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "error" not in err and "Traceback" not in err

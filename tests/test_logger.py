"""RunLogger: encoding A round trip, gzip, atomic writes, validation."""

from __future__ import annotations

import gzip
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfluence_cli.errors import InputError
from simfluence_cli.io.run_logger import RunLogError, RunLogger


def read_lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_round_trip_dict_and_sequence_losses(tmp_path):
    path = tmp_path / "r1.jsonl"
    with RunLogger(path, test_ids=["t0", "t1"]) as log:
        log.initial({"t0": 2.31, "t1": 1.87})
        assert log.step(["e17", "e203", "e5", "e88"], [2.28, 1.9]) == 1
        assert log.step(["e4"]) == 2  # test set not evaluated
        assert log.step(["e9", "e9"], np.array([2.0, 1.5]), step=3) == 3
        log.step(["e1"], {"t1": 0.5})  # partial losses
    rows = read_lines(path)
    assert rows == [
        {"step": 0, "batch": [], "loss": {"t0": 2.31, "t1": 1.87}},
        {"step": 1, "batch": ["e17", "e203", "e5", "e88"], "loss": {"t0": 2.28, "t1": 1.9}},
        {"step": 2, "batch": ["e4"]},
        {"step": 3, "batch": ["e9", "e9"], "loss": {"t0": 2.0, "t1": 1.5}},
        {"step": 4, "batch": ["e1"], "loss": {"t1": 0.5}},
    ]
    # one object per line, step first, as in the example
    assert (
        path.read_text().splitlines()[0].startswith('{"step": 0, "batch": [], "loss": {"t0": 2.31')
    )


def test_ids_written_as_strings(tmp_path):
    path = tmp_path / "ints.jsonl"
    with RunLogger(path) as log:
        log.initial({0: 1.0, np.int64(7): 2.0})
        log.step(np.array([17, 3]), {0: 0.5})
        log.step([np.int32(5)])
    rows = read_lines(path)
    assert rows[0]["loss"] == {"0": 1.0, "7": 2.0}
    assert rows[1]["batch"] == ["17", "3"] and rows[1]["loss"] == {"0": 0.5}
    assert rows[2]["batch"] == ["5"]


def test_gzip_output_is_deterministic(tmp_path):
    def write(p):
        with RunLogger(p, run_id="my-run", test_ids=["a", "b"]) as log:
            log.initial([1.0, 2.0])
            log.step(["x"], [0.5, 1.5])
        return p.read_bytes()

    b1 = write(tmp_path / "one" / "r.jsonl.gz")  # parent directories are created
    b2 = write(tmp_path / "two" / "r.jsonl.gz")
    assert b1[:2] == b"\x1f\x8b" and b1 == b2  # gzip, mtime 0 and no embedded file name
    rows = read_lines(tmp_path / "one" / "r.jsonl.gz")
    assert [r["run"] for r in rows] == ["my-run", "my-run"]
    assert rows[1] == {"step": 1, "batch": ["x"], "loss": {"a": 0.5, "b": 1.5}, "run": "my-run"}


def test_precision_rounds_to_significant_digits(tmp_path):
    path = tmp_path / "p.jsonl"
    with RunLogger(path, test_ids=["a", "b", "c"], precision=4) as log:
        log.initial([2.3123456789, 0.000123456789, 1234567.0])
        log.step(["x"], [1.0, 1e-5, 3.0])
    text = path.read_text()
    assert '"a": 2.312, "b": 0.0001235, "c": 1235000.0' in text
    assert read_lines(path)[1]["loss"] == {"a": 1.0, "b": 1e-05, "c": 3.0}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=8))
def test_default_format_round_trips_every_float_exactly(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("h") / "r.jsonl"
    ids = [f"t{i}" for i in range(len(values))]
    with RunLogger(path, test_ids=ids) as log:
        log.initial(values)
        log.step(["e0"], values[::-1])
    rows = read_lines(path)
    assert [rows[0]["loss"][t] for t in ids] == values
    assert [rows[1]["loss"][t] for t in ids] == values[::-1]


def test_exception_inside_with_leaves_no_file(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    with pytest.raises(RuntimeError):
        with RunLogger(path, test_ids=["a"]) as log:
            log.initial([1.0])
            log.step(["e"], [0.9])
            raise RuntimeError("training crashed")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_kept_until_close_and_on_failure(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with RunLogger(path, test_ids=["a"]) as log:
            log.initial([1.0])
            log.step(["e"], [0.9])
            assert path.read_text() == "old\n"  # nothing visible before close
            raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]
    with RunLogger(path, test_ids=["a"]) as log:
        log.initial([1.0])
        log.step(["e"], [0.9])
    assert len(read_lines(path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


def test_abort_and_dropped_logger_leave_nothing(tmp_path):
    log = RunLogger(tmp_path / "a.jsonl")
    log.initial({"t": 1.0})
    log.abort()
    log2 = RunLogger(tmp_path / "b.jsonl")
    del log2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_rejected(tmp_path, bad):
    path = tmp_path / "r.jsonl"
    with pytest.raises(RunLogError, match="t1.*must be finite") as ei:
        with RunLogger(path, test_ids=["t0", "t1"]) as log:
            log.initial([1.0, 1.0])
            log.step(["e"], [0.5, bad])
    assert isinstance(ei.value, InputError) and isinstance(ei.value, ValueError)
    assert ei.value.field == "loss" and str(path) in str(ei.value)
    assert not path.exists()
    with pytest.raises(RunLogError, match="finite"):
        RunLogger(tmp_path / "d.jsonl").initial({"t": bad})


@pytest.mark.parametrize(
    "action, match",
    [
        (lambda log: log.step(["e"], {"t0": 1.0}), "before initial"),
        (
            lambda log: (log.initial({"t0": 1.0}), log.step(["e"], step=0)),
            "step 0 cannot have a batch",
        ),
        (lambda log: (log.initial({"t0": 1.0}), log.step([])), "empty batch at step 1"),
        (
            lambda log: (log.initial({"t0": 1.0}), log.step(["e"], step=2)),
            "step 2 out of order: expected 1",
        ),
        (
            lambda log: (log.initial({"t0": 1.0}), log.step(["e"]), log.step(["e"], step=1)),
            "step 1 out of order",
        ),
        (
            lambda log: (log.initial({"t0": 1.0}), log.initial({"t0": 1.0})),
            "initial\\(\\) called twice",
        ),
        (lambda log: log.initial(None), "step 0 needs the initial losses"),
        (lambda log: log.initial([1.0]), "no test_ids"),
        (lambda log: (log.initial({"t0": 1.0}), log.step("e17")), "single string"),
        (lambda log: (log.initial({"t0": 1.0}), log.step([1.5])), "type float"),
        (lambda log: (log.initial({"t0": 1.0}), log.step([""])), "empty ID"),
        (lambda log: log.initial({"t0": "high"}), "must be numbers"),
    ],
)
def test_invalid_calls(tmp_path, action, match):
    log = RunLogger(tmp_path / "r.jsonl")
    with pytest.raises(RunLogError, match=match):
        action(log)
    log.abort()
    assert list(tmp_path.iterdir()) == []


def test_sequence_checks_against_test_ids(tmp_path):
    log = RunLogger(tmp_path / "r.jsonl", test_ids=["a", "b"])
    with pytest.raises(RunLogError, match="3 losses for 2 test ids"):
        log.initial([1.0, 2.0, 3.0])
    with pytest.raises(RunLogError, match="unknown test id 'z'"):
        log.initial({"a": 1.0, "z": 2.0})
    with pytest.raises(RunLogError, match=r"shape \(2, 2\), expected \(2,\)"):
        RunLogger(tmp_path / "z.jsonl", test_ids=["a", "b"]).initial(np.ones((2, 2)))
    log.initial(np.array([[1.0, 2.0]]))  # a (1, M) row is fine
    log.abort()
    with pytest.raises(RunLogError, match="duplicates"):
        RunLogger(tmp_path / "x.jsonl", test_ids=["a", "a"])
    with pytest.raises(RunLogError, match="precision"):
        RunLogger(tmp_path / "y.jsonl", precision=0)
    assert list(tmp_path.iterdir()) == []


def test_empty_runs_are_refused_on_close(tmp_path):
    with pytest.raises(RunLogError, match="nothing was logged"):
        with RunLogger(tmp_path / "a.jsonl"):
            pass
    with pytest.raises(RunLogError, match="only step 0"):
        with RunLogger(tmp_path / "b.jsonl") as log:
            log.initial({"t": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_closed_logger_refuses_writes(tmp_path):
    log = RunLogger(tmp_path / "r.jsonl")
    log.initial({"t": 1.0})
    log.step(["e"])
    log.close()
    log.close()  # idempotent
    with pytest.raises(RunLogError, match="closed"):
        log.step(["e"])


def test_file_mode_follows_umask(tmp_path):
    path = tmp_path / "r.jsonl"
    with RunLogger(path) as log:
        log.initial({"t": 1.0})
        log.step(["e"])
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_large_losses_exact_and_math_values(tmp_path):
    path = tmp_path / "r.jsonl"
    with RunLogger(path, test_ids=["a"]) as log:
        log.initial([math.pi])
        log.step(["e"], [np.float32(0.1)])
    rows = read_lines(path)
    assert rows[0]["loss"]["a"] == math.pi
    assert rows[1]["loss"]["a"] == float(np.float32(0.1))


def test_lr_and_optimizer_are_written(tmp_path):
    path = tmp_path / "r.jsonl"
    with RunLogger(
        path, test_ids=["t0"], optimizer="AdamW(betas=(0.9, 0.999))", precision=2
    ) as log:
        log.initial([2.345])
        log.step(["e1", "e2"], [2.2], lr=1e-3 / 3)
        log.step(["e3"], lr=0)  # no losses, lr still logged
        log.step(["e4"], [2.0], lr=np.float32(0.5))
        log.step(["e5"], [1.9])  # no lr: line as before
    rows = read_lines(path)
    assert rows == [
        {"step": 0, "batch": [], "optimizer": "AdamW(betas=(0.9, 0.999))", "loss": {"t0": 2.3}},
        {
            "step": 1,
            "batch": ["e1", "e2"],
            "lr": 1e-3 / 3,
            "loss": {"t0": 2.2},
        },  # lr exact, not rounded
        {"step": 2, "batch": ["e3"], "lr": 0.0},
        {"step": 3, "batch": ["e4"], "lr": 0.5, "loss": {"t0": 2.0}},
        {"step": 4, "batch": ["e5"], "loss": {"t0": 1.9}},
    ]
    # without the extras the bytes are exactly what they were before the kwargs existed
    plain = tmp_path / "p.jsonl"
    with RunLogger(plain, test_ids=["t0"]) as log:
        log.initial([1.0])
        log.step(["e1"], [0.5])
    assert (
        plain.read_text() == '{"step": 0, "batch": [], "loss": {"t0": 1.0}}\n'
        '{"step": 1, "batch": ["e1"], "loss": {"t0": 0.5}}\n'
    )


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True, None])
def test_invalid_lr_and_optimizer(tmp_path, bad):
    log = RunLogger(tmp_path / "r.jsonl")
    log.initial({"t": 1.0})
    if bad is not None:
        with pytest.raises(RunLogError, match="lr must be a finite number"):
            log.step(["e"], lr=bad)
    log.abort()
    with pytest.raises(RunLogError, match="optimizer must be a non-empty string"):
        RunLogger(tmp_path / "o.jsonl", optimizer="" if bad is None else 3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ingest_accepts_lr_and_optimizer(tmp_path):
    """encoding A: "lr" on steps and "optimizer" on step 0 are accepted (and not stored yet)."""
    from typer.testing import CliRunner

    from simfluence_cli.cli import app

    for name, extras in [("with", True), ("without", False)]:
        with RunLogger(
            tmp_path / name / "run-1.jsonl.gz",
            test_ids=["t0", "t1"],
            optimizer="SGD(momentum=0.9)" if extras else None,
        ) as log:
            log.initial([2.0, 1.0])
            for t, b in enumerate([["e1", "e2", "e3"], ["e4", "e5", "e6"], ["e7"]], start=1):
                log.step(b, [2.0 - 0.1 * t, 1.0 - 0.05 * t], lr=0.01 * t if extras else None)
    runner = CliRunner()
    out = {}
    for name in ("with", "without"):
        store = tmp_path / f"store-{name}"
        r = runner.invoke(app, ["ingest", str(tmp_path / name), "--store", str(store)])
        assert r.exit_code == 0, r.output
        info = runner.invoke(app, ["info", "--store", str(store), "--json"])
        assert info.exit_code == 0, info.output
        cur = runner.invoke(app, ["curriculum", "run-1", "--store", str(store)])
        assert cur.exit_code == 0, cur.output
        d = json.loads(info.stdout)
        out[name] = (d["loss_rows"], d["curriculum_rows"], d["steps"], cur.stdout)
    assert out["with"] == out["without"] and out["with"][:2] == (8, 7)


def test_resume_from_state_dict_continues_after_the_checkpoint(tmp_path):
    """An interrupted run resumed from a checkpoint's state_dict() gives the uninterrupted file;
    the steps trained after the checkpoint and lost with the interruption are not in it."""
    steps = [([f"e{t}", f"e{t + 1}"], [2.0 - 0.1 * t, 1.0 + 0.01 * t]) for t in range(1, 7)]
    with RunLogger(tmp_path / "full.jsonl.gz", test_ids=["t0", "t1"], optimizer="sgd") as log:
        log.initial([2.0, 1.0])
        for batch, losses in steps:
            log.step(batch, losses, lr=0.1)
            assert len(log.state_dict()["lines"]) == log.last_step + 1  # read back, mid-stream
    first = RunLogger(tmp_path / "cut.jsonl.gz", test_ids=["t0", "t1"], optimizer="sgd")
    first.initial([2.0, 1.0])
    for batch, losses in steps[:3]:
        first.step(batch, losses, lr=0.1)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint holds (plain data)
    first.step(["lost"], [9.0, 9.0], lr=0.1)  # trained after the checkpoint, then interrupted
    first.abort()
    with RunLogger(tmp_path / "cut.jsonl.gz", test_ids=["t0", "t1"], resume=state) as log:
        assert log.last_step == 3
        with pytest.raises(RunLogError, match="initial"):
            log.initial([2.0, 1.0])
        for batch, losses in steps[3:]:
            assert log.step(batch, losses, lr=0.1) == int(batch[0][1:])
    with (
        gzip.open(tmp_path / "full.jsonl.gz", "rt") as a,
        gzip.open(tmp_path / "cut.jsonl.gz", "rt") as b,
    ):
        assert a.read() == b.read()
    with pytest.raises(RunLogError, match="field 'resume': resume= was saved with other test_ids"):
        RunLogger(tmp_path / "x.jsonl", test_ids=["t0", "t9"], resume=state)
    with pytest.raises(RunLogError, match="not a RunLogger.state_dict"):
        RunLogger(tmp_path / "x.jsonl", resume={"lines": []})
    assert not (tmp_path / "x.jsonl").exists()

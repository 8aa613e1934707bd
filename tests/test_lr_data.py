"""Per-step learning rate and optimizer through the data path (encoding A -> store -> Run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.errors import InputError
from simfluence_cli.io.jsonl import read_jsonl
from simfluence_cli.runs import RunSet
from simfluence_cli.store.integrity import verify_store
from simfluence_cli.store.run_store import RunStore


def _write(path, lr=True, optimizer="AdamW(betas=(0.9, 0.999))", drop_lr_at=None):
    lines = [{"step": 0, "batch": [], "loss": {"t0": 1.0, "t1": 2.0}}]
    if optimizer:
        lines[0]["optimizer"] = optimizer
    for t in range(1, 6):
        row = {"step": t, "batch": ["a", "b"] if t % 2 else ["c"], "loss": {"t0": 1 - 0.1 * t}}
        if lr and t != drop_lr_at:
            row["lr"] = 0.01 * t
        lines.append(row)
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_jsonl_reads_lr_and_optimizer(tmp_path):
    rd = read_jsonl(_write(tmp_path / "r.jsonl"))
    np.testing.assert_array_equal(rd.lr, 0.01 * np.arange(1, 6))
    assert rd.optimizer == "AdamW(betas=(0.9, 0.999))"
    plain = read_jsonl(_write(tmp_path / "p.jsonl", lr=False, optimizer=None))
    assert plain.lr is None and plain.optimizer is None


def test_lr_on_some_steps_only_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match='without "lr"') as e:
        read_jsonl(_write(tmp_path / "r.jsonl", drop_lr_at=3))
    assert e.value.line == 4


@pytest.mark.parametrize("bad", [-0.1, "0.1", None])
def test_bad_lr_value_rejected(tmp_path, bad):
    p = _write(tmp_path / "r.jsonl")
    lines = p.read_text().splitlines()
    row = json.loads(lines[2])
    row["lr"] = bad
    if bad is None:
        row["lr"] = [1]
    lines[2] = json.dumps(row)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="finite number"):
        read_jsonl(p)


def test_store_round_trip_and_verify(tmp_path):
    src = [_write(tmp_path / "r1.jsonl"), _write(tmp_path / "r2.jsonl", lr=False, optimizer=None)]
    st = RunStore(tmp_path / "s", create=True)
    st.ingest(src)
    rs = st.load("all")
    np.testing.assert_array_equal(rs["r1"].lr, 0.01 * np.arange(1, 6))
    assert rs["r1"].optimizer.startswith("AdamW")
    assert rs["r2"].lr is None and rs["r2"].optimizer is None
    assert verify_store(tmp_path / "s").ok
    info = st.info()
    assert info["runs_with_lr"] == 1 and info["optimizers"] == ["AdamW(betas=(0.9, 0.999))"]
    out = CliRunner().invoke(app, ["info", "--store", str(tmp_path / "s")])
    assert out.exit_code == 0 and "logged per step in 1 of 2 runs" in out.stdout
    # re-ingesting the same content is a no-op (lr is part of the content hash)
    rep = st.ingest(src)
    assert sorted(rep.unchanged) == ["r1", "r2"]


def test_lr_changes_content_hash_but_not_for_runs_without_lr(tmp_path):
    with_lr = read_jsonl(_write(tmp_path / "a.jsonl"))
    without = read_jsonl(_write(tmp_path / "b.jsonl", lr=False))
    assert with_lr.content_hash != without.content_hash
    without.lr = None
    without._hash = None
    # a run without lr hashes exactly as before lr existed (old stores stay valid)
    import hashlib

    h = hashlib.sha256(b"simfluence-run-content-v1\n")
    for arr in (without.example_ids, without.test_ids):
        h.update(json.dumps(list(arr), ensure_ascii=False).encode())
        h.update(b"\n")
    h.update(np.ascontiguousarray(without.batch_ptr, "<i8").tobytes())
    h.update(np.ascontiguousarray(without.ex_codes, "<i4").tobytes())
    h.update(np.ascontiguousarray(without.loss_step, "<i8").tobytes())
    h.update(np.ascontiguousarray(without.loss_test, "<i4").tobytes())
    h.update(np.ascontiguousarray(without.loss + 0.0, "<f8").tobytes())
    assert without.content_hash == h.hexdigest()


def test_verify_flags_lr_varying_within_a_step(tmp_path):
    import pyarrow.parquet as pq

    st = RunStore(tmp_path / "s", create=True)
    st.ingest([_write(tmp_path / "r1.jsonl")])
    rel = st.runs()[0]["curriculum_file"]
    t = pq.read_table(tmp_path / "s" / rel)
    lr = t.column("lr").to_numpy().copy()
    lr[1] += 1.0  # step 1 has two rows; make them disagree
    import pyarrow as pa

    t = t.set_column(3, t.schema.field("lr"), pa.array(lr))
    pq.write_table(t, tmp_path / "s" / rel)
    assert not verify_store(tmp_path / "s").ok


def test_runset_lr_via_add_runset(tmp_path):
    rs = RunSet.from_batches(
        {"r": ([["a"], ["b"]], np.array([[1.0], [0.9], [0.8]]))}, test_ids=["t"]
    )
    rs.runs[0].lr = np.array([0.5, 0.25])
    rs.runs[0].optimizer = "SGD(momentum=0.9)"
    st = RunStore(tmp_path / "s", create=True)
    st.add_runset(rs)
    back = st.load("all")["r"]
    np.testing.assert_array_equal(back.lr, [0.5, 0.25])
    assert back.optimizer == "SGD(momentum=0.9)"


def _tables(tmp_path, lr_rows):
    cur = ["run,step,example_id,lr"]
    for step, ids in ((1, ["a", "b"]), (2, ["c"]), (3, ["a"])):
        for e in ids:
            cur.append(f"r,{step},{e},{lr_rows.get((step, e), 0.1 * step)}")
    (tmp_path / "cur.csv").write_text("\n".join(cur) + "\n")
    los = ["run,step,test_id,loss", "r,0,t,1.0", "r,3,t,0.7"]
    (tmp_path / "loss.csv").write_text("\n".join(los) + "\n")
    return [tmp_path / "cur.csv", tmp_path / "loss.csv"]


def test_long_tables_carry_an_optional_lr_column(tmp_path):
    st = RunStore(tmp_path / "s", create=True)
    st.ingest(_tables(tmp_path, {}))
    np.testing.assert_allclose(st.load("all")["r"].lr, [0.1, 0.2, 0.3])
    assert verify_store(tmp_path / "s").ok


def test_long_table_lr_must_be_constant_within_a_step(tmp_path):
    st = RunStore(tmp_path / "s", create=True)
    with pytest.raises(InputError, match="differs within step") as e:
        st.ingest(_tables(tmp_path, {(1, "b"): 0.5}))
    assert e.value.line == 3


def test_long_table_lr_on_some_rows_only_is_an_error(tmp_path):
    st = RunStore(tmp_path / "s", create=True)
    with pytest.raises(InputError, match="empty lr"):
        st.ingest(_tables(tmp_path, {(2, "c"): ""}))

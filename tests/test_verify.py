"""`simfluence verify`: every kind of damage is found and named with its fix; newer stores refused."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.integrity import verify_store
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import save_model


def run_cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def runs():
    rs, _, _ = make_runs(10, 4, 4, 8, 3, seed=5, noise=0.01)
    return rs


@pytest.fixture
def store(tmp_path, runs):
    st = RunStore(tmp_path / "s", create=True)
    st.add_runset(runs, tags=["fit"])
    ids = st.select("fit")
    sim = Simulator(l2=1.0).fit(st.load(ids))
    with st.write_lock():
        save_model(st, "lin", sim, runs=ids, data_hash=st.data_hash(ids), selector="fit")
    return st


def findings(st, **kw):
    rep = verify_store(st.path, **kw)
    return rep, [(f.severity, f.message, f.fix) for f in rep.findings]


def test_clean_store_is_consistent(store):
    rep, fs = findings(store)
    assert fs == [] and rep.ok and rep.runs_checked == 4 and rep.models_checked == 1
    r = run_cli("verify", "--store", store.path)
    assert r.exit_code == 0 and r.stdout == "" and "is consistent" in r.stderr
    r = run_cli("verify", "--store", store.path, "--json")
    d = json.loads(r.stdout)
    assert d["ok"] is True and d["errors"] == 0 and d["runs_checked"] == 4


def test_modified_losses_file_fails_the_content_hash(store):
    rel = store.runs()[1]["losses_file"]
    t = pq.read_table(store.path / rel)
    loss = t.column("loss").to_numpy().copy()
    loss[3] += 1e-9  # a silent one-ulp-ish change, schema intact
    t = t.set_column(3, "loss", pa.array(loss))
    pq.write_table(t, store.path / rel)
    rep, fs = findings(store)
    assert not rep.ok
    ((sev, msg, fix),) = [f for f in fs if "content hash" in f[1]]
    assert sev == "error" and "--replace" in fix
    # the model fitted on that run is now reported as depending on a damaged run
    assert any("depends on damaged run" in m for _, m, _ in fs)
    r = run_cli("verify", "--store", store.path)
    assert r.exit_code == 1 and "content hash" in r.stdout and "fix:" in r.stdout


def test_missing_partition_file(store):
    rel = store.runs()[0]["curriculum_file"]
    (store.path / rel).unlink()
    rep, fs = findings(store)
    assert any(s == "error" and "missing curriculum file" in m for s, m, _ in fs)
    assert run_cli("verify", "--store", store.path).exit_code == 1


def test_wrong_schema_is_an_error(store):
    rel = store.runs()[0]["losses_file"]
    t = pq.read_table(store.path / rel)
    t = t.set_column(3, "loss", t.column("loss").cast(pa.float32()))
    pq.write_table(t, store.path / rel)
    _, fs = findings(store)
    assert any(s == "error" and "schema" in m for s, m, _ in fs)


def test_truncated_parquet_is_an_error(store):
    rel = store.runs()[2]["losses_file"]
    data = (store.path / rel).read_bytes()
    (store.path / rel).write_bytes(data[: len(data) // 2])
    _, fs = findings(store)
    assert any(s == "error" and "unreadable Parquet" in m for s, m, _ in fs)


def test_orphans_are_warnings_strict_fails_and_repair_removes_them(store):
    (store.path / "losses" / "zzz-0000000000.g9.parquet").write_bytes(b"PAR1junk")
    (store.path / "curriculum" / ".zzz-0000000000.g9.parquet.pending").write_bytes(b"partial")
    (store.path / ".manifest.json.abc.tmp").write_bytes(b"{")
    (store.path / "runs.parquet").unlink()
    rep, fs = findings(store)
    assert rep.ok and len(rep.warnings) == 4
    assert all("--repair" in fix for _, _, fix in fs)
    assert run_cli("verify", "--store", store.path).exit_code == 0
    assert run_cli("verify", "--store", store.path, "--strict").exit_code == 1
    r = run_cli("verify", "--store", store.path, "--repair")
    assert r.exit_code == 0 and "repair: removed losses/zzz" in r.stderr
    rep, fs = findings(store)
    assert fs == []
    assert not (store.path / "losses" / "zzz-0000000000.g9.parquet").exists()
    # a user's own file in a partition directory is reported but never deleted
    (store.path / "losses" / "notes.txt").write_text("mine")
    rep, fs = findings(store, repair=True)
    assert [f.where for f in rep.findings] == ["losses/notes.txt"]
    assert (store.path / "losses" / "notes.txt").exists()


def test_outdated_runs_table_is_reported(store, runs):
    before = (store.path / "runs.parquet").read_bytes()
    store.add_runset(runs.subset(runs.run_ids[:1]), tags=["extra"])  # retag: new runs table
    (store.path / "runs.parquet").write_bytes(before)
    rep, fs = findings(store)
    assert any("runs.parquet" in f.where and "out of date" in f.message for f in rep.findings)
    findings(store, repair=True)
    assert findings(store)[1] == []


def test_stale_model_after_replace(store, runs):
    rid = runs.run_ids[0]
    changed = runs.subset([rid])
    changed.runs[0].losses[-1, 0] += 0.5
    store.add_runset(changed, replace=True)
    rep, fs = findings(store)
    ((sev, msg, fix),) = fs
    assert sev == "error" and msg.startswith("model 'lin' is stale")
    assert fix == "refit with simfluence fit --name lin --replace"
    r = run_cli("verify", "--store", store.path)
    assert r.exit_code == 1 and "model 'lin' is stale" in r.stdout
    # refit through the CLI fixes it
    assert (
        run_cli(
            "fit", "--store", store.path, "--runs", "fit", "--l2", "1", "--name", "lin", "--replace"
        ).exit_code
        == 0
    )
    assert findings(store)[1] == []


def test_damaged_models(store, tmp_path):
    d = store.path / "models" / "lin"
    man = json.loads((d / "model.json").read_text())
    # wrong shape: drop the last row group of parameters
    p = d / man["files"]["parameters"]
    t = pq.read_table(p)
    pq.write_table(t.slice(0, t.num_rows - 1), p)
    _, fs = findings(store)
    assert any("damaged" in m and "rows" in m and "--replace" in fx for _, m, fx in fs)
    p.unlink()
    _, fs = findings(store)
    assert any("missing its parameters file" in m for _, m, _ in fs)
    (d / "model.json").write_text("{not json")
    _, fs = findings(store)
    assert any("unreadable model manifest" in m for _, m, _ in fs)
    # an interrupted fit: files but no model.json
    inc = store.path / "models" / "half"
    inc.mkdir()
    (inc / "parameters-1-abc.parquet").write_bytes(b"partial")
    rep, fs = findings(store)
    assert any(f.model == "half" and f.severity == "warning" for f in rep.findings)
    findings(store, repair=True)
    assert not inc.exists()


def test_non_finite_parameters_are_damage(store):
    d = store.path / "models" / "lin"
    man = json.loads((d / "model.json").read_text())
    p = d / man["files"]["parameters"]
    t = pq.read_table(p)
    b = t.column("B").to_numpy().copy()
    b[0] = np.nan
    pq.write_table(t.set_column(3, "B", pa.array(b)), p)
    _, fs = findings(store)
    assert any("non-finite" in m for _, m, _ in fs)


def test_stale_lock_is_a_warning(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (store.path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    rep, fs = findings(store)
    assert rep.ok and any("stale write lock" in m for _, m, _ in fs)


def test_manifest_garbage(store):
    (store.path / "manifest.json").write_text('{"format": 1, "runs": {"r": 5}}')
    rep, fs = findings(store)
    assert not rep.ok and any("malformed manifest entry" in m for _, m, _ in fs)


def test_not_a_store(tmp_path):
    r = run_cli("verify", "--store", tmp_path / "nothing")
    assert r.exit_code == 1 and "no run store" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.sweep
@pytest.mark.parametrize(
    "cmd",
    [
        ["verify"],
        ["info"],
        ["info", "--json"],
        ["fit", "--l2", "1"],
        ["curriculum", "syn-000"],
        ["simulate", "CUR"],
        ["ingest", "LOGS"],
        ["eval", "-m", "lin"],
        ["top", "-m", "lin", "-t", "t0"],
        ["import-scores", "SCORES", "-n", "tr", "--runs", "fit"],
        ["whatif", "-m", "lin", "-b", "syn-000", "--drop", "e0"],
        ["plot", "-m", "lin", "--run", "syn-000", "-o", "OUT"],
        ["groups", "-m", "lin", "-b", "syn-000", "-g", "e0,e1"],
        ["design", "-m", "lin", "-T", "3", "-o", "OUT"],
        ["verify", "--repair"],
    ],
)
def test_newer_store_format_is_refused_by_every_command(store, tmp_path, runs, cmd):
    mf = store.path / "manifest.json"
    man = json.loads(mf.read_text())
    man["format"] = 99
    mf.write_text(json.dumps(man))
    before = {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()}
    cur = tmp_path / "cur.txt"
    cur.write_text("e0 e1 e2\n")
    logs = tmp_path / "logs"
    from simfluence_cli.io.synthetic import write_jsonl

    write_jsonl(runs.subset(runs.run_ids[:1]), logs)
    scores = tmp_path / "scores.csv"
    scores.write_text("test_id,example_id,score\nt0,e0,0.1\n")
    args = [
        {"CUR": cur, "LOGS": logs, "SCORES": scores, "OUT": tmp_path / "p.png"}.get(a, a)
        for a in cmd
    ]
    r = run_cli(*args, "--store", store.path)
    assert r.exit_code == 1, (cmd, r.stdout, r.stderr)
    assert "store format 99" in r.stderr and "upgrade" in r.stderr
    assert r.stderr.count("\n") == 1
    after = {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()}
    assert after == before


def test_python_api_refuses_newer_format(store):
    from simfluence_cli.errors import StoreVersionError

    mf = store.path / "manifest.json"
    man = json.loads(mf.read_text())
    man["format"] = 2
    mf.write_text(json.dumps(man))
    with pytest.raises(StoreVersionError, match="format 2"):
        verify_store(store.path)
    with pytest.raises(StoreVersionError):
        RunStore(store.path, create=True)


@pytest.mark.parametrize("damage", ["manifest", "parameters"])
def test_damaged_model_is_one_line_error_and_replace_fixes_it(store, tmp_path, damage):
    d = store.path / "models" / "lin"
    if damage == "manifest":
        (d / "model.json").write_text("{broken")
    else:
        man = json.loads((d / "model.json").read_text())
        (d / man["files"]["parameters"]).unlink()
    cur = tmp_path / "cur.txt"
    cur.write_text("e0 e1 e2\n")
    for args in (["simulate", cur], ["simulate", cur, "--model", "lin"], ["eval", "-m", "lin"]):
        r = run_cli(*args, "--store", store.path)
        assert r.exit_code == 1 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "--replace" in r.stderr
    assert run_cli("verify", "--store", store.path).exit_code == 1
    r = run_cli(
        "fit", "--store", store.path, "--runs", "fit", "--l2", "1", "--name", "lin", "--replace"
    )
    assert r.exit_code == 0, r.stderr
    assert findings(store)[1] == []


@pytest.mark.slow
def test_lost_partition_is_named_and_replace_of_the_same_source_repairs_it(store, runs, tmp_path):
    from simfluence_cli.io.synthetic import write_jsonl

    rid = runs.run_ids[2]
    (store.path / store.runs()[2]["losses_file"]).unlink()
    r = run_cli("info", "--store", store.path)
    assert r.exit_code == 1 and repr(rid) in r.stderr and "simfluence verify" in r.stderr
    (path,) = write_jsonl(runs.subset([rid]), tmp_path / "src")
    r = run_cli("ingest", path, "--store", store.path)  # identical content: a no-op ...
    assert r.exit_code == 0 and "1 unchanged" in r.stderr
    assert not verify_store(store.path).ok
    r = run_cli("ingest", path, "--store", store.path, "--replace")  # ... unless --replace
    assert r.exit_code == 0 and "rewritten" in r.stderr, r.stderr
    assert findings(store)[1] == []  # and the model is still current (same content hash)

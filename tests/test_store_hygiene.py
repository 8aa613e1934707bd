"""Store hygiene: every rewrite of a model or run leaves exactly one generation of its files;
strays (a crash between commit and cleanup) are reported by verify and removed by --repair;
re-importing identical scores is a no-op; the README's duckdb/pandas snippets count right."""

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.store.integrity import verify_store
from simfluence_cli.store.run_store import RunStore


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def store(tmp_path):
    rs, _, _ = make_runs(8, 3, 4, 12, 2, seed=1)
    path = tmp_path / "store"
    RunStore(path, create=True).add_runset(rs, tags=["fit"])
    return path


def _scores(tmp_path, scale=1.0):
    p = tmp_path / f"scores-{scale}.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["test_id", "example_id", "score"])
        for j in range(3):
            for i in range(8):
                w.writerow([f"t{j}", f"e{i}", scale * 0.01 * (i - j)])
    return p


def _model_files(store, name):
    return sorted(f.name for f in (store / "models" / name).iterdir())


def _one_generation(store, name):
    man = json.loads((store / "models" / name / "model.json").read_text())
    assert _model_files(store, name) == sorted(["model.json", *man["files"].values()])


def test_refit_with_replace_leaves_one_generation(store):
    assert cli("fit", "--store", store, "--l2", "0.1", "-n", "m").exit_code == 0
    first = _model_files(store, "m")
    for _ in range(2):
        r = cli("fit", "--store", store, "--l2", "0.1", "-n", "m", "--replace")
        assert r.exit_code == 0, r.stderr
        _one_generation(store, "m")
    assert _model_files(store, "m") != first  # really rewritten
    rep = verify_store(store)
    assert not rep.findings, [f.line() for f in rep.findings]


def test_reimport_scores_is_a_noop_and_replace_keeps_one_generation(store, tmp_path):
    src = _scores(tmp_path)
    args = ("import-scores", src, "--store", store, "-n", "s", "--scale", "fit", "--runs", "fit")
    r = cli(*args, "--format", "json")
    assert r.exit_code == 0, r.stderr
    before = _model_files(store, "s")
    mtime = (store / "models" / "s" / "model.json").stat().st_mtime_ns
    r = cli(*args, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert "up to date" in r.stderr
    assert json.loads(r.stdout)[0]["scale"] is not None  # the same row, from the manifest
    assert _model_files(store, "s") == before
    assert (store / "models" / "s" / "model.json").stat().st_mtime_ns == mtime
    # other options or another file are a different model: refused without --replace
    r = cli(*args[:-4], "--scale", "2", "--runs", "fit")
    assert r.exit_code == 1 and "--replace" in r.stderr
    r = cli(*args[:-4], "--scale", "2", "--runs", "fit", "--replace")
    assert r.exit_code == 0, r.stderr
    _one_generation(store, "s")
    other = _scores(tmp_path, 3.0)
    r = cli("import-scores", other, "--store", store, "-n", "s", "--scale", "none")
    assert r.exit_code == 1 and "--replace" in r.stderr


def test_reingest_with_replace_leaves_one_generation_of_run_files(store, tmp_path):
    rs2, _, _ = make_runs(8, 3, 4, 12, 2, seed=2)  # same run ids, other content
    st = RunStore(store)
    st.add_runset(rs2, tags=["fit"], replace=True)
    named = {rel for r in st.runs() for rel in (r["curriculum_file"], r["losses_file"])}
    on_disk = {
        f"{part}/{f.name}" for part in ("curriculum", "losses") for f in (store / part).iterdir()
    }
    assert on_disk == named


@pytest.mark.slow
def test_strays_after_a_crash_are_reported_and_repaired(store):
    assert cli("fit", "--store", store, "--l2", "0.1", "-n", "m").exit_code == 0
    d = store / "models" / "m"
    man = json.loads((d / "model.json").read_text())
    # what a crash between the commit and the cleanup leaves: the older generation's files
    for f in man["files"].values():
        old = f.split("-", 1)[0] + "-1-0ldgen.parquet"
        shutil.copy(d / f, d / old)
    (d / ".parameters-x.parquet.abcd.tmp").write_bytes(b"partial")
    run = RunStore(store).runs()[0]
    stray_run = store / "losses" / run["losses_file"].split("/")[1].replace(".g", ".g9", 1)
    shutil.copy(store / run["losses_file"], stray_run)

    r = cli("verify", "--store", store)
    assert r.exit_code == 0  # warnings only
    out = r.stdout
    assert "parameters-1-0ldgen.parquet" in out and "superseded" in out
    assert "tests-1-0ldgen.parquet" in out and ".parameters-x.parquet.abcd.tmp" in out
    assert stray_run.name in out
    assert cli("verify", "--store", store, "--strict").exit_code == 1

    r = cli("verify", "--store", store, "--repair")
    assert r.exit_code == 0
    assert "removed models/m/parameters-1-0ldgen.parquet" in r.stderr
    _one_generation(store, "m")
    assert not stray_run.exists()
    r = cli("verify", "--store", store, "--strict")
    assert r.exit_code == 0, r.stdout
    assert cli("simulate", "--help").exit_code == 0


def test_readme_duckdb_and_pandas_snippets_count_right_after_refits(store, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pd = pytest.importorskip("pandas")
    for extra in ([], ["--replace"], ["--replace"]):
        assert cli("fit", "--store", store, "--l2", "0.1", "-n", "linear", *extra).exit_code == 0
    rs2, _, _ = make_runs(8, 3, 4, 12, 2, seed=3)
    RunStore(store).add_runset(rs2, tags=["fit"], replace=True)
    n_ex = 8
    con = duckdb.connect()
    # README "Fitting": mean B per example over the model's parameter files
    rows = con.sql(
        f"SELECT example_id, avg(B) AS mean_B, count(*) AS n FROM "
        f"'{store}/models/linear/parameters-*.parquet' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert len(rows) == n_ex and {r[2] for r in rows} == {3}  # one row per test: one generation
    # README "Store format": mean test loss per step over the fit runs
    res = con.sql(f"""
        SELECT l.step, round(avg(l.loss), 4) AS mean_loss, count(*) AS n
        FROM read_parquet('{store}/losses/*.parquet') AS l
        JOIN read_parquet('{store}/runs.parquet') AS r USING (run)
        WHERE list_contains(r.tags, 'fit')
        GROUP BY l.step ORDER BY l.step LIMIT 4
    """).fetchall()
    assert [r[2] for r in res] == [4 * 3] * 4  # 4 runs x 3 tests, no stale generation
    occ = con.sql(f"""
        SELECT count(*) FROM read_parquet('{store}/curriculum/*.parquet')
    """).fetchall()[0][0]
    assert occ == 4 * 12 * 2
    runs = pd.read_parquet(store / "runs.parquet")
    assert len(runs) == 4
    loss = pd.read_parquet(store / "losses", filters=[("run", "==", runs["run"][0])])
    wide = loss.pivot(index="step", columns="test_id", values="loss")
    assert wide.shape == (13, 3)
    cur = pd.read_parquet(store / "curriculum", filters=[("run", "==", runs["run"][0])])
    batches = cur.groupby("step", sort=True)["example_id"].apply(list)
    assert len(batches) == 12 and all(len(b) == 2 for b in batches)
    np.testing.assert_allclose(
        sorted(loss["loss"]),
        sorted(RunStore(store).load([runs["run"][0]]).runs[0].losses.reshape(-1)),
    )

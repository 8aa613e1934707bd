"""import-scores: reading score tables, the sign convention, --scale fit, the CLI."""

import csv
import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.errors import InputError
from simfluence_cli.io.score_files import read_scores
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.external_scores import fit_scale, scores_simulator
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import load_model

N, M, TRUE_SCALE = 12, 3, 0.7


def _scores(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.02, 0.02, (N, M))  # (examples, tests)


def _write_csv(path, S, gz=False, rows=None):
    rows = (
        rows
        if rows is not None
        else [
            (f"t{j}", f"e{i}", repr(float(S[i, j])))
            for j in range(S.shape[1])
            for i in range(S.shape[0])
        ]
    )
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["test_id", "example_id", "score"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def additive_runs():
    """Runs of the additive model B = -TRUE_SCALE * score (noise free, sparse logging)."""
    S = _scores()
    A = np.full((N, M), 0.5)
    rs, _, _ = make_runs(
        N, M, 6, 30, 2, method="additive", seed=1, params=(A, -TRUE_SCALE * S), log_every=3
    )
    return rs, S


def test_read_csv_gz_and_parquet_agree(tmp_path):
    S = _scores()
    a = read_scores(_write_csv(tmp_path / "s.csv", S))
    b = read_scores(_write_csv(tmp_path / "s.csv.gz", S, gz=True))
    t = pa.table(
        {
            "test_id": [f"t{j}" for j in range(M) for _ in range(N)],
            "example_id": [f"e{i}" for _ in range(M) for i in range(N)],
            "score": S.T.reshape(-1),
        }
    )
    pq.write_table(t, tmp_path / "s.parquet")
    c = read_scores(tmp_path / "s.parquet")
    for x in (a, b, c):
        order = np.argsort([int(e[1:]) for e in x.example_ids])
        np.testing.assert_allclose(x.S[order], S)
        assert list(x.test_ids) == ["t0", "t1", "t2"]
        assert x.n_missing == 0


def test_missing_pairs_are_zero(tmp_path):
    p = _write_csv(tmp_path / "s.csv", None, rows=[("t0", "e0", "1.5"), ("t1", "e1", "-2")])
    tab = read_scores(p)
    assert tab.n_missing == 2
    np.testing.assert_array_equal(tab.S, [[1.5, 0.0], [0.0, -2.0]])


@pytest.mark.parametrize(
    "rows,needle,line",
    [
        ([("t0", "e0", "abc")], "field 'score': expected a number", 2),
        ([("t0", "e0", "1"), ("t0", "e0", "2")], "duplicate", 3),
        ([("t0", "e0", "1"), ("t0", "e1", "nan")], "finite", 3),
    ],
)
def test_bad_tables_name_file_line_field(tmp_path, rows, needle, line):
    p = _write_csv(tmp_path / "s.csv", None, rows=rows)
    with pytest.raises(InputError) as ei:
        read_scores(p)
    assert needle in str(ei.value) and f"s.csv:{line}:" in str(ei.value)


def test_missing_column(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("test,example_id,score\nt0,e0,1\n")
    with pytest.raises(InputError, match="missing column.*test_id"):
        read_scores(p)


def test_positive_score_lowers_the_simulated_loss(tmp_path):
    p = _write_csv(tmp_path / "s.csv", None, rows=[("t0", "good", "0.1"), ("t0", "bad", "-0.1")])
    sim = scores_simulator(read_scores(p), 1.0)
    out = sim.simulate([[["good"]], [["bad"]]], np.array([1.0]))
    assert out[0, 1, 0] == pytest.approx(0.9)  # helpful example: loss goes down
    assert out[1, 1, 0] == pytest.approx(1.1)


@pytest.mark.parametrize("on", ["step", "cumulative"])
def test_scale_fit_recovers_a_known_scale(tmp_path, additive_runs, on):
    rs, S = additive_runs
    tab = read_scores(_write_csv(tmp_path / "s.csv", S))
    sim1 = scores_simulator(tab, 1.0, rs)
    res = fit_scale(-sim1.B_, sim1.example_ids_, sim1.test_ids_, rs, on=on)
    assert res["scale"] == pytest.approx(TRUE_SCALE, rel=1e-9)
    assert res["r2"] == pytest.approx(1.0)


def test_cli_import_scores_then_eval(tmp_path, additive_runs):
    rs, S = additive_runs
    store = tmp_path / "store"
    st = RunStore(store, create=True)
    st.add_runset(rs.subset(rs.run_ids[:4]), tags=["fit"])
    st.add_runset(rs.subset(rs.run_ids[4:]), tags=["heldout"])
    src = _write_csv(tmp_path / "scores.csv.gz", S, gz=True)
    r = CliRunner().invoke(
        app,
        [
            "import-scores",
            str(src),
            "--name",
            "tracin",
            "--store",
            str(store),
            "--scale",
            "fit",
            "--runs",
            "fit",
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["scale"] == pytest.approx(TRUE_SCALE, rel=1e-9)
    man = json.loads((store / "models" / "tracin" / "model.json").read_text())
    assert man["config"]["kind"] == "tracin-scores" and man["config"]["method"] == "additive"
    assert man["scale"] == pytest.approx(TRUE_SCALE) and man["scale_mode"] == "fit"
    assert man["source"] == str(src) and len(man["config"]["runs"]) == 4
    assert "source" not in man["config"]  # the content hash identifies the file, not its path
    sim = load_model(st, "tracin")
    order = [int(e[1:]) for e in sim.example_ids_]
    np.testing.assert_allclose(-sim.B_ / TRUE_SCALE, S[order], rtol=1e-9)
    r = CliRunner().invoke(app, ["eval", "--store", str(store), "-m", "tracin", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["results"][0]["all_steps_mse"] < 1e-20  # the scores are the true simulator here
    assert len(doc["runs"]) == 2


def test_cli_scale_options(tmp_path):
    src = _write_csv(tmp_path / "s.csv", None, rows=[("t0", "e0", "1")])
    store = tmp_path / "store"
    rs, _, _ = make_runs(3, 1, 1, 2, 1)
    RunStore(store, create=True).add_runset(rs)
    r = CliRunner().invoke(app, ["import-scores", str(src), "--name", "x", "--store", str(store)])
    assert r.exit_code == 2 and "--runs" in r.stderr
    r = CliRunner().invoke(
        app, ["import-scores", str(src), "--name", "x", "--store", str(store), "--scale", "abc"]
    )
    assert r.exit_code == 2
    r = CliRunner().invoke(
        app,
        [
            "import-scores",
            str(src),
            "--name",
            "x",
            "--store",
            str(store),
            "--scale",
            "2.5",
            "--format",
            "csv",
        ],
    )
    assert r.exit_code == 0, r.stderr
    sim = load_model(RunStore(store), "x")
    assert sim.B_[0, 0] == pytest.approx(-2.5) and sim.clip == "none"
    r = CliRunner().invoke(
        app,
        [
            "import-scores",
            str(tmp_path / "nope.csv"),
            "--name",
            "y",
            "--store",
            str(store),
            "--scale",
            "none",
        ],
    )
    assert r.exit_code == 1 and "nope.csv" in r.stderr

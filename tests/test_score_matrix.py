"""import-scores with a score MATRIX + ID lists, and write_scores (issue 13 item 3)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import simfluence_cli
from simfluence_cli.cli import app
from simfluence_cli.errors import InputError, MissingExtraError, UsageError
from simfluence_cli.io.score_files import read_id_list, read_score_matrix, read_scores
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import load_model

N, M, TRUE_SCALE = 10, 3, 0.7


def _ids(n, prefix):
    # deliberately not in sorted order, so the reader must keep the matrix order
    return [f"{prefix}{(7 * k) % n}" for k in range(n)]


def _mat(seed=0):
    return np.random.default_rng(seed).normal(0.02, 0.02, (M, N))  # (tests, examples)


def _write_ids(path, ids):
    path.write_text("\n".join(ids) + "\n")
    return str(path)


def test_matrix_equals_the_long_table_written_by_write_scores(tmp_path):
    S, te, ex = _mat(), _ids(M, "t"), _ids(N, "e")
    np.save(tmp_path / "s.npy", S)
    a = read_score_matrix(tmp_path / "s.npy", te, ex)
    for suffix in ("csv", "csv.gz", "parquet"):
        out = simfluence_cli.write_scores(S, te, ex, tmp_path / f"s.{suffix}")
        b = read_scores(out)
        assert list(b.test_ids) == list(a.test_ids) and list(b.example_ids) == list(a.example_ids)
        np.testing.assert_array_equal(a.S, b.S)
    # the entry for (test te[1], example ex[2]) is S[1, 2]
    i = list(a.example_ids).index(ex[2])
    j = list(a.test_ids).index(te[1])
    assert a.S[i, j] == S[1, 2]
    # train-by-test is the transpose
    np.save(tmp_path / "st.npy", S.T)
    c = read_score_matrix(tmp_path / "st.npy", te, ex, layout="train-by-test")
    np.testing.assert_array_equal(a.S, c.S)
    d = simfluence_cli.write_scores(S.T, te, ex, tmp_path / "t.csv", layout="train-by-test")
    np.testing.assert_array_equal(read_scores(d).S, a.S)


def test_shape_mismatch_is_one_line_and_names_the_other_layout(tmp_path):
    np.save(tmp_path / "s.npy", _mat())
    with pytest.raises(InputError, match="does not match .*it matches the other --layout"):
        read_score_matrix(tmp_path / "s.npy", _ids(M, "t"), _ids(N, "e"), layout="train-by-test")
    with pytest.raises(InputError, match=r"3x10 does not match 3 test x 9 train") as e:
        read_score_matrix(tmp_path / "s.npy", _ids(M, "t"), _ids(9, "e"))
    assert "\n" not in str(e.value) and "other --layout" not in str(e.value)
    np.save(tmp_path / "v.npy", np.zeros(4))
    with pytest.raises(InputError, match="2-D"):
        read_score_matrix(tmp_path / "v.npy", ["a"], ["b"])
    bad = _mat()
    bad[0, 1] = np.nan
    np.save(tmp_path / "n.npy", bad)
    with pytest.raises(InputError, match="non-finite"):
        read_score_matrix(tmp_path / "n.npy", _ids(M, "t"), _ids(N, "e"))
    with pytest.raises(UsageError):
        read_score_matrix(tmp_path / "s.npy", _ids(M, "t"), _ids(N, "e"), layout="rows")


def test_id_lists(tmp_path):
    assert read_id_list(_write_ids(tmp_path / "a.txt", ["x", "", "y "])) == ["x", "y"]
    (tmp_path / "b.json").write_text(json.dumps([3, "z"]))
    assert read_id_list(tmp_path / "b.json") == ["3", "z"]
    with pytest.raises(InputError, match="duplicate id 'x'"):
        read_id_list(_write_ids(tmp_path / "c.txt", ["x", "y", "x"]))
    with pytest.raises(InputError, match="no ids"):
        read_id_list(_write_ids(tmp_path / "d.txt", [""]))


@pytest.mark.slow
def test_torch_and_safetensors_matrices(tmp_path):
    torch = pytest.importorskip("torch")
    S, te, ex = _mat(), _ids(M, "t"), _ids(N, "e")
    ref = read_score_matrix(_save_npy(tmp_path, S), te, ex)
    torch.save(torch.tensor(S, dtype=torch.float32), tmp_path / "s.pt")
    got = read_score_matrix(tmp_path / "s.pt", te, ex)
    np.testing.assert_allclose(got.S, ref.S, rtol=1e-6)
    torch.save({"a": torch.tensor(S), "b": torch.zeros(2)}, tmp_path / "d.pt")
    with pytest.raises(InputError, match="say which with --key"):
        read_score_matrix(tmp_path / "d.pt", te, ex)
    np.testing.assert_array_equal(read_score_matrix(tmp_path / "d.pt", te, ex, key="a").S, ref.S)
    st = pytest.importorskip("safetensors.numpy")
    st.save_file({"scores": S}, str(tmp_path / "s.safetensors"))
    np.testing.assert_array_equal(read_score_matrix(tmp_path / "s.safetensors", te, ex).S, ref.S)


def _save_npy(tmp_path, S):
    np.save(tmp_path / "ref.npy", S)
    return tmp_path / "ref.npy"


def test_missing_torch_is_a_missing_extra_error(tmp_path, monkeypatch):
    (tmp_path / "s.pt").write_bytes(b"x")
    (tmp_path / "s.safetensors").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(MissingExtraError, match=r"needs PyTorch: pip install"):
        read_score_matrix(tmp_path / "s.pt", ["a"], ["b"])
    with pytest.raises(MissingExtraError, match=r"needs the safetensors package"):
        read_score_matrix(tmp_path / "s.safetensors", ["a"], ["b"])


@pytest.fixture(scope="module")
def store_and_scores(tmp_path_factory):
    """Runs of the additive model B = -TRUE_SCALE * score in a store, and the true scores."""
    tmp = tmp_path_factory.mktemp("mx")
    S_ex = np.random.default_rng(0).normal(0.02, 0.02, (N, M))
    A = np.full((N, M), 0.5)
    rs, _, _ = make_runs(
        N, M, 6, 30, 2, method="additive", seed=1, params=(A, -TRUE_SCALE * S_ex), log_every=3
    )
    store = tmp / "store"
    RunStore(store, create=True).add_runset(rs, tags=["fit"])
    return store, rs, S_ex


def test_cli_matrix_scale_fit_recovers_the_scale(tmp_path, store_and_scores):
    store, rs, S_ex = store_and_scores
    ex, te = list(rs.example_ids), list(rs.test_ids)
    np.save(tmp_path / "scores.npy", S_ex.T)  # test-by-train
    argv = ["import-scores", str(tmp_path / "scores.npy"), "-n", "mx", "--store", str(store)]
    argv += ["--runs", "fit", "--test-ids", _write_ids(tmp_path / "te.txt", te)]
    res = CliRunner().invoke(
        app, [*argv, "--train-ids", "-", "--format", "json"], input="\n".join(ex)
    )
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["scale"] == pytest.approx(TRUE_SCALE, rel=1e-3)
    sim = load_model(RunStore(store), "mx")
    i, j = list(sim.example_ids_).index(ex[4]), list(sim.test_ids_).index(te[2])
    assert sim.B_[i, j] == pytest.approx(-row["scale"] * S_ex[4, 2])


def test_cli_matrix_usage_errors(tmp_path, store_and_scores):
    store, rs, S_ex = store_and_scores
    np.save(tmp_path / "scores.npy", S_ex.T)
    te = _write_ids(tmp_path / "te.txt", list(rs.test_ids))
    ex = _write_ids(tmp_path / "ex.txt", list(rs.example_ids))
    base = ["import-scores", str(tmp_path / "scores.npy"), "-n", "m", "--store", str(store)]
    base += ["--scale", "none"]
    r = CliRunner().invoke(app, [*base, "--test-ids", te])
    assert r.exit_code == 2 and "--train-ids" in r.output
    r = CliRunner().invoke(
        app, [*base, "--test-ids", te, "--train-ids", ex, "--layout", "train-by-test"]
    )
    assert r.exit_code == 1 and "it matches the other --layout" in r.output
    csv = simfluence_cli.write_scores(
        S_ex, rs.test_ids, rs.example_ids, tmp_path / "s.csv", layout="train-by-test"
    )
    r = CliRunner().invoke(
        app,
        [
            "import-scores",
            str(csv),
            "-n",
            "m",
            "--store",
            str(store),
            "--scale",
            "none",
            "--test-ids",
            te,
        ],
    )
    assert r.exit_code == 2 and "score matrices" in r.output


@pytest.mark.slow
def test_cli_subprocess_one_line_error(tmp_path, store_and_scores):
    store, rs, S_ex = store_and_scores
    np.save(tmp_path / "scores.npy", S_ex.T)
    te = _write_ids(tmp_path / "te.txt", list(rs.test_ids)[:2])
    ex = _write_ids(tmp_path / "ex.txt", list(rs.example_ids))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "simfluence_cli",
            "import-scores",
            str(tmp_path / "scores.npy"),
            "-n",
            "m",
            "--store",
            str(store),
            "--scale",
            "none",
            "--test-ids",
            te,
            "--train-ids",
            ex,
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0 and "does not match 2 test x 10 train" in p.stderr


def test_cli_matrix_reimport_is_keyed_on_the_id_lists(tmp_path, store_and_scores):
    store, rs, S_ex = store_and_scores
    np.save(tmp_path / "scores.npy", S_ex.T)
    te = _write_ids(tmp_path / "te.txt", list(rs.test_ids))
    ex = list(rs.example_ids)
    argv = ["import-scores", str(tmp_path / "scores.npy"), "-n", "re", "--store", str(store)]
    argv += ["--scale", "none", "--test-ids", te, "--train-ids"]
    assert CliRunner().invoke(app, [*argv, _write_ids(tmp_path / "a.txt", ex)]).exit_code == 0
    r = CliRunner().invoke(app, [*argv, str(tmp_path / "a.txt")])
    assert r.exit_code == 0 and "up to date" in r.stderr
    # the same matrix with its training IDs in another order is another model
    swapped = ex[1:] + ex[:1]
    r = CliRunner().invoke(app, [*argv, _write_ids(tmp_path / "b.txt", swapped), "--replace"])
    assert r.exit_code == 0 and "up to date" not in r.stderr
    sim = load_model(RunStore(store), "re")
    i = list(sim.example_ids_).index(swapped[0])
    assert sim.B_[i, list(sim.test_ids_).index(rs.test_ids[0])] == pytest.approx(-S_ex[0, 0])

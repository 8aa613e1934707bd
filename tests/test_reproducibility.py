"""Same inputs, same bytes: results that must not depend on thread counts, paths or run order."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TWO_CPUS = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for a 2-thread BLAS"
)


def _run_py(code: str, **env) -> str:
    """stdout of ``python -c code`` in a fresh process with extra environment variables."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    out = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True
    )
    return out.stdout


SCALE_FIT = """
import numpy as np
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.external_scores import fit_scale
runs, A, B = make_runs(60, 50, 6, 400, 4, seed=3)
S = np.random.default_rng(0).normal(size=(len(runs.example_ids), len(runs.test_ids)))
res = fit_scale(S, runs.example_ids, runs.test_ids, runs)
print(repr(res["scale"]), repr(res["r2"]))
"""


@TWO_CPUS
def test_score_scale_does_not_depend_on_blas_threads():
    """`import-scores --scale fit`: one BLAS thread or two give the same scale to the bit (the
    sums over > 10,000 observations per run were BLAS dot products, split across threads)."""
    one = _run_py(SCALE_FIT, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    two = _run_py(SCALE_FIT, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    assert one == two


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A store with runs tagged fit / held and a fitted linear model named 'lin'."""
    from simfluence_cli import RunStore, Simulator
    from simfluence_cli.io.synthetic import make_runs

    runs = make_runs(8, 3, 6, 20, 2, seed=1, noise=0.01)[0]
    path = tmp_path_factory.mktemp("repro") / "store"
    store = RunStore(path, create=True)
    store.add_runset(runs.subset(runs.run_ids[:4]), tags=["fit"])
    store.add_runset(runs.subset(runs.run_ids[4:]), tags=["held"])
    store.models.fit("lin", Simulator(l2=1.0), runs="fit")
    return path


def _cli(args, cwd):
    """stdout of the CLI run in-process from directory ``cwd``."""
    from typer.testing import CliRunner

    from simfluence_cli.cli import app

    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(app, args)
    finally:
        os.chdir(old)
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize(
    "args", [["eval", "-m", "lin", "--runs", "held", "-f", "json"], ["info", "--json"]]
)
def test_json_output_is_the_same_for_relative_and_absolute_store_paths(small_store, args):
    """The JSON documents name the store by its resolved path, not as typed."""
    absolute = _cli([*args, "--store", str(small_store)], cwd=small_store.parent.parent)
    relative = _cli([*args, "--store", "store"], cwd=small_store.parent)
    dotted = _cli([*args, "--store", "../../store"], cwd=small_store / "models")
    assert absolute == relative == dotted
    assert json.loads(absolute)["store"] == str(small_store.resolve())


def test_planned_curricula_record_their_seed(tmp_path):
    """Each file `plan` writes says in its header line which --seed produced it, and the same
    seed gives the same bytes."""
    args = ["plan", "--pool", "a,b,c,d,e,f", "--steps", "4", "--batch-size", "2", "-n", "3"]
    seven = _cli([*args, "--seed", "7"], cwd=tmp_path)
    heads = [line for line in seven.splitlines() if line.startswith("#")]
    assert len(heads) == 3 and all(h.endswith("; seed 7") for h in heads)
    assert _cli([*args, "--seed", "7"], cwd=tmp_path) == seven
    assert _cli([*args, "--seed", "8"], cwd=tmp_path) != seven


@pytest.mark.parametrize("ext", ["svg", "pdf", "png"])
def test_plot_files_are_the_same_bytes_when_drawn_again(small_store, tmp_path, ext):
    """`plot -o` writes no creation date and no random SVG element ids."""
    pytest.importorskip("matplotlib")
    import time

    args = ["plot", "--store", str(small_store), "-m", "lin", "--run", "syn-004"]
    _cli([*args, "-o", str(tmp_path / f"a.{ext}")], cwd=tmp_path)
    time.sleep(1.1)  # a recorded date would now differ in its seconds
    _cli([*args, "-o", str(tmp_path / f"b.{ext}")], cwd=tmp_path)
    assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()


def test_import_scores_identifies_the_score_file_by_content_not_path(small_store, tmp_path):
    """The same score file given by another path (relative, copied) is the same import: "up to
    date", not a different configuration; a model whose config still names the path (older
    manifests) compares the same way."""
    import numpy as np
    import pandas as pd

    from simfluence_cli import RunStore

    store = RunStore(small_store)
    runs = store.load("fit")
    rng = np.random.default_rng(0)
    rows = [(t, e, float(rng.normal())) for t in runs.test_ids for e in runs.example_ids]
    (tmp_path / "a").mkdir()
    pd.DataFrame(rows, columns=["test_id", "example_id", "score"]).to_csv(
        tmp_path / "a" / "scores.csv", index=False
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "copy.csv").write_bytes((tmp_path / "a" / "scores.csv").read_bytes())
    args = ["import-scores", "--store", str(small_store), "--name", "tr", "--runs", "fit"]
    _cli([*args, str(tmp_path / "a" / "scores.csv")], cwd=tmp_path)
    mf = small_store / "models" / "tr" / "model.json"
    first = mf.read_bytes()
    _cli([*args, "scores.csv"], cwd=tmp_path / "a")
    _cli([*args, "copy.csv"], cwd=tmp_path / "b")
    assert mf.read_bytes() == first  # up to date: not re-imported, not refused
    man = json.loads(first)
    man["config"]["source"] = man["source"]  # as manifests before this change wrote it
    mf.write_text(json.dumps(man))
    _cli([*args, "copy.csv"], cwd=tmp_path / "b")


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    """A store with 13 test examples and linear and optimizer-aware models."""
    from simfluence_cli import RunStore, Simulator
    from simfluence_cli.io.synthetic import make_runs

    runs = make_runs(10, 13, 6, 24, 2, seed=2, noise=0.02)[0]
    store = RunStore(tmp_path_factory.mktemp("wide") / "store", create=True)
    store.add_runset(runs, tags=["fit"])
    store.models.fit("lin", Simulator(l2=1.0), runs="fit")
    store.models.fit("oa", Simulator(method="optimizer-aware", l2=1.0), runs="fit")
    return store


@pytest.mark.parametrize("model", ["lin", "oa"])
@pytest.mark.parametrize("measure", ["removal", "coefficient"])
def test_mean_effect_does_not_depend_on_the_test_chunk_size(
    wide_store, monkeypatch, model, measure
):
    """`top --tests all` (docs/scaling.md: results do not depend on $SIMFLUENCE_TEST_CHUNK):
    the mean over tests is the same to the bit for chunks of 1, 4, 5 and all 13 tests."""
    import numpy as np

    from simfluence_cli import StoredModel
    from simfluence_cli.analysis.effects import mean_effect

    # small composition-table budgets: the curricula are grouped 2 by 2 for 13 test columns
    # and all together for 1, as on a large store
    monkeypatch.setattr("simfluence_cli.model.rollout.REMOVAL_BUDGET", 100_000)
    monkeypatch.setattr("simfluence_cli.model.oa_removal.OA_REMOVAL_BUDGET", 300_000)
    runs = wide_store.load("fit")
    values = {}
    for size in ("1", "4", "5", "13"):
        monkeypatch.setenv("SIMFLUENCE_TEST_CHUNK", size)
        values[size] = mean_effect(StoredModel(wide_store, model), measure, runs=runs)
    for size in ("1", "4", "5"):
        np.testing.assert_array_equal(values[size], values["13"])


def test_removal_deltas_do_not_depend_on_how_curricula_are_grouped():
    """The exact removal paths work on groups of curricula x test columns sized by a memory
    budget (the number of columns sets the grouping); the per-test sums over curricula are the
    same to the bit for any grouping, for the paper's recurrence and the optimizer-aware one."""
    import numpy as np

    from simfluence_cli.model.oa_removal import oa_removal_deltas
    from simfluence_cli.model.rollout import removal_deltas

    rng = np.random.default_rng(5)
    R, m, C, T, b = 12, 5, 9, 40, 3
    A = rng.uniform(0.2, 0.45, (R, m))
    B = rng.normal(0, 0.05, (R, m))
    A[-1], B[-1] = 1 / b, 0.0  # neutral row
    idx = rng.integers(0, R - 1, (C, T, b))
    L0 = rng.uniform(1, 3, (C, m))
    lo, hi = np.full(m, 0.2), np.full(m, 3.5)
    cell = T.bit_length() * T * 8  # bytes per curriculum x column and table
    lin = [
        removal_deltas(A, B, idx, L0, "linear", lo, hi, R - 1, budget=4 * cell * m * c)[0]
        for c in (1, 2, 4, C)
    ]
    a, rho, drift = A - 1 / b, np.full(m, 0.3), rng.normal(0, 0.01, (T, m))
    w = np.full((C, T), 0.5)
    oa = [
        oa_removal_deltas(
            a, B, rho, drift, w, idx, L0, "log", lo, hi, R - 1, budget=6 * cell * m * c
        )[0]
        for c in (1, 2, 4, C)
    ]
    for got in (lin, oa):
        assert np.abs(got[-1]).max() > 0
        for d in got[:-1]:
            np.testing.assert_array_equal(d, got[-1])


def test_parquet_outputs_are_the_same_bytes_with_source_date_epoch(small_store, tmp_path):
    """$SOURCE_DATE_EPOCH fixes the provenance's created_at, so a Parquet output written twice is
    the same bytes; without it created_at is the time of writing; a bad value is one usage line."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from simfluence_cli.cli import app

    cur = tmp_path / "cur.txt"
    cur.write_text("e0 e1\ne2 e3\n")

    def write(name, **env):
        out = tmp_path / name
        args = ["simulate", str(cur), "--store", str(small_store), "-m", "lin", "-o", str(out)]
        res = CliRunner().invoke(app, args, env=env)
        return res, out

    r1, a = write("a.parquet", SOURCE_DATE_EPOCH="1700000000")
    first = a.read_bytes()
    r2, _ = write("a.parquet", SOURCE_DATE_EPOCH="1700000000")
    assert r1.exit_code == r2.exit_code == 0, r1.output
    assert a.read_bytes() == first
    prov = json.loads(pq.read_schema(a).metadata[b"simfluence.provenance"])
    assert prov["created_at"] == "2023-11-14T22:13:20+00:00"
    res, c = write("c.parquet", SOURCE_DATE_EPOCH="")
    assert res.exit_code == 0, res.output
    stamp = json.loads(pq.read_schema(c).metadata[b"simfluence.provenance"])["created_at"]
    assert stamp.startswith("20") and stamp != prov["created_at"]
    res, _ = write("d.parquet", SOURCE_DATE_EPOCH="yesterday")
    assert res.exit_code == 2 and "SOURCE_DATE_EPOCH must be Unix seconds" in res.stderr

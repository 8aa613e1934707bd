"""Data-shape trap: batch sizes that vary within or across runs (a DataLoader's short last
batch) make ingest, fit and simulate warn with the count, the consequence and the fix."""

import numpy as np
import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.io.run_logger import RunLogger
from simfluence_cli.model.diagnostics import batch_size_warning


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _log(path, sizes, seed):
    rng = np.random.default_rng(seed)
    with RunLogger(str(path), test_ids=["t0", "t1"]) as log:
        loss = np.array([1.0, 2.0])
        log.initial(loss)
        for k in sizes:
            loss = loss * 0.99
            log.step([f"e{i}" for i in rng.choice(6, k, replace=False)], loss)


def test_batch_size_warning_counts_and_advises():
    assert batch_size_warning([[4, 4, 4], [4, 4]]) is None
    msg = batch_size_warning([[4, 4, 2], [4, 4, 2], [4, 4, 4]])
    assert "2 of 9 steps" in msg and "usual 4" in msg and "2 of 3 run(s) vary within" in msg
    assert "drop_last=True" in msg and "simfluence fit --help" in msg and "k/4" in msg
    # the advice names the default method, which averages over the batch (bucketed batches)
    assert "batch-sum methods (linear, additive, multiplicative)" in msg
    assert "optimizer-aware method (what `simfluence fit` fits by default" in msg


@pytest.fixture
def logs(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    for r in range(3):
        _log(d / f"run{r}.jsonl", [3, 3, 3, 1], seed=r)  # a short last batch per run
    return d


def test_ingest_fit_and_simulate_warn(logs, tmp_path):
    store = tmp_path / "store"
    r = cli("ingest", logs, "--store", store)
    assert r.exit_code == 0, r.stderr
    assert "warning: batch sizes vary in the ingested runs: 3 of 12 steps" in r.stderr
    # the paper's Linear assumes one batch size (optimizer-aware models it: no warning)
    r = cli("fit", "--store", store, "--method", "linear", "--l2", "0.1", "-n", "m")
    assert r.exit_code == 0, r.stderr
    assert "batch sizes vary in the fitting runs: 3 of 12 steps" in r.stderr
    cur = tmp_path / "cur.txt"
    cur.write_text("e0 e1 e2\ne3 e4 e5\ne0\n")
    r = cli("simulate", cur, "--store", store, "-m", "m", "-f", "csv")
    assert r.exit_code == 0, r.stderr
    assert "1 of 3 steps have a batch size other than the usual 3" in r.stderr


def test_no_warning_for_constant_batches(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    for r in range(2):
        _log(d / f"run{r}.jsonl", [3, 3, 3], seed=r)
    store = tmp_path / "store"
    r = cli("ingest", d, "--store", store)
    assert r.exit_code == 0 and "batch sizes vary" not in r.stderr
    r = cli("fit", "--store", store, "--method", "linear", "--l2", "0.1", "-n", "m")
    assert r.exit_code == 0 and "batch sizes vary" not in r.stderr

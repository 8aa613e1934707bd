"""bench/lm_family.py --small: the language-model family (char GRU, AdamW, warm-up + cosine lr,
DataLoader epochs with a short last batch): determinism, logged lr, batches, held-out families,
ingest / fit / eval through the CLI."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from simfluence_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]

if "lm_family" in sys.modules:
    lm = sys.modules["lm_family"]
else:
    _spec = importlib.util.spec_from_file_location("lm_family", ROOT / "bench" / "lm_family.py")
    lm = importlib.util.module_from_spec(_spec)
    sys.modules["lm_family"] = lm  # dataclasses look the module up
    _spec.loader.exec_module(lm)

pytestmark = pytest.mark.slow  # the tiny generation takes ~4 s of CPU (plus the torch import)

CFG = lm.Config(**lm.SMALL)


def read_run(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def all_files(d: Path):
    return {
        p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    rec = lm.generate(out, CFG, log=lambda m: None)
    return out, rec


def test_small_generation_is_deterministic_and_complete(small, tmp_path):
    out, rec = small
    lm.generate(tmp_path, CFG, log=lambda m: None)
    a, b = all_files(out), all_files(tmp_path)
    assert a == b
    expected = {"config.json", "examples.csv", "tests.csv"}
    expected |= {f"fit/lm-fit-{k:03d}.jsonl.gz" for k in range(CFG.n_fit)}
    expected |= {f"heldout-random/lm-heldout-random-{k:03d}.jsonl.gz" for k in range(2)}
    expected |= {f"heldout-leave30/lm-heldout-leave30-{k:03d}.jsonl.gz" for k in range(2)}
    expected |= {f"heldout-ordered/lm-heldout-ordered-{k:03d}.jsonl.gz" for k in range(2)}
    expected |= {"heldout-leave30/removed.json", "heldout-ordered/source_order.json"}
    assert set(a) == expected
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"] == lm.asdict(CFG)
    assert cfg["pool"] == 6 * CFG.pool_per_source and cfg["tests"] == 6 * CFG.tests_per_source


def test_every_run_starts_from_the_shared_checkpoint_and_logs_every_step(small):
    out, _ = small
    step0 = None
    for p in sorted(out.rglob("*.jsonl.gz")):
        rows = read_run(p)
        assert [r["step"] for r in rows] == list(range(CFG.steps + 1))
        assert all(len(r["loss"]) == 6 * CFG.tests_per_source for r in rows)
        step0 = step0 or rows[0]["loss"]
        assert rows[0]["loss"] == step0  # one starting checkpoint
        assert rows[-1]["loss"] != step0  # and training moved the test losses


def test_lr_follows_warmup_then_cosine(small):
    out, _ = small
    rows = read_run(out / "fit" / "lm-fit-000.jsonl.gz")
    lrs = np.array([r["lr"] for r in rows[1:]])
    peak, w = CFG.peak_lr, CFG.warmup
    t = np.arange(1, CFG.steps + 1)
    np.testing.assert_allclose(lrs[:w], peak * t[:w] / w, rtol=1e-12)
    assert lrs[w - 1] == pytest.approx(peak)
    assert np.all(np.diff(lrs[w - 1 :]) < 0)  # strictly decaying after the peak
    assert lrs[-1] == pytest.approx(CFG.final_lr_frac * peak)
    mid = (w + CFG.steps) // 2  # cosine, not linear: check a middle step exactly
    cos = (1 + np.cos(np.pi * (mid - w) / (CFG.steps - w))) / 2
    assert lrs[mid - 1] == pytest.approx(peak * (CFG.final_lr_frac + (1 - CFG.final_lr_frac) * cos))


def _epochs_of(batches, n_train):
    """Split batches into epochs: an epoch ends when every training example has been seen once."""
    epochs, cur = [], []
    for b in batches:
        cur.append(b)
        if sum(len(x) for x in cur) == n_train:
            epochs.append(cur)
            cur = []
    return epochs, cur


@pytest.mark.parametrize("family", ["fit", "heldout-leave30", "heldout-ordered"])
def test_dataloader_epochs_with_a_short_last_batch(small, family):
    out, _ = small
    pool = 6 * CFG.pool_per_source
    n_train = pool - round(CFG.leave_frac * pool) if family == "heldout-leave30" else pool
    b = CFG.batch_size
    assert n_train % b  # the config must produce a short last batch
    for p in sorted((out / family).glob("*.jsonl.gz")):
        batches = [r["batch"] for r in read_run(p)[1:]]
        epochs, rest = _epochs_of(batches, n_train)
        assert len(epochs) >= 1
        for ep in epochs:
            assert [len(x) for x in ep] == [b] * (n_train // b) + [n_train % b]
            ids = [i for x in ep for i in x]
            assert len(set(ids)) == n_train  # no example twice within an epoch
        assert all(len(x) == b for x in rest)  # budget ends mid-epoch


def test_leave30_and_ordered_families(small):
    out, _ = small
    removed = json.loads((out / "heldout-leave30" / "removed.json").read_text())
    for run, ids in removed.items():
        seen = {
            i for r in read_run(out / "heldout-leave30" / f"{run}.jsonl.gz") for i in r["batch"]
        }
        assert len(ids) == round(CFG.leave_frac * 6 * CFG.pool_per_source)
        assert not seen & set(ids)
    with open(out / "examples.csv") as fh:
        source = {r["example_id"]: r["source"] for r in csv.DictReader(fh)}
    orders = json.loads((out / "heldout-ordered" / "source_order.json").read_text())
    for run, order in orders.items():
        assert sorted(order) == sorted(lm.SOURCES)
        rows = read_run(out / "heldout-ordered" / f"{run}.jsonl.gz")
        first_epoch = [source[i] for r in rows[1:] for i in r["batch"]][: 6 * CFG.pool_per_source]
        # the epoch visits the sources in the run's order, one block each
        blocks = [s for k, s in enumerate(first_epoch) if k == 0 or s != first_epoch[k - 1]]
        assert blocks == order


def test_ingest_fit_and_eval_through_the_cli(small, tmp_path):
    out, _ = small
    store = str(tmp_path / "store")
    runner = CliRunner()
    for fam in lm.FAMILIES:
        r = runner.invoke(app, ["ingest", str(out / fam), "--tag", fam, "--store", store])
        assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["fit", "--store", store, "--runs", "fit", "--l2", "1", "--name", "lm-linear"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "eval",
            "--store",
            store,
            "-m",
            "lm-linear",
            "--runs",
            "heldout-random",
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["runs"] == ["lm-heldout-random-000", "lm-heldout-random-001"]
    models = [x["model"] for x in res["results"]]
    assert models == ["lm-linear", "constant", "mean-trajectory"]
    assert all(np.isfinite(x["all_steps_mse"]) for x in res["results"])


def test_corpus_windows_are_printable_ascii_and_disjoint():
    pool, tests, pre, sha = lm.build_split(CFG)
    texts = [x for _, _, x in pool] + [x for _, _, x in tests] + pre
    assert all(len(x) == CFG.seq_len + 1 for x in texts)
    assert all(set(x) <= set(lm.VOCAB) for x in texts)
    assert len(set(x for _, _, x in pool) & set(x for _, _, x in tests)) == 0
    assert len(sha) == 64 and lm.build_split(CFG)[3] == sha


def test_eval_subcommand_ingests_fits_and_tabulates_every_heldout_family(small, tmp_path):
    out, _ = small
    results, shown = lm.evaluate(out, tmp_path / "store", ["additive"])
    assert list(results) == lm.HELDOUT
    for rows in results.values():
        assert [r["model"] for r in rows] == ["lm-additive", "constant", "mean-trajectory"]
    assert sum(c.startswith("simfluence ingest") for c in shown) == 4
    assert any("--method additive --l2 auto" in c for c in shown)
    md = lm.markdown(results)
    assert md.count("| lm-additive |") == 3 and "### heldout-ordered" in md


def test_noise_floor_retrains_the_random_runs_and_swapping_two_steps_moves_little(small, tmp_path):
    out, _ = small
    res = lm.noise_floor(tmp_path, CFG, runs=2, log=lambda m: None)
    assert res["runs"] == 2 and res["tests"] == len(
        read_run(next((out / "fit").glob("*.gz")))[0]["loss"]
    )
    # the unperturbed retrains are the logged held-out random runs, final losses equal
    logged = sorted((out / "heldout-random").glob("*.jsonl.gz"))[:2]
    mine = sorted((tmp_path / "base").glob("*.jsonl.gz"))
    assert [lm._final_losses(p).tolist() for p in logged] == [
        lm._final_losses(p).tolist() for p in mine
    ]
    # swapping two steps changes something, and far less than curricula differ across runs
    assert 0 < res["swap_two_steps_final_mse"] < res["across_run_variance"]
    assert res["swap_noise_variance"] == pytest.approx(res["swap_two_steps_final_mse"] / 2)

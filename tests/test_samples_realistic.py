"""sample_runs/generate.py --family momentum|adamw: realistic-loop families (optimizer, warm-up +
cosine lr logged every step, DataLoader epochs with a short last batch), determinism, ingest."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_runs"

if "sample_generate" in sys.modules:  # loaded by test_samples.py in the same session
    gen = sys.modules["sample_generate"]
else:
    _spec = importlib.util.spec_from_file_location("sample_generate", SAMPLES / "generate.py")
    gen = importlib.util.module_from_spec(_spec)
    sys.modules["sample_generate"] = gen  # dataclasses look the module up
    _spec.loader.exec_module(gen)

SUBFAMILIES = ("fit", "heldout-random", "heldout-leave30", "heldout-classordered")


def read_run(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def all_files(d: Path):
    return {
        p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
    }


# generating the tiny families and ingesting them takes seconds: not in the quick loop
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=gen.LOOP_FAMILIES)
def family(request, tmp_path_factory):
    fam = request.param
    out = tmp_path_factory.mktemp(fam)
    meta = gen.generate_family(fam, out, gen.tiny_loop_config(fam))
    return fam, out, meta


def test_tiny_family_is_deterministic_and_complete(family, tmp_path):
    fam, out, meta = family
    gen.generate_family(fam, tmp_path, gen.tiny_loop_config(fam))
    a, b = all_files(out), all_files(tmp_path)
    assert a == b
    assert set(a) == {
        f"fit/{fam}-fit-000.jsonl.gz",
        f"fit/{fam}-fit-001.jsonl.gz",
        f"heldout-random/{fam}-heldout-random-000.jsonl.gz",
        f"heldout-leave30/{fam}-heldout-leave30-000.jsonl.gz",
        "heldout-leave30/removed.json",
        f"heldout-classordered/{fam}-heldout-classordered-000.jsonl.gz",
        "heldout-classordered/class_order.json",
        "tracin_scores.csv.gz",
        "examples.csv",
        "tests.csv",
        "config.json",
    }
    cfg = json.loads(a["config.json"])
    assert cfg["family"] == fam and cfg["config"]["optimizer"] == fam
    assert cfg["runs"] == {
        "fit": 2,
        "heldout-random": 1,
        "heldout-leave30": 1,
        "heldout-classordered": 1,
    }
    # the command-line route writes the same bytes
    cli_out = tmp_path / "cli"
    args = [
        "--family",
        fam,
        "--out",
        str(cli_out),
        "-q",
        "--pool",
        "40",
        "--tests",
        "10",
        "--hidden",
        "8",
        "--pretrain-steps",
        "20",
        "--steps",
        "30",
        "--batch-size",
        "6",
        "--warmup-steps",
        "5",
        "--n-fit",
        "2",
        "--n-random",
        "1",
        "--n-leave30",
        "1",
        "--n-classordered",
        "1",
    ]
    assert gen.main(args) == 0
    assert all_files(cli_out) == a


def test_lr_is_logged_and_follows_warmup_then_cosine(family):
    fam, out, _ = family
    cfg = gen.tiny_loop_config(fam)
    rows = read_run(out / "fit" / f"{fam}-fit-000.jsonl.gz")
    assert "lr" not in rows[0] and rows[0]["optimizer"].startswith(
        "SGD(momentum=0.9" if fam == "momentum" else "AdamW(betas=(0.9, 0.999)"
    )
    lrs = np.array([r["lr"] for r in rows[1:]])
    assert len(lrs) == cfg.steps == 30
    np.testing.assert_allclose(lrs, gen.lr_schedule(cfg), rtol=0, atol=0)
    w, peak = cfg.warmup_steps, cfg.lr
    np.testing.assert_allclose(lrs[:w], peak * np.arange(1, w + 1) / w)  # linear warm-up
    assert lrs[w - 1] == pytest.approx(peak) and lrs.max() == pytest.approx(peak)
    assert np.all(np.diff(lrs[w - 1 :]) < 0)  # then decays
    t = np.arange(w + 1, cfg.steps + 1)
    cos = peak * (0.1 + 0.9 * 0.5 * (1 + np.cos(math.pi * (t - w) / (cfg.steps - w))))
    np.testing.assert_allclose(lrs[w:], cos, rtol=1e-12)
    assert lrs[-1] == pytest.approx(0.1 * peak)
    # every run of the family, held-out ones too, logs the same schedule
    for path in out.rglob("*.jsonl.gz"):
        assert [r["lr"] for r in read_run(path)[1:]] == lrs.tolist()


def test_epochs_end_in_a_short_batch(family):
    fam, out, _ = family
    labels = {r["example_id"]: int(r["label"]) for r in csv.DictReader(open(out / "examples.csv"))}
    pool = set(labels)
    removed = json.loads((out / "heldout-leave30" / "removed.json").read_text())
    order = json.loads((out / "heldout-classordered" / "class_order.json").read_text())
    for path in out.rglob("*.jsonl.gz"):
        run = path.name.removesuffix(".jsonl.gz")
        members = pool - set(removed.get(run, []))
        n = len(members)
        assert n % 6 != 0  # 40 and 28 examples, batches of 6
        batches = [r["batch"] for r in read_run(path)[1:]]
        per_epoch = math.ceil(n / 6)
        sizes = [len(b) for b in batches]
        assert sizes == [6 if (i + 1) % per_epoch else n % 6 for i in range(len(batches))]
        assert n % 6 in sizes  # the short last batch occurs
        for e in range(len(batches) // per_epoch):  # every full epoch = the members once
            epoch = [x for b in batches[e * per_epoch : (e + 1) * per_epoch] for x in b]
            assert sorted(epoch) == sorted(members)
            if run in order:  # class-ordered: classes in the recorded order
                rank = {c: i for i, c in enumerate(order[run])}
                ranks = [rank[labels[x]] for x in epoch]
                assert ranks == sorted(ranks)
        if run in removed:
            assert len(removed[run]) == 12
    runs = {p.name: [r["batch"] for r in read_run(p)[1:]] for p in out.rglob("*.jsonl.gz")}
    assert runs[f"{fam}-fit-000.jsonl.gz"] != runs[f"{fam}-fit-001.jsonl.gz"]


def test_loader_curriculum_full_size_has_short_batches():
    cfg = gen.loop_config("adamw")
    rng = np.random.default_rng(0)
    b = gen.loader_curriculum(rng, np.arange(cfg.pool), cfg)
    assert len(b) == cfg.steps == 250
    assert [len(x) for x in b[:38]] == [8] * 37 + [4]  # 300 = 37 * 8 + 4
    assert sorted(x for y in b[:38] for x in y) == list(range(300))
    assert (
        len(gen.loader_curriculum(rng, np.arange(210), cfg)[26]) == 2
    )  # leave-30%: 210 = 26 * 8 + 2


def test_optimizers_match_their_update_rules():
    """One hand-computed step of each optimizer (PyTorch conventions)."""
    p = {"w": np.array([1.0, -2.0])}
    g1, g2 = {"w": np.array([0.5, 0.25])}, {"w": np.array([-1.0, 2.0])}
    cfg = gen.loop_config("momentum", weight_decay=0.0)
    opt = gen.MomentumSGD(cfg)
    opt.step(p, g1, 0.1)
    np.testing.assert_allclose(p["w"], [1.0 - 0.05, -2.0 - 0.025])
    opt.step(p, g2, 0.2)  # buf = 0.9 g1 + g2
    np.testing.assert_allclose(p["w"], [0.95 - 0.2 * (0.45 - 1.0), -2.025 - 0.2 * (0.225 + 2.0)])
    cfg = gen.loop_config("adamw", weight_decay=0.1)
    p = {"w": np.array([1.0, -2.0])}
    gen.AdamW(cfg).step(p, g1, 0.01)  # first step: m_hat/sqrt(v_hat) = sign(g)
    np.testing.assert_allclose(
        p["w"], [1.0 * (1 - 0.001) - 0.01, -2.0 * (1 - 0.001) - 0.01], rtol=1e-7
    )


def test_training_is_real_and_tracin_file_matches(family):
    fam, out, meta = family
    cfg = gen.tiny_loop_config(fam)
    rows = read_run(out / "fit" / f"{fam}-fit-000.jsonl.gz")
    first, last = np.mean(list(rows[0]["loss"].values())), np.mean(list(rows[-1]["loss"].values()))
    assert last < first and meta["stats"]["initial_mean_test_loss"] == pytest.approx(
        first, rel=1e-3
    )
    # TracIn-CP along fit-000: sum_t lr_t / batch_size * g_i(theta_{t-1}) . g_j(theta_{t-1})
    ex = gen.Experiment(cfg.base())
    batches = [[ex.index[e] for e in r["batch"]] for r in rows[1:]]
    p = {k: v.copy() for k, v in ex.checkpoint.items()}
    opt, S = gen.make_optimizer(cfg), np.zeros((cfg.tests, cfg.pool))
    for lr, b in zip(gen.lr_schedule(cfg), batches):
        S += lr / cfg.batch_size * gen.grad_dot(p, ex.Xt, ex.yt, ex.Xp, ex.yp)
        opt.step(p, gen.batch_grads(p, ex.Xp[b], ex.yp[b]), lr)
    with gzip.open(out / "tracin_scores.csv.gz", "rt") as fh:
        got = np.array([float(r["score"]) for r in csv.DictReader(fh)]).reshape(cfg.tests, cfg.pool)
    np.testing.assert_allclose(got, S, rtol=1e-3, atol=1e-12)


def test_batch_grads_match_sgd_step():
    ex = gen.Experiment(gen.tiny_loop_config("momentum").base())
    b = [0, 3, 7]
    p, q = ({k: v.copy() for k, v in ex.checkpoint.items()} for _ in range(2))
    gen.sgd_step(p, ex.Xp[b], ex.yp[b], 0.1)
    g = gen.batch_grads(q, ex.Xp[b], ex.yp[b])
    for k in q:
        np.testing.assert_allclose(p[k], q[k] - 0.1 * g[k], rtol=1e-12, atol=1e-15)


def test_loss_every_keeps_lr_and_batches_every_step(tmp_path):
    cfg = gen.tiny_loop_config(
        "adamw", loss_every=7, n_random=0, n_leave30=0, n_classordered=0, n_fit=1
    )
    gen.generate_family("adamw", tmp_path, cfg)
    rows = read_run(tmp_path / "fit" / "adamw-fit-000.jsonl.gz")
    assert [r["step"] for r in rows if "loss" in r] == [0, 7, 14, 21, 28, 30]
    assert all("lr" in r and r["batch"] for r in rows[1:])


def test_ingest_of_a_family_succeeds(family, tmp_path):
    fam, out, _ = family
    runner = CliRunner()
    store = tmp_path / "store"
    for sub in SUBFAMILIES:
        r = runner.invoke(
            app, ["ingest", str(out / sub), "--tag", f"{fam}-{sub}", "--store", str(store)]
        )
        assert r.exit_code == 0, r.output
    info = runner.invoke(app, ["info", "--store", str(store), "--json"])
    assert info.exit_code == 0, info.output
    d = json.loads(info.stdout)
    occurrences = sum(len(r["batch"]) for p in out.rglob("*.jsonl.gz") for r in read_run(p))
    assert d["runs"] == 5 and d["loss_rows"] == 5 * 31 * 10 and d["curriculum_rows"] == occurrences
    cur = runner.invoke(app, ["curriculum", f"{fam}-fit-000", "--store", str(store)])
    assert cur.exit_code == 0, cur.output
    rows = read_run(out / "fit" / f"{fam}-fit-000.jsonl.gz")
    assert [
        line.split() for line in cur.stdout.splitlines() if line and not line.startswith("#")
    ] == [r["batch"] for r in rows[1:]]


def test_bad_family_and_config():
    with pytest.raises(SystemExit):
        gen.main(["--family", "adam"])
    with pytest.raises(gen.InputError, match="unknown family"):
        gen.loop_config("rmsprop")
    with pytest.raises(gen.InputError, match="not 'adamw'"):
        gen.generate_family("adamw", Path("/nonexistent"), gen.tiny_loop_config("momentum"))

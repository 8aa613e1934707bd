"""sample_runs/generate.py: determinism, encoding A, curricula, TracIn convention, train-curriculum."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_runs"

_spec = importlib.util.spec_from_file_location("sample_generate", SAMPLES / "generate.py")
gen = importlib.util.module_from_spec(_spec)
sys.modules["sample_generate"] = gen  # dataclasses look the module up
_spec.loader.exec_module(gen)

TINY = dict(
    pool=40,
    tests=10,
    hidden=8,
    pretrain_steps=20,
    steps=20,
    n_fit=2,
    n_random=1,
    n_leave30=1,
    n_classordered=1,
)
TINY_ARGS = [
    "--pool",
    "40",
    "--tests",
    "10",
    "--hidden",
    "8",
    "--pretrain-steps",
    "20",
    "--steps",
    "20",
]
FAMILY_ARGS = ["--n-fit", "2", "--n-random", "1", "--n-leave30", "1", "--n-classordered", "1"]


def read_run(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def all_files(d: Path):
    return {
        p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert gen.main(["--out", str(out), "-q", *TINY_ARGS, *FAMILY_ARGS]) == 0
    return out


@pytest.mark.slow
def test_generation_is_deterministic(tiny, tmp_path):
    assert gen.main(["--out", str(tmp_path), "-q", *TINY_ARGS, *FAMILY_ARGS]) == 0
    a, b = all_files(tiny), all_files(tmp_path)
    assert a.keys() == b.keys() and a == b
    assert {
        "fit/fit-000.jsonl.gz",
        "fit/fit-001.jsonl.gz",
        "heldout-random/heldout-random-000.jsonl.gz",
        "heldout-leave30/heldout-leave30-000.jsonl.gz",
        "heldout-leave30/removed.json",
        "heldout-classordered/heldout-classordered-000.jsonl.gz",
        "heldout-classordered/class_order.json",
        "tracin_scores.csv.gz",
        "examples.csv",
        "tests.csv",
        "config.json",
    } == set(a)


def test_runs_are_encoding_a(tiny):
    tests = [r["test_id"] for r in csv.DictReader(open(tiny / "tests.csv"))]
    examples = {r["example_id"] for r in csv.DictReader(open(tiny / "examples.csv"))}
    assert tests == [f"t{j:03d}" for j in range(10)] and len(examples) == 40
    for path in tiny.rglob("*.jsonl.gz"):
        rows = read_run(path)
        assert [r["step"] for r in rows] == list(range(21))
        assert rows[0]["batch"] == []
        first = list(rows[0]["loss"])
        for r in rows:
            assert set(r) == {"step", "batch", "loss"}
            assert list(r["loss"]) == tests == first
            assert all(np.isfinite(v) and v >= 0 for v in r["loss"].values())
        for r in rows[1:]:
            assert len(r["batch"]) == 4 and len(set(r["batch"])) == 4
            assert set(r["batch"]) <= examples
        # every run starts from the same checkpoint
        assert rows[0]["loss"] == read_run(tiny / "fit" / "fit-000.jsonl.gz")[0]["loss"]


def batches_of(path):
    return [r["batch"] for r in read_run(path)[1:]]


def test_curriculum_families(tiny):
    labels = {r["example_id"]: int(r["label"]) for r in csv.DictReader(open(tiny / "examples.csv"))}
    pool = set(labels)
    # random runs: each epoch (10 steps of 4 = the pool of 40) is a permutation of the pool
    for path in [*tiny.glob("fit/*.jsonl.gz"), *tiny.glob("heldout-random/*.jsonl.gz")]:
        flat = [e for b in batches_of(path) for e in b]
        assert sorted(flat[:40]) == sorted(pool) and sorted(flat[40:80]) == sorted(pool)
    assert batches_of(tiny / "fit/fit-000.jsonl.gz") != batches_of(tiny / "fit/fit-001.jsonl.gz")
    # leave-30%: the recorded removed IDs never appear, the other 28 appear evenly
    removed = json.loads((tiny / "heldout-leave30/removed.json").read_text())
    gone = set(removed["heldout-leave30-000"])
    assert len(gone) == 12 and gone <= pool
    flat = [e for b in batches_of(tiny / "heldout-leave30/heldout-leave30-000.jsonl.gz") for e in b]
    assert not gone & set(flat) and set(flat) == pool - gone
    counts = np.unique(flat, return_counts=True)[1]
    assert counts.max() - counts.min() <= 1
    # class-ordered: within each epoch the labels follow the recorded class order
    order = json.loads((tiny / "heldout-classordered/class_order.json").read_text())[
        "heldout-classordered-000"
    ]
    rank = {c: i for i, c in enumerate(order)}
    flat = [
        e
        for b in batches_of(tiny / "heldout-classordered/heldout-classordered-000.jsonl.gz")
        for e in b
    ]
    for epoch in (flat[:40], flat[40:80]):
        ranks = [rank[labels[e]] for e in epoch]
        assert ranks == sorted(ranks) and sorted(epoch) == sorted(pool)


def test_chunk_never_repeats_an_example_within_a_batch():
    stream = [0, 1, 2, 3, 4, 5, 4, 5, 1, 0, 2, 3, 6, 7]
    batches = gen.chunk(stream, 4, 3)
    assert all(len(set(b)) == 4 for b in batches)
    assert batches[0] == [0, 1, 2, 3]


def test_tracin_scores_file_matches_model(tiny):
    ex = gen.Experiment(gen.Config(**TINY))
    S = ex.tracin()
    with gzip.open(tiny / "tracin_scores.csv.gz", "rt") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 * 40 and list(rows[0]) == ["test_id", "example_id", "score"]
    got = np.array([float(r["score"]) for r in rows]).reshape(10, 40)
    np.testing.assert_allclose(got, S, rtol=1e-3, atol=1e-12)
    assert rows[1]["test_id"] == "t000" and rows[1]["example_id"] == "e001"


def explicit_grads(p, X, y):
    """Per-example gradients, one example at a time (the slow, obvious way)."""
    out = []
    for x, c in zip(X, y):
        H, dZ2, dZ1 = gen.backprop_terms(p, x[None], np.array([c]))
        out.append(
            np.concatenate(
                [np.outer(x, dZ1[0]).ravel(), dZ1[0], np.outer(H[0], dZ2[0]).ravel(), dZ2[0]]
            )
        )
    return np.array(out)


def test_gradients_are_right():
    ex = gen.Experiment(gen.Config(**TINY))
    p = ex.checkpoint
    Xa, ya, Xb, yb = ex.Xp[:5], ex.yp[:5], ex.Xt[:3], ex.yt[:3]
    Ga, Gb = explicit_grads(p, Xa, ya), explicit_grads(p, Xb, yb)
    np.testing.assert_allclose(gen.grad_dot(p, Xa, ya, Xb, yb), Ga @ Gb.T, rtol=1e-10, atol=1e-14)
    # the analytic gradient agrees with central finite differences of the loss
    names = ["W1", "b1", "W2", "b2"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        name = names[rng.integers(4)]
        idx = tuple(rng.integers(s) for s in p[name].shape)
        q = {k: v.copy() for k, v in p.items()}
        h = 1e-6
        q[name][idx] += h
        up = gen.per_example_loss(q, Xa[:1], ya[:1])[0]
        q[name][idx] -= 2 * h
        dn = gen.per_example_loss(q, Xa[:1], ya[:1])[0]
        offset = {"W1": 0, "b1": 64 * 8, "W2": 64 * 8 + 8, "b2": 64 * 8 + 8 + 80}[name]
        flat = np.ravel_multi_index(idx, p[name].shape)
        assert (up - dn) / (2 * h) == pytest.approx(Ga[0, offset + flat], rel=1e-5, abs=1e-8)


def test_tracin_sign_convention_first_order():
    """score_ij = lr/|B| g_i.g_j: an SGD step on batch B changes test loss j by
    -sum_{i in B} score_ij + O(lr^2); a step on example i alone (a batch of 1) by
    -|B| * score_ij + O(lr^2), |B| = the configured batch size. Positive score = helpful."""

    def check(lr):
        cfg = gen.Config(**TINY, lr=lr)
        ex = gen.Experiment(cfg)
        S = ex.tracin()  # (tests, pool)
        L0 = gen.per_example_loss(ex.checkpoint, ex.Xt, ex.yt)

        def change_after(batch):
            p = {k: v.copy() for k, v in ex.checkpoint.items()}
            gen.sgd_step(p, ex.Xp[batch], ex.yp[batch], cfg.lr)
            return gen.per_example_loss(p, ex.Xt, ex.yt) - L0

        errs = []
        for batch, pred in [
            ([0], -cfg.batch_size * S[:, 0]),
            ([23], -cfg.batch_size * S[:, 23]),
            ([1, 5, 9, 30], -S[:, [1, 5, 9, 30]].sum(axis=1)),
        ]:
            d = change_after(batch)
            assert np.abs(d - pred).max() <= 0.02 * np.abs(pred).max()
            big = np.abs(pred) > 0.1 * np.abs(pred).max()
            assert np.array_equal(
                np.sign(d[big]), np.sign(pred[big])
            )  # decrease <=> positive score
            errs.append(np.abs(d - pred).max())
        return np.array(errs)

    e3, e4 = check(1e-3), check(1e-4)
    # the remainder is second order: 10x smaller lr -> ~100x smaller error
    assert np.all(e4 < e3 / 30)


def test_train_curriculum_follows_a_given_curriculum(tmp_path):
    cur = tmp_path / "cur.txt"
    cur.write_text(
        "# a hand-made curriculum\ne003 e001\n\ne010 e011 e012 e013  # trailing comment\ne003\n"
    )
    out = tmp_path / "out" / "mine.jsonl.gz"
    assert gen.main(["train-curriculum", str(cur), "-o", str(out), *TINY_ARGS]) == 0
    rows = read_run(out)
    assert [r["batch"] for r in rows] == [
        [],
        ["e003", "e001"],
        ["e010", "e011", "e012", "e013"],
        ["e003"],
    ]
    # same numbers as training those batches directly from the shared checkpoint
    ex = gen.Experiment(gen.Config(**TINY))
    L = ex.train([[3, 1], [10, 11, 12, 13], [3]], tmp_path / "direct.jsonl.gz")
    assert (tmp_path / "direct.jsonl.gz").read_bytes() == out.read_bytes()
    assert rows[3]["loss"]["t000"] == pytest.approx(L[3, 0], rel=1e-3)


def test_train_curriculum_reproduces_a_family_run(tiny, tmp_path):
    src = tiny / "fit" / "fit-001.jsonl.gz"
    cur = tmp_path / "fit-001.txt"
    cur.write_text("".join(" ".join(b) + "\n" for b in batches_of(src)))
    out = tmp_path / "fit-001.jsonl.gz"
    assert gen.main(["train-curriculum", str(cur), "-o", str(out), *TINY_ARGS]) == 0
    assert out.read_bytes() == src.read_bytes()


def test_train_curriculum_unknown_id(tmp_path, capsys):
    cur = tmp_path / "cur.txt"
    cur.write_text("e001 e002\ne001 nope\n")
    out = tmp_path / "o.jsonl.gz"
    assert gen.main(["train-curriculum", str(cur), "-o", str(out), *TINY_ARGS]) == 1
    err = capsys.readouterr().err
    assert f"{cur}:2:" in err and "unknown example id 'nope'" in err and "e039" in err
    assert not out.exists()


def test_bundled_sample_runs_are_complete():
    """The committed data: families, sizes and the shared checkpoint, as README documents."""
    meta = json.loads((SAMPLES / "config.json").read_text())
    cfg = meta["config"]
    assert meta["runs"] == {
        "fit": 48,
        "heldout-random": 16,
        "heldout-leave30": 16,
        "heldout-classordered": 8,
    }
    for fam, n in meta["runs"].items():
        assert len(list((SAMPLES / fam).glob(f"{fam}-*.jsonl.gz"))) == n
    rows = read_run(SAMPLES / "heldout-leave30" / "heldout-leave30-000.jsonl.gz")
    assert len(rows) == cfg["steps"] + 1 and len(rows[0]["loss"]) == cfg["tests"]
    assert all(len(r["batch"]) == cfg["batch_size"] for r in rows[1:])
    removed = json.loads((SAMPLES / "heldout-leave30" / "removed.json").read_text())
    assert len(removed) == 16 and len(removed["heldout-leave30-000"]) == round(0.3 * cfg["pool"])
    assert not set(removed["heldout-leave30-000"]) & {e for r in rows for e in r["batch"]}
    with gzip.open(SAMPLES / "tracin_scores.csv.gz", "rt") as fh:
        n_scores = sum(1 for _ in fh) - 1
    assert n_scores == cfg["pool"] * cfg["tests"]
    generated = {
        SAMPLES / fam for fam in gen.LOOP_FAMILIES
    }  # git-ignored, made by make samples-realistic
    size = sum(
        p.stat().st_size
        for p in SAMPLES.rglob("*")
        if p.is_file() and not generated & set(p.parents)
    )
    assert size < 12e6

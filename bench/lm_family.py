#!/usr/bin/env python
"""A language-model run family: a tiny character-level GRU fine-tuned with AdamW, logged for simfluence.

Nothing is downloaded. The text is the docstrings of six pure-Python standard-library modules
(``argparse``, ``logging``, ``statistics``, ``threading``, ``difflib``, ``typing``; the *source*
of a sequence is its module). Each module's docstrings are joined, whitespace is collapsed, and the
text is cut into non-overlapping windows of ``seq_len + 1`` characters (non-ASCII characters become
``?``; vocabulary = the 95 printable ASCII characters). Per source, windows are dealt at random to

- the **pool** of training examples ``e000``.. (``pool_per_source`` each, 300 in all),
- the **tests** ``t000``.. (``tests_per_source`` each, 72 in all),
- **pretraining** (``pretrain_per_source`` each).

Model: embedding 32 -> GRU(hidden 96) -> linear to 95 logits (~48k parameters), float32, CPU,
one thread, ``torch.use_deterministic_algorithms(True)``. A test example's loss = the mean token
cross-entropy (nats) over its ``seq_len`` next-character predictions.

**Shared starting checkpoint**: ``pretrain_steps`` AdamW steps (lr 3e-3, batch 32) on the
pretraining windows, deliberately not converged.

**Fine-tuning runs** (every run starts from that checkpoint with a fresh optimizer), trained and
logged with :func:`simfluence_cli.integrations.pytorch.log_runs`:
``torch.optim.AdamW(lr=peak, betas=(0.9, 0.999), weight_decay=0.01)``; schedule over the
``steps`` optimizer steps ``t = 1..steps``: linear warm-up ``lr_t = peak * t / warmup`` for
``t <= warmup``, then cosine decay to ``0.1 * peak`` at the last step; batches = DataLoader
epochs (a fresh seeded permutation of the run's training examples each epoch, cut into batches of
``batch_size``, the last batch of every epoch shorter: 300 = 37 x 8 + 4), under the step budget.
The learning rate of every step is logged (``"lr"``), and the loss of every test example after
every step (step 0 = the checkpoint).

Families (directories under ``--out``; run ids prefixed ``lm-`` so they can share a store with
other families):

============================  ======  ==============================================================
``fit/``                      48      random epochs (curriculum seed ``[seed, 1, k]``)
``heldout-random/``           16      the same scheme, other seeds (``[seed, 2, k]``)
``heldout-leave30/``          16      a random 30% of the pool removed for the whole run
                                      (``removed.json``); 210 = 26 x 8 + 2
``heldout-ordered/``          8       ordered by source: a random order of the 6 sources fixed per
                                      run (``source_order.json``); every epoch goes through the
                                      sources in that order, shuffled within a source
============================  ======  ==============================================================

Usage::

    .venv/bin/python bench/lm_family.py                        # -> bench/lm_runs/ (minutes)
    .venv/bin/python bench/lm_family.py --small --out /tmp/lm  # test size, seconds
    .venv/bin/python bench/lm_family.py eval --runs-dir bench/lm_runs --store /tmp/lm-store \\
        --methods linear                                       # ingest, fit, eval; markdown tables

Reruns on the same machine, Python and torch give the same bytes. The text depends on the
Python version's docstrings; ``config.json`` records the Python version and the corpus sha256.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import inspect
import json
import math
import platform
import re
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("argparse", "logging", "statistics", "threading", "difflib", "typing")
VOCAB = [chr(c) for c in range(32, 127)]  # 95 printable ASCII characters
FAMILIES = {  # name -> (curriculum family code, config field with the number of runs)
    "fit": (1, "n_fit"),
    "heldout-random": (2, "n_random"),
    "heldout-leave30": (3, "n_leave30"),
    "heldout-ordered": (4, "n_ordered"),
}
HELDOUT = ["heldout-random", "heldout-leave30", "heldout-ordered"]
INT_KNOBS = (
    "seed",
    "steps",
    "pretrain_steps",
    "n_fit",
    "n_random",
    "n_leave30",
    "n_ordered",
    "hidden",
)


@dataclass(frozen=True)
class Config:
    seed: int = 0
    seq_len: int = 64
    pool_per_source: int = 50
    tests_per_source: int = 12
    pretrain_per_source: int = 100
    embed: int = 32
    hidden: int = 96
    pretrain_steps: int = 200
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    steps: int = 150
    batch_size: int = 8
    peak_lr: float = 1e-2
    warmup: int = 15
    final_lr_frac: float = 0.1
    weight_decay: float = 0.01
    leave_frac: float = 0.3
    n_fit: int = 48
    n_random: int = 16
    n_leave30: int = 16
    n_ordered: int = 8
    precision: int = 5


SMALL = dict(
    seq_len=24,
    pool_per_source=5,
    tests_per_source=2,
    pretrain_per_source=10,
    embed=8,
    hidden=16,
    pretrain_steps=10,
    pretrain_batch=8,
    steps=12,
    batch_size=4,
    warmup=3,
    n_fit=3,
    n_random=2,
    n_leave30=2,
    n_ordered=2,
)


# ---------------------------------------------------------------------------------------- text
def _module_docstrings(name: str) -> list[str]:
    """Docstrings of a module, its functions, classes and their methods (sorted by name)."""
    mod = importlib.import_module(name)
    out: list[str] = []
    seen: set[int] = set()

    def add(obj) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            doc = inspect.getdoc(obj)
        if doc and id(obj) not in seen:
            seen.add(id(obj))
            out.append(doc)

    add(mod)
    with warnings.catch_warnings():  # typing.io / typing.re warn when their docstring is read
        warnings.simplefilter("ignore", DeprecationWarning)
        members = sorted(vars(mod).items())
    for _, obj in members:
        if getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj):
            add(obj)
            for _, meth in sorted(vars(obj).items()):
                if inspect.isfunction(meth):
                    add(meth)
        elif inspect.isfunction(obj):
            add(obj)
    return out


def source_text(name: str) -> str:
    """One source's text: its docstrings joined, whitespace collapsed, non-ASCII -> '?'."""
    text = " ".join(_module_docstrings(name))
    text = re.sub(r"\s+", " ", text).strip()
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def build_split(cfg: Config):
    """Windows of ``seq_len + 1`` characters per source, dealt to pool / tests / pretraining.

    Returns (pool, tests, pretrain, corpus_sha256); pool and tests are lists of
    (id, source, text), pretrain a list of texts."""
    need = cfg.pool_per_source + cfg.tests_per_source + cfg.pretrain_per_source
    w = cfg.seq_len + 1
    pool, tests, pretrain = [], [], []
    digest = hashlib.sha256()
    for s, name in enumerate(SOURCES):
        text = source_text(name)
        digest.update(text.encode())
        windows = [text[i : i + w] for i in range(0, len(text) - w + 1, w)]
        if len(windows) < need:
            raise SystemExit(
                f"source {name}: {len(windows)} windows of {w} characters, need {need}"
            )
        order = np.random.default_rng([cfg.seed, 0, s]).permutation(len(windows))
        chosen = [windows[i] for i in order[:need]]
        p, t = cfg.pool_per_source, cfg.tests_per_source
        pool += [(name, x) for x in chosen[:p]]
        tests += [(name, x) for x in chosen[p : p + t]]
        pretrain += chosen[p + t : need]
    pool = [(f"e{i:03d}", src, x) for i, (src, x) in enumerate(pool)]
    tests = [(f"t{i:03d}", src, x) for i, (src, x) in enumerate(tests)]
    return pool, tests, pretrain, digest.hexdigest()


# ---------------------------------------------------------------------------------------- torch
def _torch():
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return torch


def encode(texts):
    torch = _torch()
    idx = {c: i for i, c in enumerate(VOCAB)}
    return torch.tensor([[idx[c] for c in x] for x in texts], dtype=torch.long)


def make_model(cfg: Config):
    torch = _torch()
    nn = torch.nn

    class CharGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(len(VOCAB), cfg.embed)
            self.gru = nn.GRU(cfg.embed, cfg.hidden, batch_first=True)
            self.head = nn.Linear(cfg.hidden, len(VOCAB))

        def forward(self, x):  # (B, L) -> (B, L, V)
            h, _ = self.gru(self.embed(x))
            return self.head(h)

    torch.manual_seed(cfg.seed)
    return CharGRU()


def seq_loss(logits, target):
    """Per-sequence mean token cross-entropy: (B, L, V), (B, L) -> (B,)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1)


def lr_factor(t: int, cfg: Config) -> float:
    """lr_t / peak for optimizer step t = 1..steps: linear warm-up, then cosine to final_lr_frac."""
    if t <= cfg.warmup:
        return t / cfg.warmup
    span = max(cfg.steps - cfg.warmup, 1)
    cos = (1 + math.cos(math.pi * (t - cfg.warmup) / span)) / 2
    return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * cos


def pretrain(model, texts, cfg: Config) -> None:
    torch = _torch()
    data = encode(texts)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=cfg.weight_decay)
    model.train()
    perm = torch.randperm(len(data), generator=g)
    pos = 0
    for _ in range(cfg.pretrain_steps):
        if pos + cfg.pretrain_batch > len(data):
            perm, pos = torch.randperm(len(data), generator=g), 0
        b = data[perm[pos : pos + cfg.pretrain_batch]]
        pos += cfg.pretrain_batch
        opt.zero_grad()
        seq_loss(model(b[:, :-1]), b[:, 1:]).mean().backward()
        opt.step()


# ------------------------------------------------------------------------------------ curricula
def _epochs(order_fn, n_steps: int, batch_size: int) -> list[list[int]]:
    """Batches of DataLoader epochs (``order_fn(epoch)`` = that epoch's index order, cut into
    batches with a short last one) until the step budget is spent."""
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < n_steps:
        order = order_fn(epoch)
        for i in range(0, len(order), batch_size):
            batches.append([int(j) for j in order[i : i + batch_size]])
            if len(batches) == n_steps:
                break
        epoch += 1
    return batches


def curricula(family: str, pool, cfg: Config):
    """Per run: (batches of pool indices, extra record: removed ids / source order / None)."""
    code, field = FAMILIES[family]
    n_pool = len(pool)
    by_source = {s: [i for i, (_, src, _) in enumerate(pool) if src == s] for s in SOURCES}
    runs = []
    for k in range(getattr(cfg, field)):
        rng = np.random.default_rng([cfg.seed, code, k])
        extra = None
        if family == "heldout-leave30":
            n_out = round(cfg.leave_frac * n_pool)
            removed = np.sort(rng.choice(n_pool, size=n_out, replace=False))
            keep = np.setdiff1d(np.arange(n_pool), removed)
            extra = [pool[i][0] for i in removed]

            def order(_, keep=keep, rng=rng):
                return keep[rng.permutation(len(keep))]
        elif family == "heldout-ordered":
            src_order = [SOURCES[i] for i in rng.permutation(len(SOURCES))]
            extra = src_order

            def order(_, src_order=src_order, rng=rng):
                return np.concatenate([rng.permutation(by_source[s]) for s in src_order]).astype(
                    int
                )
        else:

            def order(_, rng=rng):
                return rng.permutation(n_pool)

        runs.append((_epochs(order, cfg.steps, cfg.batch_size), extra))
    return runs


# ------------------------------------------------------------------------------------ generate
def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _pretrained(cfg: Config):
    """The split, the pretrained shared checkpoint and its datasets: (pool, tests, pretraining
    windows, corpus sha256, model, train dataset with example IDs, test dataset)."""
    _torch()
    from torch.utils.data import TensorDataset

    from simfluence_cli.integrations.pytorch import IdDataset

    pool, tests, pre, sha = build_split(cfg)
    model = make_model(cfg)
    pretrain(model, pre, cfg)
    xp, xt = encode([x for _, _, x in pool]), encode([x for _, _, x in tests])
    train_ds = IdDataset(TensorDataset(xp[:, :-1], xp[:, 1:]), ids=[i for i, _, _ in pool])
    return pool, tests, pre, sha, model, train_ds, TensorDataset(xt[:, :-1], xt[:, 1:])


def _fine_tuning(cfg: Config):
    """(optimizer factory, scheduler factory) of every fine-tuning run: AdamW, warm-up + cosine."""
    torch = _torch()

    def optim(params):
        return torch.optim.AdamW(
            params, lr=cfg.peak_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay
        )

    def sched(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k + 1, cfg))

    return optim, sched


def generate(
    out: Path, cfg: Config, families=tuple(FAMILIES), log=print, command: str | None = None
) -> dict:
    """Write every family under ``out``; returns the summary written to ``out/config.json``
    (plus the wall-clock ``seconds``, which the file leaves out so that reruns give the same bytes)."""
    torch = _torch()
    from simfluence_cli.integrations.pytorch import log_runs, per_example_losses

    t0 = time.perf_counter()
    pool, tests, pre, sha, model, train_ds, test_ds = _pretrained(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    test_ids = [i for i, _, _ in tests]
    l0 = per_example_losses(model, test_ds, seq_loss)
    log(f"pretrained: {n_params} parameters, mean test loss {l0.mean():.4f} nats/char")
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "examples.csv", ["example_id", "source", "text"], pool)
    _write_csv(out / "tests.csv", ["test_id", "source", "text"], tests)

    optim, sched = _fine_tuning(cfg)

    summary = {}
    for fam in families:
        t1 = time.perf_counter()
        runs = curricula(fam, pool, cfg)
        d = out / fam
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.jsonl.gz"):
            old.unlink()
        paths = log_runs(
            model,
            train_ds,
            test_ds,
            d,
            optimizer_factory=optim,
            scheduler_factory=sched,
            curricula=[b for b, _ in runs],
            loss_fn=seq_loss,
            eval_every=1,
            test_ids=test_ids,
            run_prefix=f"lm-{fam}",
            precision=cfg.precision,
        )
        extras = {p.name.removesuffix(".jsonl.gz"): e for p, (_, e) in zip(paths, runs)}
        if fam == "heldout-leave30":
            (d / "removed.json").write_text(json.dumps(extras, indent=1) + "\n")
        if fam == "heldout-ordered":
            (d / "source_order.json").write_text(json.dumps(extras, indent=1) + "\n")
        finals = [_final_mean_loss(p) for p in paths]
        summary[fam] = {
            "runs": len(paths),
            "final_mean_loss": round(float(np.mean(finals)), 4),
            "final_min": round(float(np.min(finals)), 4),
            "final_max": round(float(np.max(finals)), 4),
            "seconds": round(time.perf_counter() - t1, 1),
        }
        log(f"{fam}: {summary[fam]}")
    record = {
        "config": asdict(cfg),
        "sources": list(SOURCES),
        "corpus_sha256": sha,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "parameters": n_params,
        "pool": len(pool),
        "tests": len(tests),
        "pretrain_windows": len(pre),
        "initial_mean_test_loss": round(float(l0.mean()), 4),
        "lr": {
            "first": cfg.peak_lr * lr_factor(1, cfg),
            "peak": cfg.peak_lr,
            "last": cfg.peak_lr * lr_factor(cfg.steps, cfg),
        },
        "families": summary,
        "seconds": round(time.perf_counter() - t0, 1),
        "command": command,
    }
    record_stable = {k: v for k, v in record.items() if k not in ("seconds",)}
    record_stable["families"] = {
        f: {k: v for k, v in s.items() if k != "seconds"} for f, s in summary.items()
    }
    (out / "config.json").write_text(json.dumps(record_stable, indent=1) + "\n")
    return record


def _final_mean_loss(path: Path) -> float:
    import gzip

    with gzip.open(path, "rt") as fh:
        last = None
        for line in fh:
            if line.strip():
                last = json.loads(line)
    return float(np.mean(list(last["loss"].values())))


# ------------------------------------------------------------------------------------ evaluate
COLS = ["all_steps_mse", "final_step_mse", "final_spearman", "run_spearman"]


def _sf(args: list[str], capture: bool = False, shown: list | None = None) -> str:
    exe = str(Path(sys.executable).with_name("simfluence"))
    line = "simfluence " + " ".join(shlex.quote(a) for a in args)
    t0 = time.perf_counter()
    res = subprocess.run(
        [exe, "--quiet", *args],
        text=True,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {line}\n{res.stderr}")
    if shown is not None:
        shown.append(f"{line}   # {time.perf_counter() - t0:.1f} s")
    print(f"$ {line}", file=sys.stderr, flush=True)
    return res.stdout if capture else ""


def evaluate(
    runs_dir: Path, store: Path, methods: list[str], fit_args: dict | None = None, ingest=True
):
    """Ingest every family (tag = family name), fit each method on ``fit`` (``--l2 auto``), and
    eval against every held-out family. Returns ({family: [result rows]}, commands run)."""
    shown: list[str] = []
    fit_args = fit_args or {}
    if ingest:
        for fam in FAMILIES:
            if (runs_dir / fam).is_dir():
                _sf(
                    ["ingest", str(runs_dir / fam), "--tag", fam, "--store", str(store)],
                    shown=shown,
                )
    for m in methods:
        extra = fit_args.get(m, [])
        _sf(
            ["fit", "--store", str(store), "--runs", "fit", "--method", m, "--l2", "auto"]
            + ["--name", f"lm-{m}", "--replace", *extra],
            shown=shown,
        )
    results = {}
    for fam in HELDOUT:
        if not (runs_dir / fam).is_dir():
            continue
        args = ["eval", "--store", str(store), "--runs", fam, "--format", "json"]
        for m in methods:
            args += ["-m", f"lm-{m}"]
        results[fam] = json.loads(_sf(args, capture=True, shown=shown))["results"]
    return results, shown


def markdown(results: dict) -> str:
    lines = []
    for fam, rows in results.items():
        lines += [f"### {fam}", "", "| model | " + " | ".join(COLS) + " |"]
        lines.append("|---|" + "---|" * len(COLS))
        for r in rows:
            cells = []
            for c in COLS:
                v = r.get(c)
                cells.append("n/a" if v is None else f"{v:.4g}")
            lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- noise floor
def _final_losses(path: Path) -> np.ndarray:
    import gzip

    with gzip.open(path, "rt") as fh:
        last = None
        for line in fh:
            if line.strip():
                last = json.loads(line)
    return np.array([last["loss"][k] for k in sorted(last["loss"])], dtype=np.float64)


def noise_floor(work: Path, cfg: Config, runs: int = 8, log=print) -> dict:
    """Retrain the first ``runs`` held-out random curricula twice: as they are, and with the
    batches of two adjacent steps (a seeded position in the middle half of the run) swapped.
    The per-test final-loss differences between the two measure how far nearly identical
    curricula's real outcomes differ (the retraining noise floor), against the spread of the
    real final losses across the random runs themselves (what the mean-trajectory baseline
    pays at the final step)."""
    from simfluence_cli.integrations.pytorch import log_runs

    pool, tests, _, _, model, train_ds, test_ds = _pretrained(cfg)
    base = [b for b, _ in curricula("heldout-random", pool, cfg)][:runs]
    swapped = []
    for k, batches in enumerate(base):
        t = int(
            np.random.default_rng([cfg.seed, 9, k]).integers(cfg.steps // 4, 3 * cfg.steps // 4)
        )
        c = [list(b) for b in batches]
        c[t], c[t + 1] = c[t + 1], c[t]
        swapped.append(c)

    optim, sched = _fine_tuning(cfg)

    finals = {}
    for name, cur in (("base", base), ("swapped", swapped)):
        t0 = time.perf_counter()
        paths = log_runs(
            model,
            train_ds,
            test_ds,
            work / name,
            optimizer_factory=optim,
            scheduler_factory=sched,
            curricula=cur,
            loss_fn=seq_loss,
            eval_every=cfg.steps,
            test_ids=[i for i, _, _ in tests],
            run_prefix=f"lm-noise-{name}",
            precision=cfg.precision,
        )
        finals[name] = np.stack([_final_losses(p) for p in paths])  # runs x tests
        log(f"{name}: {len(paths)} runs in {time.perf_counter() - t0:.1f} s")
    d = finals["swapped"] - finals["base"]
    base_f = finals["base"]
    return {
        "runs": runs,
        "tests": int(base_f.shape[1]),
        # mean over runs and tests of the squared final-loss change from swapping two steps
        "swap_two_steps_final_mse": float(np.mean(d**2)),
        # half of it: the variance one run's final loss has from that perturbation alone
        "swap_noise_variance": float(np.mean(d**2) / 2),
        "swap_two_steps_mean_abs": float(np.mean(np.abs(d))),
        # variance across the random runs of each test's real final loss, averaged over tests
        "across_run_variance": float(np.mean(np.var(base_f, axis=0, ddof=1))),
        "base_equals_logged_family": None,
    }


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("generate", "eval", "noise", "-h", "--help"):
        argv = ["generate", *argv]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="train and log the families (default)")
    g.add_argument("--out", type=Path, default=ROOT / "bench" / "lm_runs")
    g.add_argument("--small", action="store_true", help="test-sized families (seconds)")
    g.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset")
    for f in INT_KNOBS:
        g.add_argument("--" + f.replace("_", "-"), type=int, default=None)
    g.add_argument("--peak-lr", type=float, default=None)
    e = sub.add_parser("eval", help="ingest, fit --l2 auto, eval against every held-out family")
    e.add_argument("--runs-dir", type=Path, default=ROOT / "bench" / "lm_runs")
    e.add_argument("--store", type=Path, required=True)
    e.add_argument("--methods", default="linear", help="comma-separated fit methods")
    e.add_argument("--no-ingest", action="store_true", help="the store already holds the runs")
    e.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    n = sub.add_parser("noise", help="retraining noise floor: random runs with two steps swapped")
    n.add_argument("--work", type=Path, required=True, help="directory for the retrained logs")
    n.add_argument("--runs", type=int, default=8)
    n.add_argument("--runs-dir", type=Path, default=None, help="the logged family, to check base")
    a = ap.parse_args(argv)
    if a.cmd == "noise":
        res = noise_floor(a.work, Config(), a.runs, log=lambda m: print(m, file=sys.stderr))
        if a.runs_dir is not None:
            logged = sorted((a.runs_dir / "heldout-random").glob("*.jsonl.gz"))[: a.runs]
            mine = sorted((a.work / "base").glob("*.jsonl.gz"))
            res["base_equals_logged_family"] = bool(
                len(logged) == len(mine)
                and all(
                    np.array_equal(_final_losses(x), _final_losses(y)) for x, y in zip(logged, mine)
                )
            )
        print(json.dumps(res, indent=1))
        return
    if a.cmd == "generate":
        cfg = Config(**SMALL) if a.small else Config()
        over = {f: getattr(a, f) for f in INT_KNOBS if getattr(a, f) is not None}
        if a.peak_lr is not None:
            over["peak_lr"] = a.peak_lr
        cfg = replace(cfg, **over)
        fams = [f for f in a.families.split(",") if f]
        bad = [f for f in fams if f not in FAMILIES]
        if bad:
            ap.error(f"unknown family {bad[0]!r}; choose from {', '.join(FAMILIES)}")
        cmd = "python bench/lm_family.py " + " ".join(shlex.quote(x) for x in argv[1:])
        rec = generate(
            a.out, cfg, fams, log=lambda m: print(m, file=sys.stderr, flush=True), command=cmd
        )
        print(f"wrote {a.out} in {rec['seconds']} s", file=sys.stderr)
    else:
        methods = [m for m in a.methods.split(",") if m]
        results, shown = evaluate(a.runs_dir, a.store, methods, ingest=not a.no_ingest)
        md = markdown(results)
        text = "Commands:\n\n```\n" + "\n".join(shown) + "\n```\n\n" + md
        print(text)
        if a.markdown:
            a.markdown.write_text(text)


if __name__ == "__main__":
    main()

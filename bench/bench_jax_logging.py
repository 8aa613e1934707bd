"""Cost of logging a JAX / Optax training loop every step: RunLogger vs JaxRunLogger.

    /tmp/jaxvenv/bin/python bench/bench_jax_logging.py [--repeats 5] [--hidden 128,1024]

Needs jax, optax and scikit-learn (not in the project's dev extra: install them in another venv,
docs/logging.md); without them it prints a notice and exits 0. The loop: scikit-learn's bundled
digits, an MLP 64-H-10 in plain jax, optax.inject_hyperparams(optax.adamw) with
warmup_cosine_decay_schedule, a jitted train step, per-example test losses (100 tests) by vmap
after every step, epochs over a seeded permutation of a 900-example subset (batch 32: a short last
batch of 4), 3 epochs = 87 steps per run. Modes, interleaved in every repeat:

- ``eval-only``: the test losses and the lr are computed each step and kept on the device
  (the loop's own cost; the baseline of the logging overhead),
- ``RunLogger``: simfluence_cli.RunLogger, given the device arrays (converted at each call),
- ``JaxRunLogger``: simfluence_cli.integrations.jax.JaxRunLogger (default flush_every=256).

Reported: median wall and CPU (process: all threads, XLA's included) seconds per run, and the
overhead per step against eval-only; the CPU figures move less with the machine's load. Both loggers
write the same bytes (checked). Prints markdown.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import run_facts


class _KeepOnDevice:
    """A logger that keeps what it is given (the cost of computing it, no transfer)."""

    def __init__(self, *a, **k):
        self.kept = []

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def initial(self, losses):
        self.kept.append(losses)

    def step(self, ids, losses=None, *, lr=None):
        self.kept.append((ids, losses, lr))


def make_loop(hidden: int):
    import jax
    import jax.numpy as jnp
    import optax
    from sklearn.datasets import load_digits

    from simfluence_cli.integrations.jax import learning_rate

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(123).permutation(len(X))
    tr, te = order[:1000], order[1000:1100]
    Xtr, ytr = jnp.asarray(X[tr] / 16.0, jnp.float32), jnp.asarray(y[tr])
    Xte, yte = jnp.asarray(X[te] / 16.0, jnp.float32), jnp.asarray(y[te])
    train_ids = jnp.asarray(tr, dtype=jnp.int32)
    test_ids = [f"t{i}" for i in te]
    k1, k2 = jax.random.split(jax.random.key(0))
    params0 = {
        "w1": jax.random.normal(k1, (64, hidden)) / 8,
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden),
        "b2": jnp.zeros(10),
    }

    def example_loss(p, x, t):
        h = jax.nn.relu(x @ p["w1"] + p["b1"])
        return -jax.nn.log_softmax(h @ p["w2"] + p["b2"])[t]

    per_example = jax.vmap(example_loss, in_axes=(None, 0, 0))
    epochs, batch = 3, 32
    total = -(-900 // batch) * epochs
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, total // 10, total)
    opt = optax.inject_hyperparams(optax.adamw)(learning_rate=schedule, weight_decay=1e-4)

    @jax.jit
    def train_step(p, s, idx):
        g = jax.grad(lambda p: per_example(p, Xtr[idx], ytr[idx]).mean())(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    test_losses = jax.jit(lambda p: per_example(p, Xte, yte))

    def run(seed: int, log) -> int:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(1000, size=900, replace=False))
        params, state = params0, opt.init(params0)
        n = 0
        with log:
            log.initial(test_losses(params))
            for _ in range(epochs):
                perm = rng.permutation(keep)
                for s in range(0, len(perm), batch):
                    idx = jnp.asarray(perm[s : s + batch])
                    params, state = train_step(params, state, idx)
                    log.step(train_ids[idx], test_losses(params), lr=learning_rate(state))
                    n += 1
        jax.block_until_ready(params)
        return n

    return run, test_ids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="rounds of runs (modes interleaved)")
    ap.add_argument("--runs", type=int, default=4, help="runs per mode per round")
    ap.add_argument("--hidden", default="128,1024", help="MLP widths to time, comma-separated")
    a = ap.parse_args(argv)
    missing = [m for m in ("jax", "optax", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"bench_jax_logging: skipped ({', '.join(missing)} not installed; see the docstring)")
        return 0
    import json

    import jax

    from simfluence_cli import RunLogger
    from simfluence_cli.integrations.jax import JaxRunLogger

    print(json.dumps(run_facts(jax=jax.__version__, optax=__import__("optax").__version__)))
    print(
        "\n| H | mode | median wall s/run | median CPU s/run | steps/run "
        "| wall overhead ms/step vs eval-only | CPU overhead ms/step |"
    )
    print("|---|---|---|---|---|---|---|")
    for hidden in [int(h) for h in a.hidden.split(",")]:
        run, test_ids = make_loop(hidden)
        times: dict[str, list[float]] = {"eval-only": [], "RunLogger": [], "JaxRunLogger": []}
        cpu: dict[str, list[float]] = {name: [] for name in times}
        with tempfile.TemporaryDirectory() as tmp:
            makers = {
                "eval-only": lambda p: _KeepOnDevice(),
                "RunLogger": lambda p: RunLogger(p, test_ids=test_ids),
                "JaxRunLogger": lambda p: JaxRunLogger(p, test_ids=test_ids),
            }
            for name, make in makers.items():  # compile every shape outside the timings
                run(999, make(Path(tmp) / f"warm-{name}.jsonl.gz"))
            steps = 0
            for _ in range(a.repeats):
                for name, make in makers.items():
                    for r in range(a.runs):
                        path = Path(tmp) / f"{name}-{r}.jsonl.gz"
                        t0, c0 = time.perf_counter(), time.process_time()
                        steps = run(r, make(path))
                        times[name].append(time.perf_counter() - t0)
                        cpu[name].append(time.process_time() - c0)
            for r in range(a.runs):
                same = (Path(tmp) / f"RunLogger-{r}.jsonl.gz").read_bytes() == (
                    Path(tmp) / f"JaxRunLogger-{r}.jsonl.gz"
                ).read_bytes()
                assert same, f"run {r}: the two loggers wrote different bytes"
        base = float(np.median(times["eval-only"]))
        base_cpu = float(np.median(cpu["eval-only"]))
        for name, ts in times.items():
            med, med_cpu = float(np.median(ts)), float(np.median(cpu[name]))
            over = "" if name == "eval-only" else f"{(med - base) / steps * 1e3:.2f}"
            over_cpu = "" if name == "eval-only" else f"{(med_cpu - base_cpu) / steps * 1e3:.2f}"
            print(
                f"| {hidden} | {name} | {med:.3f} | {med_cpu:.3f} | {steps} | {over} | {over_cpu} |"
            )
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"\nBoth loggers wrote identical files. Load average after: {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

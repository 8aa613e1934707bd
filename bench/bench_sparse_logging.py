"""Accuracy lost by sparse logging: fit on the sample runs with losses kept only every k steps.

    .venv/bin/python bench/bench_sparse_logging.py [--samples sample_runs] [--methods linear,additive]

The fitting runs (``sample_runs/fit``) keep their losses at steps 0, k, 2k, ... and the last
step (k = 1, 5, 10) plus an irregular pattern (random gaps of 1..9 steps, mean 5); the gaps are
bridged by the gap model of ``simfluence_cli/_design.py`` (straight line between logged losses,
recurrence telescoped over the gap). Held-out runs keep every step and are rolled out from
their step-0 losses (see bench_prior_clip.py for the error measures). Prints markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_prior_clip import HELDOUT, fmt, load_samples, machine, rollout_errors

from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import Run, RunSet


def thin(rs: RunSet, k: int | str, seed: int = 0) -> RunSet:
    """Drop logged losses: keep steps 0, k, 2k, ... and the last ('irregular': random gaps)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in rs.runs:
        steps = r.loss_steps
        T = int(steps[-1])
        if k == "irregular":
            keep_steps = np.unique(np.concatenate([[0], np.cumsum(rng.integers(1, 10, T)), [T]]))
            keep_steps = keep_steps[keep_steps <= T]
        else:
            keep_steps = np.unique(np.concatenate([np.arange(0, T + 1, int(k)), [T]]))
        keep = np.isin(steps, keep_steps)
        out.append(Run(r.run_id, r.batch_ptr, r.batch_idx, steps[keep], r.losses[keep], r.tags))
    return RunSet(rs.example_ids, rs.test_ids, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, default=ROOT / "sample_runs")
    ap.add_argument("--methods", default="linear,additive")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = load_samples(a.samples)
    fit = data["fit"]
    print(
        f"Fitting runs: {len(fit)} x {fit.runs[0].n_steps} steps ({fit.n_examples} x "
        f"{fit.n_tests}); held-out families fully logged. Machine: {machine()}.\n"
    )
    print(
        "Held-out rollout RMSE (final-step MAE in parentheses); l2 by 5-fold CV grouped by "
        "run; prior no-change, clip observed. 'lost' = RMSE increase vs k = 1, in % "
        "(mean over families).\n"
    )
    print(
        "| method | logging | logged losses/run | l2 (CV) | "
        + " | ".join(HELDOUT)
        + " | lost | fit s |"
    )
    print("|---|---|---|---|" + "---|" * len(HELDOUT) + "---|---|")
    for method in a.methods.split(","):
        ref = None
        for k in (1, 5, 10, "irregular"):
            rs = thin(fit, k)
            sim = Simulator(method=method, l2="auto").fit(rs)
            errs = [rollout_errors(sim, data[f]) for f in HELDOUT]
            rm = np.array([e["rmse"] for e in errs])
            ref = rm if ref is None else ref
            lost = float(np.mean(rm / ref - 1) * 100)
            label = f"every {k}" if k != "irregular" else "irregular (gaps 1-9)"
            per_run = np.mean([len(r.loss_steps) for r in rs.runs])
            print(
                f"| {method} | {label} | {per_run:.0f} | {sim.l2_:g} | "
                + " | ".join(f"{fmt(e['rmse'])} ({fmt(e['final_mae'])})" for e in errs)
                + f" | {lost:+.1f}% | {sim.fit_seconds_:.1f} |"
            )
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

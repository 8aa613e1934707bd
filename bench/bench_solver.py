"""The Linear CG solve alone, float64 products vs mixed precision (float32 products), in process.

    .venv/bin/python bench/bench_solver.py                          # M, both regimes, l2 grid
    .venv/bin/python bench/bench_solver.py --size L --tests 16 --l2 1
    .venv/bin/python bench/bench_solver.py --threads 1 --repeat 2

The runs are bench_speed.make's (``--tests K``: only K test examples; the per-test systems are
independent, so the cost is ~linear in the tests). The design is built once; each variant then
solves all tests with ``solve_tests`` (the fit's solver, chunked by ``plan_chunks``), variants
alternating in the same process so they see the same load. Reported per variant: CPU seconds
(``time.process_time``, all threads) and wall seconds of the solve, CG iterations (max, mean
over chunks), the largest true relative residual, and the largest parameter difference against
the float64 solve (relative to the largest parameter), besides the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_speed
from _machine import run_facts

from simfluence_cli.model import solvers
from simfluence_cli.model.normal_equations import Design
from simfluence_cli.model.standardise import loss_scale, rescaled


def solve(design, l2, theta0, mixed: bool, threads, chunks=None):
    solvers.MIXED_PRECISION = mixed
    stats = {}
    t0, c0 = time.perf_counter(), time.process_time()
    x = solvers.solve_tests(
        design, "linear", l2, theta0, solver="cg", stats=stats, threads=threads, chunks=chunks
    )
    return x, time.perf_counter() - t0, time.process_time() - c0, stats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="M")
    ap.add_argument("--regimes", default="easy,real")
    ap.add_argument("--l2", default="100,1,0.01", help="comma-separated penalties")
    ap.add_argument("--tests", type=int, default=0, help="only this many test examples (0: all)")
    ap.add_argument("--threads", type=int, default=None, help="default: the usable CPUs")
    ap.add_argument("--repeat", type=int, default=1, help="keep the lowest CPU of K solves")
    ap.add_argument(
        "--width", type=int, default=0, help="mixed: chunks of this many tests (0: plan_chunks)"
    )
    a = ap.parse_args(argv)
    print(json.dumps(run_facts()), flush=True)
    if a.tests:
        n, m, R, T, b = bench_speed.SIZES[a.size]
        bench_speed.SIZES[a.size] = (n, a.tests, R, T, b)
    for regime in a.regimes.split(","):
        runs, _, _ = bench_speed.make(a.size, regime)
        runs = rescaled(runs, loss_scale(runs))  # what Simulator.fit solves
        design = Design(runs)
        n, b = runs.n_examples, bench_speed.SIZES[a.size][4]
        theta0 = np.concatenate([np.full(n, 1.0 / b), np.zeros(n)])
        for l2 in (float(v) for v in a.l2.split(",")):
            best = {}
            for _ in range(a.repeat):
                for mixed in (False, True):
                    load = round(os.getloadavg()[0], 2)
                    chunks = None
                    if mixed and a.width:
                        t = np.arange(runs.n_tests)
                        chunks = [t[i : i + a.width] for i in range(0, len(t), a.width)]
                    x, w, c, st = solve(design, l2, theta0, mixed, a.threads, chunks)
                    if mixed not in best or c < best[mixed]["cpu_s"]:
                        best[mixed] = dict(
                            cpu_s=round(c, 3),
                            wall_s=round(w, 3),
                            cg_it_max=st["cg_iterations_max"],
                            cg_it_mean=round(st["cg_iterations_mean"], 1),
                            max_rel_residual=float(f"{st['cg_max_rel_residual']:.2e}"),
                            not_converged=st["cg_not_converged"],
                            chunks=st["chunks"],
                            threads=st["threads"],
                            load1=load,
                            x=x,
                        )
            ref = best[False].pop("x")
            x = best[True].pop("x")
            diff = float(np.abs(x - ref).max() / np.abs(ref).max())
            print(
                json.dumps(
                    {
                        "size": a.size,
                        "tests": runs.n_tests,
                        "regime": regime,
                        "l2": l2,
                        "float64": best[False],
                        "mixed": best[True],
                        "cpu_ratio": round(best[True]["cpu_s"] / best[False]["cpu_s"], 3),
                        "max_rel_diff_vs_float64": float(f"{diff:.2e}"),
                    }
                ),
                flush=True,
            )
    solvers.MIXED_PRECISION = True


if __name__ == "__main__":
    main()

"""The optimizer-aware numpy rollout: main's loop vs this tree's, A/B in one process.

    .venv/bin/python bench/bench_oa_numpy.py                       # demo + simulate sizes
    .venv/bin/python bench/bench_oa_numpy.py --sim-steps 50 --repeat 5

``optimizer_aware.rollout`` with SIMFLUENCE_KERNELS=numpy (this tree) against
``tests/_oa_rollout_reference.py`` (the numpy loop of main 4213dd6, verbatim), alternating,
``--repeat`` times each; reported: best and median CPU seconds of this process (all threads)
and the CPU ratio main / this tree of the medians, and whether the results are bit for bit
equal. Sizes:

* demo: the rollouts of the default fit's grouped CV on the demo store (16 held-out runs x
  250 steps x batch 4, 300 examples, 320 columns = 32 tests x 10 configurations), all steps
  returned, losses clamped, one row per transform;
* simulate: bench_simulate.py --method optimizer-aware's problem (1,000 curricula x 1,000
  tests, N = 20,000, batch 8, AR, 8 hat functions, log transform, cosine lr, clamp [0, 10],
  final losses) on its first ``--sim-steps`` steps (the loop costs the same every step).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ["SIMFLUENCE_KERNELS"] = "numpy"
# one BLAS thread, as the simfluence command (cli/_blas.py) unless the user chose a count: the
# drift product phi @ gamma^T would otherwise leave a second OpenBLAS thread spinning (~2x the
# CPU seconds of a demo-size rollout, either loop)
_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
if not any(v in os.environ for v in _BLAS_VARS):
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

from _machine import cpu_model  # noqa: E402
from _oa_rollout_reference import rollout_reference  # noqa: E402

import simfluence_cli.model.optimizer_aware as oa  # noqa: E402
from simfluence_cli.io.synthetic import make_params  # noqa: E402


def demo_problem(transform: str):
    """(args, kwargs) of one CV rollout at the demo store's size."""
    C, T, b, n, m = 16, 250, 4, 300, 320
    rng = np.random.default_rng(0)
    A, B = make_params(n, m, b, seed=0)
    idx = np.stack([rng.permutation(np.resize(rng.permutation(n), T * b)) for _ in range(C)])
    idx = idx.reshape(C, T, b)
    sched = oa.Schedule(1.0, float(b), T, None)
    w = oa.curriculum_weights(sched, idx, None)
    phi = oa.hat_basis(np.arange(1, T + 1), 8, T)
    rho = rng.uniform(0.0, 0.6, m)
    gamma = rng.normal(0.0, 1e-3, (m, 8))
    L0 = rng.uniform(0.2, 2.0, (C, m))
    lo, hi = np.full(m, 0.01), np.full(m, 4.0)
    return (A - 1.0 / b, B, rho, gamma, idx, w, phi, L0, transform, lo, hi), {}


def simulate_problem(steps: int):
    """bench_simulate.py --method optimizer-aware's problem, its first ``steps`` steps."""
    C, M, T, N, b = 1000, 1000, 2000, 20_000, 8
    A, B = make_params(N, M, b, seed=0)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, N, (C, T, b))
    L0 = rng.uniform(1, 3, M)
    rho = rng.uniform(0.0, 0.6, M)
    gamma = rng.normal(0.0, 1e-4, (M, 8))
    lr = 0.55 + 0.5 * np.cos(np.linspace(0, np.pi, T))
    sched = oa.Schedule(float(np.median(lr)), float(b), T, lr)
    w = oa.curriculum_weights(sched, idx, None)
    phi = oa.hat_basis(np.arange(1, T + 1), 8, T)
    lo, hi = np.zeros(M), np.full(M, 10.0)
    s = slice(0, steps)
    args = (A - 1.0 / b, B, rho, gamma, idx[:, s], w[:, s], phi[s], L0, "log", lo, hi)
    return args, {"final": True}


def ab(label: str, args, kwargs, repeat: int) -> tuple:
    """Alternate main's loop and this tree's; the table row and bit-for-bit equality."""
    cpu = {"main": [], "branch": []}
    outs = {}
    for _ in range(repeat):
        for name, fn in (("main", rollout_reference), ("branch", oa.rollout)):
            c0 = time.process_time()
            outs[name] = fn(*args, **kwargs)
            cpu[name].append(time.process_time() - c0)
    same = bool(
        np.array_equal(outs["main"].view(np.uint64), outs["branch"].view(np.uint64))
        or np.array_equal(outs["main"], outs["branch"], equal_nan=True)
    )
    med = {k: statistics.median(v) for k, v in cpu.items()}
    return (
        label,
        f"{min(cpu['main']):.3f} / {med['main']:.3f}",
        f"{min(cpu['branch']):.3f} / {med['branch']:.3f}",
        f"{med['main'] / med['branch']:.2f}",
        same,
        os.getloadavg()[0],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--sim-steps", type=int, default=40)
    ap.add_argument("--sim-repeat", type=int, default=3)
    ap.add_argument("--skip-sim", action="store_true")
    a = ap.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()},")
    print(f"  numpy {np.__version__}; load average {os.getloadavg()}")
    print("  OPENBLAS_NUM_THREADS =", os.environ.get("OPENBLAS_NUM_THREADS"))
    rows = []
    for tr in ("identity", "log", "logodds"):
        args, kw = demo_problem(tr)
        rows.append(ab(f"demo CV rollout, {tr}", args, kw, a.repeat))
        print(rows[-1], flush=True)
    if not a.skip_sim:
        args, kw = simulate_problem(a.sim_steps)
        rows.append(ab(f"simulate, first {a.sim_steps} steps", args, kw, a.sim_repeat))
        print(rows[-1], flush=True)
    print("\n| rollout | main CPU s best / median | branch CPU s best / median "
          "| CPU ratio main / branch (medians) | bit for bit | load |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(v) if not isinstance(v, float) else f"{v:.1f}" for v in r) + " |")


if __name__ == "__main__":
    main()

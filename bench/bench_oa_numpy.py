"""The optimizer-aware numpy rollout: main's loop vs this tree's, A/B in one process.

    .venv/bin/python bench/bench_oa_numpy.py                       # demo + simulate sizes
    .venv/bin/python bench/bench_oa_numpy.py --sim-steps 200 --sim-repeat 2

``optimizer_aware.rollout`` with SIMFLUENCE_KERNELS=numpy (this tree) against
``tests/_oa_rollout_reference.py`` (the numpy loop of main 4213dd6, verbatim), alternating,
``--repeat`` times each; reported: best and median CPU seconds of this process (all threads)
and the CPU ratios main / this tree of the medians and of the bests, and whether the results
are bit for bit equal. Sizes:

* demo: the rollouts of the default fit's grouped CV on the demo store (16 held-out runs x
  250 steps x batch 4, 300 examples; all steps returned, losses clamped): the 12 calls of
  ``simfluence fit`` (``DEMO_FIT_CALLS``: 160 and 32 columns) timed together, and one call of
  320 columns (32 tests x 10 configurations) per transform;
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

from _machine import cpu_model
from _oa_rollout_reference import rollout_reference

import simfluence_cli.model.optimizer_aware as oa
from simfluence_cli.cli._malloc import tune_malloc
from simfluence_cli.io.synthetic import make_params


def demo_problem(transform: str, m: int = 320):
    """(args, kwargs) of one CV rollout at the demo store's size, ``m`` columns."""
    C, T, b, n = 16, 250, 4, 300
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


#: the default fit's CV rollouts on the demo store (columns, transform), as measured by wrapping
#: optimizer_aware.rollout in `simfluence fit --store demo-store --runs fit` (16 x 250 x 4 each)
DEMO_FIT_CALLS = [(160, "identity")] * 3 + [(32, "identity"), (32, "log"), (32, "logodds")] * 3


def ab(label: str, problems, repeat: int) -> tuple:
    """Alternate main's loop and this tree's over ``problems`` ((args, kwargs) each, timed
    together); the table row and bit-for-bit equality of every result."""
    cpu = {"main": [], "branch": []}
    outs = {"main": [], "branch": []}
    for _ in range(repeat):
        for name, fn in (("main", rollout_reference), ("branch", oa.rollout)):
            c0 = time.process_time()
            outs[name] = [fn(*args, **kwargs) for args, kwargs in problems]
            cpu[name].append(time.process_time() - c0)
    same = all(
        np.array_equal(x.view(np.uint64), y.view(np.uint64)) or np.array_equal(x, y, equal_nan=True)
        for x, y in zip(outs["main"], outs["branch"])
    )
    med = {k: statistics.median(v) for k, v in cpu.items()}
    return (
        label,
        f"{min(cpu['main']):.3f} / {med['main']:.3f}",
        f"{min(cpu['branch']):.3f} / {med['branch']:.3f}",
        f"{med['main'] / med['branch']:.2f}",
        f"{min(cpu['main']) / min(cpu['branch']):.2f}",
        same,
        os.getloadavg()[0],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=25)
    ap.add_argument("--sim-steps", type=int, default=40)
    ap.add_argument("--sim-repeat", type=int, default=3)
    ap.add_argument("--skip-sim", action="store_true")
    a = ap.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()},")
    print(f"  numpy {np.__version__}; load average {os.getloadavg()}")
    print("  OPENBLAS_NUM_THREADS =", os.environ.get("OPENBLAS_NUM_THREADS"), end="; ")
    print("malloc thresholds as the CLI's (cli/_malloc.py):", tune_malloc())
    rows = []
    calls = [demo_problem(tr, m) for m, tr in DEMO_FIT_CALLS]
    rows.append(ab("demo fit's 12 CV rollouts (3 x 160 + 9 x 32 columns)", calls, a.repeat))
    print(rows[-1], flush=True)
    for tr in ("identity", "log", "logodds"):
        rows.append(ab(f"demo CV rollout, 320 columns, {tr}", [demo_problem(tr)], a.repeat))
        print(rows[-1], flush=True)
    if not a.skip_sim:
        prob = [simulate_problem(a.sim_steps)]
        rows.append(ab(f"simulate, first {a.sim_steps} steps", prob, a.sim_repeat))
        print(rows[-1], flush=True)
    print("\n| rollout | main CPU s best / median | branch CPU s best / median "
          "| CPU ratio main / branch: medians | bests | bit for bit | load |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            "| " + " | ".join(str(v) if not isinstance(v, float) else f"{v:.1f}" for v in r) + " |"
        )


if __name__ == "__main__":
    main()

"""Linear's numpy rollout (no numba) at simulate scale, this tree against a baseline tree.

    .venv/bin/python bench/bench_linear_numpy.py --baseline /tmp/base [--steps 200] [--repeat 2]

The problem of bench_simulate.py (1,000 curricula x 1,000 tests x batch 8 over 1,000 examples,
clamped, final losses only) cut to ``--steps`` steps, rolled out by
``simfluence_cli.model.rollout.rollout`` with the compiled kernel turned off
(``SIMFLUENCE_KERNELS=numpy``) and one BLAS thread, in a child process per tree (alternating, so
both see the same load). Prints per run: CPU and wall seconds, and a hash of the result (equal
hashes = bit-identical results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, sys, time
import numpy as np
sys.path.insert(0, {tree!r})
import simfluence_cli
assert simfluence_cli.__file__.startswith({tree!r}), simfluence_cli.__file__
from simfluence_cli.model.rollout import rollout
rng = np.random.default_rng(0)
n, m, C, T, b = 1000, 1000, 1000, {steps}, 8
A = rng.normal(1 / b, 0.01, (n, m))
B = rng.normal(0, 0.01, (n, m))
idx = rng.integers(0, n, (C, T, b))
L0 = rng.random((C, m))
c, w = time.process_time(), time.perf_counter()
out = rollout(A, B, idx, L0, "linear", np.zeros(m), np.full(m, 10.0), final=True)
print(json.dumps(dict(cpu_s=round(time.process_time() - c, 2),
    wall_s=round(time.perf_counter() - w, 2), sha=hashlib.sha256(out.tobytes()).hexdigest()[:12])))
"""


def run_once(tree: str, steps: int) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": tree,
        "SIMFLUENCE_KERNELS": "numpy",
        "OPENBLAS_NUM_THREADS": "1",
    }
    code = CHILD.format(tree=str(Path(tree).resolve()), steps=steps)
    load = round(os.getloadavg()[0], 2)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return {"load1": load, **json.loads(out.stdout.strip().splitlines()[-1])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="source tree to compare with")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    from _machine import run_facts

    this = os.environ.get("PYTHONPATH") or str(ROOT)
    print(json.dumps(run_facts(tree=this, baseline=a.baseline)), flush=True)
    for _ in range(a.repeat):
        for name, tree in (("base", a.baseline), ("this", this)):
            print(
                json.dumps({"tree": name, "steps": a.steps, **run_once(tree, a.steps)}), flush=True
            )


if __name__ == "__main__":
    main()

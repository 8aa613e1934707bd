"""In-process A/B of the transposed products: CSC view (this tree) vs main's CSR copy.

    .venv/bin/python bench/bench_transpose_ab.py real 2     # regime, threads

Fits size M (bench_speed.make) at l2 = 1 twice per variant, alternating in one process (the
same load for both), by swapping ``normal_equations._transpose``. Prints CPU and wall seconds
and the mean CG iterations; the parameters are bitwise equal (tests/test_solver.py).
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_speed import make

from simfluence_cli.model import normal_equations as ne
from simfluence_cli.model import solvers
from simfluence_cli.model.simulator import Simulator

regime, thr = sys.argv[1], int(sys.argv[2])
solvers.default_threads = lambda: thr
runs, _, _ = make("M", regime)
variants = (("csc-view", ne._transpose), ("csr-copy", lambda m: m.T.tocsr()))
for _rep in range(2):
    for name, f in variants:
        ne._transpose = f
        c, w = time.process_time(), time.perf_counter()
        s = Simulator(l2=1.0).fit(runs, solver="cg")
        c, w = time.process_time() - c, time.perf_counter() - w
        it = s.solver_stats_["cg_iterations_mean"]
        print(f"{name} threads={thr} cpu_s={c:.2f} wall_s={w:.2f} cg_it_mean={it}", flush=True)

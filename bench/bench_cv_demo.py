"""``l2="auto"`` in process on the demo's fitting runs: CPU seconds, choice and CV curve.

    S=/tmp/fitspeed-store   # sample_runs/* ingested as in `make demo`
    PYTHONPATH=<tree> .venv/bin/python bench/bench_cv_demo.py $S

Run it once per tree (this one, a worktree of main) to compare: the curves must agree (the
CV choice is unchanged) and the CPU seconds (fit incl. CV and the final fit, no imports, no
store writes) show the CV path's cost.
"""

import json
import sys
import time

from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore

runs = RunStore(sys.argv[1]).load("fit")
for method in ("linear", "additive", "multiplicative"):
    c0 = time.process_time()
    sim = Simulator(method=method, l2="auto").fit(runs, solver="cg")
    cpu = round(time.process_time() - c0, 3)
    curve = [c["cv_mse"] for c in sim.cv_curve_]
    print(json.dumps({"method": method, "cpu_s": cpu, "l2": sim.l2_, "curve": curve}))

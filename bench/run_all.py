"""Run every benchmark in sequence (``make bench``); each prints its own markdown report.

    python bench/run_all.py                 # all of them (tens of minutes on 2 cores)
    python bench/run_all.py fit accuracy    # only some, by name (bench_<name>.py / <name>_campaign.py)

Figures recorded from earlier runs, with their commands and machine facts, are in
bench/RESULTS.md and bench/RELIABILITY.md. This machine is shared and noisy: read the ratios
against the baseline measured in the same run, not absolute seconds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "ingest",
    "fit",
    "speed",
    "matvec",
    "solver",
    "cgiters",
    "cg_tolerance",
    "transpose_ab",
    "commands",
    "top",
    "simulate",
    "multisim",
    "prior_clip",
    "sparse_logging",
    "jax_logging",
    "scale",
    "memory",
    "oa_scale",
    "dask",
    "accuracy",
    "optimizer_aware",
    "dad",
    "drift_correction",
    "counterfactual",
    "cv_demo",
    "oa_numpy",
    "calibration",
    "change_intervals",
    "plan",
    "design",
    "repro",
    "fuzz",
    "crash",
    "fitlock",
]
# scripts that compare against data or a tree only the user can name: run them by hand
MANUAL = {
    "fitspeed": "needs --baseline TREE (an older checkout to time in the same run)",
    "linear_numpy": "needs --baseline TREE (an older checkout to time in the same run)",
    "test_loop": "needs --baseline TREE (an older checkout to time in the same run)",
    "groups": "needs --baseline TREE (an older checkout to time in the same run)",
    "design_interval": "needs --store with planned fitting runs (docs/plan.md)",
}
# arguments for scripts whose defaults expect data made by an earlier run, or a work folder
ARGS = {
    "memory": ["--synthetic", "/tmp/simfluence-bench-memory", "--model", "syn-L", "--fit"],
    "calibration": ["--work", "/tmp/simfluence-bench-calibration"],
    "change_intervals": ["--work", "/tmp/simfluence-bench-change"],
    "design": ["--work", "/tmp/simfluence-bench-design"],
}


def script(name: str) -> Path:
    for candidate in (HERE / f"bench_{name}.py", HERE / f"{name}_campaign.py"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"no benchmark named {name!r}; choose from {', '.join(ORDER)}")


def main(argv: list[str]) -> int:
    names = argv or ORDER
    manual = [n for n in names if n in MANUAL]
    if manual:
        raise SystemExit(
            "; ".join(f"{n}: {MANUAL[n]}" for n in manual) + " (run bench/bench_<name>.py directly)"
        )
    failed = []
    for name in names:
        path = script(name)
        print(f"\n## {path.name}\n", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(path), *ARGS.get(name, [])])
        print(f"\n({path.name}: exit {rc}, {time.perf_counter() - t0:.0f} s wall)", flush=True)
        if rc != 0:
            failed.append(path.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Wall and CPU seconds of the quick test loop (`pytest -m "not slow"`), this tree vs a baseline.

    .venv/bin/python bench/bench_test_loop.py --baseline /tmp/base [--repeat 3]

The development guide asks for a quick loop under 30 s. Each run is a child
``python -m pytest -p no:randomly -p no:cacheprovider -m "not slow" -n 2 --dist loadfile -q``
in the tree's own directory with ``PYTHONPATH`` = the tree (the baseline's own tests against its
own package), trees alternating run by run so both see the same load. Bytecode is written to a
cache directory per tree (``PYTHONPYCACHEPREFIX``; a developer's machine keeps its
``__pycache__``), and a first untimed run per tree fills it. Reported per run: wall seconds, CPU
seconds of the children (user + sys, ``RUSAGE_CHILDREN``), the tests that ran, the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST = ["-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-m", "not slow"]
PYTEST += ["-n", "2", "--dist", "loadfile", "-q"]


def run_once(tree: Path, pycache: str) -> dict:
    """One quick loop in ``tree``: wall seconds, CPU seconds of the children, tests passed."""
    import resource

    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONPYCACHEPREFIX": pycache}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    load = round(os.getloadavg()[0], 2)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, *PYTEST], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    passed = sum(
        line.count(".") for line in p.stdout.splitlines() if re.match(r"^[.sFEx]+(\s|$)", line)
    )
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "tests_passed": passed,
        "rc": p.returncode,
        "load1": load,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="source tree (a checkout) to compare with")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    from _machine import run_facts

    trees = {"base": Path(a.baseline).resolve(), "this": ROOT}
    print(json.dumps(run_facts(tree=str(ROOT), baseline=str(trees["base"]))), flush=True)
    caches = {name: tempfile.mkdtemp(prefix=f"testloop-{name}-") for name in trees}
    for name, tree in trees.items():  # fill the bytecode caches (not timed)
        run_once(tree, caches[name])
    for _ in range(a.repeat):
        for name, tree in trees.items():
            print(json.dumps({"tree": name, **run_once(tree, caches[name])}), flush=True)


if __name__ == "__main__":
    main()

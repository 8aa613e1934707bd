"""`simfluence groups` on a mid-size store: every example of the base removed once.

    .venv/bin/python bench/bench_groups.py --baseline /tmp/base            # vs another tree
    .venv/bin/python bench/bench_groups.py --examples 10000 --tests 300 --steps 1000

Builds a synthetic store (decaying "real" regime of bench_speed.py: N training examples, M
tests, R runs x T steps, batch b, every step logged), fits `--method` (default
optimizer-aware, what `fit` fits by default; its choices fixed, no CV) as `lin`, then runs
`groups --base run-000 --groups-from examples.csv --column cls` (10 classes: one rollout per
class and one per example of the base) as a child process of this tree and, with
--baseline TREE, of that tree (PYTHONPATH), alternating, `--repeat` times each. Reports the
child's CPU seconds (user + sys, wait4), wall seconds, peak RSS, the load average before each
run, and whether the two trees' outputs are byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import run_facts
from bench_speed import real_params

from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.store import RunStore

#: the fit of each --method (choices fixed: no cross-validation, the bench times `groups`)
FIT = {
    "linear": ["--method", "linear", "--l2", "1"],
    "optimizer-aware": ["--method", "optimizer-aware", "--l2", "0.1", "--ar", "off"]
    + ["--transform", "identity", "--time-basis", "0"],
}


def build(work: Path, n: int, m: int, R: int, T: int, b: int, method: str) -> Path:
    store = work / "store"
    if (store / "models" / "lin" / "model.json").is_file():
        return store
    shutil.rmtree(store, ignore_errors=True)
    rng = np.random.default_rng(7)
    runs, _, _ = make_runs(
        n, m, R, T, b, seed=0, params=real_params(n, m, b), init_loss=rng.uniform(1, 3, m),
        noise=0.005,
    )  # fmt: skip
    for i, r in enumerate(runs.runs):
        r.run_id = f"run-{i:03d}"
    RunStore(store, create=True).add_runset(runs, tags=["fit"])
    with open(work / "examples.csv", "w") as fh:
        fh.write("example_id,cls\n" + "".join(f"e{i},c{i % 10}\n" for i in range(n)))
    cmd = ["fit", "--store", str(store), "--name", "lin", *FIT[method]]
    subprocess.run([sys.executable, "-m", "simfluence_cli", "-q", *cmd], check=True, cwd=ROOT)
    return store


def run_groups(tree: Path, store: Path, work: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "simfluence_cli", "-q", "groups", "--store", str(store)]
    cmd += ["-m", "lin", "--base", "run-000", "--groups-from", str(work / "examples.csv")]
    cmd += ["--column", "cls", "-f", "csv", "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    # cwd: not a checkout (python -m puts the working directory ahead of PYTHONPATH)
    p = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, use = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"groups failed ({tree}): {err.decode()}")
    return {
        "wall_s": round(time.perf_counter() - t0, 2),
        "cpu_s": round(use.ru_utime + use.ru_stime, 2),
        "peak_rss_mb": round(use.ru_maxrss / 1024),
        "load": round(load, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--tests", type=int, default=100)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--method", choices=sorted(FIT), default="optimizer-aware")
    ap.add_argument("--baseline", type=Path, default=None, help="another tree to time")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/simfluence-bench-groups"))
    a = ap.parse_args()
    print(json.dumps(run_facts()), flush=True)
    a.work.mkdir(parents=True, exist_ok=True)
    store = build(a.work, a.examples, a.tests, a.runs, a.steps, a.batch, a.method)
    trees = {"this": ROOT} | ({"baseline": a.baseline.resolve()} if a.baseline else {})
    rows = []
    for rep in range(a.repeat):
        for name, tree in trees.items():
            r = run_groups(tree, store, a.work, a.work / f"groups-{name}.csv")
            rows.append({"tree": name, "repeat": rep, **r})
            print(json.dumps(rows[-1]), flush=True)
    size = f"{a.method}, {a.examples} x {a.tests}, {a.runs} runs x {a.steps} steps, batch {a.batch}"
    print("\n| tree | size | wall s | CPU s | peak RSS MB | load |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tree']} | {size} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} "
              f"| {r['load']} |")  # fmt: skip
    if a.baseline:
        cpu = {t: np.median([r["cpu_s"] for r in rows if r["tree"] == t]) for t in trees}
        same = (a.work / "groups-this.csv").read_bytes() == (
            a.work / "groups-baseline.csv"
        ).read_bytes()
        print(f"\nCPU ratio this/baseline (medians): {cpu['this'] / cpu['baseline']:.2f}; "
              f"outputs byte-identical: {same}")  # fmt: skip


if __name__ == "__main__":
    main()

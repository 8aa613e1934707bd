"""`simulate` of N curricula: one call (several files) vs N calls of one curriculum each.

    .venv/bin/python bench/bench_multisim.py                                  # demo store, built in /tmp
    .venv/bin/python bench/bench_multisim.py --store demo-store --model linear
    .venv/bin/python bench/bench_multisim.py --store /tmp/scaleuser/store --model optimizer-aware

The N curricula come from ``simfluence plan -n N`` on the store (its runs' steps and batch
size). Timed as a user runs them, each command a child process (``python -m simfluence_cli``,
``PYTHONPATH`` = this tree): N calls ``simulate DIR/plan-k.txt -f FMT -o k.FMT`` (the shell
loop a researcher wrote before) and one call ``simulate DIR/plan-*.txt -f FMT -o all.FMT``.
Reported: wall and CPU seconds (children's user + sys, all threads), the 1-minute load average
before each, the CPU ratio one call / N calls; with ``--repeat K`` the lowest CPU of K runs
of each. The outputs are checked equal: the one call's rows of curriculum k are the k-th
single call's rows (Parquet tables compared column by column).
Without ``--store`` the demo store is built under ``--work`` (ingest sample_runs/fit, fit linear).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _machine import run_facts

SF = [sys.executable, "-m", "simfluence_cli"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(args: list[str]) -> dict:
    """One child command: wall s, CPU s (user + sys of the child), load before."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(SF + args, capture_output=True, text=True, env=ENV, cwd=ROOT)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(
            f"simfluence {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}"
        )
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"wall": wall, "cpu": cpu, "load": load}


def demo_store(work: Path) -> Path:
    store = work / "demo-store"
    if (store / "models" / "linear").is_dir():
        return store
    shutil.rmtree(store, ignore_errors=True)
    run(["ingest", "sample_runs/fit", "--tag", "fit", "--store", str(store)])
    run(["fit", "--runs", "fit", "--method", "linear", "--store", str(store)])
    return store


def same_rows(files: list[Path], whole: Path, names: list[str]) -> bool:
    """Does the one call's Parquet hold, per curriculum, exactly the single call's rows?"""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(whole)
    for f, name in zip(files, names):
        one = pq.read_table(f)
        part = t.filter(pc.equal(t["curriculum"], name)).drop(["curriculum"])
        for c in one.column_names:
            if part[c].to_pylist() != one[c].to_pylist():
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="store with a fitted model (default: build demo)")
    ap.add_argument("--model", default="linear")
    ap.add_argument("-n", type=int, default=20, help="number of curricula")
    ap.add_argument("--format", default="parquet", choices=["parquet", "csv"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/simfluence-bench-multisim"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.store.resolve() if args.store else demo_store(args.work)
    print(json.dumps(run_facts(store=str(store), model=args.model, n=args.n)), flush=True)

    plans = args.work / "plans"
    shutil.rmtree(plans, ignore_errors=True)
    run(["plan", "-n", str(args.n), "--store", str(store), "-o", str(plans)])
    files = sorted(plans.glob("*.txt"))
    names = [f.stem for f in files]
    out = args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    common = ["--store", str(store), "--model", args.model, "-f", args.format]

    best: dict[str, dict] = {}
    for _ in range(args.repeat):  # alternate the two ways, keep each one's lowest CPU
        loop = {"wall": 0.0, "cpu": 0.0, "load": os.getloadavg()[0]}
        for f in files:
            r = run(["simulate", str(f), *common, "-o", str(out / f"{f.stem}.{args.format}")])
            loop["wall"] += r["wall"]
            loop["cpu"] += r["cpu"]
        one = run(["simulate", *map(str, files), *common, "-o", str(out / f"all.{args.format}")])
        for key, r in ((f"{args.n} calls", loop), ("1 call", one)):
            if key not in best or r["cpu"] < best[key]["cpu"]:
                best[key] = r
    same = (
        same_rows([out / f"{n}.parquet" for n in names], out / "all.parquet", names)
        if args.format == "parquet"
        else None
    )
    base = best[f"{args.n} calls"]["cpu"]
    print(f"\n{args.n} curricula, model {args.model!r}, -f {args.format}, store {store}\n")
    print("| how | wall s | CPU s | load before | CPU ratio |")
    print("|---|---|---|---|---|")
    for key, r in best.items():
        print(
            f"| {key} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['load']:.2f} | "
            f"{r['cpu'] / base:.3f} |"
        )
    if same is not None:
        print(f"\nrows of the one call == the single calls' rows: {same}")


if __name__ == "__main__":
    main()

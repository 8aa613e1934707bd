"""Planned fitting runs vs plain shuffles, and calibrated intervals, on the sample model.

    .venv/bin/python bench/bench_plan.py [--n 48] [--seed 0] [--level 0.9] [--work DIR]

1. ``simfluence plan``'s library (analysis/plan.py) writes N curricula over the sample pool
   (e000..e299, 250 steps x 4, labels from sample_runs/examples.csv for the blocked kind).
2. Each is trained on the sample MLP exactly as ``sample_runs/generate.py train-curriculum``
   does (same Experiment.train, in one process so the checkpoint is pretrained once).
3. A linear model (l2 auto) is fitted on the N planned runs and on N plain-shuffle runs
   (sample_runs/fit, the first N), and both are evaluated on every held-out family
   (heldout-random, heldout-leave30, heldout-classordered): every eval metric, plus the
   coverage and width of CV+ intervals at --level (analysis/intervals.py, 8 folds).

Prints markdown (the tables of bench/RESULTS-intervals.md).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simfluence_cli.analysis.evaluation import evaluate
from simfluence_cli.analysis.intervals import calibrate
from simfluence_cli.analysis.plan import plan_curricula
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore

HELDOUT = ("heldout-random", "heldout-leave30", "heldout-classordered")
METRICS = ("all_steps_mse", "final_step_mse", "final_spearman", "run_spearman", "mae")


def _generate_module():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "sample_runs" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generate"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


def _sf(*args) -> None:
    exe = Path(sys.executable).with_name("simfluence")
    subprocess.run([str(exe), *args], check=True, capture_output=True)


def train_plan(work: Path, n: int, seed: int) -> list:
    gen = _generate_module()
    cfg = gen.Config()
    with open(ROOT / "sample_runs" / "examples.csv") as fh:
        labels = {r["example_id"]: r["label"] for r in csv.DictReader(fh)}
    pool = [f"e{i:03d}" for i in range(cfg.pool)]
    cur = plan_curricula(pool, n, cfg.steps, cfg.batch_size, seed=seed, labels=labels)
    (work / "plan").mkdir(parents=True, exist_ok=True)
    (work / "planned").mkdir(parents=True, exist_ok=True)
    ex = gen.Experiment(cfg)
    t0 = time.perf_counter()
    for c in cur:
        (work / "plan" / f"{c.name}.txt").write_text(c.text())
        batches = [[ex.index[e] for e in b] for b in c.batches]
        ex.train(batches, work / "planned" / f"{c.name}.jsonl.gz", c.name)
    print(f"trained {n} planned curricula in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return cur


def build_store(work: Path, n: int) -> RunStore:
    store = work / "store"
    if not (store / "manifest.json").exists():
        _sf("ingest", str(work / "planned"), "--tag", "planned", "--store", str(store))
        _sf("ingest", str(ROOT / "sample_runs" / "fit"), "--tag", "fit", "--store", str(store))
        for fam in HELDOUT:
            _sf("ingest", str(ROOT / "sample_runs" / fam), "--tag", fam, "--store", str(store))
    st = RunStore(store)
    return st


def measure(st: RunStore, fitting: dict[str, list[str]], level: float) -> list[dict]:
    rows = []
    for name, ids in fitting.items():
        runs = st.load(ids)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            sim = Simulator("linear", l2="auto").fit(runs)
            fit_s = time.perf_counter() - t0
            cal = calibrate(sim, runs)
        print(
            f"{name}: fit {fit_s:.1f} s (l2 {sim.l2_:g}), calibration {cal.seconds:.1f} s",
            file=sys.stderr,
        )
        for fam in HELDOUT:
            rs = st.load(fam)
            ev = evaluate({name: sim}, rs, unseen="prior")
            s = ev.results[0].summary
            cov = cal.coverage(rs, level, unseen="prior")
            rows.append(
                {
                    "fitting": name,
                    "family": fam,
                    **{m: float(s[m]) for m in METRICS},
                    **{
                        k: float(np.mean([c[k] for c in cov]))
                        for k in ("coverage_all", "coverage_final", "width_all", "width_final")
                    },
                    "l2": sim.l2_,
                }
            )
    return rows


def markdown(rows: list[dict], level: float) -> str:
    cols = ["fitting", "family", *METRICS]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append(
            "| "
            + " | ".join(str(r[c]) if isinstance(r[c], str) else f"{r[c]:.4g}" for c in cols)
            + " |"
        )
    out += ["", f"{100 * level:g}% CV+ intervals (target coverage {level:g}):", ""]
    cols = ["fitting", "family", "coverage_all", "coverage_final", "width_all", "width_final"]
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append(
            "| "
            + " | ".join(str(r[c]) if isinstance(r[c], str) else f"{r[c]:.3f}" for c in cols)
            + " |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--work", type=Path, default=None, help="keep the work here (reused)")
    ns = ap.parse_args(argv)
    work = ns.work or Path(tempfile.mkdtemp(prefix="bench-plan-"))
    if not (work / "planned").is_dir() or len(list((work / "planned").glob("*"))) < ns.n:
        train_plan(work, ns.n, ns.seed)
    st = build_store(work, ns.n)
    fit_ids = sorted(st.select("fit"))[: ns.n]
    planned = sorted(st.select("planned"))[: ns.n]
    rows = measure(st, {f"plain-{ns.n}": fit_ids, f"planned-{ns.n}": planned}, ns.level)
    print(markdown(rows, ns.level))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

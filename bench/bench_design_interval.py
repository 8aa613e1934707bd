"""Does ``design`` keep its promise? Real retraining of designed curricula vs their intervals.

    .venv/bin/python bench/bench_design_interval.py --store DIR [--runs fit,planned] [--iters 200]

For each fitting-run tag of the store (e.g. the store bench/bench_plan.py builds under
``--work DIR``/store, with tags ``fit`` and ``planned``): fit a linear model (l2 auto) on those
runs, design a curriculum (``design_curriculum``, 250 steps x 4, the CLI's defaults) from the
fitting runs' step-0 losses, put a 90% CV+ interval around its simulated mean final loss
(analysis/intervals.py), retrain the sample MLP on the designed curriculum (as
``sample_runs/generate.py train-curriculum`` does) and report: simulated objective, interval,
real mean final loss, whether it is inside, and the best real mean final loss among the
fitting runs (did the design beat every fitting curriculum?). Prints markdown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_plan import _generate_module

from simfluence_cli.analysis.curriculum_design import design_curriculum
from simfluence_cli.analysis.intervals import calibrate
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--runs", default="fit,planned", help="comma-separated fitting-run tags")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--level", type=float, default=0.9)
    ns = ap.parse_args(argv)
    st = RunStore(ns.store)
    gen = _generate_module()
    cfg = gen.Config()
    ex = gen.Experiment(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="bench-design-"))
    rows = []
    for tag in ns.runs.split(","):
        runs = st.load(tag)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sim = Simulator("linear", l2="auto").fit(runs)
            cal = calibrate(sim, runs)
        L0 = np.nanmean(np.vstack([r.losses[0] for r in runs.runs]), axis=0)
        t0 = time.perf_counter()
        res = design_curriculum(sim, cfg.steps, init_loss=L0, iters=ns.iters)
        design_s = time.perf_counter() - t0
        lo, hi = cal.final([res.batches], L0, ns.level, reduce="mean")
        real = ex.train([[ex.index[e] for e in b] for b in res.batches], tmp / f"{tag}.jsonl.gz")
        real_final = float(real[-1].mean())
        finals = [float(np.nanmean(r.losses[-1])) for r in runs.runs]
        rows.append(
            {
                "fitting runs": f"{tag} ({len(runs)})",
                "simulated": res.objective,
                "interval": f"[{lo[0]:.3f}, {hi[0]:.3f}]",
                "real": real_final,
                "inside": bool(lo[0] <= real_final <= hi[0]),
                "best fitting run (real)": min(finals),
                "beats best": real_final < min(finals),
                "design s": design_s,
            }
        )
        print(f"{tag}: {rows[-1]}", file=sys.stderr)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

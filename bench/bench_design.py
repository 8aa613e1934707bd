"""Does ``design`` deliver? Real retraining of designed curricula on plain SGD and AdamW.

    .venv/bin/python bench/bench_design.py --work DIR [--cases sgd:linear,adamw:additive]

For each case FAMILY:METHOD (``sgd``: the bundled ``sample_runs/fit`` runs, 250 steps x 4,
plain SGD; ``adamw``: ``sample_runs/generate.py --family adamw`` written under DIR/adamw if
missing, 250 steps x 8, AdamW with warm-up + cosine lr): fit ``Simulator(METHOD, l2="auto")``
on the 48 fitting runs, calibrate 90% CV+ intervals (8 folds), then design from the fitting
runs' mean step-0 losses:

* ``before``: ``design_curriculum`` of commit ``--before`` (greedy construction + 200 rounds x
  64 random proposals, the CLI's former default), loaded from git: the CPU-time baseline;
* ``greedy, no trust region``: greedy start, unbounded descent with exact move ranking;
* ``design, no consensus``: ``--start best-run`` (the fitting run with the lowest real mean
  final loss), trust region ``--trust``, floor guard on (the CLI's default without --interval);
* ``design (consensus)``: the same with the 8 fold models voting (the CLI's default with
  ``--interval``);
* ``design (consensus), no floor guard``: ``--no-floor-guard``.

Each curriculum is retrained on the real model (``Experiment.train`` / ``loop_train``, the
functions ``generate.py train-curriculum`` and ``--family`` call) and its real mean final
loss compared with the best and the mean fitting run. Noise floor: the best fitting run
retrained with two of its steps' batches swapped (``--noise`` variants). Prints markdown.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import cpu_model
from bench_plan import _generate_module

from simfluence_cli.analysis.curriculum_design import (
    best_run_start,
    design_curriculum,
    final_loss_floor,
)
from simfluence_cli.analysis.intervals import calibrate
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore


def _family(gen, name: str, work: Path):
    """(fit-run directory, trainer(batches of IDs, path) -> (steps+1, tests) losses)."""
    if name == "sgd":
        ex = gen.Experiment(gen.Config())
        return ROOT / "sample_runs" / "fit", lambda b, p: ex.train(
            [[ex.index[e] for e in x] for x in b], p
        )
    cfg = gen.loop_config(name)
    out = work / name
    if not (out / "config.json").exists():
        gen.generate_family(name, out, cfg)
    ex = gen.Experiment(cfg.base())
    return out / "fit", lambda b, p: gen.loop_train(
        ex, cfg, [[ex.index[e] for e in x] for x in b], p
    )[0]


def _before(commit: str):
    """``design_curriculum`` as it was at ``commit`` (greedy + random local search)."""
    import importlib.util

    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:simfluence_cli/analysis/curriculum_design.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"curriculum_design_{commit}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"design_before_{commit}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod.design_curriculum


def _cpu(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument(
        "--cases",
        default="sgd:linear,adamw:linear,adamw:additive",
        help="FAMILY:METHOD pairs (simulator method fitted on that family), comma-separated",
    )
    ap.add_argument("--trust", type=float, default=0.1)
    ap.add_argument(
        "--before", default="5a4b75c", help="commit whose design_curriculum is the baseline"
    )
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--noise", type=int, default=6, help="swapped-step variants of the best run")
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument(
        "--variants",
        default="before,before-trust,greedy,design,consensus,noguard",
        help="which curricula to design and retrain (keys of the variants, comma-separated)",
    )
    ap.add_argument(
        "--start-rank",
        type=int,
        default=1,
        help="design from the k-th best fitting run (1 = the best, the CLI's start)",
    )
    ns = ap.parse_args(argv)
    ns.work.mkdir(parents=True, exist_ok=True)
    gen = _generate_module()
    exe = Path(sys.executable).with_name("simfluence")
    print(f"command: python bench/bench_design.py {' '.join(argv or sys.argv[1:])}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    rows = []
    for case in ns.cases.split(","):
        fam, method = case.split(":")
        fit_dir, train = _family(gen, fam, ns.work)
        store = ns.work / f"store-{fam}"
        if not store.exists():
            subprocess.run(
                [str(exe), "ingest", str(fit_dir), "--tag", "fit", "--store", str(store), "-q"],
                check=True,
            )
        runs = RunStore(store).load("fit")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sim, fit_s = _cpu(lambda: Simulator(method, l2="auto").fit(runs))
            cal, cal_s = _cpu(lambda: calibrate(sim, runs))
        finals = np.array([np.nanmean(r.losses[-1]) for r in runs.runs])
        L0 = np.nanmean(np.vstack([r.losses[0] for r in runs.runs]), axis=0)
        rid, start = best_run_start(runs)
        if ns.start_rank > 1:  # a replicate: design from the k-th best fitting run instead
            start_k = k = int(np.argsort(finals, kind="stable")[ns.start_rank - 1])
            run = runs.runs[k]
            start_rid = str(runs.run_ids[k])
            design_start = [
                [str(runs.example_ids[q]) for q in run.batch(t)] for t in range(1, run.n_steps + 1)
            ]
        else:
            start_rid, design_start = rid, start
        tmp = ns.work / f"retrain-{fam}"
        tmp.mkdir(exist_ok=True)
        real_best = float(train(start, tmp / "best.jsonl.gz")[-1].mean())
        rng = np.random.default_rng(0)
        noise = []
        for k in range(ns.noise):
            t1, t2 = rng.choice(len(start), 2, replace=False)
            v = [list(b) for b in start]
            v[t1], v[t2] = v[t2], v[t1]
            noise.append(float(train(v, tmp / f"swap{k}.jsonl.gz")[-1].mean()))
        noise = np.array(noise)
        print(
            f"## {case}: {len(runs)} fitting runs, {method} l2 {sim.l2_:g}, fit {fit_s:.1f} s CPU, "
            f"calibration {cal_s:.1f} s CPU\n\n"
            f"best fitting run {rid}: logged {finals.min():.4f}, retrained {real_best:.4f}; "
            f"mean of fitting runs {finals.mean():.4f} (std {finals.std():.4f}); "
            f"best run with two steps swapped ({ns.noise} variants): "
            f"{noise.mean():.4f} +- {noise.std():.4f} (min {noise.min():.4f}, "
            f"max {noise.max():.4f})\n",
            flush=True,
        )
        before = _before(ns.before)
        floor = final_loss_floor(runs)  # the data floor the CLI passes (design's default)
        variants = {
            "before": (f"before ({ns.before}: greedy + random search)", dict(before=True)),
            "before-trust": (
                f"before ({ns.before}), best-run start + trust",
                dict(before=True, start=design_start, trust=ns.trust),
            ),
            "greedy": (
                "greedy, no trust region",
                dict(start=None, trust=1.0, steps=len(start), floor=floor),
            ),
            "design": (
                "design, no consensus",
                dict(start=design_start, trust=ns.trust, floor=floor),
            ),
            "consensus": (
                "design (consensus)",
                dict(start=design_start, trust=ns.trust, fold_models=cal.fold_models, floor=floor),
            ),
            "noguard": (
                "design (consensus), no floor guard",
                dict(
                    start=design_start,
                    trust=ns.trust,
                    fold_models=cal.fold_models,
                    floor_guard=False,
                ),
            ),
        }
        if "trust" not in inspect.signature(before).parameters:
            variants.pop("before-trust")
        variants = dict(v for k, v in variants.items() if k in ns.variants.split(","))
        base_s = None
        for name, kw in variants.items():
            if kw.get("before"):
                bkw = {k: v for k, v in kw.items() if k != "before"}
                res, s = _cpu(
                    lambda bkw=bkw: before(
                        sim, len(start), init_loss=L0, iters=ns.iters, n_random=0, **bkw
                    )
                )
                if hasattr(res, "greedy_objective"):  # commits before the best-run start
                    res.start_objective = res.greedy_objective
                res.params.setdefault("changed_slots", None)
                res.params["moves_accepted"] = res.params.get("moves_accepted")
            else:
                res, s = _cpu(
                    lambda kw=kw: design_curriculum(
                        sim, init_loss=L0, iters=ns.iters, n_random=0, **kw
                    )
                )
            base_s = s if base_s is None else base_s
            lo, hi = cal.final([res.batches], L0, ns.level, reduce="mean")
            real = float(train(res.batches, tmp / f"{method}-v{len(rows)}.jsonl.gz")[-1].mean())
            rows.append(
                {
                    "case": case,
                    "curriculum": name,
                    "simulated": res.objective,
                    "start sim": res.start_objective,
                    f"{100 * ns.level:g}% interval": f"[{lo[0]:.3f}, {hi[0]:.3f}]",
                    "real": real,
                    "inside": bool(lo[0] <= real <= hi[0]),
                    "real - best run": real - finals.min(),
                    "in noise sd": (real - finals.min()) / max(noise.std(), 1e-12),
                    "changed slots": res.params["changed_slots"],
                    "tests at floor": res.params["tests_at_clip_floor"],
                    "below data floor": res.params.get("tests_below_data_floor"),
                    "moves": res.params["moves_accepted"],
                    "CPU s": s,
                    "x baseline": s / base_s,
                }
            )
            print(f"{case}: {rows[-1]}", file=sys.stderr, flush=True)
        rows.append(
            {
                "case": case,
                "curriculum": f"best fitting run ({rid})",
                "simulated": float(sim.simulate([start], L0)[0, -1].mean()),
                "real": float(finals.min()),
                "real - best run": 0.0,
            }
        )
        if ns.start_rank > 1:
            rows.append(
                {
                    "case": case,
                    "curriculum": f"start: fitting run {start_rid} (rank {ns.start_rank})",
                    "simulated": float(sim.simulate([design_start], L0)[0, -1].mean()),
                    "real": float(finals[start_k]),
                    "real - best run": float(finals[start_k] - finals.min()),
                }
            )
        rows.append({"case": case, "curriculum": "mean of fitting runs", "real": finals.mean()})
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        print("| " + " | ".join(cells) + " |")
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shrink target (--prior) and rollout safeguard (--clip) measured on held-out sample runs.

    .venv/bin/python bench/bench_prior_clip.py [--samples sample_runs] [--quick]

Fits on ``sample_runs/fit`` and rolls every run of the three held-out families
(``heldout-random``, ``heldout-leave30``, ``heldout-classordered``) forward from its own step-0
losses along its own curriculum; compares with the losses it really logged. Prints markdown.

Error measures (per family, over runs x logged steps 1..T x tests):
- RMSE: root mean squared error of the simulated loss over the whole trajectory;
- final MAE: mean absolute error at the last step;
- non-finite: share of simulated values that are inf/NaN; min / max simulated loss.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet

FAMILIES = ("fit", "heldout-random", "heldout-leave30", "heldout-classordered")
HELDOUT = FAMILIES[1:]


def _parse_family(d: Path) -> RunSet:
    """Encoding-A reader (fallback when the store cannot ingest)."""
    runs, tests = {}, None
    for f in sorted(d.glob("*.jsonl.gz")):
        batches, losses = [], {}
        with gzip.open(f, "rt") as fh:
            for line in fh:
                rec = json.loads(line)
                if rec["step"] > 0:
                    batches.append(rec["batch"])
                if rec.get("loss"):
                    losses[rec["step"]] = rec["loss"]
        tests = tests or sorted(losses[0])
        runs[f.name.split(".")[0]] = (
            batches,
            {s: np.array([v.get(t, np.nan) for t in tests]) for s, v in losses.items()},
        )
    return RunSet.from_batches(runs, tests)


def load_samples(samples: Path) -> dict[str, RunSet]:
    """Each family as a RunSet, read through the run store (ingest into a temp store)."""
    try:
        from simfluence_cli.store.run_store import RunStore

        tmp = tempfile.mkdtemp(prefix="simfluence-bench-")
        st = RunStore(Path(tmp) / "store", create=True)
        for fam in FAMILIES:
            st.ingest([samples / fam], tags=[fam])
        return {fam: st.load(f"tag:{fam}") for fam in FAMILIES}
    except ImportError as exc:  # store not available: parse encoding A directly
        print(f"<!-- store unavailable ({exc}); parsed encoding A directly -->", file=sys.stderr)
        return {fam: _parse_family(samples / fam) for fam in FAMILIES}


def curricula(rs: RunSet) -> list[list[list[str]]]:
    ex = rs.example_ids
    return [[list(ex[r.batch(t)]) for t in range(1, r.n_steps + 1)] for r in rs.runs]


def rollout_errors(sim: Simulator, rs: RunSet) -> dict:
    """Simulate every run of ``rs`` from its own step-0 losses; compare with what it logged."""
    cols = [list(rs.test_ids).index(t) for t in sim.test_ids_]
    L0 = np.stack([r.losses[0, cols] for r in rs.runs])
    traj = sim.simulate(curricula(rs), init_loss=L0, unseen="prior")
    se, ae_final, n = 0.0, [], 0
    for c, r in enumerate(rs.runs):
        sim_at = traj[c, r.loss_steps[1:]]
        obs = r.losses[1:, cols]
        ok = np.isfinite(obs)
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.where(ok, sim_at - obs, 0.0)
            se += float(np.sum(d * d))
        n += int(ok.sum())
        last = np.isfinite(obs[-1])
        ae_final.append(np.abs(sim_at[-1][last] - obs[-1][last]))
    fin = traj[np.isfinite(traj)]
    return {
        "rmse": float(np.sqrt(se / max(n, 1))),
        "final_mae": float(np.mean(np.concatenate(ae_final))),
        "nonfinite": float(np.mean(~np.isfinite(traj))),
        "min": float(fin.min()) if fin.size else float("nan"),
        "max": float(fin.max()) if fin.size else float("nan"),
    }


def constant_baseline(rs: RunSet) -> dict:
    """Predict 'no change': every step keeps the step-0 loss."""
    se, n, fin = 0.0, 0, []
    for r in rs.runs:
        d = r.losses[1:] - r.losses[0]
        ok = np.isfinite(d)
        se += float(np.sum(d[ok] ** 2))
        n += int(ok.sum())
        fin.append(np.abs(d[-1][np.isfinite(d[-1])]))
    return {"rmse": float(np.sqrt(se / n)), "final_mae": float(np.mean(np.concatenate(fin)))}


def fmt(x: float) -> str:
    if not np.isfinite(x):
        return str(x)
    return f"{x:.4g}" if abs(x) < 1e6 else f"{x:.3e}"


def machine() -> str:
    import numpy

    return (
        f"{platform.machine()} {platform.processor() or ''} {__import__('os').cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {numpy.__version__}"
    ).replace("  ", " ")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, default=ROOT / "sample_runs")
    ap.add_argument("--quick", action="store_true", help="fewer configurations")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = load_samples(a.samples)
    fit = data["fit"]
    print(
        f"Fitting runs: {len(fit)} x {fit.runs[0].n_steps} steps, {fit.n_examples} training x "
        f"{fit.n_tests} test examples. Held-out: "
        + ", ".join(f"{f} {len(data[f])} runs" for f in HELDOUT)
        + f". Machine: {machine()}.\n"
    )

    print("Reference, no model ('loss stays at its step-0 value'):\n")
    print("| family | RMSE | final MAE |\n|---|---|---|")
    for fam in HELDOUT:
        b = constant_baseline(data[fam])
        print(f"| {fam} | {fmt(b['rmse'])} | {fmt(b['final_mae'])} |")

    # -- prior --------------------------------------------------------------------------------
    print("\n### Shrink target (--prior), l2 chosen by 5-fold CV grouped by run\n")
    print("Held-out rollout RMSE (final-step MAE in parentheses); clip as given.\n")
    print("| method | prior | clip | l2 (CV) | " + " | ".join(HELDOUT) + " | fit s |")
    print("|---|---|---|---|" + "---|" * len(HELDOUT) + "---|")
    methods = ("linear",) if a.quick else ("linear", "multiplicative")
    fitted = {}
    for method in methods:
        for prior in ("no-change", "zero"):
            for clip in ("observed", "none"):
                sim = Simulator(method=method, l2="auto", prior=prior, clip=clip).fit(fit)
                fitted[(method, prior, clip)] = sim
                cells = []
                for fam in HELDOUT:
                    e = rollout_errors(sim, data[fam])
                    cells.append(f"{fmt(e['rmse'])} ({fmt(e['final_mae'])})")
                print(
                    f"| {method} | {prior} | {clip} | {sim.l2_:g} | "
                    + " | ".join(cells)
                    + f" | {sim.fit_seconds_:.1f} |"
                )

    print("\nSame, fixed penalties (linear, clip observed):\n")
    print("| prior | l2 | " + " | ".join(HELDOUT) + " |")
    print("|---|---|" + "---|" * len(HELDOUT))
    for prior in ("no-change", "zero"):
        for l2 in (1.0,) if a.quick else (0.01, 1.0, 100.0):
            sim = Simulator(method="linear", l2=l2, prior=prior).fit(fit)
            cells = [fmt(rollout_errors(sim, data[f])["rmse"]) for f in HELDOUT]
            print(f"| {prior} | {l2:g} | " + " | ".join(cells) + " |")

    # -- clip ---------------------------------------------------------------------------------
    print("\n### Rollout safeguard (--clip), default fit (linear, prior no-change, l2 auto)\n")
    print("| family | clip | RMSE | final MAE | min loss | max loss | non-finite |")
    print("|---|---|---|---|---|---|---|")
    base = fitted[("linear", "no-change", "observed")]
    for fam in HELDOUT:
        for clip in ("observed", "none"):
            sim = (
                base
                if clip == "observed"
                else Simulator.from_params(
                    base.A_,
                    base.B_,
                    base.example_ids_,
                    base.test_ids_,
                    method="linear",
                    prior=base.prior,
                    clip="none",
                    batch_size=base.batch_size_,
                )
            )
            e = rollout_errors(sim, data[fam])
            print(
                f"| {fam} | {clip} | {fmt(e['rmse'])} | {fmt(e['final_mae'])} | {fmt(e['min'])} "
                f"| {fmt(e['max'])} | {e['nonfinite']:.2%} |"
            )
    if not a.quick:
        print("\nWith the zero prior (same fit, clip switched):\n")
        print("| family | clip | RMSE | final MAE | min loss | max loss | non-finite |")
        print("|---|---|---|---|---|---|---|")
        z = fitted[("linear", "zero", "observed")]
        for fam in HELDOUT:
            for clip in ("observed", "none"):
                sim = (
                    z
                    if clip == "observed"
                    else Simulator.from_params(
                        z.A_,
                        z.B_,
                        z.example_ids_,
                        z.test_ids_,
                        method="linear",
                        prior="zero",
                        clip="none",
                        batch_size=z.batch_size_,
                    )
                )
                e = rollout_errors(sim, data[fam])
                print(
                    f"| {fam} | {clip} | {fmt(e['rmse'])} | {fmt(e['final_mae'])} | "
                    f"{fmt(e['min'])} | {fmt(e['max'])} | {e['nonfinite']:.2%} |"
                )
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

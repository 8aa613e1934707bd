"""The optimizer-aware simulator against the paper's Linear and the baselines (issue 11).

    .venv/bin/python bench/bench_optimizer_aware.py [--families plain,momentum,adamw,lm]
        [--samples DIR] [--lm-runs DIR] [--work DIR] [--out bench/RESULTS-optimizer.md]
        [--json OUT.json] [--no-ablation]

Families: ``plain`` = the bundled plain-SGD sample runs (sample_runs/{fit,heldout-*}),
``momentum`` / ``adamw`` = the realistic-loop families of ``make samples-realistic``
(--samples DIR/<family>/..., default sample_runs/<family>/; generated on demand when
missing), ``lm`` = the language-model family of bench/lm_family.py (--lm-runs DIR, default
bench/lm_runs/; generated on demand, ~5 min CPU; its class-ordered set is ``heldout-ordered``,
ordered by source). Per family: ingest into a store
under --work, fit on the ``fit`` runs, evaluate on the three held-out sets (random, leave-30%,
class-ordered) with simfluence's own evaluation (all-steps MSE, final-step MSE, final Spearman
across tests, run-Spearman per test across runs).

Models: ``optimizer-aware`` (all choices by CV; what ``simfluence fit``'s default ``--method
auto`` stands for on runs logged every step, checked per family: ``auto_resolves_to``), its ablations (the chosen configuration with
one component changed, no CV: ``oa-no-lr`` fitted and evaluated on runs without their logged lr,
``oa-no-ar``, ``oa-no-basis`` / ``oa-basis-8`` (the trade-off of item iii), ``oa-identity`` /
``oa-logodds``), ``linear`` (the paper's, l2 by CV), ``additive``
(l2 by CV), ``tracin`` (additive with B = -scale * TracIn score, scale fitted), and the constant
and mean-trajectory baselines. Noise floor (plain family only: train-curriculum exists there):
fit-000's curriculum retrained with two adjacent steps swapped, final-loss MSE to the original.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import cpu_model

from simfluence_cli.analysis.evaluation import evaluate
from simfluence_cli.io.score_files import read_scores
from simfluence_cli.model import optimizer_aware as oa
from simfluence_cli.model.baselines import ConstantBaseline, MeanTrajectoryBaseline
from simfluence_cli.model.config import resolve_method
from simfluence_cli.model.external_scores import fit_scale, scores_simulator
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore

HELDOUT = ("heldout-random", "heldout-leave30", "heldout-classordered")
LM_HELDOUT = ("heldout-random", "heldout-leave30", "heldout-ordered")


def heldout_sets(fam: str) -> tuple[str, ...]:
    return LM_HELDOUT if fam == "lm" else HELDOUT


METRICS = ("all_steps_mse", "final_step_mse", "final_spearman", "run_spearman")


SAMPLES = ROOT / "sample_runs"  # where the realistic families live (--samples)
LM_RUNS = ROOT / "bench" / "lm_runs"  # the LM family (--lm-runs)


def family_dir(fam: str) -> Path:
    if fam == "lm":
        return LM_RUNS
    return ROOT / "sample_runs" if fam == "plain" else SAMPLES / fam


def ensure_family(fam: str) -> None:
    d = family_dir(fam)
    if fam == "lm":
        if not (d / "heldout-ordered").is_dir():
            lm = [sys.executable, str(ROOT / "bench" / "lm_family.py"), "--out", str(d)]
            subprocess.run(lm, check=True)
        return
    if fam != "plain" and not (d / "heldout-classordered").is_dir():
        gen = [sys.executable, str(ROOT / "sample_runs" / "generate.py"), "--family", fam]
        subprocess.run([*gen, "--out", str(d)], check=True)


def build_store(fam: str, work: Path) -> RunStore:
    path = work / f"store-{fam}"
    st = RunStore(path, create=True)
    for part in ("fit", *heldout_sets(fam)):
        files = sorted((family_dir(fam) / part).glob("*.jsonl*"))
        st.ingest(files, tags=[part])
    return st


def without_lr(runs):
    """The same runs with no logged learning rate (the lr-scaling ablation)."""
    from dataclasses import replace

    from simfluence_cli.runs import RunSet

    return RunSet(runs.example_ids, runs.test_ids, [replace(r, lr=None) for r in runs.runs])


def ablations(sim) -> list[tuple[str, dict]]:
    """The chosen optimizer-aware configuration with one component changed (no CV)."""
    cfg = sim.config_
    base = dict(method="optimizer-aware", l2=cfg.l2, transform=cfg.transform, ar=cfg.ar)
    base["time_basis"] = cfg.n_basis
    out = []
    if sim.schedule_.lr_by_step is not None:  # fitted and evaluated on runs stripped of lr
        out.append(("oa-no-lr", base))
    if cfg.ar:
        out.append(("oa-no-ar", {**base, "ar": False}))
    if cfg.n_basis:
        out.append(("oa-no-basis", {**base, "time_basis": 0}))
    else:
        out.append(("oa-basis-8", {**base, "time_basis": 8}))
    other = "logodds" if cfg.transform == "identity" else "identity"
    out.append((f"oa-{other}", {**base, "transform": other}))
    # the identity transform without the per-test standardisation (l2 in loss units)
    if cfg.transform == "identity":
        out.append(("oa-unstandardised", base))
    else:
        out.append(("oa-identity-unstandardised", {**base, "transform": "identity"}))
    return out


def fit_one(name: str, kw: dict, fit):
    """Fit one spec; the ``*-unstandardised`` ablations fit the identity transform on the
    losses as they are (``optimizer_aware.standardised`` patched to a unit scale)."""
    if name.endswith("-unstandardised"):
        with mock.patch.object(oa, "standardised", lambda r: (r, np.ones(r.n_tests))):
            return Simulator(**kw).fit(fit)
    return Simulator(**kw).fit(without_lr(fit) if name == "oa-no-lr" else fit)


def fit_models(st: RunStore, fam: str, ablation: bool) -> tuple[dict, dict]:
    fit = st.load("fit")
    models, notes = {}, {}
    specs = [("optimizer-aware", dict(method="optimizer-aware", l2="auto"))]
    specs += [
        ("linear", dict(method="linear", l2="auto")),
        ("additive", dict(method="additive", l2="auto")),
    ]
    while specs:
        name, kw = specs.pop(0)
        t0, c0 = time.perf_counter(), time.process_time()
        sim = fit_one(name, kw, fit)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        note = {"fit_seconds": round(dt, 1), "fit_cpu_seconds": round(cpu, 1), "l2": sim.l2_}
        if name == "optimizer-aware":  # what `simfluence fit` (--method auto) fits here
            every = all(len(r.loss_steps) == r.n_steps + 1 for r in fit.runs)
            note["auto_resolves_to"] = resolve_method("auto", every)
        if sim.method == "optimizer-aware":
            note.update(sim.config_.as_dict())
            note["rho_median"] = float(np.median(sim.ar_))
            note["lr_logged"] = sim.schedule_.lr_by_step is not None
        models[name], notes[name] = sim, note
        print(f"  {fam}: fitted {name} in {dt:.1f} s {note}", file=sys.stderr)
        if name == "optimizer-aware" and ablation:
            specs[:0] = ablations(sim)
    scores = family_dir(fam) / "tracin_scores.csv.gz"
    if scores.is_file():
        table = read_scores(scores)
        sc = fit_scale(table.S, table.example_ids, table.test_ids, fit)
        models["tracin"] = scores_simulator(table, sc["scale"], fit)
        notes["tracin"] = {"scale": sc["scale"], "r2": sc["r2"]}
    models["constant"] = ConstantBaseline().fit(fit)
    models["mean-trajectory"] = MeanTrajectoryBaseline().fit(fit)
    return models, notes


def final_bias(models: dict, held) -> dict:
    """Final-step MSE of optimizer-aware and Linear split into the per-test bias shared by
    all held-out runs (mean error over runs, squared) and the rest: the share a
    curriculum-independent correction (mean trajectory, time basis) could remove."""
    out = {}
    real = np.stack([r.losses[-1] for r in held.runs])
    for name in ("optimizer-aware", "linear"):
        if name not in models:
            continue
        sim = models[name]
        pred = []
        for r in held.runs:
            cur = [[held.example_ids[r.batch(t)].tolist() for t in range(1, r.n_steps + 1)]]
            kw = {"lr": r.lr} if sim.method == "optimizer-aware" else {}
            pred.append(sim.simulate(cur, r.losses[0], return_="final", **kw)[0])
        err = np.stack(pred) - real
        mse, bias2 = float(np.mean(err**2)), float(np.mean(err.mean(axis=0) ** 2))
        out[name] = {"final_mse": mse, "bias2": bias2, "bias2_share": bias2 / mse}
    out["real_final_variance"] = float(real.var(axis=0).mean())
    return out


def noise_floor(work: Path) -> dict | None:
    """Retrain plain fit-000 with steps 100 and 101 swapped: how far real outcomes move."""
    st = RunStore(work / "store-plain")
    run = st.load(["fit-000"])
    r = run.runs[0]
    ex = run.example_ids
    batches = [ex[r.batch(t)].tolist() for t in range(1, r.n_steps + 1)]
    swapped = list(batches)
    swapped[99], swapped[100] = swapped[100], swapped[99]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, cur in (("same", batches), ("swap", swapped)):
            cf = Path(tmp) / f"{label}.txt"
            cf.write_text("\n".join(" ".join(b) for b in cur) + "\n")
            res = Path(tmp) / f"{label}.jsonl.gz"
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "sample_runs" / "generate.py"),
                    "train-curriculum",
                    str(cf),
                    "-o",
                    str(res),
                ],
                check=True,
                capture_output=True,
            )
            s2 = RunStore(Path(tmp) / f"s-{label}", create=True)
            s2.ingest([res])
            out[label] = s2.load("all").runs[0].losses[-1]
    orig = r.losses[-1]
    return {
        "retrain_same_final_mse": float(np.mean((out["same"] - orig) ** 2)),
        "swap_two_steps_final_mse": float(np.mean((out["swap"] - orig) ** 2)),
        "swap_two_steps_all_mean_abs": float(np.mean(np.abs(out["swap"] - orig))),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="plain,momentum,adamw")
    ap.add_argument("--work", default=None)
    ap.add_argument(
        "--samples", default=None, help="dir of the realistic families (default sample_runs/)"
    )
    ap.add_argument("--lm-runs", default=None, help="dir of the LM family (bench/lm_runs/)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-optimizer.md"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--render", default=None, help="only re-render OUT from this --json file")
    ns = ap.parse_args(argv)
    if ns.render:
        Path(ns.out).write_text(render(json.loads(Path(ns.render).read_text())))
        return 0
    global SAMPLES, LM_RUNS
    if ns.samples:
        SAMPLES = Path(ns.samples)
    if ns.lm_runs:
        LM_RUNS = Path(ns.lm_runs)
    work = Path(ns.work or tempfile.mkdtemp(prefix="bench-oa-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "families": {},
        "command": " ".join(sys.argv),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    for fam in ns.families.split(","):
        ensure_family(fam)
        st = build_store(fam, work)
        models, notes = fit_models(st, fam, not ns.no_ablation)
        famres = {"models": notes, "heldout": {}, "final_bias": {}}
        for h in heldout_sets(fam):
            held = st.load(h)
            rows = evaluate({k: v for k, v in models.items() if k != "oa-no-lr"}, held)
            rows = rows.summary_rows()
            if "oa-no-lr" in models:
                rows += evaluate({"oa-no-lr": models["oa-no-lr"]}, without_lr(held)).summary_rows()
            order = list(models)
            rows.sort(key=lambda row: order.index(row["model"]))
            famres["heldout"][h] = {row["model"]: {k: row[k] for k in METRICS} for row in rows}
            famres["final_bias"][h] = final_bias(models, held)
        results["families"][fam] = famres
        print(json.dumps(famres["heldout"], indent=1), file=sys.stderr)
    if "plain" in results["families"]:
        try:
            results["noise_floor"] = noise_floor(work)
        except (subprocess.CalledProcessError, OSError) as exc:
            results["noise_floor"] = {"error": str(exc)}
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=1))
    Path(ns.out).write_text(render(results))
    print(f"wrote {ns.out}", file=sys.stderr)
    return 0


def render(res: dict) -> str:
    lines = [
        "# Optimizer-aware simulator: held-out accuracy by optimizer family (issue 11)",
        "",
        f"Command: `{res['command']}` (numbers below are from that run).",
        "",
        *(
            ["Machine: " + ", ".join(f"{k} {v}" for k, v in res["machine"].items()), ""]
            if "machine" in res
            else []
        ),
        "Fit times: wall and CPU seconds of `Simulator.fit` (CV included) and the CPU ratio to "
        "the paper's Linear fitted in the same run.",
        "",
        "all-steps / final MSE: lower is better; final Spearman (across tests) and run-Spearman "
        "(per test across the held-out runs, averaged: counterfactual skill) higher is better.",
        "",
    ]
    for fam, fr in res["families"].items():
        lines += [f"## {fam}", ""]
        lin_cpu = fr["models"].get("linear", {}).get("fit_cpu_seconds")
        for name, note in fr["models"].items():
            note = dict(note)
            if lin_cpu and note.get("fit_cpu_seconds") is not None:
                note["cpu_vs_linear"] = f"{note['fit_cpu_seconds'] / lin_cpu:.2f}x"
            lines.append(f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in note.items()))
        lines.append("")
        for h, table in fr["heldout"].items():
            lines += [
                f"### {fam} / {h}",
                "",
                "| model | all-steps MSE | final MSE | final Spearman | run-Spearman |",
                "|---|---|---|---|---|",
            ]
            for model, m in table.items():
                vals = [m[k] for k in METRICS]
                cells = ["-" if v is None else f"{v:.4g}" for v in vals]
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += bias_table(res)
    lines += targets(res)
    if "noise_floor" in res:
        lines += ["## Noise floor (plain family, retraining fit-000)", ""]
        lines += [f"- {k}: {v}" for k, v in res["noise_floor"].items()]
        lines.append("")
    return "\n".join(lines)


def bias_table(res: dict) -> list[str]:
    """The final-step error split: per-test bias shared by the held-out runs vs the rest."""
    rows = [
        (fam, h, fb)
        for fam, fr in res["families"].items()
        for h, fb in fr.get("final_bias", {}).items()
    ]
    if not rows:
        return []
    out = [
        "## Final-step MSE: the per-test bias shared by all held-out runs",
        "",
        "bias^2 = mean over tests of (mean over the held-out runs of simulated - real final "
        "loss)^2; a correction that does not depend on the curriculum can remove at most this. "
        "Real variance = variance of the real final losses across the held-out runs (what the "
        "mean-trajectory baseline pays).",
        "",
        "| family / held-out | OA final MSE | OA bias^2 share | Linear final MSE | "
        "Linear bias^2 share | real variance |",
        "|---|---|---|---|---|---|",
    ]
    for fam, h, fb in rows:
        o, li = fb.get("optimizer-aware", {}), fb.get("linear", {})
        out.append(
            f"| {fam} / {h} | {o.get('final_mse', float('nan')):.4g} | "
            f"{o.get('bias2_share', float('nan')):.0%} | {li.get('final_mse', float('nan')):.4g} | "
            f"{li.get('bias2_share', float('nan')):.0%} | {fb['real_final_variance']:.4g} |"
        )
    out.append("")
    return out


def targets(res: dict, new: str = "optimizer-aware") -> list[str]:
    """The issue-11 targets, checked on these numbers."""
    out = ["## Targets (issue 11), checked on the numbers above", ""]
    fams = res["families"]
    for fam, fr in fams.items():
        for h, t in fr["heldout"].items():
            if new not in t or "mean-trajectory" not in t:
                continue
            o, mt = t[new], t["mean-trajectory"]
            beat = o["all_steps_mse"] < mt["all_steps_mse"]
            near = o["final_step_mse"] <= 1.1 * mt["final_step_mse"]
            lin = ""
            if "linear" in t:
                lt = t["linear"]
                lin = (
                    f" [linear: all-steps {lt['all_steps_mse'] / mt['all_steps_mse']:.3f}x, "
                    f"final {lt['final_step_mse'] / mt['final_step_mse']:.3f}x of mean-trajectory]"
                )
            out.append(
                f"- {fam}/{h}: all-steps MSE {o['all_steps_mse']:.4g} vs mean-trajectory "
                f"{mt['all_steps_mse']:.4g} ({'beats' if beat else 'MISSED'}); final MSE "
                f"{o['final_step_mse']:.4g} vs {mt['final_step_mse']:.4g} = "
                f"{o['final_step_mse'] / mt['final_step_mse']:.3f}x "
                f"({'within 10% or better' if near else 'MISSED'})" + lin
            )
    rs = [
        fams[f]["heldout"][h][new]["run_spearman"]
        for f in ("momentum", "adamw")
        if f in fams
        for h in ("heldout-random", "heldout-leave30")
    ]
    if rs:
        ok = np.mean(rs) >= 0.4 and min(rs) > 0.1
        out.append(
            f"- run-Spearman over momentum/AdamW random + leave-30%: mean {np.mean(rs):.3f}, "
            f"min {min(rs):.3f} (target mean >= 0.4, each > 0.1: {'met' if ok else 'MISSED'})"
        )
    if "plain" in fams:
        worst = []
        for h, t in fams["plain"]["heldout"].items():
            for k in METRICS:
                d = t[new][k] - t["linear"][k]
                worse = d if k.endswith("mse") else -d
                if worse > 0.02:
                    worst.append(f"{h} {k} {t[new][k]:.4g} vs linear {t['linear'][k]:.4g}")
        out.append(
            "- plain SGD, never worse than the paper's Linear by > 0.02 on any metric: "
            + ("met" if not worst else "MISSED on " + "; ".join(worst))
        )
    out.append("")
    return out


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Accuracy on the bundled sample runs, the way the Simfluence paper reports it.

Drives the real CLI (subprocess) and prints every command it runs:

    simfluence ingest sample_runs/<family> --tag <family>        (4 families)
    simfluence fit --runs fit --method linear|additive|multiplicative --name ...   (--l2 auto)
    simfluence import-scores sample_runs/tracin_scores.csv.gz --name tracin --scale fit --runs fit
    simfluence eval -m linear -m additive -m multiplicative -m tracin --runs <heldout family> --format json

(and a second TracIn import, ``tracin-cum``, with ``--scale-on cumulative``), then prints markdown
tables (one per held-out family) and the headline ratios: final-step Spearman of
Simfluence-Linear over TracIn (scaled), all-steps MSE reduction vs TracIn, and the same against
the other simulators and baselines.

    .venv/bin/python bench/bench_accuracy.py [--store DIR] [--keep] [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("simfluence"))
SAMPLES = ROOT / "sample_runs"
FAMILIES = ["fit", "heldout-random", "heldout-leave30", "heldout-classordered"]
HELDOUT = FAMILIES[1:]
MODELS = ["linear", "additive", "multiplicative", "tracin", "tracin-cum"]
COLS = [
    "all_steps_mse",
    "final_step_mse",
    "final_spearman",
    "final_spearman_std",
    "run_spearman",
    "mae",
]
HIGHER = {"final_spearman", "run_spearman"}

LOG: list[str] = []


STORE_SHOWN: dict[str, str] = {}


def sh(args: list[str], capture: bool = False) -> str:
    shown = "simfluence " + " ".join(shlex.quote(a) for a in args)
    for path, name in STORE_SHOWN.items():
        shown = shown.replace(path, name)
    LOG.append(shown)
    print(f"$ {shown}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(
        [EXE, "--quiet", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {shown}\n{res.stderr}")
    LOG[-1] += f"   # {time.perf_counter() - t0:.1f} s"
    return res.stdout if capture else ""


def fmt(v, digits=4):
    return "n/a" if v is None else f"{v:.{digits}g}"


def table(results: list[dict]) -> str:
    best = {}
    for c in COLS:
        vals = [r[c] for r in results if r[c] is not None and c != "final_spearman_std"]
        if vals:
            best[c] = max(vals) if c in HIGHER else min(vals)
    head = (
        "| model | all-steps MSE | final-step MSE | final Spearman (± std) | run Spearman | MAE |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in results:

        def cell(c, digits=4):
            s = fmt(r[c], digits)
            return f"**{s}**" if c in best and r[c] == best[c] else s

        sp = f"{cell('final_spearman', 3)} ± {fmt(r['final_spearman_std'], 2)}"
        lines.append(
            f"| {r['model']} | {cell('all_steps_mse')} | {cell('final_step_mse')} | {sp} | "
            f"{cell('run_spearman', 3)} | {cell('mae')} |"
        )
    return "\n".join(lines)


def headline(by: dict[str, dict]) -> list[str]:
    lin = by["linear"]
    out = []
    for other in (
        "tracin",
        "tracin-cum",
        "additive",
        "multiplicative",
        "mean-trajectory",
        "constant",
    ):
        o = by[other]
        sp = (
            f"{lin['final_spearman'] / o['final_spearman']:.2f}x"
            if o["final_spearman"] and o["final_spearman"] > 0
            else f"{fmt(lin['final_spearman'], 3)} vs {fmt(o['final_spearman'], 3)}"
        )
        mse = 100 * (1 - lin["all_steps_mse"] / o["all_steps_mse"])
        fmse = 100 * (1 - lin["final_step_mse"] / o["final_step_mse"])
        rs = f"{fmt(lin['run_spearman'], 3)} vs {fmt(o['run_spearman'], 3)}"
        out.append(f"| {other} | {sp} | {mse:+.0f}% | {fmse:+.0f}% | {rs} |")
    return [
        "| Linear vs | final Spearman | all-steps MSE reduction | final-step MSE reduction | run Spearman |",
        "|---|---:|---:|---:|---:|",
        *out,
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="store directory (default: a fresh temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary store")
    ap.add_argument("--markdown", help="also write the report to this file")
    args = ap.parse_args()
    if not (SAMPLES / "tracin_scores.csv.gz").is_file():
        sys.exit("sample_runs/ is missing; run `make samples` first")
    tmp = None
    if args.store:
        store = Path(args.store)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="simfluence-bench-acc-"))
        store = tmp / "store"
    S = ["--store", str(store)]
    STORE_SHOWN[str(store)] = "$STORE"
    t_all = time.perf_counter()
    for fam in FAMILIES:
        sh(["ingest", f"sample_runs/{fam}", "--tag", fam, *S])
    for m in MODELS[:3]:
        sh(["fit", "--runs", "fit", "--method", m, "--name", m, *S])
    sh(
        [
            "import-scores",
            "sample_runs/tracin_scores.csv.gz",
            "--name",
            "tracin",
            "--scale",
            "fit",
            "--runs",
            "fit",
            "--format",
            "json",
            *S,
        ],
        capture=True,
    )
    sh(
        [
            "import-scores",
            "sample_runs/tracin_scores.csv.gz",
            "--name",
            "tracin-cum",
            "--scale",
            "fit",
            "--scale-on",
            "cumulative",
            "--runs",
            "fit",
            "--format",
            "json",
            *S,
        ],
        capture=True,
    )
    tracin = json.loads((store / "models" / "tracin" / "model.json").read_text())
    tracin_cum = json.loads((store / "models" / "tracin-cum" / "model.json").read_text())
    mans = {m: json.loads((store / "models" / m / "model.json").read_text()) for m in MODELS[:3]}
    reports = {}
    for fam in HELDOUT:
        model_args = [a for m in MODELS for a in ("-m", m)]
        reports[fam] = json.loads(
            sh(["eval", *model_args, "--runs", fam, "--format", "json", *S], capture=True)
        )
    elapsed = time.perf_counter() - t_all

    md = [
        "# Accuracy on the sample runs (bench/bench_accuracy.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()}; whole bench {elapsed:.0f} s.",
        "",
        "Commands (run from the repository root; `$STORE` = a fresh store directory):",
        "",
        "```",
        *LOG,
        "```",
        "",
        "Models fitted on the 48 `fit` runs (random curricula); penalties chosen by `--l2 auto` "
        "(5-fold CV grouped by run): "
        + ", ".join(f"{m} l2={mans[m]['l2']:g}" for m in mans)
        + f"; TracIn scores as additive simulators B = -scale * score, scale fitted by least "
        f"squares on the fit runs: `tracin` on one-step loss changes (scale "
        f"{tracin['scale']:.4g}, R² {tracin['scale_fit']['r2']:.3f}), `tracin-cum` on cumulative "
        f"changes from step 0 (scale {tracin_cum['scale']:.4g}, R² "
        f"{tracin_cum['scale_fit']['r2']:.3f}).",
        "",
        "Lower MSE/MAE and higher Spearman are better; best per column in bold. "
        "`run_spearman`: per test example, Spearman across the held-out runs of simulated vs "
        "observed final loss, averaged over test examples (0 = no counterfactual skill).",
        "",
    ]
    for fam in HELDOUT:
        rep = reports[fam]
        by = {r["model"]: r for r in rep["results"]}
        md += [
            f"## {fam} ({len(rep['runs'])} runs, {rep['n_tests']} test examples)",
            "",
            table(rep["results"]),
            "",
            *headline(by),
            "",
        ]
    text = "\n".join(md) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if tmp is not None and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp is not None:
        print(f"store kept at {store}", file=sys.stderr)


if __name__ == "__main__":
    main()

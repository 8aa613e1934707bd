"""Saved interval calibrations: what a cached ``--interval`` saves, and how the novelty warning
tracks coverage on the held-out families.

    nice -n 5 .venv/bin/python bench/bench_calibration.py --work /tmp/bench-calib [--reps 3]

1. Builds a store under ``--work`` from ``sample_runs/`` (the four families, as ``make demo``)
   and fits a model (``--method``, default ``linear``; ``auto`` is the CLI's default, which
   resolves to optimizer-aware on the sample runs) with ``--l2 auto`` on ``fit``.
2. Times ``simfluence simulate heldout-random-000 --interval 0.9`` as subprocesses, CPU seconds
   (user + sys of the child): uncached (no saved calibration: 8 refits each call), then
   ``simfluence calibrate -m <model>`` once, then cached; the point estimate without
   ``--interval`` is the floor. All in the same run, alternating, ``--reps`` times each.
3. With the saved calibration: 90% coverage per held-out family (all steps / final step,
   mean over runs), how many runs of each family the novelty warning flags, and coverage of
   flagged vs unflagged runs. Prints markdown (the body of bench/RESULTS-calibration.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import cpu_model

FAMILIES = ("fit", "heldout-random", "heldout-leave30", "heldout-classordered")
SF = [sys.executable, "-m", "simfluence_cli"]


def _child(args: list[str], stdin: bytes | None = None) -> tuple[float, float, bytes, bytes]:
    """(CPU s, wall s, stdout, stderr) of one CLI subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(SF + args, input=stdin, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {p.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, p.stdout, p.stderr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument(
        "--method", default="linear", help="fit --method of the model (auto: the CLI's default)"
    )
    ns = ap.parse_args(argv)
    name = ns.method
    store = ns.work / "store"
    shutil.rmtree(ns.work, ignore_errors=True)
    ns.work.mkdir(parents=True)
    s = ["--store", str(store)]
    for fam in FAMILIES:
        _child(["ingest", str(ROOT / "sample_runs" / fam), "--tag", fam, *s, "-q"])
    fit_cpu, *_ = _child(["fit", *s, "--runs", "fit", "--method", ns.method, "--l2", "auto",
                          "--name", name, "-q"])  # fmt: skip
    _, _, cur, _ = _child(["curriculum", "heldout-random-000", *s])
    sim = ["simulate", "-", *s, "-m", name, "--init-loss", "run:heldout-random-000",
           "-f", "csv"]  # fmt: skip
    iv = [*sim, "--interval", str(ns.level)]

    times: dict[str, list[float]] = {"point": [], "uncached": [], "cached": []}
    outs = {}
    for _ in range(ns.reps):
        c, _, _, _ = _child(sim, cur)
        times["point"].append(c)
        c, _, out, err = _child(iv, cur)
        assert b"refitting" in err, err
        times["uncached"].append(c)
        outs["uncached"] = out
    cal_cpu, _, _, _ = _child(["calibrate", *s, "-m", name])
    for _ in range(ns.reps):
        c, _, out, err = _child(iv, cur)
        assert b"refitting" not in err, err
        times["cached"].append(c)
        outs["cached"] = out
    same = outs["cached"] == outs["uncached"]
    size = sum(f.stat().st_size for f in (store / "models" / name).rglob("*") if f.is_file())

    from simfluence_cli.analysis.intervals import stored_calibration
    from simfluence_cli.analysis.whatif import run_batches
    from simfluence_cli.store.run_store import RunStore

    st = RunStore(store)
    _, cal, why = stored_calibration(st, name)
    assert cal.source == "saved", why
    fam_rows = []
    for fam in FAMILIES[1:]:
        rs = st.load(fam)
        cov = cal.coverage(rs, ns.level)
        nov = cal.novelty.score([run_batches(rs, r) for r in rs.run_ids])
        flag = nov["flag"]
        ca = np.array([r["coverage_all"] for r in cov])
        cf = np.array([r["coverage_final"] for r in cov])

        def m(x, sel):
            return f"{x[sel].mean():.3f}" if sel.any() else "-"

        fam_rows.append(
            (fam, len(rs), ca.mean(), cf.mean(), int(flag.sum()), float(np.nanmedian(nov["z"])),
             m(ca, flag), m(ca, ~flag))
        )  # fmt: skip

    med = {k: float(np.median(v)) for k, v in times.items()}
    cmd = " ".join(
        ["nice -n 5 .venv/bin/python bench/bench_calibration.py", *(argv or sys.argv[1:])]
    )
    la = os.getloadavg()
    print("# Saved interval calibrations and the novelty warning (issue 12, item 1)\n")
    print(f"```sh\n{cmd}\n```\n")
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average at the end {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1 / 5 / 15 min; "
        "the cores are shared, so wall times are not reported). Store: the four sample "
        f"families, `--method {ns.method}` with `--l2 auto` on `fit` (48 runs x 250 steps, 300 examples, "
        f"100 tests; fit {fit_cpu:.1f} CPU s).\n"
    )
    print("## 1. `simulate --interval 0.9`, uncached vs cached\n")
    print(
        f"CPU seconds (user + sys of the subprocess), median of {ns.reps} runs each, same run; "
        "one curriculum (heldout-random-000), 250 steps x 100 tests.\n"
    )
    print("| call | CPU s (median) | all runs | ratio to uncached | ratio to point estimate |")
    print("|---|---|---|---|---|")
    for k, label in (("point", "simulate (no --interval)"),
                     ("uncached", "simulate --interval 0.9, no saved calibration"),
                     ("cached", "simulate --interval 0.9, saved calibration")):  # fmt: skip
        print(
            f"| {label} | {med[k]:.2f} | {', '.join(f'{x:.2f}' for x in times[k])} | "
            f"{med[k] / med['uncached']:.3f} | {med[k] / med['point']:.2f} |"
        )
    print(
        f"\n`simfluence calibrate -m {name}` (once): {cal_cpu:.2f} CPU s; model directory with "
        f"the calibration: {size / 2**20:.1f} MiB. Cached and uncached intervals byte-identical: "
        f"{same}. Speed-up of a cached call: {med['uncached'] / med['cached']:.1f}x; over the "
        f"point estimate it adds {med['cached'] - med['point']:.2f} CPU s.\n"
    )
    print("## 2. Coverage and the novelty warning per held-out family\n")
    print(
        f"{100 * ns.level:g}% CV+ intervals from the saved calibration; coverage = share of real "
        "held-out losses inside, mean over runs; flagged = runs the warning fires for "
        "(novelty z > 4 and a feature 1.5x off the fitting runs' mean; analysis/novelty.py).\n"
    )
    print("| family | runs | coverage all | coverage final | warned | median novelty z | "
          "coverage all, warned | coverage all, not warned |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for fam, n, ca, cf, k, z, cw, cn in fam_rows:
        print(f"| {fam} | {n} | {ca:.3f} | {cf:.3f} | {k} of {n} | {z:.1f} | {cw} | {cn} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Crash campaign: SIGKILL `simfluence ingest` and `simfluence fit` subprocesses many times.

    .venv/bin/python bench/crash_campaign.py [--kills N] [--seed S]

Each round starts from a copy of a store holding 3 runs and a fitted model, then either
kills an ingest of 8 new runs, or kills a refit (``fit --replace``) of the model, at a moment
drawn uniformly over the time the command holds the write lock (``--mode lock``, default: the
phase that reads, writes and commits) or since its start (``--mode start``). After each kill it checks the
invariants of tests/test_crash.py (the store opens, verify finds no error, all-or-nothing
runs, load reads exactly the manifest's runs, visible files are complete, models load); every
few rounds it re-runs the command to completion and checks that verify is then clean with no
warning. Prints the number of kills that landed (process still running) and survived.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_crash_module():
    spec = importlib.util.spec_from_file_location("test_crash", ROOT / "tests" / "test_crash.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100, help="kills to attempt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--mode",
        choices=["lock", "start"],
        default="lock",
        help="lock: kill at a uniform moment while the command holds the write lock "
        "(the phase that writes); start: at a uniform moment since its start",
    )
    ap.add_argument(
        "--window",
        type=float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LO", "HI"),
        help="kill moments as fractions of that phase's measured duration",
    )
    ap.add_argument(
        "--rerun-every",
        type=int,
        default=3,
        help="re-run the killed command to completion every N rounds",
    )
    args = ap.parse_args()
    cr = load_crash_module()
    from simfluence_cli.store.integrity import verify_store

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="crashcampaign"))
    template = work / "template"
    base_ids = set(cr.make_logs(work / "base", 3, 40, seed=1, prefix="base"))
    new_ids = set(cr.make_logs(work / "new", 8, 60, seed=2, prefix="new"))
    cr.run_to_completion(cr.cli("ingest", work / "base", "--store", template, "--tag", "fit"))
    cr.run_to_completion(cr.cli("fit", "--store", template, "--l2", "1", "--name", "m"))

    def commands(store):
        return {
            "ingest": cr.cli("ingest", work / "new", "--store", store, "--tag", "fit"),
            "fit": cr.cli(
                "fit",
                "--store",
                store,
                "--runs",
                "base-*",
                "--l2",
                "0.5",
                "--name",
                "m",
                "--replace",
            ),
        }

    durations = {}
    for kind, cmd in commands(work / "probe").items():
        shutil.rmtree(work / "probe", ignore_errors=True)
        shutil.copytree(template, work / "probe")
        t = time.perf_counter()
        if args.mode == "lock":
            durations[kind] = cr.locked_time(cmd, work / "probe")
        else:
            cr.run_to_completion(cmd)
            durations[kind] = time.perf_counter() - t
    print(
        f"mode {args.mode}, window {args.window}; measured "
        + ("time holding the lock: " if args.mode == "lock" else "full durations: ")
        + ", ".join(f"{k} {v:.2f} s" for k, v in durations.items()),
        flush=True,
    )

    counts = Counter()
    failures: list[str] = []
    t0 = time.perf_counter()
    store = work / "s"
    for i in range(args.kills):
        kind = "ingest" if i % 2 == 0 else "fit"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(template, store)
        cmd = commands(store)[kind]
        delay = rng.uniform(*args.window) * durations[kind]
        code = (
            cr.kill_after_lock(cmd, store, delay) if args.mode == "lock" else cr.kill_at(cmd, delay)
        )
        landed = code is None
        allowed = [base_ids, base_ids | new_ids] if kind == "ingest" else [base_ids]
        try:
            ids = cr.check_after_kill(store, allowed)
            counts[f"{kind} kills landed" if landed else f"{kind} finished before kill"] += 1
            counts["kills survived"] += landed
            if landed and kind == "ingest":
                counts["ingest: store as before" if ids == base_ids else "ingest: committed"] += 1
            if i % args.rerun_every == 0:
                cr.run_to_completion(cmd)
                cr.check_after_kill(store, [allowed[-1]])
                rep = verify_store(store)
                assert rep.ok and not rep.findings, [f.line() for f in rep.findings]
                counts["re-runs completed clean"] += 1
        except Exception as exc:
            counts["FAILED"] += 1
            counts[f"{kind} kills landed" if landed else f"{kind} finished before kill"] += 1
            failures.append(
                f"round {i} {kind} delay {delay:.3f}s: {type(exc).__name__}: {str(exc)[:300]}"
            )
            shutil.copytree(store, work / f"failed-{i}")
        if (i + 1) % 10 == 0:
            print(f"{i + 1} rounds, {time.perf_counter() - t0:.0f} s: {dict(counts)}", flush=True)
    landed = counts["ingest kills landed"] + counts["fit kills landed"]
    print(
        f"TOTAL rounds {args.kills}; kills landed {landed} (ingest "
        f"{counts['ingest kills landed']}, fit {counts['fit kills landed']}); survived "
        f"{counts['kills survived']}; failures {counts['FAILED']}; "
        f"{dict(counts)}; {time.perf_counter() - t0:.0f} s"
    )
    for f in failures[:20]:
        print("FAIL", f)
    if not failures:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"failed stores kept under {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Long fuzzing campaign: the checks of tests/test_fuzz.py on many more generated inputs.

    .venv/bin/python bench/fuzz_campaign.py [--examples N] [--seed S]

Runs each fuzz target (ingest A through the CLI, ingest B through the CLI, ingest through the
library, ingest into a new store, simulate) for N inputs and prints how many inputs were tried,
how many were rejected with exit 1 (the expected outcome for malformed input), accepted (valid
by chance), and how many broke a law (traceback, other exit code, multi-line message, store
changed, invalid input accepted, NaN in a simulation). Exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hseed
from hypothesis.errors import HypothesisException

ROOT = Path(__file__).resolve().parent.parent


def load_fuzz_module():
    spec = importlib.util.spec_from_file_location("test_fuzz", ROOT / "tests" / "test_fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000, help="inputs per target")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fz = load_fuzz_module()
    work = Path(tempfile.mkdtemp(prefix="fuzzcampaign"))
    template = fz.make_template(work / "store")
    targets = {
        "ingest-jsonl-cli": (
            fz.jsonl_input(),
            lambda c: fz.check_ingest(template, {"fz.jsonl": c[1]}, c[2]),
        ),
        "ingest-tables-cli": (fz.table_input(), lambda c: fz.check_ingest(template, c[1], c[2])),
        "ingest-library": (
            fz.jsonl_input() | fz.table_input(),
            lambda c: fz.check_ingest_library(
                template, c[1] if isinstance(c[1], dict) else {"fz.jsonl": c[1]}, c[2]
            ),
        ),
        "ingest-new-store": (
            fz.jsonl_input(),
            lambda c: fz.check_ingest(template, {"fz.jsonl": c[1]}, c[2], fresh=True),
        ),
        "simulate": (
            fz.curriculum_input(),
            lambda c: fz.check_simulate(template, c[1], c[2], c[3]),
        ),
    }
    total = Counter()
    failures: list[str] = []
    t0 = time.perf_counter()
    for name, (strategy, check) in targets.items():
        outcome = Counter()

        @hseed(args.seed)
        @settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case):
            try:
                code = check(case)
            except AssertionError as exc:
                outcome["failed"] += 1
                failures.append(f"{name}: {case[0]}: {str(exc)[:300]}")
                return  # keep going: count every failure, not just the first
            outcome["rejected" if code == 1 else "accepted"] += 1
            outcome[f"kind:{case[0]}"] += 1

        t = time.perf_counter()
        try:
            run()
        except HypothesisException as exc:
            failures.append(f"{name}: hypothesis: {exc}")
        tried = outcome["rejected"] + outcome["accepted"] + outcome["failed"]
        kinds = ", ".join(
            f"{k[5:]} {v}" for k, v in sorted(outcome.items()) if k.startswith("kind:")
        )
        print(
            f"{name:18s} tried {tried:6d}  rejected (exit 1) {outcome['rejected']:6d}  "
            f"accepted {outcome['accepted']:5d}  failed {outcome['failed']:3d}  "
            f"{time.perf_counter() - t:6.1f} s  [{kinds}]",
            flush=True,
        )
        total.update(
            {
                "tried": tried,
                "rejected": outcome["rejected"],
                "accepted": outcome["accepted"],
                "failed": outcome["failed"],
            }
        )
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"TOTAL inputs tried {total['tried']}, rejected {total['rejected']}, accepted "
        f"{total['accepted']}, failures {total['failed']} in {time.perf_counter() - t0:.0f} s"
    )
    for f in failures[:20]:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

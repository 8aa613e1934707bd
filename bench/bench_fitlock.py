"""How long `simfluence fit` holds the store's write lock, this tree vs a baseline tree.

    .venv/bin/python bench/bench_fitlock.py [--baseline /work/main] [--sizes demo,M] [--fit-args "..."]

Stores: ``demo`` = the bundled ``sample_runs/fit`` (48 runs, 300 x 100); ``M`` = bench_speed's
size M (2,000 training x 200 test examples, 64 runs x 500 steps, batch 8, regime real).
For each tree (the baseline if given, then this one; each on a fresh copy of the same store) one ``fit --replace`` runs as a child process with
``PYTHONPATH`` = the tree; the parent polls ``<store>/.lock`` every 2 ms and sums the time the
fit's PID holds it. One second into the fit, an ``ingest`` of one new run is started with the
default lock timeout (10 s): its exit code and wall seconds are reported (it fails on a tree
whose fit holds the lock for longer than that).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def build_store(size: str, work: Path) -> tuple[Path, Path]:
    """(store with runs tagged fit, a directory holding one extra run's log)."""
    from simfluence_cli.io.synthetic import make_runs, write_jsonl
    from simfluence_cli.store.run_store import RunStore

    store, extra = work / f"store-{size}", work / f"extra-{size}"
    if size == "demo":
        RunStore(store, create=True).ingest([ROOT / "sample_runs" / "fit"], tags=["fit"])
        n, m = 300, 100
    else:
        from bench_speed import SIZES, make

        runs, _, _ = make(size, "real")
        RunStore(store, create=True).add_runset(runs, tags=["fit"])
        n, m = SIZES[size][:2]
    rs, _, _ = make_runs(n, m, 1, 20, 4, seed=99, noise=0.01)
    rs.runs[0].run_id = "extra-run"
    write_jsonl(rs, extra)
    return store, extra


def lock_pid(store: Path) -> int | None:
    try:
        return json.loads((store / ".lock").read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


def one_fit(tree: Path, store: Path, extra: Path, fit_args: list[str], what="fit") -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1"}
    env.pop("SIMFLUENCE_LOCK_TIMEOUT", None)
    cmd = [sys.executable, "-m", "simfluence_cli", "fit", "--store", str(store), "--runs", "fit"]
    cmd += [*fit_args, "--name", "m", "--replace"]
    if what == "calibrate":
        cmd = [sys.executable, "-m", "simfluence_cli", "calibrate", "--store", str(store)]
        cmd += ["-m", "m", "--force"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    # cwd outside any checkout: `python -m` puts the cwd first on sys.path, before PYTHONPATH
    run = {"env": env, "cwd": "/", "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    p = subprocess.Popen(cmd, text=True, **run)
    held, since, ingest, first_lock, ingest_end = 0.0, None, None, None, None
    while p.poll() is None:
        now = time.perf_counter()
        mine = lock_pid(store) == p.pid
        if mine and since is None:
            since = now
            first_lock = first_lock if first_lock is not None else now - t0
        elif not mine and since is not None:
            held += now - since
            since = None
        if ingest is not None and ingest_end is None and ingest[1].poll() is not None:
            ingest_end = now
        if ingest is None and now - t0 > 1.0:
            ingest = (
                now,
                subprocess.Popen(
                    [sys.executable, "-m", "simfluence_cli", "ingest", str(extra)]
                    + ["--store", str(store)],
                    text=True,
                    **run,
                ),
            )
        time.sleep(0.002)
    end = time.perf_counter()
    if since is not None:
        held += end - since
    err = p.stderr.read()
    assert p.returncode == 0, err
    probe = "import simfluence_cli, sys; print(simfluence_cli.__file__)"
    used = subprocess.run([sys.executable, "-c", probe], env=env, cwd="/", capture_output=True)
    assert used.stdout.decode().startswith(str(tree)), used.stdout
    out = {
        "command": what,
        "tree": str(tree),
        "fit_wall_s": round(end - t0, 2),
        "lock_held_s": round(held, 3),
        "first_lock_at_s": None if first_lock is None else round(first_lock, 2),
        "load_avg_1m": round(load, 2),
    }
    if ingest is not None:
        i0, ip = ingest
        ip.wait()
        out["ingest_exit"] = ip.returncode
        out["ingest_wall_s"] = round((ingest_end or time.perf_counter()) - i0, 2)
        out["ingest_error"] = ip.stderr.read().strip()[:120] if ip.returncode else ""
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--baseline", default=None, help="tree to compare with (e.g. an older checkout)"
    )
    ap.add_argument("--sizes", default="demo,M")
    ap.add_argument("--fit-args", default="", help="extra fit options, e.g. '--l2 1'")
    ap.add_argument("--work", default=None)
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="also time `calibrate -m m --force` after each tree's fit (same ingest probe)",
    )
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="sf-fitlock-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        store, extra = build_store(size, work)
        pristine = work / f"pristine-{size}"
        shutil.copytree(store, pristine)
        for tree in ([Path(args.baseline)] if args.baseline else []) + [ROOT]:
            shutil.rmtree(store)
            shutil.copytree(pristine, store)
            r = {"size": size, **one_fit(tree, store, extra, args.fit_args.split())}
            print(json.dumps(r), flush=True)
            rows.append(r)
            if args.calibrate:
                extra_cal = work / f"extra-cal-{size}"
                if not extra_cal.exists():  # another run id (the file name): the first is in
                    extra_cal.mkdir()
                    for f in extra.iterdir():
                        shutil.copy(f, extra_cal / f.name.replace("extra-run", "extra-run-2"))
                r = {"size": size, **one_fit(tree, store, extra_cal, [], "calibrate")}
                print(json.dumps(r), flush=True)
                rows.append(r)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Ingest throughput and memory: encoding B (CSV long tables) and encoding A (JSON Lines).

Generates synthetic logs (random curricula, losses logged at every step for every test), runs
`simfluence ingest` as a child process per encoding and measures wall time, the ingest's own
time (from its --json report), loss rows per second and the child's peak RSS (wait4 rusage).

    .venv/bin/python bench/bench_ingest.py                 # 10 M loss rows per encoding
    .venv/bin/python bench/bench_ingest.py --rows 2000000  # quicker

Targets (issue 2): >= 2,000,000 loss rows/s for CSV, >= 300,000 for JSON Lines, peak RSS
< 1 GB on a 10-million-row input. Prints a markdown block. The load average before each run
is printed too: on a shared 2-core machine other processes slow the wall-clock figures; the
child's CPU time (user+sys) does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from _machine import cpu_model


def gen_tables(d: Path, runs: int, steps: int, tests: int, batch: int, pool: int, seed: int = 0):
    """Encoding B: curriculum.csv and losses.csv, written run by run (bounded memory)."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    test_ids = np.asarray([f"test-{j:05d}" for j in range(tests)], dtype=object)
    ex_ids = np.asarray([f"ex-{i:06d}" for i in range(pool)], dtype=object)
    cur_schema = pa.schema(
        [("run", pa.string()), ("step", pa.int64()), ("example_id", pa.string())]
    )
    loss_schema = pa.schema(
        [
            ("run", pa.string()),
            ("step", pa.int64()),
            ("test_id", pa.string()),
            ("loss", pa.float64()),
        ]
    )
    with (
        pacsv.CSVWriter(str(d / "curriculum.csv"), cur_schema) as cw,
        pacsv.CSVWriter(str(d / "losses.csv"), loss_schema) as lw,
    ):
        for r in range(runs):
            rid = f"run-{r:04d}"
            n = steps * batch
            cw.write_table(
                pa.table(
                    {
                        "run": pa.array([rid] * n),
                        "step": np.repeat(np.arange(1, steps + 1), batch),
                        "example_id": pa.array(ex_ids[rng.integers(0, pool, n)].tolist()),
                    },
                    schema=cur_schema,
                )
            )
            k = (steps + 1) * tests
            lw.write_table(
                pa.table(
                    {
                        "run": pa.array([rid] * k),
                        "step": np.repeat(np.arange(steps + 1), tests),
                        "test_id": pa.array(np.tile(test_ids, steps + 1).tolist()),
                        "loss": rng.uniform(0.1, 3.0, k),
                    },
                    schema=loss_schema,
                )
            )


def gen_jsonl(d: Path, runs: int, steps: int, tests: int, batch: int, pool: int, seed: int = 1):
    """Encoding A: one <run>.jsonl per run."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    test_ids = [f"test-{j:05d}" for j in range(tests)]
    ex_ids = [f"ex-{i:06d}" for i in range(pool)]
    for r in range(runs):
        L = rng.uniform(0.1, 3.0, (steps + 1, tests)).tolist()
        B = rng.integers(0, pool, (steps, batch)).tolist()
        with open(d / f"run-{r:04d}.jsonl", "w") as fh:
            for t in range(steps + 1):
                fh.write(
                    json.dumps(
                        {
                            "step": t,
                            "batch": [] if t == 0 else [ex_ids[i] for i in B[t - 1]],
                            "loss": dict(zip(test_ids, L[t])),
                        }
                    )
                    + "\n"
                )


def run_ingest(src: Path, store: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "simfluence_cli",
        "-q",
        "ingest",
        str(src),
        "--store",
        str(store),
        "--json",
    ]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ingest failed: {err.decode()}")
    rep = json.loads(out)
    return {
        "cmd": " ".join(["simfluence", *cmd[3:]]),
        "wall_s": wall,
        "ingest_s": rep["seconds"],
        "loss_rows": rep["loss_rows"],
        "runs": rep["runs"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "load": load,
    }


def machine() -> dict:
    cpu = cpu_model()
    import pyarrow

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="loss rows per encoding")
    ap.add_argument("--tests", type=int, default=200, help="test examples per run")
    ap.add_argument("--steps", type=int, default=1000, help="training steps per run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pool", type=int, default=20_000, help="training examples")
    ap.add_argument("--encodings", default="table,jsonl")
    ap.add_argument("--workdir", default=None, help="where to generate (default: a temp dir)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    runs = max(1, round(a.rows / ((a.steps + 1) * a.tests)))
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-ingest-"))
    results = []
    try:
        for enc in a.encodings.split(","):
            src = work / f"src-{enc}"
            t0 = time.perf_counter()
            (gen_tables if enc == "table" else gen_jsonl)(
                src, runs, a.steps, a.tests, a.batch, a.pool
            )
            gen_s = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
            store = work / f"store-{enc}"
            shutil.rmtree(store, ignore_errors=True)
            r = run_ingest(src, store)
            r.update(encoding=enc, input_mb=size / 2**20, gen_s=gen_s)
            results.append(r)
            shutil.rmtree(store, ignore_errors=True)
            if not a.keep:
                shutil.rmtree(src, ignore_errors=True)
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    m = machine()
    target = {"table": 2_000_000, "jsonl": 300_000}
    print("```")
    print(
        f"$ .venv/bin/python bench/bench_ingest.py --rows {a.rows} --tests {a.tests} "
        f"--steps {a.steps} --batch {a.batch} --pool {a.pool}"
    )
    print(
        f"machine: {m['nproc']} CPU(s), {m['cpu']}, {m['os']}; python {m['python']}, "
        f"numpy {m['numpy']}, pyarrow {m['pyarrow']}"
    )
    print(
        f"input: {runs} runs x {a.steps} steps x {a.tests} tests (+ step 0), batch {a.batch}, "
        f"pool {a.pool}"
    )
    print("```")
    print()
    print(
        "| encoding | input | loss rows | ingest time | wall (incl. startup) | rows/s (ingest) "
        "| rows/s (wall) | target rows/s | peak RSS | CPU s (user+sys) | rows per CPU-second "
        "| load avg before |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rate = r["loss_rows"] / r["ingest_s"]
        ok = "ok" if rate >= target[r["encoding"]] and r["peak_rss_mb"] < 1024 else "MISSED"
        print(
            f"| {r['encoding']} | {r['input_mb']:.0f} MB | {r['loss_rows']:,} | "
            f"{r['ingest_s']:.2f} s | {r['wall_s']:.2f} s | {rate:,.0f} | "
            f"{r['loss_rows'] / r['wall_s']:,.0f} | {target[r['encoding']]:,} ({ok}) | "
            f"{r['peak_rss_mb']:.0f} MB | {r['cpu_s']:.2f} | {r['loss_rows'] / r['cpu_s']:,.0f} "
            f"| {r['load']:.1f} |"
        )


if __name__ == "__main__":
    main()

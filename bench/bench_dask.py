"""Issue 15 item 5: a measured Dask fit of a store too large for the dense form.

    .venv/bin/python bench/bench_dask.py                          # 100k train x 200 tests
    .venv/bin/python bench/bench_dask.py --train 20000 --tests 40 --steps 500   # a quick look

Generates runs with a known Linear simulator in the decaying ("real") regime of
bench_speed.py (64 runs x 2,000 steps, batch 8 by default), writes them into a run store,
then fits every test example on a ``distributed.LocalCluster`` of worker processes, each with
a memory limit, the workers loading the runs from the store themselves (as on a cluster with
a shared file system). Reported: wall and CPU seconds, each worker's peak RSS (against its
limit and against what the dense form would need), and the largest relative difference of the
parameters from an in-process fit of a sample of the tests (same solver, same tolerance).
Run it under ``nice``; the machine is shared and the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import cpu_model
from bench_speed import real_params

from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet
from simfluence_cli.store.run_store import RunStore

GiB = 2**30


def line(name, **kw):
    kw["loadavg"] = round(os.getloadavg()[0], 1)
    print(json.dumps({"bench": name, **kw}), flush=True)
    return kw


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM of /proc/self/status, the high-water
    mark of this process image. (getrusage's ru_maxrss survives exec, so a spawned Dask
    worker would report at least its parent's RSS at spawn time: the coordinator's.)"""
    try:
        with open("/proc/self/status") as fh:
            for ln in fh:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) * 1024
    except OSError:  # not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (run on each Dask worker)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_subset(runs: RunSet, cols: np.ndarray) -> RunSet:
    """The same runs restricted to the test columns ``cols``."""
    return RunSet(
        runs.example_ids,
        [runs.test_ids[j] for j in cols],
        [
            r.__class__(r.run_id, r.batch_ptr, r.batch_idx, r.loss_steps, r.losses[:, cols])
            for r in runs.runs
        ],
    )


def load_costs(runs: RunSet, n_shards: int) -> dict:
    """What a worker does before solving, measured here: load the runs from the store and
    build the design, of every test column (before: once per worker) and of one shard's
    columns (now: once per shard). CPU seconds and the traced peak of allocations (numpy
    reports its buffers to tracemalloc)."""
    import tracemalloc

    from simfluence_cli.model.normal_equations import Design
    from simfluence_cli.model.sharding import shards

    out = {}
    first = shards(runs.n_tests, n_shards)[0]
    for name, tests in [("all_columns", None), ("one_shard", runs.test_ids[first].tolist())]:
        tracemalloc.start()
        c0 = time.process_time()
        design = Design(runs.source.load(runs.run_ids, tests=tests))
        cpu = time.process_time() - c0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[name] = {
            "tests": design.n_tests,
            "cpu_s": round(cpu, 2),
            "traced_peak_gib": round(peak / GiB, 3),
        }
        del design
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--tests", type=int, default=200)
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="2GiB", help="per Dask worker")
    ap.add_argument("--check-tests", type=int, default=6, help="tests refit in-process")
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)

    from distributed import Client, LocalCluster

    n, m, R, T, b = a.train, a.tests, a.runs, a.steps, a.batch
    P = 2 * n
    line(
        "machine",
        cpu=cpu_model(),
        nproc=os.cpu_count(),
        mem_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
        python=sys.version.split()[0],
    )
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-dask-"))
    store_path = work / "store"

    t0 = time.perf_counter()
    rng = np.random.default_rng(7)
    params = real_params(n, m, b, seed=0)
    runs, _, _ = make_runs(n, m, R, T, b, seed=0, params=params, init_loss=rng.uniform(1, 3, m))
    del params
    if store_path.exists():
        import shutil

        shutil.rmtree(store_path)
    store = RunStore(store_path, create=True)
    store.add_runset(runs, tags=["fit"])
    del runs
    line("store", seconds=round(time.perf_counter() - t0, 1), path=str(store_path))

    runs = store.load("fit")  # carries the store as its source: Dask workers load it themselves
    dense = {
        "design_dense_gib": round(R * T * P * 8 / GiB, 1),
        "normal_matrix_per_test_gib": round(P * P * 8 / GiB, 1),
        "params_all_tests_gib": round(P * m * 8 / GiB, 2),
    }
    line("sizes", train=n, tests=m, runs=R, steps=T, batch=b, params_per_test=P, **dense)

    cluster = LocalCluster(
        n_workers=a.workers,
        threads_per_worker=1,
        memory_limit=a.memory_limit,
        processes=True,
        dashboard_address=None,
    )
    client = Client(cluster)
    try:
        cpu0 = sum(client.run(cpu_seconds).values())
        t0, c0 = time.perf_counter(), time.process_time()
        sim = Simulator(method="linear", l2=a.l2).fit(runs, solver="cg", dask=client)
        wall = time.perf_counter() - t0
        coord_cpu = time.process_time() - c0
        worker_cpu = sum(client.run(cpu_seconds).values()) - cpu0
        rss = client.run(peak_rss_bytes)
        stats = dict(sim.solver_stats_)
    finally:
        client.close()
        cluster.close()
    line(
        "dask_fit",
        wall_s=round(wall, 1),
        cpu_s_workers=round(worker_cpu, 1),
        cpu_s_coordinator=round(coord_cpu, 1),
        worker_peak_rss_gib=[round(v / GiB, 2) for v in rss.values()],
        memory_limit=a.memory_limit,
        coordinator_peak_rss_gib=round(peak_rss_bytes() / GiB, 2),
        cg_iterations_max=stats.get("cg_iterations_max"),
        shards=stats.get("shards"),
        source=stats.get("source"),
    )

    line("worker_load", **load_costs(runs, stats.get("shards") or 1))

    cols = np.sort(np.random.default_rng(1).choice(m, size=min(a.check_tests, m), replace=False))
    t0, c0 = time.perf_counter(), time.process_time()
    ref = Simulator(method="linear", l2=a.l2).fit(test_subset(runs, cols), solver="cg")
    wall1, cpu1 = time.perf_counter() - t0, time.process_time() - c0
    A, B = sim.A_[:, cols], sim.B_[:, cols]
    scale = max(np.max(np.abs(ref.A_)), np.max(np.abs(ref.B_)))
    diff = max(np.max(np.abs(A - ref.A_)), np.max(np.abs(B - ref.B_))) / scale
    line(
        "single_process_check",
        tests=[runs.test_ids[j] for j in cols],
        wall_s=round(wall1, 1),
        cpu_s=round(cpu1, 1),
        max_rel_diff=float(f"{diff:.3g}"),
        cpu_s_per_test_single=round(cpu1 / len(cols), 2),
        cpu_s_per_test_dask=round(worker_cpu / m, 2),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`top --measure removal`: exact removal deltas against re-rolling every removal (issue 15).

    .venv/bin/python bench/bench_top.py                      # builds /tmp/simfluence-bench-top
    .venv/bin/python bench/bench_top.py --store demo-store --repeat 3
    .venv/bin/python bench/bench_top.py --store S --model oa --baseline-rev ae40338  # optimizer-aware

Measured in one run, on the demo store's data (300 train x 100 tests, 48 fit runs x 250 steps,
batch 4; model `linear`, --l2 auto, clip observed):

1. in process, CPU seconds (``time.process_time``) of the removal effect over all tests:
   the previous algorithm (kept below as ``removal_effect_rerolled``: per run, every present
   example's curriculum rolled again from its first occurrence) against
   ``analysis.effects.removal_effect`` (``model.rollout.removal_deltas``); their largest
   difference; peak traced memory of the new path (tracemalloc, a separate untimed run);
2. with ``--m-size``: the same on a synthetic M-size problem (2,000 train x 200 tests, 64 runs
   x 500 steps, batch 8), the re-roll timed on 2 runs only and scaled to 64;
3. the command `top --test all --k 5` as a child process (CPU = user + sys of the child),
   this tree against a baseline revision exported with ``git archive`` (``--baseline-rev``,
   default: the commit before this work) and run with the same interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import cpu_model

from simfluence_cli.analysis.effects import removal_effect
from simfluence_cli.analysis.evaluation import example_map
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import load_model

BASELINE_REV = "5a4b75c"  # main before exact removal deltas


def removal_effect_rerolled(sim, runs, unseen="skip"):
    """The previous removal_effect (all tests): re-roll each one-example-removed curriculum."""
    n, M = len(sim.example_ids_), len(sim.test_ids_)
    tests = list(sim.test_ids_)
    tpos = {t: j for j, t in enumerate(runs.test_ids)}
    rcols = np.asarray([tpos[t] for t in tests])
    mapping = example_map(sim, runs.example_ids, unseen)
    total = np.zeros((n, M))
    neutral = sim.with_no_change_example("\x00neutral")
    for run in runs.runs:
        raw = run.index_matrix()
        base = np.where(raw < 0, -1, mapping[np.maximum(raw, 0)])
        T, b = base.shape
        L0 = run.losses[0, rcols]
        traj = sim.simulate(base[None], L0, tests=tests, lengths=[T])[0]
        final = traj[T]
        present = np.unique(base[(base >= 0) & (base < n)])
        hit = np.zeros((T, n + 1), dtype=bool)
        r_, c_ = np.nonzero(base >= 0)
        hit[r_, base[r_, c_]] = True
        first = np.argmax(hit[:, present], axis=0)
        order = np.argsort(first, kind="stable")
        present, first = present[order], first[order]
        per = max(1, int(128 * 2**20 // max(1, (T + 1) * max(M, b) * 8)))
        for s in range(0, len(present), per):
            ex = present[s : s + per]
            t0 = int(first[s])
            sub = base[t0:]
            idx = np.where(sub[None] == ex[:, None, None], n, sub[None])
            out = neutral.simulate(idx, traj[t0], tests=tests, lengths=[T - t0] * len(ex))
            total[ex] += out[:, T - t0] - final
    return total / len(runs)


def _oa_rerolled(sim, runs, unseen="skip"):
    """The previous removal_effect of optimizer-aware models: every removal rolled from step 0
    (``analysis.effects._removal_rerolled``)."""
    from simfluence_cli.analysis.effects import _removal_rerolled

    tests = list(sim.test_ids_)
    tpos = {t: j for j, t in enumerate(runs.test_ids)}
    rcols = np.asarray([tpos[t] for t in tests])
    mapping = example_map(sim, runs.example_ids, unseen)
    bases = [
        np.where(r.index_matrix() < 0, -1, mapping[np.maximum(r.index_matrix(), 0)])
        for r in runs.runs
    ]
    L0s = [r.losses[0, rcols] for r in runs.runs]
    neutral = sim.with_no_change_example("\x00neutral")
    return _removal_rerolled(sim, neutral, bases, L0s, tests, None) / len(runs)


def cli(args, pythonpath):
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "simfluence_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=pythonpath,  # python -m puts the working directory first on sys.path
    )
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"simfluence {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return cpu, wall, load, r.stdout


def build_store(store: Path) -> None:
    if store.exists():
        shutil.rmtree(store)
    for fam in ("fit", "heldout-random", "heldout-leave30", "heldout-classordered"):
        fam_dir = str(ROOT / "sample_runs" / fam)
        cli(["ingest", fam_dir, "--tag", fam, "--store", str(store), "-q"], ROOT)
    fit = ["fit", "--store", str(store), "--runs", "fit", "--method", "linear"]
    cli([*fit, "--l2", "auto", "--name", "linear", "-q"], ROOT)


def best(fn, repeat):
    out = None
    for _ in range(repeat):
        t0 = time.process_time()
        res = fn()
        cpu = time.process_time() - t0
        out = (cpu, res) if out is None or cpu < out[0] else out
    return out


def m_size() -> None:
    from simfluence_cli.io.synthetic import make_params, make_runs
    from simfluence_cli.model.simulator import Simulator

    N, M, R, T, b = 2000, 200, 64, 500, 8
    A, B = make_params(N, M, b, seed=0)
    rs, _, _ = make_runs(N, M, R, T, b, seed=0, params=(A, B))
    rng = (np.zeros(M), np.full(M, 10.0))
    sim = Simulator.from_params(A, B, rs.example_ids, rs.test_ids, batch_size=b, loss_range=rng)
    load = os.getloadavg()[0]
    t = time.process_time()
    removal_effect(sim, rs)
    cpu_new = time.process_time() - t
    two = rs.subset([r.run_id for r in rs.runs[:2]])
    t = time.process_time()
    old = removal_effect_rerolled(sim, two)
    cpu_old = (time.process_time() - t) * R / 2
    diff = float(np.max(np.abs(removal_effect(sim, two) - old)))
    print(f"\n## M size: {N} train x {M} tests, {R} runs x {T} steps, batch {b}\n")
    print("| path | CPU s | ratio to re-roll | load (1 min) |")
    print("|---|---|---|---|")
    print(f"| re-roll (2 runs timed, x {R // 2}) | {cpu_old:.1f} | 1.00 | {load:.1f} |")
    print(f"| exact deltas | {cpu_new:.2f} | {cpu_new / cpu_old:.3f} | |")
    print(f"\nmax |difference| on the 2 runs {diff:.1e} (largest effect {np.abs(old).max():.1e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="best (lowest CPU) of this many")
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--m-size", action="store_true", help="also the synthetic M-size problem")
    ap.add_argument("--model", default="linear", help="saved model (optimizer-aware: oa_removal)")
    a = ap.parse_args()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}")
    store = a.store
    if store is None:
        store = Path(tempfile.gettempdir()) / "simfluence-bench-top"
        build_store(store)
    st = RunStore(store)
    sim = load_model(st, a.model)
    rs = st.load(list(sim.run_ids_))
    n, m = len(sim.example_ids_), len(sim.test_ids_)
    print(
        f"store: {store}; model {a.model} ({sim.method}), {n} train x {m} tests, {len(rs)} runs; "
        f"clip {sim.clip}"
    )

    load = os.getloadavg()[0]
    reroll = removal_effect_rerolled
    if sim.method == "optimizer-aware":  # its state: the previous path rolled from step 0
        reroll = _oa_rerolled
    cpu_old, old = best(lambda: reroll(sim, rs), a.repeat)
    cpu_new, new = best(lambda: removal_effect(sim, rs), a.repeat)
    diff = float(np.max(np.abs(new - old)))
    rel = diff / float(np.max(np.abs(old)))
    tracemalloc.start()
    removal_effect(sim, rs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print("\n## removal effect, in process (all tests)\n")
    print("| path | CPU s | ratio to re-roll | load (1 min) |")
    print("|---|---|---|---|")
    print(f"| re-roll every removal (previous) | {cpu_old:.3f} | 1.00 | {load:.1f} |")
    print(f"| exact deltas | {cpu_new:.3f} | {cpu_new / cpu_old:.3f} | |")
    print(f"\nmax |difference| {diff:.2e} (relative to the largest effect {rel:.2e});")
    print(f"peak traced memory of the exact path {peak / 2**20:.1f} MiB")

    if a.m_size:
        m_size()

    top = ["top", "--store", str(store), "--model", a.model, "--test", "all", "--k", "5"]
    top += ["--format", "json", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp)
        arch = subprocess.run(
            ["git", "-C", str(ROOT), "archive", a.baseline_rev, "simfluence_cli"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(ref)], input=arch, check=True)
        rows = []
        for label, path in ((f"baseline {a.baseline_rev}", ref), ("this tree", ROOT)):
            runs = [cli(top, path) for _ in range(a.repeat)]
            rows.append((label, *min(runs, key=lambda r: r[0])))
    info = min(cli(["info", "--store", str(store), "-q"], ROOT)[0] for _ in range(a.repeat))
    print("\n## `top --test all --k 5` (child process)\n")
    print("| code | CPU s | ratio to baseline | wall s | load (1 min) |")
    print("|---|---|---|---|---|")
    for label, cpu, wall, load, _ in rows:
        print(f"| {label} | {cpu:.2f} | {cpu / rows[0][1]:.3f} | {wall:.2f} | {load:.1f} |")
    r0, r1 = (json.loads(r[4])["results"] for r in rows)
    same = [(r["direction"], r["example_id"]) for r in r0] == [
        (r["direction"], r["example_id"]) for r in r1
    ]
    dv = max(abs(x["removal_effect"] - y["removal_effect"]) for x, y in zip(r0, r1))
    print(f"\nsame examples in the same order: {same}; largest value difference {dv:.1e}")
    print(f"fixed cost for comparison: `info` on the same store {info:.2f} s CPU")


if __name__ == "__main__":
    main()

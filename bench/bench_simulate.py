"""simulate at scale: 1,000 curricula x 1,000 tests x 2,000 steps (issue 15, item 4).

    .venv/bin/python bench/bench_simulate.py                   # the target size
    .venv/bin/python bench/bench_simulate.py --steps 200       # a tenth of the work
    .venv/bin/python bench/bench_simulate.py --skip-previous --numba-threads 2,1
    .venv/bin/python bench/bench_simulate.py --method optimizer-aware --numba-threads 2,1 --numpy-steps 200
    .venv/bin/python bench/bench_simulate.py --calls-ab 3 --tests 256


``Simulator.simulate(..., return_="final")`` on bench_scale.py's problem (N = 20,000 train
examples, batch 8, Linear parameters, losses clamped to [0, 10]), default threads. Timed in the
same run: the previous kernel (every rollout chunk 128 test columns wide: this module sets
``model.rollout.BLOCK_COLS = ROLLOUT_COLS``, which is exactly the code before cache blocking)
and the cache-blocked kernel, each in float64 and float32. Reported: wall and CPU seconds
(this process, all threads), ratios to the first row's CPU seconds, whether blocked and
unblocked results are bit-identical, and float32's largest deviation from float64 (max |diff| /
max |float64|, and the largest elementwise relative deviation where |float64| > 1e-3).
The numpy rows run with SIMFLUENCE_KERNELS=numpy. When numba is installed (the ``fast`` extra)
the compiled float64 kernel (model/_kernels.py) is timed too, at each ``--numba-threads``, after
one small untimed call that loads (or first compiles) it; its deviation from the numpy float64
result is reported.

``--method optimizer-aware`` times the optimizer-aware rollout (model/optimizer_aware.py) on the
same problem instead: a = A - 1/b and B from the same Linear parameters (so with w = 1, no AR,
no basis and the identity transform it would be the Linear rollout), AR rho ~ U(0, 0.6), 8 hat
functions of drift with gamma ~ N(0, 1e-4), the log transform, a cosine lr schedule (lr_ref
the median, so w varies 0.1-1.9 around 1), clamp [0, 10] in loss space. Rows: the numpy
path (``--numpy-steps`` limits it to the first steps: its CPU seconds are then scaled to all
steps, labelled as such), the compiled kernel at each ``--numba-threads``, and the Linear
compiled kernel on the same problem in the same run (the ratio the target asks for). The
compiled OA result is compared with the numpy one on the steps the numpy path ran.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import cpu_model

import simfluence_cli.model.rollout as ro
from simfluence_cli.io.synthetic import make_params
from simfluence_cli.model.simulator import Simulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curricula", type=int, default=1000)
    ap.add_argument("--tests", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--examples", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--skip-previous", action="store_true", help="time the blocked kernel only")
    ap.add_argument(
        "--numba-threads", default="", help="comma-separated thread counts for numba (default: all)"
    )
    ap.add_argument("--method", choices=["linear", "optimizer-aware"], default="linear")
    ap.add_argument("--numpy-steps", type=int, default=0, help="OA numpy path: first steps only")
    ap.add_argument(
        "--calls-ab",
        type=int,
        default=0,
        help="REPS: compiled kernels in ~0.5 s calls vs one call, alternating, REPS times each",
    )
    a = ap.parse_args()
    if a.calls_ab:
        return calls_ab(a)
    if a.method == "optimizer-aware":
        return optimizer_aware(a)
    C, M, T, N, b = a.curricula, a.tests, a.steps, a.examples, a.batch
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()},")
    print(f"  numpy {np.__version__}; load average {os.getloadavg()}")
    from simfluence_cli.model.solvers import default_threads

    has_numba = ro.numba_available()
    if has_numba:
        import numba

        print(f"  numba {numba.__version__}; default threads {default_threads()}")
    print(f"problem: {C} curricula x {M} tests x {T} steps, N = {N}, batch {b}")
    A, B = make_params(N, M, b, seed=0)
    sim = Simulator.from_params(
        A,
        B,
        [f"e{i}" for i in range(N)],
        [f"t{j}" for j in range(M)],
        batch_size=b,
        loss_range=(np.zeros(M), np.full(M, 10.0)),
    )
    rng = np.random.default_rng(1)
    idx = rng.integers(0, N, (C, T, b))
    L0 = rng.uniform(1, 3, M)
    blocked_cols = ro.BLOCK_COLS
    rows, outs = [], {}
    kernels = [("blocked", blocked_cols)]
    if not a.skip_previous:
        kernels.insert(0, ("previous", ro.ROLLOUT_COLS))
    os.environ[ro.KERNELS_ENV] = "numpy"
    for label, cols in kernels:
        ro.BLOCK_COLS = cols
        for prec in ("float64", "float32"):
            load = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            out = sim.simulate(idx, L0, return_="final", precision=prec)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            outs[label, prec] = out
            width = ro.chunk_cols(N, C, 4 if prec == "float32" else 8)
            rows.append((label, prec, width, wall, cpu, load))
            print(f"  {label} {prec}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    ro.BLOCK_COLS = blocked_cols
    if has_numba:
        os.environ[ro.KERNELS_ENV] = "numba"
        c0 = time.process_time()
        sim.simulate(idx[:2, :3], L0, return_="final")  # loads (or compiles) the kernel
        print(f"  numba kernel load: {time.process_time() - c0:.2f} s CPU", flush=True)
        counts = [int(x) for x in a.numba_threads.split(",") if x] or [default_threads()]
        import simfluence_cli.model.solvers as solvers
        from simfluence_cli.model import _kernels

        for th in counts:
            solvers.default_threads = lambda th=th: th  # rollout's thread count
            load = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            out = sim.simulate(idx, L0, return_="final")
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            outs["numba", th] = out
            rows.append((f"numba, {th} thread(s)", "float64", _kernels.BLOCK_COLS, wall, cpu, load))
            print(f"  numba {th} thread(s): {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        del os.environ[ro.KERNELS_ENV]
        solvers.default_threads = default_threads
    base = rows[0]
    print("\n| kernel | precision | columns per chunk | wall s | CPU s | CPU ratio | load |")
    print("|---|---|---|---|---|---|---|")
    for label, prec, width, wall, cpu, load in rows:
        print(
            f"| {label} | {prec} | {width} | {wall:.1f} | {cpu:.1f} | {cpu / base[4]:.2f} "
            f"| {load:.1f} |"
        )
    if not a.skip_previous:
        for prec in ("float64", "float32"):
            same = np.array_equal(outs["previous", prec], outs["blocked", prec])
            print(f"\nblocked == previous ({prec}), bit for bit: {same}")
    f64, f32 = outs["blocked", "float64"], outs["blocked", "float32"]
    dev = float(np.max(np.abs(f32 - f64)) / np.max(np.abs(f64)))
    big = np.abs(f64) > 1e-3
    rel = float(np.max(np.abs(f32 - f64)[big] / np.abs(f64)[big]))
    print(f"float32 vs float64: max |diff| / max |float64| = {dev:.2e}; ", end="")
    print(f"largest relative deviation where |float64| > 1e-3: {rel:.2e}")
    for key in [k for k in outs if k[0] == "numba"]:
        got = outs[key]
        same = np.array_equal(got, f64)
        dev = float(np.max(np.abs(got - f64) / np.maximum(np.abs(f64), 1e-300)))
        print(f"numba ({key[1]} thread(s)) vs numpy float64: bit for bit {same}; ", end="")
        print(f"largest elementwise relative deviation {dev:.1e}")


def _timed(fn):
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0, load


def optimizer_aware(a) -> None:
    """The optimizer-aware rollout at the target size: numpy path vs compiled kernel, and the
    Linear compiled kernel on the same problem (see the module docstring)."""
    import simfluence_cli.model.optimizer_aware as oa
    import simfluence_cli.model.solvers as solvers

    C, M, T, N, b = a.curricula, a.tests, a.steps, a.examples, a.batch
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()},")
    print(f"  numpy {np.__version__}; load average {os.getloadavg()}")
    print(f"problem: optimizer-aware, {C} curricula x {M} tests x {T} steps, N = {N}, batch {b}")
    A, B = make_params(N, M, b, seed=0)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, N, (C, T, b))
    L0 = rng.uniform(1, 3, M)
    H = 8
    rho = rng.uniform(0.0, 0.6, M)
    gamma = rng.normal(0.0, 1e-4, (M, H))
    lr = 0.55 + 0.5 * np.cos(np.linspace(0, np.pi, T))
    sched = oa.Schedule(float(np.median(lr)), float(b), T, lr)
    w = oa.curriculum_weights(sched, idx, None)
    phi = oa.hat_basis(np.arange(1, T + 1), H, T)
    lo, hi = np.zeros(M), np.full(M, 10.0)
    a_ = A - 1.0 / b

    def roll(steps, threads=None):
        return oa.rollout(
            a_, B, rho, gamma, idx[:, :steps], w[:, :steps], phi[:steps], L0, "log", lo, hi,
            final=True, threads=threads,
        )  # fmt: skip

    rows, outs = [], {}
    Tn = a.numpy_steps or T
    os.environ[ro.KERNELS_ENV] = "numpy"
    out, wall, cpu, load = _timed(lambda: roll(Tn))
    outs["numpy"] = out
    scale = T / Tn
    label = "OA numpy" + (f" ({Tn} steps, x{scale:g})" if Tn < T else "")
    rows.append((label, wall * scale, cpu * scale, load))
    print(f"  {label}: {wall:.1f} s wall, {cpu:.1f} s CPU (unscaled)", flush=True)
    if not ro.numba_available():
        print("numba is not installed: no compiled rows")
        return
    os.environ[ro.KERNELS_ENV] = "numba"
    from simfluence_cli.model.rollout import rollout

    c0 = time.process_time()
    roll(2, 1)
    rollout(A, B, idx[:2, :3], L0, "linear", lo, hi, final=True, threads=1)
    print(f"  numba kernels load: {time.process_time() - c0:.2f} s CPU", flush=True)
    default = solvers.default_threads
    counts = [int(x) for x in a.numba_threads.split(",") if x] or [default()]
    for th in counts:
        out, wall, cpu, load = _timed(lambda th=th: roll(T, th))
        outs["oa", th] = out
        rows.append((f"OA numba, {th} thread(s)", wall, cpu, load))
        print(f"  OA numba {th} thread(s): {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        fin, wall, cpu, load = _timed(
            lambda th=th: rollout(A, B, idx, L0, "linear", lo, hi, final=True, threads=th)
        )
        rows.append((f"Linear numba, {th} thread(s)", wall, cpu, load))
        print(f"  Linear numba {th} thread(s): {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    same = roll(Tn, counts[0]) if Tn < T else outs["oa", counts[0]]
    del os.environ[ro.KERNELS_ENV]
    base = rows[0][2]
    print("\n| rollout | wall s | CPU s | CPU ratio to OA numpy | load |")
    print("|---|---|---|---|---|")
    for label, wall, cpu, load in rows:
        print(f"| {label} | {wall:.1f} | {cpu:.1f} | {cpu / base:.3f} | {load:.1f} |")
    by = {lab: cpu for lab, _, cpu, _ in rows}
    for th in counts:
        r = by[f"OA numba, {th} thread(s)"] / by[f"Linear numba, {th} thread(s)"]
        print(f"OA / Linear compiled CPU, {th} thread(s): {r:.2f}")
    ref = outs["numpy"]
    dev = float(np.max(np.abs(same - ref) / np.maximum(np.abs(ref), 1e-300)))
    print(f"OA numba vs OA numpy ({Tn} steps): bit for bit {np.array_equal(same, ref)}; ", end="")
    print(f"largest elementwise relative deviation {dev:.1e}")
    for th in counts[1:]:
        print(f"OA numba {th} vs {counts[0]} threads bit for bit: ", end="")
        print(np.array_equal(outs["oa", th], outs["oa", counts[0]]))


def calls_ab(a) -> None:
    """The cost of interruptibility: both compiled kernels at the problem size, as many calls
    of ~CALL_WORK_PER_THREAD gather-adds per thread (the default) vs one call for everything
    (CALL_WORK_PER_THREAD = 1e18, the code before), alternating in this process, default
    threads; best and median CPU seconds of each, results compared bit for bit."""
    import simfluence_cli.model.optimizer_aware as oa
    from simfluence_cli.model import _kernels
    from simfluence_cli.model.rollout import rollout
    from simfluence_cli.model.solvers import default_threads

    C, M, T, N, b = a.curricula, a.tests, a.steps, a.examples, a.batch
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()},")
    print(f"  numpy {np.__version__}; load average {os.getloadavg()}; threads {default_threads()}")
    A, B = make_params(N, M, b, seed=0)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, N, (C, T, b))
    L0 = rng.uniform(1, 3, M)
    lo, hi = np.zeros(M), np.full(M, 10.0)
    rho, gamma = rng.uniform(0.0, 0.6, M), rng.normal(0.0, 1e-4, (M, 8))
    w = np.ones((C, T))
    phi = oa.hat_basis(np.arange(1, T + 1), 8, T)
    kernels = {
        "Linear": lambda: rollout(A, B, idx, L0, "linear", lo, hi, final=True),
        "OA": lambda: oa.rollout(
            A - 1 / b, B, rho, gamma, idx, w, phi, L0, "log", lo, hi, final=True
        ),
    }
    os.environ[ro.KERNELS_ENV] = "numba"
    small = idx[:2, :3]
    rollout(A, B, small, L0, "linear", lo, hi, final=True)
    oa.rollout(A - 1 / b, B, rho, gamma, small, w[:2, :3], phi[:3], L0, "log", lo, hi)
    default = _kernels.CALL_WORK_PER_THREAD
    modes = {"calls": default, "one call": 10**18}
    cpu = {(k, md): [] for k in kernels for md in modes}
    outs = {}
    for rep in range(a.calls_ab):
        for k, f in kernels.items():
            for md, work in modes.items() if rep % 2 == 0 else reversed(modes.items()):
                _kernels.CALL_WORK_PER_THREAD = work
                out, wall, c, load = _timed(f)
                _kernels.CALL_WORK_PER_THREAD = default
                cpu[k, md].append(c)
                outs[k, md] = out
                print(f"  {k} {md}: {wall:.1f} s wall, {c:.1f} s CPU, load {load:.1f}", flush=True)
    del os.environ[ro.KERNELS_ENV]
    print("\n| kernel | calls | CPU s best | CPU s median | best ratio to one call | same bits |")
    print("|---|---|---|---|---|---|")
    for k in kernels:
        n_calls = len(_kernels.spans(C, T, b, M, default_threads()))
        one = min(cpu[k, "one call"])
        for md in modes:
            v = cpu[k, md]
            same = np.array_equal(outs[k, md], outs[k, "one call"])
            label = f"{n_calls} calls" if md == "calls" else "1 call"
            print(
                f"| {k} | {label} | {min(v):.2f} | {np.median(v):.2f} | {min(v) / one:.3f} "
                f"| {same} |"
            )


if __name__ == "__main__":
    main()

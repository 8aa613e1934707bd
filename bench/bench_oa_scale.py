"""Optimizer-aware fit at scale (issue 11 item 2, issue 15): OA vs Linear, new vs old OA solver.

    .venv/bin/python bench/bench_oa_scale.py [--only sample,S,M,L] [--regimes easy,decay]
        [--old-tests 32] [--l-tests 16] [--auto] [--json OUT.jsonl]

Sizes (N train x M tests, runs x steps, batch): sample = the bundled plain-SGD fit runs
(300 x 100, 48 x 250); S 400 x 100, 64 x 200, 4; M 2,000 x 200, 64 x 500, 8; L 20,000 x
1,000, 64 x 2,000, 8. Runs come from a known Linear simulator (``synthetic.make_runs``, noise
0.01) in two regimes: ``easy`` (make_params' defaults, mean alpha ~0.99 per step) and
``decay`` (mean alpha 0.96, B > 0: losses decay from 1-3 toward ~0.5, as real runs do).
L is timed on its first ``--l-tests`` test examples (runs generated with that many tests; the
per-test cost is uniform: same chunk size as the full L) and extrapolated to 1,000 tests:
the setup (Linear's sparse design, OA's observations; timed separately in the same run) is
paid once, the rest scales with the number of tests.

Per size and regime, in the same process and run: Linear (l2 = 1, ``solver=auto`` -> CG, at
its default tolerance 1e-10 and at the OA fit's 1e-8) and
optimizer-aware with the costliest fixed configuration (log-odds, AR on, 8 hats, l2 = 1: 9
dense columns per test eliminated), CPU and wall seconds, CG iterations (max over chunks);
the old OA solver (bench/baseline.oa_schur_cg_chunk, chunks of 64 as it ran) on the first
``--old-tests`` tests against the new solver on the same tests, with the largest relative
parameter difference. ``--auto`` also times the fits users run by default (Linear
``l2="auto"``, optimizer-aware with every choice by CV); at L the CV part (fixed: at most 48
test examples) is taken as measured and only the final fit is scaled. Everything single-threaded (threads=1) so CPU seconds compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import cpu_model
from baseline import oa_schur_cg_chunk

from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model import optimizer_aware as oa
from simfluence_cli.model.normal_equations import Design, SparseDesign
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.model.solvers import CG_TOL

SIZES = {  # N train, M test, runs, steps, batch
    "S": (400, 100, 64, 200, 4),
    "M": (2_000, 200, 64, 500, 8),
    "L": (20_000, 1_000, 64, 2_000, 8),
}
CFG = oa.Config("logodds", True, 8, 1.0)
TOL = 1e-8  # the final OA fit's tolerance (min(100 x CG_TOL, 1e-8))


def facts() -> dict:
    import numpy
    import scipy

    return {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def runs_for(size: str, regime: str, m: int | None = None):
    if size == "sample":
        from simfluence_cli.store.run_store import RunStore

        st = RunStore(Path(os.environ.get("TMPDIR", "/tmp")) / "bench-oa-scale-sample", create=True)
        if not st.run_ids():
            st.ingest([str(ROOT / "sample_runs" / "fit")], tags=("fit",))
        return st.load("fit")
    n, m_full, R, T, b = SIZES[size]
    m = m_full if m is None else m
    params = None
    if regime == "decay":
        rng = np.random.default_rng(7)
        A = (1.0 / b) * (1.0 - rng.uniform(0.0, 0.08, (n, m)))  # mean alpha 0.96
        B = rng.uniform(0.0, 0.04, (n, m)) / b  # losses decay toward ~0.5
        params = (A, B)
    runs, _, _ = make_runs(n, m, R, T, b, seed=0, noise=0.01, params=params)
    return runs


def rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def bench(size: str, regime: str, old_tests: int, l_tests: int, auto: bool = False) -> dict:
    m_run = l_tests if size == "L" else None
    runs, t_gen, _ = timed(lambda: runs_for(size, regime, m_run))
    m = runs.n_tests
    m_full = SIZES[size][1] if size in SIZES else m
    scale = m_full / m
    lin, t_lin, c_lin = timed(lambda: Simulator("linear", l2=1.0).fit(runs))
    lin8, _, c_lin8 = timed(lambda: Simulator("linear", l2=1.0).fit(runs, tol=TOL))
    kw = dict(l2=CFG.l2, transform=CFG.transform, ar=CFG.ar, time_basis=CFG.n_basis)
    new, t_new, c_new = timed(lambda: Simulator("optimizer-aware", **kw).fit(runs))
    # old vs new solver on the same first tests, same Observations, single chunk(s) of 64
    sched = oa.Schedule.from_runs(runs)
    obs, _, c_oa_setup = timed(lambda: oa.Observations(runs, sched, CFG.n_basis))
    _, _, c_lin_setup = timed(lambda: SparseDesign(Design(runs), "linear"))
    k = min(old_tests, m)
    cols = np.arange(k)

    def old_fit():
        outs, its = [], []
        for s in range(0, k, 64):
            c = cols[s : s + 64]
            y0, dp, dy, Mk = obs.losses(c, CFG.transform)
            a, B, rho, g, it = oa_schur_cg_chunk(obs, y0, dp, dy, Mk, True, CFG.l2, TOL, 3000)
            outs.append(np.vstack([a, B, rho[None], g.T]))
            its.append(it)
        return np.hstack(outs), max(its)

    (old_theta, old_it), t_old, c_old = timed(old_fit)
    st: dict = {}
    (na, nB, nr, ng, new_it), t_sub, c_sub = timed(
        lambda: oa.fit_params(runs, sched, CFG, cols, obs=obs, tol=TOL, stats=st)
    )
    new_theta = np.vstack([na, nB, nr[None], ng.T])
    out = {
        "size": size,
        "regime": regime,
        "shape": SIZES.get(size, (runs.n_examples, m, len(runs), runs.runs[0].n_steps, None)),
        "tests_timed": m,
        "generate_s": round(t_gen, 1),
        "linear_cpu_s": round(c_lin, 2),
        "linear_wall_s": round(t_lin, 2),
        "linear_cg_iterations": lin.solver_stats_.get("cg_iterations_max"),
        "linear_tol": CG_TOL,
        "linear_at_oa_tol_cpu_s": round(c_lin8, 2),
        "linear_at_oa_tol_cg_iterations": lin8.solver_stats_.get("cg_iterations_max"),
        "oa_tol": TOL,
        "oa_cpu_s": round(c_new, 2),
        "oa_wall_s": round(t_new, 2),
        "oa_cg_iterations": new.solver_stats_.get("cg_iterations_max"),
        "oa_not_converged": new.solver_stats_.get("cg_not_converged"),
        "oa_over_linear_cpu": round(c_new / c_lin, 2),
        "old_tests": k,
        "old_oa_cpu_s": round(c_old, 2),
        "old_oa_iterations": int(old_it),
        "new_oa_same_tests_cpu_s": round(c_sub, 2),
        "new_oa_same_tests_iterations": int(new_it),
        "old_over_new_cpu": round(c_old / c_sub, 1),
        "rel_diff_new_vs_old": rel(new_theta, old_theta),
    }
    if auto:  # the defaults users run: Linear --l2 auto, optimizer-aware all choices by CV
        la, _, c_la = timed(lambda: Simulator("linear", l2="auto").fit(runs))
        oaa, _, c_oaa = timed(lambda: Simulator("optimizer-aware").fit(runs))
        out["linear_auto_cpu_s"] = round(c_la, 2)
        out["oa_auto_cpu_s"] = round(c_oaa, 2)
        out["oa_auto_config"] = oaa.config_.as_dict()
        out["oa_auto_over_linear_auto_cpu"] = round(c_oaa / c_la, 2)
        if scale != 1:  # the CV cost is fixed (its tests <= 48), the final fit scales
            extra_lin = (c_lin - c_lin_setup) * (scale - 1)
            extra_oa = (c_new - c_oa_setup) * (scale - 1)
            out["linear_auto_cpu_s_extrapolated"] = round(c_la + extra_lin, 1)
            out["oa_auto_cpu_s_extrapolated"] = round(c_oaa + extra_oa, 1)
    if scale != 1:  # the setup (design / observations) is paid once, the solves per test

        def ext(c, setup):
            return round(setup + (c - setup) * scale, 1)

        out["extrapolated_to_tests"] = m_full
        out["linear_setup_cpu_s"] = round(c_lin_setup, 2)
        out["oa_setup_cpu_s"] = round(c_oa_setup, 2)
        out["linear_cpu_s_extrapolated"] = ext(c_lin, c_lin_setup)
        out["oa_cpu_s_extrapolated"] = ext(c_new, c_oa_setup)
        out["oa_over_linear_cpu_extrapolated"] = round(
            out["oa_cpu_s_extrapolated"] / out["linear_cpu_s_extrapolated"], 2
        )
        out["old_oa_cpu_s_extrapolated"] = round(c_old * m_full / k, 1)  # solve only
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="sample,S,M,L")
    ap.add_argument("--regimes", default="easy,decay")
    ap.add_argument("--old-tests", type=int, default=32)
    ap.add_argument("--l-tests", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--auto", action="store_true", help="also time the fits with CV choices")
    a = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits  # BLAS on one thread: CPU seconds compare

    from simfluence_cli.model import solvers

    solvers.default_threads = lambda: 1  # in-process chunks on one thread (Linear and OA)
    print("command:", "python bench/bench_oa_scale.py", " ".join(sys.argv[1:]), flush=True)
    print("machine:", json.dumps(facts()), flush=True)
    rows = []
    with threadpool_limits(1):
        for size in a.only.split(","):
            for regime in ["plain-sample"] if size == "sample" else a.regimes.split(","):
                r = bench(size, regime, a.old_tests, a.l_tests, a.auto)
                r["loadavg"] = [round(x, 2) for x in os.getloadavg()]
                print(json.dumps(r), flush=True)
                rows.append(r)
    if a.json:
        Path(a.json).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()

"""Fewer CG iterations or cheaper products for the Linear fit at M and L (issue 15 item 3): the ideas
measured, each against today's solver on the same problem.

    .venv/bin/python bench/bench_cgiters.py kernel [--size M|L] [--tests K] [--regime real]
    .venv/bin/python bench/bench_cgiters.py warm [--size M] [--regime easy] [--basis 8]
    .venv/bin/python bench/bench_cgiters.py precond [--n 1000] [--runs 64] [--steps 250]

* ``kernel``: one ``ChunkSystem.matvec`` (scipy: two CSR and two CSC sparse x dense products
  plus elementwise passes) against a fused numba kernel that makes one pass over the
  observations (gather the batch's rows of [V_A | V_B], form u = Ls * (E V_A) + E V_B, scatter
  [Ls * u | u] back), float64 and float32, on the first chunk ``plan_chunks`` cuts (``--tests``:
  generate only K tests, the chunk is then all of them). Both must be bitwise equal (same
  additions in the same order); CPU ms per product, best of ``--reps``.
* ``warm``: warm starts across tests. A pilot chunk is solved; the next chunk is solved cold
  (from the prior), from the mean of the pilot's solutions, and from the Galerkin projection of
  each test's system on span{prior, K pilot solutions} (K + 1 column-products per test),
  and a penalty continuation (each test solved at l2 = 10 to 1e-4 first, then at l2 = 1 from
  there; iterations of both solves added).
  CG iterations (max, mean) to the same tolerance (float64 products, l2 = 1).
* ``precond``: dense systems of three tests of a reduced problem (``--n`` train examples,
  ``--runs`` x ``--steps``, batch 8), l2 = 1, tol 1e-10: products to convergence of today's 2x2
  block-Jacobi PCG ("bj"), of the minimum-residual iterate over the same Krylov space
  ("minres": what MINRES / conjugate residuals would need, the stopping test being on the
  residual's 2-norm), CG on the Schur complement onto A with the exact inverse of the
  test-independent B block E^T E + l2 I ("schur", + one such solve per iteration), a
  degree-d Chebyshev polynomial of the block-Jacobi-preconditioned operator as preconditioner
  with the exact extreme eigenvalues ("cheb<d>", d - 1 products per application), and a
  two-level preconditioner: block-Jacobi plus an exact coarse solve on aggregates of s
  co-occurring examples (A and B indicator per aggregate, "coarse<s>"; or the sums of the
  examples' 2x2-block eigenvectors, small and large, "coarse<s>_blocks"; 2 n / s products to set
  up; the balancing (BNN) form, whose coarse corrections reuse H Z: no product per iteration).
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

import bench_speed
from _machine import run_facts

from simfluence_cli.model import solvers
from simfluence_cli.model.normal_equations import Design, SparseDesign
from simfluence_cli.model.standardise import loss_scale, rescaled


def _runs(size: str, regime: str, tests: int = 0):
    if tests:
        n, m, R, T, b = bench_speed.SIZES[size]
        bench_speed.SIZES[size] = (n, tests, R, T, b)
    runs, _, _ = bench_speed.make(size, regime)
    return rescaled(runs, loss_scale(runs))  # what Simulator.fit solves


def _theta0(n: int, b: int) -> np.ndarray:
    return np.concatenate([np.full(n, 1.0 / b), np.zeros(n)])


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# --- kernel ------------------------------------------------------------------------------------


def _fused_kernel():
    import numba

    @numba.njit(nogil=True, boundscheck=False, error_model="numpy")
    def fused(indptr, indices, data, Ls, W, out):
        """out += [E^T (Ls * u) | E^T u], u = Ls * (E W_A) + E W_B; W, out (n, 2k)."""
        n_obs, k = Ls.shape
        acc = np.zeros(2 * k, dtype=W.dtype)
        for o in range(n_obs):
            p0, p1 = indptr[o], indptr[o + 1]
            acc[:] = 0
            for p in range(p0, p1):
                e = data[p]
                row = W[indices[p]]
                for j in range(2 * k):
                    acc[j] += e * row[j]
            L = Ls[o]
            for j in range(k):
                u = acc[j] * L[j] + acc[k + j]
                acc[k + j] = u
                acc[j] = u * L[j]
            for p in range(p0, p1):
                e = data[p]
                row = out[indices[p]]
                for j in range(2 * k):
                    row[j] += e * acc[j]

    return fused


def _cpu_ms(fn, reps: int) -> float:
    fn()
    best = np.inf
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best * 1e3


def bench_kernel(a) -> None:
    runs = _runs(a.size, a.regime, a.tests)
    d = Design(runs)
    sd = SparseDesign(d, "linear")
    _, chunks = solvers.plan_chunks(d, "linear", "cg")
    chunk = chunks[0] if not a.tests else np.arange(runs.n_tests)
    cs = sd.chunk(chunk)
    g, _, Ls, _ = cs.parts[0]
    n, k, E = sd.n, len(chunk), g.En
    fused = _fused_kernel()
    for dt, system in ((np.float64, cs), (np.float32, cs.lowered())):
        V = np.random.default_rng(0).normal(size=(2 * n, k)).astype(dt)
        L_ = np.ascontiguousarray(Ls, dtype=dt)
        data = E.data.astype(dt)

        def run(V=V, L_=L_, data=data):
            W = np.hstack([V[:n], V[n:]])
            out = np.zeros_like(W)
            fused(E.indptr, E.indices, data, L_, W, out)
            return np.vstack([out[:, :k], out[:, k:]])

        ref = system.matvec(V)
        t_scipy = _cpu_ms(lambda system=system, V=V: system.matvec(V), a.reps)
        t_fused = _cpu_ms(run, a.reps)
        print(
            json.dumps(
                {
                    "bench": "kernel",
                    "size": a.size,
                    "regime": a.regime,
                    "dtype": np.dtype(dt).name,
                    "n": n,
                    "n_obs": g.n_obs,
                    "chunk_tests": k,
                    "scipy_ms": round(t_scipy, 2),
                    "fused_ms": round(t_fused, 2),
                    "fused_over_scipy": round(t_fused / t_scipy, 2),
                    "bitwise_equal": bool(np.array_equal(run(), ref)),
                    "load1": _load(),
                }
            ),
            flush=True,
        )


# --- warm starts across tests ------------------------------------------------------------------


def bench_warm(a) -> None:
    runs = _runs(a.size, a.regime, a.tests)
    d = Design(runs)
    sd = SparseDesign(d, "linear")
    _, chunks = solvers.plan_chunks(d, "linear", "cg")
    n, b = runs.n_examples, bench_speed.SIZES[a.size][4]
    theta0 = _theta0(n, b)
    solvers.MIXED_PRECISION = False  # iterations of the exact products
    try:
        xp, itp, _, _ = solvers._ChunkSolver(sd.chunk(chunks[0]), theta0).solve(1.0)
        cs = solvers._ChunkSolver(sd.chunk(chunks[1]), theta0)
        k = len(chunks[1])
        xc, itc, _, _ = cs.solve(1.0)
        xm, itm, _, _ = cs.solve(1.0, x0=np.repeat(xp.mean(axis=1)[:, None], k, axis=1))
        Z = np.column_stack([theta0, xp[:, : a.basis]])
        x0 = np.empty_like(xc)
        s = cs.sys
        for j in range(k):  # Galerkin: the best combination of Z in the test's energy norm
            HZ = s.matvec(Z, np.full(Z.shape[1], j)) + Z
            c = np.linalg.solve(Z.T @ HZ, Z.T @ (s.rhs[:, j] + theta0))
            x0[:, j] = Z @ c
        xg, itg, _, _ = cs.solve(1.0, x0=x0)
        # penalty continuation: the same tests first at l2 = 10 to 1e-4, then l2 = 1 from there
        cont = solvers._ChunkSolver(sd.chunk(chunks[1]), theta0)
        x10, it10, _, _ = cont.solve(10.0, tol=1e-4)
        xl, itl, _, _ = cont.solve(1.0, x0=x10)
    finally:
        solvers.MIXED_PRECISION = True

    def rel(x):
        return float(f"{np.abs(x - xc).max() / np.abs(xc).max():.1e}")

    print(
        json.dumps(
            {
                "bench": "warm",
                "size": a.size,
                "regime": a.regime,
                "tests": runs.n_tests,
                "pilot_tests": len(chunks[0]),
                "chunk_tests": k,
                "cold_it": [int(itc.max()), round(float(itc.mean()), 1)],
                "pilot_mean_it": [int(itm.max()), round(float(itm.mean()), 1)],
                "galerkin_it": [int(itg.max()), round(float(itg.mean()), 1)],
                "galerkin_extra_products": Z.shape[1],
                "from_l2_10_it": [int((it10 + itl).max()), round(float((it10 + itl).mean()), 1)],
                "max_rel_diff_vs_cold": {
                    "pilot_mean": rel(xm),
                    "galerkin": rel(xg),
                    "from_l2_10": rel(xl),
                },
                "load1": _load(),
            }
        ),
        flush=True,
    )


# --- preconditioners (dense, reduced size) ------------------------------------------------------


def _pcg(H, b, minv, tol=1e-10, maxit=5000, minres=None):
    """PCG from 0; ``minres`` (a list): also append the first iteration at which the
    minimum-residual iterate over the same Krylov space (least squares on H p_0..p_it, what a
    MINRES / conjugate-residual method would return) meets the tolerance."""
    x = np.zeros_like(b)
    r = b.copy()
    z = minv(r)
    p = z.copy()
    rz = r @ z
    bn = np.linalg.norm(b)
    HP = []
    for it in range(1, maxit + 1):
        q = H @ p
        alpha = rz / (p @ q)
        x += alpha * p
        r -= alpha * q
        if minres is not None and not minres:
            HP.append(q)
            A = np.column_stack(HP)
            c = np.linalg.lstsq(A, b, rcond=None)[0]
            if np.linalg.norm(b - A @ c) <= tol * bn:
                minres.append(it)
        if np.linalg.norm(r) <= tol * bn:
            return x, it
        z = minv(r)
        rz_new = r @ z
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, maxit


def _chebyshev(apply_op, apply_m, lo: float, hi: float, d: int):
    """z ~ (M H)^-1 M r by d steps of the Chebyshev iteration on [lo, hi] from z = 0: a fixed
    polynomial in M H times M (d - 1 products with H)."""
    theta, delta = (hi + lo) / 2, (hi - lo) / 2
    sigma = theta / delta

    def apply(r):
        mr = apply_m(r)
        rho = 1 / sigma
        dz = mr / theta
        z = dz.copy()
        for _ in range(d - 1):
            res = mr - apply_m(apply_op(z))
            rho_new = 1 / (2 * sigma - rho)
            dz = rho_new * rho * dz + (2 * rho_new / delta) * res
            z += dz
            rho = rho_new
        return z

    return apply


def _aggregates(C: np.ndarray, size: int) -> np.ndarray:
    """Greedy aggregation: each unassigned example (in order) with its ``size - 1`` most
    co-occurring unassigned examples (C: co-occurrence counts)."""
    n = len(C)
    agg = np.full(n, -1)
    a = 0
    for i in range(n):
        if agg[i] >= 0:
            continue
        cand = np.argsort(-np.where(agg < 0, C[i], -1), kind="stable")
        members = [i] + [j for j in cand[:size] if j != i and agg[j] < 0][: size - 1]
        agg[members] = a
        a += 1
    return agg


def bench_precond(a) -> None:
    bench_speed.SIZES["X"] = (a.n, 3, a.runs, a.steps, 8)
    for regime in a.regimes.split(","):
        runs = _runs("X", regime)
        d = Design(runs)
        G, r = d.gram("linear", [0, 1, 2])
        n = a.n
        theta0 = _theta0(n, 8)
        for j in range(3):
            H = G[j] + np.eye(2 * n)
            b = r[j] + theta0
            xd = np.linalg.solve(H, b)
            ia, iab, ib = solvers.block_jacobi_2x2(
                np.diag(H)[:n], np.diag(H[:n, n:]).copy(), np.diag(H)[n:]
            )

            def bj(R, ia=ia, iab=iab, ib=ib):
                return np.concatenate([ia * R[:n] + iab * R[n:], iab * R[:n] + ib * R[n:]])

            res = {}
            mr = []
            x, it = _pcg(H, b, bj, minres=mr)
            res["bj"] = dict(products=it, err=np.abs(x - xd).max() / np.abs(xd).max())
            res["minres"] = dict(products=mr[0] if mr else None)
            # Schur complement onto A; the B block E^T E + l2 I is the same for every test
            import scipy.linalg as sl

            HAB, cB = H[:n, n:], sl.cho_factor(H[n:, n:])
            S = H[:n, :n] - HAB @ sl.cho_solve(cB, HAB.T)
            dS = 1 / np.diag(S)
            xa, it = _pcg(S, b[:n] - HAB @ sl.cho_solve(cB, b[n:]), lambda R, dS=dS: dS * R)
            x = np.concatenate([xa, sl.cho_solve(cB, b[n:] - HAB.T @ xa)])
            res["schur"] = dict(products=it, extra=f"{it + 2} solves with E^T E + l2 I")
            # the exact spectrum of the block-Jacobi-preconditioned operator (best case)
            Mb = np.diag(np.diag(H))
            idx = np.arange(n)
            Mb[idx, n + idx] = Mb[n + idx, idx] = H[idx, n + idx]
            ev = sl.eigh(H, Mb, eigvals_only=True)  # of M^-1 H, M the 2x2 diagonal blocks
            lo, hi = float(ev.min()), float(ev.max())
            # the bulk without the two constant-direction outliers, against the Marchenko-Pastur
            # edges of a random design of the same aspect (2n parameters, runs x steps rows),
            # and the iterations CG needs on it (Chebyshev bound, 1e-10, + 2 for the outliers)
            c = 2 * n / (a.runs * a.steps)
            kappa = float(ev[-3]) / lo
            bound = np.log(2e10) / np.log((np.sqrt(kappa) + 1) / (np.sqrt(kappa) - 1)) + 2
            for deg in (2, 4):
                x, it = _pcg(H, b, _chebyshev(lambda z, H=H: H @ z, bj, lo, hi, deg))
                res[f"cheb{deg}"] = dict(
                    outer=it, products=it * deg, err=np.abs(x - xd).max() / np.abs(xd).max()
                )
            C = H[n:, n:] - np.eye(n)  # E^T E: co-occurrence counts
            # each example's 2x2 diagonal block: eigenvectors (A, B) of its small and large
            # eigenvalue (the A/B difference mode and the mean mode), for the "blocks" variant
            blk = np.stack(
                [[np.diag(H)[:n], H[idx, n + idx]], [H[idx, n + idx], np.diag(H)[n:]]]
            ).transpose(2, 0, 1)
            _, vec = np.linalg.eigh(blk)  # (n, 2, 2): columns small, large
            for s, kind in ((10, "ind"), (40, "ind"), (10, "blocks")):
                agg = _aggregates(C, s)
                na = agg.max() + 1
                Z = np.zeros((2 * n, 2 * na))
                if kind == "ind":  # A and B indicators per aggregate
                    Z[idx, agg] = 1.0
                    Z[n + idx, na + agg] = 1.0
                else:  # per aggregate: the sum of its examples' small / large block modes
                    for m in range(2):
                        Z[idx, m * na + agg] = vec[:, 0, m]
                        Z[n + idx, m * na + agg] = vec[:, 1, m]
                HZ = H @ Z  # (the set-up products)
                cZ = sl.cho_factor(Z.T @ HZ)

                def two(R, Z=Z, HZ=HZ, cZ=cZ):  # balancing: P^T M^-1 P + Q, Q = Z (Z^T H Z)^-1 Z^T
                    q = Z @ sl.cho_solve(cZ, Z.T @ R)
                    y = bj(R - HZ @ sl.cho_solve(cZ, Z.T @ R))
                    return y - Z @ sl.cho_solve(cZ, HZ.T @ y) + q

                x, it = _pcg(H, b, two)
                res[f"coarse{s}" + ("" if kind == "ind" else "_blocks")] = dict(
                    products=it, setup_products=2 * int(na),
                    err=np.abs(x - xd).max() / np.abs(xd).max(),
                )  # fmt: skip
            for v in res.values():
                if "err" in v:
                    v["err"] = float(f"{v['err']:.1e}")
            print(
                json.dumps(
                    {
                        "bench": "precond",
                        "regime": regime,
                        "n": n,
                        "runs": a.runs,
                        "steps": a.steps,
                        "test": j,
                        "bj_spectrum": [round(lo, 4), round(hi, 2)],
                        "bj_bulk": [round(lo, 3), round(float(ev[-3]), 3)],
                        "mp_edges": [round((1 - c**0.5) ** 2, 3), round((1 + c**0.5) ** 2, 3)],
                        "cg_bound_bulk": int(np.ceil(bound)),
                        **res,
                        "load1": _load(),
                    }
                ),
                flush=True,
            )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="all", choices=["all", "kernel", "warm", "precond"])
    ap.add_argument("--size", default="M")
    ap.add_argument("--regime", default=None, help="kernel / warm: one regime (default both)")
    ap.add_argument("--regimes", default="real,easy")
    ap.add_argument("--tests", type=int, default=0)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--basis", type=int, default=8)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=250)
    a = ap.parse_args(argv)
    print(json.dumps(run_facts()), flush=True)
    regimes = [a.regime] if a.regime else a.regimes.split(",")
    if a.what in ("all", "kernel"):
        for a.regime in regimes:
            bench_kernel(a)
    if a.what in ("all", "warm"):
        for a.regime in regimes:
            bench_warm(a)
    if a.what in ("all", "precond"):
        bench_precond(a)


if __name__ == "__main__":
    main()

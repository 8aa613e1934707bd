"""Multi-shift conjugate gradient: one Krylov sequence solves a whole grid of ridge penalties.

The ridge systems of one test example differ only by the penalty, (G + l2 I) theta = r + l2
theta0. With theta = theta0 + y they share one right-hand side, (G + l2 I) y = r - G theta0,
and the Krylov spaces of G + l2 I do not depend on l2. So conjugate gradient on the smallest
penalty (the slowest to converge) gives the iterates of every other penalty by scalar
recurrences and one vector update each (Jegerlehner 1996, "Krylov space solvers for shifted
linear systems", hep-lat/9612014; Frommer 2003): the products with G are shared by the grid.

It runs without a preconditioner (a penalty-dependent preconditioner breaks the shared Krylov
space). On the demo store's cross-validation (7 penalties, 48 tests) it needs ~31 products per
fold where the block-Jacobi PCG warm-started down the grid needs ~63 (bench/RESULTS-commands.md).
Each penalty stops on the same rule as :func:`solvers.pcg`, its (recursive) relative residual
||r + l2 theta0 - (G + l2 I) theta|| <= tol ||r + l2 theta0||; the smallest penalty's true
residual checks the shared recurrence, and a penalty that did not converge (budget, breakdown,
drift) is finished by the preconditioned solver.
"""

from __future__ import annotations

import numpy as np

#: products the shifted recurrence may spend per penalty of the grid before the preconditioned
#: solver takes over the penalties still unconverged (a guard for ill-conditioned systems, where
#: plain CG needs many more iterations than block-Jacobi PCG)
BUDGET_PER_SHIFT = 10
#: the true relative residual of the smallest penalty may exceed ``tol`` by this factor (the
#: recursive one met ``tol``; solvers.CG_RESIDUAL_SLACK is the same allowance for pcg)
CHECK_SLACK = 10.0


def shifted_cg(
    matvec,
    b: np.ndarray,
    shifts: np.ndarray,
    bnorm: np.ndarray,
    tol: float,
    maxiter: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve (G + shifts[s] I) y = b for every shift s and every column of b.

    ``matvec(V, cols)`` applies G to the columns ``cols`` (V has len(cols) columns); ``shifts``
    ascending and >= 0 (the first is the base system); ``bnorm`` (S, k): the norm each shift's
    residual is measured against (stop when ||b - (G + shift) y|| <= tol * bnorm, on the
    recursive residual). Columns are independent systems sharing each product with G.
    Returns (Y (S, P, k), converged (S, k)): ``converged`` by the recursive residual within
    ``maxiter`` products (the caller checks the true residual).
    """
    S = len(shifts)
    P, k = b.shape
    ds = (np.asarray(shifts, dtype=np.float64) - shifts[0])[:, None]  # (S, 1) beyond the base
    sig0 = float(shifts[0])
    Y = np.zeros((S, P, k))
    conv = np.zeros((S, k), dtype=bool)
    rr = np.einsum("ij,ij->j", b, b)
    conv[:] = np.sqrt(rr)[None, :] <= tol * bnorm
    live = np.flatnonzero(~conv.all(axis=0))  # columns with an unconverged shift
    # state of the live columns only (compacted as columns finish)
    r = b[:, live].copy()
    p = r.copy()
    ps = np.repeat(r[None], S, axis=0)  # per-shift search directions
    y = np.zeros((S, P, len(live)))
    rr = rr[live]
    zeta = np.ones((S, len(live)))  # r_shift = zeta * r (collinear residuals)
    zeta_prev = np.ones((S, len(live)))
    a_prev = np.ones(len(live))
    b_prev = np.zeros(len(live))
    act = ~conv[:, live]  # (S, live): still iterating
    bn = bnorm[:, live]
    for _ in range(maxiter):
        if len(live) == 0:
            break
        q = matvec(p, live)
        q += sig0 * p
        pq = np.einsum("ij,ij->j", p, q)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(pq > 0, rr / pq, 0.0)
        r -= a * q
        rr_new = np.einsum("ij,ij->j", r, r)
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = np.where(rr > 0, rr_new / rr, 0.0)
            den = a * b_prev * (zeta_prev - zeta) + zeta_prev * a_prev * (1.0 + ds * a)
            zeta_new = np.where(act, zeta * zeta_prev * a_prev / den, zeta)
            ratio = np.where(act, zeta_new / zeta, 0.0)
        ratio = np.where(np.isfinite(ratio), ratio, 0.0)
        alpha_s = a * ratio  # (S, live); 0 for finished shifts: their iterate stays
        beta_s = beta * ratio * ratio
        y += alpha_s[:, None, :] * ps
        ps *= beta_s[:, None, :]
        ps += zeta_new[:, None, :] * r[None]
        zeta_prev = np.where(act, zeta, zeta_prev)
        zeta = zeta_new
        a_prev, b_prev, rr = a, beta, rr_new
        p *= beta
        p += r
        done = np.abs(zeta) * np.sqrt(rr)[None, :] <= tol * bn
        # breakdown (G + shift not positive definite along p) or a non-finite recurrence: stop
        # (the caller's true-residual check hands such a penalty to the preconditioned solver)
        broke = ~(pq > 0)[None, :] | ~np.isfinite(zeta)
        conv[:, live] |= act & done & ~broke  # a breakdown is not a convergence
        done |= broke
        act &= ~done
        fin = ~act.any(axis=0)
        if fin.any():  # columns whose every shift stopped: out of the working set
            Y[:, :, live[fin]] = y[:, :, fin]
            keep = ~fin
            live, r, p, rr = live[keep], r[:, keep], p[:, keep], rr[keep]
            ps, y, act, bn = ps[:, :, keep], y[:, :, keep], act[:, keep], bn[:, keep]
            zeta, zeta_prev = zeta[:, keep], zeta_prev[:, keep]
            a_prev, b_prev = a_prev[keep], b_prev[keep]
    if len(live):
        Y[:, :, live] = y
    return Y, conv


def solve_penalty_path(system, solver, grid, tol: float) -> list[np.ndarray] | None:
    """Ridge solutions of one chunk of tests for every penalty of ``grid`` (list of (P, k),
    grid order), or None when the grid has a penalty <= 0 (not shifted-CG material: the
    caller solves it as before).

    ``system``: the chunk's matrix-free normal equations (``normal_equations.ChunkSystem``);
    ``solver``: its ``solvers._ChunkSolver`` (the shrink target theta0, and the preconditioned
    solve that finishes a penalty whose true residual misses ``tol``).
    """
    grid = [float(v) for v in grid]
    if not grid or min(grid) <= 0:
        return None
    theta0 = solver.theta0[:, None]
    order = np.argsort(grid, kind="stable")
    shifts = np.asarray(grid)[order]
    k = system.k
    cols = np.arange(k)
    # G theta0 (a zero target, as the optimizer-aware ridge's, needs no product)
    c = (
        system.rhs - system.matvec(np.repeat(theta0, k, axis=1), cols)
        if theta0.any()
        else system.rhs
    )
    bnorm = np.linalg.norm(system.rhs[None] + shifts[:, None, None] * theta0[None], axis=1)
    bnorm[bnorm == 0] = 1.0
    budget = BUDGET_PER_SHIFT * len(shifts)
    Y, conv = shifted_cg(system.matvec, c, shifts, bnorm, tol, budget)

    def true_ok(s: int, x: np.ndarray) -> np.ndarray:
        res = system.rhs + shifts[s] * theta0 - system.matvec(x, cols) - shifts[s] * x
        return np.linalg.norm(res, axis=0) <= CHECK_SLACK * tol * bnorm[s]

    X = Y + theta0[None]
    # the smallest penalty ran the most iterations and its recursive residual is the one every
    # other penalty's is a multiple of: its true residual checks the recurrence for drift (one
    # product); when it fails, every penalty is checked
    if conv.all() and not true_ok(0, X[0]).all():
        conv = np.stack([true_ok(s, X[s]) for s in range(len(shifts))])
    out: list[np.ndarray | None] = [None] * len(grid)
    for s, g in enumerate(order):
        x = X[s]
        if not conv[s].all():  # unconverged (budget, breakdown or drift): preconditioned CG
            x = solver.solve(shifts[s], x0=np.ascontiguousarray(x), tol=tol)[0]
        out[g] = x
    return out


def solve_grid(
    design, method: str, grid, theta0: np.ndarray, tests, run_ids, *, solver: str, tol: float
) -> list[np.ndarray]:
    """Ridge solutions (P, len(tests)) of ``tests`` on the runs ``run_ids`` for every penalty of
    ``grid`` (grid order), as one chunk: shifted CG when the solver is CG and every penalty is
    > 0, else :func:`solvers.solve_tests` (its penalty path warm-started from the largest)."""
    from simfluence_cli.model.normal_equations import SparseDesign
    from simfluence_cli.model.solvers import _ChunkSolver, choose_solver, solve_tests

    tests = np.asarray(tests, dtype=np.int64)
    if choose_solver(solver, design.n_params(method)) == "cg":
        system = SparseDesign(design, method, run_ids).chunk(tests)
        out = solve_penalty_path(system, _ChunkSolver(system, theta0), grid, tol)
        if out is not None:
            return out
    return solve_tests(
        design, method, list(grid), theta0, tests=tests, run_ids=run_ids,
        solver=solver, tol=tol, chunks=[tests], threads=1,
    )  # fmt: skip

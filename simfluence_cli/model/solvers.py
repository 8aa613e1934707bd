"""Batched ridge solves of the normal equations (one small dense system per test example).

Solves (G + l2 I) theta = r + l2 theta0 for a stack of systems. The penalty pulls theta
toward ``theta0`` (the shrink target). Systems are Jacobi-scaled before the solve, which keeps
the A-columns (scaled by losses) and the B-columns (scaled by 1) comparable and the
solution accurate. Parameters of examples with no observations stay at ``theta0``.
"""

from __future__ import annotations

import numpy as np


def ridge_solve(
    G: np.ndarray, r: np.ndarray, l2: float, theta0: np.ndarray, overwrite: bool = False
) -> np.ndarray:
    """Solve the stacked systems G (m, P, P), r (m, P); theta0 (P,). Returns (m, P).

    With ``overwrite=True`` G is used as scratch space (saves a copy).
    """
    import scipy.linalg as sl  # here, not at the top: loading a model needs no scipy

    m, P, _ = G.shape
    H = G if overwrite else G.copy()
    idx = np.arange(P)
    H[:, idx, idx] += l2
    rhs = r + l2 * theta0[None, :]
    # G is PSD, so a zero diagonal means a zero row and column: no observations. With no
    # penalty such a parameter is undetermined; pin it to theta0.
    empty = H[:, idx, idx] <= 0
    if empty.any():
        mi, pi = np.nonzero(empty)
        H[mi, pi, pi] = 1.0
        rhs[mi, pi] = theta0[pi]
    out = np.empty((m, P))
    for k in range(m):  # one LAPACK call per test example; each is a blocked, threaded solve
        s = 1.0 / np.sqrt(H[k, idx, idx])
        Hs = H[k]
        Hs *= s[:, None]
        Hs *= s[None, :]
        b = rhs[k] * s
        try:
            u = sl.cho_solve(
                sl.cho_factor(Hs, lower=True, overwrite_a=False, check_finite=False),
                b,
                check_finite=False,
            )
        except (np.linalg.LinAlgError, sl.LinAlgError):
            # singular (l2 = 0 with collinear examples): minimum-norm solution of the scaled system
            u = np.linalg.lstsq(Hs, b, rcond=None)[0]
        out[k] = u * s
    return out


# ---------------------------------------------------------------------------------------------
# Choosing and running the solver over all test examples.
# ---------------------------------------------------------------------------------------------

from simfluence_cli.model.config import SOLVERS  # noqa: E402

#: default stopping rule of the iterative solver: per test example the relative residual
#: ||r + l2 theta0 - (G + l2 I) theta|| / ||r + l2 theta0|| of its normal equations.
CG_TOL = 1e-10
CG_MAXITER = 5000
#: looser tolerance of the fits inside ``l2="auto"`` cross-validation: they only rank penalties
CV_TOL = 1e-6
#: ``l2="auto"`` estimates the CV error of each penalty on at most this many test examples,
#: evenly spread over the test set (the penalty is one scalar shared by all test examples)
CV_MAX_TESTS = 48


def cv_test_subset(m: int, max_tests: int | None = None) -> np.ndarray:
    """Indices of the test examples the l2 cross-validation uses (all when m <= max_tests)."""
    k = CV_MAX_TESTS if max_tests is None else int(max_tests)
    if m <= k:
        return np.arange(m)
    return np.unique(np.linspace(0, m - 1, k).round().astype(np.int64))


#: ``solver="auto"`` uses the exact dense solve up to this many parameters per test example
#: (P = 2 N for linear, N otherwise), the preconditioned conjugate gradient above it. Measured
#: (bench/bench_speed.py, RESULTS-speed.md): the two cost the same near P = 50; at P = 300 (the
#: sample runs' additive and multiplicative fits) CG is 5-20x cheaper, and the gap grows as P^2.
DIRECT_MAX_PARAMS = 64
_GRAM_BYTES = 64 * 2**20  # memory for the stacked dense normal equations of one test chunk
_CG_CHUNK_BYTES = 36 * 2**20  # working set of one CG chunk (measured best: fits in L3)
#: the same for the mixed-precision CG, its (n_obs, k) arrays counted as float32: wider chunks
#: read the coefficient matrices fewer times (measured at L: 16 tests wide 0.62-0.66x the CPU
#: of float64 4-wide chunks, 4-wide mixed 0.84-0.95x; bench/RESULTS-fit.md)
_CG_MIXED_CHUNK_BYTES = 96 * 2**20
#: CG products in float32 (``pcg(matvec_lo=...)``) for chunks whose coefficient matrices have
#: at least this many nonzeros: there the products are memory-bound and float32 halves the
#: traffic (bench/RESULTS-fit.md, "mixed precision"); below it the conversions cost more than
#: they save, and the small fits stay bit-identical to the float64 solver
MIXED_MIN_NNZ = 100_000
#: switch for the float32 products (False: every product in float64)
MIXED_PRECISION = True
CG_MIN_CHUNK = 4
MIN_CHUNKS = 8


def choose_solver(solver: str, n_params: int) -> str:
    """'direct' or 'cg' for ``solver`` in SOLVERS and the number of parameters per test."""
    if solver not in SOLVERS:
        from simfluence_cli.errors import UsageError

        raise UsageError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver == "auto":
        return "direct" if n_params <= DIRECT_MAX_PARAMS else "cg"
    return solver


def chunk_tests(
    tests: np.ndarray,
    solver: str,
    n_params: int,
    n_obs: int,
    *,
    obs_arrays: int = 6,
    min_chunks: int = MIN_CHUNKS,
    mixed: bool = False,
) -> list[np.ndarray]:
    """Split test indices into chunks sized for the memory budget of ``solver``
    (``obs_arrays``: float64 arrays of length n_obs per test in a CG chunk's working set;
    ``mixed``: the CG runs with float32 products, see ``_CG_MIXED_CHUNK_BYTES``)."""
    tests = np.asarray(tests, dtype=np.int64)
    if solver == "direct":
        size = int(_GRAM_BYTES // max(1, n_params * n_params * 8))
    else:  # small chunks keep the working set (losses, products, CG vectors) in cache
        if mixed:
            per_test = 4 * obs_arrays * n_obs + 64 * n_params
            size = max(CG_MIN_CHUNK, int(_CG_MIXED_CHUNK_BYTES // max(1, per_test)))
        else:
            per_test = 8 * (obs_arrays * n_obs + 8 * n_params)
            size = max(CG_MIN_CHUNK, int(_CG_CHUNK_BYTES // max(1, per_test)))
        # and at least ``min_chunks`` chunks, so threads / workers have work to share (a fixed
        # number, not the CPU count: the numbers must not depend on the machine)
        size = min(size, max(CG_MIN_CHUNK, -(-len(tests) // max(1, min_chunks))))
    size = max(1, min(len(tests), size, 256))
    return [tests[s : s + size] for s in range(0, len(tests), size)]


def plan_chunks(design, method: str, solver: str = "auto", tests=None, run_ids=None):
    """(solver kind, test chunks) for a fit. Results depend only on a test's chunk, so every
    backend (threads, processes, Dask shards) solves exactly these chunks: identical numbers."""
    P = design.n_params(method)
    kind = choose_solver(solver, P)
    tests = np.arange(design.n_tests) if tests is None else np.asarray(tests, dtype=np.int64)
    n_obs = nnz = 0
    if kind == "cg":
        groups = design.groups(run_ids).values()
        n_obs = max((sum(b.n_obs for b in g) for g in groups), default=0)
        # (entries are unique (observation, example) pairs: the coefficient matrices' nnz)
        nnz = max((sum(len(b.ent_ex) for b in g) for g in groups), default=0)
    mixed = kind == "cg" and MIXED_PRECISION and nnz >= MIXED_MIN_NNZ
    return kind, chunk_tests(tests, kind, P, n_obs, mixed=mixed)


#: a CG system counts as converged when its TRUE relative residual ||b - H x|| / ||b||
#: (recomputed at the end, not the recursively updated one) is at most this many times tol
CG_RESIDUAL_SLACK = 10.0


#: mixed precision (``pcg(matvec_lo=...)``): the float64 residual replaces the recursive one
#: whenever a column's recursive residual has fallen by this factor since the last replacement
#: (measured: 1e-2 .. 1e-4 cost the same iterations, 1e-4 the fewest float64 products) ...
RELIABLE_DROP = 1e-4
#: ... or after this many iterations without a replacement
RELIABLE_EVERY = 100


def pcg(
    matvec,
    b: np.ndarray,
    precond,
    x0: np.ndarray,
    tol: float = CG_TOL,
    maxiter: int = CG_MAXITER,
    matvec_lo=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batched preconditioned conjugate gradient: one independent SPD system per column.

    ``matvec(V, cols)`` applies the operator to the columns ``cols`` (V has len(cols) columns);
    ``precond(R, cols)`` applies the preconditioner. All unconverged columns share each
    operator application (a matrix right-hand side). Stops per column when the recursive
    residual reaches ||b - H x|| <= tol ||b||, at ``maxiter``, or on non-positive curvature.
    Returns (x, iterations per column, converged per column, true relative residual per
    column): ``converged`` is ``rel_residual <= CG_RESIDUAL_SLACK * tol`` with the residual
    recomputed from x at the end, so a stop at the cap or on breakdown is never silent.

    ``matvec_lo`` (optional): a cheaper, less exact product (float32) for the search
    directions. x and the residual stay float64; the residual of all active columns is
    recomputed with ``matvec`` ("reliable updates") whenever one has fallen by
    ``RELIABLE_DROP`` (or grown 1e3x, or ``RELIABLE_EVERY`` iterations passed) since the last
    recomputation; a column whose recursive residual had drifted > 10x from the true one
    restarts its direction, one whose true residual did not halve between recomputations is
    left to the end, and every column whose true residual misses ``tol`` at the end continues
    in full precision: the stopping rule is the same, on the true residual.
    """
    if matvec_lo is not None:
        return _pcg_mixed(matvec, matvec_lo, b, precond, x0, tol, maxiter)
    x = np.array(x0, dtype=np.float64, copy=True)
    k = b.shape[1]
    bnorm = np.linalg.norm(b, axis=0)
    bnorm[bnorm == 0] = 1.0
    cols = np.arange(k)
    r = b - matvec(x, cols) if x.any() else b.copy()  # H 0 = 0: no product from a cold start
    iters = np.zeros(k, dtype=np.int64)
    done = np.linalg.norm(r, axis=0) <= tol * bnorm
    act = cols[~done]
    r = r[:, act]
    z = precond(r, act)
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    for it in range(1, maxiter + 1):
        if len(act) == 0:
            break
        q = matvec(p, act)
        pq = np.einsum("ij,ij->j", p, q)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(pq > 0, rz / pq, 0.0)
        x[:, act] += a * p
        r -= a * q
        iters[act] = it
        conv = (np.linalg.norm(r, axis=0) <= tol * bnorm[act]) | (pq <= 0)
        if conv.any():
            keep = ~conv
            act, r, p, rz = act[keep], r[:, keep], p[:, keep], rz[keep]
            if len(act) == 0:
                break
        z = precond(r, act)
        rz_new = np.einsum("ij,ij->j", r, z)
        beta = rz_new / rz
        rz = rz_new
        p *= beta
        p += z
    with np.errstate(all="ignore"):
        rel = np.linalg.norm(b - matvec(x, cols), axis=0) / bnorm
    rel = np.where(np.isfinite(rel), rel, np.inf)
    return x, iters, rel <= CG_RESIDUAL_SLACK * tol, rel


def _pcg_mixed(matvec, matvec_lo, b, precond, x0, tol, maxiter):
    """``pcg`` with ``matvec_lo`` for the search directions and reliable updates."""
    x = np.array(x0, dtype=np.float64, copy=True)
    k = b.shape[1]
    bnorm = np.linalg.norm(b, axis=0)
    bnorm[bnorm == 0] = 1.0
    cols = np.arange(k)
    r = b - matvec(x, cols)
    iters = np.zeros(k, dtype=np.int64)
    rn = r0 = np.linalg.norm(r, axis=0)
    done = rn <= tol * bnorm
    act = cols[~done]
    r, rmax = r[:, act], rn[act]  # rmax: residual norm at the last recomputation
    since = np.zeros(len(act), dtype=np.int64)  # iteration of the last recomputation
    z = precond(r, act)
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    it = 0
    for it in range(1, maxiter + 1):
        if len(act) == 0:
            break
        q = matvec_lo(p, act)
        pq = np.einsum("ij,ij->j", p, q)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(pq > 0, rz / pq, 0.0)
        x[:, act] += a * p
        r -= a * q
        iters[act] = it
        rn = np.linalg.norm(r, axis=0)
        # stop on convergence, breakdown or a non-finite step (the end check catches the last two)
        stop = ~(pq > 0) | ~np.isfinite(rn)
        conv = (rn <= tol * bnorm[act]) | stop
        # due: the recursive residual fell by RELIABLE_DROP, blew up, or has not been checked
        # for RELIABLE_EVERY iterations
        due = (rn < RELIABLE_DROP * rmax) | (rn > 1e3 * rmax) | (it - since >= RELIABLE_EVERY)
        due &= ~conv
        restart = np.zeros(len(act), dtype=bool)
        if due.any():  # the true residuals replace the recursive ones
            r = b[:, act] - matvec(x[:, act], act)
            true = np.linalg.norm(r, axis=0)
            # where they had drifted apart, CG restarts from the true residual
            restart = true > 10 * rn
            rn, last, rmax = true, rmax, true
            since[:] = it
            # a due column whose true residual did not halve since the last check: the low
            # product is not good enough for its system; it is finished in full precision below
            conv = (rn <= tol * bnorm[act]) | stop | (due & ~(rn <= 0.5 * last))
        if conv.any():
            keep = ~conv
            act, r, p, rz, rmax = act[keep], r[:, keep], p[:, keep], rz[keep], rmax[keep]
            since, restart = since[keep], restart[keep]
            if len(act) == 0:
                break
        z = precond(r, act)
        rz_new = np.einsum("ij,ij->j", r, z)
        p *= np.where(restart, 0.0, rz_new / rz)
        p += z
        rz = rz_new
    with np.errstate(all="ignore"):
        rel = np.linalg.norm(b - matvec(x, cols), axis=0) / bnorm
    rel = np.where(np.isfinite(rel), rel, np.inf)
    more = np.flatnonzero((rel > tol) & (iters < maxiter))
    if len(more):  # drift or breakdown of the low-precision steps: finish in full precision
        start = x[:, more]
        worse = ~(rel[more] * bnorm[more] <= r0[more])  # (or not finite): start afresh
        start[:, worse] = np.asarray(x0, dtype=np.float64)[:, more[worse]]
        x2, it2, _, _ = pcg(
            lambda V, c: matvec(V, more[c]),
            b[:, more],
            lambda R, c: precond(R, more[c]),
            start,
            tol=tol,
            maxiter=maxiter - int(iters[more].max()),
        )
        x[:, more] = x2
        iters[more] += it2
        with np.errstate(all="ignore"):
            rel = np.linalg.norm(b - matvec(x, cols), axis=0) / bnorm
        rel = np.where(np.isfinite(rel), rel, np.inf)
    return x, iters, rel <= CG_RESIDUAL_SLACK * tol, rel


def block_jacobi_2x2(daa: np.ndarray, dab: np.ndarray, dbb: np.ndarray):
    """Inverses (inv_aa, inv_ab, inv_bb) of the 2x2 blocks [[daa, dab], [dab, dbb]] (the
    (A_i, B_i) diagonal blocks of a Gram, elementwise); a block that is numerically singular
    falls back to its diagonal (Jacobi)."""
    det = daa * dbb - dab * dab
    ok = det > 1e-12 * daa * dbb
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_aa = np.where(ok, dbb / det, 1.0 / daa)
        inv_bb = np.where(ok, daa / det, 1.0 / dbb)
        inv_ab = np.where(ok, -dab / det, 0.0)
    return inv_aa, inv_ab, inv_bb


class _ChunkSolver:
    """(G + l2 I) theta = r + l2 theta0 for one chunk of tests, matrix-free, any l2."""

    def __init__(self, system, theta0: np.ndarray):
        self.sys = system
        self.theta0 = theta0
        self.n = system.n
        self.diag = system.diagonal()  # (P, k)
        mixed = MIXED_PRECISION and getattr(system, "nnz", 0) >= MIXED_MIN_NNZ
        self.low = system.lowered() if mixed else None
        # (x, G x) of the last product over all columns: a warm start down a penalty path
        # begins where the previous solve's true-residual check ended, so its initial
        # residual reuses that product (G does not depend on l2; same numbers, one matvec less)
        self._last = None

    def solve(
        self,
        l2: float,
        x0: np.ndarray | None = None,
        tol: float = CG_TOL,
        maxiter: int = CG_MAXITER,
    ):
        s, n = self.sys, self.n
        theta0 = self.theta0[:, None]
        empty = (self.diag + l2) <= 0  # no observations and no penalty: pin to theta0
        shift = l2 + empty  # (P, k)
        b = s.rhs + l2 * theta0
        if empty.any():
            b = np.where(empty, theta0, b)
        if s.method == "linear":
            inv_aa, inv_ab, inv_bb = block_jacobi_2x2(s.daa + shift[:n], s.dab, s.dbb + shift[n:])

            def precond(R, cols):
                ra, rb = R[:n], R[n:]
                return np.vstack(
                    [
                        inv_aa[:, cols] * ra + inv_ab[:, cols] * rb,
                        inv_ab[:, cols] * ra + inv_bb[:, cols] * rb,
                    ]
                )
        else:
            inv = 1.0 / (self.diag + shift)

            def precond(R, cols):
                return inv[:, cols] * R

        def matvec(V, cols):
            whole = len(cols) == s.k
            last = self._last
            if whole and last is not None and np.array_equal(V, last[0]):
                out = last[1].copy()  # G x of the previous penalty's final residual check
            else:
                out = s.matvec(V, cols)
                if whole:
                    self._last = (V.copy(), out.copy())
            out += shift[:, cols] * V
            return out

        matvec_lo = None
        if self.low is not None:
            low = self.low

            def matvec_lo(V, cols):
                out = low.matvec(V.astype(np.float32), cols).astype(np.float64)
                out += shift[:, cols] * V
                return out

        if x0 is None:
            x0 = np.broadcast_to(theta0, b.shape)
        return pcg(matvec, b, precond, x0, tol=tol, maxiter=maxiter, matvec_lo=matvec_lo)


def cg_stats(unconverged, max_rel, mixed: bool = False) -> dict:
    """Convergence counts for ``solver_stats_``: ``cg_not_converged`` (test examples whose
    system did not reach the tolerance, at any penalty solved), ``cg_not_converged_tests``
    (their indices, sorted), ``cg_max_rel_residual`` (largest true relative residual) and
    ``cg_float32_products`` (some chunk ran the mixed-precision CG)."""
    bad = np.unique(np.concatenate([t for t, _ in unconverged])) if unconverged else []
    return {
        "cg_not_converged": int(len(bad)),
        "cg_not_converged_tests": [int(t) for t in bad],
        "cg_max_rel_residual": max(max_rel) if max_rel else 0.0,
        "cg_float32_products": bool(mixed),
    }


def merge_cg_stats(parts: list[dict]) -> dict:
    """``cg_stats`` of several shards combined (empty when no shard ran CG)."""
    parts = [p for p in parts if "cg_not_converged" in p]
    if not parts:
        return {}
    bad = sorted({t for p in parts for t in p["cg_not_converged_tests"]})
    return {
        "cg_not_converged": len(bad),
        "cg_not_converged_tests": bad,
        "cg_max_rel_residual": max(p["cg_max_rel_residual"] for p in parts),
        "cg_float32_products": any(p.get("cg_float32_products", False) for p in parts),
    }


def default_threads() -> int:
    """Threads for the in-process solve (scipy's sparse products release the GIL)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def solve_tests(
    design,
    method: str,
    l2,
    theta0: np.ndarray,
    tests=None,
    *,
    solver: str = "auto",
    tol: float = CG_TOL,
    run_ids=None,
    progress=None,
    out: np.ndarray | None = None,
    stats: dict | None = None,
    threads: int | None = None,
    chunks: list | None = None,
    sink=None,
) -> np.ndarray | None:
    """Ridge solutions of ``method`` for the test indices ``tests`` (default all).

    ``sink(test_indices, theta_chunk (P, k))``: hand each chunk's solution over (in the calling
    thread) instead of collecting them; then nothing is returned (one penalty only).

    ``l2`` is a float, or a sequence of penalties (a regularisation path: then a list of
    (P, len(tests)) arrays is returned, in the order given; the CG path is warm-started from
    the neighbouring penalty). Returns theta as (P, len(tests)), written into ``out`` if given.
    ``progress(k)`` is called (in the calling thread) after each chunk of k tests. Chunks of
    tests are solved on ``threads`` threads (default: the usable CPUs). ``chunks`` (from
    :func:`plan_chunks`) overrides the chunking; their concatenation must equal ``tests``.
    """
    from simfluence_cli._pool import thread_pool
    from simfluence_cli.model.normal_equations import SparseDesign

    P = design.n_params(method)
    tests = np.arange(design.n_tests) if tests is None else np.asarray(tests, dtype=np.int64)
    if chunks is None:
        kind, chunks = plan_chunks(design, method, solver, tests, run_ids)
    else:
        kind = choose_solver(solver, P)
    path = not np.isscalar(l2)
    grid = [float(v) for v in (l2 if path else [l2])]
    if sink is not None and path:
        raise ValueError("sink needs a single penalty")
    outs = (
        [None]
        if sink is not None
        else [np.empty((P, len(tests))) for _ in grid]
        if (path or out is None)
        else [out]
    )
    iters = []
    unconverged = []  # (test indices, true relative residuals) of CG systems that did not converge
    max_rel = []  # per chunk and penalty: the largest true relative residual
    mixed = []  # per chunk: solved with float32 products
    if kind == "direct":
        eq = design.equations(method, run_ids)
        G = np.empty((len(chunks[0]), P, P))
        r = np.empty((len(chunks[0]), P))

        def run(o, chunk):
            k = len(chunk)
            eq.fill(chunk, G, r)
            for g, lam in enumerate(grid):
                last = g == len(grid) - 1
                x = ridge_solve(G[:k], r[:k], lam, theta0, overwrite=last).T
                if sink is not None:
                    return np.array(x)  # a copy: G and r are reused by the next chunk
                outs[g][:, o : o + k] = x

        threads = 1  # LAPACK is threaded already; the Gram buffers are shared
    else:
        sd = SparseDesign(design, method, run_ids)
        # warm start: from the largest penalty (best conditioned) down
        order = sorted(range(len(grid)), key=lambda g: -grid[g])

        def run(o, chunk):
            k = len(chunk)
            cs = _ChunkSolver(sd.chunk(chunk), theta0)
            mixed.append(cs.low is not None)
            x = None
            for g in order:
                x, it, conv, rel = cs.solve(grid[g], x0=x, tol=tol, maxiter=CG_MAXITER)
                iters.append(int(it.max()) if len(it) else 0)
                max_rel.append(float(rel.max()) if len(rel) else 0.0)
                if not conv.all():
                    unconverged.append((chunk[~conv], rel[~conv]))
                if sink is not None:
                    return np.array(x)
                outs[g][:, o : o + k] = x

        threads = default_threads() if threads is None else max(1, int(threads))
    offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    if threads == 1 or len(chunks) == 1:
        for o, chunk in zip(offsets, chunks):
            x = run(o, chunk)
            if sink is not None:
                sink(tests[o : o + len(chunk)], x)
            if progress is not None:
                progress(len(chunk))
    else:
        with thread_pool(threads) as ex:
            futs = {ex.submit(run, o, c): (o, len(c)) for o, c in zip(offsets, chunks)}
            from concurrent.futures import as_completed

            for f in as_completed(futs):
                x = f.result()
                o, k = futs[f]
                if sink is not None:
                    sink(tests[o : o + k], x)
                if progress is not None:
                    progress(k)
    if stats is not None:
        stats.update(
            solver=kind,
            n_params=P,
            chunks=len(chunks),
            threads=threads,
            cg_iterations_max=max(iters) if iters else 0,
            cg_iterations_mean=float(np.mean(iters)) if iters else 0.0,
        )
        if kind == "cg":
            stats.update(cg_stats(unconverged, max_rel, any(mixed)))
    if sink is not None:
        return None
    return outs if path else outs[0]

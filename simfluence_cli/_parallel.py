"""Sharding the fit over test examples: in-process, local worker processes, or a Dask cluster.

The normal equations of different test examples are independent (they share only the
curriculum structure), so the fit splits the test examples into shards, solves each shard
anywhere, and the coordinator assembles one (P, M) parameter matrix in test order. Every
backend runs the same deterministic per-shard solve (:func:`_solver.solve_tests`), so the
parameters do not depend on the backend or the number of workers.

- ``workers=1`` (default): in this process; chunks of tests run on threads.
- ``workers=N``: N local processes (fork start method where available: the runs and the
  sparse design are shared copy-on-write, nothing is pickled but the results).
- ``dask=ADDRESS``: an existing ``distributed`` scheduler (``tcp://host:8786``) or a
  ``distributed.Client``. If the RunSet came from a store (it has a ``store_path``
  attribute, set by ``RunStore.load`` callers such as ``simfluence fit``), each Dask worker
  opens the same store path (a shared file system) and loads the runs itself, once per worker
  process; otherwise the RunSet is scattered to the workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from ._solver import CG_TOL, plan_chunks, solve_tests
from .errors import MissingExtraError, UsageError

__all__ = ["fit_theta", "shards"]

_SHARED: dict = {}  # per process: design (and runs) for the local workers / dask tasks


def shards(m: int, n_shards: int) -> list[np.ndarray]:
    """Contiguous, nearly equal shards of range(m) (at most m shards, none empty)."""
    n_shards = max(1, min(int(n_shards), m))
    bounds = np.linspace(0, m, n_shards + 1).round().astype(np.int64)
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(n_shards)
            if bounds[i + 1] > bounds[i]]


def chunk_shards(chunks: list[np.ndarray], n_shards: int) -> list[list[np.ndarray]]:
    """Consecutive whole solver chunks grouped into at most ``n_shards`` shards."""
    return [[chunks[i] for i in idx] for idx in shards(len(chunks), n_shards)]


def fit_theta(runs, design, method: str, l2: float, theta0: np.ndarray, *, solver: str = "auto",
              tol: float = CG_TOL, workers: int = 1, dask=None, progress=None,
              threads: int | None = None, stats: dict | None = None,
              sink=None) -> np.ndarray | None:
    """Ridge parameters (P, n_tests) of all test examples, sharded as configured.

    ``sink(test_indices, theta (P, k))``: hand each finished chunk or shard over as it
    arrives (in any order) instead of collecting them; then None is returned.
    """
    m = design.n_tests
    if dask is not None:
        return _fit_dask(runs, design, method, l2, theta0, solver, tol, dask, progress, stats,
                         sink)
    workers = int(workers or 1)
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if workers == 1 or m < 2:
        return solve_tests(design, method, l2, theta0, solver=solver, tol=tol,
                           progress=progress, threads=threads, stats=stats, sink=sink)
    return _fit_processes(runs, design, method, l2, theta0, solver, tol, workers, progress, stats,
                          sink)


# -- local processes ----------------------------------------------------------------------------

def _shard_local(chunks, method, l2, theta0, solver, tol):
    design = _SHARED["design"]
    st: dict = {}
    th = solve_tests(design, method, l2, theta0, tests=np.concatenate(chunks), solver=solver,
                     tol=tol, threads=1, stats=st, chunks=chunks)
    return th, st


def _init_spawned(runs):  # pragma: no cover - only without fork
    from ._design import Design
    _SHARED["design"] = Design(runs)


def _fit_processes(runs, design, method, l2, theta0, solver, tol, workers, progress, stats,
                   sink=None):
    m = design.n_tests
    _, chunks = plan_chunks(design, method, solver)
    parts = chunk_shards(chunks, workers * 4)  # several shards per worker: balance, progress
    P = design.n_params(method)
    out = None if sink is not None else np.empty((P, m))
    if "fork" in mp.get_all_start_methods():
        ctx = mp.get_context("fork")
        _SHARED["design"] = design  # inherited by the forked workers, not pickled
        pool = ProcessPoolExecutor(workers, mp_context=ctx)
    else:  # pragma: no cover
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                   initializer=_init_spawned, initargs=(runs,))
    iters = []
    try:
        with pool:
            futs = {pool.submit(_shard_local, c, method, l2, theta0, solver, tol): np.concatenate(c)
                    for c in parts}
            for f in as_completed(futs):
                th, st = f.result()
                t = futs[f]
                if sink is not None:
                    sink(t, th)
                else:
                    out[:, t] = th
                iters.append(st.get("cg_iterations_max", 0))
                if progress is not None:
                    progress(len(t))
    finally:
        _SHARED.pop("design", None)
    if stats is not None:
        stats.update(solver=st.get("solver"), n_params=P, workers=workers, shards=len(parts),
                     cg_iterations_max=max(iters) if iters else 0)
    return out


# -- dask ---------------------------------------------------------------------------------------

def _dask_design(source, run_ids):
    """The Design of the runs on a Dask worker, built once per worker process."""
    key = (source if isinstance(source, str) else id(source), tuple(run_ids))
    hit = _SHARED.get("dask")
    if hit is not None and hit[0] == key:
        return hit[1]
    from ._design import Design
    if isinstance(source, str):
        from .store import RunStore
        runs = RunStore(source).load(list(run_ids))
    else:
        runs = source
    design = Design(runs)
    _SHARED["dask"] = (key, design)
    return design


def _shard_dask(source, run_ids, chunks, method, l2, theta0, solver, tol, shape=None):
    design = _dask_design(source, run_ids)
    if shape is not None and (design.n_examples, design.n_tests) != tuple(shape):
        from .errors import StoreError
        raise StoreError(f"a Dask worker loaded {design.n_examples} training x {design.n_tests} "
                         f"test examples from {source!r}, the coordinator has {shape[0]} x "
                         f"{shape[1]}: the workers must see the same store (shared path) and it "
                         "must not change during the fit")
    st: dict = {}
    tests = np.concatenate(chunks)
    th = solve_tests(design, method, l2, theta0, tests=tests, solver=solver, tol=tol, stats=st,
                     chunks=chunks)
    return tests, th, st


def _fit_dask(runs, design, method, l2, theta0, solver, tol, address, progress, stats,
              sink=None):
    try:
        from distributed import Client
    except ImportError as exc:
        raise MissingExtraError("--dask needs the optional extra: pip install 'simfluence-cli[dask]' "
                                "(dask + distributed)") from exc
    own = not isinstance(address, Client)
    client = Client(address) if own else address
    try:
        nworkers = max(1, len(client.scheduler_info().get("workers", {})))
        m = runs.n_tests
        _, chunks = plan_chunks(design, method, solver)
        parts = chunk_shards(chunks, nworkers * 4)
        store_path = getattr(runs, "store_path", None)
        if store_path is not None:
            source = os.fspath(store_path)
        else:
            source = client.scatter(runs, broadcast=True)
        futs = [client.submit(_shard_dask, source, list(runs.run_ids), t, method, float(l2),
                              theta0, solver, tol, (runs.n_examples, runs.n_tests), pure=False)
                for t in parts]
        from distributed import as_completed as das_completed
        P = len(theta0)
        out = None if sink is not None else np.empty((P, m))
        iters = []
        for f in das_completed(futs):
            tests, th, st = f.result()
            if sink is not None:
                sink(tests, th)
            else:
                out[:, tests] = th
            iters.append(st.get("cg_iterations_max", 0))
            if progress is not None:
                progress(len(tests))
        if stats is not None:
            stats.update(solver=st.get("solver"), n_params=P, dask_workers=nworkers,
                         shards=len(parts), cg_iterations_max=max(iters) if iters else 0,
                         source="store" if store_path is not None else "scattered")
        return out
    finally:
        if own:
            client.close()


# -- rollouts -----------------------------------------------------------------------------------

ROLLOUT_COLS = 128  # test columns per rollout chunk: the (C, 2 * cols) state stays in cache
_FMAX = float(np.finfo(np.float64).max)


def rollout(A: np.ndarray, B: np.ndarray, idx: np.ndarray, L0: np.ndarray, method: str,
            lo: np.ndarray | None, hi: np.ndarray | None, *, final: bool = False,
            threads: int | None = None, precision: str = "float64") -> np.ndarray:
    """The Simfluence recurrence for C curricula x m tests, chunked over test columns.

    Same semantics as ``simulator._rollout`` (A, B: (n, m), an extra trailing row allowed;
    idx (C, T, b) with -1 = padding; steps whose batch is all padding leave the loss
    unchanged; losses clamped to [lo, hi] per test when given). Returns (C, T+1, m), or only
    the losses after the last step, (C, m), with ``final=True`` (no (C, T+1, m) array: at
    1,000 curricula x 2,000 steps x 1,000 tests that would be 16 GB). Each column chunk
    gathers the rows of [A | B] for every batch, so memory is O(C * cols) per thread.
    ``precision="float32"`` gathers and sums the parameters of each batch in float32 (half the
    memory traffic, about 2.5x faster; alpha and beta then carry a relative rounding error of
    ~1e-7 per step) while the loss recurrence itself stays in float64.
    """
    if precision not in ("float64", "float32"):
        from .errors import UsageError
        raise UsageError(f"precision must be 'float64' or 'float32', got {precision!r}")
    pdt = np.float32 if precision == "float32" else np.float64
    from concurrent.futures import ThreadPoolExecutor

    from ._solver import default_threads

    C, T, _ = idx.shape
    m = A.shape[1]
    idx = np.ascontiguousarray(idx.transpose(1, 2, 0))  # (T, b, C): one contiguous gather list
    active = (idx >= 0).any(axis=1)  # (T, C)
    all_active = bool(active.all())
    L0 = np.broadcast_to(np.asarray(L0, dtype=np.float64), (C, m))
    out = np.empty((C, m) if final else (C, T + 1, m))
    if not final:
        out[:, 0] = L0
    additive = method == "additive"
    chunks = [np.arange(s, min(m, s + ROLLOUT_COLS)) for s in range(0, m, ROLLOUT_COLS)]

    def run(cols):
        k = len(cols)
        if additive:
            P = np.vstack([B[:, cols], np.zeros((1, k))]).astype(pdt, copy=False)  # row -1: pad
        else:
            P = np.zeros((A.shape[0] + 1, 2 * k), dtype=pdt)
            P[:-1, :k] = A[:, cols]
            P[:-1, k:] = B[:, cols]
        w = P.shape[1]
        acc = np.empty((C, w), dtype=pdt)
        tmp = np.empty((C, w), dtype=pdt)
        L = np.array(L0[:, cols], copy=True)
        new = np.empty_like(L)
        lo_c = None if lo is None else lo[cols]
        hi_c = None if hi is None else hi[cols]
        with np.errstate(over="ignore", invalid="ignore"):  # unclipped rollouts may diverge
            for t in range(T):
                ix = idx[t]
                np.take(P, ix[0], axis=0, out=acc)
                for j in range(1, ix.shape[0]):
                    np.take(P, ix[j], axis=0, out=tmp)
                    acc += tmp
                if additive:
                    np.add(L, acc, out=new)
                else:
                    np.multiply(acc[:, :k], L, out=new)
                    new += acc[:, k:]
                if lo_c is not None:
                    np.clip(new, lo_c, hi_c, out=new)
                else:  # unclipped: saturate at the largest float, never inf (then 0 * inf = NaN)
                    np.clip(new, -_FMAX, _FMAX, out=new)
                if all_active:
                    L, new = new, L
                else:
                    np.copyto(L, new, where=active[t][:, None])
                if not final:
                    out[:, t + 1, cols] = L
        if final:
            out[:, cols] = L

    threads = default_threads() if threads is None else max(1, int(threads))
    if threads == 1 or len(chunks) == 1:
        for c in chunks:
            run(c)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(run, chunks))
    return out

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
              threads: int | None = None, stats: dict | None = None) -> np.ndarray:
    """Ridge parameters (P, n_tests) of all test examples, sharded as configured."""
    m = design.n_tests
    if dask is not None:
        return _fit_dask(runs, design, method, l2, theta0, solver, tol, dask, progress, stats)
    workers = int(workers or 1)
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if workers == 1 or m < 2:
        return solve_tests(design, method, l2, theta0, solver=solver, tol=tol,
                           progress=progress, threads=threads, stats=stats)
    return _fit_processes(runs, design, method, l2, theta0, solver, tol, workers, progress, stats)


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


def _fit_processes(runs, design, method, l2, theta0, solver, tol, workers, progress, stats):
    m = design.n_tests
    _, chunks = plan_chunks(design, method, solver)
    parts = chunk_shards(chunks, workers * 4)  # several shards per worker: balance, progress
    P = design.n_params(method)
    out = np.empty((P, m))
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


def _shard_dask(source, run_ids, chunks, method, l2, theta0, solver, tol):
    design = _dask_design(source, run_ids)
    st: dict = {}
    tests = np.concatenate(chunks)
    th = solve_tests(design, method, l2, theta0, tests=tests, solver=solver, tol=tol, stats=st,
                     chunks=chunks)
    return tests, th, st


def _fit_dask(runs, design, method, l2, theta0, solver, tol, address, progress, stats):
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
                              theta0, solver, tol, pure=False) for t in parts]
        from distributed import as_completed as das_completed
        P = len(theta0)
        out = np.empty((P, m))
        iters = []
        for f in das_completed(futs):
            tests, th, st = f.result()
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

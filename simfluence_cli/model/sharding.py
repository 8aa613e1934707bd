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
  ``distributed.Client``. If the RunSet has a ``source`` attribute (a picklable object whose
  ``load(run_ids, tests=test_ids)`` returns the runs with only those tests' losses;
  ``RunStore.load`` sets one that reopens the store path, on a shared file system), each Dask
  worker loads the runs with only its shard's test columns; otherwise the RunSet is scattered
  to the workers and cut to the shard's columns there. Either way a worker's design holds its
  shard's tests only, so worker memory does not grow with the number of tests.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager

import numpy as np

from simfluence_cli.errors import MissingExtraError, UsageError
from simfluence_cli.model.solvers import CG_TOL, merge_cg_stats, plan_chunks, solve_tests

_SHARED: dict = {}  # per process: design (and runs) for the local workers / dask tasks


def shards(m: int, n_shards: int) -> list[np.ndarray]:
    """Contiguous, nearly equal shards of range(m) (at most m shards, none empty)."""
    n_shards = max(1, min(int(n_shards), m))
    bounds = np.linspace(0, m, n_shards + 1).round().astype(np.int64)
    return [
        np.arange(bounds[i], bounds[i + 1]) for i in range(n_shards) if bounds[i + 1] > bounds[i]
    ]


def chunk_shards(chunks: list[np.ndarray], n_shards: int) -> list[list[np.ndarray]]:
    """Consecutive whole solver chunks grouped into at most ``n_shards`` shards."""
    return [[chunks[i] for i in idx] for idx in shards(len(chunks), n_shards)]


def fit_theta(
    runs,
    design,
    method: str,
    l2: float,
    theta0: np.ndarray,
    *,
    solver: str = "auto",
    tol: float = CG_TOL,
    workers: int = 1,
    dask=None,
    progress=None,
    threads: int | None = None,
    stats: dict | None = None,
    sink=None,
) -> np.ndarray | None:
    """Ridge parameters (P, n_tests) of all test examples, sharded as configured.

    ``sink(test_indices, theta (P, k))``: hand each finished chunk or shard over as it
    arrives (in any order) instead of collecting them; then None is returned.
    """
    m = design.n_tests
    if dask is not None:
        return _fit_dask(runs, design, method, l2, theta0, solver, tol, dask, progress, stats, sink)
    workers = int(workers or 1)
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if workers == 1 or m < 2:
        return solve_tests(
            design,
            method,
            l2,
            theta0,
            solver=solver,
            tol=tol,
            progress=progress,
            threads=threads,
            stats=stats,
            sink=sink,
        )
    return _fit_processes(
        runs, design, method, l2, theta0, solver, tol, workers, progress, stats, sink
    )


# -- local processes ----------------------------------------------------------------------------


def _shard_local(chunks, method, l2, theta0, solver, tol):
    design = _SHARED["design"]
    st: dict = {}
    th = solve_tests(
        design,
        method,
        l2,
        theta0,
        tests=np.concatenate(chunks),
        solver=solver,
        tol=tol,
        threads=1,
        stats=st,
        chunks=chunks,
    )
    return th, st


def _init_spawned(runs):  # pragma: no cover - only without fork
    from simfluence_cli.model.normal_equations import Design

    _SHARED["design"] = Design(runs)


def _fit_processes(
    runs, design, method, l2, theta0, solver, tol, workers, progress, stats, sink=None
):
    m = design.n_tests
    _, chunks = plan_chunks(design, method, solver)
    parts = chunk_shards(chunks, workers * 4)  # several shards per worker: balance, progress
    P = design.n_params(method)
    if "fork" in mp.get_all_start_methods():
        ctx = mp.get_context("fork")
        _SHARED["design"] = design  # inherited by the forked workers, not pickled
        pool = ProcessPoolExecutor(workers, mp_context=ctx)
    else:  # pragma: no cover
        pool = ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=_init_spawned, initargs=(runs,)
        )
    try:
        with pool:
            futs = {
                pool.submit(_shard_local, c, method, l2, theta0, solver, tol): np.concatenate(c)
                for c in parts
            }
            done = ((futs[f], *f.result()) for f in as_completed(futs))
            return _gather_shards(
                done, P, m, sink, progress, stats, workers=workers, shards=len(parts)
            )
    finally:
        _SHARED.pop("design", None)


def _gather_shards(done, P, m, sink, progress, stats, **where):
    """Place each finished shard's (tests, theta (P, k), solver stats) as it arrives: into
    ``sink`` or the returned (P, m) array (None with a sink); record the fit's stats (solver,
    size, ``where`` it ran, CG iterations merged over the shards) into ``stats``."""
    out = None if sink is not None else np.empty((P, m))
    iters, parts_st = [], []
    for tests, th, st in done:
        if sink is not None:
            sink(tests, th)
        else:
            out[:, tests] = th
        iters.append(st.get("cg_iterations_max", 0))
        parts_st.append(st)
        if progress is not None:
            progress(len(tests))
    if stats is not None:
        stats.update(
            solver=parts_st[-1].get("solver") if parts_st else None,
            n_params=P,
            **where,
            cg_iterations_max=max(iters) if iters else 0,
            **merge_cg_stats(parts_st),
        )
    return out


# -- dask ---------------------------------------------------------------------------------------


def _columns(runs, cols: np.ndarray):
    """The same runs restricted to the test columns ``cols`` (copies of those losses)."""
    from dataclasses import replace

    from simfluence_cli.runs import RunSet

    return RunSet(
        runs.example_ids,
        runs.test_ids[cols],
        [replace(r, losses=r.losses[:, cols]) for r in runs.runs],
    )


def _dask_design(source, key, run_ids, tests: np.ndarray, test_ids, labels):
    """(Design of the shard's test columns only, global indices of its columns) on a Dask
    worker. Loaded sources read only those tests' losses; a scattered RunSet is cut to them
    before the design is built. One design is cached per worker process and reused while a
    shard's tests are a subset of its columns (then nothing is loaded or built again)."""
    key = (key, tuple(run_ids))
    hit = _SHARED.get("dask")
    if hit is not None and hit[0] == key and np.isin(tests, hit[1]).all():
        return hit[2], hit[1]
    _SHARED.pop("dask", None)  # free the previous shard's design before building this one
    from simfluence_cli.model.normal_equations import Design

    if hasattr(source, "load"):
        runs = source.load(run_ids, tests=list(test_ids))
    else:
        runs = _columns(source, tests)
    design = Design(runs)
    design.group_as(labels, run_ids)  # the coordinator's logging groups: identical sums
    _SHARED["dask"] = (key, tests, design)
    return design, tests


def _shard_dask(
    source, key, run_ids, chunks, test_ids, labels, method, l2, theta0, solver, tol, n_ex
):
    """Solve one shard on a Dask worker: ``chunks`` (global test indices), ``test_ids`` and
    ``labels`` (the coordinator's :meth:`Design.group_labels` of those tests) describe it."""
    tests = np.concatenate(chunks)
    design, cols = _dask_design(source, key, run_ids, tests, test_ids, labels)
    if design.n_examples != n_ex or design.n_tests != len(cols):
        from simfluence_cli.errors import StoreError

        raise StoreError(
            f"a Dask worker loaded {design.n_examples} training x {design.n_tests} "
            f"test examples from {source!r}, the coordinator has {n_ex} x "
            f"{len(cols)}: the workers must see the same store (shared path) and it "
            "must not change during the fit"
        )
    order = np.argsort(cols, kind="stable")  # global test index -> the design's column
    local = [order[np.searchsorted(cols, c, sorter=order)] for c in chunks]
    st: dict = {}
    th = solve_tests(
        design,
        method,
        l2,
        theta0,
        tests=np.concatenate(local),
        solver=solver,
        tol=tol,
        stats=st,
        chunks=local,
    )
    return tests, th, st


@contextmanager
def _dask_client(address):
    """``(client, n_workers)`` for a Dask scheduler ``address`` (a client made here and closed
    on exit) or an existing ``distributed.Client`` (left open)."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise MissingExtraError(
            "--dask needs the optional extra: pip install 'simfluence-cli[dask]' "
            "(dask + distributed)"
        ) from exc
    own = not isinstance(address, Client)
    client = Client(address) if own else address
    try:
        yield client, max(1, len(client.scheduler_info().get("workers", {})))
    finally:
        if own:
            client.close()


def _fit_dask(runs, design, method, l2, theta0, solver, tol, address, progress, stats, sink=None):
    with _dask_client(address) as (client, nworkers):
        m = runs.n_tests
        _, chunks = plan_chunks(design, method, solver)
        parts = chunk_shards(chunks, nworkers * 4)
        source = getattr(runs, "source", None)
        if source is None:
            source = client.scatter(runs, broadcast=True)
            key = source.key  # names this RunSet's content on the workers
        else:
            key = repr(source)
        test_ids = np.asarray(runs.test_ids, dtype=object)
        labels = design.group_labels()  # (runs, tests): small next to the losses
        futs = [
            client.submit(
                _shard_dask,
                source,
                key,
                list(design.run_ids),
                t,
                test_ids[np.concatenate(t)].tolist(),
                labels[:, np.concatenate(t)],
                method,
                float(l2),
                theta0,
                solver,
                tol,
                runs.n_examples,
                pure=False,
            )
            for t in parts
        ]
        from distributed import as_completed as das_completed

        return _gather_shards(
            (f.result() for f in das_completed(futs)),
            len(theta0),
            m,
            sink,
            progress,
            stats,
            dask_workers=nworkers,
            shards=len(parts),
            source="loaded by workers" if hasattr(source, "load") else "scattered",
        )


# -- any per-chunk solve (the optimizer-aware fit) -----------------------------------------------


def fit_chunks(
    task,
    chunks: list[np.ndarray],
    n_rows: int,
    *,
    workers: int = 1,
    dask=None,
    threads: int | None = None,
    progress=None,
    stats: dict | None = None,
    sink=None,
) -> np.ndarray | None:
    """Parameters (n_rows, n_tests) from ``task(chunks) -> (tests, theta (n_rows, k), stats)``
    over consecutive groups of test ``chunks``: in this process (chunks on ``threads``
    threads), on ``workers`` local processes, or on a Dask cluster (``dask``). Every backend
    solves exactly these chunks, so the parameters do not depend on it. ``task`` must be
    picklable for Dask; ``sink``, ``progress`` and ``stats`` as in :func:`fit_theta`.
    """
    m = int(sum(len(c) for c in chunks))
    if dask is not None:
        return _chunks_dask(task, chunks, n_rows, m, dask, progress, stats, sink)
    workers = int(workers or 1)
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and len(chunks) > 1:
        return _chunks_processes(task, chunks, n_rows, m, workers, progress, stats, sink)
    from simfluence_cli.model.solvers import default_threads

    threads = default_threads() if threads is None else max(1, int(threads))
    if threads == 1 or len(chunks) == 1:
        done = (task([c]) for c in chunks)
        return _gather_shards(done, n_rows, m, sink, progress, stats, threads=1, shards=len(chunks))
    from simfluence_cli._pool import thread_pool

    with thread_pool(threads) as ex:
        futs = [ex.submit(task, [c]) for c in chunks]
        done = (f.result() for f in as_completed(futs))
        return _gather_shards(
            done, n_rows, m, sink, progress, stats, threads=threads, shards=len(chunks)
        )


def _task_shard(chunks):
    return _SHARED["task"](chunks)


def _chunks_processes(task, chunks, n_rows, m, workers, progress, stats, sink):
    parts = chunk_shards(chunks, workers * 4)
    if "fork" in mp.get_all_start_methods():
        _SHARED["task"] = task  # inherited by the forked workers, not pickled
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
        fn, args = _task_shard, [(c,) for c in parts]
    else:  # pragma: no cover
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        fn, args = task, [(c,) for c in parts]
    try:
        with pool:
            futs = [pool.submit(fn, *a) for a in args]
            done = (f.result() for f in as_completed(futs))
            return _gather_shards(
                done, n_rows, m, sink, progress, stats, workers=workers, shards=len(parts)
            )
    finally:
        _SHARED.pop("task", None)


def _chunks_dask(task, chunks, n_rows, m, address, progress, stats, sink):
    with _dask_client(address) as (client, nworkers):
        from distributed import as_completed as das_completed

        parts = chunk_shards(chunks, nworkers * 4)
        shared = client.scatter(task, broadcast=True)  # pickled once, not per shard
        futs = [client.submit(_call, shared, c, pure=False) for c in parts]
        return _gather_shards(
            (f.result() for f in das_completed(futs)),
            n_rows,
            m,
            sink,
            progress,
            stats,
            dask_workers=nworkers,
            shards=len(parts),
        )


def _call(task, chunks):
    return task(chunks)

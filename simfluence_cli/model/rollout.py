"""The Simfluence recurrence rolled forward for many curricula and tests (one kernel)."""

from __future__ import annotations

import numpy as np

# -- rollouts -----------------------------------------------------------------------------------

ROLLOUT_COLS = 128  # test columns per rollout chunk: the (C, 2 * cols) state stays in cache
BLOCK_COLS = 16  # narrower chunks when the gathered table is large (cache blocking)
TABLE_CACHE_BYTES = 4 * 2**20  # per thread: keep the (n + 1, 2 * cols) table in L2/L3


def chunk_cols(n_rows: int, n_curricula: int, itemsize: int = 8) -> int:
    """Test columns per rollout chunk: ROLLOUT_COLS, or down to BLOCK_COLS when the chunk's
    parameter table [A | B] would not stay in cache and there are enough curricula (>= 64)
    for each narrower gather to amortise its call. Only the grouping changes: each column's
    arithmetic is the same, so the results are bit-identical."""
    cols = ROLLOUT_COLS
    if n_curricula >= 64:
        while cols > BLOCK_COLS and (n_rows + 1) * 2 * cols * itemsize > TABLE_CACHE_BYTES:
            cols //= 2
    return cols


_FMAX = float(np.finfo(np.float64).max)

KERNELS_ENV = "SIMFLUENCE_KERNELS"  # auto (default) | numpy | numba
# gather-adds (curricula x steps x batch slots x tests) from which the compiled kernel pays for
# itself: importing numba and loading the cached kernel cost ~0.5-1 s CPU once per process,
# the numpy path ~4e-9 s CPU per gather-add (bench/RESULTS-rollout.md, section 3)
NUMBA_MIN_WORK = 3 * 10**8
# without a writable numba cache directory every process compiles the kernel (~8 s CPU)
NUMBA_MIN_WORK_UNCACHED = 5 * 10**9


def kernels_choice() -> str:
    """$SIMFLUENCE_KERNELS: 'auto' (default: numba for large float64 rollouts when it is
    installed), 'numpy' (never numba) or 'numba' (always, for float64; error if missing)."""
    import os

    from simfluence_cli.errors import UsageError

    v = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if v not in ("auto", "numpy", "numba"):
        raise UsageError(f"{KERNELS_ENV} must be 'auto', 'numpy' or 'numba', got {v!r}")
    return v


def numba_available() -> bool:
    """numba is importable (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def use_numba(work: int) -> bool:
    """Whether a float64 rollout of ``work`` gather-adds runs the compiled kernel."""
    choice = kernels_choice()
    if choice == "numpy":
        return False
    if choice == "numba":
        if not numba_available():
            from simfluence_cli.errors import UsageError

            raise UsageError(
                f"{KERNELS_ENV}=numba but numba is not installed "
                "(pip install 'simfluence-cli[fast]')"
            )
        return True
    return work >= NUMBA_MIN_WORK and numba_available()


def kernel_applies(A: np.ndarray, idx: np.ndarray) -> bool:
    """use_numba, and indices the kernel takes (the numpy path alone reads row n as padding
    and raises its IndexError beyond), and, when numba cannot cache the compiled kernel, a
    problem that repays compiling it in this process."""
    work = idx.size * A.shape[1]
    if not (idx.size and use_numba(work)) or idx.min() < -1 or idx.max() >= A.shape[0]:
        return False
    from simfluence_cli.model import _kernels

    if kernels_choice() == "numba":
        return True
    return not _kernels.BROKEN and (_kernels.CACHED or work >= NUMBA_MIN_WORK_UNCACHED)


def run_compiled(kernel, args, *, final: bool, threads: int | None):
    """``kernel(*args, final=final, threads=...)`` (a model._kernels rollout), or None after a
    RuntimeWarning when it failed to compile (then the caller's numpy path; with
    $SIMFLUENCE_KERNELS=numba the error is raised instead). threads: default_threads()."""
    from simfluence_cli.model._kernels import KernelUnavailable
    from simfluence_cli.model.solvers import default_threads

    nthreads = default_threads() if threads is None else max(1, int(threads))
    try:
        return kernel(*args, final=final, threads=nthreads)
    except KernelUnavailable as e:
        if kernels_choice() == "numba":
            raise
        import warnings

        warnings.warn(
            f"the compiled rollout kernel failed to compile ({e}); using numpy",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def rollout(
    A: np.ndarray,
    B: np.ndarray,
    idx: np.ndarray,
    L0: np.ndarray,
    method: str,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
    *,
    final: bool = False,
    threads: int | None = None,
    precision: str = "float64",
) -> np.ndarray:
    """The Simfluence recurrence for C curricula x m tests, chunked over test columns.

    Same semantics as ``simulator._rollout`` (A, B: (n, m), an extra trailing row allowed;
    idx (C, T, b) with -1 = padding; steps whose batch is all padding leave the loss
    unchanged; losses clamped to [lo, hi] per test when given). Returns (C, T+1, m), or only
    the losses after the last step, (C, m), with ``final=True`` (no (C, T+1, m) array: at
    1,000 curricula x 2,000 steps x 1,000 tests that would be 16 GB). Each column chunk
    gathers the rows of [A | B] for every batch, so memory is O(C * cols) per thread.
    ``precision="float32"`` gathers and sums the parameters of each batch in float32 (half the
    memory traffic) while the loss recurrence itself stays in float64. A is stored centred,
    A - (its mean over examples, per test), so float32 rounds only the small deviations and
    alpha = (examples in the batch) x mean + their float32 sum keeps ~1e-9 relative accuracy
    instead of ~1e-7 per step (bench/RESULTS-rollout.md measures the deviation).
    float64 rollouts of >= NUMBA_MIN_WORK gather-adds run a compiled kernel (model._kernels)
    when numba is installed, with the same results; ``$SIMFLUENCE_KERNELS`` (``kernels_choice``)
    forces either path.
    """
    if precision not in ("float64", "float32"):
        from simfluence_cli.errors import UsageError

        raise UsageError(f"precision must be 'float64' or 'float32', got {precision!r}")
    if precision == "float64" and kernel_applies(A, idx):
        from simfluence_cli.model._kernels import rollout_numba

        args = (A, B, idx, L0, method, lo, hi)
        got = run_compiled(rollout_numba, args, final=final, threads=threads)
        if got is not None:
            return got
    pdt = np.float32 if precision == "float32" else np.float64

    from simfluence_cli.model.solvers import default_threads

    C, T, _ = idx.shape
    m = A.shape[1]
    n1 = A.shape[0] + 1  # the zero row read by -1 (padding)
    if idx.size and (idx.max() >= n1 or idx.min() < -n1):
        raise IndexError(f"index {int(idx.max())} is out of bounds for a table of {n1} rows")
    # checked above, so "wrap" only maps -1 (padding) to the zero row: np.take's default
    # mode="raise" buffers its output (~2x the cost of the gather)
    idx = np.ascontiguousarray(idx.transpose(1, 2, 0))  # (T, b, C): one contiguous gather list
    active = (idx >= 0).any(axis=1)  # (T, C)
    all_active = bool(active.all())
    L0 = np.broadcast_to(np.asarray(L0, dtype=np.float64), (C, m))
    out = np.empty((C, m) if final else (C, T + 1, m))
    if not final:
        out[:, 0] = L0
    additive = method == "additive"
    centred = pdt is np.float32 and not additive
    if centred:
        counts = (idx >= 0).sum(axis=1).astype(np.float64)  # (T, C) examples per batch
        uniform = T > 0 and counts.min() == counts.max()
    width = chunk_cols(A.shape[0], C, np.dtype(pdt).itemsize)
    chunks = [np.arange(s, min(m, s + width)) for s in range(0, m, width)]

    def run(cols):
        k = len(cols)
        if additive:
            P = np.vstack([B[:, cols], np.zeros((1, k))]).astype(pdt, copy=False)  # row -1: pad
        else:
            P = np.zeros((A.shape[0] + 1, 2 * k), dtype=pdt)
            P[:-1, :k] = A[:, cols]
            P[:-1, k:] = B[:, cols]
            if centred:
                centre = A[:, cols].mean(axis=0)
                centre = np.where(np.isfinite(centre), centre, 0.0)
                P[:-1, :k] = A[:, cols] - centre
                alpha = np.empty((C, k))
                base = counts[0, 0] * centre if uniform else None
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
                np.take(P, ix[0], axis=0, out=acc, mode="wrap")
                for j in range(1, ix.shape[0]):
                    np.take(P, ix[j], axis=0, out=tmp, mode="wrap")
                    acc += tmp
                if additive:
                    np.add(L, acc, out=new)
                elif centred:
                    if uniform:
                        np.add(acc[:, :k], base, out=alpha)
                    else:
                        np.multiply.outer(counts[t], centre, out=alpha)
                        alpha += acc[:, :k]
                    np.multiply(alpha, L, out=new)
                    new += acc[:, k:]
                else:
                    np.multiply(acc[:, :k], L, out=new)
                    new += acc[:, k:]
                # clamp = min(max(x, lo), hi), exactly np.clip (NaN stays NaN) at a third of its
                # cost: np.clip with array bounds goes through a slower generic path
                if lo_c is not None:
                    np.maximum(new, lo_c, out=new)
                    np.minimum(new, hi_c, out=new)
                else:  # unclipped: saturate at the largest float, never inf (then 0 * inf = NaN)
                    np.maximum(new, -_FMAX, out=new)
                    np.minimum(new, _FMAX, out=new)
                if all_active:
                    L, new = new, L
                else:
                    np.copyto(L, new, where=active[t][:, None])
                if not final:
                    out[:, t + 1, cols] = L
        if final:
            out[:, cols] = L

    run_chunks(run, chunks, default_threads() if threads is None else threads)
    return out


def run_chunks(run, chunks: list, threads: int) -> None:
    """``run(chunk)`` for every column chunk: in this thread, or on ``threads`` threads when
    there are more chunks than one (the numpy products release the GIL; numpy's error state
    is per thread, so ``run`` sets its own)."""
    threads = max(1, int(threads))
    if threads == 1 or len(chunks) == 1:
        for c in chunks:
            run(c)
        return
    from simfluence_cli._pool import thread_pool

    with thread_pool(threads) as ex:
        list(ex.map(run, chunks))


# -- exact removal deltas ---------------------------------------------------------------------
#
# One step of a rollout, for one test, is a clamped affine map x -> min(max(a x + b, lo), hi)
# (lo <= hi; an unclipped model saturates at +-_FMAX, an all-padding step is the identity
# a = 1, b = 0, lo = -_FMAX, hi = _FMAX). Such maps are closed under composition
# (``compose_clamped``), so a table of the compositions over every range [s, s + 2^k) lets the
# final loss without an example be rolled from its first occurrence in O(occurrences x log T)
# map applications instead of T steps (docs/rollout.md).

REMOVAL_BUDGET = 16 * 2**20  # bytes of composition tables held at once (curricula x columns)


def compose_clamped(inner, outer, out=None):
    """The clamped affine map ``outer(inner(x))`` as (a, b, lo, hi): each map is a tuple of
    broadcastable arrays (a, b, lo, hi) meaning x -> min(max(a x + b, lo), hi), lo <= hi,
    finite bounds (use +-float max for "none"). ``out``: four arrays to write into (none of
    them may be one of the inputs)."""
    a1, b1, l1, h1 = inner
    a2, b2, l2, h2 = outer
    if out is None:
        shape = np.broadcast_shapes(*(np.shape(v) for v in (*inner, *outer)))
        out = tuple(np.empty(shape) for _ in range(4))
    a, b, lo, hi = out
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(a2, a1, out=a)
        np.multiply(a2, b1, out=b)
        b += b2
        p = np.multiply(a2, l1)  # a2 < 0 swaps the ends of inner's range
        q = np.multiply(a2, h1)
        np.minimum(p, q, out=lo)
        np.maximum(p, q, out=hi)
        for v in (lo, hi):
            v += b2
            np.maximum(v, l2, out=v)
            np.minimum(v, h2, out=v)
    return a, b, lo, hi


def _apply(a, b, lo, hi, x, out=None):
    """min(max(a x + b, lo), hi) in the rollout kernel's order of operations."""
    out = np.multiply(a, x, out=out)
    out += b
    np.maximum(out, lo, out=out)
    np.minimum(out, hi, out=out)
    return out


def table_groups(C: int, m: int, T: int, tables: int, budget: int):
    """(curricula, test columns) index groups, test columns outermost, whose composition tables
    (``tables`` float64 arrays of K = T.bit_length() levels x T steps per curriculum x column:
    ranges of 1, 2, ..., 2^(K-1) <= T steps) take about ``budget`` bytes each."""
    per_cell = T.bit_length() * T * tables * 8  # table bytes per curriculum x column
    cols_per = int(min(m, max(1, budget // per_cell)))
    curr_per = int(min(C, max(1, budget // (per_cell * cols_per))))
    return [
        (np.arange(c, min(C, c + curr_per)), np.arange(s, min(m, s + cols_per)))
        for s in range(0, m, cols_per)
        for c in range(0, C, curr_per)
    ]


def removal_deltas(
    A: np.ndarray,
    B: np.ndarray,
    idx: np.ndarray,
    L0: np.ndarray,
    method: str,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
    neutral: int,
    *,
    budget: int | None = None,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """For every row i of A, B: the final loss with each occurrence of i in a curriculum
    replaced by row ``neutral`` minus the final loss of the curriculum as it is, summed over
    the C curricula, exactly (same recurrence as :func:`rollout`, rounding aside).

    A, B: (R, m) parameters (row ``neutral`` included); idx: (C, T, b), -1 = padding;
    L0: (m,) or (C, m); lo, hi: (m,) clamp or None. Returns (deltas (R, m), final (C, m):
    the unchanged curricula's final losses). Rows that occur in no curriculum get 0. Works on
    groups of curricula x test columns whose composition tables take about ``budget`` bytes.
    Curricula whose tables overflow (diverging unclipped rollouts) are rolled again instead.
    """
    budget = REMOVAL_BUDGET if budget is None else budget
    C, T, b = idx.shape
    R, m = A.shape
    L0 = np.broadcast_to(np.asarray(L0, dtype=np.float64), (C, m))
    deltas = np.zeros((R, m))
    final = np.empty((C, m))
    if T == 0 or C == 0:
        final[:] = L0
        return deltas, final
    for cs, cols in table_groups(C, m, T, 4, budget):
        gc, ge, delta, f, bad = _removal_group(
            A, B, idx[cs], L0[cs][:, cols], method, lo, hi, neutral, cols
        )
        final[np.ix_(cs, cols)] = f
        for c in np.flatnonzero(bad):  # overflowing tables: roll each removal again
            d, f = _reroll_deltas(A, B, idx[cs[c]], L0[cs[c]][cols], method, lo, hi, neutral, cols)
            ex = np.unique(idx[cs[c]][(idx[cs[c]] >= 0) & (idx[cs[c]] != neutral)])
            gc, ge = np.r_[gc, np.full(len(ex), c)], np.r_[ge, ex]
            delta = np.concatenate([delta, d[ex]])
            final[cs[c], cols] = f
        add_by_curriculum(deltas, cols, gc, ge, delta)
        if progress is not None:
            progress(len(cs) * len(cols) / (C * m))
    return deltas, final


def _step_params(A, B, idx, method, cols):
    """alpha, beta (C, T, k) of every step, summed over the batch in the rollout's order."""
    k = len(cols)
    additive = method == "additive"
    P = np.zeros((A.shape[0] + 1, k if additive else 2 * k))  # last row: padding
    if additive:
        P[:-1] = B[:, cols]
    else:
        P[:-1, :k] = A[:, cols]
        P[:-1, k:] = B[:, cols]
    acc = np.take(P, idx[..., 0], axis=0)
    for j in range(1, idx.shape[-1]):
        acc += np.take(P, idx[..., j], axis=0)
    if additive:
        return np.ones_like(acc), acc
    return acc[..., :k], acc[..., k:]


def _removal_group(A, B, idx, L0, method, lo, hi, neutral, cols):
    C, T, b = idx.shape
    R, k = A.shape[0], len(cols)
    K = T.bit_length()
    active = (idx >= 0).any(axis=2)  # (C, T)
    lo_c = np.full(k, -_FMAX) if lo is None else np.asarray(lo, dtype=np.float64)[cols]
    hi_c = np.full(k, _FMAX) if hi is None else np.asarray(hi, dtype=np.float64)[cols]
    # level 0: the step maps; tables (K, C, T, k) of a, b, lo, hi; entry [j, c, s] = steps
    # s .. s + 2^j - 1 of curriculum c composed (valid for s + 2^j <= T)
    ta, tb, tl, th = (np.empty((K, C, T, k)) for _ in range(4))
    alpha, beta = _step_params(A, B, idx, method, cols)
    act = active[..., None]
    np.copyto(ta[0], np.where(act, alpha, 1.0))
    np.copyto(tb[0], np.where(act, beta, 0.0))
    np.copyto(tl[0], np.where(act, lo_c, -_FMAX))
    np.copyto(th[0], np.where(act, hi_c, _FMAX))
    alpha = beta = None
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.empty((C, T + 1, k))  # the unchanged trajectory
        x[:, 0] = L0
        for t in range(T):
            _apply(ta[0, :, t], tb[0, :, t], tl[0, :, t], th[0, :, t], x[:, t], out=x[:, t + 1])
        for j in range(1, K):
            h, n = 1 << (j - 1), T - (1 << j) + 1
            prev = (ta[j - 1], tb[j - 1], tl[j - 1], th[j - 1])
            compose_clamped(
                tuple(v[:, :n] for v in prev),
                tuple(v[:, h : h + n] for v in prev),
                out=(ta[j, :, :n], tb[j, :, :n], tl[j, :, :n], th[j, :, :n]),
            )
        # non-finite entries propagate to the top level, whose ranges cover every step
        n = T - (1 << (K - 1)) + 1
        bad = ~np.isfinite(x).all(axis=(1, 2))
        bad |= ~(np.isfinite(ta[K - 1, :, :n]) & np.isfinite(tb[K - 1, :, :n])).all(axis=(1, 2))
    final = x[:, T].copy()
    # occurrences: unique (curriculum, example, step), sorted in that order
    c_, t_, j_ = np.nonzero(idx >= 0)
    e_ = idx[c_, t_, j_]
    keep = (e_ != neutral) & ~bad[c_]
    key = np.unique((c_[keep] * R + e_[keep]) * T + t_[keep])
    if key.size == 0:
        none = np.zeros(0, dtype=np.int64)
        return none, none, np.zeros((0, k)), final, bad
    t_o, ce = key % T, key // T
    starts = np.flatnonzero(np.r_[True, ce[1:] != ce[:-1]])
    counts = np.diff(np.r_[starts, len(ce)])
    order = np.argsort(-counts, kind="stable")  # most occurrences first: round r = a prefix
    starts, counts = starts[order], counts[order]
    gc, ge = ce[starts] // R, ce[starts] % R
    V = x[gc, t_o[starts]]  # (G, k): the loss just before each example's first occurrence
    P = np.zeros((R + 1, k if method == "additive" else 2 * k))
    if method == "additive":
        P[:-1] = B[:, cols]
    else:
        P[:-1, :k], P[:-1, k:] = A[:, cols], B[:, cols]
    with np.errstate(over="ignore", invalid="ignore"):
        for r in range(int(counts[0])):
            nr = int(np.count_nonzero(counts > r))
            v, cc, ee = V[:nr], gc[:nr], ge[:nr]
            tt = t_o[starts[:nr] + r]
            # the step with the example's slot(s) refilled by the neutral row
            rows = idx[cc, tt]
            rows = np.where(rows == ee[:, None], neutral, rows)
            acc = np.take(P, rows[:, 0], axis=0)
            for j in range(1, b):
                acc += np.take(P, rows[:, j], axis=0)
            if method == "additive":
                v += acc
            else:
                v *= acc[:, :k]
                v += acc[:, k:]
            np.maximum(v, lo_c, out=v)
            np.minimum(v, hi_c, out=v)
            # then the unchanged steps up to the next occurrence (or the end)
            more = counts[:nr] > r + 1
            nxt = np.where(more, t_o[np.minimum(starts[:nr] + r + 1, len(t_o) - 1)], T)
            pos = tt + 1
            length = nxt - pos
            for j in range(K):
                sel = np.flatnonzero((length >> j) & 1)
                if sel.size == 0:
                    continue
                ci, pi = cc[sel], pos[sel]
                v[sel] = _apply(ta[j, ci, pi], tb[j, ci, pi], tl[j, ci, pi], th[j, ci, pi], v[sel])
                pos[sel] += 1 << j
    return gc, ge, V - final[gc], final, bad


def add_by_curriculum(deltas, cols, gc, ge, delta) -> None:
    """``deltas[ge[i], cols] += delta[i]`` (one entry per curriculum ``gc[i]`` and example
    ``ge[i]`` of a group), one curriculum at a time in ascending order. Groups come in
    ascending curriculum order for each block of columns, so every example's sum over the
    curricula is rounded the same way however the curricula are grouped; the grouping follows
    the number of test columns (``table_groups``), so ``top``'s removal effects are the same
    to the bit for any ``$SIMFLUENCE_TEST_CHUNK``."""
    if len(gc) == 0:
        return
    view = deltas[:, int(cols[0]) : int(cols[-1]) + 1]  # cols: consecutive columns
    o = np.lexsort((ge, gc))
    gc, ge, delta = gc[o], ge[o], delta[o]
    cut = np.flatnonzero(np.r_[True, gc[1:] != gc[:-1], True])
    for s, e in zip(cut[:-1], cut[1:]):  # an example occurs once per curriculum here
        view[ge[s:e]] += delta[s:e]


def _reroll_deltas(A, B, idx, L0, method, lo, hi, neutral, cols):
    """removal_deltas of one curriculum (T, b) by rolling every removal again (the reference)."""
    R = A.shape[0]
    Ac, Bc = A[:, cols], B[:, cols]
    loc = None if lo is None else np.asarray(lo)[cols]
    hic = None if hi is None else np.asarray(hi)[cols]
    final = rollout(Ac, Bc, idx[None], L0, method, loc, hic, final=True, threads=1)[0]
    deltas = np.zeros((R, len(cols)))
    ex = np.unique(idx[(idx >= 0) & (idx != neutral)])
    if ex.size:
        sub = np.where(idx[None] == ex[:, None, None], neutral, idx[None])
        out = rollout(Ac, Bc, sub, L0, method, loc, hic, final=True, threads=1)
        deltas[ex] = out - final
    return deltas, final

"""Compiled rollout kernels (numba, the optional ``fast`` extra): the gather-sum of each batch's
parameter rows, the recurrence and the clamp fused in one pass, parallel over test-column blocks
x curricula; ``_kernel`` for the Linear / additive / multiplicative models, ``_oa_kernel`` for
the optimizer-aware one. A rollout is many short calls (``spans``) so that Ctrl-C interrupts it.

Imported only by :func:`simfluence_cli.model.rollout.rollout` and
:func:`simfluence_cli.model.optimizer_aware.rollout` for problems large enough to repay numba's
import and cache load (``use_numba``); same semantics as the numpy paths, bit for bit (no
fast-math: sums in slot order, products and sums in the numpy expressions' order, without fused
multiply-add).
"""

from __future__ import annotations

import os
import threading

import numba
import numpy as np
from llvmlite import binding, ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

BLOCK_COLS = 16  # test columns per task: its [A | B] table (n x 32 doubles) stays in L2/L3
PF = 4  # prefetch the rows of the step this many steps ahead
_FMAX = float(np.finfo(np.float64).max)
# gather-adds per kernel call and thread: ~0.5 s at the kernel's ~1.2e-9 s CPU per gather-add
# (Ctrl-C is handled between calls)
CALL_WORK_PER_THREAD = 4 * 10**8
if "NUMBA_THREADING_LAYER" not in os.environ:
    # GNU OpenMP (numba's first choice when TBB is missing) aborts a forked child that runs a
    # parallel kernel; 'forksafe' takes TBB, else workqueue (as fast here: 2.07 vs 2.11 s CPU)
    numba.config.THREADING_LAYER = "forksafe"
_lock = threading.Lock()  # one parallel kernel at a time (numba's workqueue layer needs it)
BROKEN = False  # set when the kernel failed to compile: the numpy path from then on


class KernelUnavailable(RuntimeError):
    """numba could not compile the kernel (e.g. an llvmlite it was not tested with)."""


# the intrinsic's name mangles its pointer type: opaque pointers from LLVM 15 (llvmlite 0.44)
_PREFETCH = "llvm.prefetch.p0" if binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, i, j):
    """Hint the CPU to bring the cache line of ``arr[i, j]`` (2-D) in: llvm.prefetch."""
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ix = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:])]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, ix, wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep
        return context.get_dummy_value()

    return sig, codegen


def _inline(fn):
    """numba.njit(inline='always'): a helper the kernels inline at numba IR level."""
    return numba.njit(inline="always")(fn)


@_inline
def _fill_table(P, A, B, s, k, n, w):
    """P[r, :w] = [A[r, s:s+k] | B[r, s:s+k]] (only B's part when w == k), P[n] = 0: a
    block's parameter rows and the zero row the padding (-1) reads, as the numpy path."""
    for j in range(w):
        P[n, j] = 0.0  # row n: padding
    for r in range(n):
        if w > k:
            for j in range(k):
                P[r, j] = A[r, s + j]
        for j in range(k):
            P[r, w - k + j] = B[r, s + j]


@_inline
def _batch_sum(P, idx, c, t, n, w, rows, acc):
    """acc[:w] = the sum of the table rows of batch idx[c, t] in slot order (padding reads
    the zero row n), added left to right as numpy does, four rows per pass; prefetches the
    rows of step t + PF. Returns False (acc untouched) when the batch is all padding."""
    T, nb = idx.shape[1], idx.shape[2]
    if t + PF < T:  # the rows of a later step: their cache lines load meanwhile
        for q in range(nb):
            r = idx[c, t + PF, q]
            if r >= 0:
                for j in range(0, w, 8):
                    _prefetch(P, r, j)
    active = False
    for q in range(nb):
        r = idx[c, t, q]
        if r < 0:
            r = n
        else:
            active = True
        rows[q] = r
    if not active:
        return False
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    if nb >= 4:
        for j in range(w):
            acc[j] = P[r0, j] + P[r1, j] + P[r2, j] + P[r3, j]
        q = 4
    else:
        for j in range(w):
            acc[j] = P[r0, j]
        q = 1
    while q + 4 <= nb:
        r0, r1, r2, r3 = rows[q], rows[q + 1], rows[q + 2], rows[q + 3]
        for j in range(w):
            acc[j] = acc[j] + P[r0, j] + P[r1, j] + P[r2, j] + P[r3, j]
        q += 4
    while q < nb:
        r0 = rows[q]
        for j in range(w):
            acc[j] += P[r0, j]
        q += 1
    return True


def _kernel(A, B, idx, L0, lo, hi, additive, final, width, span, groups, out, tables):
    """Tasks (parallel, one thread each): a block of ``width`` test columns x a group of
    curricula, over the blocks [b0, b1) x curricula [c0, c1) of ``span`` = (b0, b1, c0, c1).
    A task copies its block's [A | B] rows into one table (``_fill_table``), then per
    curriculum and step sums the batch's rows (``_batch_sum``) and updates the losses in
    place. ``tables``: (threads, n + 1, >= 2 width) scratch, one table per thread."""
    T, nb = idx.shape[1], idx.shape[2]
    n, m = A.shape
    b0, b1, c0, c1 = span
    per = (c1 - c0 + groups - 1) // groups
    for task in prange((b1 - b0) * groups):
        s = (b0 + task // groups) * width
        k = min(width, m - s)
        w = k if additive else 2 * k  # row r of the block's table: [A[r] | B[r]]
        tid = numba.get_thread_id()
        P = tables[tid] if tid < tables.shape[0] else np.empty((n + 1, 2 * width))
        _fill_table(P, A, B, s, k, n, w)
        L = np.empty(k)
        acc = np.empty(w)
        rows = np.full(nb + 3, n)  # past nb: the zero row (read when nb < 4, never added)
        g = task % groups
        for c in range(c0 + g * per, min(c1, c0 + (g + 1) * per)):
            for j in range(k):
                L[j] = L0[c, s + j]
            for t in range(T):
                if _batch_sum(P, idx, c, t, n, w, rows, acc):  # all padding: loss unchanged
                    for j in range(k):
                        if additive:
                            x = L[j] + acc[j]
                        else:
                            x = acc[j] * L[j] + acc[k + j]
                        # np.maximum / np.minimum: NaN in either operand gives NaN
                        lj = lo[s + j]
                        if x < lj or lj != lj:
                            x = lj
                        hj = hi[s + j]
                        if x > hj or hj != hj:
                            x = hj
                        L[j] = x
                if not final:
                    for j in range(k):
                        out[c, t + 1, s + j] = L[j]
            if final:
                for j in range(k):
                    out[c, 0, s + j] = L[j]


def _oa_kernel(a, B, rho, drift, w, idx, Y0, D0, lo, hi, final, width, span, groups, out, tables):
    """The optimizer-aware recurrence (model.optimizer_aware.rollout) in transformed space,
    tasks as ``_kernel``'s: per curriculum c, step t, test j (ylo, yhi = lo, hi)

        x = y + (w[c, t] * (sum_a * y + sum_B) + rho[j] * d + drift[t, j]);  np.clip(x, lo, hi)
        d = x - y;  y = x                                  (only when the batch is not all padding)

    with the operations in the numpy path's order. Y0, D0 (C, m): the starting state; ``out``
    receives y (the caller maps it back to losses)."""
    T, nb = idx.shape[1], idx.shape[2]
    n, m = a.shape
    b0, b1, c0, c1 = span
    per = (c1 - c0 + groups - 1) // groups
    for task in prange((b1 - b0) * groups):
        s = (b0 + task // groups) * width
        k = min(width, m - s)
        tid = numba.get_thread_id()
        P = tables[tid] if tid < tables.shape[0] else np.empty((n + 1, 2 * width))
        _fill_table(P, a, B, s, k, n, 2 * k)
        y = np.empty(k)
        d = np.empty(k)
        acc = np.empty(2 * k)
        rows = np.full(nb + 3, n)
        g = task % groups
        for c in range(c0 + g * per, min(c1, c0 + (g + 1) * per)):
            for j in range(k):
                y[j] = Y0[c, s + j]
                d[j] = D0[c, s + j]
            for t in range(T):
                if t + PF < T:  # drift[t, block]: 8 KB apart at 1,000 tests, evicted by the
                    # table's rows between curricula, so loaded ahead like them (1.8x -> 1.2x
                    # Linear's CPU at 1,000 x 64 x 2,000, one thread)
                    _prefetch(drift, t + PF, s)
                    _prefetch(drift, t + PF, s + min(7, k - 1))
                    _prefetch(drift, t + PF, s + k - 1)
                if _batch_sum(P, idx, c, t, n, 2 * k, rows, acc):
                    wt = w[c, t]
                    for j in range(k):
                        yj = y[j]
                        x = yj + (
                            wt * (acc[j] * yj + acc[k + j]) + rho[s + j] * d[j] + drift[t, s + j]
                        )
                        # np.clip with array bounds: a NaN bound gives NaN, x == bound gives
                        # the bound (np.maximum would keep x: another zero sign)
                        lj = lo[s + j]
                        if x <= lj or lj != lj:
                            x = lj
                        hj = hi[s + j]
                        if x >= hj or hj != hj:
                            x = hj
                        d[j] = x - yj
                        y[j] = x
                if not final:
                    for j in range(k):
                        out[c, t + 1, s + j] = y[j]
            if final:
                for j in range(k):
                    out[c, 0, s + j] = y[j]


def _jit(fn):
    """(numba.njit(parallel) of fn, cached): cached on disk when numba finds a writable cache
    directory (the package's __pycache__, else $NUMBA_CACHE_DIR or the user's cache dir),
    else compiled in memory in each process (~8 s CPU per process instead of once)."""
    try:
        return numba.njit(parallel=True, cache=True, nogil=True)(fn), True
    except RuntimeError:  # no writable cache location: compile for this process only
        return numba.njit(parallel=True, nogil=True)(fn), False


_compiled, CACHED = _jit(_kernel)
_compiled_oa, _ = _jit(_oa_kernel)


def _call(kernel, *args) -> None:
    global BROKEN
    try:
        kernel(*args)
    except numba.core.errors.NumbaError as e:  # typing / lowering: nothing was computed
        BROKEN = True
        raise KernelUnavailable(f"{type(e).__name__}: {str(e).splitlines()[0]}") from e


def spans(C: int, T: int, nb: int, m: int, threads: int) -> list[tuple[int, int, int, int, int]]:
    """The kernel calls of a rollout, (b0, b1, c0, c1, groups) each: column blocks [b0, b1) x
    curricula [c0, c1) worth about CALL_WORK_PER_THREAD x threads gather-adds (~0.5 s), so
    that Ctrl-C, which Python handles only between calls, interrupts within a call's time.
    Blocks first, a whole number of them per thread: each task is then one block of all the
    call's curricula and copies its table once, as one call for everything would (curriculum
    groups' tasks copy the same table again: 2.5-7 % more CPU measured, within the noise);
    curricula are split only when one block of all of them is more than a call. ``groups``:
    curriculum groups per block, enough for every thread to have a task."""
    blocks = -(-m // BLOCK_COLS)
    budget = CALL_WORK_PER_THREAD * threads
    per_block = max(1, T * nb * BLOCK_COLS)  # gather-adds of one curriculum x one block
    if C * per_block <= budget:
        nblk, ncur = max(1, budget // (C * per_block)), C
        if nblk > threads:
            nblk -= nblk % threads  # whole rounds: no thread idle at the call's end
    else:
        nblk, ncur = 1, max(1, budget // per_block)
    out = []
    for b0 in range(0, blocks, nblk):
        b1 = min(blocks, b0 + nblk)
        for c0 in range(0, C, ncur):
            c1 = min(C, c0 + ncur)
            groups = max(1, min(c1 - c0, -(-threads // (b1 - b0))))
            while (b1 - b0) * groups % threads and groups < c1 - c0:
                groups += 1  # no thread idle at the call's end while another has a task
            out.append((b0, b1, c0, c1, groups))
    return out


def _run(kernel, head, tail, idx, m, n, threads) -> None:
    """kernel(*head, BLOCK_COLS, span, groups, *tail, tables) for every span of ``spans``,
    ``threads`` numba threads, one parallel kernel at a time."""
    C, T, nb = idx.shape
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    with _lock:
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            tables = _tables(threads, n + 1, 2 * BLOCK_COLS)
            with numba.parallel_chunksize(1):  # tasks handed out one at a time
                for b0, b1, c0, c1, groups in spans(C, T, nb, m, threads):
                    span = (b0, b1, c0, c1)
                    _call(kernel, *head, BLOCK_COLS, span, groups, *tail, tables)
        finally:
            numba.set_num_threads(before)


def _tables(threads: int, rows: int, cols: int) -> np.ndarray:
    """(threads, rows, cols) float64 scratch, on transparent huge pages where the OS offers
    them (madvise): fewer TLB misses on the random row reads (1.85-1.92 vs 2.10-2.75 s CPU
    at a tenth of the 1,000 x 1,000 x 2,000 target)."""
    size = threads * rows * cols * 8
    try:
        import mmap

        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.madvise(mmap.MADV_HUGEPAGE)
        a = np.frombuffer(buf, dtype=np.float64)
    except (AttributeError, OSError, ValueError):  # no mmap flags / madvise on this platform
        a = np.empty(size // 8)
    return a.reshape(threads, rows, cols)


def _readonly(a, dtype=np.float64) -> np.ndarray:
    """A C-contiguous, read-only view (a copy only when the dtype or layout differs): every
    call then has the one signature the on-disk cache holds, whoever owns the arrays."""
    a = np.ascontiguousarray(a, dtype=dtype).view()
    a.flags.writeable = False
    return a


def rollout_numba(A, B, idx, L0, method, lo, hi, *, final, threads) -> np.ndarray:
    """:func:`simfluence_cli.model.rollout.rollout` in float64 with the compiled kernel; same
    arguments (idx entries in [-1, A.shape[0]), -1 = padding), same result."""
    C, T, _ = idx.shape
    m = A.shape[1]
    idx = _readonly(idx, _itype(A.shape[0]))
    L0 = _readonly(np.broadcast_to(np.asarray(L0, dtype=np.float64), (C, m)))
    lo = np.full(m, -_FMAX) if lo is None else lo
    hi = np.full(m, _FMAX) if hi is None else hi
    A, B, lo, hi = (_readonly(v) for v in (A, B, lo, hi))
    out = np.empty((C, 1 if final else T + 1, m))
    if not final:
        out[:, 0] = L0
    head = (A, B, idx, L0, lo, hi, method == "additive", final)
    _run(_compiled, head, (out,), idx, m, A.shape[0], threads)
    return out[:, 0] if final else out


def rollout_oa_numba(a, B, rho, drift, w, idx, Y0, D0, lo, hi, *, final, threads) -> np.ndarray:
    """The transformed-space trajectory of :func:`simfluence_cli.model.optimizer_aware.rollout`
    with the compiled kernel: a, B (n, m); rho (m,); drift (T, m); w (C, T); idx (C, T, b),
    entries in [-1, n); Y0, D0 (C, m) the starting y and previous increment; lo, hi (m,) the
    clamp in transformed space. Returns y, (C, T+1, m) with row 0 unset, or (C, m) (final)."""
    C, T, _ = idx.shape
    m = a.shape[1]
    idx = _readonly(idx, _itype(a.shape[0]))
    a, B, rho, drift, w, Y0, D0, lo, hi = (
        _readonly(v) for v in (a, B, rho, drift, w, Y0, D0, lo, hi)
    )
    out = np.empty((C, 1 if final else T + 1, m))
    head = (a, B, rho, drift, w, idx, Y0, D0, lo, hi, final)
    _run(_compiled_oa, head, (out,), idx, m, a.shape[0], threads)
    return out[:, 0] if final else out


def _itype(n: int):
    return np.int32 if n < 2**31 else np.int64

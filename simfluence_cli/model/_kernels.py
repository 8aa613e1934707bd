"""Compiled rollout kernel (numba, the optional ``fast`` extra): the gather-sum of each batch's
parameter rows, the recurrence and the clamp fused in one pass, parallel over curricula.

Imported only by :func:`simfluence_cli.model.rollout.rollout` for problems large enough to repay
numba's import and cache load (``use_numba``); same semantics as the numpy path, bit for bit
(no fast-math: sums in slot order, ``alpha * L + beta`` without fused multiply-add).
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
TASKS_PER_THREAD = 4  # at least this many (block x curriculum group) tasks per thread
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


def _kernel(A, B, idx, L0, lo, hi, additive, final, width, groups, out, tables):
    """Tasks (parallel, one thread each): a block of ``width`` test columns x a group of
    curricula. A task copies its block's [A | B] rows into one table (plus a zero row for
    padding, as the numpy path), then per curriculum and step sums the batch's rows in slot
    order, four rows per pass, and updates the losses in place. ``tables``: (threads, n + 1,
    >= 2 width) scratch, one table per thread."""
    C, T, nb = idx.shape
    n, m = A.shape
    per = (C + groups - 1) // groups
    for task in prange(((m + width - 1) // width) * groups):
        s = (task // groups) * width
        k = min(width, m - s)
        w = k if additive else 2 * k  # row r of the block's table: [A[r] | B[r]]
        tid = numba.get_thread_id()
        P = tables[tid] if tid < tables.shape[0] else np.empty((n + 1, 2 * width))
        for j in range(w):
            P[n, j] = 0.0  # row n: padding
        for r in range(n):
            if not additive:
                for j in range(k):
                    P[r, j] = A[r, s + j]
            for j in range(k):
                P[r, w - k + j] = B[r, s + j]
        L = np.empty(k)
        acc = np.empty(w)
        rows = np.full(nb + 3, n)  # past nb: the zero row (read when nb < 4, never added)
        for c in range((task % groups) * per, min(C, (task % groups + 1) * per)):
            for j in range(k):
                L[j] = L0[c, s + j]
            for t in range(T):
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
                if active:  # an all-padding step leaves the loss unchanged
                    # acc = P[rows[0]] + P[rows[1]] + ..., added left to right as numpy does
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


def _jit(fn):
    """(numba.njit(parallel) of fn, cached): cached on disk when numba finds a writable cache
    directory (the package's __pycache__, else $NUMBA_CACHE_DIR or the user's cache dir),
    else compiled in memory in each process (~8 s CPU per process instead of once)."""
    try:
        return numba.njit(parallel=True, cache=True, nogil=True)(fn), True
    except RuntimeError:  # no writable cache location: compile for this process only
        return numba.njit(parallel=True, nogil=True)(fn), False


_compiled, CACHED = _jit(_kernel)


def _call(*args) -> None:
    global BROKEN
    try:
        _compiled(*args)
    except numba.core.errors.NumbaError as e:  # typing / lowering: nothing was computed
        BROKEN = True
        raise KernelUnavailable(f"{type(e).__name__}: {str(e).splitlines()[0]}") from e


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
    itype = np.int32 if A.shape[0] < 2**31 else np.int64
    idx = _readonly(idx, itype)
    L0 = _readonly(np.broadcast_to(np.asarray(L0, dtype=np.float64), (C, m)))
    lo = np.full(m, -_FMAX) if lo is None else lo
    hi = np.full(m, _FMAX) if hi is None else hi
    A, B, lo, hi = (_readonly(v) for v in (A, B, lo, hi))
    out = np.empty((C, 1 if final else T + 1, m))
    if not final:
        out[:, 0] = L0
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    blocks = -(-m // BLOCK_COLS)
    groups = max(1, min(C, -(-TASKS_PER_THREAD * threads // blocks)))
    with _lock:
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            with numba.parallel_chunksize(1):  # tasks handed out one at a time
                _call(
                    A, B, idx, L0, lo, hi, method == "additive", final, BLOCK_COLS, groups, out,
                    _tables(threads, A.shape[0] + 1, 2 * BLOCK_COLS),
                )  # fmt: skip
        finally:
            numba.set_num_threads(before)
    return out[:, 0] if final else out

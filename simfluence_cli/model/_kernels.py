"""Compiled rollout kernel (numba, the optional ``fast`` extra): the gather-sum of each batch's
parameter rows, the recurrence and the clamp fused in one pass, parallel over curricula.

Imported only by :func:`simfluence_cli.model.rollout.rollout` for problems large enough to repay
numba's import and cache load (``use_numba``); same semantics as the numpy path, bit for bit
(no fast-math: sums in slot order, ``alpha * L + beta`` without fused multiply-add).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import prange

BLOCK_COLS = 32  # test columns per block: the block's [A | B] table (n x 64 doubles) stays in L3
_FMAX = float(np.finfo(np.float64).max)
_lock = threading.Lock()  # one parallel kernel at a time (numba's workqueue layer needs it)


def _kernel(A, B, idx, L0, lo, hi, additive, final, width, out):
    """Per block of ``width`` test columns: copy the block's [A | B] rows into one table, then
    per curriculum (parallel) and step sum the batch's rows and update the losses in place."""
    C, T, nb = idx.shape
    n, m = A.shape
    for s in range(0, m, width):
        k = min(width, m - s)
        w = k if additive else 2 * k  # row r of the block's table: [A[r] | B[r]]
        P = np.empty((n, w))
        for r in prange(n):
            if not additive:
                for j in range(k):
                    P[r, j] = A[r, s + j]
            for j in range(k):
                P[r, w - k + j] = B[r, s + j]
        for c in prange(C):
            L = np.empty(k)
            acc = np.empty(w)
            for j in range(k):
                L[j] = L0[c, s + j]
            for t in range(T):
                seen = False
                for q in range(nb):
                    r = idx[c, t, q]
                    if r < 0:  # padding: contributes nothing
                        continue
                    if seen:
                        for j in range(w):
                            acc[j] += P[r, j]
                    else:
                        for j in range(w):
                            acc[j] = P[r, j]
                        seen = True
                if seen:  # an all-padding step leaves the loss unchanged
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
    """numba.njit(parallel) cached on disk when numba finds a writable cache directory (the
    package's __pycache__, else $NUMBA_CACHE_DIR or the user's cache dir), else compiled in
    memory for each process."""
    try:
        return numba.njit(parallel=True, cache=True, nogil=True)(fn)
    except RuntimeError:  # no writable cache location: compile for this process only
        return numba.njit(parallel=True, nogil=True)(fn)


_compiled = _jit(_kernel)


def rollout_numba(A, B, idx, L0, method, lo, hi, *, final, threads) -> np.ndarray:
    """:func:`simfluence_cli.model.rollout.rollout` in float64 with the compiled kernel; same
    arguments (idx entries in [-1, A.shape[0]), -1 = padding), same result."""
    C, T, _ = idx.shape
    m = A.shape[1]
    A = np.ascontiguousarray(A, dtype=np.float64)
    B = np.ascontiguousarray(B, dtype=np.float64)
    itype = np.int32 if A.shape[0] < 2**31 else np.int64
    idx = np.ascontiguousarray(idx, dtype=itype)
    L0 = np.ascontiguousarray(np.broadcast_to(np.asarray(L0, dtype=np.float64), (C, m)))
    lo = np.full(m, -_FMAX) if lo is None else np.ascontiguousarray(lo, dtype=np.float64)
    hi = np.full(m, _FMAX) if hi is None else np.ascontiguousarray(hi, dtype=np.float64)
    out = np.empty((C, 1 if final else T + 1, m))
    if not final:
        out[:, 0] = L0
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    with _lock:
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            _compiled(A, B, idx, L0, lo, hi, method == "additive", final, BLOCK_COLS, out)
        finally:
            numba.set_num_threads(before)
    return out[:, 0] if final else out

"""The Simfluence recurrence rolled forward for many curricula and tests (one kernel)."""

from __future__ import annotations

import numpy as np

# -- rollouts -----------------------------------------------------------------------------------

ROLLOUT_COLS = 128  # test columns per rollout chunk: the (C, 2 * cols) state stays in cache
_FMAX = float(np.finfo(np.float64).max)


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
    memory traffic, about 2.5x faster; alpha and beta then carry a relative rounding error of
    ~1e-7 per step) while the loss recurrence itself stays in float64.
    """
    if precision not in ("float64", "float32"):
        from simfluence_cli.errors import UsageError

        raise UsageError(f"precision must be 'float64' or 'float32', got {precision!r}")
    pdt = np.float32 if precision == "float32" else np.float64
    from concurrent.futures import ThreadPoolExecutor

    from simfluence_cli.model.solvers import default_threads

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

    threads = default_threads() if threads is None else max(1, int(threads))
    if threads == 1 or len(chunks) == 1:
        for c in chunks:
            run(c)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(run, chunks))
    return out

"""The numpy path of ``model.optimizer_aware.rollout`` before it was rewritten with preallocated
buffers (branch oanumpy), kept verbatim (less the compiled-kernel branch) as the reference the
current one must equal bit for bit (tests/test_oa_rollout_numpy.py, bench/bench_oa_numpy.py)."""

from __future__ import annotations

import numpy as np

from simfluence_cli.model.optimizer_aware import _FMAX, forward, inverse

__all__ = ["rollout_reference"]


def rollout_reference(
    a: np.ndarray,
    B: np.ndarray,
    rho: np.ndarray,
    gamma: np.ndarray,
    idx: np.ndarray,
    w: np.ndarray,
    phi: np.ndarray,
    L0: np.ndarray,
    transform: str,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
    *,
    final: bool = False,
    start: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``optimizer_aware.rollout``'s numpy path as of main 4213dd6."""
    C, T, _ = idx.shape
    m = a.shape[1]
    drift = phi @ gamma.T if gamma.shape[1] else np.zeros((T, m))  # (T, m)
    L0 = np.broadcast_to(np.asarray(L0, dtype=np.float64), (C, m))
    y = forward(L0, transform).copy()
    d = np.zeros_like(y)
    if start is not None:
        y[:], d[:] = start
    ylo = None if lo is None else forward(lo, transform)
    yhi = None if hi is None else forward(hi, transform)
    Pa = np.vstack([a, np.zeros((1, m))])
    Pb = np.vstack([B, np.zeros((1, m))])
    out = np.empty((C, m) if final else (C, T + 1, m))
    if not final:
        out[:, 0] = L0
    active = (idx >= 0).any(axis=2)  # (C, T)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(T):
            ix = idx[:, t, :]
            sa = Pa[ix].sum(axis=1)
            sb = Pb[ix].sum(axis=1)
            inc = w[:, t, None] * (sa * y + sb) + rho * d + drift[t]
            new = y + inc
            if ylo is not None:
                np.clip(new, ylo, yhi, out=new)
            else:
                np.clip(new, -_FMAX, _FMAX, out=new)
            act = active[:, t, None]
            d = np.where(act, new - y, d)
            y = np.where(act, new, y)
            if not final:
                out[:, t + 1] = inverse(y, transform)
    if final:
        out[:] = inverse(y, transform)
    return out

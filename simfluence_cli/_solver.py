"""Batched ridge solves of the normal equations (one small dense system per test example).

Solves (G + l2 I) theta = r + l2 theta0 for a stack of systems. The penalty pulls theta
toward ``theta0`` (the shrink target). Systems are Jacobi-scaled before the solve, which keeps
the A-columns (scaled by losses) and the B-columns (scaled by 1) comparable and the
solution accurate. Parameters of examples with no observations stay at ``theta0``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sl


def ridge_solve(G: np.ndarray, r: np.ndarray, l2: float, theta0: np.ndarray,
                overwrite: bool = False) -> np.ndarray:
    """Solve the stacked systems G (m, P, P), r (m, P); theta0 (P,). Returns (m, P).

    With ``overwrite=True`` G is used as scratch space (saves a copy).
    """
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
            u = sl.cho_solve(sl.cho_factor(Hs, lower=True, overwrite_a=False, check_finite=False),
                             b, check_finite=False)
        except (np.linalg.LinAlgError, sl.LinAlgError):
            # singular (l2 = 0 with collinear examples): minimum-norm solution of the scaled system
            u = np.linalg.lstsq(Hs, b, rcond=None)[0]
        out[k] = u * s
    return out

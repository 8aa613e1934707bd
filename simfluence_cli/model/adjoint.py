"""Adjoint (backward) gradients of the mean final simulated loss w.r.t. each step's alpha/beta.

For the recurrence ``L_t = clip(alpha_t * L_{t-1} + beta_t)`` (alpha_t, beta_t: sums of the
batch's A and B rows; additive: alpha_t = 1) and ``J = mean_z L_T(z)``, one forward and one
backward pass give, for every step t and test z,

    dJ/dbeta_t(z)  = lambda_t(z) * g_t(z)
    dJ/dalpha_t(z) = lambda_t(z) * g_t(z) * L_{t-1}(z)

with ``lambda_T = 1/M``, ``lambda_{t-1} = lambda_t * g_t * alpha_t`` and ``g_t(z) = 1`` where the
clip was inactive at step t (0 where the loss sat at a bound). Then the first-order change of J
when example e replaces example e' at step t is ``S[t, e] - S[t, e']`` with
``S = dJ/dalpha @ A.T + dJ/dbeta @ B.T``: every swap/replace move is ranked from one (T, n)
matrix. Several models (e.g. CV fold models) are handled at once by stacking their parameters.
Not defined for stateful models (optimizer-aware: AR memory and per-step lr).
"""

from __future__ import annotations

import numpy as np

__all__ = ["final_loss_adjoint"]


def final_loss_adjoint(
    A: np.ndarray,
    B: np.ndarray,
    idx: np.ndarray,
    L0: np.ndarray,
    additive: bool,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward + backward pass of K stacked models over one curriculum.

    A, B: (K, n + 1, M) parameters, the last row all zeros (the padding row, index -1).
    idx: (T, b) example indices, -1 = padding. L0: (M,) or (K, M). lo, hi: (K, M) or None.
    Returns (traj (K, T+1, M), objective (K,), dJ/dalpha (K, T, M), dJ/dbeta (K, T, M)).
    """
    K, _, M = B.shape
    T = idx.shape[0]
    traj = np.empty((K, T + 1, M))
    traj[:, 0] = L0
    alpha = np.ones((K, T, M))
    gate = np.ones((K, T, M), dtype=bool)
    L = traj[:, 0].copy()
    for t in range(T):
        row = idx[t]
        if (row < 0).all():  # an all-padding step leaves the loss unchanged
            traj[:, t + 1] = L
            continue
        beta = B[:, row].sum(axis=1)
        if not additive:
            alpha[:, t] = A[:, row].sum(axis=1)
        new = alpha[:, t] * L + beta
        if lo is not None:
            gate[:, t] = (new > lo) & (new < hi)
            new = np.minimum(np.maximum(new, lo), hi)
        traj[:, t + 1] = L = new
    lam = np.full((K, M), 1.0 / M)
    gB = np.empty((K, T, M))
    gA = np.empty((K, T, M))
    for t in range(T - 1, -1, -1):
        lg = lam * gate[:, t]
        gB[:, t] = lg
        gA[:, t] = lg * traj[:, t]
        lam = lg * alpha[:, t]
    inactive = (idx < 0).all(axis=1)
    gA[:, inactive] = 0.0
    gB[:, inactive] = 0.0
    if additive:
        gA[:] = 0.0
    return traj, traj[:, -1].mean(axis=1), gA, gB

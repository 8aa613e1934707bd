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

The optimizer-aware recurrence (``oa_final_loss_adjoint``) has the 2-D state (y, d) in
transformed space: u_t = y + w_t (sa_t y + sb_t) + rho d + drift_t, y' = clip(u_t),
d' = y' - y, J = mean_z f^-1(y_T). Its adjoint (lambda_y, lambda_d), from
(f^-1)'(y_T) / M and 0, runs back as

    lambda_u = g_t (lambda_y' + lambda_d'),  lambda_y = lambda_u (1 + w_t sa_t) - lambda_d',
    lambda_d = lambda_u rho,  dJ/dsa_t = lambda_u w_t y_{t-1},  dJ/dsb_t = lambda_u w_t

(all-padding steps pass the adjoint through), so S = dJ/dsa @ a.T + dJ/dsb @ B.T ranks the
moves exactly as for Linear.
"""

from __future__ import annotations

import numpy as np

__all__ = ["final_loss_adjoint", "oa_final_loss_adjoint"]


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


def _inverse_slope(y: np.ndarray, transform: str) -> np.ndarray:
    """d f^-1(y) / dy of the optimizer-aware loss transforms."""
    if transform == "identity":
        return np.ones_like(y)
    if transform == "log":
        return np.where(y < 700.0, np.exp(np.minimum(y, 700.0)), 0.0)
    return 0.5 * (1.0 + np.tanh(0.5 * y))  # logistic sigmoid, the slope of softplus


def oa_final_loss_adjoint(
    a: np.ndarray,
    B: np.ndarray,
    rho: np.ndarray,
    drift: np.ndarray,
    w: np.ndarray,
    idx: np.ndarray,
    L0: np.ndarray,
    transform: str,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
    *,
    grads: bool = True,
):
    """Forward + backward pass of optimizer-aware models (one, or K stacked with the same
    transform) over one curriculum.

    a, B: (n + 1, M) or (K, n + 1, M), the last row all zeros (the padding row, index -1); rho
    (M,) / (K, M); drift (T, M) / (K, T, M); w (T,) / (K, T) step weights; idx (T, b), -1 =
    padding; L0 (M,); lo, hi: (M,) loss-space clip or None. Returns (traj (T+1, M) losses,
    (y, d) each (T+1, M) the transformed state, objective, dJ/dsa (T, M), dJ/dsb (T, M)), each
    with a leading K axis (objective (K,)) for stacked models; ``grads=False``: the forward
    pass only (gradients None)."""
    from simfluence_cli.model.optimizer_aware import _FMAX, forward, inverse

    single = a.ndim == 2
    if single:
        a, B, rho, drift, w = a[None], B[None], rho[None], drift[None], w[None]
    K, M, T = a.shape[0], a.shape[2], idx.shape[0]
    ylo = np.full(M, -_FMAX) if lo is None else forward(lo, transform)
    yhi = np.full(M, _FMAX) if hi is None else forward(hi, transform)
    active = (idx >= 0).any(axis=1)
    sa = a[:, idx].sum(axis=2).transpose(1, 0, 2)  # (T, K, M), the rollout's order
    sb = B[:, idx].sum(axis=2).transpose(1, 0, 2)
    wt = np.asarray(w, dtype=np.float64).T[..., None]  # (T, K, 1)
    dr = np.asarray(drift).transpose(1, 0, 2)  # (T, K, M)
    y = np.empty((T + 1, K, M))
    d = np.empty((T + 1, K, M))
    y[0] = forward(np.asarray(L0, dtype=np.float64), transform)
    d[0] = 0.0
    gate = np.zeros((T, K, M), dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(T):
            if not active[t]:
                y[t + 1], d[t + 1] = y[t], d[t]
                continue
            u = y[t] + (wt[t] * (sa[t] * y[t] + sb[t]) + rho * d[t] + dr[t])
            gate[t] = (u > ylo) & (u < yhi)
            y[t + 1] = np.clip(u, ylo, yhi)
            d[t + 1] = y[t + 1] - y[t]
        traj = inverse(y, transform)
        obj = traj[T].mean(axis=1)
        gA = gB = None
        if grads:
            lam_y = _inverse_slope(y[T], transform) / M
            lam_d = np.zeros((K, M))
            gA = np.zeros((T, K, M))
            gB = np.zeros((T, K, M))
            for t in range(T - 1, -1, -1):
                if not active[t]:
                    continue
                lu = gate[t] * (lam_y + lam_d)
                gB[t] = lu * wt[t]
                gA[t] = gB[t] * y[t]
                lam_y, lam_d = lu * (1.0 + wt[t] * sa[t]) - lam_d, lu * rho
            gA, gB = gA.transpose(1, 0, 2), gB.transpose(1, 0, 2)
    traj, y, d = (v.transpose(1, 0, 2) for v in (traj, y, d))
    if single:
        g = (None, None) if gA is None else (gA[0], gB[0])
        return traj[0], (y[0], d[0]), float(obj[0]), *g
    return traj, (y, d), obj, gA, gB

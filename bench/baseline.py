"""What a user would write: per test example, a dense design matrix and numpy.linalg.lstsq.

Ridge is folded in by augmenting the system with sqrt(l2) * I rows (target sqrt(l2) * theta0).
Every-step logging only (the one-step regression of the paper).
"""

from __future__ import annotations

import numpy as np


def dense_lstsq_fit(runs, l2: float, theta0: np.ndarray, method: str = "linear") -> np.ndarray:
    """Returns theta (n_tests, P) with P = 2N (linear: A then B) or N."""
    n = runs.n_examples
    rows_counts, prev, nxt = [], [], []
    for run in runs.runs:
        T = run.n_steps
        C = np.zeros((T, n))
        np.add.at(C, (run.step_of_entry() - 1, run.batch_idx), 1.0)
        rows_counts.append(C)
        prev.append(run.losses[:-1])
        nxt.append(run.losses[1:])
    Cnt = np.vstack(rows_counts)
    Lp, Ln = np.vstack(prev), np.vstack(nxt)
    P = 2 * n if method == "linear" else n
    out = np.empty((runs.n_tests, P))
    sq = np.sqrt(l2)
    for j in range(runs.n_tests):
        if method == "linear":
            X = np.hstack([Cnt * Lp[:, j : j + 1], Cnt])
            y = Ln[:, j]
        elif method == "multiplicative":
            X, y = Cnt * Lp[:, j : j + 1], Ln[:, j]
        else:
            X, y = Cnt, Ln[:, j] - Lp[:, j]
        Xa = np.vstack([X, sq * np.eye(P)])
        ya = np.concatenate([y, sq * theta0])
        out[j] = np.linalg.lstsq(Xa, ya, rcond=None)[0]
    return out


def oa_schur_cg_chunk(obs, y0, dprev, dy, Mk, ar: bool, l2: float, tol, maxiter):
    """The optimizer-aware solver before it moved onto ``solvers.pcg`` (kept as the baseline of
    bench/bench_oa_scale.py): its own Jacobi-preconditioned batched CG on the Schur-reduced
    system, stopping when every column of the chunk has converged.
    Returns a (n, k), B (n, k), rho (k,), gamma (k, H), CG iterations."""
    n = obs.Z.shape[1]
    O, k = y0.shape
    Phi = obs.Phi  # (O, H), shared by all tests
    H = Phi.shape[1]
    p = int(ar) + H
    if p:  # per-test Gram of the dense columns [dprev | Phi] under the mask: (k, p, p)
        G = np.empty((k, p, p))
        if H:
            G[:, -H:, -H:] = 0.0
            for h in range(H):  # hat functions only overlap their neighbours
                for g in range(max(0, h - 1), min(H, h + 2)):
                    G[:, p - H + h, p - H + g] = (Phi[:, h] * Phi[:, g]) @ Mk
        if ar:
            Md = Mk * dprev
            G[:, 0, 0] = np.sum(Md * dprev, axis=0)
            if H:
                cross = (obs.PhiTS @ Md).T  # (k, H)
                G[:, 0, 1:] = cross
                G[:, 1:, 0] = cross
        eps = 1e-10 * np.maximum(np.trace(G, axis1=1, axis2=2) / p, 1e-300) + 1e-12
        G = G + eps[:, None, None] * np.eye(p)[None]
        S = np.linalg.inv(G)  # (k, p, p), small

    def Dt(R):  # D^T R per test: (O, k) -> (k, p)
        parts = []
        if ar:
            parts.append(np.sum(dprev * R, axis=0)[:, None])
        if H:
            parts.append((obs.PhiTS @ R).T)
        return np.concatenate(parts, axis=1)

    def Dv(c):  # D c per test: (k, p) -> (O, k)
        out = obs.PhiS @ c[:, int(ar) :].T if H else np.zeros((O, k))
        if ar:
            out += dprev * c[:, 0]
        return out

    def project(R):  # M (I - D S D^T M) R, (O, k)
        MR = Mk * R
        if not p:
            return MR
        c = np.einsum("kpq,kq->kp", S, Dt(MR))
        return MR - Mk * Dv(c)

    def X(U):  # (2n, k) -> (O, k)
        return y0 * (obs.Z @ U[:n]) + obs.Z @ U[n:]

    ZT = obs.Z.T.tocsr()  # the CSR transpose the old solver used

    def XT(R):  # (O, k) -> (2n, k)
        return np.vstack([ZT @ (y0 * R), ZT @ R])

    rhs = XT(project(dy))
    diag = np.vstack([obs.Z2T @ (Mk * y0 * y0), obs.Z2T @ Mk]) + l2
    diag = np.where(diag > 0, diag, 1.0)
    U = np.zeros((2 * n, k))
    R = rhs.copy()
    bnorm = np.linalg.norm(rhs, axis=0)
    bnorm = np.where(bnorm > 0, bnorm, 1.0)
    Zp = R / diag
    P = Zp.copy()
    rz = np.sum(R * Zp, axis=0)
    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007
        AP = XT(project(X(P))) + l2 * P
        pap = np.sum(P * AP, axis=0)
        alpha = np.where(pap > 0, rz / np.where(pap > 0, pap, 1.0), 0.0)
        U += alpha * P
        R -= alpha * AP
        if np.all(np.linalg.norm(R, axis=0) <= tol * bnorm):
            break
        Zp = R / diag
        rz_new = np.sum(R * Zp, axis=0)
        beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        P = Zp + beta * P
        rz = rz_new
    a, B = U[:n], U[n:]
    rho = np.zeros(k)
    gamma = np.zeros((k, H))
    if p:
        resid = Mk * (dy - X(U))
        v = np.einsum("kpq,kq->kp", S, Dt(resid))
        if ar:
            rho = v[:, 0]
            gamma = v[:, 1:]
        else:
            gamma = v
    return a, B, rho, gamma, it

"""The optimizer-aware ridge system of a chunk of tests, matrix-free, solved by ``solvers.pcg``.

Per test j the design is [X_j | D_j]: X_j = [diag(y0_j) Z, Z] (obs x 2n, the sparse columns
of a, B; Z the step-weighted batch matrix shared by all tests) and D_j = [dprev_j | Phi]
(obs x p, p = AR + H dense columns). With the 0/1 mask M_j of usable observations and
S_j = (D_j^T M_j D_j + eps I)^-1, the dense block is eliminated exactly (Schur complement):

    (X^T M (I - D S D^T M) X + l2 I) u = X^T M (I - D S D^T M) dy,   v = S D^T M (dy - X u).

CG runs on the reduced system (``solvers.pcg``, one column per test, vectorised over the
tests of the chunk) with the 2x2 (a_i, B_i) diagonal blocks of X^T M X + l2 I as
preconditioner, the same block-Jacobi as Linear's; the rank-p projection adds at most p
iterations in exact arithmetic, so the iteration count stays close to Linear's.
"""

from __future__ import annotations

import numpy as np

from simfluence_cli.model.solvers import CG_MAXITER, block_jacobi_2x2, pcg


class OAChunkSystem:
    """Reduced normal equations of one chunk of tests (k columns).

    ``obs`` supplies the sparse ``Z`` (obs x n; its transpose is used as a CSC view), ``Z2T``
    (Z squared, transposed) and the basis ``Phi`` / ``PhiS`` / ``PhiTS``; y0, dprev, dy, Mk are
    (obs, k) per-test arrays.
    """

    def __init__(self, obs, y0, dprev, dy, Mk, ar: bool, l2):
        self.obs, self.ar = obs, bool(ar)
        self.n = obs.Z.shape[1]
        # Z^T as a CSC view: its product scatters into the small (n, k) output while reading
        # the tall (obs, k) operand in order, ~4x faster than a CSR Z^T gathering rows of it
        # (same summation order, same numbers)
        self.ZT = obs.Z.T
        self.y0, self.dprev, self.dy = y0, dprev, dy
        self.full = bool(Mk.all())  # every observation usable: skip the mask products
        self.Mk = None if self.full else Mk
        self.H = obs.Phi.shape[1]
        self.p = int(self.ar) + self.H
        self.k = y0.shape[1]
        self.S = self._dense_inverse(Mk) if self.p else None
        # 2x2 diagonal blocks of X^T M X + l2 I (block-Jacobi preconditioner)
        My0 = y0 if self.full else Mk * y0
        self._diag = (
            obs.Z2T @ (My0 * y0),
            obs.Z2T @ My0,
            obs.Z2T @ (np.ones_like(y0) if self.full else Mk),
        )
        self.set_l2(l2)
        self.rhs = self._XT(self._project(dy, None), None)

    def set_l2(self, l2) -> None:
        """Switch the penalty (a float or one per column): the rest of the system (dense
        inverse, right-hand side, preconditioner's data blocks) does not depend on it, so
        the CV's l2 grid reuses one system."""
        self.l2 = float(l2) if np.ndim(l2) == 0 else np.asarray(l2, dtype=np.float64)
        n = self.n
        daa, dab, dbb = self._diag
        self.empty = np.vstack([daa, dbb]) + self.l2 <= 0  # no observation, no penalty: pin to 0
        shift = self.l2 + self.empty
        self.shift = shift
        self.inv = block_jacobi_2x2(daa + shift[:n], dab, dbb + shift[n:])
        self._cache = None

    # -- the dense block --------------------------------------------------------------------
    def _dense_inverse(self, Mk) -> np.ndarray:
        """S = (D^T M D + eps I)^-1 per test, (k, p, p)."""
        obs, H, p, k = self.obs, self.H, self.p, self.k
        Phi = obs.Phi
        G = np.zeros((k, p, p))
        if H:
            for h in range(H):  # hat functions only overlap their neighbours
                for g in range(max(0, h - 1), min(H, h + 2)):
                    G[:, p - H + h, p - H + g] = (Phi[:, h] * Phi[:, g]) @ Mk
        if self.ar:
            Md = Mk * self.dprev
            G[:, 0, 0] = np.einsum("ij,ij->j", Md, self.dprev)
            if H:
                cross = (obs.PhiTS @ Md).T  # (k, H)
                G[:, 0, 1:] = cross
                G[:, 1:, 0] = cross
        eps = 1e-10 * np.maximum(np.trace(G, axis1=1, axis2=2) / p, 1e-300) + 1e-12
        G += eps[:, None, None] * np.eye(p)[None]
        return np.linalg.inv(G)

    def _parts(self, cols):
        """(y0, dprev, Mk, S, shift, inverse blocks) restricted to ``cols`` (None = all);
        cached: pcg's active columns change rarely and the slices are large."""
        if cols is None:
            return self.y0, self.dprev, self.Mk, self.S, self.shift, self.inv
        key = cols.tobytes()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if len(cols) == self.k:
            res = self._parts(None)
        else:
            res = (
                self.y0[:, cols],
                self.dprev[:, cols],
                None if self.Mk is None else self.Mk[:, cols],
                None if self.S is None else self.S[cols],
                self.shift[:, cols],
                tuple(v[:, cols] for v in self.inv),
            )
        self._cache = (key, res)
        return res

    def _Dt(self, R, dprev):  # D^T R per test: (O, k) -> (k, p)
        parts = []
        if self.ar:
            parts.append(np.einsum("ij,ij->j", dprev, R)[:, None])
        if self.H:
            parts.append((self.obs.PhiTS @ R).T)
        return np.concatenate(parts, axis=1)

    def _Dv(self, c, dprev):  # D c per test: (k, p) -> (O, k)
        a = int(self.ar)
        out = self.obs.PhiS @ np.ascontiguousarray(c[:, a:].T) if self.H else None
        if self.ar:
            t = dprev * c[:, 0]
            out = t if out is None else out + t
        return out

    def _project(self, R, cols):
        """M (I - D S D^T M) R (in place on a copy of R), (O, k)."""
        _, dprev, Mk, S, _, _ = self._parts(cols)
        MR = R.copy() if Mk is None else Mk * R
        if not self.p:
            return MR
        c = np.einsum("kpq,kq->kp", S, self._Dt(MR, dprev))
        corr = self._Dv(c, dprev)
        if Mk is not None:
            corr *= Mk
        MR -= corr
        return MR

    # -- the sparse block -------------------------------------------------------------------
    def _X(self, U, cols):  # (2n, k) -> (O, k)
        y0 = self._parts(cols)[0]
        n, Z = self.n, self.obs.Z
        out = Z @ U[:n]
        out *= y0
        out += Z @ U[n:]
        return out

    def _XT(self, R, cols):  # (O, k) -> (2n, k)
        y0 = self._parts(cols)[0]
        ZT = self.ZT
        return np.vstack([ZT @ (y0 * R), ZT @ R])

    def gram(self, V, cols):
        """X^T M (I - D S D^T M) X V: the reduced operator without the penalty. The dense
        columns are not penalised, so l2 > 0 enters the reduced system as a pure shift
        (``matvec`` = ``gram`` + l2 I): what the multi-shift CG of ``solve_path`` needs."""
        return self._XT(self._project(self._X(V, cols), cols), cols)

    def matvec(self, V, cols):
        """(X^T M (I - D S D^T M) X + l2 I) V for the chunk columns ``cols``."""
        out = self.gram(V, cols)
        out += self._parts(cols)[4] * V
        return out

    def precond(self, R, cols):
        n = self.n
        iaa, iab, ibb = self._parts(cols)[5]
        ra, rb = R[:n], R[n:]
        return np.vstack([iaa * ra + iab * rb, iab * ra + ibb * rb])

    def solve(self, tol: float, maxiter: int = CG_MAXITER, x0=None):
        """(a (n, k), B (n, k), rho (k,), gamma (k, H), iterations (k,), converged (k,),
        true relative residual (k,)) of the chunk."""
        n, k = self.n, self.k
        if x0 is None:
            x0 = np.zeros((2 * n, k))
        U, it, conv, rel = pcg(self.matvec, self.rhs, self.precond, x0, tol=tol, maxiter=maxiter)
        self._cache = None
        return (*self.unpack(U), it, conv, rel)

    def solve_path(self, grid, tol: float, maxiter: int = CG_MAXITER):
        """(a, B, rho, gamma) of the chunk for every penalty of ``grid`` (grid order), or None
        when a penalty is <= 0 (then not a shift of one operator: the caller solves each).

        One multi-shift CG sequence on ``gram`` serves the whole grid
        (``shifted_cg.solve_penalty_path``, shrink target 0); a penalty it leaves unconverged
        is finished by this system's block-Jacobi PCG (``set_l2`` + ``pcg``: the system's
        penalty is then that one)."""
        from simfluence_cli.model.shifted_cg import solve_penalty_path

        view = _ShiftView(self, maxiter)
        out = solve_penalty_path(view, view, grid, tol)
        self._cache = None
        return None if out is None else [self.unpack(U) for U in out]

    def unpack(self, U):
        """(a (n, k), B (n, k), rho (k,), gamma (k, H)) from the sparse solution U (2n, k):
        the dense block's v = S D^T M (dy - X u)."""
        n, k = self.n, self.k
        rho = np.zeros(k)
        gamma = np.zeros((k, self.H))
        if self.p:
            R = self.dy - self._X(U, None)
            if self.Mk is not None:
                R *= self.Mk
            v = np.einsum("kpq,kq->kp", self.S, self._Dt(R, self.dprev))
            if self.ar:
                rho, gamma = v[:, 0], v[:, 1:]
            else:
                gamma = v
        return U[:n], U[n:], rho, gamma


class _ShiftView:
    """An ``OAChunkSystem`` as ``shifted_cg.solve_penalty_path`` reads it: the system (``matvec``
    = the unshifted ``gram``, ``rhs``, ``k``) and the solver (``theta0`` = 0, the ridge's shrink
    target; ``solve(l2, x0, tol)`` = the block-Jacobi PCG at that penalty)."""

    def __init__(self, system: OAChunkSystem, maxiter: int):
        self.system, self.maxiter = system, maxiter
        self.matvec, self.rhs, self.k = system.gram, system.rhs, system.k
        self.theta0 = np.zeros(2 * system.n)

    def solve(self, l2: float, x0=None, tol: float = 1e-6):
        s = self.system
        s.set_l2(l2)
        return pcg(s.matvec, s.rhs, s.precond, x0, tol=tol, maxiter=self.maxiter)

"""The optimizer-aware simulator (``method="optimizer-aware"``): closed form, linear in its parameters.

On a transformed loss y = f(L) (``transform``: identity, log, or log-odds log(e^L - 1)), per test z:

    y_t - y_{t-1} = w_t * sum_{i in c_t} (a_i y_{t-1} + B_i)          (i)  batch mean x lr
                    + rho * (y_{t-1} - y_{t-2})                      (ii) optimizer memory (AR(1))
                    + sum_h gamma_h phi_h(t)                         (iii) shared drift, hat basis
    w_t = (lr_t / lr_ref) * (b_ref / |c_t|)

lr_t is the logged learning rate of step t (1 when not logged), lr_ref the median logged lr of
the fitting runs, b_ref their median batch size; y_{-1} := y_0 (no increment before step 1).
With a constant lr and batch size (w_t = 1), rho = 0, no basis and the identity transform this is
exactly the paper's Linear model with A_i = a_i + 1/b_ref (and the ridge penalty
||a||^2 + ||B||^2 is the paper's penalty toward the "no-change" prior A_i = 1/b).

Fit: ridge least squares on one-step increments with the *observed* y_{t-1}, y_{t-2}; in the
rollout the simulated ones are fed back. Per test the parameters are the 2n sparse-design
columns (a, B) plus p = [rho] + H dense columns; the dense ones are eliminated exactly by a
Schur complement: with D the (obs x p) dense design and S = (D^T D + eps I)^-1 the reduced
system on u = (a, B) is X^T (I - D S D^T) X u + l2 u = X^T (I - D S D^T) y, solved by the
shared batched PCG (solvers.pcg) over the tests of a chunk (model/oa_system.py: operator applied
matrix-free with the sparse (obs x n) batch matrix Z shared by all tests); then
v = S D^T (y - X u). The final fit is sharded over test chunks by sharding.fit_chunks.

Choices not read from the logs (AR term on/off, number of basis functions, transform, l2) are
made by K-fold cross-validation grouped by run on the fitting runs: held-out all-steps rollout
MSE in loss space (coordinate-wise search from a start configuration, one pass).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np

from simfluence_cli.errors import ModelError, UsageError
from simfluence_cli.model.config import TRANSFORMS
from simfluence_cli.model.oa_system import OAChunkSystem
from simfluence_cli.model.rollout import kernel_applies, run_compiled
from simfluence_cli.model.solvers import CG_MAXITER
from simfluence_cli.model.standardise import loss_scale, rescaled
from simfluence_cli.runs import RunSet

_LMIN = 1e-6  # losses are floored here before log / log-odds
_FMAX = 1e6  # transformed values are clamped to +-_FMAX in unclipped rollouts


def forward(L: np.ndarray, transform: str) -> np.ndarray:
    """y = f(L)."""
    if transform == "identity":
        return np.asarray(L, dtype=np.float64)
    Lc = np.maximum(L, _LMIN)
    if transform == "log":
        return np.log(Lc)
    if transform == "logodds":  # log(e^L - 1), stable for large L
        return np.where(Lc > 30, Lc, np.log(np.expm1(np.minimum(Lc, 30))))
    raise UsageError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")


def inverse(y: np.ndarray, transform: str, out: np.ndarray | None = None) -> np.ndarray:
    """L = f^-1(y) (into ``out`` when given, which may be ``y`` itself)."""
    if transform == "identity":
        if out is None or out is y:
            return y
        np.copyto(out, y)
        return out
    if transform == "log":
        return np.exp(np.minimum(y, 700.0, out=out), out=out)
    return np.logaddexp(0.0, y, out=out)  # softplus = log(1 + e^y)


def hat_basis(steps: np.ndarray, n_basis: int, T_ref: int) -> np.ndarray:
    """(len(steps), H) hat functions with knots evenly spread over 1..T_ref (a partition of
    unity: the constant is in their span); steps past T_ref use the last knot's value."""
    steps = np.asarray(steps, dtype=np.float64)
    if n_basis <= 0:
        return np.zeros((len(steps), 0))
    if n_basis == 1:
        return np.ones((len(steps), 1))
    knots = np.linspace(1.0, max(float(T_ref), 2.0), n_basis)
    h = knots[1] - knots[0]
    s = np.clip(steps, knots[0], knots[-1])
    return np.maximum(0.0, 1.0 - np.abs(s[:, None] - knots[None, :]) / h)


@dataclass(frozen=True)
class Config:
    """One model configuration (what CV chooses)."""

    transform: str = "identity"
    ar: bool = True
    n_basis: int = 8
    l2: float = 1.0

    def as_dict(self) -> dict:
        return {"transform": self.transform, "ar": self.ar, "n_basis": self.n_basis, "l2": self.l2}


@dataclass
class Schedule:
    """What the model reads from the fitting runs' logs (not chosen by CV)."""

    lr_ref: float  # median logged lr (1.0 when no run logs lr)
    b_ref: float  # median batch size
    T_ref: int  # longest fitting run
    lr_by_step: np.ndarray | None  # (T_ref,) median lr of step t over the runs that log it

    def to_dict(self) -> dict:
        return {
            "lr_ref": self.lr_ref,
            "b_ref": self.b_ref,
            "T_ref": self.T_ref,
            "lr_by_step": None if self.lr_by_step is None else self.lr_by_step.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        lr = d.get("lr_by_step")
        return cls(
            float(d["lr_ref"]),
            float(d["b_ref"]),
            int(d["T_ref"]),
            None if lr is None else np.asarray(lr, dtype=np.float64),
        )

    @classmethod
    def from_runs(cls, runs: RunSet) -> Schedule:
        sizes = np.concatenate([r.batch_sizes for r in runs.runs])
        b_ref = float(np.median(sizes)) if len(sizes) else 1.0
        T_ref = max(r.n_steps for r in runs.runs)
        with_lr = [r.lr for r in runs.runs if r.lr is not None]
        if len(with_lr) and len(with_lr) < len(runs):
            raise ModelError(
                f"{len(with_lr)} of {len(runs)} fitting runs log a learning rate, the others do "
                "not; fit on runs that all log lr, or all do not"
            )
        if not with_lr:
            return cls(1.0, b_ref, T_ref, None)
        allv = np.concatenate(with_lr)
        lr_ref = float(np.median(allv[allv > 0])) if np.any(allv > 0) else 1.0
        M = np.full((len(with_lr), T_ref), np.nan)
        for k, lr in enumerate(with_lr):
            M[k, : len(lr)] = lr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            by_step = np.nanmedian(M, axis=0)
        return cls(lr_ref, b_ref, T_ref, by_step)

    def lr_varies(self) -> bool:
        """Whether the fitting runs follow a learning-rate schedule (the median logged lr of
        some step differs from another's by more than 1e-6 relative): only then does the
        time basis have a drift shared by every curriculum to absorb (see ``fit_simulator``)."""
        if self.lr_by_step is None:
            return False
        lr = self.lr_by_step[np.isfinite(self.lr_by_step)]
        return bool(len(lr)) and float(np.ptp(lr)) > 1e-6 * abs(self.lr_ref)

    def lr_for(self, T: int) -> np.ndarray:
        """Default lr of steps 1..T for a curriculum without its own: the fitting runs'
        schedule by step index (held at its last value past the longest fitting run)."""
        if self.lr_by_step is None:
            return np.full(T, self.lr_ref)
        s = np.minimum(np.arange(T), len(self.lr_by_step) - 1)
        return self.lr_by_step[s]


def step_weights(sched: Schedule, lr: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """w_t = (lr_t / lr_ref) * (b_ref / |c_t|); 0 where the batch is empty (padding)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (np.asarray(lr, float) / sched.lr_ref) * (sched.b_ref / np.asarray(sizes, float))
    return np.where(np.asarray(sizes) > 0, w, 0.0)


# -- the regression ------------------------------------------------------------------------------


class Observations:
    """Test-independent part of the regression over some runs: one row per (run, step t >= 1).

    ``Z`` (obs x n) holds w_t x (occurrences of example i in c_t); ``Phi`` the time basis at t.
    The per-test parts (y_{t-1}, y_{t-2}, y_t) are gathered per chunk of tests by ``losses``.
    """

    def __init__(self, runs: RunSet, sched: Schedule, n_basis: int):
        import scipy.sparse as sp  # here: loading, simulating and top need no scipy (~0.2 s)

        n = runs.n_examples
        rows, cols, vals, obs_run, obs_t = [], [], [], [], []
        off = 0
        self.runs = runs.runs
        self.full_index = []  # per run: (T+1,) row of each step in run.losses, -1 = not logged
        for k, r in enumerate(runs.runs):
            T = r.n_steps
            lr = r.lr if r.lr is not None else np.full(T, sched.lr_ref)
            w = step_weights(sched, lr, r.batch_sizes)
            step = r.step_of_entry()
            rows.append(off + step - 1)
            cols.append(r.batch_idx)
            vals.append(w[step - 1])
            obs_run.append(np.full(T, k))
            obs_t.append(np.arange(1, T + 1))
            pos = np.full(T + 1, -1, dtype=np.int64)
            pos[r.loss_steps] = np.arange(len(r.loss_steps))
            self.full_index.append(pos)
            off += T
        self.n_obs = off
        self.Z = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(off, n)
        )
        self.Z.sum_duplicates()
        self.Z2T = self.Z.multiply(self.Z).T.tocsr()
        self.obs_run = np.concatenate(obs_run)
        self.obs_t = np.concatenate(obs_t)
        self.Phi = hat_basis(self.obs_t, n_basis, sched.T_ref)
        # hat functions overlap only their neighbours: sparse products are ~5x faster
        self.PhiS = sp.csr_matrix(self.Phi)
        self.PhiTS = self.PhiS.T.tocsr()

    def losses(self, cols: np.ndarray, transform: str):
        """(y_prev, dy_prev, dy, mask) each (obs, k) for the test columns ``cols``."""
        k = len(cols)
        y1 = np.empty((self.n_obs, k))
        y0 = np.empty((self.n_obs, k))
        y2 = np.empty((self.n_obs, k))
        off = 0
        for r, pos in zip(self.runs, self.full_index):
            T = r.n_steps
            Y = np.full((T + 1, k), np.nan)
            ok = pos >= 0
            Y[ok] = forward(r.losses[pos[ok]][:, cols], transform)
            y1[off : off + T] = Y[1:]
            y0[off : off + T] = Y[:-1]
            y2[off : off + T] = np.vstack([Y[:1], Y[:-2]]) if T > 1 else Y[:1]
            off += T
        dprev = y0 - y2
        dy = y1 - y0
        mask = np.isfinite(y1) & np.isfinite(y0) & np.isfinite(dprev)
        if mask.all():  # every loss logged and finite: nan_to_num would only copy (~30% of it)
            return y0, dprev, dy, np.ones_like(y0)
        z = np.where(mask, 1.0, 0.0)
        return np.nan_to_num(y0), np.nan_to_num(dprev), np.nan_to_num(dy), z


def _solve_chunk(obs: Observations, y0, dprev, dy, Mk, ar: bool, l2: float, tol, maxiter):
    """Exact ridge solution for one chunk of tests (dense columns eliminated by Schur,
    model/oa_system.py). Returns a (n, k), B (n, k), rho (k,), gamma (k, H), iterations (k,),
    converged (k,), true relative residual (k,)."""
    return OAChunkSystem(obs, y0, dprev, dy, Mk, ar, l2).solve(tol, maxiter)


#: float64 arrays of length n_obs per test in a CG chunk's working set (y0, dprev, dy, mask,
#: the operator's products and temporaries): sizes the test chunks to the memory budget
OA_OBS_ARRAYS = 12


def plan_chunks(obs: Observations, tests: np.ndarray, min_chunks: int = 1) -> list[np.ndarray]:
    """Test chunks of the solve within the CG memory budget (``solvers.chunk_tests``); at
    least ``min_chunks`` of them, so threads / workers have work to share."""
    from simfluence_cli.model.solvers import chunk_tests

    n = obs.Z.shape[1]
    return chunk_tests(
        tests, "cg", 2 * n, obs.n_obs, obs_arrays=OA_OBS_ARRAYS, min_chunks=min_chunks
    )


def solve_chunk(obs: Observations, cols: np.ndarray, cfg: Config, tol: float, maxiter: int):
    """(a, B, rho, gamma, iterations, converged, relative residual) of the test columns ``cols``."""
    y0, dprev, dy, Mk = obs.losses(cols, cfg.transform)
    if not Mk.any():
        raise ModelError(
            "no losses logged at consecutive steps: the optimizer-aware model fits "
            "one-step increments; log every step (at least in stretches)"
        )
    return _solve_chunk(obs, y0, dprev, dy, Mk, cfg.ar, cfg.l2, tol, maxiter)


def fit_params(
    runs: RunSet,
    sched: Schedule,
    cfg: Config,
    tests: np.ndarray | None = None,
    *,
    obs: Observations | None = None,
    tol: float = 1e-8,
    maxiter: int = CG_MAXITER,
    chunks: list[np.ndarray] | None = None,
    progress=None,
    stats: dict | None = None,
):
    """Fit a, B (n, m), rho (m,), gamma (m, H) for the test columns ``tests`` (default all),
    chunk by chunk (``chunks``: their concatenation equals ``tests``; default: the memory
    budget's). Returns (a, B, rho, gamma, largest CG iteration count); ``stats`` receives
    the CG iterations and convergence (``solvers.cg_stats``)."""
    from simfluence_cli.model.solvers import cg_stats

    if obs is None:
        obs = Observations(runs, sched, cfg.n_basis)
    tests = np.arange(runs.n_tests) if tests is None else np.asarray(tests, dtype=np.int64)
    if chunks is None:
        chunks = plan_chunks(obs, tests)
    m, n = len(tests), runs.n_examples
    a = np.zeros((n, m))
    B = np.zeros((n, m))
    rho = np.zeros(m)
    gamma = np.zeros((m, cfg.n_basis))
    iters, unconverged, max_rel = [], [], []
    s = 0
    for cols in chunks:
        ca, cB, cr, cg, it, conv, rel = solve_chunk(obs, cols, cfg, tol, maxiter)
        sl = slice(s, s + len(cols))
        a[:, sl], B[:, sl], rho[sl], gamma[sl] = ca, cB, cr, cg
        s += len(cols)
        iters.append(int(it.max()) if len(it) else 0)
        max_rel.append(float(rel.max()) if len(rel) else 0.0)
        if not conv.all():
            unconverged.append((cols[~conv], rel[~conv]))
        if progress is not None:
            progress(len(cols))
    if stats is not None:
        stats.update(
            solver="cg (schur)",
            chunks=len(chunks),
            cg_iterations_max=max(iters, default=0),
            cg_iterations_mean=float(np.mean(iters)) if iters else 0.0,
            **cg_stats(unconverged, max_rel),
        )
    return a, B, rho, gamma, max(iters, default=0)


# -- rollout ------------------------------------------------------------------------------------


def rollout(
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
    threads: int | None = None,
) -> np.ndarray:
    """Roll C curricula x m tests forward.

    a, B: (n, m) (an extra trailing row allowed); idx (C, T, b) with -1 = padding; w (C, T)
    step weights (0 on padded steps); phi (T, H) the time basis at steps 1..T; L0 (C, m).
    Steps whose batch is all padding leave the loss and the carried increment unchanged.
    Losses are clamped to [lo, hi] (in loss space; applied in transformed space).
    Returns (C, T+1, m) losses or (C, m) final losses. ``start``: the state (y, d) to start
    from instead of (forward(L0), 0), e.g. mid-curriculum (then idx, w, phi from that step).
    Large problems run the compiled kernel (``model._kernels``; the same choice and the same
    results, bit for bit, as :func:`simfluence_cli.model.rollout.rollout`'s); ``threads``:
    its threads (default ``solvers.default_threads``). The numpy path runs on one thread
    unless ``threads`` is given (its column chunks then share them: at 1,000 curricula x 1,000
    tests two threads take ~0.7x the wall time for ~1.3x the CPU seconds).
    """
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
    if kernel_applies(a, idx):
        from simfluence_cli.model._kernels import rollout_oa_numba

        ends = (np.full(m, -_FMAX), np.full(m, _FMAX)) if ylo is None else (ylo, yhi)
        args = (a, B, rho, drift, w, idx, y, d, *ends)
        got = run_compiled(rollout_oa_numba, args, final=final, threads=threads)
        if got is not None:  # y: the losses are inverse(y), as below
            if final:
                return inverse(got, transform)
            got[:, 0] = L0
            for c in range(C if transform != "identity" else 0):  # in place, no second array
                got[c, 1:] = inverse(got[c, 1:], transform)
            return got
    return _rollout_numpy(a, B, rho, drift, w, idx, y, d, L0, transform, ylo, yhi, final, threads)


#: below 64 curricula (where ``model.rollout.chunk_cols`` does not narrow the chunks for cache),
#: a column chunk holds at least this many curricula x columns: fewer, larger numpy calls per step
OA_CHUNK_CELLS = 2**15
#: bytes of batch sums gathered at once (a block of steps; at least one step): ~L2-sized blocks
#: gather ~2x faster than all steps at once on the demo store's CV rollouts
OA_GATHER_BYTES = 2**19


def _rollout_numpy(a, B, rho, drift, w, idx, y0, d0, L0, transform, ylo, yhi, final, threads):
    """``rollout``'s numpy path from the transformed state (y0, d0), bit for bit the numpy loop
    it replaced: per column chunk and block of steps, the batch sums of a and B are gathered
    for every step of the block at once (slot 0, 1, ... added in order, as
    ``model.rollout.rollout``), then each step is computed in place, in the order of
    ``inc = w * (sa * y + sb) + rho * d + drift[t]; new = y + inc``, into a (steps + 1, C,
    columns) trajectory buffer that is mapped back to losses a block at a time."""
    from simfluence_cli.model.rollout import chunk_cols, run_chunks

    C, T, nb = idx.shape
    m = a.shape[1]
    n1 = a.shape[0] + 1  # the zero row read by -1 (padding)
    if idx.size and (idx.max() >= n1 or idx.min() < -n1):
        raise IndexError(f"index {int(idx.max())} is out of bounds for a table of {n1} rows")
    # checked above, so "wrap" only maps -1 (padding) to the zero row: np.take's default
    # mode="raise" buffers its output (~2x the cost of the gather)
    slots = np.ascontiguousarray(idx.transpose(2, 1, 0))  # (b, T, C)
    active = (idx >= 0).any(axis=2).T  # (T, C)
    all_active = active.all(axis=1)  # (T,)
    inactive = ~active[:, :, None]
    wT = np.ascontiguousarray(np.asarray(w, dtype=np.float64).T)[:, :, None]  # (T, C, 1)
    # the clamp is np.clip's: its loop over the tests gives the bound on a tie of signed zeros,
    # as np.maximum / np.minimum (a third of its cost) do in every loop; when the bounds do not
    # vary along that loop (one test, scalar bounds) np.clip's scalar loop keeps x instead
    clip_scalar = ylo is not None and (m == 1 or any(np.shape(v)[-1:] != (m,) for v in (ylo, yhi)))
    rho, ylo, yhi = (
        v if np.ndim(v) == 0 else np.broadcast_to(v, (m,) if np.ndim(v) == 1 else (C, m))
        for v in (rho, -_FMAX if ylo is None else ylo, _FMAX if yhi is None else yhi)
    )
    out = np.empty((C, m) if final else (C, T + 1, m))
    if not final:
        out[:, 0] = L0
    width = chunk_cols(a.shape[0], C)
    if C < 64:
        width = max(width, OA_CHUNK_CELLS // max(C, 1))
    spans = [(s, min(m, s + width)) for s in range(0, m, width)]

    def run(span):
        with np.errstate(over="ignore", invalid="ignore"):  # per thread (a context variable)
            roll(span)

    def roll(span):
        s, e = span
        k = e - s
        Pa = np.zeros((n1, k))
        Pa[:-1] = a[:, s:e]
        Pb = np.zeros((n1, k))
        Pb[:-1] = B[:, s:e]
        steps = max(1, min(T, OA_GATHER_BYTES // max(1, C * k * 8)))
        sa, sb = np.zeros((steps, C, k)), np.zeros((steps, C, k))  # stay 0 with no batch slots
        tmp = np.empty((steps, C, k))
        Y = np.empty((steps + 1, C, k))  # Y[0]: y before the block, Y[i + 1]: after its step i
        Y[0] = y0[:, s:e]
        d = np.array(d0[:, s:e], dtype=np.float64)
        mem = np.empty((C, k))
        drift_c = np.ascontiguousarray(drift[:, s:e])
        rho_c, lo_c, hi_c = (
            v if np.ndim(v) == 0 else np.ascontiguousarray(v[..., s:e]) for v in (rho, ylo, yhi)
        )
        if clip_scalar:  # as given: np.clip takes the loop it took on them
            lo_c, hi_c = (v if np.ndim(v) == 0 else v[..., s:e] for v in (ylo, yhi))
        for t0 in range(0, T, steps):
            t1 = min(T, t0 + steps)
            q = t1 - t0
            for P, acc in ((Pa, sa), (Pb, sb)) if nb else ():
                np.take(P, slots[0, t0:t1], axis=0, out=acc[:q], mode="wrap")
                for j in range(1, nb):
                    np.take(P, slots[j, t0:t1], axis=0, out=tmp[:q], mode="wrap")
                    acc[:q] += tmp[:q]
            for i in range(q):
                t = t0 + i
                y, new = Y[i], Y[i + 1]
                np.multiply(sa[i], y, out=new)
                new += sb[i]
                new *= wT[t]
                np.multiply(rho_c, d, out=mem)
                new += mem
                new += drift_c[t]
                new += y  # y + inc (addition commutes exactly)
                if clip_scalar:
                    np.clip(new, lo_c, hi_c, out=new)
                else:  # = np.clip(new, lo, hi): the bound on a tie, NaN if either is NaN
                    np.maximum(new, lo_c, out=new)
                    np.minimum(new, hi_c, out=new)
                if all_active[t]:
                    np.subtract(new, y, out=d)
                else:
                    np.subtract(new, y, out=mem)
                    np.copyto(d, mem, where=active[t][:, None])
                    np.copyto(new, y, where=inactive[t])
            Y[0] = Y[q]  # the next block starts from this y
            if not final:
                block = Y[1 : q + 1]
                inverse(block, transform, out=block)
                out[:, t0 + 1 : t1 + 1, s:e] = block.transpose(1, 0, 2)
        if final:
            out[:, s:e] = inverse(Y[0], transform)

    run_chunks(run, spans, 1 if threads is None else threads)
    return out


def curriculum_weights(sched: Schedule, idx: np.ndarray, lr=None) -> np.ndarray:
    """(C, T) step weights for an index array; ``lr`` (C, T) / (T,) or None (the fitting
    runs' schedule by step index). NaN entries of ``lr`` also fall back to the schedule."""
    C, T, _ = idx.shape
    sizes = (idx >= 0).sum(axis=2)
    default = np.broadcast_to(sched.lr_for(T), (C, T))
    if lr is None:
        L = default
    else:
        L = np.full((C, T), np.nan)
        lr_arr = np.asarray(lr, dtype=np.float64)
        if lr_arr.ndim == 1:
            lr_arr = np.broadcast_to(lr_arr[:T], (C, min(T, len(lr_arr))))
        L[:, : lr_arr.shape[1]] = lr_arr[:, :T]
        L = np.where(np.isfinite(L), L, default)
    return step_weights(sched, L, sizes)


# -- fitting a Simulator (choices by grouped CV) -------------------------------------------------

OA_L2_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
BASIS_CHOICES = (0, 8)
#: the CV of the choices uses at most this many folds (grouped by run) and test examples
OA_CV_FOLDS = 3
OA_CV_TESTS = 32
#: relative CV improvement an extra ingredient (AR, time basis, transform) must bring
CV_MARGIN = 0.005


def _folds(ids: list[str], k: int) -> list[list[str]]:
    order = np.random.default_rng(0).permutation(len(ids))
    return [[ids[j] for j in sorted(order[f::k])] for f in range(k)]


def _bounds(runs: RunSet, clip: str, margin: float):
    if clip == "none":
        return None, None
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        allL = np.vstack([r.losses for r in runs.runs])
        lo, hi = np.nanmin(allL, axis=0), np.nanmax(allL, axis=0)
    span = hi - lo
    return np.maximum(lo - margin * span, 0.0), hi + margin * span


def _index_array(runs: list) -> np.ndarray:
    T = max(r.n_steps for r in runs)
    mats = [r.index_matrix() for r in runs]
    b = max(mm.shape[1] for mm in mats)
    idx = np.full((len(runs), T, b), -1, dtype=np.int64)
    for c, mm in enumerate(mats):
        idx[c, : mm.shape[0], : mm.shape[1]] = mm
    return idx


def _run_lr(runs: list, T: int):
    if all(r.lr is None for r in runs):
        return None
    L = np.full((len(runs), T), np.nan)
    for c, r in enumerate(runs):
        if r.lr is not None:
            L[c, : len(r.lr)] = r.lr
    return L


def standardised(runs: RunSet) -> tuple[RunSet, np.ndarray]:
    """The runs the identity transform fits: each test's losses divided by their RMS over the
    fitting runs (the paper's methods' per-test standardisation), and that (m,) scale.
    B and the basis weights fitted on them are multiplied by the scale to return to loss units
    (a and rho are dimensionless): the fit and its ridge penalty do not depend on loss units."""
    scale = loss_scale(runs)
    return rescaled(runs, scale), scale


def cv_score(runs: RunSet, folds, cfg: Config, cols, clip, margin, cache, std=None) -> float:
    """Held-out all-steps rollout MSE (loss space) of ``cfg``, K folds grouped by run.
    ``std`` = ``standardised(runs)``, which the identity transform fits (default: computed)."""
    return cv_scores(runs, folds, [cfg], cols, clip, margin, cache, std)[0]


def cv_scores(
    runs: RunSet, folds, cfgs, cols, clip, margin, cache, std=None, progress=None
) -> list[float]:
    """``cv_score`` of each of ``cfgs``, the same numbers: configurations that share the
    design's structure (AR, basis, units) are fitted as the columns of one batched solve
    (per-column l2 and transform) and rolled out together by transform, which shares each
    operator application and rollout step across them (the CG columns are independent).
    ``progress(x)`` is called after each fold with the configurations it finished (x = the
    group's configurations / folds; they add up to ``len(cfgs)``)."""
    cfgs = list(cfgs)
    out = [0.0] * len(cfgs)
    groups: dict = {}
    for j, c in enumerate(cfgs):
        groups.setdefault((c.n_basis, c.ar, c.transform == "identity"), []).append(j)
    for (n_basis, ar, units), members in groups.items():
        res = _cv_group(
            runs,
            folds,
            [cfgs[j] for j in members],
            n_basis,
            ar,
            units,
            cols,
            clip,
            margin,
            cache,
            std,
            progress,
        )
        for j, v in zip(members, res):
            out[j] = v
    return out


def _cv_group(runs, folds, cfgs, n_basis, ar, units, cols, clip, margin, cache, std, progress):
    """``cv_scores`` of configurations sharing (n_basis, ar, units)."""
    cols = np.asarray(cols, dtype=np.int64)
    k, G = len(cols), len(cfgs)
    sse, cnt = np.zeros(G), np.zeros(G)
    bad_cfg = np.zeros(G, dtype=bool)
    if units and std is None:
        std = standardised(runs)
    transforms = list(dict.fromkeys(c.transform for c in cfgs))
    for f, fold in enumerate(folds):
        train_ids = [r for r in runs.run_ids if r not in fold]
        train = runs.subset(train_ids)
        key = (f, n_basis, units)
        if key not in cache:
            fit_runs = std[0].subset(train_ids) if units else train
            sched = Schedule.from_runs(fit_runs)
            cache[key] = (sched, Observations(fit_runs, sched, n_basis), fit_runs)
        sched, obs, fit_runs = cache[key]
        # (not cached across calls: 8 MB per fold and transform, cheaper to rebuild)
        losses = {tr: obs.losses(cols, tr) for tr in transforms}
        if not any(v[3].any() for v in losses.values()):
            raise ModelError(
                "no losses logged at consecutive steps: the optimizer-aware model fits "
                "one-step increments; log every step (at least in stretches)"
            )
        U_a, U_B, rho, gamma = _solve_configs(obs, cfgs, losses, ar, tol=1e-6)
        if units:
            sc = np.tile(std[1][cols], G)
            U_B, gamma = U_B * sc, gamma * sc[:, None]
        held = [runs[r] for r in fold]
        idx = _index_array(held)
        T = idx.shape[1]
        w = curriculum_weights(sched, idx, _run_lr(held, T))
        phi = hat_basis(np.arange(1, T + 1), n_basis, sched.T_ref)
        lo, hi = _bounds(train, clip, margin)
        if lo is not None:
            lo, hi = np.tile(lo[cols], G), np.tile(hi[cols], G)
        L0 = np.vstack([r.losses[0, cols] for r in held])
        for tr in transforms:
            g = [i for i, c in enumerate(cfgs) if c.transform == tr]
            sel = np.concatenate([np.arange(i * k, (i + 1) * k) for i in g])
            traj = rollout(
                U_a[:, sel],
                U_B[:, sel],
                rho[sel],
                gamma[sel],
                idx,
                w,
                phi,
                np.tile(L0, len(g)),
                tr,
                None if lo is None else lo[sel],
                None if hi is None else hi[sel],
            )
            for c, r in enumerate(held):
                sim = traj[c][r.loss_steps][1:]
                obsL = r.losses[1:, cols]
                for q, i in enumerate(g):
                    s_ = sim[:, q * k : (q + 1) * k]
                    ok = np.isfinite(obsL) & np.isfinite(s_)
                    sse[i] += float(np.sum((s_[ok] - obsL[ok]) ** 2))
                    cnt[i] += float(ok.sum())
                    if (np.isfinite(obsL) & ~np.isfinite(s_)).any():
                        bad_cfg[i] = True  # a diverging rollout scores as badly as possible
        if progress is not None:
            progress(G / len(folds))
    return [float("inf") if bad_cfg[i] else sse[i] / max(cnt[i], 1.0) for i in range(G)]


#: warm-start each l2 of the CV grid from the neighbouring (larger) l2's solution
OA_CV_WARM = True
#: solve a transform's l2 grid (two or more penalties, all > 0) with one multi-shift CG sequence
#: (``OAChunkSystem.solve_path``) instead of one warm-started PCG per penalty
OA_CV_SHIFTED = True


def _solve_configs(obs: Observations, cfgs, losses, ar: bool, tol):
    """(a, B, rho, gamma) of each config's test columns side by side ((n, G k) ...), for
    configs sharing ``ar`` and the basis; ``losses[transform]`` = ``obs.losses(cols, ...)``.
    One system per transform and chunk serves every l2: a grid of penalties by one multi-shift
    CG sequence (``OAChunkSystem.solve_path``), else (one penalty, or ``OA_CV_SHIFTED`` off)
    by ``OAChunkSystem.set_l2`` from the largest l2 down, each warm-started from the previous
    solution."""
    k = losses[cfgs[0].transform][0].shape[1]
    G, n = len(cfgs), obs.Z.shape[1]
    a, B = np.zeros((n, G * k)), np.zeros((n, G * k))
    rho, gamma = np.zeros(G * k), np.zeros((G * k, obs.Phi.shape[1]))
    chunks = plan_chunks(obs, np.arange(k))
    for tr in dict.fromkeys(c.transform for c in cfgs):
        order = sorted(
            (i for i, c in enumerate(cfgs) if c.transform == tr), key=lambda i: -cfgs[i].l2
        )
        y0, dprev, dy, Mk = losses[tr]
        for ch in chunks:
            system = OAChunkSystem(
                obs, y0[:, ch], dprev[:, ch], dy[:, ch], Mk[:, ch], ar, cfgs[order[0]].l2
            )
            if OA_CV_SHIFTED and len(order) > 1:
                path = system.solve_path([cfgs[i].l2 for i in order], tol, CG_MAXITER)
                if path is not None:
                    for i, (ca, cB, cr, cg) in zip(order, path):
                        sl = i * k + ch
                        a[:, sl], B[:, sl], rho[sl], gamma[sl] = ca, cB, cr, cg
                    continue
            x0 = None
            for i in order:
                system.set_l2(cfgs[i].l2)
                ca, cB, cr, cg, *_ = system.solve(tol, CG_MAXITER, x0=x0)
                sl = i * k + ch
                a[:, sl], B[:, sl], rho[sl], gamma[sl] = ca, cB, cr, cg
                if OA_CV_WARM:
                    x0 = np.vstack([ca, cB])
    return a, B, rho, gamma


def choose_config(
    runs: RunSet, fixed: dict, k_folds: int, clip: str, margin: float, cols, progress=None
) -> tuple[Config, list[dict], list[list[str]]]:
    """Coordinate-wise CV search over the options not fixed by the user (one pass:
    l2, AR, basis, transform, l2 again). Returns (config, curve of every scored config, folds).
    ``progress(x)`` receives the fraction of the search just done (x adds up to 1): the unit is
    one configuration's fold, out of an upper bound of the configurations scored (the first
    searched option's candidates, then each later one's minus the current, already scored)."""
    folds = _folds(runs.run_ids, min(k_folds, len(runs)))
    cache: dict = {}
    scores: dict[Config, float] = {}
    std = standardised(runs) if fixed.get("transform") in (None, "identity") else None
    options = {
        "l2": OA_L2_GRID,
        "ar": (False, True),
        "n_basis": BASIS_CHOICES,
        "transform": TRANSFORMS,
    }
    order = ["l2", "ar", "n_basis", "transform", "l2"]
    searched = [len(options[name]) for name in order if fixed.get(name) is None]
    bound = float(searched[0] + sum(c - 1 for c in searched[1:])) if searched else 1.0
    done = [0.0]

    def tick(x: float) -> None:
        x = min(x, bound - done[0])  # never past the bound
        done[0] += x
        if progress is not None and x > 0:
            progress(x / bound)

    def score_all(cfgs):
        new = [c for c in dict.fromkeys(cfgs) if c not in scores]
        for c, v in zip(new, cv_scores(runs, folds, new, cols, clip, margin, cache, std, tick)):
            scores[c] = v
        return [scores[c] for c in cfgs]

    cur = Config(
        transform=fixed.get("transform") or "identity",
        ar=True if fixed.get("ar") is None else bool(fixed["ar"]),
        n_basis=BASIS_CHOICES[-1] if fixed.get("n_basis") is None else int(fixed["n_basis"]),
        l2=1.0 if fixed.get("l2") is None else float(fixed["l2"]),
    )
    # candidates simplest first: an option is switched on (or a transform other than the
    # identity taken) only when it lowers the CV error by more than CV_MARGIN (relative)
    for name in order:
        if fixed.get(name) is not None:
            continue
        cands = [Config(**{**cur.as_dict(), name: v}) for v in options[name]]
        vals = score_all(cands)
        best = min(vals)
        if name == "l2":
            cur = cands[int(np.argmin(vals))]
        else:
            cur = next(c for c, v in zip(cands, vals) if v <= best * (1 + CV_MARGIN))
    if searched:
        tick(bound)  # what the bound counted but the search did not need
    if not scores:
        return cur, [], folds
    curve = [{**c.as_dict(), "cv_mse": v} for c, v in scores.items()]
    return cur, curve, folds


class FitTask:
    """The final fit of some test chunks, ``task(chunks) -> (tests, theta, stats)`` with theta
    rows a (n), B (n), rho (1), gamma (H): what ``sharding.fit_chunks`` runs in this process, on
    local workers or on Dask. Picklable: runs with a ``source`` (a store) travel as the source
    and are reloaded on the worker; the Observations are built once per process."""

    def __init__(self, runs: RunSet, sched: Schedule, cfg: Config, tol: float):
        self.runs, self.sched, self.cfg, self.tol = runs, sched, cfg, float(tol)
        self.source = getattr(runs, "source", None)
        self.run_ids = list(runs.run_ids)
        self._obs = None
        self._lock = threading.Lock()

    def __getstate__(self):
        d = {k: v for k, v in self.__dict__.items() if k not in ("_obs", "_lock")}
        if self.source is not None:
            d["runs"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._obs, self._lock = None, threading.Lock()

    def observations(self) -> Observations:
        with self._lock:
            if self._obs is None:
                if self.runs is None:
                    self.runs = self.source.load(self.run_ids)
                self._obs = Observations(self.runs, self.sched, self.cfg.n_basis)
            return self._obs

    def __call__(self, chunks: list[np.ndarray]):
        obs = self.observations()
        tests = np.concatenate(chunks)
        st: dict = {}
        a, B, rho, gamma, _ = fit_params(
            self.runs, self.sched, self.cfg, tests, obs=obs, tol=self.tol, chunks=chunks, stats=st
        )
        return tests, np.vstack([a, B, rho[None], gamma.T]), st


def fixed_choices(sim, runs: RunSet, sched: Schedule, n_runs: int | None = None) -> dict:
    """The choices of ``sim`` the fit does not cross-validate on ``runs`` ({name: value}; None =
    chosen by CV): the user's, the time basis off without an lr schedule, and every choice
    at its default with fewer than 2 runs (``n_runs`` overrides ``len(runs)``)."""
    fixed = {
        "transform": None if sim.transform == "auto" else sim.transform,
        "ar": None if sim.ar == "auto" else bool(sim.ar),
        "n_basis": None if sim.time_basis == "auto" else int(sim.time_basis),
        "l2": None if sim.l2 == "auto" else float(sim.l2),
    }
    if fixed["n_basis"] is None and not sched.lr_varies():
        # no lr schedule (constant or unlogged lr): the loss drift of the fitting runs comes
        # from what their curricula trained on, which the per-example terms model and which
        # differs between curricula; a time basis would hard-code the fitting curricula's
        # drift (CV on reshuffled fitting runs cannot see the harm on e.g. class-ordered ones)
        fixed["n_basis"] = 0
    if (len(runs) if n_runs is None else n_runs) < 2:
        fixed = {
            "transform": fixed["transform"] or "identity",
            "ar": True if fixed["ar"] is None else fixed["ar"],
            "n_basis": BASIS_CHOICES[-1] if fixed["n_basis"] is None else fixed["n_basis"],
            "l2": 1.0 if fixed["l2"] is None else fixed["l2"],
        }
    return fixed


def cross_validates(sim, runs: RunSet) -> bool:
    """Whether fitting ``sim`` (optimizer-aware) on ``runs`` runs the CV of its choices."""
    return any(v is None for v in fixed_choices(sim, runs, Schedule.from_runs(runs)).values())


def fit_simulator(sim, runs: RunSet, *, param_sink=None, keep_params: bool = True) -> None:
    """Fit ``sim`` (a Simulator with method optimizer-aware) on ``runs``: CV for the choices
    left "auto", then the final fit on all tests. Sets A_ (= a), B_, ar_ (m,), basis_ (m, H),
    schedule_, config_ (the chosen configuration), cv_curve_, l2_, cv_folds_."""
    from simfluence_cli.model.sharding import fit_chunks
    from simfluence_cli.model.solvers import MIN_CHUNKS, cv_test_subset

    sched = Schedule.from_runs(runs)
    fixed = fixed_choices(sim, runs, sched)
    if len(runs) < 2 and any(v is None for v in fixed_choices(sim, runs, sched, 2).values()):
        sim.warnings_.append(
            "optimizer-aware: cross-validation needs at least 2 fitting runs; the unset "
            "choices use identity transform, AR on, 8 basis functions (with an lr schedule), "
            "l2 = 1"
        )
    cols = cv_test_subset(runs.n_tests, OA_CV_TESTS)
    k = min(sim.cv_folds, OA_CV_FOLDS)
    m = runs.n_tests
    cfg, curve, folds = choose_config(
        runs, fixed, k, sim.clip, sim.clip_margin, cols, progress=lambda x: sim._tick(x * m)
    )
    n, m = runs.n_examples, runs.n_tests
    scale = np.ones(m)
    if cfg.transform == "identity":  # fit L / s per test; B and gamma scaled back below
        runs, scale = standardised(runs)
    sim.schedule_, sim.config_, sim.loss_scale_ = sched, cfg, scale
    sim.l2_, sim.cv_curve_, sim.cv_folds_ = cfg.l2, (curve or None), (folds if curve else None)
    sim.ar_ = np.zeros(m)
    sim.basis_ = np.zeros((m, cfg.n_basis))
    sim.A_ = np.empty((n, m)) if keep_params else None
    sim.B_ = np.empty((n, m)) if keep_params else None
    task = FitTask(runs, sched, cfg, tol=min(sim._exec.tol * 100, 1e-8))
    chunks = plan_chunks(task.observations(), np.arange(m), min_chunks=MIN_CHUNKS)

    def sink(tests, theta):  # rows: a (n), B (n), rho (1), gamma (H); B, gamma in loss units
        a, B = theta[:n], theta[n : 2 * n] * scale[tests]
        gamma = theta[2 * n + 1 :].T * scale[tests, None]
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(B))):
            raise ModelError("the fit produced non-finite parameters; raise --l2")
        sim.ar_[tests], sim.basis_[tests] = theta[2 * n], gamma
        if keep_params:
            sim.A_[:, tests], sim.B_[:, tests] = a, B
        if param_sink is not None:
            param_sink(np.asarray(tests), a, B)

    sim.solver_stats_ = {}
    fit_chunks(
        task,
        chunks,
        2 * n + 1 + cfg.n_basis,
        workers=sim._exec.workers,
        dask=sim._exec.dask,
        progress=sim._tick,
        stats=sim.solver_stats_,
        sink=sink,
    )
    sim._cg_warning()
    rho = sim.ar_
    if cfg.ar and np.any(np.abs(rho) >= 1):
        sim.warnings_.append(
            f"optimizer-aware: {int(np.sum(np.abs(rho) >= 1))} test(s) have an AR coefficient "
            "|rho| >= 1 (rollouts may oscillate or grow); raise --l2 or fix --ar off"
        )


def simulate_params(sim, a, B, cols, idx, L0, lo, hi, lr, final: bool) -> np.ndarray:
    """Rollout of a fitted optimizer-aware Simulator for the test columns ``cols``."""
    sched = sim.schedule_
    T = idx.shape[1]
    w = curriculum_weights(sched, idx, lr)
    phi = hat_basis(np.arange(1, T + 1), sim.config_.n_basis, sched.T_ref)
    return rollout(
        a,
        B,
        sim.ar_[cols],
        sim.basis_[cols],
        idx,
        w,
        phi,
        L0,
        sim.config_.transform,
        lo,
        hi,
        final=final,
    )


def step_inputs(sim, cols, idx: np.ndarray, lr=None) -> tuple[np.ndarray, np.ndarray]:
    """(w (C, T), drift (T, len(cols))) of a fitted optimizer-aware Simulator on the index
    array ``idx``: the step weights and the time-basis drift ``simulate_params`` rolls with."""
    sched, T = sim.schedule_, idx.shape[1]
    phi = hat_basis(np.arange(1, T + 1), sim.config_.n_basis, sched.T_ref)
    basis = np.asarray(sim.basis_)[cols]
    drift = phi @ basis.T if basis.shape[1] else np.zeros((T, len(cols)))
    return curriculum_weights(sched, idx, lr), drift

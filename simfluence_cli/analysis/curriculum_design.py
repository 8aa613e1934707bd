"""``design``: search for a curriculum that minimises a simulated objective.

Objective ``mean-final-loss``: the mean over the chosen test examples of the simulated loss
after the last step, rolled out from ``init_loss`` (default: the model's mean observed L_0).

The search space: ``steps`` batches of ``batch_size`` distinct examples from the pool, each
pool example used at most ``max_uses`` times (default ``ceil(1.5 * steps * batch_size /
|pool|)``: 1.5 times the uniform coverage of a random curriculum).

1. **Start**: a given curriculum, typically the fitting run with the lowest observed mean
   final loss (:func:`best_run_start`, the CLI's ``--start best-run``), or a **greedy
   construction** (step by step, the ``batch_size`` available examples with the smallest
   one-step contribution ``mean_z(A_i(z) L_{t-1}(z) + B_i(z))``, myopic over steps).
2. **Trust region**: at most ``max_changes`` slots (step, position) may hold a different
   example than the start. The simulator is only trustworthy near curricula like the ones it
   was fitted on; an unbounded search drifts to curricula it extrapolates badly to (a lower
   simulated, but not a lower real, loss: bench/RESULTS-design.md).
3. **Descent with exact move ranking** (``iters`` rounds): one forward and one adjoint pass
   (model/adjoint.py) give dJ/dalpha_t and dJ/dbeta_t for every step, hence the first-order
   change of the objective of every *replace* (slot -> a pool example with uses left) and
   every *swap* (two examples of different steps) move. With ``fold_models`` (the CV fold
   models of the interval) a move must lower the objective under more than ``consensus`` of
   them (first order). The ``candidates`` best moves are simulated exactly (one vectorised
   rollout from the earliest changed step); the best exact improvement is taken, together
   with further improving moves on other steps when their combination is better still.
   Stops when no move improves. **Data floor guard** (``floor_guard``, on by default): a
   candidate is rejected when it has more tests whose simulated final loss lies below their
   data floor than the start has (usually none), the data floor of a test being the lowest
   final loss any fitting run reached for it (``floor``, from :func:`final_loss_floor`;
   without it the lowest loss at any step, ``sim.loss_min_``). Below the floor no real
   run vouches for the simulator: a biased one finds its largest (unreal) gains there
   (bench/RESULTS-design.md: the optimizer-aware simulator on AdamW). So the search also
   stops when all ``candidates`` best-ranked moves that improve leave the floor: the
   simulator's preferred direction points past the data. The same rule for every method;
   it replaces the former clip-floor count. Optimizer-aware models use their own adjoint
   (``oa_final_loss_adjoint``: the 2-D state (loss, carried increment), step weights and
   drift by step index) and are checked exactly from the state at the first changed step.
4. **Reference**: ``n_random`` random curricula from the same pool (the pool's examples in
   fresh random orders, cut into batches, as the fitting runs of the samples were made) are
   simulated too; the report gives their mean, std and best objective next to the design's.

The objective never gets worse than the start's. Deterministic given ``seed``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simfluence_cli._repr import summary_repr
from simfluence_cli.errors import ModelError, SelectionError, UsageError
from simfluence_cli.model.adjoint import final_loss_adjoint
from simfluence_cli.model.config import OPTIMIZER_AWARE
from simfluence_cli.model.simulator import map_examples

__all__ = [
    "OBJECTIVES",
    "DesignResult",
    "best_run_start",
    "resolve_start",
    "fitting_runs",
    "final_loss_floor",
    "START_CHOICES",
    "design_curriculum",
    "random_curricula",
    "curriculum_text",
]

from simfluence_cli.analysis.choices import OBJECTIVES

_SIM_BYTES = 256 * 2**20


@dataclass
class DesignResult:
    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays
    batches: list[list[str]]
    objective: float
    start_objective: float  # the start's (greedy or given curriculum) simulated objective
    random_objectives: np.ndarray
    history: list[float] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def report(self) -> dict:
        r = self.random_objectives
        out = {
            "objective": self.params.get("objective"),
            "design": self.objective,
            **self.params,
        }
        if len(r):
            out.update(
                {
                    "random_n": int(len(r)),
                    "random_mean": float(r.mean()),
                    "random_std": float(r.std()),
                    "random_best": float(r.min()),
                    "random_worst": float(r.max()),
                    "design_vs_random_mean": float(self.objective - r.mean()),
                    "fraction_random_beaten": float(np.mean(self.objective < r)),
                }
            )
        out["iterations_improved"] = int(np.sum(np.diff(self.history) < 0)) if self.history else 0
        return out


def _pool_indices(sim, pool: Sequence[str] | None) -> np.ndarray:
    ids = list(sim.example_ids_)
    seen = np.asarray(sim.example_counts_) > 0
    if pool is None:
        return np.flatnonzero(seen)
    pos = {e: i for i, e in enumerate(ids)}
    bad = [e for e in pool if str(e) not in pos or not seen[pos[str(e)]]]
    if bad:
        raise ModelError(
            f"{len(bad)} pool example(s) unknown to the model: "
            f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}; "
            "the pool must come from examples trained on in the fitting runs"
        )
    return np.asarray(sorted({pos[str(e)] for e in pool}), dtype=np.int64)


def random_curricula(
    pool_idx: np.ndarray, steps: int, batch: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """(n, steps, batch) index arrays: the pool in fresh random orders (one per epoch), cut
    into batches; a batch straddling an epoch boundary never holds an example twice (the
    later copy is swapped with the next different example, as the sample generator does)."""
    need = steps * batch
    reps = -(-need // len(pool_idx)) + 1
    out = np.empty((n, steps, batch), dtype=np.int64)
    for c in range(n):
        stream = np.concatenate([rng.permutation(pool_idx) for _ in range(reps)]).tolist()
        for lo in range(0, need, batch):
            for k in range(lo, lo + batch):
                if stream[k] in stream[lo:k]:
                    j = lo + batch
                    while stream[j] in stream[lo : lo + batch]:
                        j += 1
                    stream[k], stream[j] = stream[j], stream[k]
        out[c] = np.asarray(stream[:need]).reshape(steps, batch)
    return out


def _finals(sim, idx: np.ndarray, L0: np.ndarray, tests) -> np.ndarray:
    C, T, _ = idx.shape
    M = L0.shape[-1]
    step = max(1, int(_SIM_BYTES // max(1, (T + 1) * M * 8 * 3)))
    out = np.empty((C, M))
    for s in range(0, C, step):
        init = L0 if L0.ndim == 1 else L0[s : s + step]
        out[s : s + step] = sim.simulate(idx[s : s + step], init, tests=tests)[:, -1]
    return out


def _greedy(A, B, L0, lo, hi, pool_idx, steps, b, max_uses, additive) -> np.ndarray:
    uses = np.zeros(len(pool_idx), dtype=np.int64)
    Ap, Bp = A[pool_idx], B[pool_idx]
    bsum = Bp.mean(axis=1)
    L = L0.copy()
    out = np.empty((steps, b), dtype=np.int64)
    for t in range(steps):
        score = bsum if additive else Ap @ L / L.shape[0] + bsum
        score = np.where(uses < max_uses, score, np.inf)
        pick = np.argpartition(score, b - 1)[:b]
        pick = pick[np.argsort(score[pick], kind="stable")]
        uses[pick] += 1
        out[t] = pool_idx[pick]
        beta = Bp[pick].sum(axis=0)
        L = L + beta if additive else Ap[pick].sum(axis=0) * L + beta
        if lo is not None:
            np.clip(L, lo, hi, out=L)
    return out


def _mean_final_losses(runs, tests: Sequence[str] | None = None) -> np.ndarray:
    """(runs,) each run's observed mean final loss over ``tests`` (default: all; NaN where
    none of them is logged)."""
    cols = np.arange(runs.n_tests)
    if tests is not None:
        pos = {str(t): j for j, t in enumerate(runs.test_ids)}
        cols = np.asarray([pos[str(t)] for t in tests if str(t) in pos], dtype=np.int64)
    return np.array([np.nanmean(r.losses[-1][cols]) if len(cols) else np.nan for r in runs.runs])


def best_run_start(runs, tests: Sequence[str] | None = None) -> tuple[str, list[list[str]]]:
    """(run id, curriculum) of the run with the lowest observed mean final loss over ``tests``
    (default: all the runs' tests): the start of ``design --start best-run``."""
    if not len(runs):
        raise SelectionError("no fitting runs to start the design from")
    finals = _mean_final_losses(runs, tests)
    if not np.isfinite(finals).any():
        raise SelectionError("no fitting run has a final loss for the chosen tests")
    k = int(np.nanargmin(finals))
    run = runs.runs[k]
    ex = runs.example_ids
    return str(runs.run_ids[k]), [
        [str(ex[q]) for q in run.batch(t)] for t in range(1, run.n_steps + 1)
    ]


START_CHOICES = ("auto", "best-run", "greedy")


def fitting_runs(store, sim):
    """(runs, None): ``sim``'s fitting runs loaded from ``store`` (once, for the start and the
    data floor of ``design``), or (None, why) when the model records none or some are not in
    the store."""
    ids = list(getattr(sim, "run_ids_", []) or [])
    if not ids:
        return None, "the model records no fitting runs"
    have = set(store.run_ids())
    missing = [r for r in ids if r not in have]
    if missing:
        return None, f"{len(missing)} of the model's fitting runs are not in the store"
    return store.load(ids), None


def resolve_start(
    fitting,
    start: str,
    *,
    steps: int | None = None,
    pool: Sequence[str] | None = None,
    batch_size: int | None = None,
    tests: Sequence[str] | None = None,
) -> tuple[str | None, list[list[str]] | None, str | None]:
    """The start of ``design``: (run id, curriculum, note) for 'best-run' (the fitting run with
    the lowest real mean final loss over ``tests``; ``fitting`` = :func:`fitting_runs`), (None,
    None, note) for 'greedy'. 'auto' = best-run when that run fits the request (its length is
    ``steps``, its examples are in ``pool``, its batches fit ``batch_size``), else greedy with
    a note saying why; an explicit 'best-run' that does not fit is a UsageError."""
    if start not in START_CHOICES:
        raise UsageError(f"--start must be one of {', '.join(START_CHOICES)}, got {start!r}")
    if start == "greedy":
        if steps is None:
            raise UsageError("--start greedy needs --steps")
        return None, None, None
    runs, why = fitting
    if runs is not None:
        rid, cur = best_run_start(runs, tests)
        if steps is not None and steps != len(cur):
            why = f"--steps {steps} differs from the best fitting run's {len(cur)} steps"
        elif pool is not None and {e for b in cur for e in b} - {str(e) for e in pool}:
            why = "the best fitting run uses examples outside --pool"
        elif batch_size is not None and max(len(b) for b in cur) > batch_size:
            why = f"the best fitting run has batches larger than --batch-size {batch_size}"
        elif any(len(set(b)) != len(b) for b in cur):  # e.g. WeightedRandomSampler(replacement)
            t = next(t for t, b in enumerate(cur, 1) if len(set(b)) != len(b))
            why = (
                f"the best fitting run {rid} repeats an example within a batch (step {t}), and "
                "design's batches hold distinct examples"
            )
        else:
            real = float(np.nanmin(_mean_final_losses(runs, tests)))  # the start run's
            return rid, cur, f"starting from fitting run {rid} (real mean final loss {real:.6g})"
    if start == "best-run":
        raise UsageError(f"--start best-run: {why}; use --start greedy")
    if steps is None:
        raise UsageError(
            f"--start auto cannot start from the best fitting run ({why}); give --steps"
        )
    return None, None, f"starting from a greedy construction: {why}"


def _aligned(model, ids, cols, n) -> tuple[np.ndarray, np.ndarray]:
    """``model``'s (A, B) on the rows of example ids ``ids`` (n + 1 rows, the last the zero
    padding row); examples the model never trained on get the prior (a0, 0)."""
    rows = map_examples(model.example_ids_, model.example_counts_, ids, unseen="prior")
    ok = rows < len(model.example_ids_)  # the others map to the prior row
    M = len(cols)
    A = np.zeros((n + 1, M))
    B = np.zeros((n + 1, M))
    A[:n] = model._prior_multiplier()
    A[:n][ok] = model.A_[rows[ok]][:, cols]
    B[:n][ok] = model.B_[rows[ok]][:, cols]
    return A, B


def _uses(cur: np.ndarray, n: int) -> np.ndarray:
    flat = cur.reshape(-1)
    return np.bincount(flat[flat >= 0], minlength=n)


def _apply(cur: np.ndarray, move: tuple) -> np.ndarray:
    """A copy of ``cur`` with ``move`` applied: ('r', t, k, e) or ('s', t1, k1, t2, k2)."""
    out = cur.copy()
    if move[0] == "r":
        _, t, k, e = move
        out[t, k] = e
    else:
        _, t1, k1, t2, k2 = move
        out[t1, k1], out[t2, k2] = cur[t2, k2], cur[t1, k1]
    return out


def _move_steps(move: tuple) -> set:
    return {move[1]} if move[0] == "r" else {move[1], move[3]}


def _adjoint_moves(
    S: np.ndarray,
    Sf: np.ndarray | None,
    cur: np.ndarray,
    start: np.ndarray,
    pool_idx: np.ndarray,
    max_uses: int,
    max_changes: int,
    consensus: float,
    n_best: int,
    n_rows: int,
) -> list[tuple[float, tuple]]:
    """The ``n_best`` moves with the most negative first-order change of the objective (and,
    with fold models, negative under more than ``consensus`` of them), best first."""
    T, b = cur.shape
    n = S.shape[1]
    flat = cur.reshape(-1)
    st = np.repeat(np.arange(T), b)
    sk = np.tile(np.arange(b), T)
    valid = flat >= 0
    inb = np.zeros((T, n + 1), dtype=bool)
    inb[st, flat] = True
    inb = inb[:, :n]
    changed = flat != start.reshape(-1)
    n_changed = int(changed.sum())
    uses = _uses(cur, n)
    fe = np.where(valid, flat, 0)
    keep_best = n_best
    n_best = n_best if Sf is None else 4 * n_best  # room for the consensus filter
    here = S[st, fe]  # (N,) first-order contribution of each slot's example where it is
    out: list[tuple[float, tuple]] = []
    # replace: slot i -> pool example p (not in that batch, uses left)
    P = pool_idx
    Dr = S[st][:, P] - here[:, None]  # (N, |P|)
    ok = valid[:, None] & ~inb[st][:, P] & (uses[P] < max_uses)[None, :]
    newch = P[None, :] != start.reshape(-1)[:, None]
    ok &= n_changed + newch.astype(np.int64) - changed[:, None] <= max_changes
    Dr = np.where(ok & (Dr < 0), Dr, np.inf)
    k = min(n_best, int(np.isfinite(Dr).sum()))
    if k:
        sel = np.argpartition(Dr.reshape(-1), k - 1)[:k]
        i, j = np.unravel_index(sel, Dr.shape)
        for a, c in zip(i.tolist(), j.tolist()):
            out.append((float(Dr[a, c]), ("r", int(st[a]), int(sk[a]), int(P[c]))))
    # swap: slot i (among the n_rows worst-placed) <-> any slot j of another step
    cand_i = np.flatnonzero(valid)
    if len(cand_i) > n_rows:
        cand_i = cand_i[np.argpartition(-here[cand_i], n_rows - 1)[:n_rows]]
    ti, ei = st[cand_i], fe[cand_i]
    Ds = (
        S[ti][:, fe] - here[cand_i][:, None] + S[st][:, ei].T - here[None, :]
    )  # (R, N): S[ti, ej] - S[ti, ei] + S[tj, ei] - S[tj, ej]
    ok = valid[None, :] & ~inb[ti][:, fe] & ~inb[st][:, ei].T
    sf = start.reshape(-1)
    dch = (
        (fe[None, :] != sf[cand_i][:, None]).astype(np.int64)
        + (ei[:, None] != sf[None, :])
        - changed[cand_i][:, None]
        - changed[None, :]
    )
    ok &= n_changed + dch <= max_changes
    Ds = np.where(ok & (Ds < 0), Ds, np.inf)
    k = min(n_best, int(np.isfinite(Ds).sum()))
    if k:
        sel = np.argpartition(Ds.reshape(-1), k - 1)[:k]
        r, j = np.unravel_index(sel, Ds.shape)
        for a, c in zip(r.tolist(), j.tolist()):
            i = int(cand_i[a])
            out.append((float(Ds[a, c]), ("s", int(st[i]), int(sk[i]), int(st[c]), int(sk[c]))))
    out.sort(key=lambda x: x[0])
    if Sf is not None and out:  # consensus of the fold models, first order
        keep = []
        for d, mv in out:
            if mv[0] == "r":
                _, t, kk, e = mv
                old = cur[t, kk]
                df = Sf[:, t, e] - Sf[:, t, old]
            else:
                _, t1, k1, t2, k2 = mv
                e1, e2 = cur[t1, k1], cur[t2, k2]
                df = Sf[:, t1, e2] - Sf[:, t1, e1] + Sf[:, t2, e1] - Sf[:, t2, e2]
            if np.mean(df < 0) > consensus:
                keep.append((d, mv))
        out = keep
    return out[:keep_best]


class _LinearObjective:
    """The paper's methods: stacked (A, B) of the model and its fold models (model 0 = the
    full model) and their adjoint (model/adjoint.final_loss_adjoint)."""

    def __init__(self, sim, models, L0, lo, hi, tests):
        self.sim, self.L0, self.tests, self.n = sim, L0, tests, len(sim.example_ids_)
        self.additive = sim.method == "additive"
        self.A = np.stack([m[0] for m in models])  # (K, n + 1, M)
        self.B = np.stack([m[1] for m in models])
        self.lo = None if lo is None else np.broadcast_to(lo, (len(models), len(lo)))
        self.hi = None if hi is None else np.broadcast_to(hi, (len(models), len(hi)))

    def evaluate(self, cur, grads: bool = True):
        """(trajectory of model 0 (T+1, M), objectives (K,), S (T, n) of model 0, the fold
        models' S (K-1, T, n) or None); ``grads=False``: S and the folds' S are None."""
        n = self.n
        traj, obj, gA, gB = final_loss_adjoint(
            self.A, self.B, cur, self.L0, self.additive, self.lo, self.hi
        )
        if not grads:
            return traj[0], obj, None, None
        S = gA[0] @ self.A[0, :n].T + gB[0] @ self.B[0, :n].T  # (T, n)
        Sf = None
        if len(self.A) > 1:
            At, Bt = self.A[1:, :n].transpose(0, 2, 1), self.B[1:, :n].transpose(0, 2, 1)
            Sf = gA[1:] @ At + gB[1:] @ Bt  # batched matmul (BLAS), not einsum
        self.traj = traj[0]
        return traj[0], obj, S, Sf

    def finals(self, cands, first):
        """(C, M) final losses of model 0 for curricula equal to the last evaluated one
        before step ``first``: rolled from its loss there."""
        return self.sim.simulate(cands[:, first:], self.traj[first], tests=self.tests)[:, -1]


class _OAObjective:
    """Optimizer-aware models: per model (full, then folds) its parameters, AR term, drift,
    step weights and transform; adjoint ``model/adjoint.oa_final_loss_adjoint``; exact checks
    rolled from the state (y, d) at the first changed step."""

    def __init__(self, sim, fold_sims, models, cols_k, cur, L0, lo, hi):
        from simfluence_cli.model.optimizer_aware import step_inputs

        self.n, self.L0, self.lo, self.hi = len(sim.example_ids_), L0, lo, hi
        self.parts = []
        for m, (a, B), cols in zip([sim, *fold_sims], models, cols_k):
            w, drift = step_inputs(m, cols, cur[None])
            self.parts.append((a, B, np.asarray(m.ar_)[cols], drift, w[0], m.config_.transform))

    def evaluate(self, cur, grads: bool = True):
        from simfluence_cli.model.adjoint import oa_final_loss_adjoint

        n, K = self.n, len(self.parts)
        objs = np.empty(K)
        S = np.empty((K, *cur.shape[:1], n)) if grads else None
        for tr in dict.fromkeys(p[5] for p in self.parts):  # models stacked by transform
            ks = [k for k, p in enumerate(self.parts) if p[5] == tr]
            a, B, rho, drift, w = (np.stack([self.parts[k][i] for k in ks]) for i in range(5))
            traj, state, obj, gA, gB = oa_final_loss_adjoint(
                a, B, rho, drift, w, cur, self.L0, tr, self.lo, self.hi, grads=grads
            )
            objs[ks] = obj
            if grads:
                S[ks] = gA @ a[:, :n].transpose(0, 2, 1) + gB @ B[:, :n].transpose(0, 2, 1)
            if ks[0] == 0:
                first = (traj[0], (state[0][0], state[1][0]))
        if not grads:
            return first[0], objs, None, None
        self.traj, self.state = first
        return self.traj, objs, S[0], (S[1:] if K > 1 else None)

    def finals(self, cands, first):
        from simfluence_cli.model.optimizer_aware import rollout

        a, B, rho, drift, w, tr = self.parts[0]
        C, T = cands.shape[0], cands.shape[1] - first
        y, d = (np.broadcast_to(v[first], (C, v.shape[1])) for v in self.state)
        return rollout(
            a,
            B,
            rho,
            drift[first:].T,
            cands[:, first:],
            np.broadcast_to(w[first:], (C, T)),
            np.eye(T),
            self.traj[first],
            tr,
            self.lo,
            self.hi,
            final=True,
            start=(y, d),
        )


def final_loss_floor(runs, tests: Sequence[str] | None = None) -> np.ndarray:
    """Per test (``tests``, default all of ``runs``'): the lowest final loss any fitting run
    reached (NaN where no run logged it): the data floor of ``design``."""
    fin = np.vstack([r.losses[-1] for r in runs.runs])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanmin(fin, axis=0)
    if tests is None:
        return low
    pos = {str(t): j for j, t in enumerate(runs.test_ids)}
    return np.array([low[pos[str(t)]] if str(t) in pos else np.nan for t in tests])


def _data_floor(sim, cols, floor=None) -> np.ndarray:
    """Per test: ``floor`` (e.g. :func:`final_loss_floor`; default the lowest loss the fitting
    runs showed at any step, ``sim.loss_min_``); -inf where unknown. Below it the simulator
    extrapolates."""
    if floor is None:
        floor = np.asarray(getattr(sim, "loss_min_", np.full(len(sim.test_ids_), np.nan)), float)
        floor = floor[cols]
    lo = np.asarray(floor, float)
    return np.where(np.isfinite(lo), lo, -np.inf)


def _adjoint_search(
    objective, cur, start, floor, pool_idx, max_uses, max_changes, cfg, progress, keep=False
):
    """Descent by exactly ranked moves (module docstring, step 3). Returns (cur, traj, history,
    why it stopped: "iters", "no-moves", "no-improving-move" or "data-floor" = improving moves
    existed but each took more tests below their data floor; "interrupted" = Ctrl-C with
    ``keep``: ``cur`` is the last accepted curriculum, ``traj`` may be stale). ``floor`` (per
    test, or None): no accepted curriculum has more tests with a final loss below it than
    ``cur`` has."""
    iters, candidates, consensus = cfg
    n = objective.n
    tol = (
        None
        if floor is None
        else 1e-9 * np.maximum(1.0, np.abs(np.where(np.isfinite(floor), floor, 0)))
    )

    def below(final):  # tests below their data floor after the last step, per curriculum
        if floor is None:
            return np.zeros(len(final), int)
        return np.sum(final < floor - tol, axis=-1)

    traj, obj_k, S, Sf = objective.evaluate(cur)
    multi = Sf is not None
    best = float(obj_k[0])
    history = [best]
    cap = int(below(traj[-1][None])[0]) if floor is not None else None
    stop = "iters"
    try:
        for _it in range(iters):
            eps = 1e-12 * max(1.0, abs(best))
            moves = _adjoint_moves(
                S, Sf, cur, start, pool_idx, max_uses, max_changes, consensus, candidates, 128
            )
            if not moves:
                stop = "no-moves"
                break
            cands = np.stack([_apply(cur, mv) for _, mv in moves])
            first = min(min(_move_steps(mv)) for _, mv in moves)
            F = objective.finals(cands, first)
            fin = F.mean(axis=1)
            improving = bool(fin.min() < best - eps)
            if cap is not None:  # the data floor: these moves leave what the fitting runs support
                fin[below(F) > cap] = np.inf
            order = np.argsort(fin, kind="stable")
            if fin[order[0]] >= best - eps:
                # no improving move, or the best-ranked ones all leave the data: stop
                stop = "data-floor" if improving else "no-improving-move"
                break
            # the best move plus further improving moves on other steps, if jointly better
            chosen = [moves[order[0]][1]]
            steps_used = set(_move_steps(chosen[0]))
            combo = _apply(cur, chosen[0])
            for o in order[1:]:
                if fin[o] >= best:
                    break
                mv = moves[o][1]
                if steps_used & _move_steps(mv):
                    continue
                trial = _apply(combo, mv)
                u = _uses(trial, n)
                if u.max() > max_uses or int((trial != start).sum()) > max_changes:
                    continue
                combo = trial
                chosen.append(mv)
                steps_used |= _move_steps(mv)
            nxt = cands[order[0]]
            if len(chosen) > 1:
                tc, oc, _, _ = objective.evaluate(combo, grads=False)
                if (
                    oc[0] < fin[order[0]]
                    and (not multi or np.mean(oc[1:] < obj_k[1:]) > consensus)
                    and (cap is None or below(tc[-1][None])[0] <= cap)
                ):
                    nxt = combo
            traj, obj_k, S, Sf = objective.evaluate(nxt)
            cur = nxt
            best = float(obj_k[0])
            history.append(best)
            if progress is not None:
                progress(1)
    except KeyboardInterrupt:
        if not keep:
            raise
        stop = "interrupted"  # cur, history: the last accepted curriculum and its objective
    return cur, traj, history, stop


def design_curriculum(
    sim,
    steps: int | None = None,
    *,
    objective: str = "mean-final-loss",
    tests: Sequence[str] | None = None,
    pool: Sequence[str] | None = None,
    batch_size: int | None = None,
    init_loss: np.ndarray | None = None,
    seed: int = 0,
    candidates: int = 64,
    iters: int = 100,
    max_uses: int | None = None,
    n_random: int = 100,
    start: Sequence[Sequence[str]] | None = None,
    trust: float | None = None,
    fold_models: Sequence | None = None,
    consensus: float = 0.5,
    floor_guard: bool = True,
    floor: np.ndarray | None = None,
    progress=None,
    keep_on_interrupt: bool = False,
) -> DesignResult:
    """Start (``start`` curriculum, else greedy) + trust-region descent; see the module doc.

    ``trust``: the fraction of the curriculum's slots that may differ from the start (default
    0.1 with a ``start``, 1 = unlimited for the greedy start). ``fold_models``: models whose
    majority (> ``consensus``) must agree that a move helps (first order). ``floor_guard``: no
    move may bring more tests below their data floor (``floor``, per chosen test: the lowest
    final loss of the fitting runs, :func:`final_loss_floor`; default ``sim.loss_min_``) than
    the start has; see the module doc. ``keep_on_interrupt``: a Ctrl-C during the local search
    stops it and returns the best curriculum so far (``params["stopped"] == "interrupted"``, no
    random comparison) instead of raising KeyboardInterrupt."""
    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}; choose {', '.join(OBJECTIVES)}")
    if start is not None:
        start = [list(map(str, b)) for b in start]
        if steps is None:
            steps = len(start)
        if len(start) != steps:
            raise UsageError(
                f"--steps {steps} differs from the start curriculum's {len(start)} steps; "
                "omit --steps or choose --start greedy"
            )
    if steps is None or steps < 1:
        raise UsageError("--steps must be >= 1")
    if candidates < 1 or iters < 0 or n_random < 0:
        raise UsageError("--candidates must be >= 1, --iters and --random >= 0")
    if not 0.0 <= consensus < 1.0:
        raise UsageError(f"consensus must be in [0, 1), got {consensus:g}")
    trust = (0.1 if start is not None else 1.0) if trust is None else float(trust)
    if not 0.0 <= trust <= 1.0:
        raise UsageError(f"--trust must be a fraction in [0, 1], got {trust:g}")
    b = int(batch_size if batch_size is not None else round(sim.batch_size_))
    if start is not None and batch_size is None:
        b = max(len(x) for x in start)
    if b < 1:
        raise UsageError("--batch-size must be >= 1")
    pool_idx = _pool_indices(sim, pool)
    if len(pool_idx) < b:
        raise SelectionError(
            f"the pool has {len(pool_idx)} example(s), fewer than the batch "
            f"size {b}; batches hold distinct examples"
        )
    auto_uses = max(1, math.ceil(1.5 * steps * b / len(pool_idx)))
    max_uses = auto_uses if max_uses is None else int(max_uses)
    if max_uses * len(pool_idx) < steps * b:
        raise UsageError(
            f"--max-uses {max_uses} x pool {len(pool_idx)} < {steps} steps x batch "
            f"{b}: not enough examples; raise --max-uses or shrink --steps"
        )
    cols = sim._test_columns(tests)
    L0 = np.asarray(sim.init_loss_mean_[cols] if init_loss is None else init_loss, float)
    if L0.shape != (len(cols),):
        raise UsageError(f"init_loss has shape {L0.shape}; expected ({len(cols)},)")
    if floor is not None and np.shape(floor) != (len(cols),):
        raise UsageError(f"floor has shape {np.shape(floor)}; expected ({len(cols)},)")
    lo, hi = sim.bounds_
    if lo is not None:
        lo, hi = lo[cols], hi[cols]
    A, B = sim.A_[:, cols], sim.B_[:, cols]

    if start is not None:
        if any(len(x) > b or len(set(x)) != len(x) for x in start):
            raise UsageError(f"the start curriculum needs batches of at most {b} distinct examples")
        cur = sim.encode([start])[0]
        if cur.shape[1] < b:
            cur = np.hstack([cur, np.full((steps, b - cur.shape[1]), -1, dtype=np.int64)])
        outside = set(cur[cur >= 0].tolist()) - set(pool_idx.tolist())
        if outside:
            raise SelectionError(
                f"the start curriculum uses {len(outside)} example(s) outside the pool"
            )
        u = _uses(cur, len(sim.example_ids_))
        max_uses = max(max_uses, int(u.max()))
    else:
        cur = _greedy(A, B, L0, lo, hi, pool_idx, steps, b, max_uses, sim.method == "additive")
    start_idx = cur.copy()
    max_changes = int(math.floor(trust * int((cur >= 0).sum()) + 1e-9))
    traj = sim.simulate(cur[None], L0, tests=tests)[0]  # (T+1, M)
    start_obj = float(traj[-1].mean())
    ids = list(sim.example_ids_)
    n = len(ids)
    test_names = [str(t) for t in np.asarray(sim.test_ids_)[cols]]
    models = [(np.vstack([A, np.zeros((1, len(cols)))]), np.vstack([B, np.zeros((1, len(cols)))]))]
    fold_cols = [fm._test_columns(test_names) for fm in fold_models or []]
    for fm, fc in zip(fold_models or [], fold_cols):
        models.append(_aligned(fm, ids, fc, n))
    n_folds = len(models) - 1
    if sim.method == OPTIMIZER_AWARE:
        goal = _OAObjective(
            sim, list(fold_models or []), models, [cols, *fold_cols], cur, L0, lo, hi
        )
    else:
        goal = _LinearObjective(sim, models, L0, lo, hi, tests)
    user_floor = floor
    floor = _data_floor(sim, cols, user_floor) if floor_guard else None
    cur, traj, history, stop = _adjoint_search(
        goal,
        cur,
        start_idx,
        floor,
        pool_idx,
        max_uses,
        max_changes,
        (iters, candidates, consensus),
        progress,
        keep=keep_on_interrupt,
    )
    if stop == "interrupted":
        n_random = 0  # the user is waiting: no comparison with random curricula
    traj = sim.simulate(cur[None], L0, tests=tests)[0]
    best = float(traj[-1].mean())
    at_floor = 0 if lo is None else int(np.sum(traj[-1] <= lo + 1e-12))
    lows = _data_floor(sim, cols, user_floor)
    below_data = int(np.sum(traj[-1] < lows - 1e-12))
    rnd = np.empty(0)
    if n_random:
        ridx = random_curricula(pool_idx, steps, b, n_random, np.random.default_rng(seed + 1))
        rnd = _finals(sim, ridx, L0, tests).mean(axis=1)
    ex = sim.example_ids_
    batches = [[str(ex[i]) for i in row if i >= 0] for row in cur]
    params = {
        "objective": objective,
        "start": "curriculum" if start is not None else "greedy",
        "start_objective": start_obj,
        "steps": steps,
        "batch_size": b,
        "pool": int(len(pool_idx)),
        "tests": int(len(cols)),
        "max_uses": max_uses,
        "trust": trust,
        "max_changes": max_changes,
        "changed_slots": int(np.sum(cur != start_idx)),
        "fold_models": n_folds,
        "candidates": candidates,
        "iters": iters,
        "moves_accepted": len(history) - 1,
        "seed": seed,
        "distinct_examples": int(len(np.unique(cur[cur >= 0]))),
        "tests_at_clip_floor": at_floor,
        "tests_below_data_floor": below_data,
        "floor_guard": bool(floor_guard),
        "stopped": stop,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return DesignResult(batches, best, start_obj, rnd, history, params)


def curriculum_text(
    batches: Sequence[Sequence[str]], header: dict, title: str = "simfluence design"
) -> str:
    """The curriculum file format with a ``#`` comment header (key: value lines)."""
    import json

    lines = [f"# {title}"] + [
        f"# {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in header.items()
    ]
    lines += [" ".join(b) for b in batches]
    return "\n".join(lines) + "\n"

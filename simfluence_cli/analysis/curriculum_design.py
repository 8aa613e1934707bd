"""``design``: search for a curriculum that minimises a simulated objective.

Objective ``mean-final-loss``: the mean over the chosen test examples of the simulated loss
after the last step, rolled out from ``init_loss`` (default: the model's mean observed L_0).

The search space: ``steps`` batches of ``batch_size`` distinct examples from the pool, each
pool example used at most ``max_uses`` times (default ``ceil(1.5 * steps * batch_size /
|pool|)``: 1.5 times the uniform coverage of a random curriculum, so the design may favour
helpful examples and leave out harmful ones without training on a handful of examples over
and over, far outside what the fitting runs showed the simulator; on the sample runs a looser
cap (2x) gave a better simulated but a worse real final loss, see bench/RESULTS.md).

1. **Greedy construction**: step by step, pick the ``batch_size`` available examples with the
   smallest one-step contribution ``mean_z(A_i(z) L_{t-1}(z) + B_i(z))`` to the next loss
   (exact one-step optimum of the Simfluence recurrence, myopic over steps).
2. **Local search** (``iters`` rounds): each round makes ``candidates`` variants of the current
   curriculum, each with 1-3 random moves: *swap* two examples between two different steps
   (order / batch composition) or *replace* one example by a pool example with uses left (data
   selection). All variants are simulated in one vectorised call, restarting from the earliest
   changed step; the best variant replaces the current curriculum if it lowers the objective.
3. **Reference**: ``n_random`` random curricula from the same pool (the pool's examples in
   fresh random orders, cut into batches, as the fitting runs of the samples were made) are
   simulated too; the report gives their mean, std and best objective next to the design's.

Deterministic given ``seed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simfluence_cli.errors import ModelError, SelectionError, UsageError

__all__ = ["OBJECTIVES", "DesignResult", "design_curriculum", "random_curricula", "curriculum_text"]

from simfluence_cli.analysis.choices import OBJECTIVES

_SIM_BYTES = 256 * 2**20


@dataclass
class DesignResult:
    batches: list[list[str]]
    objective: float
    greedy_objective: float
    random_objectives: np.ndarray
    history: list[float] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def report(self) -> dict:
        r = self.random_objectives
        out = {
            "objective": self.params.get("objective"),
            "design": self.objective,
            "greedy": self.greedy_objective,
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


def _propose(
    cur: np.ndarray, uses: dict, pool_idx: np.ndarray, max_uses: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """A variant of ``cur`` with 1-3 random swap/replace moves and its first changed step."""
    cand = cur.copy()
    T, b = cand.shape
    first = T
    counts = dict(uses)
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(10):
            if rng.random() < 0.5 and T > 1:  # swap between two steps
                t1, t2 = rng.choice(T, 2, replace=False)
                k1, k2 = rng.integers(b), rng.integers(b)
                x1, x2 = cand[t1, k1], cand[t2, k2]
                if x1 == x2 or x1 in cand[t2] or x2 in cand[t1]:
                    continue
                cand[t1, k1], cand[t2, k2] = x2, x1
                first = min(first, t1, t2)
                break
            t, k = rng.integers(T), rng.integers(b)
            e = pool_idx[rng.integers(len(pool_idx))]
            if counts.get(e, 0) >= max_uses or e in cand[t]:
                continue
            old = cand[t, k]
            counts[old] -= 1
            counts[e] = counts.get(e, 0) + 1
            cand[t, k] = e
            first = min(first, t)
            break
    return cand, first


def design_curriculum(
    sim,
    steps: int,
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
    progress=None,
) -> DesignResult:
    """Greedy construction + vectorised local search; see the module docstring."""
    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}; choose {', '.join(OBJECTIVES)}")
    if steps < 1:
        raise UsageError("--steps must be >= 1")
    if candidates < 1 or iters < 0 or n_random < 0:
        raise UsageError("--candidates must be >= 1, --iters and --random >= 0")
    b = int(batch_size if batch_size is not None else round(sim.batch_size_))
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
    lo, hi = sim.bounds_
    if lo is not None:
        lo, hi = lo[cols], hi[cols]
    A, B = sim.A_[:, cols], sim.B_[:, cols]
    rng = np.random.default_rng(seed)

    cur = _greedy(A, B, L0, lo, hi, pool_idx, steps, b, max_uses, sim.method == "additive")
    traj = sim.simulate(cur[None], L0, tests=tests)[0]  # (T+1, M)
    best = float(traj[-1].mean())
    greedy_obj = best
    history = [best]
    uses: dict = {}
    for e in cur.reshape(-1):
        uses[e] = uses.get(e, 0) + 1
    for _it in range(iters):
        props = [_propose(cur, uses, pool_idx, max_uses, rng) for _ in range(candidates)]
        firsts = np.asarray([f for _, f in props])
        keep = firsts < steps
        if keep.any():
            cand = np.stack([c for (c, _), k in zip(props, keep) if k])
            # models with optimizer state (AR memory, step-indexed lr and drift) restart at 0
            start = 0 if getattr(sim, "stateful", False) else int(firsts[keep].min())
            sub = sim.simulate(cand[:, start:], traj[start], tests=tests)  # (K, T-start+1, M)
            obj = sub[:, -1].mean(axis=1)
            k = int(np.argmin(obj))
            if obj[k] < best - 1e-12 * max(1.0, abs(best)):
                best = float(obj[k])
                cur = cand[k]
                traj = np.concatenate([traj[:start], sub[k]], axis=0)
                uses = {}
                for e in cur.reshape(-1):
                    uses[e] = uses.get(e, 0) + 1
        history.append(best)
        if progress is not None:
            progress(1)
    at_floor = 0 if lo is None else int(np.sum(traj[-1] <= lo + 1e-12))
    rnd = np.empty(0)
    if n_random:
        ridx = random_curricula(pool_idx, steps, b, n_random, np.random.default_rng(seed + 1))
        rnd = _finals(sim, ridx, L0, tests).mean(axis=1)
    ex = sim.example_ids_
    batches = [[str(ex[i]) for i in row] for row in cur]
    params = {
        "objective": objective,
        "steps": steps,
        "batch_size": b,
        "pool": int(len(pool_idx)),
        "tests": int(len(cols)),
        "max_uses": max_uses,
        "candidates": candidates,
        "iters": iters,
        "seed": seed,
        "distinct_examples": int(len(np.unique(cur))),
        "tests_at_clip_floor": at_floor,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return DesignResult(batches, best, greedy_obj, rnd, history, params)


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

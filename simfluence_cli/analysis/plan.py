"""Plan fitting runs: a seeded mix of curricula that makes a simulator identifiable.

Plain reshuffles (every example once per epoch, at a random position) cannot tell how long an
example's effect lasts, nor how strongly it acts when used more or less often: every example
has the same count and, on average, the same position. A planned set varies both:

``shuffle``
    every epoch a fresh random order of the pool (the usual training order).
``subset``
    a random subset of 40-80% of the pool (fraction drawn per curriculum), shuffled every
    epoch: examples are missing for the whole run (leave-out counterfactuals).
``repeat``
    a random 10-20% of the pool appears 2 or 3 times per epoch (shuffled): examples used more
    often than the rest (up-weighting counterfactuals).
``blocked``
    the pool is split into blocks (the classes given by ``labels``, else 10 random blocks),
    put in a random order fixed for the curriculum; every epoch walks the blocks in that order,
    examples shuffled within each block: an example's effect is followed by many steps
    without it (persistence, forgetting; class-ordered curricula).

Every curriculum has exactly ``steps`` batches of ``batch_size`` distinct examples (a batch
straddling an epoch boundary swaps a repeated example with the next different one, as the
sample runs do). Curriculum k uses ``numpy.random.default_rng([seed, k])``; the assignment of
kinds to k uses ``default_rng([seed, 2**31])``: the same arguments give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from simfluence_cli._repr import summary_repr
from simfluence_cli.errors import UsageError

__all__ = ["KINDS", "DEFAULT_MIX", "PlannedCurriculum", "plan_curricula", "parse_mix"]

KINDS = ("shuffle", "subset", "repeat", "blocked")
DEFAULT_MIX = {"shuffle": 0.25, "subset": 0.25, "repeat": 0.25, "blocked": 0.25}
N_RANDOM_BLOCKS = 10


@dataclass
class PlannedCurriculum:
    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays
    name: str
    kind: str
    batches: list[list[str]]
    detail: str
    seed: int | None = None  # the plan's --seed (recorded in the file's header line)

    def text(self) -> str:
        head = f"# {self.name}: {self.kind} ({self.detail}); {len(self.batches)} steps"
        if self.seed is not None:
            head += f"; seed {self.seed}"
        return head + "\n" + "\n".join(" ".join(b) for b in self.batches) + "\n"


def parse_mix(spec: str | None) -> dict[str, float]:
    """``shuffle=0.25,subset=0.25,...`` (weights, normalised) -> dict; None = the default."""
    if not spec:
        return dict(DEFAULT_MIX)
    out: dict[str, float] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise UsageError(f"--mix: expected KIND=WEIGHT, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in KINDS:
            raise UsageError(f"--mix: unknown kind {k!r}; choose from {', '.join(KINDS)}")
        try:
            w = float(v)
        except ValueError:
            raise UsageError(f"--mix: weight of {k!r} is not a number: {v!r}") from None
        if not (np.isfinite(w) and w >= 0):
            raise UsageError(f"--mix: weight of {k!r} must be >= 0")
        out[k] = w
    if sum(out.values()) <= 0:
        raise UsageError("--mix: the weights sum to 0")
    return out


def _counts(n: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder split of n curricula over the kinds (in KINDS order)."""
    kinds = [k for k in KINDS if mix.get(k, 0) > 0]
    w = np.asarray([mix[k] for k in kinds], float)
    exact = n * w / w.sum()
    base = np.floor(exact).astype(int)
    rest = n - base.sum()
    for i in np.argsort(-(exact - base), kind="stable")[:rest]:
        base[i] += 1
    return dict(zip(kinds, base.tolist()))


def _chunk(stream: list[int], b: int, steps: int) -> list[list[int]]:
    stream = list(stream)
    out = []
    for t in range(steps):
        lo = t * b
        for k in range(lo, lo + b):
            if stream[k] in stream[lo:k]:
                j = lo + b
                while j < len(stream) and stream[j] in stream[lo : lo + b]:
                    j += 1
                if j < len(stream):
                    stream[k], stream[j] = stream[j], stream[k]
        out.append(stream[lo : lo + b])
    return out


def _epochs(rng, make_epoch, need: int) -> list[int]:
    stream: list[int] = []
    while len(stream) < need:
        stream.extend(make_epoch())
    return stream


def plan_curricula(
    pool: Sequence[str],
    n: int,
    steps: int,
    batch_size: int,
    *,
    seed: int = 0,
    mix: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
    prefix: str = "plan",
) -> list[PlannedCurriculum]:
    """``n`` curricula over ``pool`` (see the module docstring)."""
    pool = list(dict.fromkeys(str(e) for e in pool))
    if n < 1:
        raise UsageError("--n must be at least 1")
    if steps < 1 or batch_size < 1:
        raise UsageError("--steps and --batch-size must be at least 1")
    if len(pool) < 2 * batch_size:
        raise UsageError(
            f"the pool has {len(pool)} example(s); planning needs at least 2 x --batch-size"
        )
    mix = dict(DEFAULT_MIX if mix is None else mix)
    counts = _counts(n, mix)
    kinds = [k for k in counts for _ in range(counts[k])]
    kinds = [kinds[i] for i in np.random.default_rng([seed, 2**31]).permutation(n)]
    P = len(pool)
    need = steps * batch_size + 4 * batch_size  # spare examples for the in-batch swap
    if labels:
        lab = np.asarray([str(labels.get(e, "")) for e in pool], dtype=object)
    else:
        lab = None
    out = []
    for k, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, k])
        members = np.arange(P)
        if kind == "shuffle":
            detail = f"all {P} examples"

            def epoch(members=members, rng=rng):
                return rng.permutation(members).tolist()
        elif kind == "subset":
            frac = float(rng.uniform(0.4, 0.8))
            keep = max(2 * batch_size, int(round(frac * P)))
            members = np.sort(rng.choice(P, size=min(keep, P), replace=False))
            detail = f"{len(members)} of {P} examples"

            def epoch(members=members, rng=rng):
                return rng.permutation(members).tolist()
        elif kind == "repeat":
            frac = float(rng.uniform(0.1, 0.2))
            times = int(rng.integers(2, 4))
            rep = rng.choice(P, size=max(1, int(round(frac * P))), replace=False)
            base = np.concatenate([members] + [rep] * (times - 1))
            detail = f"{len(rep)} examples x{times} per epoch"

            def epoch(base=base, rng=rng):
                return rng.permutation(base).tolist()
        else:  # blocked
            if lab is not None:
                keys = sorted(set(lab.tolist()))
                groups = [np.flatnonzero(lab == g) for g in keys]
                detail = f"{len(groups)} label blocks"
            else:
                perm = rng.permutation(P)
                groups = [np.sort(g) for g in np.array_split(perm, min(N_RANDOM_BLOCKS, P))]
                detail = f"{len(groups)} random blocks"
            order = rng.permutation(len(groups))
            if lab is not None:
                detail += " in order " + " ".join(keys[i] for i in order)

            def epoch(groups=groups, order=order, rng=rng):
                return np.concatenate([rng.permutation(groups[i]) for i in order]).tolist()

        stream = _epochs(rng, epoch, need)
        batches = _chunk(stream, batch_size, steps)
        out.append(
            PlannedCurriculum(
                f"{prefix}-{k:03d}", kind, [[pool[i] for i in b] for b in batches], detail, seed
            )
        )
    return out

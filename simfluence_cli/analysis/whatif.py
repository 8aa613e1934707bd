"""Counterfactual questions: edit a curriculum, simulate base and edit side by side, group effects.

A curriculum is a list of batches (lists of example IDs), one per training step. The edits
(:class:`Edits`) are applied in a fixed order: ``only``, ``drop``, ``repeat``, ``order``.
Everything except ``--order shuffle-steps|reverse`` works on the *example stream*: the base's
batches concatenated in step order. How an edited stream becomes batches again is the mode:

``keep-steps`` (default)
    the edited stream is cycled (or truncated) to the base's T steps of ``b`` examples (``b`` =
    the base's most common batch size): the same compute budget and schedule of full batches,
    with the dropped examples' slots taken by the remaining ones. This is how runs that train
    for a fixed number of steps see a smaller data set (the sample runs' leave-30%-out family,
    the leave-out setting of the Simfluence paper), and what ``bench/bench_counterfactual.py``
    validates against real retraining.
``repack``
    the remaining stream, in its original order, is cut into batches of ``b``; an incomplete
    last batch is not trained on (a data loader's ``drop_last``: a Linear model reads a small
    batch as a weak update, see ``shrink``). Dropping k example occurrences removes about k/b
    steps: "one pass over the same data order, without these examples".
``shrink``
    each example is removed from (or repeated inside) its own batch; steps that become empty
    are removed, no example changes step. Batches get smaller, which a Linear model (alpha is
    a *sum* over the batch) reads as a weaker update, not only as "without these examples".
``neutral``
    each removed occurrence is replaced in place by a *neutral* placeholder with the "no
    change" parameters (A = 1/b, B = 0; alpha is unchanged in expectation, beta gets nothing):
    no batch shrinks, nothing moves. This isolates the simulator's own effect of the examples
    (the measure ``simfluence top`` uses) from the re-batching noise of ``keep-steps`` and the
    batch-size artefact of ``shrink``. Repeats are added inside the batch as in ``shrink``.
    The placeholder is not a real example, so such a curriculum cannot be retrained on.

Edits: ``only IDS`` keeps only occurrences of IDS; ``drop IDS`` removes every occurrence;
``repeat IDS`` follows every occurrence by a second copy (in the stream, so in repack mode
the copy usually lands in the same batch = double weight in that step); ``order`` is
``shuffle`` (permute the stream with ``seed``, then batch: a random-order curriculum with the
same examples), ``shuffle-steps`` (permute whole steps, batches intact), ``reverse`` (steps in
reverse order, batches intact) or a list of example IDs: each *epoch* of the stream (its
consecutive segments as long as the number of distinct examples in it: one pass over the data
for a curriculum made of epochs) is stably sorted by rank in the list (unlisted examples last,
in their original order), then batched; ``order_scope="run"`` sorts the whole stream at once.
So a class-ordered ID list turns a random curriculum into a per-epoch class-ordered one.

Additivity: in ``shrink`` and ``neutral`` modes an edit removes occurrences and moves nothing
else, so for an additive model a group's removal effect is exactly the sum of its members'
(tested with hypothesis); ``keep-steps`` and ``repack`` refill the freed slots with other examples, so
even an additive model shows some interaction there. In ``keep-steps`` mode the cycled stream
may, rarely, put an example twice into the batch where it wraps around.

Effects are ``edited - base`` simulated final losses: negative = the edit lowers the test loss
(helps), positive = it hurts.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simfluence_cli._repr import summary_repr
from simfluence_cli.analysis.choices import MODES, NEUTRAL, ORDERS
from simfluence_cli.errors import SelectionError, SimfluenceWarning, UsageError

_SIM_BYTES = 256 * 2**20  # memory for one chunk of simulated trajectories

Batches = list[list[str]]


@dataclass
class Edits:
    """Curriculum edits; see the module docstring for their exact meaning."""

    drop: Sequence[str] | None = None
    only: Sequence[str] | None = None
    repeat: Sequence[str] | None = None
    order: str | Sequence[str] | None = None  # 'shuffle' | 'shuffle-steps' | 'reverse' | ids
    mode: str = "keep-steps"
    seed: int = 0
    order_scope: str = "epoch"  # for an ID-list order: sort each epoch ('epoch') or the whole run

    def __post_init__(self):
        for name in ("drop", "only", "repeat"):
            ids = getattr(self, name)
            if isinstance(ids, str):  # its characters would be read as IDs: a silent no-op
                raise UsageError(
                    f"Edits({name}=...) takes a list of example IDs, got the string {ids!r}; "
                    f"pass {name}=[{ids!r}]"
                )
        if self.mode not in MODES:
            raise UsageError(f"unknown edit mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.order_scope not in ("epoch", "run"):
            raise UsageError(f"unknown order scope {self.order_scope!r}; choose 'epoch' or 'run'")
        if isinstance(self.order, str) and self.order not in ORDERS:
            raise UsageError(f"unknown --order {self.order!r}; choose {', '.join(ORDERS)} or @FILE")

    def is_empty(self) -> bool:
        return not (self.drop or self.only or self.repeat or self.order)

    def describe(self) -> dict:
        order = (
            self.order
            if isinstance(self.order, str) or self.order is None
            else f"ids[{len(self.order)}]"
        )
        return {
            "drop": len(self.drop) if self.drop else 0,
            "only": len(self.only) if self.only else 0,
            "repeat": len(self.repeat) if self.repeat else 0,
            "order": order,
            "order_scope": self.order_scope,
            "mode": self.mode,
            "seed": self.seed,
        }


def batch_size_of(batches: Sequence[Sequence[str]]) -> int:
    """The base's batch size: the most common batch size (ties: the larger)."""
    sizes = Counter(map(len, batches))
    sizes.pop(0, None)
    if not sizes:
        return 1
    return max(sizes.items(), key=lambda kv: (kv[1], kv[0]))[0]


def _chunk(stream: Sequence[str], b: int, drop_last: bool = False) -> Batches:
    out = [list(stream[i : i + b]) for i in range(0, len(stream), b)]
    if drop_last and len(out) > 1 and len(out[-1]) < b:
        out.pop()
    return out


def _cycle(stream: list[str], n: int) -> list[str]:
    if not stream:
        return []
    reps = -(-n // len(stream))
    return (stream * reps)[:n]


def apply_edits(batches: Sequence[Sequence[str]], edits: Edits) -> Batches:
    """The edited curriculum (a new list of batches; ``batches`` is not modified)."""
    base = [list(map(str, b)) for b in batches]
    b = batch_size_of(base)
    T = len(base)
    rng = np.random.default_rng(edits.seed)
    only = set(map(str, edits.only)) if edits.only else None
    drop = set(map(str, edits.drop)) if edits.drop else set()
    rep = set(map(str, edits.repeat)) if edits.repeat else set()

    def keep(e: str) -> bool:
        return (only is None or e in only) and e not in drop

    def expand(seq, filler=None):
        if filler is None and not rep:  # the common case (drop / only), one comprehension
            if only is None:
                return [e for e in seq if e not in drop]
            return [e for e in seq if e in only and e not in drop]
        out = []
        for e in seq:
            if keep(e):
                out.append(e)
                if e in rep:
                    out.append(e)
            elif filler is not None:
                out.append(filler)
        return out

    if edits.mode == "shrink":
        cur = [nb for nb in (expand(batch) for batch in base) if nb]
    elif edits.mode == "neutral":
        cur = [expand(batch, NEUTRAL) for batch in base]
        if all(e == NEUTRAL for batch in cur for e in batch):
            cur = []
    else:
        stream = expand(e for batch in base for e in batch)
        changed = bool(only is not None or drop or rep)
        if not changed:
            cur = base  # order-only edit: the base's batches
        elif edits.mode == "keep-steps":
            cur = _chunk(_cycle(stream, T * b), b)
        else:
            cur = _chunk(stream, b, drop_last=True)
    order = edits.order
    if order is None:
        pass
    elif isinstance(order, str) and order == "reverse":
        cur = cur[::-1]
    elif isinstance(order, str) and order == "shuffle-steps":
        cur = [cur[i] for i in rng.permutation(len(cur))]
    elif isinstance(order, str) and order == "shuffle":
        stream = [e for batch in cur for e in batch]
        cur = _chunk([stream[i] for i in rng.permutation(len(stream))], b)
    else:
        rank = {}
        for i, e in enumerate(map(str, order)):
            rank.setdefault(e, i)
        stream = [e for batch in cur for e in batch]
        big = len(rank)
        span = len(set(stream)) if edits.order_scope == "epoch" else len(stream)
        stream = [
            e
            for s in range(0, len(stream), span)  # stable sort of each epoch
            for e in sorted(stream[s : s + span], key=lambda e: rank.get(e, big))
        ]
        cur = _chunk(stream, b)
    if not cur:
        raise SelectionError(
            "the edited curriculum is empty: the edits removed every example "
            "of the base; check --drop/--only"
        )
    return cur


def drop_examples(
    batches: Sequence[Sequence[str]], ids: Sequence[str], mode: str = "keep-steps"
) -> Batches:
    """Shorthand: ``apply_edits(batches, Edits(drop=ids, mode=mode))`` (may be empty)."""
    try:
        return apply_edits(batches, Edits(drop=ids, mode=mode))
    except SelectionError:
        return []


# -- simulation helpers -----------------------------------------------------------------------


def with_neutral(sim, curricula) -> object:
    """``sim``, or a shallow copy with the neutral placeholder as an extra example
    (A = 1/b for models that fit A, B = 0) when some curriculum uses it."""
    if not any(e == NEUTRAL for c in curricula for batch in c for e in batch):
        return sim
    return sim.with_no_change_example(NEUTRAL)


def _chunk_size(T: int, M: int) -> int:
    return max(1, int(_SIM_BYTES // max(1, (T + 1) * M * 8 * 3)))


def final_losses(
    sim,
    curricula: Sequence[Sequence[Sequence[str]]],
    init_loss: np.ndarray,
    tests: Sequence[str] | None = None,
    unseen: str = "error",
    chunk: int | None = None,
) -> np.ndarray:
    """Simulated final loss (C, M) of many curricula, in memory-bounded vectorised chunks.

    An empty curriculum's final loss is its initial loss.
    """
    M = len(tests) if tests is not None else len(sim.test_ids_)
    L0 = np.asarray(init_loss, dtype=np.float64)
    out = np.empty((len(curricula), M))
    sim = with_neutral(sim, curricula)
    T = max((len(c) for c in curricula), default=0)
    step = chunk or _chunk_size(T, M)
    for s in range(0, len(curricula), step):
        part = list(curricula[s : s + step])
        nonempty = [i for i, c in enumerate(part) if len(c)]
        out[s : s + len(part)] = L0 if L0.ndim == 1 else L0[s : s + len(part)]
        if not nonempty:
            continue
        sub = [part[i] for i in nonempty]
        init = L0 if L0.ndim == 1 else L0[s : s + len(part)][nonempty]
        traj = sim.simulate(sub, init, tests=tests, unseen=unseen)
        lens = np.asarray([len(c) for c in sub])
        out[s + np.asarray(nonempty)] = traj[np.arange(len(sub)), lens]
    return out


#: memory for one chunk of removal curricula as index arrays (``removal_finals``)
_INDEX_BYTES = 64 * 2**20


def removal_finals(
    sim,
    base: Sequence[Sequence[str]],
    examples: Sequence[str],
    init_loss: np.ndarray,
    tests: Sequence[str] | None = None,
    unseen: str = "error",
    progress=None,
) -> np.ndarray | None:
    """Final losses (len(examples), M) of ``base`` with each example dropped (keep-steps mode):
    ``final_losses(sim, [drop_examples(base, [e]) for e in examples], ...)``, built as index
    arrays from the base's (no ID lists per curriculum, no re-encoding) and rolled to the final
    step only, in chunks of ``_INDEX_BYTES``. ``progress(x)`` gets the fraction of examples
    done. None when this does not apply (batches of unequal size, an example absent from the
    base, IDs encoded to a shared or skipped row): use ``final_losses`` then."""
    T = len(base)
    if T == 0 or not len(examples):
        return None
    b = batch_size_of(base)
    if any(len(batch) != b for batch in base) or NEUTRAL in {e for batch in base for e in batch}:
        return None
    idx = sim.encode([base], unseen=unseen)[0]
    if idx.shape != (T, b) or np.any(idx < 0) or np.any(idx >= len(sim.example_ids_)):
        return None  # skipped IDs repacked, or unseen IDs sharing the prior row
    flat = idx.reshape(-1)
    code = dict(zip((str(e) for batch in base for e in batch), flat.tolist()))
    if any(str(e) not in code for e in examples):
        return None
    M = len(tests) if tests is not None else len(sim.test_ids_)
    L0 = np.asarray(init_loss, dtype=np.float64)
    if L0.ndim != 1:
        return None
    out = np.empty((len(examples), M))
    from simfluence_cli.model.rollout import NUMBA_MIN_WORK

    # chunks big enough for the compiled rollout (when installed), small enough for the memory
    # budget and for a progress bar that moves
    step = max(1, min(_INDEX_BYTES // (T * b * 8), -(-2 * NUMBA_MIN_WORK // (T * b * M))))
    for s in range(0, len(examples), step):
        part = examples[s : s + step]
        arr = np.empty((len(part), T, b), dtype=np.int64)
        empty = []
        for i, e in enumerate(part):
            stream = flat[flat != code[str(e)]]
            if len(stream) == 0:  # the base held only this example: the empty curriculum
                empty.append(i)
                arr[i] = flat.reshape(T, b)  # placeholder, overwritten below
                continue
            arr[i] = np.resize(stream, T * b).reshape(T, b)  # the cycled stream, as _cycle
        out[s : s + len(part)] = sim.simulate(arr, L0, tests=tests, return_="final")
        for i in empty:
            out[s + i] = L0
        if progress is not None:
            progress(len(part) / len(examples))
    return out


@dataclass
class WhatIf:
    """Base and edited curricula simulated together; ``change = edited - base`` final loss."""

    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays

    test_ids: np.ndarray
    base: Batches
    edited: Batches
    trajectories: np.ndarray  # (2, T+1, M): [0] base, [1] edited; NaN past a curriculum's end
    base_final: np.ndarray
    edited_final: np.ndarray
    edits: dict = field(default_factory=dict)

    @property
    def change(self) -> np.ndarray:
        return self.edited_final - self.base_final

    def summary(self) -> dict:
        ch = self.change
        return {
            "tests": int(len(self.test_ids)),
            "base_steps": len(self.base),
            "edited_steps": len(self.edited),
            "base_examples": int(sum(len(b) for b in self.base)),
            "edited_examples": int(sum(len(b) for b in self.edited)),
            "mean_base_final": float(np.mean(self.base_final)),
            "mean_edited_final": float(np.mean(self.edited_final)),
            "mean_change": float(np.mean(ch)),
            "tests_helped": int(np.sum(ch < 0)),
            "tests_hurt": int(np.sum(ch > 0)),
            "edits": self.edits,
        }

    def rows(self) -> list[dict]:
        return [
            {"test_id": t, "base_final": float(a), "edited_final": float(b), "change": float(b - a)}
            for t, a, b in zip(self.test_ids, self.base_final, self.edited_final)
        ]

    def trajectory_rows(self) -> list[dict]:
        """Long form: step, test_id, base, edited (NaN/empty once a curriculum has ended)."""
        T1, M = self.trajectories.shape[1:]
        steps = np.repeat(np.arange(T1), M)
        tests = np.tile(self.test_ids, T1)
        base = self.trajectories[0].reshape(-1)
        ed = self.trajectories[1].reshape(-1)
        return [
            {"step": int(s), "test_id": t, "base": float(a), "edited": float(b)}
            for s, t, a, b in zip(steps, tests, base, ed)
        ]


def whatif(
    sim,
    base: Sequence[Sequence[str]],
    edited: Sequence[Sequence[str]] | Edits,
    init_loss: np.ndarray,
    tests: Sequence[str] | None = None,
    unseen: str = "error",
) -> WhatIf:
    """Simulate the base and the edited curriculum in one vectorised call."""
    base = [list(map(str, b)) for b in base]
    edits = {}
    if isinstance(edited, Edits):
        _warn_unknown_ids(sim, base, edited)
        edits = edited.describe()
        edited = apply_edits(base, edited)
    edited = [list(map(str, b)) for b in edited]
    if not base:
        raise SelectionError("the base curriculum is empty")
    traj = with_neutral(sim, [edited]).simulate(
        [base, edited], init_loss, tests=tests, unseen=unseen
    )
    test_ids = np.asarray(list(tests) if tests is not None else sim.test_ids_, dtype=object)
    return WhatIf(
        test_ids, base, edited, traj, traj[0, len(base)].copy(), traj[1, len(edited)].copy(), edits
    )


def _warn_unknown_ids(sim, base: Batches, edits: Edits) -> None:
    """A SimfluenceWarning for IDs in ``edits`` that neither ``base`` nor the model knows: they
    change nothing, which is rarely what was meant (a typo)."""
    named = [*(edits.drop or ()), *(edits.only or ()), *(edits.repeat or ())]
    if edits.order is not None and not isinstance(edits.order, str):
        named += list(edits.order)
    if not named:
        return
    known = {e for b in base for e in b} | {str(e) for e in getattr(sim, "example_ids_", ())}
    unknown = sorted({str(e) for e in named} - known)
    if unknown:
        warnings.warn(
            f"the edits name {len(unknown)} example ID(s) that neither the base curriculum nor "
            f"the model knows: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}; "
            "they change nothing (a typo?)",
            SimfluenceWarning,
            stacklevel=3,
        )


def batch_size_note(method: str, base: Batches, edited: Batches) -> str | None:
    """A warning when a batch-sum model (``linear``, ``additive``, ``multiplicative``: alpha and
    beta are *sums* over the batch) compares curricula whose step-by-step batch sizes differ,
    else None. Such a model reads a larger batch as a stronger update, so part of its predicted
    change is that artefact, not the examples' effect: e.g. ``keep-steps`` filling a base's short
    last batches of every epoch, ``shrink``, ``repack``. The optimizer-aware model (batch *mean*)
    and ``--mode neutral`` (no batch changes size) are free of it."""
    from simfluence_cli.model.config import LINEAR_METHODS

    if method not in LINEAR_METHODS:
        return None
    sb = np.fromiter((len(b) for b in base), dtype=np.int64, count=len(base))
    se = np.fromiter((len(b) for b in edited), dtype=np.int64, count=len(edited))
    if len(sb) == len(se) and np.array_equal(sb, se):
        return None
    n = len(sb) if len(sb) != len(se) else int(np.sum(sb != se))
    what = (
        f"{len(sb)} -> {len(se)} steps"
        if len(sb) != len(se)
        else f"{n} of {len(sb)} steps change batch size"
    )
    return (
        f"the edited curriculum's batch sizes differ from the base's ({what}); a {method} model "
        "sums its parameters over a batch and reads a bigger batch as a stronger update, so part "
        "of the predicted change is that artefact (on the AdamW sample runs, whose epochs end in "
        "a short batch, Linear predicted mean changes of ~0.21 where real retraining gave "
        "0.004-0.018: bench/RESULTS-calibration.md); compare with --mode neutral, or fit the optimizer-aware "
        "model (batch means)"
    )


# -- inputs shared by the commands ------------------------------------------------------------


def run_batches(runset, run_id: str) -> Batches:
    """A stored run's curriculum as batches of example IDs."""
    run = runset[run_id]
    ex = runset.example_ids
    return [[str(ex[i]) for i in run.batch(t)] for t in range(1, run.n_steps + 1)]

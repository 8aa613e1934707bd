"""In-memory training runs: curricula and logged test losses in integer index space.

A :class:`RunSet` is what the store hands to the simulator and metrics. IDs are strings
(``example_ids`` for training examples, ``test_ids`` for test examples); each :class:`Run`
refers to them by position, so all runs of a set share one index space.

Conventions (the same as the store's):
- steps are numbered 1..T; step t trains on ``run.batch(t)``; step 0 is the shared
  starting checkpoint and has no batch;
- ``losses[k, j]`` is the loss of test ``j`` measured after step ``loss_steps[k]``;
  ``loss_steps[0] == 0``; NaN means "not evaluated at that step".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from simfluence_cli._repr import summary_repr
from simfluence_cli.errors import RunNotFoundError, SelectionError, UsageError

__all__ = ["Run", "RunSet"]


@dataclass(eq=False)
class Run:
    """One run: a CSR-encoded curriculum and a (logged steps x tests) loss matrix."""

    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays

    run_id: str
    batch_ptr: np.ndarray  # int64 (T+1,): step t's batch is batch_idx[batch_ptr[t-1]:batch_ptr[t]]
    batch_idx: np.ndarray  # int64 (total batch entries,): indices into RunSet.example_ids
    loss_steps: np.ndarray  # int64 (K,), strictly increasing, starts at 0
    losses: np.ndarray  # float64 (K, M); NaN = not logged
    tags: tuple[str, ...] = ()
    # learning rate logged for each step 1..T (float64 (T,), lr[t-1] = step t's), None = not logged
    lr: np.ndarray | None = None
    optimizer: str | None = None  # free-form optimizer description logged at step 0, or None

    @property
    def n_steps(self) -> int:
        """Number of training steps T."""
        return len(self.batch_ptr) - 1

    def batch(self, t: int) -> np.ndarray:
        """Example indices trained on at step ``t`` (1-based)."""
        return self.batch_idx[self.batch_ptr[t - 1] : self.batch_ptr[t]]

    @property
    def batch_sizes(self) -> np.ndarray:
        """(T,) the size of each step's batch."""
        return np.diff(self.batch_ptr)

    def initial_loss(self) -> np.ndarray:
        """Losses at step 0 (M,)."""
        return self.losses[0]

    def index_matrix(self) -> np.ndarray:
        """The curriculum as a (T, b) array of example indices, b = largest batch, -1 = padding."""
        sizes = self.batch_sizes
        b = int(sizes.max()) if len(sizes) else 1
        idx = np.full((self.n_steps, b), -1, dtype=np.int64)
        rows = np.repeat(np.arange(self.n_steps), sizes)
        cols = np.arange(len(self.batch_idx)) - np.repeat(self.batch_ptr[:-1], sizes)
        idx[rows, cols] = self.batch_idx
        return idx

    def step_of_entry(self) -> np.ndarray:
        """For each entry of ``batch_idx``, the (1-based) step it belongs to."""
        return np.repeat(np.arange(1, self.n_steps + 1), self.batch_sizes)


def id_columns(
    known: Sequence[str], wanted: Sequence[str] | None, unknown: str = "unknown test id(s): {ids}"
) -> np.ndarray:
    """The (int64) positions of the ``wanted`` ids in ``known`` (every position, in order, when
    ``wanted`` is None). An id not in ``known`` raises SelectionError with ``unknown``, whose
    ``{ids}`` names the first 10 of them."""
    if wanted is None:
        return np.arange(len(known))
    if isinstance(wanted, str):  # its characters would be read as IDs
        raise UsageError(f"expected a list of IDs, got the string {wanted!r}; pass [{wanted!r}]")
    pos = {t: j for j, t in enumerate(known)}
    bad = [t for t in wanted if t not in pos]
    if bad:
        raise SelectionError(unknown.format(ids=", ".join(map(str, bad[:10]))))
    return np.asarray([pos[t] for t in wanted], dtype=np.int64)


def stack_index(mats: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Curricula as (T_c, b_c) example-index matrices -> one (C, T, b) int64 array padded with
    -1 (T, b = the largest; ``width`` raises b). The one curriculum-to-index layout every
    rollout (``model.rollout.rollout``) reads."""
    T = max((m.shape[0] for m in mats), default=0)
    b = max((m.shape[1] for m in mats), default=1)
    idx = np.full((len(mats), T, max(b, width or 1, 1)), -1, dtype=np.int64)
    for c, m in enumerate(mats):
        idx[c, : m.shape[0], : m.shape[1]] = m
    return idx


@dataclass(eq=False)
class RunSet:
    """Runs sharing one index space of training-example and test-example IDs."""

    example_ids: np.ndarray  # str (N,)
    test_ids: np.ndarray  # str (M,)
    runs: list[Run] = field(default_factory=list)
    # where workers can load these runs themselves (picklable, ``load(run_ids) -> RunSet``);
    # set by ``RunStore.load``; None = hand the runs over
    source: object | None = field(default=None, repr=False, compare=False)

    @property
    def n_examples(self) -> int:
        """Training examples in the index space (columns of every run's batches)."""
        return len(self.example_ids)

    @property
    def n_tests(self) -> int:
        """Test examples (columns of every run's loss matrix)."""
        return len(self.test_ids)

    @property
    def run_ids(self) -> list[str]:
        """The runs' ids, in order."""
        return [r.run_id for r in self.runs]

    def __len__(self) -> int:
        return len(self.runs)

    def __repr__(self) -> str:
        return (
            f"RunSet({len(self.runs)} runs, {self.n_examples} training examples, "
            f"{self.n_tests} test examples)"
        )

    def __iter__(self):
        return iter(self.runs)

    def __getitem__(self, run_id: str) -> Run:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        shown = ", ".join(self.run_ids[:5]) + (", ..." if len(self.runs) > 5 else "")
        raise RunNotFoundError(
            f"no run {run_id!r} in this RunSet of {len(self.runs)} run(s) ({shown or 'none'})"
        )

    def subset(self, run_ids: Sequence[str]) -> RunSet:
        """The same index space restricted to some runs (order as given)."""
        by_id = {r.run_id: r for r in self.runs}
        return RunSet(self.example_ids, self.test_ids, [by_id[r] for r in run_ids])

    @classmethod
    def from_batches(
        cls,
        runs: Mapping[str, tuple[Sequence[Sequence[str]], np.ndarray | Mapping[int, np.ndarray]]],
        test_ids: Sequence[str],
        example_ids: Sequence[str] | None = None,
        tags: Mapping[str, Sequence[str]] | None = None,
    ) -> RunSet:
        """Build from plain Python: ``{run_id: (batches, losses)}``.

        ``batches[t-1]`` lists the example IDs of step t. ``losses`` is either a dense
        (T+1, M) array (every step logged) or ``{step: (M,) array}`` for sparse logging.
        """
        if example_ids is None:
            seen: dict[str, None] = {}
            for batches, _ in runs.values():
                for b in batches:
                    for e in b:
                        seen.setdefault(str(e), None)
            example_ids = sorted(seen)
        ex = np.asarray([str(e) for e in example_ids], dtype=object)
        pos = {e: i for i, e in enumerate(ex)}
        out = []
        for run_id, (batches, losses) in runs.items():
            sizes = np.fromiter((len(b) for b in batches), dtype=np.int64, count=len(batches))
            ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            idx = np.fromiter(
                (pos[str(e)] for b in batches for e in b), dtype=np.int64, count=int(ptr[-1])
            )
            if isinstance(losses, Mapping):
                steps = np.asarray(sorted(losses), dtype=np.int64)
                mat = np.vstack([np.asarray(losses[s], dtype=np.float64) for s in steps])
            else:
                mat = np.asarray(losses, dtype=np.float64)
                steps = np.arange(mat.shape[0], dtype=np.int64)
            out.append(Run(str(run_id), ptr, idx, steps, mat, tuple((tags or {}).get(run_id, ()))))
        return cls(ex, np.asarray([str(t) for t in test_ids], dtype=object), out)

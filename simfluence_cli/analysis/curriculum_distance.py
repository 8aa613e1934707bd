"""How different two curricula are, relative to two fitting runs: the scale of a change interval.

A change interval (``whatif --interval``, :meth:`Calibration.change`) is built from the
differences of out-of-fold residuals between pairs of fitting runs: the error of comparing two
*unrelated* curricula. A small edit of one curriculum is much closer to its base than two
fitting runs are to each other, and its error is smaller (bench/RESULTS-calibration.md,
"Change intervals"). This module measures that closeness on *which examples occur when*:

- ``run``: the L1 distance of the two curricula's example counts over the whole run, divided
  by the total number of occurrences of both, ``sum_e |n_a(e) - n_b(e)| / (N_a + N_b)``
  (in [0, 1]; 0 = the same multiset of examples);
- ``window``: the same on counts per window of steps (the longer curriculum's steps cut into
  ``WINDOWS`` equal windows): 0 = the same examples in the same tenths of the run, whatever
  the order inside a window and the batch boundaries.

Each is divided by its mean over pairs of fitting runs (the reference, :func:`reference`), and
the change interval's half-width is the fitting-pair quantile times
``scale = max(run / ref_run, window / ref_window) ** POWER``. A zero edit has scale 0; an edit
that moves examples as much as two fitting runs differ has scale about 1; one that changes the
example counts more than fitting runs ever do (dropping a whole class) has scale above 1.
``POWER = 1/3`` was chosen on real retrained edits of the sample model (plain SGD and AdamW):
the square root (the random-walk law) under-covered the smallest edits per test (two steps
swapped: 0.84 at 90%), because real training reacts to any perturbation by a noise floor.
Model-agnostic: only the curricula are used. Cost: one ``bincount`` per curriculum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["WINDOWS", "POWER", "distances", "reference", "edit_scale", "replacement_scale"]

WINDOWS = 10  # windows of steps for the 'window' distance
POWER = 1.0 / 3.0  # scale = (distance / fitting-pair distance) ** POWER
MAX_PAIRS = 256  # fitting-run pairs sampled for the reference (seeded)


def _keys(batches: Sequence[Sequence[str]], index: dict, width: int, n_win: int) -> np.ndarray:
    """(occurrences, 2) int array of (window, example index); new IDs are added to ``index``."""
    keys = [
        (min(t // width, n_win - 1), index.setdefault(e, len(index)))
        for t, batch in enumerate(batches)
        for e in batch
    ]
    return np.asarray(keys, dtype=np.int64).reshape(-1, 2)


def distances(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> np.ndarray:
    """(2,) = (window, run) distances between curricula ``a`` and ``b`` (see module doc)."""
    T = max(len(a), len(b))
    n_win = max(1, min(WINDOWS, T))
    width = max(1, -(-T // n_win))
    index: dict = {}
    ka, kb = _keys(a, index, width, n_win), _keys(b, index, width, n_win)
    total = len(ka) + len(kb)
    if total == 0:
        return np.zeros(2)
    size = n_win * len(index)
    ca = np.bincount(ka[:, 0] * len(index) + ka[:, 1], minlength=size)
    cb = np.bincount(kb[:, 0] * len(index) + kb[:, 1], minlength=size)
    window = np.abs(ca - cb).sum() / total
    run = np.abs(ca.reshape(n_win, -1).sum(axis=0) - cb.reshape(n_win, -1).sum(axis=0)).sum()
    return np.array([window, run / total])


def reference(curricula: Sequence[Sequence[Sequence[str]]], seed: int = 0) -> np.ndarray:
    """(2,) mean (window, run) distance over pairs of ``curricula`` (the fitting runs'; at most
    ``MAX_PAIRS`` pairs, sampled with ``seed``); NaN with fewer than two curricula."""
    n = len(curricula)
    if n < 2:
        return np.full(2, np.nan)
    i, j = np.triu_indices(n, 1)
    if len(i) > MAX_PAIRS:
        pick = np.sort(np.random.default_rng(seed).choice(len(i), MAX_PAIRS, replace=False))
        i, j = i[pick], j[pick]
    return np.mean([distances(curricula[a], curricula[b]) for a, b in zip(i, j)], axis=0)


def edit_scale(
    base: Sequence[Sequence[str]],
    edited: Sequence[Sequence[Sequence[str]]],
    ref: np.ndarray | None,
) -> np.ndarray:
    """(C,) scale of each edited curriculum's change interval against ``base``:
    ``max(d / ref) ** POWER`` over the two distances; 1 (the unscaled fitting-pair interval)
    when there is no usable reference."""
    ref = None if ref is None else np.asarray(ref, dtype=np.float64)
    if ref is None or ref.shape != (2,) or not np.all(np.isfinite(ref) & (ref > 0)):
        return np.ones(len(edited))
    d = np.array([distances(base, x) for x in edited]).reshape(-1, 2)
    return np.max(d / ref, axis=1) ** POWER


def replacement_scale(share: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
    """:func:`edit_scale` of edits that replace a ``share`` of a curriculum's occurrences in
    place by an ID it does not hold (``top``'s removal: an example's slots given to the neutral
    placeholder): both distances then equal that share, so no curriculum is built."""
    share = np.asarray(share, dtype=np.float64)
    ref = None if ref is None else np.asarray(ref, dtype=np.float64)
    if ref is None or ref.shape != (2,) or not np.all(np.isfinite(ref) & (ref > 0)):
        return np.ones(share.shape)
    return (share / ref.min()) ** POWER

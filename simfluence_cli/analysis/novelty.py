"""How unlike the fitting curricula a queried curriculum is: a cheap warning for intervals.

CV+ intervals (:mod:`simfluence_cli.analysis.intervals`) are calibrated for curricula
exchangeable with the fitting runs. A curriculum far from them (class-ordered when every
fitting run is a shuffle) can make all fold models wrong together, and its interval then
under-covers without getting wider. This module measures that distance on two features of
*when* examples occur, so commands can say so on stderr.

Features of a curriculum (T steps; occurrences of training example e at steps t_1 < t_2 < ...):

- ``regularity``: the mean over examples (with 3+ occurrences) of the coefficient of variation
  of the gaps between consecutive occurrences, ``sd(gaps) / mean(gaps)``. Reshuffled epochs
  give about 0.4; a fixed or class-ordered order repeated every epoch gives near 0 (every gap
  is one epoch); blocks of repeats give large values (short gaps, then long ones).
- ``imbalance``: the RMS over examples of ``(p_e - 1/2) / sqrt(1 / (12 k_e))``, where
  ``p_e = mean (t - 1/2) / T`` over e's ``k_e`` occurrences: how far examples are pushed to
  the start or the end, in units of the spread of a uniformly random placement (about 1 for
  any random order, whatever the example counts).

Each feature is standardised against the fitting runs: ``z_f(x) = (f(x) - mean_i f_i) /
sd_i f_i``, and the novelty is ``z = max_f |z_f|``. The fitting runs' own scores are computed
leave-one-run-out (run i against the mean and sd of the others); ``p`` is the conformal
p-value ``(1 + #{i: z_i >= z(x)}) / (n + 1)``. A curriculum is flagged when some feature is
both far outside what the fitting runs show among themselves, ``z_f > NOVELTY_Z`` (4; for an
exchangeable curriculum Chebyshev bounds the chance by 1/16 per feature whatever the
distribution, with near-normal features it is about 6e-5), and materially different, more
than ``NOVELTY_RATIO`` (1.5) times larger or smaller than the fitting runs' mean. The second
condition matters when the fitting runs are all alike: their features then vary so little
that a held-out family of a slightly different size (leave-30%-out: 4.8 instead of 3.3
epochs) is many sds away while its intervals still cover (docs/intervals.md). Cost: a sort
and a few ``bincount`` per curriculum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simfluence_cli._repr import summary_repr

__all__ = ["FEATURES", "NOVELTY_RATIO", "NOVELTY_Z", "Novelty", "features", "features_of_batches"]

NOVELTY_Z = 4.0
NOVELTY_RATIO = 1.5
FEATURES = ("regularity", "imbalance")


def features(idx: np.ndarray, step: np.ndarray, n_steps: int) -> np.ndarray:
    """(2,) regularity and imbalance of one curriculum. ``idx``: example index of every batch
    entry (negative = ignored), ``step``: its 1-based step, ``n_steps``: T."""
    idx = np.asarray(idx, dtype=np.int64)
    step = np.asarray(step, dtype=np.float64)
    keep = idx >= 0
    idx, step = idx[keep], step[keep]
    if not len(idx):
        return np.full(2, np.nan)
    _, idx = np.unique(idx, return_inverse=True)
    N = int(idx.max()) + 1
    T = max(int(n_steps), 1)
    k = np.bincount(idx, minlength=N).astype(np.float64)
    p = np.bincount(idx, weights=(step - 0.5) / T, minlength=N) / k
    imbalance = float(np.sqrt(np.mean((p - 0.5) ** 2 * 12 * k)))
    order = np.lexsort((step, idx))
    e, s = idx[order], step[order]
    same = e[1:] == e[:-1]
    gap, ge = (s[1:] - s[:-1])[same], e[1:][same]
    n = np.bincount(ge, minlength=N).astype(np.float64)
    m1 = np.bincount(ge, weights=gap, minlength=N)
    m2 = np.bincount(ge, weights=gap * gap, minlength=N)
    ok = n >= 2
    if not ok.any():
        return np.array([np.nan, imbalance])
    mean = m1[ok] / n[ok]
    var = np.maximum(m2[ok] / n[ok] - mean * mean, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(mean > 0, np.sqrt(var) / mean, 0.0)
    return np.array([float(cv.mean()), imbalance])


def features_of_batches(curricula: Sequence) -> np.ndarray:
    """(C, 2) features of curricula given as batches of example IDs."""
    out = np.empty((len(curricula), len(FEATURES)))
    for c, cur in enumerate(curricula):
        cur = cur.batches if hasattr(cur, "batches") else cur
        codes: dict[str, int] = {}
        idx = np.fromiter((codes.setdefault(str(x), len(codes)) for b in cur for x in b), np.int64)
        step = np.repeat(np.arange(1, len(cur) + 1), [len(b) for b in cur])
        out[c] = features(idx, step, len(cur))
    return out


def _zf(F: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """|F - mean| / sd per feature (NaN where undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(F - mean) / sd
    return np.where(np.isfinite(z), z, np.nan)


def _z(F: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """max_f |F - mean| / sd over features, ignoring undefined ones (NaN if none)."""
    z = np.nan_to_num(_zf(F, mean, sd), nan=-np.inf)
    best = z.max(axis=-1)
    return np.where(np.isfinite(best), best, np.nan)


@dataclass
class Novelty:
    """Features of the fitting runs (n, 2) and their leave-one-run-out novelty scores."""

    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays

    reference: np.ndarray

    def __post_init__(self):
        F = np.asarray(self.reference, dtype=np.float64).reshape(-1, len(FEATURES))
        self.reference = F
        ok = np.isfinite(F)
        X = np.where(ok, F, 0.0)
        cnt, s1, s2 = ok.sum(0), X.sum(0), (X * X).sum(0)
        self.mean_, self.sd_ = _mean_sd(cnt, s1, s2)
        m_loo, sd_loo = _mean_sd(cnt - ok, s1 - X, s2 - X * X)  # run i left out, all i at once
        self.loo_ = _z(F, m_loo, sd_loo)

    @classmethod
    def from_runs(cls, runs) -> Novelty:
        """Reference from a :class:`~simfluence_cli.runs.RunSet` (the fitting runs)."""
        return cls(
            np.stack([features(r.batch_idx, r.step_of_entry(), r.n_steps) for r in runs.runs])
        )

    def score(self, curricula: Sequence) -> dict[str, np.ndarray]:
        """Per curriculum (batches of IDs): its ``features`` (C, 2), novelty ``z``, conformal
        ``p`` and ``flag`` (some feature has z_f > NOVELTY_Z and a ratio to the fitting runs'
        mean beyond NOVELTY_RATIO)."""
        F = features_of_batches(curricula)
        zf = _zf(F, self.mean_, self.sd_)
        z = _z(F, self.mean_, self.sd_)
        loo = self.loo_[np.isfinite(self.loo_)]
        p = (1 + (loo[None, :] >= z[:, None]).sum(axis=1)) / (len(loo) + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.abs(np.log(F / self.mean_))
        far = np.nan_to_num(zf, nan=0.0) > NOVELTY_Z
        material = np.nan_to_num(ratio, nan=np.inf) > np.log(NOVELTY_RATIO)
        return {"features": F, "z": z, "p": p, "flag": (far & material).any(axis=-1)}

    def warning(self, curricula: Sequence, what: str = "curriculum") -> str | None:
        """One stderr line when any of ``curricula`` is flagged, else None."""
        r = self.score(curricula)
        k = int(r["flag"].sum())
        if not k:
            return None
        p = float(np.min(r["p"]))
        n_ref = int(np.isfinite(self.loo_).sum())
        floor = f", the smallest possible with {n_ref} fitting runs" if p <= 1 / (n_ref + 1) else ""
        return (
            f"{k} of {len(curricula)} {what}(s) unlike the fitting runs (novelty z = "
            f"{float(np.nanmax(r['z'])):.1f} > {NOVELTY_Z:g}, p = {p:.3f}{floor}): "
            "their intervals may under-cover (docs/intervals.md)"
        )


def _mean_sd(cnt, s1, s2):
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, s1 / np.maximum(cnt, 1), np.nan)
        var = (s2 - cnt * mean * mean) / np.maximum(cnt - 1, 1)
        sd = np.where(cnt > 1, np.sqrt(np.maximum(var, 0.0)), np.nan)
    return mean, sd

"""External attribution scores as simulators: TracIn is the additive case (B = -scale * score)."""

from __future__ import annotations

import numpy as np

from simfluence_cli.errors import SelectionError, UsageError
from simfluence_cli.io.score_files import ScoreTable
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet


def _interval_sums(run, Srun: np.ndarray) -> np.ndarray:
    """(K-1, M): sum of score rows of the examples trained on between consecutive logged steps.

    Same arithmetic as the sparse product (counts matrix) @ Srun it replaces, in the same
    order (per interval, examples ascending, a repeated example as count * row), without
    importing scipy.sparse.
    """
    steps = run.step_of_entry()
    k = np.searchsorted(run.loss_steps, steps, side="left")  # interval ending at loss_steps[k]
    keep = k < len(run.loss_steps)
    K = len(run.loss_steps)
    n = Srun.shape[0]
    out = np.zeros((K - 1, Srun.shape[1]))
    key, cnt = np.unique((k[keep] - 1) * n + run.batch_idx[keep], return_counts=True)
    if len(key):
        rows, cols = key // n, key % n
        terms = Srun[cols] * cnt[:, None].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        sizes = np.diff(np.r_[starts, len(key)])
        for j in range(int(sizes.max())):  # j-th example of every interval: sums in order
            g = sizes > j
            out[rows[starts[g]]] += terms[starts[g] + j]
    return out


def fit_scale(
    S: np.ndarray, example_ids: np.ndarray, test_ids: np.ndarray, runs: RunSet, on: str = "step"
) -> dict:
    """Least-squares s in dL ~ -s * X over the fitting runs; returns {scale, r2, n_obs, on}.

    ``S``: (examples, tests) aligned with ``example_ids``/``test_ids``; examples of the runs
    missing from the table count as score 0.
    """
    if on not in ("step", "cumulative"):
        raise UsageError("--scale-on must be 'step' or 'cumulative'")
    if len(runs) == 0:
        raise SelectionError("--scale fit needs fitting runs; check --runs")
    epos = {e: i for i, e in enumerate(example_ids)}
    rows = np.fromiter(
        (epos.get(e, -1) for e in runs.example_ids), dtype=np.int64, count=runs.n_examples
    )
    tpos = {t: j for j, t in enumerate(runs.test_ids)}
    tcols = np.asarray([tpos[t] for t in test_ids], dtype=np.int64)
    Srun = np.where(rows[:, None] >= 0, S[np.maximum(rows, 0)], 0.0)
    sxy = sxx = syy = 0.0
    n = 0
    for run in runs.runs:
        if len(run.loss_steps) < 2:
            continue
        X = _interval_sums(run, Srun)
        L = run.losses[:, tcols]
        if on == "step":
            y = np.diff(L, axis=0)
        else:
            X = np.cumsum(X, axis=0)
            y = L[1:] - L[0]
        ok = np.isfinite(y)
        Xo, yo = X[ok], y[ok]
        # numpy's pairwise sums, not BLAS dot products: a multi-threaded BLAS splits a long
        # dot product across threads, so its last bits would depend on the thread count
        sxy += float(np.sum(Xo * yo))
        sxx += float(np.sum(Xo * Xo))
        syy += float(np.sum(yo * yo))
        n += int(ok.sum())
    if sxx == 0:
        raise SelectionError(
            "cannot fit a scale: the scored examples never occur in the fitting "
            "runs (or all their scores are 0); use --scale none or a number"
        )
    s = -sxy / sxx
    r2 = 1.0 - (syy - sxy * sxy / sxx) / syy if syy > 0 else float("nan")
    return {"scale": float(s), "r2": float(r2), "n_obs": n, "on": on}


def scores_base(with_runs: bool, clip: str = "observed") -> Simulator:
    """The unfitted additive simulator scores become (its configuration is the model's);
    without fitting runs there is no observed loss range, so clipping is off."""
    return Simulator(method="additive", l2=0.0, prior="zero", clip=clip if with_runs else "none")


def scores_simulator(
    table: ScoreTable, scale: float, runs: RunSet | None = None, clip: str = "observed"
) -> Simulator:
    """An additive :class:`Simulator` with ``B = -scale * score``.

    With ``runs`` (the fitting runs) the simulator also gets the observed loss ranges (for
    ``clip='observed'``), mean initial losses, example counts and batch size; test examples of
    the table that the runs never logged are dropped. Without runs, clipping is switched off.
    ``example_counts_`` counts occurrences in the fitting runs, but at least 1 for every scored
    example (so none of them is "unseen": the scores are its parameters).
    """
    test_ids, S = table.test_ids, table.S
    example_ids = table.example_ids
    if runs is not None and len(runs):
        have = set(runs.test_ids.tolist())
        keep = np.asarray([t in have for t in test_ids])
        if not keep.any():
            raise SelectionError("none of the score table's test ids occur in the fitting runs")
        test_ids, S = test_ids[keep], S[:, keep]
        extra = [e for e in runs.example_ids if e not in set(example_ids.tolist())]
        if extra:
            example_ids = np.concatenate([example_ids, np.asarray(extra, dtype=object)])
            S = np.vstack([S, np.zeros((len(extra), S.shape[1]))])
    sim = scores_base(runs is not None and len(runs) > 0, clip)
    n, m = S.shape
    sim.example_ids_ = np.asarray(example_ids, dtype=object)
    sim.test_ids_ = np.asarray(test_ids, dtype=object)
    sim.A_ = np.zeros((n, m))
    sim.B_ = -float(scale) * S
    sim.l2_, sim.cv_curve_ = 0.0, None
    sim.fit_seconds_ = 0.0
    if runs is not None and len(runs):
        tpos = {t: j for j, t in enumerate(runs.test_ids)}
        cols = np.asarray([tpos[t] for t in test_ids], dtype=np.int64)
        L0 = np.vstack([r.losses[0, cols] for r in runs.runs])
        allL = np.vstack([r.losses[:, cols] for r in runs.runs])
        with np.errstate(all="ignore"):
            sim.init_loss_mean_ = np.nanmean(L0, axis=0)
            sim.loss_min_ = np.nanmin(allL, axis=0)
            sim.loss_max_ = np.nanmax(allL, axis=0)
        epos = {e: i for i, e in enumerate(sim.example_ids_)}
        counts = np.zeros(n, dtype=np.int64)
        rmap = np.asarray([epos[e] for e in runs.example_ids], dtype=np.int64)
        for r in runs.runs:
            counts += np.bincount(rmap[r.batch_idx], minlength=n)
        # every scored example has parameters: never count it as "unseen" (see Simulator.seen_mask)
        sim.example_counts_ = np.maximum(counts, np.arange(n) < len(table.example_ids))
        sizes = np.concatenate([r.batch_sizes for r in runs.runs])
        sim.batch_size_ = float(np.median(sizes)) if len(sizes) else 1.0
        sim.run_ids_ = list(runs.run_ids)
    else:
        sim.init_loss_mean_ = np.full(m, np.nan)
        sim.loss_min_ = np.zeros(m)
        sim.loss_max_ = np.full(m, np.inf)
        sim.example_counts_ = np.ones(n, dtype=np.int64)  # all scored: none is "unseen"
        sim.batch_size_ = 1.0
        sim.run_ids_ = []
    return sim

"""Prediction intervals for simulated losses: cross-validation+ (CV+) over the fitting runs.

Every simulator answer is a point estimate; this module puts an interval around it that is
calibrated on the model's own fitting runs and works with any simulator that has ``fit`` and
``simulate`` (every :class:`~simfluence_cli.model.simulator.Simulator` method).

How (Barber, Candes, Ramdas & Tibshirani 2021, "jackknife+ / CV+", grouped by run):

1. The fitting runs are split into K folds (by run, seeded). For each fold a copy of the model
   (same configuration, the full model's chosen penalty, see :func:`refit_like`) is fitted on
   the other K-1 folds and rolls the held-out runs forward from their own step-0 losses.
   ``R_i = observed - predicted`` for every held-out run i, step t and test z: honest
   out-of-sample residuals that use fitting runs only.
2. For a new curriculum x, every fitting run i contributes the pair
   ``mu_{-k(i)}(x) -/+ |R_i|``, where ``mu_{-k(i)}`` is the model fitted without i's fold.
   The interval is the ``floor(alpha (n+1))``-th smallest lower value to the
   ``ceil((1-alpha)(n+1))``-th smallest upper value (alpha = 1 - level, n = runs), per step
   and test. It widens both with the residuals of similar (fitting) curricula and with the
   disagreement of the fold models at x, so a curriculum the fold models disagree on gets
   a wider interval. The coverage promise holds for curricula *exchangeable with the
   fitting runs*; for curricula unlike them (e.g. class-ordered when the fitting runs are
   shuffles) nothing is promised and the measured coverage is poor (docs/intervals.md).
3. Quantities of a single curriculum (final loss per test, mean final loss over tests) use the
   residuals of that quantity. A *change* between two curricula (whatif, top) uses the
   differences of residuals of pairs of held-out fitting runs, ``D_ij = R_i - R_j``: the
   error of a predicted difference between two curricula, estimated from differences between
   two fitting curricula. Its interval is ``[min_k delta_k - s q, max_k delta_k + s q]`` where
   ``delta_k`` is fold model k's predicted change and ``q`` the level-quantile of ``|D_ij|``.
   For ``whatif`` (:meth:`Calibration.change`) ``s`` is the edit's scale
   (:mod:`~simfluence_cli.analysis.curriculum_distance`): how far the edited curriculum is
   from its base relative to two fitting runs, ``max(d / d_ref) ** (1/3)`` over two
   occurrence-count distances; 0 for no edit. ``top``'s removal effects use the largest
   scale of the example's removal over the curricula (:meth:`Calibration.removal`).

Cost: K extra fits at a fixed penalty (no penalty search) plus K extra rollouts per query;
with K = 8 on the demo store (48 runs x 250 steps, 300 examples, 100 tests) about 8 fixed-l2
fits. A calibration can be saved beside its model (:func:`save_stored`,
:mod:`simfluence_cli.store.calibrations`) and is then reused while it is current
(:func:`stored_calibration`): a cached query costs the K rollouts only. Memory: the residuals are (runs, steps+1, tests) float64.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simfluence_cli._repr import summary_repr
from simfluence_cli.analysis.curriculum_distance import (
    edit_scale,
    reference,
    replacement_scale,
)
from simfluence_cli.analysis.novelty import Novelty
from simfluence_cli.errors import SelectionError, UsageError
from simfluence_cli.runs import RunSet, id_columns
from simfluence_cli.store.calibrations import DEFAULT_FOLDS

__all__ = [
    "Calibration",
    "calibrate",
    "calibrate_stored",
    "calibrate_and_save",
    "stored_calibration",
    "save_stored",
    "refit_like",
    "check_level",
    "interval_columns",
    "DEFAULT_FOLDS",
]


def check_level(level: float) -> float:
    """A nominal coverage in (0, 1)."""
    level = float(level)
    if not (0.0 < level < 1.0):
        raise UsageError(f"--interval must be a coverage level between 0 and 1, got {level:g}")
    return level


def interval_columns(level: float) -> tuple[str, str]:
    """Column names of the interval bounds for ``level``: 0.9 -> ('lo_90', 'hi_90')."""
    pct = f"{100 * level:g}".replace(".", "_")
    return f"lo_{pct}", f"hi_{pct}"


def refit_like(model, runs: RunSet):
    """A new simulator with ``model``'s configuration fitted on ``runs``.

    The one place that copies a model (switch to ``sklearn.base.clone`` style here). The
    penalty is fixed to the one ``model`` chose (``l2_``), so a refit does no penalty search.
    A :class:`~simfluence_cli.store.saved_models.StoredModel` is copied via its metadata.
    """
    base = getattr(model, "meta", model)
    new = copy.copy(base)  # shallow: configuration attributes are immutable values
    for attr in [a for a in vars(new) if a.endswith("_") and not a.startswith("_")]:
        delattr(new, attr)  # learned state (A_, B_, ids, ...) is recomputed by fit
    if getattr(base, "l2_", None) is not None:
        new.l2 = float(base.l2_)
    new.progress = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the full fit already reported its warnings
        return new.fit(runs)


def _folds(run_ids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    order = np.random.default_rng(seed).permutation(len(run_ids))
    return [[run_ids[j] for j in sorted(order[f::k])] for f in range(k)]


def _cv_plus(mu: np.ndarray, r: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """CV+ bounds from per-run centres ``mu`` (n, ...) and |residuals| ``r`` (n, ...).

    NaN residuals (a run without that step or test) are left out. Where fewer than
    ceil(level (n+1)) runs are available the bound is infinite.
    """
    lower = np.sort(np.where(np.isnan(r), np.inf, -(mu - r)), axis=0)  # -lower ascending
    upper = np.sort(np.where(np.isnan(r), np.inf, mu + r), axis=0)
    n = np.sum(~np.isnan(r), axis=0)
    k = np.ceil(level * (n + 1)).astype(np.int64)  # 1-based rank
    ok = (k <= n) & (n > 0)
    kk = np.clip(k - 1, 0, max(r.shape[0] - 1, 0))[None]
    lo = -np.take_along_axis(lower, kk, axis=0)[0]
    hi = np.take_along_axis(upper, kk, axis=0)[0]
    return np.where(ok, lo, -np.inf), np.where(ok, hi, np.inf)


def _quantile_abs(d: np.ndarray, level: float) -> np.ndarray:
    """Finite-sample level-quantile of |d| over axis 0 (ceil(level (n+1))-th smallest)."""
    a = np.sort(np.where(np.isnan(d), np.inf, np.abs(d)), axis=0)
    n = np.sum(~np.isnan(d), axis=0)
    k = np.ceil(level * (n + 1)).astype(np.int64)
    q = np.take_along_axis(a, np.clip(k - 1, 0, max(a.shape[0] - 1, 0))[None], axis=0)[0]
    return np.where((k <= n) & (n > 0), q, np.inf)


@dataclass
class Calibration:
    """Fold models and out-of-fold residuals of a model's fitting runs (see module doc)."""

    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays

    model: object
    fold_models: list
    run_ids: list[str]
    fold_of: np.ndarray  # (n,) fold index of each fitting run
    obs: np.ndarray  # (n, S+1, M) observed losses on the step grid (NaN = not logged)
    pred: np.ndarray  # (n, S+1, M) out-of-fold predictions
    obs_final: np.ndarray  # (n, M) at each run's last logged step
    pred_final: np.ndarray  # (n, M)
    test_ids: np.ndarray
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    novelty: Novelty | None = None  # how unlike the fitting runs a curriculum is
    key: dict | None = None  # what a saved copy must match (store.calibrations)
    source: str = "computed"  # 'computed' or 'saved'
    # (2,) mean (window, run) curriculum distance between fitting runs (curriculum_distance)
    change_reference: np.ndarray | None = None

    @property
    def n_folds(self) -> int:
        return len(self.fold_models)

    def _cols(self, tests: Sequence[str] | None) -> np.ndarray:
        return id_columns(self.test_ids, tests)

    def _floor(self, cols: np.ndarray) -> np.ndarray:
        """(M,) lowest possible loss: the model's lower clip bound (0 or more), else -inf."""
        lo, _ = getattr(self.model, "bounds_", (None, None))
        return np.full(len(cols), -np.inf) if lo is None else np.asarray(lo, float)[cols]

    def _fold_sim(self, curricula, init_loss, tests, unseen, final: bool) -> np.ndarray:
        """(K, C, T+1, M) trajectories (or (K, C, M) finals) of every fold model."""
        from simfluence_cli.analysis.whatif import final_losses

        # the full model has validated the IDs; a fold model may lack an example its
        # fold's runs never used: it then gets the prior ('no effect beyond the prior')
        fu = "prior" if unseen == "error" else unseen
        out = []
        for fm in self.fold_models:
            if final:
                out.append(final_losses(fm, curricula, init_loss, tests=tests, unseen=fu))
            else:
                out.append(fm.simulate(curricula, init_loss, tests=tests, unseen=fu))
        return np.stack(out)

    def trajectory(self, curricula, init_loss, level: float, tests=None, unseen="error"):
        """Intervals for the simulated losses at every step: (lo, hi), each (C, T+1, M)."""
        level = check_level(level)
        cols = self._cols(tests)
        fold = self._fold_sim(curricula, init_loss, tests, unseen, final=False)  # (K,C,T+1,M)
        K, C, T1, M = fold.shape
        S1 = self.obs.shape[1]
        steps = np.minimum(np.arange(T1), S1 - 1)  # past the fitting runs' length: last step
        r = np.abs(self.obs - self.pred)[:, steps][:, :, cols]  # (n, T+1, M)
        r[:, 0] = 0.0  # step 0 is the given initial loss
        lo = np.empty((C, T1, M))
        hi = np.empty((C, T1, M))
        for c in range(C):
            mu = fold[self.fold_of, c]  # (n, T+1, M)
            lo[c], hi[c] = _cv_plus(mu, r, level)
        return np.maximum(lo, self._floor(cols)), hi

    def final(self, curricula, init_loss, level: float, tests=None, unseen="error", reduce=None):
        """Intervals for final losses: (lo, hi) each (C, M), or (C,) with ``reduce='mean'``
        (the mean final loss over the tests)."""
        level = check_level(level)
        cols = self._cols(tests)
        fold = self._fold_sim(curricula, init_loss, tests, unseen, final=True)  # (K, C, M)
        res = self.obs_final[:, cols] - self.pred_final[:, cols]  # (n, M)
        if reduce == "mean":
            fold = np.nanmean(fold, axis=-1)
            res = np.nanmean(self.obs_final[:, cols], axis=1) - np.nanmean(
                self.pred_final[:, cols], axis=1
            )
        elif reduce is not None:
            raise UsageError(f"reduce must be None or 'mean', got {reduce!r}")
        r = np.abs(res)
        mu = fold[self.fold_of]  # (n, C, ...)
        lo, hi = _cv_plus(mu, r[:, None], level)
        floor = self._floor(cols)
        return np.maximum(lo, floor.mean() if reduce == "mean" else floor), hi

    def change(
        self, base, edited, init_loss, level: float, tests=None, unseen="error", reduce=None
    ):
        """Intervals for ``edited - base`` final losses: (lo, hi) each (C, M) for C edited
        curricula against one base (or (C,) with ``reduce='mean'``). The fitting-pair
        quantile is scaled by each edit's :func:`edit_scale` (0 for the base itself)."""
        level = check_level(level)
        cols = self._cols(tests)
        curricula = [base, *edited]
        fold = self._fold_sim(curricula, init_loss, tests, unseen, final=True)  # (K, 1+C, M)
        res = self.obs_final[:, cols] - self.pred_final[:, cols]
        if reduce == "mean":
            fold = np.nanmean(fold, axis=-1)
            res = np.nanmean(res, axis=-1)
        elif reduce is not None:
            raise UsageError(f"reduce must be None or 'mean', got {reduce!r}")
        delta = fold[:, 1:] - fold[:, :1]  # (K, C, ...)
        n = res.shape[0]
        i, j = np.triu_indices(n, 1)
        q = _quantile_abs(res[i] - res[j], level)  # (...)
        s = edit_scale(base, edited, self.change_reference).reshape((-1,) + (1,) * np.ndim(q))
        with np.errstate(invalid="ignore"):
            q = np.where(s == 0, 0.0, s * q)  # (C, ...); no edit: no error, even if q is inf
        return delta.min(axis=0) - q, delta.max(axis=0) + q

    def removal(self, runs: RunSet, example_ids, level: float, tests=None):
        """Intervals (lo, hi), each (E,), for the removal effect of each of ``example_ids``
        as ``top`` defines it (final loss with the example's slots given to a neutral
        no-change placeholder minus with it, mean over ``runs``' curricula and over ``tests``;
        positive = helpful). Fold model k's effect is computed like the point estimate; the
        interval is ``[min_k - s q, max_k + s q]`` with ``q`` the level-quantile of
        differences of mean-over-tests final residuals between pairs of fitting runs and
        ``s`` the largest :func:`replacement_scale` of the example's share of a curriculum's
        occurrences over ``runs``: the error of a change *in one curriculum* (conservative for
        a mean over many)."""
        from simfluence_cli.analysis.whatif import NEUTRAL

        level = check_level(level)
        cols = self._cols(tests)
        tl = list(self.test_ids[cols])
        tpos = {t: j for j, t in enumerate(runs.test_ids)}
        rc = np.asarray([tpos[t] for t in tl], dtype=np.int64)
        ex = runs.example_ids
        eff = np.zeros((self.n_folds, len(example_ids)))
        scale = np.zeros(len(example_ids))
        for run in runs.runs:
            cur = [[str(ex[q]) for q in run.batch(t)] for t in range(1, run.n_steps + 1)]
            counts = Counter(e for b in cur for e in b)
            share = np.array([counts[e] for e in example_ids]) / max(1, sum(counts.values()))
            scale = np.maximum(scale, replacement_scale(share, self.change_reference))
            L0 = run.losses[0, rc]
            fallback = np.asarray(self.model.init_loss_mean_)[cols]
            L0 = np.where(np.isfinite(L0), L0, fallback)
            variants = [[[NEUTRAL if x == e else x for x in b] for b in cur] for e in example_ids]
            fin = self._fold_sim([cur, *variants], L0, tl, "error", final=True)  # (K, 1+E, M)
            fin = fin.mean(axis=-1)
            eff += fin[:, 1:] - fin[:, :1]
        eff /= len(runs)
        res = np.nanmean(self.obs_final[:, cols], axis=1) - np.nanmean(
            self.pred_final[:, cols], axis=1
        )
        i, j = np.triu_indices(len(res), 1)
        with np.errstate(invalid="ignore"):
            q = np.where(scale == 0, 0.0, scale * _quantile_abs(res[i] - res[j], level))
        return eff.min(axis=0) - q, eff.max(axis=0) + q

    def coverage(self, runs: RunSet, level: float, tests=None, unseen="error") -> list[dict]:
        """Per run of ``runs``: share of observed losses inside the interval (all logged steps
        > 0, and the last logged step) and the mean interval width; rolled from each run's
        own step-0 losses through its own curriculum."""
        level = check_level(level)
        tests = list(self.test_ids) if tests is None else list(tests)
        pos = {t: j for j, t in enumerate(runs.test_ids)}
        miss = [t for t in tests if t not in pos]
        if miss:
            raise SelectionError(f"the runs have no test id(s) {', '.join(miss[:10])}")
        rc = np.asarray([pos[t] for t in tests], dtype=np.int64)
        ex = runs.example_ids
        rows = []
        for run in runs.runs:
            cur = [[str(ex[k]) for k in run.batch(t)] for t in range(1, run.n_steps + 1)]
            L0 = run.losses[0, rc]
            fallback = np.asarray(self.model.init_loss_mean_)[self._cols(tests)]
            L0 = np.where(np.isfinite(L0), L0, fallback)
            lo, hi = self.trajectory([cur], L0, level, tests=tests, unseen=unseen)
            steps = run.loss_steps
            obs = run.losses[:, rc]
            lo, hi = lo[0, steps], hi[0, steps]
            inside = (obs >= lo) & (obs <= hi)
            ok = np.isfinite(obs)
            ok[steps == 0] = False
            fin = ok[-1]
            rows.append(
                {
                    "run": run.run_id,
                    "coverage_all": float(inside[ok].mean()) if ok.any() else float("nan"),
                    "coverage_final": float(inside[-1][fin].mean()) if fin.any() else np.nan,
                    "width_all": float(np.mean((hi - lo)[ok])) if ok.any() else float("nan"),
                    "width_final": float(np.mean((hi - lo)[-1][fin])) if fin.any() else np.nan,
                }
            )
        return rows


def calibrate(
    model, runs: RunSet, *, folds: int = DEFAULT_FOLDS, seed: int = 0, progress=None
) -> Calibration:
    """Fit ``folds`` copies of ``model`` on grouped-CV folds of its fitting runs ``runs`` and
    collect the out-of-fold residuals (see the module docstring)."""
    t0 = time.perf_counter()
    ids = list(runs.run_ids)
    if len(ids) < 3:
        raise SelectionError(
            f"intervals need at least 3 fitting runs (cross-validation by run); got {len(ids)}"
        )
    k = max(2, min(int(folds), len(ids)))
    parts = _folds(ids, k, seed)
    fold_of = np.empty(len(ids), dtype=np.int64)
    where = {r: i for i, r in enumerate(ids)}
    S = max(r.n_steps for r in runs.runs)
    M = runs.n_tests
    obs = np.full((len(ids), S + 1, M), np.nan)
    pred = np.full((len(ids), S + 1, M), np.nan)
    obs_final = np.full((len(ids), M), np.nan)
    pred_final = np.full((len(ids), M), np.nan)
    fold_models = []
    ex = runs.example_ids
    tests = list(runs.test_ids)
    curricula = [
        [[str(ex[q]) for q in r.batch(t)] for t in range(1, r.n_steps + 1)] for r in runs.runs
    ]
    mtests = set(np.asarray(getattr(model, "test_ids_", tests)).tolist())
    if set(tests) != mtests:
        raise SelectionError("the calibration runs' test examples differ from the model's")
    for f, held in enumerate(parts):
        train = [r for r in ids if r not in set(held)]
        fm = refit_like(model, runs.subset(train))
        fold_models.append(fm)
        for rid in held:
            i = where[rid]
            fold_of[i] = f
            run = runs[rid]
            cur = [[str(ex[q]) for q in run.batch(t)] for t in range(1, run.n_steps + 1)]
            L0 = np.where(np.isfinite(run.losses[0]), run.losses[0], fm.init_loss_mean_)
            traj = fm.simulate([cur], L0, tests=tests, unseen="prior")[0]
            st = run.loss_steps
            obs[i, st] = run.losses
            pred[i, st] = traj[st]
            obs_final[i] = run.losses[-1]
            pred_final[i] = traj[st[-1]]
        if progress is not None:
            progress(f + 1, k)
    return Calibration(
        model,
        fold_models,
        ids,
        fold_of,
        obs,
        pred,
        obs_final,
        pred_final,
        np.asarray(tests, dtype=object),
        time.perf_counter() - t0,
        novelty=Novelty.from_runs(runs),
        change_reference=reference(curricula, seed),
    )


def calibrate_stored(store, name: str, *, folds: int = DEFAULT_FOLDS, seed: int = 0, progress=None):
    """(full model, Calibration) for the stored model ``name``, refitting on its fitting runs,
    which must still be in ``store``."""
    from simfluence_cli.store.saved_models import load_model

    sim = load_model(store, name)
    ids = list(getattr(sim, "run_ids_", []) or [])
    have = set(store.run_ids())
    missing = [r for r in ids if r not in have]
    if not ids or missing:
        raise SelectionError(
            f"--interval refits model {name!r} on its fitting runs, but "
            + (
                f"{len(missing)} of them are not in {store.path} ({', '.join(missing[:3])})"
                if ids
                else "it records none (imported scores have no fitting runs)"
            )
        )
    from simfluence_cli.store.calibrations import calibration_key

    key = calibration_key(store, name, folds, seed, manifest=getattr(sim, "manifest_", None))
    cal = calibrate(sim, store.load(ids), folds=folds, seed=seed, progress=progress)
    cal.key = key
    return sim, cal


def save_stored(store, name: str, cal: Calibration) -> dict:
    """Save ``cal`` (from :func:`calibrate_stored`) beside model ``name``; returns the
    calibration manifest (ConflictError if the model or its runs changed meanwhile)."""
    from simfluence_cli.store.calibrations import save_calibration

    arrays = {
        "obs": cal.obs,
        "pred": cal.pred,
        "obs_final": cal.obs_final,
        "pred_final": cal.pred_final,
        "fold_of": cal.fold_of,
        "novelty": cal.novelty.reference if cal.novelty is not None else np.zeros((0, 2)),
    }
    meta = {
        "run_ids": list(cal.run_ids),
        "test_ids": [str(t) for t in cal.test_ids],
        "seconds": round(float(cal.seconds), 3),
        "change_reference": [float(x) for x in np.asarray(cal.change_reference)]
        if cal.change_reference is not None
        else None,
    }
    return save_calibration(store, name, cal.key, cal.fold_models, arrays, meta)


def calibrate_and_save(
    store, name: str, *, force: bool = False, on_start=None, progress=None
) -> tuple[Calibration | None, dict | None]:
    """Calibrate stored model ``name`` and save it beside the model, unless a current one is
    saved (then ``(None, None)``; ``force`` recomputes). ``on_start(status, why)`` is called
    before the refits (status 'no' or 'stale'). Returns (Calibration, calibration manifest).
    An unknown model and a read-only store fail before any refit."""
    from simfluence_cli.store.calibrations import DEFAULT_SEED, calibration_status
    from simfluence_cli.store.saved_models import read_manifest

    read_manifest(store, name)  # an unknown model fails here
    with store.write_lock():  # a read-only store fails here, before the refits
        status, why = calibration_status(store, name, DEFAULT_FOLDS, DEFAULT_SEED)
    if status == "calibrated" and not force:
        return None, None
    if on_start is not None:
        on_start(status, why)
    _, cal = calibrate_stored(
        store, name, folds=DEFAULT_FOLDS, seed=DEFAULT_SEED, progress=progress
    )
    return cal, save_stored(store, name, cal)


def stored_calibration(
    store,
    name: str,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    progress=None,
    on_compute=None,
) -> tuple[object, Calibration, str]:
    """(full model, Calibration, note) for stored model ``name``: the saved calibration when
    its key matches (note ''), else a fresh one (refits; nothing is written) and a note
    saying why the saved one was not used (also passed to ``on_compute(note, saved)``
    first; ``saved``: a calibration is saved but unusable)."""
    from simfluence_cli.store.calibrations import calibration_key, load_calibration
    from simfluence_cli.store.saved_models import load_model

    sim = load_model(store, name)
    try:
        key = calibration_key(store, name, folds, seed, manifest=getattr(sim, "manifest_", None))
    except SelectionError:
        key = None  # fitting runs gone: calibrate_stored says so
    if key is None or not getattr(sim, "run_ids_", None):  # nothing to refit: its error
        sim, cal = calibrate_stored(store, name, folds=folds, seed=seed, progress=progress)
        return sim, cal, "no saved calibration"
    payload, why = load_calibration(store, name, key)
    if payload is not None and "change_reference" not in payload["manifest"]:
        payload, why = None, "the saved calibration predates change-interval scaling"
    if payload is None:
        saved = bool(why)  # one is saved but cannot be used (stale, damaged, unreadable)
        why = why or "no saved calibration"
        if on_compute is not None:
            on_compute(why, saved)
        sim, cal = calibrate_stored(store, name, folds=folds, seed=seed, progress=progress)
        return sim, cal, why
    a, man = payload["arrays"], payload["manifest"]
    cal = Calibration(
        sim,
        payload["fold_models"],
        list(man["run_ids"]),
        a["fold_of"].astype(np.int64),
        a["obs"],
        a["pred"],
        a["obs_final"],
        a["pred_final"],
        np.asarray(man["test_ids"], dtype=object),
        0.0,
        novelty=Novelty(a["novelty"]) if len(a["novelty"]) else None,
        key=key,
        source="saved",
        change_reference=None
        if man["change_reference"] is None
        else np.asarray(man["change_reference"], dtype=np.float64),
    )
    return sim, cal, ""

"""Baselines with the Simulator's ``simulate`` interface (what every simulator must beat).

- :class:`ConstantBaseline`: L_t = L_0 (nothing changes during training);
- :class:`MeanTrajectoryBaseline`: per test example, the mean over the fitting runs of the loss
  at each step (losses between logged steps linearly interpolated; past the longest fitting
  run the last value is held). It ignores the curriculum entirely, so it knows which test
  examples are hard but has no counterfactual skill.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simfluence_cli.errors import ModelError, SelectionError
from simfluence_cli.runs import RunSet, id_columns

__all__ = ["ConstantBaseline", "MeanTrajectoryBaseline", "interpolate_run"]


def _curricula_shape(curricula, lengths):
    if isinstance(curricula, np.ndarray):
        C, T = curricula.shape[0], curricula.shape[1]
        if lengths is None:
            active = (curricula >= 0).any(axis=2)
            lengths = [int(np.flatnonzero(a)[-1] + 1) if a.any() else 0 for a in active]
    else:
        C = len(curricula)
        lengths = [len(c) for c in curricula] if lengths is None else lengths
        T = max(lengths, default=0)
    return C, T, list(lengths)


def _finish(out: np.ndarray, lengths) -> np.ndarray:
    for c, T in enumerate(lengths):
        out[c, T + 1 :] = np.nan
    return out


class ConstantBaseline:
    """L_t = L_0: predicts that training changes nothing."""

    method = "constant"
    name = "constant"

    def fit(self, runs: RunSet | None = None) -> ConstantBaseline:
        return self

    def simulate(
        self,
        curricula,
        init_loss,
        tests: Sequence[str] | None = None,
        unseen: str = "error",
        lengths: Sequence[int] | None = None,
    ) -> np.ndarray:
        """(C, T+1, M) losses equal to ``init_loss`` ((M,) or (C, M)) at every step."""
        C, T, lengths = _curricula_shape(curricula, lengths)
        L0 = np.asarray(init_loss, dtype=np.float64)
        L0 = np.broadcast_to(L0, (C, L0.shape[-1])) if L0.ndim == 1 else L0
        out = np.repeat(L0[:, None, :], T + 1, axis=1)
        return _finish(out, lengths)


def interpolate_run(run, grid: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """Losses of ``run`` at the steps ``grid`` (linear between logged steps; NaN past its end)."""
    L = run.losses if cols is None else run.losses[:, cols]
    s = run.loss_steps
    k = np.clip(np.searchsorted(s, grid, side="right") - 1, 0, len(s) - 1)
    k2 = np.minimum(k + 1, len(s) - 1)
    span = (s[k2] - s[k]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(span > 0, (grid - s[k]) / np.where(span > 0, span, 1.0), 0.0)
    out = (1 - w)[:, None] * L[k] + w[:, None] * L[k2]
    out[grid > s[-1]] = np.nan
    return out


class MeanTrajectoryBaseline:
    """Per test example, the mean over fitting runs of the loss at each step."""

    method = "mean-trajectory"
    name = "mean-trajectory"

    def fit(self, runs: RunSet) -> MeanTrajectoryBaseline:
        if len(runs) == 0:
            raise SelectionError("the mean-trajectory baseline needs at least one fitting run")
        self.test_ids_ = np.asarray(runs.test_ids, dtype=object)
        self.run_ids_ = list(runs.run_ids)
        T = max(int(r.loss_steps[-1]) for r in runs.runs)
        grid = np.arange(T + 1)
        total = np.zeros((T + 1, runs.n_tests))
        count = np.zeros((T + 1, runs.n_tests))
        for r in runs.runs:
            v = interpolate_run(r, grid)
            ok = np.isfinite(v)
            total += np.where(ok, v, 0.0)
            count += ok
        with np.errstate(invalid="ignore"):
            mean = total / count
        # hold the last known value where no fitting run reaches
        for j in np.flatnonzero(~np.isfinite(mean).all(axis=0)):
            col = mean[:, j]
            good = np.flatnonzero(np.isfinite(col))
            if len(good):
                mean[:, j] = np.interp(grid, good, col[good])
        self.mean_ = mean  # (T_fit + 1, M)
        return self

    def _test_columns(self, tests):
        return id_columns(self.test_ids_, tests, "the fitting runs have no test id(s) {ids}")

    def simulate(
        self,
        curricula,
        init_loss=None,
        tests: Sequence[str] | None = None,
        unseen: str = "error",
        lengths: Sequence[int] | None = None,
    ) -> np.ndarray:
        """(C, T+1, M): the fitting runs' mean loss at each step, whatever the curriculum."""
        if not hasattr(self, "mean_"):
            raise ModelError("the mean-trajectory baseline is not fitted; call fit(runs)")
        C, T, lengths = _curricula_shape(curricula, lengths)
        cols = self._test_columns(tests)
        steps = np.minimum(np.arange(T + 1), len(self.mean_) - 1)
        out = np.repeat(self.mean_[steps][:, cols][None], C, axis=0)
        return _finish(out, lengths)

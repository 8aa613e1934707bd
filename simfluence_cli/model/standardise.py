"""Per-test standardisation of the losses a model fits: each test's losses divided by their
root mean square over the fitting runs (the paper's methods and the optimizer-aware identity
transform), so fitted parameters and ridge penalties do not depend on the loss units."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from simfluence_cli.runs import RunSet


def loss_scale(runs: RunSet) -> np.ndarray:
    """(m,) per-test standardisation scale: the root mean square of the test's logged losses
    over all runs (1 for a test with no finite non-zero loss). Equivariant: c * losses gives
    c * scale, so the standardised losses (and hence the fitted A) do not change."""
    ss = np.zeros(runs.n_tests)
    cnt = np.zeros(runs.n_tests)
    with np.errstate(all="ignore"):
        for r in runs.runs:
            ok = np.isfinite(r.losses)
            ss += np.square(np.where(ok, r.losses, 0.0)).sum(axis=0)
            cnt += ok.sum(axis=0)
        rms = np.sqrt(ss / cnt)
    return np.where(np.isfinite(rms) & (rms > 0), rms, 1.0)


class ScaledSource:
    """A run source (see ``model/sharding.py``) whose loaded runs are standardised by
    ``scale``: Dask workers that load the runs themselves fit the same data as the
    coordinator."""

    def __init__(self, source, scale: np.ndarray, test_ids=None):
        self.source, self.scale = source, np.asarray(scale, dtype=np.float64)
        self.test_ids = None if test_ids is None else np.asarray(test_ids, dtype=object)

    def load(self, run_ids, tests=None) -> RunSet:
        """The runs standardised; with ``tests`` (test IDs) only those loss columns."""
        if tests is None:
            runs = self.source.load(run_ids) if hasattr(self.source, "load") else self.source
            return rescaled(runs, self.scale)
        if self.test_ids is None:
            raise ValueError("ScaledSource without test_ids cannot load a subset of tests")
        runs = self.source.load(run_ids, tests=tests)
        pos = {t: i for i, t in enumerate(self.test_ids.tolist())}
        return rescaled(runs, self.scale[[pos[t] for t in runs.test_ids.tolist()]])

    def __repr__(self) -> str:  # the workers' cache key: source and scale
        from simfluence_cli._hashing import sha256_hex

        return f"ScaledSource({self.source!r}, {sha256_hex(self.scale.tobytes())})"


def rescaled(runs: RunSet, scale: np.ndarray) -> RunSet:
    """The same runs with each test's losses divided by its scale (a copy of the losses)."""
    source = getattr(runs, "source", None)
    return RunSet(
        runs.example_ids,
        runs.test_ids,
        [replace(r, losses=r.losses / scale) for r in runs.runs],
        source=None if source is None else ScaledSource(source, scale, runs.test_ids),
    )

"""Rule 1 of logging (every run starts from the same checkpoint), checked where it is broken most
often: a model object reused for the next run without reloading its starting weights."""

from __future__ import annotations

import warnings
import weakref

import numpy as np

from simfluence_cli.errors import SimfluenceWarning

#: model object -> (test IDs, step-0 losses) of the first run a logger started from it
_FIRST_START: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_same_start(model, test_ids, losses, where: str) -> None:
    """Warn when ``model`` already started a logged run whose step-0 losses on the same tests
    differ from ``losses``: the model was trained since, so this run would not start from the
    shared checkpoint. The first start of each model object is remembered."""
    losses = np.asarray(losses, dtype=np.float64)
    key = tuple(str(t) for t in test_ids)
    try:
        first = _FIRST_START.get(model)
    except TypeError:  # not weak-referenceable: nothing to compare with
        return
    if first is None:
        _FIRST_START[model] = (key, losses.copy())
        return
    if first[0] != key or first[1].shape != losses.shape:
        return
    diff = np.abs(losses - first[1])
    if np.any(diff > 1e-4 * (1.0 + np.abs(first[1]))):  # beyond evaluation noise
        warnings.warn(
            f"{where}: this model object started an earlier logged run, and its step-0 test losses "
            f"now differ from that run's (by up to {float(diff.max()):.3g}): it was trained since, "
            "so this run does not start from the same checkpoint; reload the starting weights "
            "(model.load_state_dict(initial_state)) or build the model afresh for every run",
            SimfluenceWarning,
            stacklevel=3,
        )

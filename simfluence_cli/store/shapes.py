"""Shapes of stored runs read cheaply from their curriculum files (only the ``step`` column)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simfluence_cli.io._arrow import np_view, read_parquet


def stored_batch_sizes(store, run_ids: Sequence[str]) -> list[np.ndarray]:
    """Per run of ``run_ids``: the batch size of every step 1..T (int64 array)."""
    by_id = {r["run"]: r for r in store.runs()}
    out = []
    for rid in run_ids:
        entry = by_id.get(rid)
        if entry is None:
            continue
        steps = read_parquet(Path(store.path) / entry["curriculum_file"], columns=["step"])
        s = np_view(steps.column("step"))
        out.append(np.bincount(s, minlength=int(entry.get("steps") or 0) + 1)[1:])
    return out

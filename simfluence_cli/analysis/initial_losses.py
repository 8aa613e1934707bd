"""Initial losses for a simulation: a stored run's step-0 losses or a ``test_id,loss`` table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simfluence_cli.errors import InputError


def run_init_loss(runset, run_id: str, test_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """A run's observed step-0 losses aligned with ``test_ids``; NaN where the run has no
    step-0 loss for a test. Returns (losses, missing test ids)."""
    run = runset[run_id]
    pos = {t: j for j, t in enumerate(runset.test_ids)}
    out = np.full(len(test_ids), np.nan)
    if len(run.loss_steps) and run.loss_steps[0] == 0:
        row = run.losses[0]
        for k, t in enumerate(test_ids):
            j = pos.get(t)
            if j is not None:
                out[k] = row[j]
    missing = [t for t, v in zip(test_ids, out) if not np.isfinite(v)]
    return out, missing


def read_init_loss(path: str, test_ids: Sequence[str]) -> np.ndarray:
    """Initial losses from a CSV table ``test_id,loss`` aligned with ``test_ids``."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        tbl = pcsv.read_csv(
            path, convert_options=pcsv.ConvertOptions(column_types={"test_id": pa.string()})
        )
    except FileNotFoundError:
        raise InputError(
            "no such file",
            path=path,
            hint="--init-loss is 'mean', 'run:RUN' or a CSV file test_id,loss",
        ) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"cannot read: {str(exc).splitlines()[0]}",
            path=path,
            hint="give a CSV table with columns test_id,loss",
        ) from None
    for c in ("test_id", "loss"):
        if c not in tbl.column_names:
            raise InputError(
                f"missing column {c!r}",
                path=path,
                field=c,
                hint="give a CSV table with columns test_id,loss",
            )
    ids = [str(x) for x in tbl["test_id"].to_pylist()]
    try:
        vals = np.asarray(tbl["loss"].to_pylist(), dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("non-numeric value", path=path, field="loss") from None
    got = dict(zip(ids, vals))
    missing = [t for t in test_ids if t not in got]
    if missing:
        raise InputError(
            f"no initial loss for {len(missing)} test(s): {', '.join(missing[:10])}",
            path=path,
            field="test_id",
            hint="list every test example of the model (or pick them with --tests)",
        )
    out = np.asarray([got[t] for t in test_ids], dtype=np.float64)
    bad = [t for t, v in zip(test_ids, out) if not np.isfinite(v) or v < 0]
    if bad:
        raise InputError(
            f"initial loss must be finite and >= 0 (test {bad[0]})", path=path, field="loss"
        )
    return out

"""Initial losses for a simulation (``--init-loss``): the model's mean, a stored run's step-0
losses or a ``test_id,loss`` table; :func:`resolve_init_loss` is the one resolver."""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simfluence_cli.errors import InputError, SelectionError, UsageError


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
    """Initial losses from a CSV ``test_id,loss`` (header required; ``-`` = stdin) aligned
    with ``test_ids``. Every test needs a finite loss >= 0; duplicates are an InputError."""
    tests = list(test_ids)
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=path) from None
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or [h.strip() for h in header[:2]] != ["test_id", "loss"]:
        raise InputError(
            "expected a header line 'test_id,loss'",
            path=path,
            line=1,
            hint="--init-loss FILE is a CSV with columns test_id,loss",
        )
    got: dict[str, float] = {}
    for no, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise InputError("expected 2 fields: test_id,loss", path=path, line=no)
        tid = row[0].strip()
        try:
            v = float(row[1])
        except ValueError:
            raise InputError(
                f"not a number: {row[1]!r}", path=path, line=no, field="loss"
            ) from None
        if not (math.isfinite(v) and v >= 0):
            raise InputError(
                f"a loss must be finite and >= 0, got {row[1]!r}", path=path, line=no, field="loss"
            )
        if tid in got:
            raise InputError(f"duplicate test_id {tid!r}", path=path, line=no, field="test_id")
        got[tid] = v
    absent = [t for t in tests if t not in got]
    if absent:
        raise InputError(
            f"no initial loss for {len(absent)} simulated test(s): {', '.join(absent[:10])}",
            path=path,
            hint="give a row for every test, or restrict them with --tests",
        )
    return np.asarray([got[t] for t in tests])


def resolve_init_loss(spec: str, sim, store=None) -> np.ndarray:
    """The step-0 losses ``--init-loss SPEC`` names, aligned with ``sim.test_ids_``.

    ``mean``: the model's mean observed step-0 loss over its fitting runs; ``run:RUN``: that
    stored run's observed step-0 losses (RUN is a run id, or a glob matching exactly one run;
    needs ``store``); anything else: a CSV file ``test_id,loss`` (``-`` = stdin).
    Raises SelectionError (unknown run, no step-0 loss) or InputError (bad file).
    """
    tests = list(sim.test_ids_)
    if spec == "mean":
        return np.array(sim.init_loss_mean_, dtype=np.float64, copy=True)
    if spec.startswith("run:"):
        rid = spec[4:]
        if store is None:
            raise UsageError(f"--init-loss {spec}: reading a run needs a store")
        ids = [rid] if rid in store.run_ids() else store.select(spec)
        if not ids:
            raise SelectionError(f"--init-loss {spec}: no run {rid!r} in {store.path}")
        if len(ids) != 1:
            raise SelectionError(f"--init-loss {spec!r} matches {len(ids)} runs; give one run id")
        rs = store.load(ids)
        if rs.runs[0].loss_steps[0] != 0:
            raise SelectionError(f"run {ids[0]!r} has no losses logged at step 0")
        L0, missing = run_init_loss(rs, ids[0], tests)
        if missing:
            raise SelectionError(
                f"run {ids[0]!r} has no step-0 loss for test(s) {', '.join(missing[:10])}"
            )
        return L0
    return read_init_loss(spec, tests)

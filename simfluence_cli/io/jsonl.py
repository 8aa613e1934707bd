"""Encoding A: one JSON Lines file per run, ``<run>.jsonl[.gz]``.

One object per training step ``{"step": t, "batch": [ids], "loss": {test_id: loss}}``; step 0
holds the initial losses and no batch; ``loss`` may be partial or absent after step 0; an
optional ``"run"`` key overrides the run id (default: the file stem); integer IDs become strings.
Optional: ``"lr": float`` on every step t >= 1 (the learning rate that step's update used; all
steps or none) and ``"optimizer": str`` on the step-0 line (a free-form description); both are
stored with the run (``Run.lr``, ``Run.optimizer``) and used by ``--method optimizer-aware``.
Errors are :class:`InputError` with ``FILE:LINE``, the field and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simfluence_cli.errors import InputError
from simfluence_cli.io._fields import _MISSING, _check_numbers, _Ids, _idstr, _json_lines, _step_int
from simfluence_cli.io.rundata import RunData, make_rundata

# --------------------------------------------------------------------------------------------
# encoding A: JSON Lines, one run per file
# --------------------------------------------------------------------------------------------


def _stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    for suf in (".jsonl", ".ndjson", ".json"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def read_jsonl(path: Path) -> RunData:
    """Parse and validate one encoding-A file. Other keys are ignored, among them the
    RunLogger extras "optimizer" (step 0) and "lr" (per step), which are not stored yet."""
    label = str(path)
    run_id = None
    ex = _Ids()
    te = _Ids()
    batch_codes: list[int] = []
    sizes: list[int] = []
    vals: list = []
    val_chunks: list[np.ndarray] = []
    code_chunks: list[np.ndarray] = []
    lstep: list[int] = []
    lcount: list[int] = []
    lline: list[int] = []
    prev = -1
    prev_keys = None
    prev_codes = None
    ex_map = ex.map
    lrs: list[float] = []
    lr_lines: list[int] = []  # lines of steps >= 1 without "lr" (an error once any step has one)
    optimizer = None
    for lineno, obj in _json_lines(
        path, object_hint='write {"step": t, "batch": [...], "loss": {...}} per line'
    ):
        step = obj.get("step", _MISSING)
        if type(step) is not int:
            step = _step_int(step, label, lineno)
        r = obj.get("run")
        if r is not None:
            if type(r) is not str or not r:
                raise InputError(
                    "expected a non-empty string",
                    path=label,
                    line=lineno,
                    field="run",
                    hint='"run" names the run; omit it to use the file name',
                )
            if run_id is None:
                run_id = r
            elif r != run_id:
                raise InputError(
                    f"run {r!r} differs from {run_id!r} on earlier lines",
                    path=label,
                    line=lineno,
                    field="run",
                    hint="one file holds one run; split the file per run",
                )
        if step < 0:
            raise InputError(
                f"negative step {step}",
                path=label,
                line=lineno,
                field="step",
                hint="steps are 0 (initial losses), 1, 2, ...",
            )
        if step <= prev:
            what = "duplicate" if step == prev else "decreasing"
            raise InputError(
                f"{what} step {step} after step {prev}",
                path=label,
                line=lineno,
                field="step",
                hint="write one line per training step, in order",
            )
        batch = obj.get("batch")
        if prev < 0:
            if step != 0:
                raise InputError(
                    f"first step is {step}: missing step 0 (initial losses)",
                    path=label,
                    line=lineno,
                    field="step",
                    hint='start with {"step": 0, "batch": [], "loss": {...}} '
                    "measured before training",
                )
            if batch:
                raise InputError(
                    "a batch on step 0",
                    path=label,
                    line=lineno,
                    field="batch",
                    hint='step 0 is the starting checkpoint: use "batch": [] '
                    "and log the first batch as step 1",
                )
        else:
            if step != prev + 1:
                raise InputError(
                    f"step {step} follows step {prev}: step(s) "
                    f"{prev + 1}..{step - 1} have no batch",
                    path=label,
                    line=lineno,
                    field="step",
                    hint='log every training step\'s batch (omit "loss" on '
                    "steps without evaluation)",
                )
            if type(batch) is not list or not batch:
                got = (
                    "missing"
                    if batch is None
                    else (
                        "empty"
                        if batch == []
                        else f"expected a list of IDs, got {json.dumps(batch)[:40]}"
                    )
                )
                raise InputError(
                    got,
                    path=label,
                    line=lineno,
                    field="batch",
                    hint="every step t >= 1 lists the IDs it trained on, "
                    'e.g. "batch": ["e17", "e203"]',
                )
            for e in batch:
                if type(e) is not str or not e:
                    e = _idstr(e, label, lineno, "batch")
                c = ex_map.get(e)
                if c is None:
                    c = ex.code(e)
                batch_codes.append(c)
            sizes.append(len(batch))
            lr = obj.get("lr")
            if lr is None:
                lr_lines.append(lineno)
            else:
                if type(lr) not in (float, int) or not np.isfinite(lr) or lr < 0:
                    raise InputError(
                        f"expected a finite number >= 0, got {json.dumps(lr)[:40]}",
                        path=label,
                        line=lineno,
                        field="lr",
                        hint='"lr" is the learning rate this step\'s update used, e.g. "lr": 0.01',
                    )
                lrs.append(float(lr))
        if prev < 0 and "optimizer" in obj:
            optimizer = obj["optimizer"]
            if type(optimizer) is not str or not optimizer:
                raise InputError(
                    f"expected a non-empty string, got {json.dumps(optimizer)[:40]}",
                    path=label,
                    line=lineno,
                    field="optimizer",
                    hint='"optimizer" describes the optimizer, e.g. "AdamW(lr=1e-3)"',
                )
        prev = step
        loss = obj.get("loss")
        if loss is None or (type(loss) is dict and not loss):
            if step == 0:
                raise InputError(
                    "missing step 0 losses",
                    path=label,
                    line=lineno,
                    field="loss",
                    hint='step 0 must log every test\'s initial loss: "loss": {"t0": 2.31, ...}',
                )
            continue
        if type(loss) is not dict:
            raise InputError(
                f"expected an object {{test_id: loss}}, got {json.dumps(loss)[:40]}",
                path=label,
                line=lineno,
                field="loss",
                hint='write "loss": {"t0": 2.31, "t1": 0.7}',
            )
        keys = tuple(loss)
        if keys != prev_keys:
            prev_codes = np.fromiter((te.code(k) for k in keys), dtype=np.int64, count=len(keys))
            for k in keys:
                if not k:
                    raise InputError(
                        "empty test ID",
                        path=label,
                        line=lineno,
                        field="loss",
                        hint="test IDs must be non-empty",
                    )
            prev_keys = keys
        v = list(loss.values())
        if not set(map(type, v)) <= {float, int}:
            _check_numbers(v, keys, label, lineno)
        vals.extend(v)
        if len(vals) > (1 << 20):
            val_chunks.append(np.asarray(vals, dtype=np.float64))
            vals = []
        code_chunks.append(prev_codes)
        lstep.append(step)
        lcount.append(len(v))
        lline.append(lineno)
    if prev < 0:
        raise InputError(
            "empty run: no steps",
            path=label,
            hint='a run file holds {"step": 0, ...} then one line per training step',
        )
    if prev == 0:
        raise InputError(
            "empty run: only step 0, no training steps",
            path=label,
            hint="log at least one training step with its batch",
        )
    val_chunks.append(np.asarray(vals, dtype=np.float64))
    loss = np.concatenate(val_chunks)
    codes = np.concatenate(code_chunks)
    counts = np.asarray(lcount, dtype=np.int64)

    def entry_error(flagged: np.ndarray, message: str, hint: str) -> InputError:
        """The error at the first flagged loss entry: its line, its test id as the field;
        ``message`` may name the entry's ``{loss}`` and ``{test}``."""
        i = int(np.argmax(flagged))
        k = int(np.searchsorted(np.cumsum(counts), i, side="right"))
        tid = te.list[codes[i]]
        return InputError(
            message.format(loss=float(loss[i]), test=tid),
            path=label,
            line=lline[k],
            field=f"loss.{tid}",
            hint=hint,
        )

    bad = ~np.isfinite(loss)
    if bad.any():
        raise entry_error(
            bad,
            "non-finite loss {loss!r}",
            "losses must be finite; a diverged run cannot be simulated (leave "
            'a test out of "loss" if it was not evaluated)',
        )
    n0 = int(counts[0])
    if n0 < len(te.list):
        missing = np.ones(len(te.list), dtype=bool)
        missing[codes[:n0]] = False
        raise entry_error(
            missing[codes],
            "test {test!r} has no step-0 loss",
            "log every test example at step 0 (the initial losses)",
        )
    ptr = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    steps = np.repeat(np.asarray(lstep, dtype=np.int64), counts)
    rid = run_id if run_id is not None else _stem(path)
    if lrs and lr_lines:
        raise InputError(
            f'step without "lr" although {len(lrs)} other step(s) log it',
            path=label,
            line=lr_lines[0],
            field="lr",
            hint='log "lr" on every training step or on none',
        )
    return make_rundata(
        rid,
        np.asarray(batch_codes, dtype=np.int64),
        ex.array(),
        ptr,
        steps,
        codes,
        te.array(),
        loss,
        source=label,
        source_format="jsonl",
        lr=np.asarray(lrs, dtype=np.float64) if lrs else None,
        optimizer=optimizer,
    )

"""Encoding C: GPTDynamics run directories (``train_samples_id.json`` + ``all_loss_trajectory.out``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simfluence_cli.errors import InputError
from simfluence_cli.io._fields import _MISSING, _NUM, _Ids, _idstr, _json_lines, _step_int
from simfluence_cli.io.rundata import RunData, make_rundata

C_TRAIN = "train_samples_id.json"
C_LOSS = "all_loss_trajectory.out"


def _is_c_dir(d: Path) -> bool:
    return ((d / C_TRAIN).is_file() or (d / (C_TRAIN + ".gz")).is_file()) and (
        (d / C_LOSS).is_file() or (d / (C_LOSS + ".gz")).is_file()
    )


def _c_file(d: Path, name: str) -> Path:
    return d / name if (d / name).is_file() else d / (name + ".gz")


def read_gptdynamics(d: Path) -> RunData:
    """Parse and validate one GPTDynamics run directory (encoding C)."""
    train, lossf = _c_file(d, C_TRAIN), _c_file(d, C_LOSS)
    tl, ll = str(train), str(lossf)
    ex = _Ids()
    codes: list[int] = []
    sizes: list[int] = []
    tsteps: list[int] = []
    tlines: list[int] = []
    for lineno, obj in _json_lines(train):
        s = _step_int(obj.get("step", _MISSING), tl, lineno)
        if tsteps and s <= tsteps[-1]:
            raise InputError(
                f"{'duplicate' if s == tsteps[-1] else 'decreasing'} step {s} after "
                f"step {tsteps[-1]}",
                path=tl,
                line=lineno,
                field="step",
                hint="one line per training step, in order",
            )
        if tsteps and s != tsteps[-1] + 1:
            raise InputError(
                f"step {s} follows step {tsteps[-1]}: steps in between have no samples",
                path=tl,
                line=lineno,
                field="step",
                hint="every training step needs its samples_id",
            )
        ids = obj.get("samples_id", _MISSING)
        if type(ids) is not list or not ids:
            raise InputError(
                "missing"
                if ids is _MISSING
                else ("empty" if ids == [] else "expected a list of IDs"),
                path=tl,
                line=lineno,
                field="samples_id",
                hint='write "samples_id": [ids of the batch]',
            )
        for e in ids:
            codes.append(
                ex.code(e if type(e) is str and e else _idstr(e, tl, lineno, "samples_id"))
            )
        sizes.append(len(ids))
        tsteps.append(s)
        tlines.append(lineno)
    if not tsteps:
        raise InputError(
            "empty run: no training steps",
            path=tl,
            hint='one line {"step": s, "samples_id": [...]} per training step',
        )
    if tsteps[0] not in (0, 1):
        raise InputError(
            f"first training step is {tsteps[0]}",
            path=tl,
            line=tlines[0],
            field="step",
            hint="training steps must start at 0 or 1",
        )
    shift = 1 - tsteps[0]  # 0-based logs: the batch of step s produces checkpoint s+1
    T = tsteps[-1] + shift
    te = _Ids()
    lsteps: list[np.ndarray] = []
    lvals: list[np.ndarray] = []
    ltest: list[int] = []
    llines: list[int] = []
    for lineno, obj in _json_lines(lossf):
        if obj.get("id") is None:
            raise InputError(
                "missing",
                path=ll,
                line=lineno,
                field="id",
                hint='each line is {"id": test_id, "loss_trajectory": [...]}',
            )
        tid = _idstr(obj["id"], ll, lineno, "id")
        if tid in te.map:
            raise InputError(
                f"duplicate test id {tid!r}",
                path=ll,
                line=lineno,
                field="id",
                hint="one line per test example",
            )
        traj = obj.get("loss_trajectory")
        if type(traj) is not list or not traj:
            raise InputError(
                "missing or empty" if not traj else "expected a list",
                path=ll,
                line=lineno,
                field="loss_trajectory",
                hint='write "loss_trajectory": [{"step": s, "loss": x}, ...]',
            )
        st, va = [], []
        for p in traj:
            if type(p) is not dict:
                raise InputError(
                    'expected objects {"step", "loss"}',
                    path=ll,
                    line=lineno,
                    field="loss_trajectory",
                    hint='write "loss_trajectory": [{"step": s, "loss": x}, ...]',
                )
            st.append(_step_int(p.get("step", _MISSING), ll, lineno, "loss_trajectory.step"))
            v = p.get("loss", _MISSING)
            if type(v) not in _NUM:
                raise InputError(
                    "missing" if v is _MISSING else f"expected a number, got {json.dumps(v)[:40]}",
                    path=ll,
                    line=lineno,
                    field="loss_trajectory.loss",
                    hint="losses are JSON numbers",
                )
            va.append(v)
        st_a = np.asarray(st, dtype=np.int64)
        va_a = np.asarray(va, dtype=np.float64)
        if np.any(np.diff(st_a) <= 0):
            i = int(np.argmax(np.diff(st_a) <= 0)) + 1
            raise InputError(
                f"step {st_a[i]} after step {st_a[i - 1]} (duplicate or decreasing)",
                path=ll,
                line=lineno,
                field="loss_trajectory.step",
                hint="list the trajectory in increasing step order",
            )
        if not np.isfinite(va_a).all():
            i = int(np.argmax(~np.isfinite(va_a)))
            raise InputError(
                f"non-finite loss {va_a[i]!r} at step {st_a[i]}",
                path=ll,
                line=lineno,
                field="loss_trajectory.loss",
                hint="losses must be finite numbers",
            )
        if st_a[0] < 0 or st_a[-1] > T:
            raise InputError(
                f"loss steps {st_a[0]}..{st_a[-1]} outside 0..{T} (the training steps)",
                path=ll,
                line=lineno,
                field="loss_trajectory.step",
                hint=f"steps refer to checkpoints after that many updates; {tl} "
                f"has {T} training steps",
            )
        te.code(tid)
        lsteps.append(st_a)
        lvals.append(va_a)
        ltest.append(len(te.list) - 1)
        llines.append(lineno)
    if not ltest:
        raise InputError("no loss trajectories", path=ll, hint="one line per test example")
    s0 = min(int(s[0]) for s in lsteps)
    for s, tcode, lineno in zip(lsteps, ltest, llines):
        if s[0] != s0:
            raise InputError(
                f"test {te.list[tcode]!r} starts at step {s[0]}, others at {s0}",
                path=ll,
                line=lineno,
                field="loss_trajectory.step",
                hint="every test needs a loss at the first logged checkpoint",
            )
    notes = []
    ptr = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    bcodes = np.asarray(codes, dtype=np.int64)
    if s0 > 0:
        if s0 >= T:
            raise InputError(
                f"losses start at step {s0} but the run has {T} training steps",
                path=ll,
                field="loss_trajectory.step",
                hint="log the losses at the initial checkpoint (step 0)",
            )
        bcodes = bcodes[ptr[s0] :]
        ptr = ptr[s0:] - ptr[s0]
        notes.append(
            f"{d.name}: no step-0 losses; the run starts at checkpoint {s0} (its first "
            f"{s0} batch(es) dropped, steps renumbered from 0)"
        )
    counts = np.asarray([len(s) for s in lsteps], dtype=np.int64)
    steps = np.concatenate(lsteps) - s0
    tcodes = np.repeat(np.asarray(ltest, dtype=np.int64), counts)
    srcs = [{"path": tl, "sha256": None}, {"path": ll, "sha256": None}]
    return make_rundata(
        d.resolve().name,
        bcodes,
        ex.array(),
        ptr,
        steps,
        tcodes,
        te.array(),
        np.concatenate(lvals),
        source=str(d),
        source_format="gptdynamics",
        sources=srcs,
        notes=notes,
    )

"""Encoding C: GPTDynamics run directories (``train_samples_id.json`` + ``all_loss_trajectory.out``).

The published tree is ``runs/<task>/<run>/``: run directory names repeat across tasks and
example/test IDs are task-local integers, so the planner gives each run the id
``<task>/<run>`` when a tree is walked and ``id_prefix`` (e.g. ``"{task}:"``) can namespace the
IDs. ``metric='bleu'`` reads ``all_bleu_trajectory.out`` (values stored under ``"loss"``).
Lenient cases of the published data become notes: identical duplicate lines, ``NaN``/``null``
losses (= not logged), trajectories out of step order, tests first logged after the run's first
checkpoint (dropped: they have no initial loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simfluence_cli.errors import InputError
from simfluence_cli.io._fields import _MISSING, _NUM, _Ids, _idstr, _json_lines, _step_int
from simfluence_cli.io.rundata import RunData, make_rundata

C_TRAIN = "train_samples_id.json"
C_LOSS = "all_loss_trajectory.out"


def loss_file_name(metric: str = "loss") -> str:
    """``all_<metric>_trajectory.out``: the trajectory file of a GPTDynamics run."""
    return f"all_{metric}_trajectory.out"


def _is_c_dir(d: Path, metric: str = "loss") -> bool:
    lf = loss_file_name(metric)
    return ((d / C_TRAIN).is_file() or (d / (C_TRAIN + ".gz")).is_file()) and (
        (d / lf).is_file() or (d / (lf + ".gz")).is_file()
    )


def raw_output_hint(d: Path) -> str | None:
    """A message if ``d`` is a raw GPTfluence training output (``log.out`` + per-checkpoint
    ``<name>/<name>_checkpoint-K.out`` files) rather than a converted run directory."""
    if not (d / "log.out").is_file() or (d / C_TRAIN).is_file():
        return None
    try:
        subs = [p for p in d.iterdir() if p.is_dir()]
    except OSError:
        return None
    for sub in subs:
        if any(sub.glob("*_checkpoint-*.out")):
            return (
                f"{d} is a raw GPTfluence training output (log.out + {sub.name}/"
                f"{sub.name}_checkpoint-K.out); convert it first with GPTfluence's "
                "utils/construct_runs-data.py (utils/construct_runs-data-flan-multi-thread.py for "
                "instruction tuning, the *-metric* scripts for BLEU/ROUGE), then ingest the "
                "runs/ directory it writes"
            )
    return None


def _c_file(d: Path, name: str) -> Path:
    return d / name if (d / name).is_file() else d / (name + ".gz")


def read_gptdynamics(
    d: Path, run_id: str | None = None, metric: str = "loss", id_prefix: str = ""
) -> RunData:
    """Parse and validate one GPTDynamics run directory (encoding C).

    ``run_id`` defaults to the directory name; ``metric`` picks ``all_<metric>_trajectory.out``;
    ``id_prefix`` is prepended to every example and test ID (``{task}`` = the name of the run
    directory's parent).
    """
    d = Path(d)
    run_id = run_id or d.resolve().name
    prefix = id_prefix.replace("{task}", d.resolve().parent.name) if id_prefix else ""
    train, lossf = _c_file(d, C_TRAIN), _c_file(d, loss_file_name(metric))
    tl, ll = str(train), str(lossf)
    ex = _Ids()
    codes: list[int] = []
    sizes: list[int] = []
    tsteps: list[int] = []
    tlines: list[int] = []
    prev_ids = None
    n_dup_train = 0
    for lineno, obj in _json_lines(train):
        s = _step_int(obj.get("step", _MISSING), tl, lineno)
        if tsteps and s == tsteps[-1] and obj.get("samples_id") == prev_ids:
            n_dup_train += 1  # the same line logged twice (e.g. a repeated log line)
            continue
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
                ex.code(
                    prefix + (e if type(e) is str and e else _idstr(e, tl, lineno, "samples_id"))
                )
            )
        prev_ids = ids
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
    n_nan = n_dup_pts = n_sorted = 0
    dropped_empty: list[str] = []
    for lineno, obj in _json_lines(lossf):
        if obj.get("id") is None:
            raise InputError(
                "missing",
                path=ll,
                line=lineno,
                field="id",
                hint='each line is {"id": test_id, "loss_trajectory": [...]}',
            )
        tid = prefix + _idstr(obj["id"], ll, lineno, "id")
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
            if v is None:
                v = float("nan")  # null = not logged, like NaN
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
        nan = np.isnan(va_a)
        if nan.any():  # NaN / null = not logged at that checkpoint
            n_nan += int(nan.sum())
            st_a, va_a = st_a[~nan], va_a[~nan]
        if np.any(np.diff(st_a) < 0):
            n_sorted += 1
            o = np.argsort(st_a, kind="stable")
            st_a, va_a = st_a[o], va_a[o]
        dup = np.flatnonzero(np.diff(st_a) == 0)
        if len(dup):
            same = va_a[dup] == va_a[dup + 1]
            if not same.all():
                i = int(dup[np.argmin(same)]) + 1
                raise InputError(
                    f"step {st_a[i]} logged twice with different losses "
                    f"({va_a[i - 1]!r}, {va_a[i]!r})",
                    path=ll,
                    line=lineno,
                    field="loss_trajectory.step",
                    hint="log each checkpoint once per test",
                )
            n_dup_pts += len(dup)
            keep = np.ones(len(st_a), dtype=bool)
            keep[dup + 1] = False
            st_a, va_a = st_a[keep], va_a[keep]
        if len(st_a) == 0:
            dropped_empty.append(tid)
            continue
        if not np.isfinite(va_a).all():
            i = int(np.argmax(~np.isfinite(va_a)))
            raise InputError(
                f"non-finite loss {float(va_a[i])!r} at step {int(st_a[i])}",
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
    notes = []
    name = run_id
    if n_dup_train:
        notes.append(f"{name}: {n_dup_train} identical repeated line(s) in {C_TRAIN} skipped")
    if n_nan:
        notes.append(f"{name}: {n_nan} NaN/null loss(es) read as not logged")
    if n_sorted:
        notes.append(f"{name}: {n_sorted} trajectory(ies) not in step order were sorted")
    if n_dup_pts:
        notes.append(f"{name}: {n_dup_pts} identical repeated loss point(s) skipped")
    if dropped_empty:
        notes.append(
            f"{name}: {len(dropped_empty)} test(s) with no logged loss dropped "
            f"({', '.join(dropped_empty[:3])}{', ...' if len(dropped_empty) > 3 else ''})"
        )
    s0 = min(int(s[0]) for s in lsteps)
    late = [k for k, s in enumerate(lsteps) if s[0] != s0]
    if late:
        # a test first logged after the run's first checkpoint has no initial loss: dropped
        names = [te.list[ltest[k]] for k in late]
        first = sorted({int(lsteps[k][0]) for k in late})
        notes.append(
            f"{name}: {len(late)} test(s) first logged after checkpoint {s0} (at "
            f"{', '.join(map(str, first[:3]))}{', ...' if len(first) > 3 else ''}) dropped: "
            f"no initial loss ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        )
        keep = [k for k, s in enumerate(lsteps) if s[0] == s0]
        te2 = _Ids()
        for k in keep:
            te2.code(te.list[ltest[k]])
        lsteps = [lsteps[k] for k in keep]
        lvals = [lvals[k] for k in keep]
        ltest = list(range(len(keep)))
        te = te2
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
            f"{name}: no step-0 losses; the run starts at checkpoint {s0} (its first "
            f"{s0} batch(es) dropped, steps renumbered from 0)"
        )
    counts = np.asarray([len(s) for s in lsteps], dtype=np.int64)
    steps = np.concatenate(lsteps) - s0
    tcodes = np.repeat(np.asarray(ltest, dtype=np.int64), counts)
    srcs = [{"path": tl, "sha256": None}, {"path": ll, "sha256": None}]
    return make_rundata(
        run_id,
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

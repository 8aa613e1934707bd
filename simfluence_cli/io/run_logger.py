"""Log a training run as encoding A (JSON Lines) from any training loop.

One JSON object per logged step::

    {"step": 0, "batch": [], "loss": {"t0": 2.31, "t1": 1.87}}
    {"step": 1, "batch": ["e17", "e203", "e5", "e88"], "loss": {"t0": 2.28, "t1": 1.90}}
    {"step": 2, "batch": ["e4", "e9", "e61", "e2"]}

Optional extras: ``RunLogger(..., optimizer="AdamW(...)")`` writes ``"optimizer"`` on the step-0
line (a free-form description of the run's optimizer), and ``step(..., lr=0.01)`` writes the
learning rate that step's update used as ``"lr"``. ``simfluence ingest`` accepts both and does
not store them yet.

Step 0 is the shared starting checkpoint (losses, no batch); the loss at step t is measured
*after* the update on step t's batch; a step without ``"loss"`` means the test set was not
evaluated then. A ``.gz`` suffix writes gzip (deterministic: no name, mtime 0).

The file appears atomically when the logger closes: lines stream to a temp file next to the
target, which is moved into place by ``os.replace``. If the ``with`` block raises (or
:meth:`RunLogger.abort` is called), no file is left behind.

Interrupted training that resumes from a checkpoint: save :meth:`RunLogger.state_dict` with the
checkpoint and pass it back as ``RunLogger(path, ..., resume=state)`` in the resumed process; the
log continues after the checkpoint's step, so steps trained after the checkpoint and lost with the
interruption are not in the log (the training redoes them).

>>> with RunLogger("runs/r1.jsonl.gz", test_ids=["t0", "t1"]) as log:   # doctest: +SKIP
...     log.initial([2.31, 1.87])
...     log.step(["e17", "e203", "e5", "e88"], [2.28, 1.90])
...     log.step(["e4", "e9", "e61", "e2"])            # test set not evaluated
"""

from __future__ import annotations

import gzip
import json
import numbers
import os
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from simfluence_cli.errors import InputError

__all__ = ["RunLogger", "RunLogError"]


class RunLogError(InputError, ValueError):
    """Invalid data passed to :class:`RunLogger` (also a ``ValueError``)."""


def _as_id(x, path: str, field: str) -> str:
    """IDs are written as strings; ints (Python or numpy) are converted, other types refused."""
    if isinstance(x, str):
        if not x:
            raise RunLogError(
                "empty ID", path=path, field=field, hint="IDs must be non-empty strings or integers"
            )
        return x
    if isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_)):
        return str(int(x))
    raise RunLogError(
        f"ID {x!r} has type {type(x).__name__}",
        path=path,
        field=field,
        hint="IDs must be strings or integers (call .tolist() on tensors/arrays of ints)",
    )


def _list_or(x):
    """``x`` as a list if it is a list or tuple (state loaded from JSON has lists), else ``x``."""
    return list(x) if isinstance(x, (list, tuple)) else x


class CommitOnExit:
    """The loggers' ``with`` protocol: leaving the block commits the log (``close()``); an
    exception in it discards the log (``abort()``) and propagates."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


class RunLogger(CommitOnExit):
    """Write one run's curriculum and per-example test losses as encoding A.

    Parameters
    ----------
    path:
        Target file, ``*.jsonl`` or ``*.jsonl.gz``. Run id on ingest = file stem, unless ``run_id``.
    run_id:
        Optional; written as ``"run"`` on every line (overrides the file-stem run id on ingest).
    test_ids:
        Test example IDs, fixed once; lets :meth:`initial` / :meth:`step` take losses as a
        sequence/array aligned with them, and checks dict keys against them.
    precision:
        ``None`` (default): shortest round-trip ``repr`` of each float64. An int ``p``: round to
        ``p`` significant digits first (smaller files). Learning rates are always written exactly.
    optimizer:
        Optional free-form description of the optimizer (e.g. ``"AdamW(betas=(0.9, 0.999))"``),
        written once, as ``"optimizer"`` on the step-0 line.
    resume:
        A :meth:`state_dict` saved with a training checkpoint: the log starts with the steps it
        holds (0..k) and continues at step k + 1. Its run id and test IDs must be this logger's.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        run_id: str | None = None,
        *,
        test_ids: Iterable | None = None,
        precision: int | None = None,
        optimizer: str | None = None,
        resume: Mapping | None = None,
    ):
        self.path = Path(path)
        if optimizer is not None and (not isinstance(optimizer, str) or not optimizer):
            raise RunLogError(
                f"optimizer must be a non-empty string, got {optimizer!r}",
                path=str(self.path),
                field="optimizer",
            )
        self._opt_text = "" if optimizer is None else f', "optimizer": {json.dumps(optimizer)}'
        self.run_id = None if run_id is None else _as_id(run_id, str(self.path), "run")
        if precision is not None and (
            not isinstance(precision, numbers.Integral) or not 1 <= precision <= 17
        ):
            raise RunLogError(
                f"precision must be an integer in 1..17, got {precision!r}",
                path=str(self.path),
                field="precision",
            )
        self.precision = None if precision is None else int(precision)
        self.test_ids: list[str] | None = None
        self._keys: list[str] | None = None
        if test_ids is not None:
            ids = [_as_id(t, str(self.path), "test_ids") for t in test_ids]
            if not ids:
                raise RunLogError("test_ids is empty", path=str(self.path), field="test_ids")
            if len(set(ids)) != len(ids):
                raise RunLogError(
                    "test_ids contains duplicates", path=str(self.path), field="test_ids"
                )
            self.test_ids = ids
            self._keys = [json.dumps(t) + ": " for t in ids]
            self._known = set(ids)
        self._run_suffix = "" if self.run_id is None else f', "run": {json.dumps(self.run_id)}'
        self.last_step: int | None = None  # last step written; None before initial()
        self.closed = False
        resume_lines = None if resume is None else self._check_resume(resume)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self._raw = os.fdopen(fd, "wb")
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the final file the usual mode
        if self.path.name.endswith(".gz"):
            # filename="" and mtime=0 keep the bytes a pure function of the content.
            self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
            self._fh = self._gz
        else:
            self._gz = None
            self._fh = self._raw
        if resume_lines:
            self._fh.write("".join(resume_lines).encode("utf-8"))
            self.last_step = len(resume_lines) - 1

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict:
        """This log so far, to save with a training checkpoint and resume from
        (``RunLogger(..., resume=state)``): plain lists and strings (``torch.save``, JSON).
        The lines are read back from the file being written (not kept in memory); with gzip,
        the stream is sync-flushed first, which changes its bytes but not its content."""
        self._check_open()
        self._fh.flush()  # GzipFile: Z_SYNC_FLUSH, so everything written so far decompresses
        self._raw.flush()
        data = Path(self._tmp).read_bytes()
        if self._gz is not None:
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
        return {
            "simfluence_run_log": 1,
            "path": str(self.path),
            "run_id": self.run_id,
            "test_ids": self.test_ids,
            "lines": data.decode("utf-8").splitlines(keepends=True),
        }

    def _check_resume(self, state) -> list[str]:
        """The lines of a :meth:`state_dict` to resume from, checked against this logger."""
        path = str(self.path)
        if not isinstance(state, Mapping) or state.get("simfluence_run_log") != 1:
            raise RunLogError(
                "resume= is not a RunLogger.state_dict()",
                path=path,
                field="resume",
                hint="pass the state_dict() saved with the checkpoint",
            )
        lines = state.get("lines")
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise RunLogError("resume= has no list of lines", path=path, field="resume")
        for name, mine in (("run_id", self.run_id), ("test_ids", self.test_ids)):
            theirs = state.get(name)
            if theirs is not None and mine is not None and _list_or(theirs) != _list_or(mine):
                raise RunLogError(
                    f"resume= was saved with other {name} than this logger's",
                    path=path,
                    field="resume",
                    hint=f"resume with the {name} the run started with",
                )
        return lines

    # ------------------------------------------------------------------ writing
    def initial(self, losses) -> None:
        """Log step 0: the losses at the shared starting checkpoint (no batch)."""
        self._check_open()
        if self.last_step is not None:
            raise RunLogError(
                "initial() called twice (step 0 already written)", path=str(self.path), field="step"
            )
        if losses is None:
            raise RunLogError(
                "step 0 needs the initial losses",
                path=str(self.path),
                field="loss",
                hint="evaluate the test set at the starting checkpoint and pass the losses",
            )
        self._write(0, [], losses)

    def step(self, batch, losses=None, *, step: int | None = None, lr: float | None = None) -> int:
        """Log one training step: the example IDs of its batch and the test losses measured
        after the update (``None`` when the test set was not evaluated). Returns the step number.

        ``step`` is counted automatically (1, 2, ...); if passed it must be the next one:
        the simulator needs every step's batch, so call this once per optimizer step.
        ``lr``: the learning rate this step's update used (e.g. ``sched.get_last_lr()[0]``
        before ``sched.step()``), written as ``"lr"``; a finite number >= 0.
        """
        self._check_open()
        if self.last_step is None:
            raise RunLogError(
                "step() before initial()",
                path=str(self.path),
                field="step",
                hint="log the starting checkpoint's losses with initial(losses) first",
            )
        expected = self.last_step + 1
        if step is not None:
            if not isinstance(step, numbers.Integral) or isinstance(step, bool):
                raise RunLogError(
                    f"step must be an integer, got {step!r}", path=str(self.path), field="step"
                )
            if int(step) == 0:
                raise RunLogError(
                    "step 0 cannot have a batch",
                    path=str(self.path),
                    field="batch",
                    hint="step 0 is the starting checkpoint: use initial(losses)",
                )
            if int(step) != expected:
                raise RunLogError(
                    f"step {int(step)} out of order: expected {expected}",
                    path=str(self.path),
                    field="step",
                    hint="call step() once per optimizer step, in order "
                    "(losses=None when the test set was not evaluated)",
                )
        if isinstance(batch, (str, bytes)):
            raise RunLogError(
                "batch must be a list of example IDs, got a single string",
                path=str(self.path),
                field="batch",
            )
        if hasattr(batch, "tolist"):
            batch = batch.tolist()
        ids = [_as_id(e, str(self.path), "batch") for e in batch]
        if not ids:
            raise RunLogError(
                f"empty batch at step {expected}",
                path=str(self.path),
                field="batch",
                hint="every step after 0 trains on at least one example",
            )
        lr_text = None
        if lr is not None:
            if (
                not isinstance(lr, numbers.Real)
                or isinstance(lr, (bool, np.bool_))
                or not np.isfinite(float(lr))
                or float(lr) < 0
            ):
                raise RunLogError(
                    f"step {expected}: lr must be a finite number >= 0, got {lr!r}",
                    path=str(self.path),
                    field="lr",
                )
            lr_text = repr(float(lr))
        self._write(expected, ids, losses, lr_text)
        return expected

    def _loss_text(self, losses, step: int) -> str | None:
        path = str(self.path)
        if losses is None:
            return None
        if isinstance(losses, Mapping):
            if not losses:
                return None
            keys = [_as_id(k, path, "loss") for k in losses]
            if self.test_ids is not None:
                unknown = [k for k in keys if k not in self._known]
                if unknown:
                    raise RunLogError(
                        f"step {step}: unknown test id {unknown[0]!r}",
                        path=path,
                        field="loss",
                        hint="losses must be keyed by the test_ids given to RunLogger",
                    )
            try:
                vals = np.array([float(v) for v in losses.values()], dtype=np.float64)
            except (TypeError, ValueError):
                raise RunLogError(
                    f"step {step}: loss values must be numbers", path=path, field="loss"
                ) from None
            keys = [json.dumps(k) + ": " for k in keys]
        else:
            if self.test_ids is None:
                raise RunLogError(
                    "losses given as a sequence but no test_ids",
                    path=path,
                    field="loss",
                    hint="pass test_ids=[...] to RunLogger, or give losses as {test_id: loss}",
                )
            try:
                vals = np.asarray(losses, dtype=np.float64)
            except (TypeError, ValueError):
                raise RunLogError(
                    f"step {step}: losses must be numbers", path=path, field="loss"
                ) from None
            if vals.ndim != 1:  # accept (1, M) / (M, 1) rows and columns, and a scalar for M = 1
                vals = vals.squeeze().reshape(-1) if vals.squeeze().ndim <= 1 else vals
            if vals.ndim != 1:
                raise RunLogError(
                    f"step {step}: losses have shape {vals.shape}, expected ({len(self.test_ids)},)",
                    path=path,
                    field="loss",
                    hint="give one loss per test id, in test_ids order",
                )
            if vals.size != len(self.test_ids):
                raise RunLogError(
                    f"step {step}: {vals.size} losses for {len(self.test_ids)} test ids",
                    path=path,
                    field="loss",
                    hint="give one loss per test id, in test_ids order",
                )
            keys = self._keys
        bad = ~np.isfinite(vals)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            name = keys[i][:-2]
            raise RunLogError(
                f"step {step}: loss of {name} is {float(vals[i])!r}",
                path=path,
                field="loss",
                hint="losses must be finite numbers (check for divergence)",
            )
        if self.precision is not None:
            fmt = f".{self.precision}g"
            txt = [repr(float(format(v, fmt))) for v in vals.tolist()]
        else:
            txt = [repr(v) for v in vals.tolist()]
        return ", ".join(k + v for k, v in zip(keys, txt))

    def _write(self, step: int, ids: list[str], losses, lr_text: str | None = None) -> None:
        loss = self._loss_text(losses, step)
        line = f'{{"step": {step}, "batch": {json.dumps(ids)}'
        if step == 0:
            line += self._opt_text
        if lr_text is not None:
            line += f', "lr": {lr_text}'
        if loss is not None:
            line += f', "loss": {{{loss}}}'
        line += self._run_suffix + "}\n"
        self._fh.write(line.encode("utf-8"))
        self.last_step = step

    # ------------------------------------------------------------------ lifecycle
    def _check_open(self) -> None:
        if self.closed:
            raise RunLogError("logger is closed", path=str(self.path))

    def _discard(self) -> None:
        try:
            if self._gz is not None:
                self._gz.close()
            self._raw.close()
        except Exception:
            pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def abort(self) -> None:
        """Stop without writing: the target file is left as it was."""
        if not self.closed:
            self.closed = True
            self._discard()

    def close(self) -> None:
        """Finish the file and move it into place atomically (fsync, then ``os.replace``)."""
        if self.closed:
            return
        if self.last_step is None or self.last_step == 0:
            self.abort()
            what = "nothing was logged" if self.last_step is None else "only step 0 was logged"
            raise RunLogError(
                f"empty run: {what}; no file written",
                path=str(self.path),
                hint="call initial(losses) and then step(batch, losses) for each training step",
            )
        self.closed = True
        try:
            if self._gz is not None:
                self._gz.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self._discard()
            raise

    def __enter__(self) -> RunLogger:
        return self

    def __del__(self):  # a logger dropped without close() leaves no temp file behind
        try:
            if not self.closed:
                self.abort()
        except Exception:
            pass

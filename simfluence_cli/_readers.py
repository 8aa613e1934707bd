"""Training-log readers: three encodings to one canonical per-run form (:class:`RunData`).

- ``jsonl`` (encoding A): one JSON Lines file per run, ``<run>.jsonl[.gz]``, one object per
  training step ``{"step": t, "batch": [ids], "loss": {test_id: loss}}``; step 0 holds the
  initial losses and no batch; ``loss`` may be partial or absent after step 0; an optional
  ``"run"`` key overrides the run id (default: the file stem); integer IDs become strings.
- ``table`` (encoding B): long tables, CSV or Parquet (plain or .gz), any number of runs per
  file: curriculum ``run,step,example_id`` (one row per example of a batch, in batch order) and
  losses ``run,step,test_id,loss``. Which is which is told from the columns.
- ``gptdynamics`` (encoding C): a GPTDynamics run directory with ``train_samples_id.json``
  (``{"step", "samples_id"}`` per line) and ``all_loss_trajectory.out``
  (``{"id", "loss_trajectory": [{"step", "loss"}]}`` per line); run id = directory name.

Readers stream: JSON files line by line, CSV through pyarrow's streaming reader in large
blocks, Parquet by row batches; validation is vectorised (numpy/arrow) per run or per block.
Errors are :class:`InputError` with ``FILE:LINE`` (``FILE:row N`` for Parquet), the field and
the fix.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, UsageError

__all__ = ["RunData", "FORMATS", "iter_runs", "plan_inputs", "run_from_runset", "file_sha256"]

FORMATS = {"jsonl": "A: JSON Lines, one file per run",
           "table": "B: long tables (CSV/Parquet): run,step,example_id and run,step,test_id,loss",
           "gptdynamics": "C: GPTDynamics run directories"}
FORMAT_ALIASES = {"a": "jsonl", "jsonl": "jsonl", "b": "table", "table": "table", "csv": "table",
                  "parquet": "table", "c": "gptdynamics", "gptdynamics": "gptdynamics"}

C_TRAIN = "train_samples_id.json"
C_LOSS = "all_loss_trajectory.out"


# --------------------------------------------------------------------------------------------
# canonical per-run content
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class RunData:
    """One validated run in canonical form (IDs sorted; losses sorted by step then test id)."""

    run_id: str
    example_ids: np.ndarray  # object (n,), sorted unique ids used by the curriculum
    ex_codes: np.ndarray  # int32 (entries,), positions in example_ids, in batch order
    batch_ptr: np.ndarray  # int64 (T+1,)
    test_ids: np.ndarray  # object (m,), sorted unique
    loss_step: np.ndarray  # int64 (rows,)
    loss_test: np.ndarray  # int32 (rows,), positions in test_ids
    loss: np.ndarray  # float64 (rows,)
    source: str = "python"
    source_format: str = "python"
    sources: list[dict] = field(default_factory=list)  # [{"path", "sha256"}]
    notes: list[str] = field(default_factory=list)
    tags: tuple[str, ...] = ()
    _hash: str | None = None

    @property
    def n_steps(self) -> int:
        return len(self.batch_ptr) - 1

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical content: the same run gives the same hash from any format."""
        if self._hash is None:
            h = hashlib.sha256(b"simfluence-run-content-v1\n")
            for arr in (self.example_ids, self.test_ids):
                h.update(json.dumps(list(arr), ensure_ascii=False).encode())
                h.update(b"\n")
            h.update(np.ascontiguousarray(self.batch_ptr, "<i8").tobytes())
            h.update(np.ascontiguousarray(self.ex_codes, "<i4").tobytes())
            h.update(np.ascontiguousarray(self.loss_step, "<i8").tobytes())
            h.update(np.ascontiguousarray(self.loss_test, "<i4").tobytes())
            h.update(np.ascontiguousarray(self.loss + 0.0, "<f8").tobytes())  # -0.0 -> 0.0
            self._hash = h.hexdigest()
        return self._hash

    def stats(self) -> dict:
        sizes = np.diff(self.batch_ptr)
        return {
            "steps": int(self.n_steps),
            "batch_size_min": int(sizes.min()) if len(sizes) else 0,
            "batch_size_max": int(sizes.max()) if len(sizes) else 0,
            "n_examples": int(len(self.example_ids)),
            "n_tests": int(len(self.test_ids)),
            "loss_steps": int(len(self.loss_step) and 1 + np.count_nonzero(np.diff(self.loss_step))),
            "curriculum_rows": int(len(self.ex_codes)),
            "loss_rows": int(len(self.loss)),
        }


def canon_ids(codes: np.ndarray, universe) -> tuple[np.ndarray, np.ndarray]:
    """Re-code ``codes`` (indices into ``universe``) to indices into the sorted used ids.

    O(len(codes) + len(universe)) with a lookup table; only the used ids are sorted.
    """
    codes = np.asarray(codes)
    uni = universe if isinstance(universe, np.ndarray) else np.asarray(universe, dtype=object)
    if not len(codes):
        return np.asarray([], dtype=object), np.zeros(0, dtype=np.int32)
    present = np.zeros(len(uni), dtype=bool)
    present[codes] = True
    used = np.flatnonzero(present)
    ids = np.asarray(uni[used], dtype=object)
    order = np.argsort(ids, kind="stable")
    lut = np.empty(len(uni), dtype=np.int32)
    lut[used[order]] = np.arange(len(used), dtype=np.int32)
    return ids[order], lut[codes]


def make_rundata(run_id: str, ex_codes, ex_universe, batch_ptr, loss_step, test_codes,
                 test_universe, loss, **meta) -> RunData:
    """Canonicalise already-validated arrays (IDs sorted, losses ordered by step, test id)."""
    ex_ids, ex_c = canon_ids(ex_codes, ex_universe)
    te_ids, te_c = canon_ids(test_codes, test_universe)
    loss_step = np.asarray(loss_step, dtype=np.int64)
    loss = np.asarray(loss, dtype=np.float64)
    key = loss_step * max(len(te_ids), 1) + te_c
    if len(key) > 1 and not bool(np.all(key[1:] > key[:-1])):  # logs are usually in order
        order = np.argsort(key, kind="stable")
        loss_step, te_c, loss = loss_step[order], te_c[order], loss[order]
    return RunData(run_id, ex_ids, ex_c, np.asarray(batch_ptr, dtype=np.int64),
                   te_ids, loss_step, te_c, loss, **meta)


def run_from_runset(runset, run, source: str = "python") -> RunData:
    """A :class:`RunData` from a ``runs.Run`` of a ``RunSet`` (validated like a log)."""
    where = f"run {run.run_id!r}"
    steps = np.asarray(run.loss_steps, dtype=np.int64)
    L = np.asarray(run.losses, dtype=np.float64)
    ptr = np.asarray(run.batch_ptr, dtype=np.int64)
    if not run.run_id:
        raise InputError("empty run id", path=source, field="run_id", hint="give every run a name")
    if len(ptr) < 2:
        raise InputError(f"{where} has no training steps", path=source, field="batch_ptr",
                         hint="a run needs at least one step with a batch")
    if np.any(np.diff(ptr) <= 0):
        t = int(np.flatnonzero(np.diff(ptr) <= 0)[0]) + 1
        raise InputError(f"{where}: step {t} has an empty batch", path=source, field="batch",
                         hint="every training step 1..T needs the IDs it trained on")
    if L.ndim != 2 or L.shape[0] != len(steps) or not len(steps) or steps[0] != 0:
        raise InputError(f"{where}: losses must be (K, M) with loss_steps starting at 0",
                         path=source, field="loss_steps", hint="log the initial losses at step 0")
    if np.any(np.diff(steps) <= 0) or steps[-1] > run.n_steps:
        raise InputError(f"{where}: loss_steps must increase and stay within 0..{run.n_steps}",
                         path=source, field="loss_steps", hint="fix the logged step numbers")
    if np.isinf(L).any():
        raise InputError(f"{where}: non-finite loss", path=source, field="loss",
                         hint="losses must be finite numbers; NaN means 'not logged'")
    logged = ~np.isnan(L)
    present = logged.any(axis=0)
    if np.any(present & ~logged[0]):
        j = int(np.flatnonzero(present & ~logged[0])[0])
        raise InputError(f"{where}: test {runset.test_ids[j]!r} has no step-0 loss", path=source,
                         field="loss", hint="log every test example at step 0 (initial losses)")
    if not present.any():
        raise InputError(f"{where}: no losses", path=source, field="loss",
                         hint="log the initial losses at step 0")
    k, j = np.nonzero(logged)
    return make_rundata(run.run_id, run.batch_idx, runset.example_ids, ptr, steps[k], j,
                        runset.test_ids, L[k, j], source=source, source_format="python",
                        tags=tuple(run.tags or ()))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# input planning: which files are which encoding
# --------------------------------------------------------------------------------------------

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def _base(name: str) -> str:
    name = name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _is_c_dir(d: Path) -> bool:
    return ((d / C_TRAIN).is_file() or (d / (C_TRAIN + ".gz")).is_file()) and \
        ((d / C_LOSS).is_file() or (d / (C_LOSS + ".gz")).is_file())


def _c_file(d: Path, name: str) -> Path:
    return d / name if (d / name).is_file() else d / (name + ".gz")


def _open_text(path: Path, mode: str = "rb"):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, mode)
    return open(path, mode)


def _sniff(path: Path) -> str | None:
    try:
        with _open_text(path) as fh:
            head = fh.read(4096)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if head[:4] == b"PAR1":
        return "table"
    text = head.lstrip()
    if text.startswith(b"{"):
        return "jsonl"
    first = text.split(b"\n", 1)[0].decode("utf-8", "replace")
    if "," in first and "run" in [c.strip().strip('"') for c in first.split(",")]:
        return "table"
    return None


@dataclass
class Plan:
    jsonl: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    gptdynamics: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # files skipped while walking directories

    @property
    def n_sources(self) -> int:
        return len(self.jsonl) + len(self.tables) + len(self.gptdynamics)


def _walk(d: Path, forced: str | None, plan: Plan) -> None:
    if forced in (None, "gptdynamics") and _is_c_dir(d):
        plan.gptdynamics.append(d)
        return
    try:
        entries = sorted(d.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"cannot list directory: {exc.strerror}", path=str(d),
                         hint="check the permissions") from None
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir():
            _walk(p, forced, plan)
            continue
        base = _base(p.name)
        if base.endswith(_JSONL_SUFFIXES) and forced in (None, "jsonl"):
            plan.jsonl.append(p)
        elif base.endswith(_TABLE_SUFFIXES) and forced in (None, "table"):
            if _walked_table_is_log(p, plan):
                plan.tables.append(p)
        elif forced == "jsonl" and base.endswith(".json") and base != C_TRAIN:
            plan.jsonl.append(p)


def _walked_table_is_log(p: Path, plan: Plan) -> bool:
    """A table met while walking a directory is a run log only if it has a ``run`` column
    (e.g. ``examples.csv`` or a TracIn score table next to the logs is skipped with a note);
    unreadable tables are kept so the reader reports them. Named files are never skipped."""
    try:
        cols, _ = table_header(p)
    except InputError:
        return True
    if "run" in cols:
        return True
    plan.notes.append(f"skipped {p}: columns {','.join(cols)[:80]} are not a run log table "
                      "(no 'run' column)")
    return False


def plan_inputs(paths: Sequence[str | os.PathLike], format: str | None = None) -> Plan:
    """Expand paths (files and directories) into the sources of each encoding."""
    forced = None
    if format is not None:
        forced = FORMAT_ALIASES.get(str(format).lower())
        if forced is None:
            raise UsageError(f"unknown --format {format!r}; use jsonl (A), table (B) or "
                             "gptdynamics (C)")
    if not paths:
        raise UsageError("no input paths; give log files or directories to ingest")
    plan = Plan()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError("no such file or directory", path=str(p),
                             hint="check the path (directories are walked for *.jsonl[.gz], "
                                  "*.csv[.gz], *.parquet and GPTDynamics run directories)")
        if p.is_dir():
            before = plan.n_sources
            _walk(p, forced, plan)
            if plan.n_sources == before:
                raise InputError("no training logs found in this directory", path=str(p),
                                 hint="expected *.jsonl[.gz] (one run per file), *.csv[.gz] / "
                                      "*.parquet long tables, or GPTDynamics run directories "
                                      f"({C_TRAIN} + {C_LOSS}); use --format to force one")
            continue
        base = _base(p.name)
        kind = forced
        if base in (C_TRAIN, C_LOSS) and forced in (None, "gptdynamics"):
            if not _is_c_dir(p.parent):
                raise InputError(f"GPTDynamics run directory is incomplete: needs both {C_TRAIN} "
                                 f"and {C_LOSS}", path=str(p.parent),
                                 hint="put both files in the run's directory")
            plan.gptdynamics.append(p.parent)
            continue
        if kind is None:
            if base.endswith(_JSONL_SUFFIXES):
                kind = "jsonl"
            elif base.endswith(_TABLE_SUFFIXES):
                kind = "table"
            else:
                kind = _sniff(p)
        if kind is None:
            raise InputError("cannot tell the log encoding from the name or contents", path=str(p),
                             hint="name files *.jsonl / *.csv / *.parquet, or pass "
                                  "--format jsonl|table|gptdynamics")
        if kind == "gptdynamics":
            raise InputError("--format gptdynamics expects run directories (or their "
                             f"{C_TRAIN} / {C_LOSS})", path=str(p),
                             hint="pass the run directory, or drop --format to detect the encoding")
        (plan.jsonl if kind == "jsonl" else plan.tables).append(p)
    # the same file named twice (e.g. a file and its directory) is read once
    for name in ("jsonl", "tables", "gptdynamics"):
        seen: dict[Path, Path] = {}
        for p in getattr(plan, name):
            seen.setdefault(p.resolve(), p)
        setattr(plan, name, list(seen.values()))
    return plan


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------

_MISSING = object()
_NUM = (float, int)


def _loads_line(raw: bytes, path: str, lineno: int):
    try:
        return json.loads(raw)
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        col = getattr(exc, "colno", None)
        raise InputError(f"malformed JSON ({msg}" + (f" at column {col})" if col else ")"),
                         path=path, line=lineno,
                         hint="each line must be one complete JSON object") from None
    except RecursionError:
        raise InputError("malformed JSON (nested too deeply)", path=path, line=lineno,
                         hint="each line must be one flat JSON object") from None


def _idstr(v, path: str, lineno, fld: str) -> str:
    t = type(v)
    if t is str:
        if not v:
            raise InputError("empty ID", path=path, line=lineno, field=fld,
                             hint="IDs must be non-empty strings or integers")
        return v
    if t is int:
        return str(v)
    raise InputError(f"expected a string or integer ID, got {json.dumps(v)[:40]}", path=path,
                     line=lineno, field=fld, hint="write IDs as \"e17\" or 17")


def _step_int(v, path: str, lineno, fld: str = "step") -> int:
    if type(v) is int:
        return v
    if v is _MISSING or v is None:
        raise InputError("missing", path=path, line=lineno, field=fld,
                         hint="every line needs an integer \"step\" (0 = initial losses)")
    if type(v) is float and v.is_integer():
        return int(v)
    raise InputError(f"expected an integer step, got {json.dumps(v)[:40]}", path=path,
                     line=lineno, field=fld, hint="steps are integers 0, 1, 2, ...")


def _check_numbers(vals: list, keys, path: str, lineno: int, prefix: str = "loss") -> None:
    for k, v in zip(keys, vals):
        if type(v) not in _NUM:
            raise InputError(f"expected a number, got {json.dumps(v)[:40]}", path=path,
                             line=lineno, field=f"{prefix}.{k}" if k is not None else prefix,
                             hint="losses are JSON numbers; leave a test out of the object if it "
                                  "was not evaluated at that step")


class _Ids:
    """Insertion-ordered string -> int code table."""

    __slots__ = ("map", "list")

    def __init__(self):
        self.map: dict[str, int] = {}
        self.list: list[str] = []

    def code(self, s: str) -> int:
        c = self.map.get(s)
        if c is None:
            c = self.map[s] = len(self.list)
            self.list.append(s)
        return c

    def codes(self, values) -> np.ndarray:
        return np.fromiter((self.code(v) for v in values), dtype=np.int64, count=len(values))

    def array(self) -> np.ndarray:
        return np.asarray(self.list, dtype=object)


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
    for lineno, obj in _json_lines(path, object_hint='write {"step": t, "batch": [...], '
                                                     '"loss": {...}} per line'):
        step = obj.get("step", _MISSING)
        if type(step) is not int:
            step = _step_int(step, label, lineno)
        r = obj.get("run")
        if r is not None:
            if type(r) is not str or not r:
                raise InputError("expected a non-empty string", path=label, line=lineno,
                                 field="run", hint="\"run\" names the run; omit it to use "
                                                   "the file name")
            if run_id is None:
                run_id = r
            elif r != run_id:
                raise InputError(f"run {r!r} differs from {run_id!r} on earlier lines",
                                 path=label, line=lineno, field="run",
                                 hint="one file holds one run; split the file per run")
        if step < 0:
            raise InputError(f"negative step {step}", path=label, line=lineno,
                             field="step", hint="steps are 0 (initial losses), 1, 2, ...")
        if step <= prev:
            what = "duplicate" if step == prev else "decreasing"
            raise InputError(f"{what} step {step} after step {prev}", path=label,
                             line=lineno, field="step",
                             hint="write one line per training step, in order")
        batch = obj.get("batch")
        if prev < 0:
            if step != 0:
                raise InputError(f"first step is {step}: missing step 0 (initial losses)",
                                 path=label, line=lineno, field="step",
                                 hint='start with {"step": 0, "batch": [], "loss": {...}} '
                                      "measured before training")
            if batch:
                raise InputError("a batch on step 0", path=label, line=lineno,
                                 field="batch",
                                 hint="step 0 is the starting checkpoint: use \"batch\": [] "
                                      "and log the first batch as step 1")
        else:
            if step != prev + 1:
                raise InputError(f"step {step} follows step {prev}: step(s) "
                                 f"{prev + 1}..{step - 1} have no batch", path=label,
                                 line=lineno, field="step",
                                 hint="log every training step's batch (omit \"loss\" on "
                                      "steps without evaluation)")
            if type(batch) is not list or not batch:
                got = "missing" if batch is None else (
                    "empty" if batch == [] else f"expected a list of IDs, got "
                                                f"{json.dumps(batch)[:40]}")
                raise InputError(got, path=label, line=lineno, field="batch",
                                 hint="every step t >= 1 lists the IDs it trained on, "
                                      'e.g. "batch": ["e17", "e203"]')
            for e in batch:
                if type(e) is not str or not e:
                    e = _idstr(e, label, lineno, "batch")
                c = ex_map.get(e)
                if c is None:
                    c = ex.code(e)
                batch_codes.append(c)
            sizes.append(len(batch))
        prev = step
        loss = obj.get("loss")
        if loss is None or (type(loss) is dict and not loss):
            if step == 0:
                raise InputError("missing step 0 losses", path=label, line=lineno,
                                 field="loss",
                                 hint='step 0 must log every test\'s initial loss: '
                                      '"loss": {"t0": 2.31, ...}')
            continue
        if type(loss) is not dict:
            raise InputError(f"expected an object {{test_id: loss}}, got "
                             f"{json.dumps(loss)[:40]}", path=label, line=lineno,
                             field="loss", hint='write "loss": {"t0": 2.31, "t1": 0.7}')
        keys = tuple(loss)
        if keys != prev_keys:
            prev_codes = np.fromiter((te.code(k) for k in keys), dtype=np.int64,
                                     count=len(keys))
            for k in keys:
                if not k:
                    raise InputError("empty test ID", path=label, line=lineno,
                                     field="loss", hint="test IDs must be non-empty")
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
        raise InputError("empty run: no steps", path=label,
                         hint='a run file holds {"step": 0, ...} then one line per training step')
    if prev == 0:
        raise InputError("empty run: only step 0, no training steps", path=label,
                         hint="log at least one training step with its batch")
    val_chunks.append(np.asarray(vals, dtype=np.float64))
    loss = np.concatenate(val_chunks)
    codes = np.concatenate(code_chunks)
    counts = np.asarray(lcount, dtype=np.int64)
    bad = ~np.isfinite(loss)
    if bad.any():
        i = int(np.argmax(bad))
        k = int(np.searchsorted(np.cumsum(counts), i, side="right"))
        raise InputError(f"non-finite loss {loss[i]!r}", path=label, line=lline[k],
                         field=f"loss.{te.list[codes[i]]}",
                         hint="losses must be finite; a diverged run cannot be simulated (leave "
                              "a test out of \"loss\" if it was not evaluated)")
    n0 = int(counts[0])
    if n0 < len(te.list):
        missing = np.ones(len(te.list), dtype=bool)
        missing[codes[:n0]] = False
        hit = missing[codes]
        i = int(np.argmax(hit))
        k = int(np.searchsorted(np.cumsum(counts), i, side="right"))
        raise InputError(f"test {te.list[codes[i]]!r} has no step-0 loss", path=label,
                         line=lline[k], field=f"loss.{te.list[codes[i]]}",
                         hint="log every test example at step 0 (the initial losses)")
    ptr = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    steps = np.repeat(np.asarray(lstep, dtype=np.int64), counts)
    rid = run_id if run_id is not None else _stem(path)
    return make_rundata(rid, np.asarray(batch_codes, dtype=np.int64), ex.array(), ptr, steps,
                        codes, te.array(), loss, source=label, source_format="jsonl")


try:
    from zlib import error as zlib_error
except ImportError:  # pragma: no cover
    zlib_error = OSError


# --------------------------------------------------------------------------------------------
# encoding C: GPTDynamics run directories
# --------------------------------------------------------------------------------------------

def _json_lines(path: Path, object_hint: str = "write one JSON object per line"):
    """(line number, object) for each non-blank line of a JSON Lines file (plain or .gz);
    unreadable, truncated, non-UTF-8 or malformed input raises InputError at FILE:LINE."""
    label = str(path)
    try:
        fh = _open_text(path)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=label,
                         hint="check the path and its permissions") from None
    lineno = 0
    try:
        with fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                obj = _loads_line(raw, label, lineno)
                if type(obj) is not dict:
                    raise InputError(f"expected a JSON object, got {type(obj).__name__}",
                                     path=label, line=lineno, hint=object_hint)
                yield lineno, obj
    except (OSError, EOFError, zlib_error) as exc:
        raise InputError(f"cannot read ({exc})", path=label, line=lineno or None,
                         hint="the file is truncated or not valid gzip/text") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", path=label, line=lineno,
                         hint="logs are UTF-8 JSON Lines (optionally .gz)") from None


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
            raise InputError(f"{'duplicate' if s == tsteps[-1] else 'decreasing'} step {s} after "
                             f"step {tsteps[-1]}", path=tl, line=lineno, field="step",
                             hint="one line per training step, in order")
        if tsteps and s != tsteps[-1] + 1:
            raise InputError(f"step {s} follows step {tsteps[-1]}: steps in between have no "
                             "samples", path=tl, line=lineno, field="step",
                             hint="every training step needs its samples_id")
        ids = obj.get("samples_id", _MISSING)
        if type(ids) is not list or not ids:
            raise InputError("missing" if ids is _MISSING else
                             ("empty" if ids == [] else "expected a list of IDs"),
                             path=tl, line=lineno, field="samples_id",
                             hint='write "samples_id": [ids of the batch]')
        for e in ids:
            codes.append(ex.code(e if type(e) is str and e else _idstr(e, tl, lineno, "samples_id")))
        sizes.append(len(ids))
        tsteps.append(s)
        tlines.append(lineno)
    if not tsteps:
        raise InputError("empty run: no training steps", path=tl,
                         hint='one line {"step": s, "samples_id": [...]} per training step')
    if tsteps[0] not in (0, 1):
        raise InputError(f"first training step is {tsteps[0]}", path=tl, line=tlines[0],
                         field="step", hint="training steps must start at 0 or 1")
    shift = 1 - tsteps[0]  # 0-based logs: the batch of step s produces checkpoint s+1
    T = tsteps[-1] + shift
    te = _Ids()
    lsteps: list[np.ndarray] = []
    lvals: list[np.ndarray] = []
    ltest: list[int] = []
    llines: list[int] = []
    for lineno, obj in _json_lines(lossf):
        if obj.get("id") is None:
            raise InputError("missing", path=ll, line=lineno, field="id",
                             hint='each line is {"id": test_id, "loss_trajectory": [...]}')
        tid = _idstr(obj["id"], ll, lineno, "id")
        if tid in te.map:
            raise InputError(f"duplicate test id {tid!r}", path=ll, line=lineno, field="id",
                             hint="one line per test example")
        traj = obj.get("loss_trajectory")
        if type(traj) is not list or not traj:
            raise InputError("missing or empty" if not traj else "expected a list",
                             path=ll, line=lineno, field="loss_trajectory",
                             hint='write "loss_trajectory": [{"step": s, "loss": x}, ...]')
        st, va = [], []
        for p in traj:
            if type(p) is not dict:
                raise InputError("expected objects {\"step\", \"loss\"}", path=ll, line=lineno,
                                 field="loss_trajectory",
                                 hint='write "loss_trajectory": [{"step": s, "loss": x}, ...]')
            st.append(_step_int(p.get("step", _MISSING), ll, lineno, "loss_trajectory.step"))
            v = p.get("loss", _MISSING)
            if type(v) not in _NUM:
                raise InputError("missing" if v is _MISSING else
                                 f"expected a number, got {json.dumps(v)[:40]}", path=ll,
                                 line=lineno, field="loss_trajectory.loss",
                                 hint="losses are JSON numbers")
            va.append(v)
        st_a = np.asarray(st, dtype=np.int64)
        va_a = np.asarray(va, dtype=np.float64)
        if np.any(np.diff(st_a) <= 0):
            i = int(np.argmax(np.diff(st_a) <= 0)) + 1
            raise InputError(f"step {st_a[i]} after step {st_a[i - 1]} (duplicate or decreasing)",
                             path=ll, line=lineno, field="loss_trajectory.step",
                             hint="list the trajectory in increasing step order")
        if not np.isfinite(va_a).all():
            i = int(np.argmax(~np.isfinite(va_a)))
            raise InputError(f"non-finite loss {va_a[i]!r} at step {st_a[i]}", path=ll,
                             line=lineno, field="loss_trajectory.loss",
                             hint="losses must be finite numbers")
        if st_a[0] < 0 or st_a[-1] > T:
            raise InputError(f"loss steps {st_a[0]}..{st_a[-1]} outside 0..{T} (the training "
                             "steps)", path=ll, line=lineno, field="loss_trajectory.step",
                             hint=f"steps refer to checkpoints after that many updates; {tl} "
                                  f"has {T} training steps")
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
            raise InputError(f"test {te.list[tcode]!r} starts at step {s[0]}, others at {s0}",
                             path=ll, line=lineno, field="loss_trajectory.step",
                             hint="every test needs a loss at the first logged checkpoint")
    notes = []
    ptr = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    bcodes = np.asarray(codes, dtype=np.int64)
    if s0 > 0:
        if s0 >= T:
            raise InputError(f"losses start at step {s0} but the run has {T} training steps",
                             path=ll, field="loss_trajectory.step",
                             hint="log the losses at the initial checkpoint (step 0)")
        bcodes = bcodes[ptr[s0]:]
        ptr = ptr[s0:] - ptr[s0]
        notes.append(f"{d.name}: no step-0 losses; the run starts at checkpoint {s0} (its first "
                     f"{s0} batch(es) dropped, steps renumbered from 0)")
    counts = np.asarray([len(s) for s in lsteps], dtype=np.int64)
    steps = np.concatenate(lsteps) - s0
    tcodes = np.repeat(np.asarray(ltest, dtype=np.int64), counts)
    srcs = [{"path": tl, "sha256": None}, {"path": ll, "sha256": None}]
    return make_rundata(d.resolve().name, bcodes, ex.array(), ptr, steps, tcodes, te.array(),
                        np.concatenate(lvals), source=str(d), source_format="gptdynamics",
                        sources=srcs, notes=notes)


# --------------------------------------------------------------------------------------------
# encoding B: long tables (CSV or Parquet), any number of runs per file
# --------------------------------------------------------------------------------------------

_WANT = {"curriculum": ("run", "step", "example_id"), "losses": ("run", "step", "test_id", "loss")}
_TABLE_HINT = ("a curriculum table has the columns run,step,example_id; a loss table "
               "run,step,test_id,loss")


def _is_parquet(path: Path) -> bool:
    if _base(path.name).endswith((".parquet", ".pq")):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


def table_header(path: Path) -> tuple[list[str], bool]:
    """(column names, is_parquet) of a long table, read from its header only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    label = str(path)
    if _is_parquet(path):
        try:
            return list(pq.read_schema(path).names), True
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"not a readable Parquet file ({exc})", path=label,
                             hint="re-export the table, or name CSV files *.csv") from None
    try:
        with _open_text(path, "rt") as fh:
            first = fh.readline()
    except (OSError, EOFError, zlib_error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({exc})", path=label,
                         hint="long tables are UTF-8 CSV (optionally .gz) or Parquet") from None
    if not first.strip():
        raise InputError("empty file: no header line", path=label, line=1, hint=_TABLE_HINT)
    return [c.strip() for c in next(csv.reader([first]))], False


def table_kind(path: Path, cols: list[str], is_parquet: bool) -> str:
    label, line = str(path), ("row 0 (schema)" if is_parquet else 1)
    s = set(cols)
    if "example_id" in s:
        kind = "curriculum"
    elif "test_id" in s or "loss" in s:
        kind = "losses"
    else:
        raise InputError(f"columns {','.join(cols)} are neither a curriculum nor a loss table",
                         path=label, line=line, hint=_TABLE_HINT)
    want = _WANT[kind]
    for c in cols:
        if c not in want:
            raise InputError(f"unknown column in a {kind} table", path=label, line=line, field=c,
                             hint=_TABLE_HINT + "; drop other columns")
    for c in want:
        if c not in s:
            raise InputError(f"missing column in a {kind} table", path=label, line=line, field=c,
                             hint=_TABLE_HINT)
    if len(cols) != len(s):
        dup = next(c for c in cols if cols.count(c) > 1)
        raise InputError("column appears twice", path=label, line=line, field=dup,
                         hint=_TABLE_HINT)
    return kind


def _gids(chunk) -> np.ndarray:
    """Global row numbers of a buffered chunk (an int start for contiguous blocks)."""
    g = chunk[-1]
    return np.arange(g, g + len(chunk[0]), dtype=np.int64) if isinstance(g, int) else g


class _TableReader:
    """Streams long tables into compact per-run numpy chunks, then validates per run."""

    def __init__(self):
        self.runs = _Ids()
        self.ex = _Ids()
        self.te = _Ids()
        self.cur: dict[int, list] = {}
        self.los: dict[int, list] = {}
        self.files: list[tuple[str, bool, str]] = []  # (label, is_parquet, kind)
        # a segment = one file, or one byte range of a CSV parsed in parallel; its rows get the
        # global row ids base, base+1, ... (bases 2**40 apart), mapped back to FILE:LINE on error
        self.segments: list[tuple[int, int, int | None]] = []  # (base, file index, byte start)
        self.run_files: dict[int, set] = {}
        self.gid = 0  # global id of the first row of the block being processed
        # rows are buffered compactly (~16-20 bytes each); beyond this budget they are spilled
        # per run to a temporary directory, so memory is bounded by the budget plus the largest
        # run rather than by the input size
        self.budget = int(float(os.environ.get("SIMFLUENCE_INGEST_BUFFER_MB", "256")) * 2**20)
        self.buffered = 0
        self.spill_dir: str | None = None
        self.spilled: dict[tuple[str, int], int] = {}  # (kind, run code) -> chunks on disk

    def _spill(self) -> None:
        import tempfile

        if self.spill_dir is None:
            self.spill_dir = tempfile.mkdtemp(prefix="simfluence-ingest-")
        for kind, store in (("curriculum", self.cur), ("losses", self.los)):
            for code, chunks in store.items():
                if not chunks:
                    continue
                arrays = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]) - 1)]
                arrays.append(np.concatenate([_gids(c) for c in chunks]))
                with open(os.path.join(self.spill_dir, f"{kind}-{code}.npy"), "ab") as fh:
                    for a in arrays:
                        np.save(fh, a, allow_pickle=False)
                self.spilled[(kind, code)] = self.spilled.get((kind, code), 0) + 1
                chunks.clear()
        self.buffered = 0

    def _take(self, kind: str, code: int) -> list | None:
        """All chunks of one run (spilled ones first, in file order), or None if it has none."""
        store = self.cur if kind == "curriculum" else self.los
        chunks = store.pop(code, None) or []
        n = self.spilled.pop((kind, code), 0)
        if n:
            width = 3 if kind == "curriculum" else 4
            loaded = []
            with open(os.path.join(self.spill_dir, f"{kind}-{code}.npy"), "rb") as fh:
                for _ in range(n):
                    loaded.append(tuple(np.load(fh, allow_pickle=False) for _ in range(width)))
            os.unlink(os.path.join(self.spill_dir, f"{kind}-{code}.npy"))
            chunks = loaded + chunks
        return chunks or None

    def close(self) -> None:
        if self.spill_dir is not None:
            import shutil

            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None

    # -- locating rows for messages --
    def where(self, gid: int) -> tuple[str, object]:
        bases = np.asarray([seg[0] for seg in self.segments], dtype=np.int64)
        k = int(np.searchsorted(bases, gid, side="right")) - 1
        base, fidx, start = self.segments[k]
        label, is_parquet, _ = self.files[fidx]
        row = int(gid) - base
        if is_parquet:
            return label, f"row {row + 1}"
        return label, (1 if start is None else _count_lines(label, start)) + row + 1

    def _segment(self, fidx: int, start: int | None) -> int:
        base = (len(self.segments)) << 40
        self.segments.append((base, fidx, start))
        return base

    def error(self, gid: int, message: str, fld: str | None = None, hint: str | None = None):
        label, line = self.where(int(gid))
        return InputError(message, path=label, line=line, field=fld, hint=hint)

    # -- reading --
    def read(self, path: Path) -> None:
        cols, is_parquet = table_header(path)
        kind = table_kind(path, cols, is_parquet)
        self.files.append((str(path), is_parquet, kind))
        fidx = len(self.files) - 1
        ranges = None if is_parquet else _csv_ranges(path)
        if ranges is None:
            sources = [_parquet_batches(path, kind) if is_parquet else _csv_batches(path, kind)]
            bases = [self._segment(fidx, None)]
        else:  # a large plain CSV: byte ranges parsed concurrently, one thread each
            sources = [_csv_batches(path, kind, rng, cols) for rng in ranges]
            bases = [self._segment(fidx, a) for a, _ in ranges]
        seen = [0] * len(sources)
        idcol = "example_id" if kind == "curriculum" else "test_id"
        ids = self.ex if kind == "curriculum" else self.te
        store = self.cur if kind == "curriculum" else self.los
        for r, batch in _prefetch_many(sources):
            n = batch.num_rows
            if n == 0:
                continue
            self.gid = bases[r] + seen[r]
            seen[r] += n
            run = self._codes(batch.column("run"), self.runs, "run")
            idc = self._codes(batch.column(idcol), ids, idcol)
            step = self._numbers(batch.column("step"), "step")
            loss = self._numbers(batch.column("loss"), "loss") if kind == "losses" else None
            if n and int(step.max()) < 2**31 and int(step.min()) >= -2**31:
                step = step.astype(np.int32)  # compact while buffered (16 B per loss row)
            idc = idc.astype(np.int32)
            lo, hi = int(run.min()), int(run.max())
            self.buffered += step.nbytes + idc.nbytes + (0 if loss is None else loss.nbytes)
            if lo == hi:  # the common case: a block of one run; row ids = a range
                chunk = (step, idc, self.gid) if loss is None else (step, idc, loss, self.gid)
                store.setdefault(lo, []).append(chunk)
                self.run_files.setdefault(lo, set()).add(fidx)
            else:
                order = np.argsort(run, kind="stable")
                sr = run[order]
                cuts = np.flatnonzero(np.diff(sr)) + 1
                for a, b in zip(np.r_[0, cuts], np.r_[cuts, n]):
                    code, sel = int(sr[a]), order[a:b]
                    gid = self.gid + sel.astype(np.int64)
                    chunk = (step[sel], idc[sel], gid) if loss is None else \
                        (step[sel], idc[sel], loss[sel], gid)
                    store.setdefault(code, []).append(chunk)
                    self.run_files.setdefault(code, set()).add(fidx)
                self.buffered += 8 * n  # explicit row numbers
            if self.buffered > self.budget:
                self._spill()

    def _codes(self, col, ids: _Ids, fld: str) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        if col.null_count:
            i = int(np.argmax(np.asarray(col.is_null().to_pylist())))
            raise self.error(self.gid + i, "empty value", fld, "every row needs a value here")
        if not pa.types.is_dictionary(col.type):
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                if pa.types.is_integer(col.type):
                    col = pc.cast(col, pa.string())
                else:
                    raise self.error(self.gid, f"column type {col.type}, expected string IDs", fld,
                                     "IDs must be strings (or integers)")
            col = col.dictionary_encode()
        d = col.dictionary
        if not (pa.types.is_string(d.type) or pa.types.is_large_string(d.type)):
            d = pc.cast(d, pa.string())
        values = d.to_pylist()
        idx = _indices(col)
        if "" in values:
            hit = np.flatnonzero(idx == values.index(""))
            if len(hit):
                raise self.error(self.gid + int(hit[0]), "empty ID", fld, "IDs must be non-empty")
        lut = np.fromiter((ids.code(v) for v in values), dtype=np.int64, count=len(values))
        return lut[idx]

    def _numbers(self, col, fld: str) -> np.ndarray:
        import pyarrow as pa

        if col.null_count:
            i = int(np.argmax(np.asarray(col.is_null().to_pylist())))
            raise self.error(self.gid + i, "empty value", fld,
                             "every row needs a number here (drop rows of tests not evaluated)")
        if fld == "step":
            if pa.types.is_integer(col.type):
                return np_view(col).astype(np.int64, copy=False)
            if pa.types.is_floating(col.type):
                v = np_view(col)
                bad = v != np.round(v)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise self.error(self.gid + i, f"expected an integer step, got {v[i]!r}", fld,
                                     "steps are integers 0, 1, 2, ...")
                return v.astype(np.int64)
            raise self.error(self.gid, f"column type {col.type}, expected integers", fld,
                             "store steps as an integer column")
        if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
            return np_view(col).astype(np.float64, copy=False)
        raise self.error(self.gid, f"column type {col.type}, expected numbers", fld,
                         "store losses as a float column")

    # -- per-run validation --
    def finish(self) -> Iterator[RunData]:
        for code, rid in enumerate(self.runs.list):
            cur = self._take("curriculum", code)
            los = self._take("losses", code)
            if cur is None:
                raise self.error(min(_gids(c)[0] for c in los), f"run {rid!r} has losses but no "
                                 "curriculum rows", "run",
                                 "ingest its curriculum table (run,step,example_id) in the same "
                                 "command")
            if los is None:
                raise self.error(min(_gids(c)[0] for c in cur), f"run {rid!r} has a curriculum but "
                                 "no losses", "run",
                                 "ingest its loss table (run,step,test_id,loss, with step-0 "
                                 "losses) in the same command")
            yield self._finish_run(code, rid, cur, los)

    def _finish_run(self, code: int, rid: str, cur: list, los: list) -> RunData:
        cstep = np.concatenate([c[0] for c in cur]).astype(np.int64)
        cex = np.concatenate([c[1] for c in cur])
        cgid = np.concatenate([_gids(c) for c in cur])
        if len(cgid) > 1 and not bool(np.all(cgid[1:] > cgid[:-1])):
            o = np.argsort(cgid, kind="stable")  # back to file order
            cstep, cex, cgid = cstep[o], cex[o], cgid[o]
        if (cstep < 1).any():
            i = int(np.argmax(cstep < 1))
            if cstep[i] == 0:
                raise self.error(cgid[i], "a batch on step 0", "step",
                                 "step 0 is the starting checkpoint: number training steps from 1")
            raise self.error(cgid[i], f"negative step {cstep[i]}", "step", "steps start at 1")
        T = int(cstep.max())
        counts = np.bincount(cstep, minlength=T + 1)[1:]
        if (counts == 0).any():
            s = int(np.argmax(counts == 0)) + 1
            nxt = int(np.argmax(cstep > s))
            raise self.error(cgid[nxt], f"run {rid!r}: step {s} has no curriculum rows", "step",
                             "every training step 1..T needs its batch (one row per example)")
        o = np.argsort(cstep, kind="stable")
        cstep, cex = cstep[o], cex[o]
        ptr = np.zeros(T + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])

        lstep = np.concatenate([c[0] for c in los]).astype(np.int64)
        lte = np.concatenate([c[1] for c in los])
        lval = np.concatenate([c[2] for c in los])
        lgid = np.concatenate([_gids(c) for c in los])
        del los
        bad = ~np.isfinite(lval)
        if bad.any():
            i = int(np.argmin(np.where(bad, lgid, np.iinfo(np.int64).max)))
            raise self.error(lgid[i], f"non-finite loss {lval[i]!r}", "loss",
                             "losses must be finite; drop rows of tests not evaluated")
        bad = (lstep < 0) | (lstep > T)
        if bad.any():
            i = int(np.argmin(np.where(bad, lgid, np.iinfo(np.int64).max)))
            raise self.error(lgid[i], f"step {lstep[i]} outside 0..{T} (run {rid!r} has {T} "
                             "training steps)", "step", "loss steps count updates: 0..T")
        m = len(self.te.list)
        key = lstep * m + lte
        if len(key) > 1 and not bool(np.all(key[1:] > key[:-1])):  # fast path: sorted, unique
            o = np.argsort(key, kind="stable")
            ks = key[o]
            dup = np.flatnonzero(ks[1:] == ks[:-1])
        else:
            dup = ()
        if len(dup):
            later = np.maximum(lgid[o][dup], lgid[o][dup + 1])
            j = int(np.argmin(later))
            first = int(np.minimum(lgid[o][dup], lgid[o][dup + 1])[j])
            f_label, f_line = self.where(first)
            i = o[dup[j] + 1] if lgid[o][dup[j] + 1] == later[j] else o[dup[j]]
            raise self.error(later[j], f"duplicate loss for test {self.te.list[lte[i]]!r} at step "
                             f"{lstep[i]} (also at {f_label}:{f_line})", "test_id",
                             "one row per (run, step, test_id)")
        is0 = lstep == 0
        if not is0.any():
            raise self.error(int(lgid.min()), f"run {rid!r}: missing step 0 losses", "step",
                             "log every test's initial loss at step 0")
        have0 = np.zeros(m, dtype=bool)
        have0[lte[is0]] = True
        bad = ~have0[lte]
        if bad.any():
            i = int(np.argmin(np.where(bad, lgid, np.iinfo(np.int64).max)))
            raise self.error(lgid[i], f"test {self.te.list[lte[i]]!r} has no step-0 loss in run "
                             f"{rid!r}", "test_id", "log every test's initial loss at step 0")
        files = sorted(self.run_files.pop(code, ()))
        srcs = [{"path": self.files[f][0], "sha256": None} for f in files]
        return make_rundata(rid, cex, self.ex.array(), ptr, lstep, lte, self.te.array(), lval,
                            source=" + ".join(s["path"] for s in srcs), source_format="table",
                            sources=srcs)


def np_view(arr) -> np.ndarray:
    """A numpy view of a null-free numeric Arrow array or chunked array.

    (pyarrow's ``to_numpy`` imports pandas when it is installed, which costs ~0.5 s.)
    """
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        parts = [np_view(c) for c in arr.chunks]
        if len(parts) == 1:
            return parts[0]
        dt = np.dtype(arr.type.to_pandas_dtype()) if not pa.types.is_boolean(arr.type) else bool
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dt)
    t = arr.type
    if arr.null_count or not (pa.types.is_integer(t) or pa.types.is_floating(t)) \
            or pa.types.is_float16(t):
        return arr.to_numpy(zero_copy_only=False)
    dt = np.dtype(t.to_pandas_dtype())
    return np.frombuffer(arr.buffers()[1], dtype=dt, count=len(arr), offset=arr.offset * dt.itemsize)


def _indices(col) -> np.ndarray:
    """The int codes of a null-free DictionaryArray, without a copy."""
    return np_view(col.indices)


def _prefetch(gen, depth: int = 2):
    """Run a batch generator on a background thread (Arrow parsing releases the GIL), so the
    next block is parsed while this one is validated; at most ``depth`` blocks are buffered."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as exc:  # re-raised in the consumer
            q.put((False, exc))

    th = threading.Thread(target=work, daemon=True)
    th.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


def _prefetch_many(gens: list, depth: int = 2):
    """Like :func:`_prefetch` for several generators, each on its own thread; yields
    ``(index, item)`` in arrival order (each generator's items stay in order)."""
    if len(gens) == 1:
        for item in _prefetch(gens[0], depth):
            yield 0, item
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth * len(gens))
    stop = threading.Event()
    done = object()

    def work(i, gen):
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put((i, True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((i, True, done))
        except BaseException as exc:
            q.put((i, False, exc))

    threads = [threading.Thread(target=work, args=(i, g), daemon=True) for i, g in enumerate(gens)]
    for th in threads:
        th.start()
    try:
        live = len(gens)
        while live:
            i, ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                live -= 1
                continue
            yield i, item
    finally:
        stop.set()
        while any(th.is_alive() for th in threads):
            try:
                q.get_nowait()
            except queue.Empty:
                for th in threads:
                    th.join(0.02)


_SPLIT_MIN_BYTES = 48 << 20  # plain CSV files at least this big are parsed in parallel ranges


def _csv_ranges(path: Path) -> list[tuple[int, int]] | None:
    """Byte ranges (line-aligned, after the header) to parse concurrently, or None.

    Only for plain (not gzip) files. Splitting at newlines is exact because the reader does not
    accept newlines inside values anyway (``newlines_in_values=False``, Arrow's default)."""
    k = min(os.cpu_count() or 1, 4)
    if k < 2 or path.name.lower().endswith(".gz"):
        return None
    try:
        size = path.stat().st_size
        if size < _SPLIT_MIN_BYTES:
            return None
        with open(path, "rb") as fh:
            fh.readline()
            start = fh.tell()
            bounds = [start]
            for j in range(1, k):
                fh.seek(max(start + (size - start) * j // k - 1, bounds[-1]))
                fh.readline()
                bounds.append(min(fh.tell(), size))
            bounds.append(size)
    except OSError:
        return None
    ranges = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    return ranges if len(ranges) > 1 else None


class _Slice:
    """A read-only file object over bytes [start, end) of a file (for pyarrow.PythonFile)."""

    def __init__(self, path: Path, start: int, end: int):
        self._fh = open(path, "rb")
        self._fh.seek(start)
        self._left = end - start
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self._fh.close()
        self.closed = True


def _count_lines(path: str, upto: int) -> int:
    """Newlines in the first ``upto`` bytes (for line numbers of parallel CSV ranges)."""
    n = 0
    with open(path, "rb") as fh:
        while upto > 0:
            chunk = fh.read(min(upto, 16 << 20))
            if not chunk:
                break
            n += chunk.count(b"\n")
            upto -= len(chunk)
    return n


def _csv_batches(path: Path, kind: str, rng: tuple[int, int] | None = None,
                 names: list[str] | None = None):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # run ids repeat in long stretches: dictionary-encoded while parsing (reader threads);
    # example/test ids are parsed as strings and hashed on the consumer thread, which balances
    # the work of the two cores
    dict_t = pa.dictionary(pa.int32(), pa.string())
    types = {"run": dict_t, "step": pa.int64()}
    if kind == "curriculum":
        types["example_id"] = pa.string()
    else:
        types.update(test_id=pa.string(), loss=pa.float64())
    try:
        if rng is None:
            stream = pa.input_stream(str(path), compression="detect")
            ro = pacsv.ReadOptions(block_size=4 << 20)
        else:
            stream = pa.PythonFile(_Slice(path, *rng), mode="r")
            ro = pacsv.ReadOptions(block_size=4 << 20, column_names=names)
        reader = pacsv.open_csv(
            stream, read_options=ro,
            convert_options=pacsv.ConvertOptions(column_types=types, null_values=[""],
                                                 strings_can_be_null=False,
                                                 quoted_strings_can_be_null=False))
        for batch in reader:
            yield batch
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, EOFError) as exc:
        _locate_csv_problem(path, kind, exc)


def _locate_csv_problem(path: Path, kind: str, exc: Exception):
    """Arrow reports CSV conversion errors without a row: find it with the csv module."""
    label = str(path)
    try:
        with _open_text(path, "rt") as fh:
            r = csv.reader(fh)
            header = [c.strip() for c in next(r)]
            n = len(header)
            for row in r:
                line = r.line_num
                if len(row) != n:
                    raise InputError(f"expected {n} fields ({','.join(header)}), got {len(row)}",
                                     path=label, line=line, hint="check the delimiter and quoting")
                for col, val in zip(header, row):
                    if col == "step":
                        try:
                            int(val)
                        except ValueError:
                            raise InputError(f"expected an integer step, got {val!r}", path=label,
                                             line=line, field="step",
                                             hint="steps are integers 0, 1, 2, ...") from None
                    elif col == "loss":
                        try:
                            float(val)
                        except ValueError:
                            raise InputError(f"expected a number, got {val!r}", path=label,
                                             line=line, field="loss",
                                             hint="losses are decimal numbers; drop rows of "
                                                  "tests not evaluated") from None
    except (OSError, EOFError, zlib_error, UnicodeDecodeError) as exc2:
        raise InputError(f"cannot read ({exc2})", path=label,
                         hint="long tables are UTF-8 CSV (optionally .gz)") from None
    except csv.Error as exc2:
        raise InputError(f"malformed CSV ({exc2})", path=label,
                         hint="check the quoting and delimiter (comma)") from None
    raise InputError(f"unreadable CSV ({str(exc).splitlines()[0]})", path=label,
                     hint=_TABLE_HINT)


def _parquet_batches(path: Path, kind: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=1 << 20, columns=list(_WANT[kind])):
            yield batch
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read Parquet ({exc})", path=str(path),
                         hint="the file is truncated or not Parquet") from None


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------

def iter_runs(plan: Plan, progress: Callable | None = None,
              notes: list | None = None) -> Iterator[RunData]:
    """Parse and validate every source of ``plan``, yielding one RunData per run.

    Source files are hashed (sha256) on a background thread while they are parsed.
    """
    total = plan.n_sources
    done = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        def hashed(rd: RunData, paths: list[str]) -> RunData:
            futs = {p: pool.submit(file_sha256, p) for p in paths}
            rd.sources = [{"path": p, "sha256": f.result()} for p, f in futs.items()]
            return rd

        for p in plan.jsonl:
            fut = pool.submit(file_sha256, p)
            rd = read_jsonl(p)
            rd.sources = [{"path": str(p), "sha256": fut.result()}]
            done += 1
            if progress:
                progress(done, total, str(p))
            yield rd
        for d in plan.gptdynamics:
            rd = read_gptdynamics(d)
            rd = hashed(rd, [s["path"] for s in rd.sources])
            done += 1
            if progress:
                progress(done, total, str(d))
            yield rd
        if plan.tables:
            tr = _TableReader()
            try:
                futs = {str(p): pool.submit(file_sha256, p) for p in plan.tables}
                for p in plan.tables:
                    tr.read(p)
                    done += 1
                    if progress:
                        progress(done, total, str(p))
                for rd in tr.finish():
                    rd.sources = [{"path": s["path"], "sha256": futs[s["path"]].result()}
                                  for s in rd.sources]
                    yield rd
            finally:
                tr.close()

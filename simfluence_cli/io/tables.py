"""Encoding B: long tables (CSV or Parquet, plain or .gz), any number of runs per file:
curriculum ``run,step,example_id`` and losses ``run,step,test_id,loss``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from simfluence_cli.errors import InputError
from simfluence_cli.io._arrow import _indices, np_view
from simfluence_cli.io._fields import _base, _Ids, _open_text, zlib_error
from simfluence_cli.io._prefetch import _prefetch_many
from simfluence_cli.io.rundata import RunData, make_rundata

# --------------------------------------------------------------------------------------------
# encoding B: long tables (CSV or Parquet), any number of runs per file
# --------------------------------------------------------------------------------------------

_WANT = {"curriculum": ("run", "step", "example_id"), "losses": ("run", "step", "test_id", "loss")}
#: optional columns: "lr" in a curriculum table (the learning rate of the row's step, the same
#: on every row of a step; all rows of a run or none)
_OPTIONAL = {"curriculum": ("lr",), "losses": ()}
_TABLE_HINT = (
    "a curriculum table has the columns run,step,example_id (and optionally lr); "
    "a loss table run,step,test_id,loss"
)


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
            raise InputError(
                f"not a readable Parquet file ({exc})",
                path=label,
                hint="re-export the table, or name CSV files *.csv",
            ) from None
    try:
        with _open_text(path, "rt") as fh:
            first = fh.readline()
    except (OSError, EOFError, zlib_error, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read ({exc})",
            path=label,
            hint="long tables are UTF-8 CSV (optionally .gz) or Parquet",
        ) from None
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
        raise InputError(
            f"columns {','.join(cols)} are neither a curriculum nor a loss table",
            path=label,
            line=line,
            hint=_TABLE_HINT,
        )
    want = _WANT[kind]
    for c in cols:
        if c not in want and c not in _OPTIONAL[kind]:
            raise InputError(
                f"unknown column in a {kind} table",
                path=label,
                line=line,
                field=c,
                hint=_TABLE_HINT + "; drop other columns",
            )
    for c in want:
        if c not in s:
            raise InputError(
                f"missing column in a {kind} table",
                path=label,
                line=line,
                field=c,
                hint=_TABLE_HINT,
            )
    if len(cols) != len(s):
        dup = next(c for c in cols if cols.count(c) > 1)
        raise InputError("column appears twice", path=label, line=line, field=dup, hint=_TABLE_HINT)
    return kind


def _gids(chunk) -> np.ndarray:
    """Global row numbers of a buffered chunk (an int start for contiguous blocks)."""
    g = chunk[-1]
    return np.arange(g, g + len(chunk[0]), dtype=np.int64) if isinstance(g, int) else g


def _first_flagged(bad: np.ndarray, gid: np.ndarray) -> int:
    """Position of the flagged row that comes first in the input (smallest global row number),
    the row an error reports; rows are buffered out of file order."""
    return int(np.argmin(np.where(bad, gid, np.iinfo(np.int64).max)))


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
            width = 4  # (step, id code, loss or lr, row ids)
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
            if kind == "losses":
                loss = self._numbers(batch.column("loss"), "loss")
            elif "lr" in batch.schema.names:  # optional; empty cells = NaN (checked per run)
                loss = np.asarray(
                    batch.column("lr").cast("float64").to_numpy(zero_copy_only=False), np.float64
                )
            else:
                loss = np.full(n, np.nan)
            if n and int(step.max()) < 2**31 and int(step.min()) >= -(2**31):
                step = step.astype(np.int32)  # compact while buffered (16 B per loss row)
            idc = idc.astype(np.int32)
            lo, hi = int(run.min()), int(run.max())
            self.buffered += step.nbytes + idc.nbytes + (0 if loss is None else loss.nbytes)
            if lo == hi:  # the common case: a block of one run; row ids = a range
                chunk = (step, idc, loss, self.gid)  # loss = the lr column for curricula
                store.setdefault(lo, []).append(chunk)
                self.run_files.setdefault(lo, set()).add(fidx)
            else:
                order = np.argsort(run, kind="stable")
                sr = run[order]
                cuts = np.flatnonzero(np.diff(sr)) + 1
                for a, b in zip(np.r_[0, cuts], np.r_[cuts, n]):
                    code, sel = int(sr[a]), order[a:b]
                    gid = self.gid + sel.astype(np.int64)
                    chunk = (step[sel], idc[sel], loss[sel], gid)
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
                    raise self.error(
                        self.gid,
                        f"column type {col.type}, expected string IDs",
                        fld,
                        "IDs must be strings (or integers)",
                    )
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
            raise self.error(
                self.gid + i,
                "empty value",
                fld,
                "every row needs a number here (drop rows of tests not evaluated)",
            )
        if fld == "step":
            if pa.types.is_integer(col.type):
                return np_view(col).astype(np.int64, copy=False)
            if pa.types.is_floating(col.type):
                v = np_view(col)
                bad = v != np.round(v)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise self.error(
                        self.gid + i,
                        f"expected an integer step, got {v[i]!r}",
                        fld,
                        "steps are integers 0, 1, 2, ...",
                    )
                return v.astype(np.int64)
            raise self.error(
                self.gid,
                f"column type {col.type}, expected integers",
                fld,
                "store steps as an integer column",
            )
        if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
            return np_view(col).astype(np.float64, copy=False)
        raise self.error(
            self.gid,
            f"column type {col.type}, expected numbers",
            fld,
            "store losses as a float column",
        )

    # -- per-run validation --
    def finish(self) -> Iterator[RunData]:
        for code, rid in enumerate(self.runs.list):
            cur = self._take("curriculum", code)
            los = self._take("losses", code)
            if cur is None:
                raise self.error(
                    min(_gids(c)[0] for c in los),
                    f"run {rid!r} has losses but no curriculum rows",
                    "run",
                    "ingest its curriculum table (run,step,example_id) in the same command",
                )
            if los is None:
                raise self.error(
                    min(_gids(c)[0] for c in cur),
                    f"run {rid!r} has a curriculum but no losses",
                    "run",
                    "ingest its loss table (run,step,test_id,loss, with step-0 "
                    "losses) in the same command",
                )
            yield self._finish_run(code, rid, cur, los)

    def _finish_run(self, code: int, rid: str, cur: list, los: list) -> RunData:
        cstep = np.concatenate([c[0] for c in cur]).astype(np.int64)
        cex = np.concatenate([c[1] for c in cur])
        clr = np.concatenate([c[2] for c in cur])
        cgid = np.concatenate([_gids(c) for c in cur])
        if len(cgid) > 1 and not bool(np.all(cgid[1:] > cgid[:-1])):
            o = np.argsort(cgid, kind="stable")  # back to file order
            cstep, cex, clr, cgid = cstep[o], cex[o], clr[o], cgid[o]
        if (cstep < 1).any():
            i = int(np.argmax(cstep < 1))
            if cstep[i] == 0:
                raise self.error(
                    cgid[i],
                    "a batch on step 0",
                    "step",
                    "step 0 is the starting checkpoint: number training steps from 1",
                )
            raise self.error(cgid[i], f"negative step {cstep[i]}", "step", "steps start at 1")
        T = int(cstep.max())
        counts = np.bincount(cstep, minlength=T + 1)[1:]
        if (counts == 0).any():
            s = int(np.argmax(counts == 0)) + 1
            nxt = int(np.argmax(cstep > s))
            raise self.error(
                cgid[nxt],
                f"run {rid!r}: step {s} has no curriculum rows",
                "step",
                "every training step 1..T needs its batch (one row per example)",
            )
        o = np.argsort(cstep, kind="stable")
        cstep, cex, clr, cgo = cstep[o], cex[o], clr[o], cgid[o]
        ptr = np.zeros(T + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        run_lr = self._run_lr(rid, clr, cgo, ptr, counts)

        lstep = np.concatenate([c[0] for c in los]).astype(np.int64)
        lte = np.concatenate([c[1] for c in los])
        lval = np.concatenate([c[2] for c in los])
        lgid = np.concatenate([_gids(c) for c in los])
        del los
        bad = ~np.isfinite(lval)
        if bad.any():
            i = _first_flagged(bad, lgid)
            raise self.error(
                lgid[i],
                f"non-finite loss {float(lval[i])!r}",
                "loss",
                "losses must be finite; drop rows of tests not evaluated",
            )
        bad = (lstep < 0) | (lstep > T)
        if bad.any():
            i = _first_flagged(bad, lgid)
            raise self.error(
                lgid[i],
                f"step {lstep[i]} outside 0..{T} (run {rid!r} has {T} training steps)",
                "step",
                "loss steps count updates: 0..T",
            )
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
            raise self.error(
                later[j],
                f"duplicate loss for test {self.te.list[lte[i]]!r} at step "
                f"{lstep[i]} (also at {f_label}:{f_line})",
                "test_id",
                "one row per (run, step, test_id)",
            )
        is0 = lstep == 0
        if not is0.any():
            raise self.error(
                int(lgid.min()),
                f"run {rid!r}: missing step 0 losses",
                "step",
                "log every test's initial loss at step 0",
            )
        have0 = np.zeros(m, dtype=bool)
        have0[lte[is0]] = True
        bad = ~have0[lte]
        if bad.any():
            i = _first_flagged(bad, lgid)
            raise self.error(
                lgid[i],
                f"test {self.te.list[lte[i]]!r} has no step-0 loss in run {rid!r}",
                "test_id",
                "log every test's initial loss at step 0",
            )
        files = sorted(self.run_files.pop(code, ()))
        srcs = [{"path": self.files[f][0], "sha256": None} for f in files]
        return make_rundata(
            rid,
            cex,
            self.ex.array(),
            ptr,
            lstep,
            lte,
            self.te.array(),
            lval,
            source=" + ".join(s["path"] for s in srcs),
            source_format="table",
            sources=srcs,
            lr=run_lr,
        )

    def _run_lr(self, rid, clr, cgid, ptr, counts):
        """The per-step lr of a run from its curriculum rows (None when it has none)."""
        have = np.isfinite(clr)
        if not have.any():
            return None
        if not have.all():
            i = int(np.argmax(~have))
            raise self.error(
                cgid[i], f"run {rid!r}: empty lr", "lr", "give lr on every row of a run or on none"
            )
        lr = clr[ptr[:-1]]
        bad = (clr != np.repeat(lr, counts)) | (clr < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise self.error(
                cgid[i],
                f"run {rid!r}: lr {clr[i]!r} differs within step or is negative",
                "lr",
                "lr is the learning rate of the row's step: one value >= 0 per (run, step)",
            )
        return lr


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


def _csv_batches(
    path: Path, kind: str, rng: tuple[int, int] | None = None, names: list[str] | None = None
):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # run ids repeat in long stretches: dictionary-encoded while parsing (reader threads);
    # example/test ids are parsed as strings and hashed on the consumer thread, which balances
    # the work of the two cores
    dict_t = pa.dictionary(pa.int32(), pa.string())
    types = {"run": dict_t, "step": pa.int64()}
    if kind == "curriculum":
        types["example_id"] = pa.string()
        types["lr"] = pa.float64()
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
            stream,
            read_options=ro,
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        yield from reader
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
                    raise InputError(
                        f"expected {n} fields ({','.join(header)}), got {len(row)}",
                        path=label,
                        line=line,
                        hint="check the delimiter and quoting",
                    )
                for col, val in zip(header, row):
                    if col == "step":
                        try:
                            int(val)
                        except ValueError:
                            raise InputError(
                                f"expected an integer step, got {val!r}",
                                path=label,
                                line=line,
                                field="step",
                                hint="steps are integers 0, 1, 2, ...",
                            ) from None
                    elif col == "loss":
                        try:
                            float(val)
                        except ValueError:
                            raise InputError(
                                f"expected a number, got {val!r}",
                                path=label,
                                line=line,
                                field="loss",
                                hint="losses are decimal numbers; drop rows of tests not evaluated",
                            ) from None
    except (OSError, EOFError, zlib_error, UnicodeDecodeError) as exc2:
        raise InputError(
            f"cannot read ({exc2})", path=label, hint="long tables are UTF-8 CSV (optionally .gz)"
        ) from None
    except csv.Error as exc2:
        raise InputError(
            f"malformed CSV ({exc2})", path=label, hint="check the quoting and delimiter (comma)"
        ) from None
    raise InputError(f"unreadable CSV ({str(exc).splitlines()[0]})", path=label, hint=_TABLE_HINT)


def _parquet_batches(path: Path, kind: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        opt = [c for c in _OPTIONAL[kind] if c in pf.schema_arrow.names]
        yield from pf.iter_batches(batch_size=1 << 20, columns=[*_WANT[kind], *opt])
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            f"cannot read Parquet ({exc})",
            path=str(path),
            hint="the file is truncated or not Parquet",
        ) from None

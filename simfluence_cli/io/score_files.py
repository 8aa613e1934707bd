"""Reading external attribution scores (long tables ``test_id,example_id,score``)."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from simfluence_cli.errors import InputError

REQUIRED = ("test_id", "example_id", "score")


@dataclass
class ScoreTable:
    """Dense scores: ``S[i, j]`` = score of training example i for test example j (0 if absent)."""

    example_ids: np.ndarray
    test_ids: np.ndarray
    S: np.ndarray
    n_rows: int
    source: str

    @property
    def n_missing(self) -> int:
        return self.S.size - self.n_rows


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _locate_bad_csv_row(path: Path) -> InputError:
    """Find the first malformed row with the csv module (error path only)."""
    try:
        return _locate_bad_row(path)
    except UnicodeDecodeError:
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        with opener(path, "rb") as fh:
            for line, raw in enumerate(fh, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return InputError(
                        f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                        path=str(path),
                        line=line,
                        hint="re-export the table as UTF-8",
                    )
        return InputError("not UTF-8 text", path=str(path), hint="re-export the table as UTF-8")


def _locate_bad_row(path: Path) -> InputError:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        pos = {c.strip(): k for k, c in enumerate(header)}
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                return InputError(
                    f"expected {len(header)} fields, found {len(row)}",
                    path=str(path),
                    line=line,
                    hint="every row needs test_id,example_id,score",
                )
            cell = row[pos["score"]]
            try:
                float(cell)
            except ValueError:
                return InputError(
                    f"expected a number, found {cell!r}",
                    path=str(path),
                    line=line,
                    field="score",
                    hint="scores are floats (predicted loss decrease)",
                )
            for f in ("test_id", "example_id"):
                if not row[pos[f]].strip():
                    return InputError("empty id", path=str(path), line=line, field=f)
    return InputError("cannot parse the table", path=str(path))


def _read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise InputError(
            "no such file",
            path=str(path),
            hint="give a CSV/Parquet table with columns test_id,example_id,score",
        )
    if _is_parquet(path):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"not a readable Parquet file ({exc})", path=str(path)) from None
    import pyarrow.csv as pcsv

    try:
        with path.open("rb") as fh:
            raw = fh.read()
        if path.suffix.lower() == ".gz":
            try:
                raw = gzip.decompress(raw)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise InputError(
                    f"not a valid gzip file ({exc})",
                    path=str(path),
                    hint="the file is truncated or not gzip; re-export it",
                ) from None
        head = raw[:65536].decode("utf-8", errors="replace").splitlines()
        header = [h.strip() for h in head[0].split(",")] if head else []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InputError(
                f"missing column(s) {', '.join(missing)}; found {', '.join(header) or 'nothing'}",
                path=str(path),
                line=1,
                hint="the header must name test_id,example_id,score",
            )
        types = {"test_id": pa.string(), "example_id": pa.string(), "score": pa.float64()}
        return pcsv.read_csv(
            io.BytesIO(raw),
            convert_options=pcsv.ConvertOptions(column_types=types, include_columns=list(REQUIRED)),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError, gzip.BadGzipFile, EOFError):
        raise _locate_bad_csv_row(path) from None


def read_scores(path: str | Path) -> ScoreTable:
    """Read a ``test_id,example_id,score`` table into a dense (examples x tests) matrix."""
    path = Path(path)
    t = _read_table(path)
    missing = [c for c in REQUIRED if c not in t.column_names]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}; found {', '.join(t.column_names)}",
            path=str(path),
            hint="the table needs columns test_id,example_id,score",
        )
    if t.num_rows == 0:
        raise InputError("no rows", path=str(path))
    te = t["test_id"].cast(pa.string()).combine_chunks()
    ex = t["example_id"].cast(pa.string()).combine_chunks()
    for name, col in (("test_id", te), ("example_id", ex)):
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError("empty id", path=str(path), line=row + 2, field=name)
    try:
        score = t["score"].cast(pa.float64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError("score must be numeric", path=str(path), field="score") from None
    bad = np.flatnonzero(~np.isfinite(score))
    if len(bad):
        raise InputError(
            "expected a finite number",
            path=str(path),
            line=int(bad[0]) + 2,
            field="score",
            hint="remove or fix rows with empty/NaN/inf scores",
        )
    te_d, ex_d = te.dictionary_encode(), ex.dictionary_encode()
    test_ids = np.asarray(te_d.dictionary.to_pylist(), dtype=object)
    example_ids = np.asarray(ex_d.dictionary.to_pylist(), dtype=object)
    ti = te_d.indices.to_numpy().astype(np.int64)
    ei = ex_d.indices.to_numpy().astype(np.int64)
    key = ei * len(test_ids) + ti
    uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
    if (counts > 1).any():
        k = uniq[np.flatnonzero(counts > 1)[0]]
        rows = np.flatnonzero(key == k)[:2] + 2
        raise InputError(
            f"duplicate (test_id, example_id) = ({test_ids[k % len(test_ids)]}, "
            f"{example_ids[k // len(test_ids)]}) also on line {rows[0]}",
            path=str(path),
            line=int(rows[1]),
            hint="give each pair once",
        )
    # sort ids for a stable model layout
    to = np.argsort(test_ids.astype(str), kind="stable")
    eo = np.argsort(example_ids.astype(str), kind="stable")
    tinv = np.empty_like(to)
    tinv[to] = np.arange(len(to))
    einv = np.empty_like(eo)
    einv[eo] = np.arange(len(eo))
    S = np.zeros((len(example_ids), len(test_ids)))
    S[einv[ei], tinv[ti]] = score
    return ScoreTable(example_ids[eo], test_ids[to], S, int(t.num_rows), str(path))

"""External attribution scores: long tables ``test_id,example_id,score`` and score matrices.

Sign convention everywhere: score = predicted decrease of the test loss from one update that
contains the training example (positive = helpful); ``import-scores`` uses B_i = -scale * score.

Matrices (``.npy``, ``.pt``, ``.safetensors``) come with their ID lists: ``layout``
``test-by-train`` (rows = test examples, columns = training examples; what Captum's TracInCP
``influence`` and Kronfluence's pairwise scores return) or ``train-by-test`` (TRAK, dattri).
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from simfluence_cli.errors import InputError, MissingExtraError, UsageError
from simfluence_cli.io._arrow import np_view

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
        from simfluence_cli.io._arrow import read_parquet

        try:
            return read_parquet(path)
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
        header = [h.strip().strip('"') for h in head[0].split(",")] if head else []
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


def _as(col, typ):
    """``col.cast(typ)``; a column of that type already is returned as is (a cast imports
    pyarrow.compute, ~0.1 s; the CSV reader gives the types already)."""
    return col if col.type == typ else col.cast(typ)


def first_seen_codes(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values in order of first appearance as an object array, int64 code of each
    row): what ``col.dictionary_encode()`` gives, without importing pyarrow.compute (~0.1 s)."""
    vals = np.asarray(col.to_pylist(), dtype=object)
    if len(vals) == 0:
        return vals, np.zeros(0, dtype=np.int64)
    uniq, first, inv = np.unique(vals, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inv.ravel()]


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
    te = _as(t["test_id"], pa.string()).combine_chunks()
    ex = _as(t["example_id"], pa.string()).combine_chunks()
    for name, col in (("test_id", te), ("example_id", ex)):
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError("empty id", path=str(path), line=row + 2, field=name)
    try:
        score = np_view(_as(t["score"], pa.float64()))
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
    test_ids, ti = first_seen_codes(te)
    example_ids, ei = first_seen_codes(ex)
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


# --------------------------------------------------------------------------------------------
# score matrices
# --------------------------------------------------------------------------------------------

MATRIX_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")
LAYOUTS = ("test-by-train", "train-by-test")


def is_matrix_file(path: str | Path) -> bool:
    """True for the matrix formats (``.npy``, ``.pt``/``.pth``, ``.safetensors``)."""
    return Path(path).suffix.lower() in MATRIX_SUFFIXES


def read_id_list(path: str | Path, what: str = "ids") -> list[str]:
    """One ID per line (blank lines skipped), or a JSON list; ``-`` reads stdin."""
    import sys

    if str(path) == "-":
        text = sys.stdin.read()
        src = "<stdin>"
    else:
        p = Path(path)
        if not p.is_file():
            raise InputError("no such file", path=str(p), hint=f"give the {what}, one per line")
        text = p.read_text(encoding="utf-8")
        src = str(p)
    stripped = text.strip()
    if stripped.startswith("["):
        import json

        try:
            ids = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InputError(f"not a JSON list ({exc.msg})", path=src) from None
        if not isinstance(ids, list):
            raise InputError("expected a JSON list of ids", path=src)
        ids = [str(i) for i in ids]
    else:
        ids = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not ids:
        raise InputError(f"no {what}", path=src, hint="one ID per line")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise InputError(f"duplicate id {dup!r} in the {what}", path=src)
    return ids


def _load_matrix(path: Path, key: str | None) -> np.ndarray:
    suf = path.suffix.lower()
    if not path.is_file():
        raise InputError("no such file", path=str(path))
    if suf == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"not a readable .npy array ({exc})", path=str(path)) from None
    if suf in (".pt", ".pth"):
        try:
            import torch
        except ImportError:
            raise MissingExtraError(
                f"reading {path.name} needs PyTorch: pip install 'simfluence[torch]' "
                "(or save the matrix with numpy.save as .npy)"
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"not a readable torch file ({exc})", path=str(path)) from None
        if isinstance(obj, dict):
            obj = _pick(obj, key, path)
        if not isinstance(obj, torch.Tensor):
            raise InputError(
                f"expected a tensor (or a dict of tensors), found {type(obj).__name__}",
                path=str(path),
            )
        return obj.detach().to(torch.float64).numpy()
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise MissingExtraError(
            f"reading {path.name} needs the safetensors package: pip install 'simfluence[tda]' "
            "(or save the matrix with numpy.save as .npy)"
        ) from None
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise InputError(f"not a readable .safetensors file ({exc})", path=str(path)) from None
    return _pick(tensors, key, path)


def _pick(d: dict, key: str | None, path: Path):
    if key is not None:
        if key not in d:
            raise InputError(f"no tensor {key!r}; found {', '.join(map(str, d))}", path=str(path))
        return d[key]
    if len(d) != 1:
        raise InputError(
            f"{len(d)} tensors ({', '.join(map(str, list(d)[:6]))}): say which with --key",
            path=str(path),
        )
    return next(iter(d.values()))


def read_score_matrix(
    path: str | Path,
    test_ids,
    example_ids,
    layout: str = "test-by-train",
    key: str | None = None,
) -> ScoreTable:
    """Read a dense score matrix with its ID lists into a :class:`ScoreTable`.

    ``layout='test-by-train'``: ``M[j, i]`` = score of training example i for test j (rows =
    test examples, as Captum TracInCP and Kronfluence return it);
    ``'train-by-test'``: ``M[i, j]`` (TRAK, dattri). ``key`` names the tensor in a multi-tensor file.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    M = np.asarray(_load_matrix(path, key))
    if M.ndim != 2:
        raise InputError(f"expected a 2-D score matrix, found shape {M.shape}", path=str(path))
    if not np.issubdtype(M.dtype, np.number) or np.iscomplexobj(M):
        raise InputError(f"expected real numbers, found dtype {M.dtype}", path=str(path))
    test_ids = [str(t) for t in test_ids]
    example_ids = [str(e) for e in example_ids]
    want = (
        (len(test_ids), len(example_ids))
        if layout == "test-by-train"
        else (len(example_ids), len(test_ids))
    )
    if M.shape != want:
        rows, cols = ("test", "train") if layout == "test-by-train" else ("train", "test")
        flipped = M.shape == want[::-1]
        raise InputError(
            f"matrix shape {M.shape[0]}x{M.shape[1]} does not match {want[0]} {rows} x "
            f"{want[1]} {cols} ids (--layout {layout})"
            + ("; it matches the other --layout" if flipped else ""),
            path=str(path),
        )
    S = np.asarray(M, dtype=np.float64)
    if layout == "test-by-train":
        S = S.T
    if not np.isfinite(S).all():
        i, j = np.argwhere(~np.isfinite(S))[0]
        raise InputError(
            f"non-finite score for test {test_ids[j]!r}, example {example_ids[i]!r}",
            path=str(path),
        )
    for what, ids in (("test", test_ids), ("train", example_ids)):
        if len(set(ids)) != len(ids):
            raise InputError(f"duplicate {what} ids", path=str(path))
    te = np.asarray(test_ids, dtype=object)
    ex = np.asarray(example_ids, dtype=object)
    to = np.argsort(te.astype(str), kind="stable")
    eo = np.argsort(ex.astype(str), kind="stable")
    S = np.ascontiguousarray(S[np.ix_(eo, to)])
    return ScoreTable(ex[eo], te[to], S, int(S.size), str(path))


def write_scores(matrix, test_ids, example_ids, path, layout: str = "test-by-train") -> Path:
    """Write a score matrix as the long table ``test_id,example_id,score`` that
    ``simfluence import-scores`` reads (CSV, ``.csv.gz`` or Parquet, by the suffix of ``path``).

    ``matrix``: numpy array or torch tensor, rows = test examples and columns = training
    examples (``layout='test-by-train'``, as Captum TracInCP and Kronfluence return it) or
    the transpose (``'train-by-test'``, TRAK, dattri). Scores must follow the convention
    score = predicted decrease of the test loss (positive = helpful): negate first if your
    library reports the change in loss. The write is atomic.
    """
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from simfluence_cli._atomic import write_atomic

    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().double().numpy()
    test_ids = [str(t) for t in test_ids]
    example_ids = [str(e) for e in example_ids]
    M = np.asarray(matrix, dtype=np.float64)
    if layout not in LAYOUTS:
        raise UsageError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "train-by-test":
        M = M.T
    if M.shape != (len(test_ids), len(example_ids)):
        raise InputError(
            f"matrix shape {M.shape} does not match {len(test_ids)} test x "
            f"{len(example_ids)} train ids (layout {layout})"
        )
    if not np.isfinite(M).all():
        raise InputError("the score matrix has non-finite values")
    n_t, n_e = M.shape
    t = pa.table(
        {
            "test_id": pa.array(np.repeat(np.asarray(test_ids, dtype=object), n_e), pa.string()),
            "example_id": pa.array(
                np.tile(np.asarray(example_ids, dtype=object), n_t), pa.string()
            ),
            "score": pa.array(M.reshape(-1)),
        }
    )
    path = Path(path)
    _CSV_OPTS = pcsv.WriteOptions(quoting_style="needed")

    def writer(fh):
        if _is_parquet(path):
            pq.write_table(t, fh)
        elif path.suffix.lower() == ".gz":
            with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
                pcsv.write_csv(t, gz, _CSV_OPTS)
        else:
            pcsv.write_csv(t, fh, _CSV_OPTS)

    write_atomic(path, writer)
    return path

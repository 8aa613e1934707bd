"""External training-data-attribution scores as an additive simulator.

A score table has columns ``test_id, example_id, score`` (CSV or Parquet, CSV optionally
gzip-compressed). ``score`` follows the TracIn convention: the predicted *decrease* of the test
loss from one update containing the example (positive = helpful). It becomes the additive
simulator L_t = L_{t-1} + sum_{i in c_t} B_i with B_i = -scale * score_i, so a positive score
lowers the simulated loss. Pairs missing from the table get score 0.

``scale``: ``1`` (``none``), a given number, or ``fit``: the one least-squares factor s that
best explains the fitting runs' observed loss changes, dL ~ -s * (sum of the scores of the
examples trained on in between), over consecutive logged steps (``on="step"``) or from step 0
(``on="cumulative"``).
"""

from __future__ import annotations

import csv
import gzip
import zlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .errors import InputError, SelectionError, UsageError
from .runs import RunSet
from .simulator import Simulator

__all__ = ["ScoreTable", "read_scores", "fit_scale", "scores_simulator", "file_sha256"]

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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _locate_bad_csv_row(path: Path) -> InputError:
    """Find the first malformed row with the csv module (error path only)."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        pos = {c.strip(): k for k, c in enumerate(header)}
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                return InputError(f"expected {len(header)} fields, found {len(row)}", path=str(path),
                                  line=line, hint="every row needs test_id,example_id,score")
            cell = row[pos["score"]]
            try:
                float(cell)
            except ValueError:
                return InputError(f"expected a number, found {cell!r}", path=str(path), line=line,
                                  field="score", hint="scores are floats (predicted loss decrease)")
            for f in ("test_id", "example_id"):
                if not row[pos[f]].strip():
                    return InputError("empty id", path=str(path), line=line, field=f)
    return InputError("cannot parse the table", path=str(path))


def _read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise InputError("no such file", path=str(path),
                         hint="give a CSV/Parquet table with columns test_id,example_id,score")
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
                raise InputError(f"not a valid gzip file ({exc})", path=str(path),
                                 hint="the file is truncated or not gzip; re-export it") from None
        head = raw[:65536].decode("utf-8", errors="replace").splitlines()
        header = [h.strip() for h in head[0].split(",")] if head else []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)}; found {', '.join(header) or 'nothing'}",
                             path=str(path), line=1,
                             hint="the header must name test_id,example_id,score")
        types = {"test_id": pa.string(), "example_id": pa.string(), "score": pa.float64()}
        return pcsv.read_csv(io.BytesIO(raw), convert_options=pcsv.ConvertOptions(
            column_types=types, include_columns=list(REQUIRED)))
    except (pa.ArrowInvalid, UnicodeDecodeError, gzip.BadGzipFile, EOFError):
        raise _locate_bad_csv_row(path) from None


def read_scores(path: str | Path) -> ScoreTable:
    """Read a ``test_id,example_id,score`` table into a dense (examples x tests) matrix."""
    path = Path(path)
    t = _read_table(path)
    missing = [c for c in REQUIRED if c not in t.column_names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}; found {', '.join(t.column_names)}",
                         path=str(path), hint="the table needs columns test_id,example_id,score")
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
        raise InputError("expected a finite number", path=str(path), line=int(bad[0]) + 2,
                         field="score", hint="remove or fix rows with empty/NaN/inf scores")
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
        raise InputError(f"duplicate (test_id, example_id) = ({test_ids[k % len(test_ids)]}, "
                         f"{example_ids[k // len(test_ids)]}) also on line {rows[0]}",
                         path=str(path), line=int(rows[1]), hint="give each pair once")
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


def _interval_sums(run, Srun: np.ndarray) -> np.ndarray:
    """(K-1, M): sum of score rows of the examples trained on between consecutive logged steps."""
    steps = run.step_of_entry()
    k = np.searchsorted(run.loss_steps, steps, side="left")  # interval ending at loss_steps[k]
    keep = k < len(run.loss_steps)
    K = len(run.loss_steps)
    cnt = sp.csr_matrix((np.ones(int(keep.sum())), (k[keep] - 1, run.batch_idx[keep])),
                        shape=(K - 1, Srun.shape[0]))
    return np.asarray(cnt @ Srun)


def fit_scale(S: np.ndarray, example_ids: np.ndarray, test_ids: np.ndarray, runs: RunSet,
              on: str = "step") -> dict:
    """Least-squares s in dL ~ -s * X over the fitting runs; returns {scale, r2, n_obs, on}.

    ``S``: (examples, tests) aligned with ``example_ids``/``test_ids``; examples of the runs
    missing from the table count as score 0.
    """
    if on not in ("step", "cumulative"):
        raise UsageError("--scale-on must be 'step' or 'cumulative'")
    if len(runs) == 0:
        raise SelectionError("--scale fit needs fitting runs; check --runs")
    epos = {e: i for i, e in enumerate(example_ids)}
    rows = np.fromiter((epos.get(e, -1) for e in runs.example_ids), dtype=np.int64,
                       count=runs.n_examples)
    tpos = {t: j for j, t in enumerate(runs.test_ids)}
    tcols = np.asarray([tpos[t] for t in test_ids], dtype=np.int64)
    Srun = np.where(rows[:, None] >= 0, S[np.maximum(rows, 0)], 0.0)
    sxy = sxx = syy = 0.0
    n = 0
    for run in runs.runs:
        if len(run.loss_steps) < 2:
            continue
        X = _interval_sums(run, Srun)
        L = run.losses[:, tcols]
        if on == "step":
            y = np.diff(L, axis=0)
        else:
            X = np.cumsum(X, axis=0)
            y = L[1:] - L[0]
        ok = np.isfinite(y)
        Xo, yo = X[ok], y[ok]
        sxy += float(Xo @ yo)
        sxx += float(Xo @ Xo)
        syy += float(yo @ yo)
        n += int(ok.sum())
    if sxx == 0:
        raise SelectionError("cannot fit a scale: the scored examples never occur in the fitting "
                             "runs (or all their scores are 0); use --scale none or a number")
    s = -sxy / sxx
    r2 = 1.0 - (syy - sxy * sxy / sxx) / syy if syy > 0 else float("nan")
    return {"scale": float(s), "r2": float(r2), "n_obs": n, "on": on}


def scores_simulator(table: ScoreTable, scale: float, runs: RunSet | None = None,
                     clip: str = "observed") -> Simulator:
    """An additive :class:`Simulator` with ``B = -scale * score``.

    With ``runs`` (the fitting runs) the simulator also gets the observed loss ranges (for
    ``clip='observed'``), mean initial losses, example counts and batch size; test examples of
    the table that the runs never logged are dropped. Without runs, clipping is switched off.
    ``example_counts_`` counts occurrences in the fitting runs, but at least 1 for every scored
    example (so none of them is "unseen": the scores are its parameters).
    """
    test_ids, S = table.test_ids, table.S
    example_ids = table.example_ids
    if runs is not None and len(runs):
        have = set(runs.test_ids.tolist())
        keep = np.asarray([t in have for t in test_ids])
        if not keep.any():
            raise SelectionError("none of the score table's test ids occur in the fitting runs")
        test_ids, S = test_ids[keep], S[:, keep]
        extra = [e for e in runs.example_ids if e not in set(example_ids.tolist())]
        if extra:
            example_ids = np.concatenate([example_ids, np.asarray(extra, dtype=object)])
            S = np.vstack([S, np.zeros((len(extra), S.shape[1]))])
    else:
        clip = "none"
    sim = Simulator(method="additive", l2=0.0, prior="zero", clip=clip)
    n, m = S.shape
    sim.example_ids_ = np.asarray(example_ids, dtype=object)
    sim.test_ids_ = np.asarray(test_ids, dtype=object)
    sim.A_ = np.zeros((n, m))
    sim.B_ = -float(scale) * S
    sim.l2_, sim.cv_curve_ = 0.0, None
    sim.fit_seconds_ = 0.0
    if runs is not None and len(runs):
        tpos = {t: j for j, t in enumerate(runs.test_ids)}
        cols = np.asarray([tpos[t] for t in test_ids], dtype=np.int64)
        L0 = np.vstack([r.losses[0, cols] for r in runs.runs])
        allL = np.vstack([r.losses[:, cols] for r in runs.runs])
        with np.errstate(all="ignore"):
            sim.init_loss_mean_ = np.nanmean(L0, axis=0)
            sim.loss_min_ = np.nanmin(allL, axis=0)
            sim.loss_max_ = np.nanmax(allL, axis=0)
        epos = {e: i for i, e in enumerate(sim.example_ids_)}
        counts = np.zeros(n, dtype=np.int64)
        rmap = np.asarray([epos[e] for e in runs.example_ids], dtype=np.int64)
        for r in runs.runs:
            counts += np.bincount(rmap[r.batch_idx], minlength=n)
        # every scored example has parameters: never count it as "unseen" (see Simulator.seen_mask)
        sim.example_counts_ = np.maximum(counts, np.arange(n) < len(table.example_ids))
        sizes = np.concatenate([r.batch_sizes for r in runs.runs])
        sim.batch_size_ = float(np.median(sizes)) if len(sizes) else 1.0
        sim.run_ids_ = list(runs.run_ids)
    else:
        sim.init_loss_mean_ = np.full(m, np.nan)
        sim.loss_min_ = np.zeros(m)
        sim.loss_max_ = np.full(m, np.inf)
        sim.example_counts_ = np.ones(n, dtype=np.int64)  # all scored: none is "unseen"
        sim.batch_size_ = 1.0
        sim.run_ids_ = []
    return sim

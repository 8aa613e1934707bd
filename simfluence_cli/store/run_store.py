"""The run store: a directory of Parquet tables plus a JSON manifest.

Layout (format version 1)::

    <store>/manifest.json                   commit point: format, generation, one entry per run
    <store>/runs.parquet                    one row per run (derived from the manifest)
    <store>/curriculum/<key>.g<N>.parquet   run, step, example_id   (one row per batch entry)
    <store>/losses/<key>.g<N>.parquet       run, step, test_id, loss (one row per logged loss)
    <store>/models/<name>/                  fitted models (see models.py)

``<key>`` is a file-system-safe slug of the run id plus a hash of it (so run ids with ``/``,
``..`` or unicode cannot escape the store) and ``g<N>`` the commit generation that wrote it:
replacing a run writes new files, commits the manifest, then deletes the old ones. Files the
manifest does not name are leftovers of an interrupted write: readers ignore them and the next
writer deletes them. Temporary files start with ``.`` so ``losses/*.parquet`` globs never see
partial files. Every write (ingest, add_runset) holds the store's write lock, validates all
inputs, writes all partition files, then replaces ``manifest.json`` atomically: an error or a
kill at any moment leaves the store as before or as after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simfluence_cli._atomic import write_atomic, write_bytes_atomic
from simfluence_cli._hashing import sha256_hex
from simfluence_cli._version import __version__
from simfluence_cli.errors import (
    ConflictError,
    InputError,
    SelectionError,
    SimfluenceError,
    StoreError,
    StoreVersionError,
    UsageError,
)
from simfluence_cli.io._arrow import _dict_column, np_view
from simfluence_cli.io._arrow import arrow_numbers as _num
from simfluence_cli.io._arrow import arrow_strings as _str
from simfluence_cli.runs import Run, RunSet
from simfluence_cli.store import _lock, _staging
from simfluence_cli.store.format import (
    _PART_FILE,
    CURRICULUM_COLUMNS,
    CURRICULUM_LR_SCHEMA,
    CURRICULUM_SCHEMA,
    LOSS_COLUMNS,
    LOSS_SCHEMA,
    MANIFEST,
    PARTS,
    RUNS_COLUMNS,
    RUNS_INT_COLUMNS,
    RUNS_SCHEMA,
    RUNS_TABLE,
    STORE_FORMAT,
    run_key,
)
from simfluence_cli.store.run_check import VerifyReport, _check_run
from simfluence_cli.store.selectors import resolve_selector

__all__ = [
    "RunStore",
    "IngestReport",
    "STORE_FORMAT",
    "CURRICULUM_COLUMNS",
    "LOSS_COLUMNS",
    "RUNS_COLUMNS",
]


_BAD_TAG = re.compile(r"[,\s*?\[\]:]")


def _meta(table: str, columns: dict) -> dict:
    return {
        b"simfluence.store_format": str(STORE_FORMAT).encode(),
        b"simfluence.table": table.encode(),
        b"simfluence.columns": json.dumps(columns).encode(),
    }


def check_tag(tag: str) -> str:
    if not tag or tag.startswith("-") or _BAD_TAG.search(tag) or tag == "all":
        raise UsageError(
            f"invalid tag {tag!r}: use letters, digits, '.', '_', '-' (not starting "
            "with '-', no commas, spaces, ':' or glob characters, not 'all')"
        )
    return tag


def check_run_id(run_id: str, source: str) -> None:
    if not run_id or not run_id.strip() or any(ord(c) < 32 for c in run_id) or "," in run_id:
        raise InputError(
            f"invalid run id {run_id!r}",
            path=source,
            field="run",
            hint="run ids must be non-empty, without commas or control characters "
            "(rename the file or set the 'run' key/column)",
        )


@dataclass
class IngestReport:
    """What an ingest (or add_runset) did."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retagged: list[str] = field(default_factory=list)
    curriculum_rows: int = 0  # rows read from the inputs
    loss_rows: int = 0
    written_loss_rows: int = 0  # rows written (added + replaced runs)
    sources: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    store: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.retagged)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["runs"] = len(self.added) + len(self.replaced) + len(self.unchanged) + len(self.retagged)
        d["loss_rows_per_second"] = round(self.loss_rows / self.seconds) if self.seconds else None
        return d

    def summary(self) -> str:
        parts = [
            f"{len(self.added)} added",
            f"{len(self.replaced)} replaced",
            f"{len(self.unchanged)} unchanged",
        ]
        if self.retagged:
            parts.append(f"{len(self.retagged)} retagged")
        return (
            f"ingested {self.sources} source(s) into {self.store}: runs "
            + ", ".join(parts)
            + f"; {self.loss_rows:,} loss rows, {self.curriculum_rows:,} curriculum rows "
            f"read in {self.seconds:.2f} s"
        )


_UMASK = os.umask(0)
os.umask(_UMASK)


def _share(path: Path) -> None:
    """Atomic writes create 0600 temp files; give store files the usual umask permissions."""
    try:
        os.chmod(path, 0o666 & ~_UMASK)
    except OSError:
        pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def hash_content_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """The data hash of (run id, content hash) pairs (order-independent): what
    :meth:`RunStore.data_hash` returns and models record."""
    return sha256_hex(json.dumps(sorted(set((str(r), str(h)) for r, h in pairs))))


@dataclass(frozen=True)
class StoreSource:
    """A picklable recipe for the runs of a store path: Dask workers call ``load(run_ids)``
    on a shared file system instead of receiving the runs themselves.

    ``pins``: the (run id, content hash) pairs of the runs as they were loaded (the snapshot
    a fit computes on without the write lock); a worker whose load finds another content
    raises StoreError instead of fitting other data. ``data_hash``: their data hash."""

    path: str
    pins: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)
    data_hash: str = ""

    def load(self, run_ids: Sequence[str], tests: Sequence[str] | None = None) -> RunSet:
        """The runs; with ``tests`` (test IDs) only those loss columns, in that order."""
        store = RunStore(self.path)
        runs = store.load(list(run_ids), tests=tests)
        if self.pins:
            pinned = dict(self.pins)
            now = dict(runs.source.pins)
            changed = sorted(r for r in run_ids if r in pinned and now.get(r) != pinned[r])
            if changed:
                raise StoreError(
                    f"run(s) {', '.join(map(repr, changed[:5]))} in {self.path} changed while "
                    "this computation ran (re-ingested with other content): nothing was "
                    "saved; rerun the command"
                )
        return runs


class RunStore:
    """A run store directory. ``RunStore(path)`` opens; ``create=True`` allows a new one."""

    def __init__(self, path: str | os.PathLike, create: bool = False):
        self.path = Path(path)
        mf = self.path / MANIFEST
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not a run store directory; pass --store DIR")
        if mf.is_file():
            self._manifest()  # version check
        elif not create:
            raise StoreError(
                f"no run store at {self.path} (no {MANIFEST}); create one with "
                f"`simfluence ingest LOGS --store {self.path}`, or point --store / "
                "SIMFLUENCE_STORE at an existing store"
            )
        elif self.path.is_dir():
            # a store being created by a concurrent writer, or whose first write was killed,
            # holds only layout entries (and hidden temp files): it is one of ours
            layout = {_lock.LOCK_NAME, RUNS_TABLE, "models", *PARTS}
            extra = [
                p.name
                for p in self.path.iterdir()
                if p.name not in layout and not p.name.startswith(".")
            ]
            # ... but never adopt (and later clean) a user's own curriculum/ or losses/ folder
            extra += [
                f"{part}/{f.name}"
                for part in PARTS
                if (self.path / part).is_dir()
                for f in (self.path / part).iterdir()
                if not _PART_FILE.match(f.name)
            ]
            if extra:
                raise StoreError(
                    f"{self.path} exists and is not a run store (no {MANIFEST}; it "
                    f"holds {', '.join(sorted(extra)[:3])}...); choose a new or "
                    "empty directory for --store"
                )

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @property
    def models(self):
        """The store's fitted models as a mapping-like
        :class:`~simfluence_cli.store.saved_models.ModelRegistry`: ``store.models["linear"]``,
        ``list(store.models)``, ``store.models.list()``, ``"x" in store.models``,
        ``del store.models["x"]``, ``store.models.fit(name, Simulator(...), runs="fit")``."""
        from simfluence_cli.store.saved_models import ModelRegistry

        return ModelRegistry(self)

    # ---- manifest ------------------------------------------------------------------------

    def _manifest(self) -> dict:
        mf = self.path / MANIFEST
        try:
            man = json.loads(mf.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": STORE_FORMAT, "generation": 0, "runs": {}}
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{mf}: cannot read the store manifest ({exc}); restore it from a "
                "backup or re-ingest into a new store"
            ) from None
        fmt = man.get("format")
        if not isinstance(fmt, int):
            raise StoreError(f"{mf}: not a simfluence store manifest (no integer 'format')")
        if fmt > STORE_FORMAT:
            raise StoreVersionError(
                f"{self.path} has store format {fmt} (written by simfluence "
                f"{man.get('tool_version', '?')}); this simfluence {__version__} reads format "
                f"<= {STORE_FORMAT}: upgrade with `pip install -U simfluence-cli`"
            )
        man.setdefault("runs", {})
        man.setdefault("generation", 0)
        return man

    def write_lock(self, timeout: float | None = None):
        """Exclusive writer lock (re-entrant in this process); StoreLockedError when held."""
        return _lock.write_lock(self.path, timeout)

    # ---- reading -------------------------------------------------------------------------

    def runs(self) -> list[dict]:
        """Per-run metadata (sorted by run id)."""
        man = self._manifest()
        return [
            {
                "run": r,
                **{k: v for k, v in e.items() if k != "files"},
                "curriculum_file": e["files"]["curriculum"],
                "losses_file": e["files"]["losses"],
            }
            for r, e in sorted(man["runs"].items())
        ]

    def run_ids(self) -> list[str]:
        """Every run id in the store, sorted."""
        return sorted(self._manifest()["runs"])

    def tags(self) -> dict[str, int]:
        """Each tag and how many runs carry it."""
        counts: dict[str, int] = {}
        for e in self._manifest()["runs"].values():
            for t in e.get("tags", []):
                counts[t] = counts.get(t, 0) + 1
        return dict(sorted(counts.items()))

    def select(self, selector: str | Sequence[str] = "all") -> list[str]:
        """Run ids matching a selector (see selectors.py), sorted; SelectionError if none."""
        man = self._manifest()
        return resolve_selector(selector, {r: e.get("tags", []) for r, e in man["runs"].items()})

    def data_hash(self, run_ids: Sequence[str]) -> str:
        """Stable hash of these runs' content (order-independent)."""
        man = self._manifest()
        missing = [r for r in run_ids if r not in man["runs"]]
        if missing:
            raise SelectionError(f"no run(s) {', '.join(map(repr, missing[:5]))} in {self.path}")
        return hash_content_pairs((r, man["runs"][r]["content_hash"]) for r in run_ids)

    def _read_part(
        self,
        man: dict,
        run_id: str,
        part: str,
        columns: list[str],
        loss_steps: int | None = None,
        entry: dict | None = None,
    ) -> pa.Table:
        rel = man["runs"][run_id]["files"][part]
        try:
            pf = pq.ParquetFile(self.path / rel)
            if loss_steps is not None:
                table = _step_prefix(pf, columns, loss_steps, int(entry.get("n_tests", -1)))
                if table is not None:
                    return table
            return pf.read(columns=columns, use_threads=False)
        except FileNotFoundError:
            raise _Retry() from None
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(
                f"{self.path / rel}: cannot read ({exc}); the store is damaged: "
                f"re-ingest run {run_id!r} with --replace"
            ) from None

    def load(
        self,
        selector: str | Sequence[str] = "all",
        tests: Sequence[str] | None = None,
        loss_steps: int | None = None,
    ) -> RunSet:
        """Selected runs as one RunSet in the union index space (IDs sorted).

        ``tests``: keep only these test IDs' losses (columns in the order given), filtered
        run by run while reading, so the losses of the other tests are never held at once
        (what a Dask worker fitting a shard of tests loads); each must be logged by some run.
        ``loss_steps``: keep only each run's first ``loss_steps`` logged steps (1: the initial
        losses ``top`` rolls from), read as a prefix of the step-sorted loss file; curricula,
        learning rates and the ID spaces are those of the full load.
        """
        if loss_steps is not None and loss_steps < 1:
            raise UsageError("loss_steps must be at least 1")
        for attempt in range(3):
            man = self._manifest()
            ids = resolve_selector(selector, {r: e.get("tags", []) for r, e in man["runs"].items()})
            try:
                runs = self._load(man, ids, tests, loss_steps)
            except _Retry:  # a writer replaced a run between our manifest read and file read
                time.sleep(0.05 * (attempt + 1))
                continue
            pins = tuple((r, man["runs"][r]["content_hash"]) for r in runs.run_ids)
            # Dask workers load the same runs (and refuse other content); the data hash is of
            # exactly the manifest these files were read from
            runs.source = StoreSource(str(self.path), pins, hash_content_pairs(pins))
            return runs
        raise StoreError(
            f"{self.path}: run files named by the manifest are missing (check the "
            f"store with `simfluence verify --store {self.path}`) or keep "
            "disappearing while reading; is another "
            "process replacing runs? retry when it is done"
        )

    def _load(
        self,
        man: dict,
        ids: list[str],
        tests: Sequence[str] | None = None,
        loss_steps: int | None = None,
    ) -> RunSet:
        wanted = None if tests is None else np.asarray([str(t) for t in tests], dtype=object)

        def read(rid: str):
            has_lr = bool(man["runs"][rid].get("has_lr"))
            cols = ["step", "example_id", "lr"] if has_lr else ["step", "example_id"]
            cur = self._read_part(man, rid, "curriculum", cols)
            los = self._read_part(
                man, rid, "losses", ["step", "test_id", "loss"], loss_steps, man["runs"][rid]
            )
            ex_vals, ex_codes = _dict_column(cur.column("example_id"))
            te_vals, te_codes = _dict_column(los.column("test_id"))
            lstep, loss = np_view(los.column("step")), np_view(los.column("loss"))
            del los
            if wanted is not None:  # only the wanted tests' rows (copies), the table is dropped
                rows = np.isin(te_vals, wanted)[te_codes]
                lstep, te_codes, loss = lstep[rows], te_codes[rows], loss[rows]
            return (
                rid,
                np_view(cur.column("step")),
                ex_vals,
                ex_codes,
                lstep,
                te_vals,
                te_codes,
                loss,
                np_view(cur.column("lr")) if has_lr else None,
            )

        if len(ids) > 1:  # Parquet decoding releases the GIL: read runs concurrently
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                raw = list(pool.map(read, ids))
        else:
            raw = [read(rid) for rid in ids]
        ex_all = sorted({e for r in raw for e in r[2].tolist()})  # a set: no object-array sort
        te_all = sorted({t for r in raw for t in r[5].tolist()})  # as ex_all (np.unique: a sort)
        ex_all = np.asarray(ex_all, dtype=object)
        te_all = np.asarray(te_all, dtype=object)
        if wanted is not None:
            logged = {str(t) for r in raw for t in r[5][np.unique(r[6])]}
            missing = [t for t in wanted if t not in logged]
            if missing:
                raise SelectionError(
                    f"test(s) {', '.join(map(repr, missing[:5]))} not logged by the "
                    f"selected runs of {self.path}"
                )
            te_all = wanted
        ex_pos = {e: i for i, e in enumerate(ex_all.tolist())}  # dict: no object searchsorted
        out = []
        for rid, cstep, ex_vals, ex_codes, lstep, te_vals, te_codes, loss, lr_rows in raw:
            entry = man["runs"][rid]
            T = int(entry["steps"])
            order = np.argsort(cstep, kind="stable")  # files are written sorted; be safe
            ex_idx = _index_of(ex_pos, ex_vals)[ex_codes][order]
            ptr = np.zeros(T + 1, dtype=np.int64)
            np.cumsum(np.bincount(cstep, minlength=T + 1)[1 : T + 1], out=ptr[1:])
            steps, row = unique_inverse(lstep)
            L = np.full((len(steps), len(te_all)), np.nan)
            L[row, _positions(te_all, te_vals)[te_codes]] = loss
            lr = None
            if lr_rows is not None:  # one value per step: the first row of each step's batch
                lr = np.asarray(lr_rows, dtype=np.float64)[order][ptr[:-1]]
            out.append(
                Run(
                    rid,
                    ptr,
                    ex_idx,
                    steps.astype(np.int64),
                    L,
                    tuple(entry.get("tags", [])),
                    lr=lr,
                    optimizer=entry.get("optimizer"),
                )
            )
        return RunSet(ex_all, te_all, out)

    def info(self) -> dict:
        """Summary of the store (see `simfluence info`)."""
        man = self._manifest()
        entries = man["runs"]
        ex_vals, ex_counts, te_vals = [], [], []
        for rid in sorted(entries):
            for _attempt in range(3):
                try:
                    cur = self._read_part(man, rid, "curriculum", ["example_id"])
                    los = self._read_part(man, rid, "losses", ["test_id"])
                    break
                except _Retry:
                    man = self._manifest()
                    if rid not in man["runs"]:
                        break
            else:
                raise StoreError(
                    f"{self.path}: files of run {rid!r} are missing; check the store "
                    f"with `simfluence verify --store {self.path}`"
                )
            v, c = _dict_column(cur.column("example_id"))
            ex_vals.append(v)
            ex_counts.append(np.bincount(c, minlength=len(v)))
            tv, _ = _dict_column(los.column("test_id"))
            te_vals.append(tv)
        coverage = None
        n_train = n_test = 0
        if ex_vals:
            uniq, inv = np.unique(np.concatenate(ex_vals), return_inverse=True)
            occ = np.bincount(inv, weights=np.concatenate(ex_counts)).astype(np.int64)
            n_train = int(len(uniq))
            n_test = len({t for v in te_vals for t in v.tolist()})  # no np.unique: numpy.ma
            mean = float(occ.mean())
            coverage = {
                "min": int(occ.min()),
                "median": float(np.median(occ)),
                "max": int(occ.max()),
                "mean": round(mean, 4),
                "cv": round(float(occ.std() / mean), 4) if mean else None,
            }
        sizes = [(e["batch_size_min"], e["batch_size_max"]) for e in entries.values()]
        models_dir = self.path / "models"
        models = (
            sorted(d.name for d in models_dir.iterdir() if (d / "model.json").is_file())
            if models_dir.is_dir()
            else []
        )
        return {
            "store": str(self.path.resolve()),  # the same whether given relative or absolute
            "format": man.get("format", STORE_FORMAT),
            "runs": len(entries),
            "tags": self.tags(),
            "steps": int(sum(e["steps"] for e in entries.values())),
            "train_examples": n_train,
            "test_examples": n_test,
            "loss_rows": int(sum(e["loss_rows"] for e in entries.values())),
            "curriculum_rows": int(sum(e["curriculum_rows"] for e in entries.values())),
            "logged_steps": int(sum(e["loss_steps"] for e in entries.values())),
            "batch_size_min": min((s[0] for s in sizes), default=None),
            "batch_size_max": max((s[1] for s in sizes), default=None),
            "coverage": coverage,
            "runs_with_lr": sum(1 for e in entries.values() if e.get("has_lr")),
            "optimizers": sorted({e["optimizer"] for e in entries.values() if e.get("optimizer")}),
            "models": models,
            "calibrations": self._calibrations(models),
            "stale_models": self._stale_models(models),
            "updated_at": man.get("updated_at"),
        }

    def _stale_models(self, models: list[str]) -> dict[str, str]:
        """Per stale model (fitting runs changed or gone): why; fresh models are left out."""
        from simfluence_cli.store.saved_models import read_manifest, stale_reason

        out = {}
        for name in models:
            try:
                why = stale_reason(self, read_manifest(self, name))
            except SimfluenceError:
                continue  # a damaged manifest is verify's to report
            if why is not None:
                out[name] = why
        return out

    def _calibrations(self, models: list[str]) -> dict[str, str]:
        """Per model: saved interval calibration 'calibrated', 'stale: <why>' or 'no'."""
        from simfluence_cli.store.calibrations import (
            DEFAULT_FOLDS,
            DEFAULT_SEED,
            calibration_status,
        )

        out = {}
        for name in models:
            try:
                status, why = calibration_status(self, name, DEFAULT_FOLDS, DEFAULT_SEED)
            except SimfluenceError as exc:
                status, why = "stale", str(exc)
            out[name] = f"{status}: {why}" if why else status
        return out

    # ---- writing -------------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | os.PathLike],
        tags: Sequence[str] = (),
        format: str | None = None,
        replace: bool = False,
        progress: Callable | None = None,
        metric: str = "loss",
        id_prefix: str = "",
    ) -> IngestReport:
        """Read training logs (files or directories, encodings A/B/C) into the store.

        GPTDynamics only: ``metric`` reads ``all_<metric>_trajectory.out``; ``id_prefix``
        namespaces example and test IDs (``"{task}:"``, ``{task}`` = the run's parent directory).

        All inputs are parsed and validated before anything is committed; any error leaves the
        store unchanged. Identical content (any format) is a no-op; a run id that exists with
        different content raises ConflictError unless ``replace``. ``progress(done, total,
        label)`` is called as sources are read.
        """
        from simfluence_cli.io.inputs import iter_runs, plan_inputs

        plan = plan_inputs(paths, format, metric=metric, id_prefix=id_prefix)
        report = IngestReport(sources=plan.n_sources, notes=list(plan.notes))
        return self._commit(
            iter_runs(plan, progress=progress, notes=report.notes), tags, replace, report
        )

    def add_runset(
        self,
        runset: RunSet,
        tags: Sequence[str] = (),
        replace: bool = False,
        source: str = "python",
    ) -> IngestReport:
        """Write in-memory runs (e.g. generated or simulated) like an ingest."""
        from simfluence_cli.io.rundata import run_from_runset

        report = IngestReport(sources=1)
        return self._commit(
            (run_from_runset(runset, r, source) for r in runset.runs), tags, replace, report
        )

    def _commit(
        self, rundata: Iterable, tags: Sequence[str], replace: bool, report: IngestReport
    ) -> IngestReport:
        tags = [check_tag(t) for t in dict.fromkeys(tags)]
        t0 = time.perf_counter()
        report.store = str(self.path)
        existed = self.path.exists()
        created = not (self.path / MANIFEST).exists()
        with self.write_lock():
            try:
                self._commit_locked(rundata, tags, replace, report)
            except BaseException:
                # only while holding the lock: a writer that merely timed out waiting must not
                # delete the store another process is creating; and only what this call made
                if created and not (self.path / MANIFEST).exists():
                    if not existed:
                        shutil.rmtree(self.path, ignore_errors=True)
                    else:
                        for part in PARTS:
                            try:
                                (self.path / part).rmdir()  # only if empty
                            except OSError:
                                pass
                raise
        report.seconds = time.perf_counter() - t0
        return report

    def _commit_locked(
        self, rundata: Iterable, tags: list[str], replace: bool, report: IngestReport
    ) -> None:
        man = self._manifest()
        self._cleanup(man)  # also after a killed first write (no manifest yet)
        gen = int(man["generation"]) + 1
        entries = dict(man["runs"])
        pending: list[tuple[Path, Path]] = []
        renamed: list[Path] = []
        seen: dict[str, str] = {}
        now = _now()
        # partition files are written (and fsynced) on a background thread while the next run
        # is parsed; at most two runs are in flight, so memory stays bounded by the largest run
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        writer = ThreadPoolExecutor(max_workers=1)
        inflight: deque = deque()
        try:
            for rd in rundata:
                check_run_id(rd.run_id, rd.source)
                if rd.run_id in seen:
                    raise InputError(
                        f"run {rd.run_id!r} appears twice in this ingest (also in "
                        f"{seen[rd.run_id]})",
                        path=rd.source,
                        field="run",
                        hint="give each run a distinct id (file name or 'run' key)",
                    )
                seen[rd.run_id] = rd.source
                st = rd.stats()
                report.curriculum_rows += st["curriculum_rows"]
                report.loss_rows += st["loss_rows"]
                run_tags = sorted(set(tags) | set(rd.tags))
                old = man["runs"].get(rd.run_id)
                if (
                    old is not None
                    and old["content_hash"] == rd.content_hash
                    and replace
                    and not self._intact(rd.run_id, old)
                ):
                    report.notes.append(
                        f"run {rd.run_id!r}: its stored files were missing or "
                        "damaged; rewritten from the source (--replace)"
                    )
                elif old is not None and old["content_hash"] == rd.content_hash:
                    merged = sorted(set(old.get("tags", [])) | set(run_tags))
                    if merged != old.get("tags", []):
                        entries[rd.run_id] = {**old, "tags": merged}
                        report.retagged.append(rd.run_id)
                    else:
                        report.unchanged.append(rd.run_id)
                    continue
                if old is not None and not replace:
                    raise ConflictError(
                        f"run {rd.run_id!r} is already in {self.path} with different content "
                        f"(stored {old['content_hash'][:12]} from {old.get('source')}, new "
                        f"{rd.content_hash[:12]} from {rd.source}); pass --replace to overwrite "
                        "it, or give the new run another id"
                    )
                key = run_key(rd.run_id)
                files = {p: f"{p}/{key}.g{gen}.parquet" for p in PARTS}
                for part in PARTS:
                    final = self.path / files[part]
                    tmp = final.parent / f".{final.name}.pending"
                    final.parent.mkdir(parents=True, exist_ok=True)
                    pending.append((tmp, final))
                    inflight.append(writer.submit(self._write_part, tmp, part, rd))
                while len(inflight) > 2:
                    inflight.popleft().result()
                if old is not None:
                    run_tags = sorted(set(old.get("tags", [])) | set(run_tags))
                entries[rd.run_id] = {
                    "key": key,
                    "files": files,
                    "tags": run_tags,
                    "content_hash": rd.content_hash,
                    **st,
                    "source_format": rd.source_format,
                    "source": rd.source,
                    "sources": rd.sources,
                    "ingested_at": now,
                    "generation": gen,
                }
                report.written_loss_rows += st["loss_rows"]
                (report.replaced if old is not None else report.added).append(rd.run_id)
                report.notes.extend(rd.notes)
            while inflight:
                inflight.popleft().result()
            if not report.changed:
                writer.shutdown()
                return
            for tmp, final in pending:
                os.replace(tmp, final)
                renamed.append(final)
            for part in PARTS:
                if (self.path / part).is_dir():
                    _fsync_dir(self.path / part)
            new_man = {
                "format": STORE_FORMAT,
                "generation": gen,
                "tool_version": __version__,
                "updated_at": now,
                "columns": {"curriculum": CURRICULUM_COLUMNS, "losses": LOSS_COLUMNS},
                "runs": dict(sorted(entries.items())),
            }
            write_bytes_atomic(
                self.path / MANIFEST,
                (json.dumps(new_man, indent=1, ensure_ascii=False) + "\n").encode(),
            )
            _share(self.path / MANIFEST)
        except BaseException:
            close = getattr(rundata, "close", None)
            if close is not None:  # let the readers remove their temporary files now
                close()
            for fut in inflight:
                fut.cancel()
            writer.shutdown(wait=True)
            for tmp, _final in pending:
                tmp.unlink(missing_ok=True)
            for final in renamed:
                final.unlink(missing_ok=True)
            raise
        writer.shutdown(wait=True)
        _fsync_dir(self.path)
        # committed: derived table, then old generations of replaced runs
        try:
            self._write_runs_table(new_man)
        except OSError:
            pass  # derived data; rewritten on the next commit
        for rid in report.replaced:
            for rel in man["runs"][rid]["files"].values():
                (self.path / rel).unlink(missing_ok=True)

    def _intact(self, run_id: str, entry: dict) -> bool:
        """Whether a run's stored files are present and hash to its content (see verify)."""
        return _check_run(self, run_id, entry, VerifyReport(store=str(self.path)), set())

    def _write_part(self, tmp: Path, part: str, rd) -> None:
        id_col = "example_id" if part == "curriculum" else "test_id"
        if part == "curriculum":
            n = len(rd.ex_codes)
            step = np.repeat(np.arange(1, rd.n_steps + 1, dtype=np.int64), np.diff(rd.batch_ptr))
            cols = [
                pa.DictionaryArray.from_arrays(_num(np.zeros(n, np.int32)), _str([rd.run_id])),
                _num(step),
                pa.DictionaryArray.from_arrays(
                    _num(rd.ex_codes.astype(np.int32)), _str(rd.example_ids.tolist())
                ),
            ]
            schema = CURRICULUM_SCHEMA
            if rd.lr is not None:  # optional 4th column, constant within a step
                cols.append(_num(np.asarray(rd.lr, dtype=np.float64)[step - 1]))
                schema = CURRICULUM_LR_SCHEMA
            table = pa.Table.from_arrays(
                cols, schema=schema.with_metadata(_meta("curriculum", CURRICULUM_COLUMNS))
            )
        else:
            n = len(rd.loss)
            table = pa.Table.from_arrays(
                [
                    pa.DictionaryArray.from_arrays(_num(np.zeros(n, np.int32)), _str([rd.run_id])),
                    _num(rd.loss_step),
                    pa.DictionaryArray.from_arrays(
                        _num(rd.loss_test.astype(np.int32)), _str(rd.test_ids.tolist())
                    ),
                    _num(rd.loss),
                ],
                schema=LOSS_SCHEMA.with_metadata(_meta("losses", LOSS_COLUMNS)),
            )
        with open(tmp, "wb") as fh:
            pq.write_table(
                table,
                fh,
                compression="zstd",
                compression_level=1,
                row_group_size=1 << 20,
                use_dictionary=["run", id_col],
                column_encoding={
                    "step": "DELTA_BINARY_PACKED",
                    **({"loss": "PLAIN"} if part == "losses" else {}),
                },
            )
            fh.flush()
            os.fsync(fh.fileno())  # durable before the rename makes it visible

    def _write_runs_table(self, man: dict) -> None:
        rows = []
        for rid, e in man["runs"].items():
            rows.append(
                {
                    "run": rid,
                    "tags": list(e.get("tags", [])),
                    **{k: int(e[k]) for k in RUNS_INT_COLUMNS},
                    "source_format": e.get("source_format"),
                    "source": e.get("source"),
                    "source_sha256": ",".join(s.get("sha256") or "" for s in e.get("sources", [])),
                    "content_hash": e["content_hash"],
                    "ingested_at": e.get("ingested_at"),
                    "curriculum_file": e["files"]["curriculum"],
                    "losses_file": e["files"]["losses"],
                }
            )
        schema = RUNS_SCHEMA.with_metadata(
            {
                **_meta("runs", RUNS_COLUMNS),
                b"simfluence.generation": str(man["generation"]).encode(),
            },
        )
        cols = []
        for f in schema:
            vals = [r[f.name] for r in rows]
            if f.name == "tags":
                off = np.zeros(len(vals) + 1, dtype=np.int32)
                np.cumsum([len(v) for v in vals], out=off[1:])
                cols.append(pa.ListArray.from_arrays(_num(off), _str([t for v in vals for t in v])))
            elif pa.types.is_integer(f.type):
                cols.append(_num(np.asarray(vals, dtype=np.int64)))
            else:
                cols.append(_str(["" if v is None else str(v) for v in vals]))
        table = pa.Table.from_arrays(cols, schema=schema)
        write_atomic(self.path / RUNS_TABLE, lambda fh: pq.write_table(table, fh))
        _share(self.path / RUNS_TABLE)

    def _cleanup(self, man: dict) -> None:
        """Delete leftovers of interrupted writes (call with the lock held)."""
        _staging.clean(self.path)  # staging of killed fits / imports (never a live one's)
        named = {rel for e in man["runs"].values() for rel in e["files"].values()}
        for part in PARTS:
            d = self.path / part
            if not d.is_dir():
                continue
            for f in d.iterdir():  # only files named like ours: never a user's file
                if f.is_file() and f"{part}/{f.name}" not in named and _PART_FILE.match(f.name):
                    f.unlink(missing_ok=True)
        for f in self.path.iterdir():  # write_atomic temp files of the manifest / runs table
            if (
                f.is_file()
                and f.name.startswith((f".{MANIFEST}.", f".{RUNS_TABLE}."))
                and f.name.endswith(".tmp")
            ):
                f.unlink(missing_ok=True)
        if man["runs"]:  # a kill between the manifest and the derived runs table left it stale
            try:
                meta = pq.read_schema(self.path / RUNS_TABLE).metadata or {}
            except (OSError, pa.ArrowException):
                meta = {}
            if meta.get(b"simfluence.generation") != str(man["generation"]).encode():
                try:
                    self._write_runs_table(man)
                except OSError:
                    pass


#: rows per batch of a prefix read (``loss_steps``): one batch holds a few logged steps of ~100
#: tests
_PREFIX_BATCH = 4096


def _step_prefix(pf, columns: list[str], n: int, n_tests: int) -> pa.Table | None:
    """The rows of a loss file's first ``n`` logged steps, read batch by batch until the step
    after them; None when the file is not sorted by step or the batches' test-id dictionary
    is not the run's ``n_tests`` tests (the caller then reads the whole file)."""
    batches, last, seen = [], None, 0
    for batch in pf.iter_batches(batch_size=_PREFIX_BATCH, columns=columns, use_threads=False):
        step = np_view(batch.column("step"))
        if len(step) and ((last is not None and step[0] < last) or np.any(step[1:] < step[:-1])):
            return None
        if len(step):
            first_new = step[0] != last
            change = np.flatnonzero(step[1:] != step[:-1]) + 1
            starts = np.r_[0, change] if first_new else change
            if seen + len(starts) > n:  # the (n+1)-th step starts in this batch
                batches.append(batch.slice(0, int(starts[n - seen])))
                break
            seen += len(starts)
            last = step[-1]
        batches.append(batch)
    if not batches:
        return None
    tid = batches[0].column("test_id")
    if not pa.types.is_dictionary(tid.type) or len(tid.dictionary) != n_tests:
        return None
    return pa.Table.from_batches(batches)


def unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(a, return_inverse=True)``; one pass when ``a`` is sorted already (the
    loss files are written sorted by step), no sort."""
    if len(a) and np.all(a[1:] >= a[:-1]):
        new = np.empty(len(a), dtype=bool)
        new[0] = True
        np.not_equal(a[1:], a[:-1], out=new[1:])
        return a[new], np.cumsum(new) - 1
    return np.unique(a, return_inverse=True)


def _index_of(pos: dict, values: np.ndarray) -> np.ndarray:
    """(len(values),) int64 positions ``pos[v]`` of string ``values``."""
    return np.fromiter((pos[v] for v in values.tolist()), dtype=np.int64, count=len(values))


def _positions(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position in ``ids`` (any order, unique) of each of ``values`` (-1 if absent)."""
    order = np.argsort(ids, kind="stable")
    srt = ids[order]
    at = np.minimum(np.searchsorted(srt, values), max(len(srt) - 1, 0))
    found = (srt[at] == values) if len(srt) else np.zeros(len(values), dtype=bool)
    return np.where(found, order[at] if len(srt) else -1, -1)


class _Retry(Exception):
    """A run file named by the manifest vanished (replaced concurrently): re-read and retry."""

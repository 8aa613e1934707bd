"""Store verification: is everything the manifest promises really there, intact and current?

``verify_store(path)`` re-reads a run store from disk and checks, without trusting any cache:

- the manifest: readable JSON, integer ``format`` not newer than this tool (a newer store is
  refused with :class:`StoreVersionError`), well-formed run entries;
- every run's partition files: present, readable Parquet, the store's schemas and format
  metadata, the run id inside them, the row/step counts recorded in the manifest, and the
  **content hash recomputed from the files** equal to the manifest's;
- partitions vs manifest: files the manifest names but are missing (error), files in
  ``curriculum/`` / ``losses/`` it does not name (leftovers of an interrupted write: a warning,
  simfluence never reads them but a ``losses/*.parquet`` glob would), temp files;
- ``runs.parquet`` (a derived table) vs the manifest;
- every model in ``models/``: manifest readable and not newer than this tool, its files
  present, parameter table shape and IDs consistent with its tests/examples tables and finite,
  and its fitting runs still in the store with the same data hash (else the model is stale);
- the write lock: a lock left by a dead process is reported.

Each finding is a :class:`Finding` with a severity (``error``: data is missing, damaged or
inconsistent, or a model is stale; ``warning``: leftovers that simfluence ignores) and the
command that fixes it. ``repair=True`` (``simfluence verify --repair``) removes leftovers and
rewrites ``runs.parquet`` under the write lock; it never touches committed data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import _lock
from .errors import StoreError, StoreVersionError

__all__ = ["Finding", "VerifyReport", "verify_store"]

ERROR, WARNING = "error", "warning"
_PART_FILE = re.compile(r"^\.?[A-Za-z0-9._-]*-[0-9a-f]{10}\.g\d+\.parquet(\.pending)?$")
_MODEL_FILE_PREFIXES = ("parameters-", "tests-", "examples-")


@dataclass
class Finding:
    """One problem: where, what, and the command or action that fixes it."""

    severity: str  # "error" | "warning"
    where: str  # path relative to the store (or the store itself)
    message: str
    fix: str
    run: str | None = None
    model: str | None = None

    def line(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}; fix: {self.fix}"


@dataclass
class VerifyReport:
    store: str
    format: int | None = None
    generation: int | None = None
    runs_checked: int = 0
    models_checked: int = 0
    files_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        state = "consistent" if self.ok else "NOT consistent"
        return (f"store {self.store} is {state}: {self.runs_checked} run(s), "
                f"{self.models_checked} model(s), {self.files_checked} file(s) checked; "
                f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
                + (f"; repaired {len(self.repaired)}" if self.repaired else ""))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["errors"] = len(self.errors)
        d["warnings"] = len(self.warnings)
        return d

    def add(self, severity: str, where: str, message: str, fix: str, **kw) -> None:
        self.findings.append(Finding(severity, where, message, fix, **kw))


def verify_store(path: str | os.PathLike, repair: bool = False) -> VerifyReport:
    """Check a run store (see the module docstring); ``repair`` removes leftovers first.

    Raises StoreError when ``path`` is not a store at all and StoreVersionError when it was
    written by a newer format; everything else is reported as findings.
    """
    from .store import MANIFEST, RunStore

    root = Path(path)
    store = RunStore(root)  # not a store / newer format: raises with the fix
    repaired: list[str] = []
    if repair:
        repaired = _repair(store)
    for _attempt in range(3):
        try:
            man_before = (root / MANIFEST).read_bytes()
        except OSError as exc:
            raise StoreError(f"{root / MANIFEST}: cannot read ({exc.strerror})") from None
        report = _verify_once(store)
        report.repaired = repaired
        try:
            unchanged = (root / MANIFEST).read_bytes() == man_before
        except OSError:
            unchanged = False
        if unchanged:
            return report
        # a writer committed while we were reading: check the new state instead
    return report


# --------------------------------------------------------------------------------------------

def _verify_once(store) -> VerifyReport:
    from .store import MANIFEST, STORE_FORMAT

    root = store.path
    rep = VerifyReport(store=str(root))
    mf = root / MANIFEST
    try:
        man = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        rep.add(ERROR, MANIFEST, f"unreadable manifest ({exc})",
                "restore manifest.json from a backup, or re-ingest the logs into a new store")
        return rep
    if not isinstance(man, dict) or not isinstance(man.get("format"), int):
        rep.add(ERROR, MANIFEST, "not a simfluence store manifest (no integer 'format')",
                "point --store at a simfluence run store")
        return rep
    rep.format = man["format"]
    if rep.format > STORE_FORMAT:  # RunStore() already refused; belt and braces
        raise StoreVersionError(f"{root} has store format {rep.format}; this simfluence reads "
                                f"format <= {STORE_FORMAT}: upgrade simfluence")
    rep.generation = man.get("generation")
    runs = man.get("runs")
    if not isinstance(runs, dict):
        rep.add(ERROR, MANIFEST, "'runs' is not an object", "restore manifest.json from a backup")
        return rep
    named: set[str] = set()
    good: dict[str, dict] = {}
    for rid, entry in sorted(runs.items()):
        rep.runs_checked += 1
        if _check_run(store, rid, entry, rep, named):
            good[rid] = entry
    _check_leftovers(root, named, rep)
    _check_runs_table(root, man, rep)
    _check_lock(root, rep)
    _check_models(store, man, good, rep)
    return rep


def _replace_fix(rid: str) -> str:
    return (f"re-ingest run {rid!r} from its source log with `simfluence ingest SOURCE --replace` "
            "(or restore the store from a backup)")


def _check_run(store, rid: str, entry, rep: VerifyReport, named: set[str]) -> bool:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ._readers import make_rundata
    from .store import CURRICULUM_SCHEMA, LOSS_SCHEMA, PARTS, STORE_FORMAT, run_key

    where = f"{MANIFEST_NAME} run {rid!r}"
    need = ("files", "content_hash", "steps", "loss_rows", "curriculum_rows")
    if not isinstance(entry, dict) or any(k not in entry for k in need) or \
            not isinstance(entry.get("files"), dict) or \
            any(not isinstance(entry["files"].get(p), str) for p in PARTS):
        rep.add(ERROR, where, "malformed manifest entry (missing files/content_hash/counts)",
                _replace_fix(rid), run=rid)
        return False
    files = entry["files"]
    for part in PARTS:
        named.add(files[part])
    for part in PARTS:
        rel = files[part]
        p = (store.path / rel)
        try:
            inside = p.resolve().is_relative_to(store.path.resolve())
        except OSError:
            inside = False
        if not inside or not rel.startswith(f"{part}/"):
            rep.add(ERROR, where, f"{part} file {rel!r} is outside the store's {part}/ directory",
                    _replace_fix(rid), run=rid)
            return False
    if entry.get("key") not in (None, run_key(rid)):
        rep.add(WARNING, where, f"file key {entry.get('key')!r} is not the key of the run id",
                "harmless; the next --replace of this run rewrites it", run=rid)
    tables = {}
    schemas = {"curriculum": CURRICULUM_SCHEMA, "losses": LOSS_SCHEMA}
    ok = True
    for part in PARTS:
        rel = files[part]
        p = store.path / rel
        if not p.is_file():
            rep.add(ERROR, rel, f"missing {part} file of run {rid!r}", _replace_fix(rid), run=rid)
            ok = False
            continue
        rep.files_checked += 1
        try:
            pf = pq.ParquetFile(p)
            schema = pf.schema_arrow
            table = pf.read()
        except (OSError, pa.ArrowException) as exc:
            rep.add(ERROR, rel, f"unreadable Parquet ({str(exc).splitlines()[0]})",
                    _replace_fix(rid), run=rid)
            ok = False
            continue
        want = schemas[part]
        if not schema.remove_metadata().equals(want):
            rep.add(ERROR, rel, f"schema {_schema_str(schema)} differs from the store's "
                    f"{part} schema {_schema_str(want)}", _replace_fix(rid), run=rid)
            ok = False
            continue
        meta = schema.metadata or {}
        fmt = meta.get(b"simfluence.store_format")
        if fmt is None or not fmt.isdigit() or int(fmt) > STORE_FORMAT or \
                meta.get(b"simfluence.table") != part.encode():
            rep.add(ERROR, rel, f"missing or wrong schema metadata (store_format={fmt!r}, "
                    f"table={meta.get(b'simfluence.table')!r})", _replace_fix(rid), run=rid)
            ok = False
            continue
        run_col = table.column("run")
        if run_col.null_count or set(pc.unique(run_col).to_pylist()) - {rid}:
            rep.add(ERROR, rel, f"holds rows of another run than {rid!r}", _replace_fix(rid),
                    run=rid)
            ok = False
            continue
        tables[part] = table
    if not ok:
        return False
    cur, los = tables["curriculum"], tables["losses"]
    T = int(entry["steps"])
    counts = [("curriculum_rows", cur.num_rows), ("loss_rows", los.num_rows)]
    for key, got in counts:
        if int(entry[key]) != got:
            rep.add(ERROR, f"{MANIFEST_NAME} run {rid!r}", f"{key} is {entry[key]} in the manifest "
                    f"but the file holds {got} rows", _replace_fix(rid), run=rid)
            return False
    try:
        cstep = cur.column("step").to_numpy()
        lstep = los.column("step").to_numpy()
        loss = los.column("loss").to_numpy()
        if len(cstep) == 0 or cstep.min() < 1 or cstep.max() != T:
            raise ValueError(f"curriculum steps must cover 1..{T}")
        sizes = np.bincount(cstep, minlength=T + 1)[1:]
        if (sizes == 0).any():
            raise ValueError(f"step {int(np.argmax(sizes == 0)) + 1} has no batch")
        if len(lstep) == 0 or lstep.min() != 0 or lstep.max() > T:
            raise ValueError(f"loss steps must lie in 0..{T} and include step 0")
        if not np.isfinite(loss).all():
            raise ValueError("non-finite loss values")
        ex_vals, ex_codes = _dict_column(cur.column("example_id"))
        te_vals, te_codes = _dict_column(los.column("test_id"))
        order = np.argsort(cstep, kind="stable")
        ptr = np.zeros(T + 1, dtype=np.int64)
        np.cumsum(sizes, out=ptr[1:])
        rd = make_rundata(rid, ex_codes[order], ex_vals, ptr, lstep, te_codes, te_vals, loss)
    except (ValueError, TypeError, IndexError) as exc:
        rep.add(ERROR, files["losses"], f"run {rid!r} content is invalid ({exc})",
                _replace_fix(rid), run=rid)
        return False
    if rd.content_hash != entry["content_hash"]:
        rep.add(ERROR, f"{files['curriculum']} + {files['losses']}",
                f"content hash of run {rid!r} recomputed from its files is "
                f"{rd.content_hash[:12]}, the manifest records {str(entry['content_hash'])[:12]} "
                "(files modified or damaged)", _replace_fix(rid), run=rid)
        return False
    st = rd.stats()
    for key in ("steps", "n_examples", "n_tests", "loss_steps", "batch_size_min",
                "batch_size_max"):
        if key in entry and int(entry[key]) != st[key]:
            rep.add(ERROR, f"{MANIFEST_NAME} run {rid!r}", f"{key} is {entry[key]} in the "
                    f"manifest but {st[key]} in the files", _replace_fix(rid), run=rid)
            return False
    return True


MANIFEST_NAME = "manifest.json"


def _schema_str(schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" for f in schema) + ")"


def _dict_values(col) -> list:
    import pyarrow as pa

    if pa.types.is_dictionary(col.type):
        return col.dictionary.to_pylist()
    return list(dict.fromkeys(col.to_pylist()))


def _dict_column(col):
    from .store import _dict_column as dc

    return dc(col)


def _check_leftovers(root: Path, named: set[str], rep: VerifyReport) -> None:
    from .store import PARTS

    for part in PARTS:
        d = root / part
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            rel = f"{part}/{f.name}"
            if rel in named:
                continue
            if not _PART_FILE.match(f.name):
                rep.add(WARNING, rel, "a file the store did not write, in its partition directory: "
                        "simfluence ignores it, but a glob over the directory would read it",
                        "move it out of the store")
            elif f.name.startswith("."):
                rep.add(WARNING, rel, "temporary file of an interrupted write (hidden; never read)",
                        "`simfluence verify --repair` (or the next ingest) removes it")
            else:
                rep.add(WARNING, rel, "file not named by the manifest (leftover of an "
                        "interrupted write): simfluence ignores it, but a glob such as "
                        f"'{part}/*.parquet' in duckdb/pandas would read it",
                        "`simfluence verify --repair` (or the next ingest) removes it")
    for f in sorted(root.iterdir()):
        if f.is_file() and f.name.startswith((".manifest.json.", ".runs.parquet.")) and \
                f.name.endswith(".tmp"):
            rep.add(WARNING, f.name, "temporary file of an interrupted write",
                    "`simfluence verify --repair` (or the next ingest) removes it")


def _check_runs_table(root: Path, man: dict, rep: VerifyReport) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .store import RUNS_COLUMNS, RUNS_TABLE

    fix = "`simfluence verify --repair` rewrites it from the manifest (it is a derived table)"
    p = root / RUNS_TABLE
    runs = man.get("runs") or {}
    if not p.is_file():
        if runs:
            rep.add(WARNING, RUNS_TABLE, "missing (derived table of run metadata)", fix)
        return
    rep.files_checked += 1
    try:
        pf = pq.ParquetFile(p)
        table = pf.read()
    except (OSError, pa.ArrowException) as exc:
        rep.add(WARNING, RUNS_TABLE, f"unreadable ({str(exc).splitlines()[0]})", fix)
        return
    if table.column_names != list(RUNS_COLUMNS):
        rep.add(WARNING, RUNS_TABLE, f"columns {table.column_names} differ from "
                f"{list(RUNS_COLUMNS)}", fix)
        return
    got = {r["run"]: r for r in table.select(["run", "content_hash", "curriculum_file",
                                                "losses_file", "tags"]).to_pylist()}
    want = {rid: {"run": rid, "content_hash": e.get("content_hash"),
                  "curriculum_file": (e.get("files") or {}).get("curriculum"),
                  "losses_file": (e.get("files") or {}).get("losses"),
                  "tags": list(e.get("tags", []))}
            for rid, e in runs.items() if isinstance(e, dict)}
    if got != want:
        diff = sorted(set(got) ^ set(want)) or sorted(r for r in want if got.get(r) != want[r])
        rep.add(WARNING, RUNS_TABLE, f"out of date with the manifest (differs for run(s) "
                f"{', '.join(map(repr, diff[:5]))}{' ...' if len(diff) > 5 else ''})", fix)


def _check_lock(root: Path, rep: VerifyReport) -> None:
    lock = root / _lock.LOCK_NAME
    holder = _lock._read(lock)
    if holder is None:
        return
    if _lock._is_stale(holder):
        rep.add(WARNING, _lock.LOCK_NAME, f"stale write lock of dead PID {holder.get('pid')}",
                "harmless: the next writer breaks it (or `simfluence verify --repair`)")
    elif holder.get("host") not in (None, socket.gethostname()):
        rep.add(WARNING, _lock.LOCK_NAME, f"write lock held by PID {holder.get('pid')} on "
                f"{holder.get('host')}", f"if that process is gone, remove {lock}")


# ---- models ------------------------------------------------------------------------------

def _model_dirs(root: Path) -> list[Path]:
    d = root / "models"
    return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _check_models(store, man: dict, good_runs: dict, rep: VerifyReport) -> None:
    for d in _model_dirs(store.path):
        _check_model(store, man, good_runs, d, rep)


def _check_model(store, man: dict, good_runs: dict, d: Path, rep: VerifyReport) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .models import MODEL_FORMAT

    name = d.name
    rel = f"models/{name}"
    refit = f"refit with `simfluence fit --name {name} --replace` (same --runs and options)"
    mf = d / "model.json"
    if not mf.is_file():
        rep.add(WARNING, rel, "model directory without model.json (an interrupted fit)",
                f"`simfluence verify --repair` removes it, or rerun the fit with --name {name}",
                model=name)
        return
    rep.models_checked += 1
    try:
        mm = json.loads(mf.read_text(encoding="utf-8"))
        if not isinstance(mm, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        rep.add(ERROR, f"{rel}/model.json", f"unreadable model manifest ({exc})", refit, model=name)
        return
    fmt = mm.get("format", 0)
    if not isinstance(fmt, int) or fmt > MODEL_FORMAT:
        rep.add(ERROR, f"{rel}/model.json", f"model format {fmt!r} is newer than this simfluence "
                f"reads ({MODEL_FORMAT})", "upgrade simfluence, or refit the model", model=name)
        return
    files = mm.get("files")
    cfg = mm.get("config")
    if not isinstance(files, dict) or not isinstance(cfg, dict) or \
            any(not isinstance(files.get(k), str) for k in ("parameters", "tests", "examples")):
        rep.add(ERROR, f"{rel}/model.json", "malformed model manifest (files/config)", refit,
                model=name)
        return
    if mm.get("name") not in (None, name):
        rep.add(WARNING, f"{rel}/model.json", f"manifest names the model {mm.get('name')!r}",
                f"rename the directory or refit as {name!r}", model=name)
    tables = {}
    for key in ("parameters", "tests", "examples"):
        f = d / files[key]
        if "/" in files[key] or "\\" in files[key] or files[key].startswith("."):
            rep.add(ERROR, f"{rel}/model.json", f"{key} file name {files[key]!r} is not a plain "
                    "file name", refit, model=name)
            return
        if not f.is_file():
            rep.add(ERROR, f"{rel}/{files[key]}", f"model {name!r} is missing its {key} file",
                    refit, model=name)
            return
        rep.files_checked += 1
        try:
            tables[key] = pq.read_table(f)
        except (OSError, pa.ArrowException) as exc:
            rep.add(ERROR, f"{rel}/{files[key]}", f"unreadable Parquet "
                    f"({str(exc).splitlines()[0]})", refit, model=name)
            return
    pt, tt, et = tables["parameters"], tables["tests"], tables["examples"]
    problems = []
    for tbl, cols, what in ((pt, ("test_id", "example_id", "A", "B"), "parameters"),
                            (tt, ("test_id", "init_loss_mean", "loss_min", "loss_max"), "tests"),
                            (et, ("example_id", "count"), "examples")):
        missing = [c for c in cols if c not in tbl.column_names]
        if missing:
            problems.append(f"{what} table lacks column(s) {', '.join(missing)}")
    if not problems:
        tests = tt.column("test_id").to_pylist()
        examples = et.column("example_id").to_pylist()
        n, m = len(examples), len(tests)
        if len(set(tests)) != m or len(set(examples)) != n:
            problems.append("duplicate test or example ids")
        if mm.get("n_tests") not in (None, m) or mm.get("n_examples") not in (None, n):
            problems.append(f"manifest says {mm.get('n_examples')} examples x "
                            f"{mm.get('n_tests')} tests, tables hold {n} x {m}")
        if pt.num_rows != n * m:
            problems.append(f"parameter table has {pt.num_rows} rows, expected {n} examples x "
                            f"{m} tests = {n * m}")
        else:
            pte = set(_dict_values(pt.column("test_id").combine_chunks()))
            pex = set(_dict_values(pt.column("example_id").combine_chunks()))
            if not pte <= set(tests) or not pex <= set(examples):
                problems.append("parameter table names test/example ids its tests/examples "
                                "tables do not")
            for col in ("A", "B"):
                v = pt.column(col).to_numpy(zero_copy_only=False)
                v = np.asarray(v, dtype=np.float64)
                if col == "A" and cfg.get("method") == "additive":
                    continue
                if not np.isfinite(v).all():
                    problems.append(f"non-finite values in column {col}")
    if problems:
        rep.add(ERROR, rel, f"model {name!r} is damaged: " + "; ".join(problems), refit,
                model=name)
        return
    run_ids = cfg.get("runs") or []
    if not run_ids:
        return  # e.g. imported scores: not tied to stored runs
    all_runs = man.get("runs") or {}
    gone = [r for r in run_ids if r not in all_runs]
    if gone:
        rep.add(ERROR, rel, f"model {name!r} is stale: its fitting run(s) "
                f"{', '.join(map(repr, gone[:5]))} are no longer in the store",
                f"refit with `simfluence fit --name {name} --replace` on the runs you have",
                model=name)
        return
    damaged = [r for r in run_ids if r not in good_runs]
    if damaged:
        rep.add(ERROR, rel, f"model {name!r} depends on damaged run(s) "
                f"{', '.join(map(repr, damaged[:5]))} (see their errors)",
                f"repair the runs, then refit with simfluence fit --name {name} --replace",
                model=name)
        return
    from .store import RunStore

    current = RunStore.data_hash(store, run_ids)
    if current != cfg.get("data_hash"):
        rep.add(ERROR, rel, f"model {name!r} is stale: the data of its {len(run_ids)} fitting "
                "run(s) changed since it was fitted (a run was re-ingested with --replace)",
                f"refit with simfluence fit --name {name} --replace", model=name)


# ---- repair -------------------------------------------------------------------------------

def _repair(store) -> list[str]:
    """Remove leftovers and rewrite runs.parquet, holding the write lock."""
    done: list[str] = []
    root = store.path
    def listing() -> set[str]:
        return {str(f.relative_to(root)) for f in root.rglob("*") if f.is_file()}

    with store.write_lock():
        man = store._manifest()
        before = listing()
        store._cleanup(man)  # the store's own leftover removal (partition and temp files)
        done += [f"removed {rel}" for rel in sorted(before - listing())]
        for d in _model_dirs(root):
            if (d / "model.json").is_file():
                for f in d.iterdir():
                    if f.name.startswith(".") and f.name.endswith(".tmp"):
                        f.unlink(missing_ok=True)
                        done.append(f"removed models/{d.name}/{f.name}")
                continue
            ours = all(f.is_file() and (f.name.startswith(_MODEL_FILE_PREFIXES) or
                                        f.name.startswith(".")) for f in d.iterdir())
            if ours:
                shutil.rmtree(d, ignore_errors=True)
                done.append(f"removed incomplete model directory models/{d.name}")
        if man["runs"] or (root / "runs.parquet").exists():
            store._write_runs_table(man)
            done.append("rewrote runs.parquet")
    return done


# ---- fit diagnostics ------------------------------------------------------------------------

def _names(ids, limit: int = 10) -> str:
    ids = [str(i) for i in ids]
    return ", ".join(map(repr, ids[:limit])) + (f" and {len(ids) - limit} more"
                                                 if len(ids) > limit else "")


def fit_warnings(runs, sim) -> list[str]:
    """Identifiability problems of a fit, each naming the affected examples.

    Called by ``Simulator.fit`` after it has counted example occurrences and the loss range:
    - training examples that never occur in the fitting curricula (their parameters stay at
      the prior: the fit knows nothing about them);
    - groups of examples that always occur together (same steps of the same runs): only the
      sum of their parameters is determined; the penalty splits it evenly among them;
    - test examples whose loss never changes in the fitting runs (nothing to learn: the fit
      predicts "no change").
    Vectorised: one random fingerprint per (run, step), summed per example.
    """
    out: list[str] = []
    n = len(sim.example_ids_)
    counts = np.asarray(sim.example_counts_)
    never = np.flatnonzero(counts == 0)
    if len(never):
        out.append(f"{len(never)} training example(s) never occur in the fitting runs; their "
                   f"parameters are the prior (no effect): {_names(sim.example_ids_[never])}")
    if n and len(runs.runs):
        rng = np.random.default_rng(12345)
        prints = np.zeros((n, 2))
        for r in runs.runs:
            w = rng.random((r.n_steps, 2)) + 1.0
            step = np.repeat(np.arange(r.n_steps), np.diff(r.batch_ptr))
            for k in range(2):
                prints[:, k] += np.bincount(r.batch_idx, weights=w[step, k], minlength=n)
        seen = np.flatnonzero(counts > 0)
        if len(seen) > 1:
            _, inv, size = np.unique(prints[seen], axis=0, return_inverse=True,
                                     return_counts=True)
            inv = inv.reshape(-1)
            shared = np.flatnonzero(size[inv] > 1)
            if len(shared):
                groups: dict[int, list] = {}
                for j in shared:
                    groups.setdefault(int(inv[j]), []).append(sim.example_ids_[seen[j]])
                shown = "; ".join("{" + ", ".join(map(str, g[:5])) + (", ..." if len(g) > 5
                                                                      else "") + "}"
                                  for g in list(groups.values())[:5])
                out.append(f"{len(shared)} training example(s) in {len(groups)} group(s) always "
                           "occur together (same steps of the same runs): only each group's "
                           "summed effect is identified, split evenly among its members: "
                           + shown + (" ..." if len(groups) > 5 else ""))
    lo, hi = np.asarray(sim.loss_min_, float), np.asarray(sim.loss_max_, float)
    with np.errstate(invalid="ignore"):
        const = np.flatnonzero(np.isfinite(lo) & (hi - lo <= 1e-12 * np.maximum(np.abs(hi),
                                                                               1e-300)))
    if len(const):
        out.append(f"{len(const)} test example(s) have a constant loss in every fitting run "
                   f"(nothing to learn; the fit predicts no change): "
                   f"{_names(sim.test_ids_[const])}")
    return out

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
command that fixes it. Superseded model files (an older generation left by a crash between a model's commit and
its cleanup) are warnings too. ``repair=True`` (``simfluence verify --repair``) removes leftovers and
rewrites ``runs.parquet`` under the write lock; it never touches committed data.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np

from simfluence_cli.errors import StoreError, StoreVersionError
from simfluence_cli.store import _lock, _staging
from simfluence_cli.store.format import (
    _PART_FILE,
    CALIBRATION_ARRAYS,
    CALIBRATION_DIR_PREFIX,
    CALIBRATION_MANIFEST,
    MANIFEST,
    MODEL_FILE_PREFIXES,
    MODEL_FORMAT,
    PARTS,
    RUNS_COLUMNS,
    RUNS_TABLE,
    STORE_FORMAT,
)
from simfluence_cli.store.run_check import ERROR, WARNING, VerifyReport, _check_run, _dict_values
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import remove_tree, stray_calibrations, stray_files


def verify_store(path: str | os.PathLike, repair: bool = False) -> VerifyReport:
    """Check a run store (see the module docstring); ``repair`` removes leftovers first.

    Raises StoreError when ``path`` is not a store at all and StoreVersionError when it was
    written by a newer format; everything else is reported as findings.
    """

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

    root = store.path
    rep = VerifyReport(store=str(root))
    mf = root / MANIFEST
    try:
        man = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        rep.add(
            ERROR,
            MANIFEST,
            f"unreadable manifest ({exc})",
            "restore manifest.json from a backup, or re-ingest the logs into a new store",
        )
        return rep
    if not isinstance(man, dict) or not isinstance(man.get("format"), int):
        rep.add(
            ERROR,
            MANIFEST,
            "not a simfluence store manifest (no integer 'format')",
            "point --store at a simfluence run store",
        )
        return rep
    rep.format = man["format"]
    if rep.format > STORE_FORMAT:  # RunStore() already refused; belt and braces
        raise StoreVersionError(
            f"{root} has store format {rep.format}; this simfluence reads "
            f"format <= {STORE_FORMAT}: upgrade simfluence"
        )
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
    _check_staging(root, rep)
    _check_runs_table(root, man, rep)
    _check_lock(root, rep)
    _check_models(store, man, good, rep)
    return rep


def _check_leftovers(root: Path, named: set[str], rep: VerifyReport) -> None:

    for part in PARTS:
        d = root / part
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            rel = f"{part}/{f.name}"
            if rel in named:
                continue
            if not _PART_FILE.match(f.name):
                rep.add(
                    WARNING,
                    rel,
                    "a file the store did not write, in its partition directory: "
                    "simfluence ignores it, but a glob over the directory would read it",
                    "move it out of the store",
                )
            elif f.name.startswith("."):
                rep.add(
                    WARNING,
                    rel,
                    "temporary file of an interrupted write (hidden; never read)",
                    "`simfluence verify --repair` (or the next ingest) removes it",
                )
            else:
                rep.add(
                    WARNING,
                    rel,
                    "file not named by the manifest (leftover of an "
                    "interrupted write): simfluence ignores it, but a glob such as "
                    f"'{part}/*.parquet' in duckdb/pandas would read it",
                    "`simfluence verify --repair` (or the next ingest) removes it",
                )
    for f in sorted(root.iterdir()):
        if (
            f.is_file()
            and f.name.startswith((".manifest.json.", ".runs.parquet."))
            and f.name.endswith(".tmp")
        ):
            rep.add(
                WARNING,
                f.name,
                "temporary file of an interrupted write",
                "`simfluence verify --repair` (or the next ingest) removes it",
            )


def _check_staging(root: Path, rep: VerifyReport) -> None:
    for p in _staging.leftovers(root):
        rep.add(
            WARNING,
            f"{_staging.STAGING_DIR}/{p.name}",
            "files of an interrupted fit or import (its process is gone; hidden, never read)",
            "`simfluence verify --repair` (or the next write) removes it",
        )


def _check_runs_table(root: Path, man: dict, rep: VerifyReport) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

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
        rep.add(
            WARNING,
            RUNS_TABLE,
            f"columns {table.column_names} differ from {list(RUNS_COLUMNS)}",
            fix,
        )
        return
    got = {
        r["run"]: r
        for r in table.select(
            ["run", "content_hash", "curriculum_file", "losses_file", "tags"]
        ).to_pylist()
    }
    want = {
        rid: {
            "run": rid,
            "content_hash": e.get("content_hash"),
            "curriculum_file": (e.get("files") or {}).get("curriculum"),
            "losses_file": (e.get("files") or {}).get("losses"),
            "tags": list(e.get("tags", [])),
        }
        for rid, e in runs.items()
        if isinstance(e, dict)
    }
    if got != want:
        diff = sorted(set(got) ^ set(want)) or sorted(r for r in want if got.get(r) != want[r])
        rep.add(
            WARNING,
            RUNS_TABLE,
            f"out of date with the manifest (differs for run(s) "
            f"{', '.join(map(repr, diff[:5]))}{' ...' if len(diff) > 5 else ''})",
            fix,
        )


def _check_lock(root: Path, rep: VerifyReport) -> None:
    lock = root / _lock.LOCK_NAME
    holder = _lock._read(lock)
    if holder is None:
        return
    if _lock._is_stale(holder):
        rep.add(
            WARNING,
            _lock.LOCK_NAME,
            f"stale write lock of dead PID {holder.get('pid')}",
            "harmless: the next writer breaks it (or `simfluence verify --repair`)",
        )
    elif holder.get("host") not in (None, socket.gethostname()):
        rep.add(
            WARNING,
            _lock.LOCK_NAME,
            f"write lock held by PID {holder.get('pid')} on {holder.get('host')}",
            f"if that process is gone, remove {lock}",
        )


# ---- models ------------------------------------------------------------------------------


def _model_dirs(root: Path) -> list[Path]:
    d = root / "models"
    return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _check_models(store, man: dict, good_runs: dict, rep: VerifyReport) -> None:
    for d in _model_dirs(store.path):
        _check_model(store, man, good_runs, d, rep)


def _check_model(store, man: dict, good_runs: dict, d: Path, rep: VerifyReport) -> None:
    import pyarrow as pa

    from simfluence_cli.io._arrow import np_view, read_parquet

    name = d.name
    rel = f"models/{name}"
    refit = f"refit with `simfluence fit --name {name} --replace` (same --runs and options)"
    mf = d / "model.json"
    if not mf.is_file():
        rep.add(
            WARNING,
            rel,
            "model directory without model.json (an interrupted fit)",
            f"`simfluence verify --repair` removes it, or rerun the fit with --name {name}",
            model=name,
        )
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
        rep.add(
            ERROR,
            f"{rel}/model.json",
            f"model format {fmt!r} is newer than this simfluence reads ({MODEL_FORMAT})",
            "upgrade simfluence, or refit the model",
            model=name,
        )
        return
    files = mm.get("files")
    cfg = mm.get("config")
    if (
        not isinstance(files, dict)
        or not isinstance(cfg, dict)
        or any(not isinstance(files.get(k), str) for k in ("parameters", "tests", "examples"))
    ):
        rep.add(
            ERROR, f"{rel}/model.json", "malformed model manifest (files/config)", refit, model=name
        )
        return
    for f in stray_files(d, mm):
        hidden = f.name.startswith(".")
        rep.add(
            WARNING,
            f"{rel}/{f.name}",
            "temporary file of an interrupted (or running) model write"
            if hidden
            else "superseded model file, not named by model.json (an older generation left "
            "by a crash after the commit): simfluence ignores it, but a glob such as "
            f"'models/{name}/parameters-*.parquet' in duckdb/pandas would read it",
            "`simfluence verify --repair` (or the next fit of this name) removes it",
            model=name,
        )
    _check_calibration(store, man, d, mm, rep)
    if mm.get("name") not in (None, name):
        rep.add(
            WARNING,
            f"{rel}/model.json",
            f"manifest names the model {mm.get('name')!r}",
            f"rename the directory or refit as {name!r}",
            model=name,
        )
    tables = {}
    for key in ("parameters", "tests", "examples"):
        f = d / files[key]
        if "/" in files[key] or "\\" in files[key] or files[key].startswith("."):
            rep.add(
                ERROR,
                f"{rel}/model.json",
                f"{key} file name {files[key]!r} is not a plain file name",
                refit,
                model=name,
            )
            return
        if not f.is_file():
            rep.add(
                ERROR,
                f"{rel}/{files[key]}",
                f"model {name!r} is missing its {key} file",
                refit,
                model=name,
            )
            return
        rep.files_checked += 1
        try:
            tables[key] = read_parquet(f)
        except (OSError, pa.ArrowException) as exc:
            rep.add(
                ERROR,
                f"{rel}/{files[key]}",
                f"unreadable Parquet ({str(exc).splitlines()[0]})",
                refit,
                model=name,
            )
            return
    pt, tt, et = tables["parameters"], tables["tests"], tables["examples"]
    problems = []
    for tbl, cols, what in (
        (pt, ("test_id", "example_id", "A", "B"), "parameters"),
        (tt, ("test_id", "init_loss_mean", "loss_min", "loss_max"), "tests"),
        (et, ("example_id", "count"), "examples"),
    ):
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
            problems.append(
                f"manifest says {mm.get('n_examples')} examples x "
                f"{mm.get('n_tests')} tests, tables hold {n} x {m}"
            )
        if pt.num_rows != n * m:
            problems.append(
                f"parameter table has {pt.num_rows} rows, expected {n} examples x "
                f"{m} tests = {n * m}"
            )
        else:
            pte = set(_dict_values(pt.column("test_id").combine_chunks()))
            pex = set(_dict_values(pt.column("example_id").combine_chunks()))
            if not pte <= set(tests) or not pex <= set(examples):
                problems.append(
                    "parameter table names test/example ids its tests/examples tables do not"
                )
            for col in ("A", "B"):
                if col == "A" and cfg.get("method") == "additive":
                    continue
                v = np.asarray(np_view(pt.column(col)), dtype=np.float64)
                if not np.isfinite(v).all():
                    problems.append(f"non-finite values in column {col}")
    if problems:
        rep.add(ERROR, rel, f"model {name!r} is damaged: " + "; ".join(problems), refit, model=name)
        return
    run_ids = cfg.get("runs") or []
    if not run_ids:
        return  # e.g. imported scores: not tied to stored runs
    all_runs = man.get("runs") or {}
    gone = [r for r in run_ids if r not in all_runs]
    if gone:
        rep.add(
            ERROR,
            rel,
            f"model {name!r} is stale: its fitting run(s) "
            f"{', '.join(map(repr, gone[:5]))} are no longer in the store",
            f"refit with `simfluence fit --name {name} --replace` on the runs you have",
            model=name,
        )
        return
    damaged = [r for r in run_ids if r not in good_runs]
    if damaged:
        rep.add(
            ERROR,
            rel,
            f"model {name!r} depends on damaged run(s) "
            f"{', '.join(map(repr, damaged[:5]))} (see their errors)",
            f"repair the runs, then refit with simfluence fit --name {name} --replace",
            model=name,
        )
        return

    current = RunStore.data_hash(store, run_ids)
    if current != cfg.get("data_hash"):
        rep.add(
            ERROR,
            rel,
            f"model {name!r} is stale: the data of its {len(run_ids)} fitting "
            "run(s) changed since it was fitted (a run was re-ingested with --replace)",
            f"refit with simfluence fit --name {name} --replace",
            model=name,
        )


# ---- repair -------------------------------------------------------------------------------


def _check_calibration(store, man: dict, d: Path, mm: dict, rep: VerifyReport) -> None:
    """A model's saved interval calibration (store/calibrations.py): stray generations,
    damage, staleness. All warnings: ``--interval`` then recomputes the calibration."""
    name, rel = d.name, f"models/{d.name}"
    fix = f"`simfluence calibrate --model {name}` rewrites it (--interval recomputes meanwhile)"
    for p in stray_calibrations(d):
        rep.add(
            WARNING,
            f"{rel}/{p.name}/",
            "calibration generation not named by calibration.json (left by a crash or an "
            "interrupted calibrate): simfluence ignores it",
            "`simfluence verify --repair` (or the next calibrate of this model) removes it",
            model=name,
        )
    cf = d / CALIBRATION_MANIFEST
    if not cf.exists():
        return
    try:
        saved = json.loads(cf.read_text(encoding="utf-8"))
        gen = d / saved["generation"]
        key = saved["key"]
        folds = [gen / f / "model.json" for f in saved["folds"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        rep.add(WARNING, f"{rel}/{CALIBRATION_MANIFEST}", f"unreadable ({exc})", fix, model=name)
        return
    missing = [p for p in [gen / CALIBRATION_ARRAYS, *folds] if not p.is_file()]
    rep.files_checked += 1
    if missing:
        rep.add(
            WARNING,
            f"{rel}/{CALIBRATION_MANIFEST}",
            f"saved calibration is missing {len(missing)} file(s) ({missing[0].relative_to(d)})",
            fix,
            model=name,
        )
        return
    runs = (mm.get("config") or {}).get("runs") or []
    stale = None
    if key.get("model_generation") != (mm.get("files") or {}).get("parameters"):
        stale = "it belongs to an earlier fit of the model"
    elif any(r not in (man.get("runs") or {}) for r in runs):
        stale = "fitting runs are gone from the store"
    elif runs and key.get("runs_hash") != store.data_hash(runs):
        stale = "the fitting runs' data changed since it was made"
    if stale:
        rep.add(
            WARNING, f"{rel}/{CALIBRATION_MANIFEST}", f"stale calibration: {stale}", fix, model=name
        )


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
                try:
                    mm = json.loads((d / "model.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    mm = None
                files = mm.get("files") if isinstance(mm, dict) else None
                if isinstance(files, dict) and all(
                    isinstance(files.get(k), str) for k in ("parameters", "tests", "examples")
                ):
                    strays = stray_files(d, mm)  # superseded generations and temp files
                else:  # unreadable manifest: only temp files are certainly leftovers
                    strays = [f for f in d.iterdir() if f.name.startswith(".")]
                for f in strays:
                    f.unlink(missing_ok=True)
                    done.append(f"removed models/{d.name}/{f.name}")
                for p in stray_calibrations(d):  # calibration generations not committed
                    remove_tree(p)
                    done.append(f"removed models/{d.name}/{p.name}/")
                continue
            ours = all(
                (f.is_file() and (f.name.startswith(MODEL_FILE_PREFIXES) or f.name.startswith(".")))
                or f.name == CALIBRATION_MANIFEST
                or (f.is_dir() and f.name.startswith(CALIBRATION_DIR_PREFIX))
                for f in d.iterdir()
            )
            if ours:
                shutil.rmtree(d, ignore_errors=True)
                done.append(f"removed incomplete model directory models/{d.name}")
        if man["runs"] or (root / "runs.parquet").exists():
            store._write_runs_table(man)
            done.append("rewrote runs.parquet")
    return done

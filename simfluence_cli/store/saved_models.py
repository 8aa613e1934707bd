"""Fitted models stored next to the data they came from: ``<store>/models/<name>/``.

Each model directory holds
- ``parameters-<gen>.parquet``: one row per (test, training example): ``test_id, example_id,
  A, B`` (A null for additive models, whose alpha is fixed at 1), sorted by test then example
  and written in row groups of whole test examples;
- ``tests-<gen>.parquet``: per test example the mean initial loss and the observed loss range;
- ``examples-<gen>.parquet``: per training example its occurrences in the fitting curricula;
- ``model.json``: the manifest (configuration, penalty chosen and CV curve, runs used, data
  hash, tool version, fit time, file names). It is written last and is the commit point.
  After a save commits, every other model file in the directory (the previous generation,
  leftovers of interrupted writes) is removed, so exactly one generation remains. A crash
  between the commit and that cleanup leaves strays, which ``simfluence verify`` reports and
  ``verify --repair`` (or the next save) removes: see :func:`stray_files`.

Refitting a name with a different configuration or data (method, penalty, prior, clip, runs,
data hash) is refused unless ``replace=True``. The same configuration on the same data is
detected by :func:`check_existing`; ``simfluence fit`` then leaves the model as it is
(a no-op that prints "up to date"); ``--replace`` forces a refit.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import replace as replace_field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simfluence_cli._atomic import write_atomic, write_bytes_atomic
from simfluence_cli._repr import summary_repr
from simfluence_cli._version import __version__, versions
from simfluence_cli.errors import (
    ConflictError,
    ModelError,
    ModelNotFoundError,
    SelectionError,
    SimfluenceWarning,
    UsageError,
)
from simfluence_cli.io._arrow import arrow_numbers, arrow_strings, np_view, read_parquet
from simfluence_cli.model.config import AUTO_METHOD, OPTIMIZER_AWARE, resolve_method
from simfluence_cli.model.simulator import (
    ExecutionOptions,
    Simulator,
    SimulatorConfig,
)
from simfluence_cli.runs import RunSet
from simfluence_cli.store import _staging
from simfluence_cli.store.format import (
    CALIBRATION_DIR_PREFIX,
    CALIBRATION_MANIFEST,
    MODEL_FILE_PREFIXES,
    MODEL_FORMAT,
    param_columns,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """Model names are file-system safe by construction."""
    if not _NAME.match(name or ""):
        raise UsageError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def model_dir(store, name: str) -> Path:
    return Path(store.path) / "models" / check_name(name)


def _json(mf: Path) -> dict:
    """A model manifest; a damaged one is a ModelError naming the fix, not a traceback."""
    try:
        man = json.loads(mf.read_text())
        if not isinstance(man, dict):
            raise ValueError("not a JSON object")
        return man
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{mf}: unreadable model manifest ({exc}); refit with `simfluence fit "
            f"--name {mf.parent.name} --replace` (see `simfluence verify`)"
        ) from None


def list_models(store) -> list[dict]:
    """Manifests of all models in the store, by name."""
    root = Path(store.path) / "models"
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        mf = d / "model.json"
        if mf.is_file():
            out.append(_json(mf))
    return out


def read_manifest(store, name: str) -> dict:
    mf = model_dir(store, name) / "model.json"
    if not mf.is_file():
        names = [m["name"] for m in list_models(store)]
        raise ModelNotFoundError(
            f"no model named {name!r} in {store.path}; "
            + (
                f"available: {', '.join(names)}"
                if names
                else "fit one with `simfluence fit --name NAME`"
            )
        )
    return _json(mf)


def describe_config(config: dict | None) -> str:
    """One-line JSON of a configuration; long run lists and hashes are abbreviated."""
    c = dict(config or {})
    runs = c.get("runs")
    if isinstance(runs, list) and len(runs) > 6:
        c["runs"] = f"{len(runs)} runs: {', '.join(runs[:3])}, ..., {runs[-1]}"
    if isinstance(c.get("data_hash"), str) and len(c["data_hash"]) > 12:
        c["data_hash"] = c["data_hash"][:12] + "..."
    return json.dumps(c, sort_keys=True)


def model_config(
    sim: Simulator,
    runs: list[str],
    data_hash: str,
    kind: str = "simfluence",
    extra: dict | None = None,
) -> dict:
    """What identifies a fit: the kind, its :class:`SimulatorConfig` (as JSON), the runs used
    and their data hash (the manifest's ``config``; read back by :func:`load_model`)."""
    return {
        "kind": kind,
        **sim.config.to_json(),
        "runs": list(runs),
        "data_hash": data_hash,
        # imported scores: the score file's content (sha256) and the import options identify
        # them; the file's path is provenance, kept outside the config (manifest "source")
        **{k: extra[k] for k in ("source_sha256", "import") if extra and k in extra},
    }


def config_differences(old: dict, new: dict) -> list[str]:
    """Human-readable 'key: old -> new' lines (run lists summarised)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a != b:
            if k == "runs" and isinstance(a, list) and isinstance(b, list):
                gone, added = sorted(set(a) - set(b)), sorted(set(b) - set(a))
                out.append(f"runs: {len(a)} -> {len(b)} (removed {gone[:5]}, added {added[:5]})")
            else:
                out.append(f"{k}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


#: keys older manifests kept in ``config`` that say where an input was, not what it held
PROVENANCE_KEYS = ("source",)


def check_existing(store, name: str, config: dict, replace: bool = False) -> dict | None:
    """Compare ``config`` with model ``name`` in the store.

    Returns the existing manifest when it has exactly this configuration (same runs and data
    hash: refitting would reproduce it), None when there is no such model or ``replace`` is set.
    Raises ConflictError (listing both configurations) when it differs and ``replace`` is False.
    """
    mf = model_dir(store, name) / "model.json"
    if not mf.is_file():
        return None
    try:
        prev = _json(mf)
    except ModelError:
        if replace:  # a damaged model is what --replace is for
            return None
        raise
    old_cfg = {k: v for k, v in (prev.get("config") or {}).items() if k not in PROVENANCE_KEYS}
    if old_cfg == config:
        return None if replace else prev
    if replace:
        return None
    diff = config_differences(old_cfg, config)
    if len(diff) == 1 and diff[0].startswith("data_hash:"):
        raise ConflictError(  # same options and runs: only the runs' content changed
            f"model {name!r} was fitted with these options on these runs, but their data has "
            "changed since (a run was re-ingested with --replace; data hash "
            f"{str(old_cfg.get('data_hash'))[:12]} -> {str(config.get('data_hash'))[:12]}); "
            "pass --replace to refit it on the current data, or pick another --name"
        )
    raise ConflictError(
        f"model {name!r} exists with a different configuration ({'; '.join(diff)}); pass "
        f"--replace to overwrite it, or pick another --name. existing: "
        f"{describe_config(prev.get('config'))} new: {describe_config(config)}"
    )


def save_model(
    store,
    name: str,
    sim: Simulator,
    *,
    runs: list[str],
    data_hash: str,
    selector: str | None = None,
    kind: str = "simfluence",
    replace: bool = False,
    extra: dict | None = None,
    parameters: ParameterWriter | None = None,
) -> dict:
    """Write a fitted simulator under ``name`` (call with the store's write lock held).

    An existing model with a different configuration is a ConflictError unless ``replace``;
    one with the same configuration is overwritten by the new fit. ``parameters``: the
    :class:`ParameterWriter` the fit streamed the parameters into (``sim.A_`` is then unused);
    it is committed here (or aborted on an error).
    """
    try:
        return _save_model(
            store,
            name,
            sim,
            runs=runs,
            data_hash=data_hash,
            selector=selector,
            kind=kind,
            replace=replace,
            extra=extra,
            parameters=parameters,
        )
    finally:
        if parameters is not None:
            parameters.abort()  # no-op once committed


def _save_model(
    store, name, sim, *, runs, data_hash, selector, kind, replace, extra, parameters
) -> dict:
    d = model_dir(store, name)
    config = model_config(sim, runs, data_hash, kind, extra)
    check_existing(store, name, config, replace=replace)  # raises on a different configuration
    gen = f"{int(time.time())}-{secrets.token_hex(3)}" if parameters is None else parameters.gen
    files, oa = write_model_files(d, sim, gen, parameters)
    manifest = {
        "format": MODEL_FORMAT,
        "name": name,
        "config": config,
        "selector": selector,
        "l2": sim.l2_,
        "cv_curve": sim.cv_curve_,
        "cv_folds": getattr(sim, "cv_folds_", None),
        "batch_size": sim.batch_size_,
        "n_examples": int(len(sim.example_ids_)),
        "n_tests": int(len(sim.test_ids_)),
        "fit_seconds": round(float(getattr(sim, "fit_seconds_", 0.0)), 4),
        # how the fit was solved: solver kind, chunks, CG iterations (max / mean per system)
        "solver_stats": _json_safe(getattr(sim, "solver_stats_", None) or {}),
        "tool_version": __version__,
        "versions": versions(),  # simfluence, Python, numpy, scipy, pyarrow
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
        **({"optimizer_aware": oa} if oa is not None else {}),
        **(extra or {}),
    }
    write_bytes_atomic(d / "model.json", (json.dumps(manifest, indent=2) + "\n").encode())
    for f in stray_files(d, manifest):  # committed: older generations, interrupted writes
        f.unlink(missing_ok=True)
    _staging.clean(store.path)  # staging left by killed fits / imports (never a live one)
    drop_calibration(d)  # a saved calibration belongs to the previous fit
    return manifest


def write_model_files(
    d: Path, sim: Simulator, gen: str, parameters=None
) -> tuple[dict, dict | None]:
    """Write ``sim``'s parameters, tests and examples files of generation ``gen`` into ``d``
    (atomically, each); returns the manifest's ``files`` and ``optimizer_aware`` entries."""
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "parameters": f"parameters-{gen}.parquet",
        "tests": f"tests-{gen}.parquet",
        "examples": f"examples-{gen}.parquet",
    }
    if parameters is None:
        _write_parameters(d / files["parameters"], sim)
    else:
        files["parameters"] = parameters.commit()
    test_cols = {
        "test_id": arrow_strings(sim.test_ids_.tolist()),
        "init_loss_mean": arrow_numbers(sim.init_loss_mean_),
        "loss_min": arrow_numbers(sim.loss_min_),
        "loss_max": arrow_numbers(sim.loss_max_),
    }
    test_meanings = {
        "init_loss_mean": "mean observed loss at step 0 over the fitting runs",
        "loss_min": "smallest observed loss in the fitting runs",
        "loss_max": "largest observed loss in the fitting runs",
    }
    oa = None
    if sim.method == "optimizer-aware":
        test_cols["ar"] = arrow_numbers(sim.ar_)
        test_meanings["ar"] = "AR coefficient rho on the previous (transformed) loss increment"
        for h in range(sim.basis_.shape[1]):
            test_cols[f"basis_{h}"] = arrow_numbers(sim.basis_[:, h])
            test_meanings[f"basis_{h}"] = f"weight of time hat function {h} (drift per step)"
        oa = {"chosen": sim.config_.as_dict(), "schedule": sim.schedule_.to_dict()}
    _write_table(
        d / files["tests"],
        pa.Table.from_arrays(list(test_cols.values()), names=list(test_cols)),
        test_meanings,
    )
    _write_table(
        d / files["examples"],
        pa.Table.from_arrays(
            [arrow_strings(sim.example_ids_.tolist()), arrow_numbers(sim.example_counts_)],
            names=["example_id", "count"],
        ),
        {"count": "occurrences of the example in the fitting runs' curricula"},
    )
    return files, oa


def stray_files(d: Path, manifest: dict) -> list[Path]:
    """Files of model directory ``d`` that its committed ``manifest`` does not name.

    Only files this tool writes are considered (``parameters-*``, ``tests-*``, ``examples-*``
    and hidden temp files): superseded generations and leftovers of interrupted writes.
    """
    files = manifest.get("files") if isinstance(manifest, dict) else None
    keep = {"model.json", *(files.values() if isinstance(files, dict) else ())}
    return sorted(
        f
        for f in d.iterdir()
        if f.is_file()
        and f.name not in keep
        and (f.name.startswith(MODEL_FILE_PREFIXES) or f.name.startswith("."))
    )


def stray_calibrations(d: Path) -> list[Path]:
    """Calibration leftovers in model directory ``d``: ``calibration-*`` directories that its
    ``calibration.json`` does not name (all of them when there is none)."""
    if not d.is_dir():
        return []
    saved = _read_calibration(d) if (d / CALIBRATION_MANIFEST).exists() else None
    keep = saved.get("generation") if saved else None
    return sorted(
        p
        for p in d.iterdir()
        if p.is_dir() and p.name.startswith(CALIBRATION_DIR_PREFIX) and p.name != keep
    )


def drop_calibration(d: Path) -> None:
    """Remove the calibration of model directory ``d``: the commit point first, then the
    generation directories (call with the write lock held)."""
    (d / CALIBRATION_MANIFEST).unlink(missing_ok=True)
    for p in stray_calibrations(d):
        remove_tree(p)


def remove_tree(p: Path) -> None:
    """Remove directory ``p``: renamed to a hidden name first (atomic), then deleted."""
    import shutil

    trash = p.with_name(f".{p.name}.deleted-{secrets.token_hex(4)}")
    try:
        p.rename(trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _read_calibration(d: Path) -> dict | None:
    try:
        out = json.loads((d / CALIBRATION_MANIFEST).read_text(encoding="utf-8"))
        return out if isinstance(out, dict) else None
    except (OSError, ValueError):
        return None


def _write_table(path: Path, table: pa.Table, meanings: dict[str, str]) -> None:
    meta = {
        b"simfluence.model_format": str(MODEL_FORMAT).encode(),
        b"simfluence.columns": json.dumps(meanings).encode(),
    }
    table = table.replace_schema_metadata(meta)
    write_atomic(path, lambda fh: pq.write_table(table, fh))


def _param_schema(method: str) -> pa.Schema:
    return pa.schema(
        [
            ("test_id", pa.dictionary(pa.int32(), pa.string())),
            ("example_id", pa.dictionary(pa.int32(), pa.string())),
            ("A", pa.float64()),
            ("B", pa.float64()),
        ],
        metadata={
            b"simfluence.model_format": str(MODEL_FORMAT).encode(),
            b"simfluence.columns": json.dumps(param_columns(method)).encode(),
        },
    )


def _tests_per_group(n: int) -> int:
    return max(1, ROW_GROUP_ROWS // max(n, 1))  # whole test examples per row group


def _param_group(
    cols: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    te_dict,
    ex_dict,
    additive: bool,
    schema: pa.Schema,
) -> pa.Table:
    """Rows of test columns ``cols`` (A, B: (n, len(cols))), test-major."""
    n = A.shape[0]
    te = np.repeat(cols, n).astype(np.int32)
    ex = np.tile(np.arange(n, dtype=np.int32), len(cols))
    a = A.T.reshape(-1)
    return pa.Table.from_arrays(
        [
            pa.DictionaryArray.from_arrays(arrow_numbers(te), te_dict),
            pa.DictionaryArray.from_arrays(arrow_numbers(ex), ex_dict),
            pa.nulls(len(a), pa.float64()) if additive else arrow_numbers(a),
            arrow_numbers(B.T.reshape(-1)),
        ],
        schema=schema,
    )


def _write_parameters(path: Path, sim: Simulator) -> None:
    n, m = sim.A_.shape
    additive = sim.method == "additive"
    ex_dict = arrow_strings(sim.example_ids_.tolist())
    te_dict = arrow_strings(sim.test_ids_.tolist())
    schema = _param_schema(sim.method)
    per_group = _tests_per_group(n)

    def write(fh):
        with pq.ParquetWriter(fh, schema) as w:
            for s in range(0, m, per_group):
                cols = np.arange(s, min(m, s + per_group))
                w.write_table(
                    _param_group(
                        cols, sim.A_[:, cols], sim.B_[:, cols], te_dict, ex_dict, additive, schema
                    )
                )

    write_atomic(path, write)


class ParameterWriter:
    """Streams a fit's parameters into the next generation's parameter file as they come.

    Use as ``Simulator.fit(runs, param_sink=writer, keep_params=False)``, then
    ``save_model(..., parameters=writer)``. Chunks of tests may arrive in any order; they are
    written as row groups of whole tests in test order (the layout :func:`save_model` writes),
    each as soon as every earlier test is written, into a hidden temp file in the model
    directory (fsynced and renamed by ``save_model`` before the manifest, the commit point).
    :meth:`abort` removes the temp.

    ``staging``: a staging directory of this process (``store/_staging.py``): the temp file is
    written there, so the fit can run without the store's write lock (other writers leave a
    live process's staging alone); the model directory is made only when :meth:`commit`
    (under the lock) moves the file into it. Without it, call with the lock held for the
    whole fit: the temp file is then written in the model directory.
    """

    def __init__(
        self, store, name: str, example_ids, test_ids, method: str, staging: Path | None = None
    ):
        self.dir = model_dir(store, name)
        self.staging = staging
        self.made_dir = staging is None and not self.dir.exists()  # abort removes it too
        if staging is None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.gen = f"{int(time.time())}-{secrets.token_hex(3)}"
        self.file_name = f"parameters-{self.gen}.parquet"
        self.tmp = (self.dir if staging is None else staging) / (
            f".{self.file_name}.{secrets.token_hex(4)}.tmp"
        )
        self.n, self.m = len(example_ids), len(test_ids)
        self.additive = method == "additive"
        self.ex_dict = arrow_strings(example_ids)
        self.te_dict = arrow_strings(test_ids)
        self.schema = _param_schema(method)
        self.per_group = _tests_per_group(self.n)
        self.pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.next = 0  # first test not written yet
        self.ready: list[int] = []
        self._fh = open(self.tmp, "wb")
        self._writer = pq.ParquetWriter(self._fh, self.schema)
        self.done = False

    def __call__(self, tests, A: np.ndarray, B: np.ndarray) -> None:
        for j, t in enumerate(np.asarray(tests, dtype=np.int64)):
            self.pending[int(t)] = (A[:, j], B[:, j])
        while self.next in self.pending:
            self.ready.append(self.next)
            self.next += 1
            if len(self.ready) == self.per_group:
                self._flush()

    def _flush(self) -> None:
        cols = np.asarray(self.ready, dtype=np.int64)
        parts = [self.pending.pop(int(t)) for t in cols]
        A = np.column_stack([p[0] for p in parts])
        B = np.column_stack([p[1] for p in parts])
        self._writer.write_table(
            _param_group(cols, A, B, self.te_dict, self.ex_dict, self.additive, self.schema)
        )
        self.ready = []

    def commit(self) -> str:
        """Finish the file and move it to its final name; returns that name."""
        if self.ready:
            self._flush()
        if self.next != self.m or self.pending:
            raise ModelError(f"internal: streamed parameters of {self.next} of {self.m} tests")
        import os

        self._writer.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.chmod(self.tmp, 0o666 & ~_umask())
        self.dir.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.dir / self.file_name)
        self.done = True
        return self.file_name

    def abort(self) -> None:
        if not self.done:
            try:
                self._writer.close()
                self._fh.close()
            except Exception:
                pass
            self.tmp.unlink(missing_ok=True)
            if self.made_dir:
                try:
                    self.dir.rmdir()  # only if still empty: nothing else was written there
                except OSError:
                    pass
            self.done = True


def _umask() -> int:
    from simfluence_cli._atomic import _UMASK

    return _UMASK


ROW_GROUP_ROWS = 1_000_000  # parameter rows per row group (rounded down to whole tests)
TEST_CHUNK_ENV = "SIMFLUENCE_TEST_CHUNK"
PARAM_CHUNK_BYTES = 128 * 2**20


def param_chunk_size(n_examples: int, n_tests: int | None = None) -> int:
    """Test examples per chunk when a model's parameters are used chunk by chunk.

    ``$SIMFLUENCE_TEST_CHUNK`` (a positive integer) sets it; the default keeps one chunk's
    A and B (2 x 8 bytes x n_examples per test) within 128 MB:
    max(1, 128 MB // (16 n_examples)) (1,048 tests at 8,000 training examples, 419 at 20,000).
    Working memory is a few times that (loading one row group, rollout/effect temporaries).
    """
    import os

    env = os.environ.get(TEST_CHUNK_ENV, "").strip()
    if env:
        try:
            size = int(env)
        except ValueError:
            raise UsageError(f"${TEST_CHUNK_ENV} must be a positive integer, got {env!r}") from None
        if size < 1:
            raise UsageError(f"${TEST_CHUNK_ENV} must be a positive integer, got {env!r}")
    else:
        size = max(1, PARAM_CHUNK_BYTES // (16 * max(1, int(n_examples))))
    return size if n_tests is None else max(1, min(size, int(n_tests)))


def split_tests(tests, n_examples: int):
    """``tests`` (a sequence) split into consecutive chunks of :func:`param_chunk_size`."""
    tests = list(tests)
    size = param_chunk_size(n_examples, len(tests))
    return [tests[s : s + size] for s in range(0, len(tests), size)]


class StoredModel:
    """A stored model whose parameters are loaded one chunk of test examples at a time.

    Everything but A_ and B_ (test and example ids, counts, loss ranges, manifest) is loaded
    up front; attribute access falls through to that metadata-only Simulator (``meta``).
    :meth:`chunks` yields ``(test_ids, Simulator)`` with that chunk's parameters only, so
    eval, top and simulate never hold the whole N_train x N_test matrix.
    """

    def __init__(self, store, name: str, tests: list[str] | None = None):
        self.store, self.name = store, name
        self.meta = load_model(store, name, tests=tests, parameters=False)

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"StoredModel({self.name!r} in {self.store.path}: {m!r}, "
            f"{len(m.example_ids_)} examples x {len(m.test_ids_)} tests, parameters per chunk)"
        )

    def __getattr__(self, attr):
        if attr in ("meta", "store", "name"):
            raise AttributeError(attr)
        return getattr(self.meta, attr)

    def chunks(self, tests=None):
        """Yield (test ids, Simulator with only those tests' parameters), memory-bounded."""
        tests = list(self.meta.test_ids_) if tests is None else list(tests)
        for chunk in split_tests(tests, len(self.meta.example_ids_)):
            yield (
                chunk,
                load_model(self.store, self.name, tests=chunk, manifest=self.meta.manifest_),
            )


def load_model(
    store,
    name: str,
    tests: list[str] | None = None,
    parameters: bool = True,
    manifest: dict | None = None,
) -> Simulator:
    """A fitted Simulator from the store (optionally only some test examples' parameters).

    ``parameters=False`` loads everything but A_ and B_ (set to None): ids, counts, ranges.
    ``manifest``: read the files of this (already read) manifest, so the chunks of one
    :class:`StoredModel` come from one generation even if the model is refitted meanwhile.
    """
    try:
        return _load_model(store, name, tests, parameters, manifest)
    except (OSError, KeyError, TypeError, IndexError, ValueError, pa.ArrowException) as exc:
        raise ModelError(
            f"model {name!r} in {store.path} is damaged ({type(exc).__name__}: "
            f"{str(exc)[:200]}); refit with `simfluence fit --name {name} --replace` "
            "(see `simfluence verify`)"
        ) from None


def _load_model(store, name, tests, parameters, manifest) -> Simulator:  # see load_model
    if manifest is None:  # the first read of this model in a command: say if it is stale
        man = read_manifest(store, name)
        why = stale_reason(store, man)
        if why is not None:
            warnings.warn(
                f"model {name!r} is stale: {why}; its results describe the old data (refit "
                f"with `simfluence fit --name {name} --replace`)",
                SimfluenceWarning,
                stacklevel=3,
            )
    else:
        man = manifest
    return load_model_files(model_dir(store, name), man, name, tests, parameters)


def stale_reason(store, man: dict) -> str | None:
    """Why a model no longer matches its fitting runs in ``store`` (None when it does, or
    when it names no fitting runs, e.g. scores imported without --runs)."""
    cfg = man.get("config") or {}
    run_ids, fitted_hash = cfg.get("runs") or [], cfg.get("data_hash")
    data_hash = getattr(store, "data_hash", None)  # a bare directory holder has no runs
    if not run_ids or not fitted_hash or data_hash is None:
        return None
    try:
        current = data_hash(run_ids)
    except SelectionError:
        return "some of its fitting runs are not in the store (any more)"
    if current != fitted_hash:
        return (
            f"the data of its {len(run_ids)} fitting run(s) changed since it was fitted "
            "(a run was re-ingested with --replace)"
        )
    return None


def load_model_files(
    d: Path, man: dict, name: str, tests=None, parameters: bool = True
) -> Simulator:
    """A Simulator from the files in ``d`` that manifest ``man`` names (see :func:`load_model`;
    errors are raw, the caller names the model)."""
    if man.get("format", 0) > MODEL_FORMAT:
        raise ModelError(f"model {name!r} was written by a newer simfluence; upgrade to read it")
    cfg = man["config"]
    sim = Simulator.from_config(SimulatorConfig.from_json({"l2": 0.0, **cfg}))
    tt = read_parquet(d / man["files"]["tests"])
    et = read_parquet(d / man["files"]["examples"])
    all_tests = np.asarray(tt["test_id"].to_pylist(), dtype=object)
    cols = np.arange(len(all_tests))
    if tests is not None:
        pos = {t: j for j, t in enumerate(all_tests)}
        bad = [t for t in tests if t not in pos]
        if bad:
            from simfluence_cli.errors import SelectionError

            raise SelectionError(f"model {name!r} has no test id(s) {', '.join(bad[:10])}")
        cols = np.asarray([pos[t] for t in tests], dtype=np.int64)
    sim.test_ids_ = all_tests[cols]
    sim.example_ids_ = np.asarray(et["example_id"].to_pylist(), dtype=object)
    sim.example_counts_ = np.array(np_view(et["count"]))
    sim.init_loss_mean_ = np_view(tt["init_loss_mean"])[cols]
    sim.loss_min_ = np_view(tt["loss_min"])[cols]
    sim.loss_max_ = np_view(tt["loss_max"])[cols]
    sim.l2_, sim.cv_curve_, sim.cv_folds_ = man["l2"], man.get("cv_curve"), man.get("cv_folds")
    sim.batch_size_ = man["batch_size"]
    sim.run_ids_ = list(cfg.get("runs", []))
    sim.fit_seconds_ = man.get("fit_seconds", 0.0)
    sim.solver_stats_ = dict(man.get("solver_stats") or {})
    sim.manifest_ = man
    if sim.method == "optimizer-aware":
        from simfluence_cli.model.optimizer_aware import Config, Schedule

        oa = man["optimizer_aware"]
        sim.config_ = Config(**oa["chosen"])
        sim.schedule_ = Schedule.from_dict(oa["schedule"])
        sim.ar_ = np_view(tt["ar"])[cols]
        H = sim.config_.n_basis
        sim.basis_ = (
            np.column_stack([np_view(tt[f"basis_{h}"])[cols] for h in range(H)])
            if H
            else np.zeros((len(cols), 0))
        )
    n, m = len(sim.example_ids_), len(cols)
    if not parameters:  # check the parameters file is there and readable (its footer only)
        _ = pq.ParquetFile(d / man["files"]["parameters"]).metadata
        sim.A_ = sim.B_ = None
        return sim
    sim.A_ = np.zeros((n, m))
    sim.B_ = np.zeros((n, m))
    if _fill_parameters(
        d / man["files"]["parameters"],
        all_tests,
        sim.example_ids_,
        cols,
        sim.A_,
        sim.B_,
        sim.method != "additive",
    ):
        return sim
    pt = _read_parameters(
        d / man["files"]["parameters"], all_tests, n, None if tests is None else cols
    )
    te = _dict_codes(pt["test_id"], all_tests)
    ex = _dict_codes(pt["example_id"], sim.example_ids_)
    colpos = np.full(len(all_tests), -1)
    colpos[cols] = np.arange(m)
    te = colpos[te]
    sim.A_ = np.zeros((n, m))
    sim.B_ = np.zeros((n, m))
    if sim.method != "additive":
        sim.A_[ex, te] = np_view(pt["A"])
    sim.B_[ex, te] = np_view(pt["B"])
    return sim


def _fill_parameters(
    path: Path,
    all_tests: np.ndarray,
    example_ids: np.ndarray,
    cols: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    with_a: bool,
) -> bool:
    """Fill A, B (n, len(cols)) with the parameters of test columns ``cols``, one row group at a
    time (memory: the output plus one row group). Only row groups holding wanted tests are read.

    Relies on the layout save_model writes (n rows per test, tests in the tests file's order,
    examples in the examples file's order, row groups of whole tests) and checks it on every
    row group read; returns False (nothing trusted) when the file is laid out otherwise.
    """
    n = len(example_ids)
    pf = pq.ParquetFile(path)
    md = pf.metadata
    if n == 0 or md.num_rows != n * len(all_tests):
        return False
    sizes = np.asarray([md.row_group(i).num_rows for i in range(md.num_row_groups)], dtype=np.int64)
    if np.any(sizes % n):
        return False
    first = (np.cumsum(sizes) - sizes) // n  # first test of each row group
    where: dict[int, list[int]] = {}  # test column -> output positions (a test may repeat)
    for j, c in enumerate(np.asarray(cols, dtype=np.int64).tolist()):
        where.setdefault(c, []).append(j)
    group_of = np.searchsorted(first, np.fromiter(where, dtype=np.int64), side="right") - 1
    ex_expect = None
    for g in sorted(set(group_of.tolist())):  # (np.unique would import numpy.ma, ~0.015 s)
        k = int(sizes[g] // n)
        t = pf.read_row_group(g, columns=["test_id", "example_id", "A", "B"])
        te = _dict_codes(t["test_id"], all_tests)
        if ex_expect is None:
            ex_expect = np.arange(n)
        if not (
            np.array_equal(te, np.repeat(np.arange(first[g], first[g] + k), n))
            and np.array_equal(
                _dict_codes(t["example_id"], example_ids).reshape(k, n),
                np.broadcast_to(ex_expect, (k, n)),
            )
        ):
            A[:] = 0.0
            B[:] = 0.0
            return False
        a = np_view(t["A"]).reshape(k, n) if with_a else None
        b = np_view(t["B"]).reshape(k, n)
        del t, te
        for c in range(int(first[g]), int(first[g]) + k):
            for j in where.get(c, ()):
                if with_a:
                    A[:, j] = a[c - first[g]]
                B[:, j] = b[c - first[g]]
    return True


def _read_parameters(
    path: Path, all_tests: np.ndarray, n: int, cols: np.ndarray | None
) -> pa.Table:
    """The parameter rows of test columns ``cols`` (None = all).

    The file holds n rows per test in the tests file's order (rows sorted by test, row groups
    of whole tests), so the row groups holding the wanted tests follow from the row-group sizes
    in the footer: only those are read, then filtered on the dictionary codes of test_id.
    A file not laid out like that falls back to a Parquet filter on test_id.
    """
    if cols is None:
        return read_parquet(path)
    wanted = np.unique(cols)
    pf = pq.ParquetFile(path)
    md = pf.metadata
    if md.num_rows != n * len(all_tests) or n == 0:
        return pq.read_table(path, filters=[("test_id", "in", list(all_tests[wanted]))])
    sizes = np.asarray([md.row_group(i).num_rows for i in range(md.num_row_groups)], dtype=np.int64)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    first_test, last_test = starts // n, (ends - 1) // n  # tests each row group touches
    lo = np.searchsorted(wanted, first_test, side="left")
    hi = np.searchsorted(wanted, last_test, side="right")
    groups = [int(g) for g in np.flatnonzero((hi > lo) & (sizes > 0))]
    if not groups:
        return read_parquet(path).slice(0, 0)
    pt = pf.read_row_groups(groups)
    keep = np.zeros(len(all_tests), dtype=bool)
    keep[wanted] = True
    te = _dict_codes(pt["test_id"], all_tests)
    return pt.filter(pa.array(keep[te]))


def _dict_codes(column: pa.ChunkedArray, universe: np.ndarray) -> np.ndarray:
    """Positions in ``universe`` of a dictionary-encoded string column's values (vectorised)."""
    column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    order = np.argsort(universe)
    dict_vals = np.asarray(column.dictionary.to_pylist(), dtype=object)
    where = order[np.searchsorted(universe[order], dict_vals)]
    return where[np_view(column.indices)]


def _json_safe(d: dict) -> dict:
    """Plain JSON types of a flat stats dict (numpy scalars -> int / float)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
    return out


# -- workflows: fit and save under a name, simulate chunk by chunk, the store's model registry --


@dataclass
class FitResult:
    """What :func:`fit_model` did. ``up_to_date``: a model of this name with the same
    configuration and data existed and was left as it is (``simulator`` is then None)."""

    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays

    name: str
    manifest: dict
    up_to_date: bool
    run_ids: list[str]
    simulator: Simulator | None = None
    n_examples: int = 0
    n_tests: int = 0


def resolve_fit_method(store, method: str, run_ids: Sequence[str]) -> str:
    """The method ``method`` stands for when fitted on the store's ``run_ids``
    (``config.resolve_method``: "auto" depends on whether every run logs every step, read from
    the store's run table without loading the runs); any other method is returned as is."""
    if method != AUTO_METHOD:
        return method
    ids = set(run_ids)
    every = all(e["loss_steps"] == e["steps"] + 1 for e in store.runs() if e["run"] in ids)
    return resolve_method(method, every)


def fit_model(
    store,
    name: str,
    simulator: Simulator,
    runs: str | Sequence[str] = "all",
    *,
    replace: bool = False,
    execution: ExecutionOptions | None = None,
    on_start: Callable[[RunSet], Callable[[float], None] | None] | None = None,
) -> FitResult:
    """Fit ``simulator`` on the store's ``runs`` (a selector or run ids) and save it as ``name``.

    The data hash of the selected runs is compared with an existing model of that name. Same
    configuration and data: nothing is refitted (``up_to_date=True``) unless ``replace``; a
    different one is a ConflictError unless ``replace``. The runs are read as one snapshot
    and the fit computes WITHOUT the store's write lock; parameters stream into a staging
    file as test chunks are solved (the training x test matrix is never in memory;
    ``simulator.A_`` stays None). The lock is taken only to commit: :func:`check_snapshot`
    (a fitting run changed meanwhile: ConflictError, nothing saved) and
    :func:`check_model_unchanged` (another command saved ``name`` meanwhile), then the
    parameter file is moved into the model directory and the manifest commits last. ``on_start(runset)`` is called with the loaded runs just
    before fitting and may return a ``progress(k)`` callback (k = tests solved; twice the
    tests with ``l2='auto'``). ``execution``: solver, workers, dask (the progress callback
    from ``on_start`` takes precedence over ``execution.progress``). A simulator with method
    "auto" is set to the method it stands for on these runs (:func:`resolve_fit_method`)
    before anything else: the model records the resolved method.
    """
    check_name(name)
    auto = simulator.method == AUTO_METHOD
    # a malformed option fails before the store is touched
    replace_field(simulator.config, method=OPTIMIZER_AWARE if auto else simulator.method).validate()
    execution = (execution or ExecutionOptions()).validate()
    ids = store.select(runs)
    if auto:
        simulator.set_params(method=resolve_fit_method(store, AUTO_METHOD, ids))
    selector = runs if isinstance(runs, str) else None
    # no lock while reading and computing: the runs are read as one snapshot (one manifest),
    # the fit computes on it, and the lock is taken only to commit (check_snapshot)
    data_hash = store.data_hash(ids)
    prev = check_existing(store, name, model_config(simulator, ids, data_hash), replace=replace)
    if prev is not None:
        return FitResult(name, prev, True, list(ids))
    before = model_state(store, name)
    staging = _staging.new_entry(store.path, "fit")  # a read-only store fails here
    writer = None
    try:
        rs = store.load(ids)
        pins, data_hash = dict(rs.source.pins), rs.source.data_hash
        progress = on_start(rs) if on_start is not None else None
        if progress is not None:
            execution = replace_field(execution, progress=progress)
        writer = ParameterWriter(
            store, name, rs.example_ids, rs.test_ids, simulator.method, staging=staging
        )
        simulator.fit(rs, param_sink=writer, keep_params=False, execution=execution)
        with store.write_lock():
            check_snapshot(store, name, pins, "fit")
            config = model_config(simulator, ids, data_hash)
            same = check_model_unchanged(store, name, before, config, replace, "fit")
            if same is not None:
                return FitResult(name, same, True, list(ids))
            man = save_model(
                store,
                name,
                simulator,
                runs=ids,
                data_hash=data_hash,
                selector=selector,
                replace=replace,
                parameters=writer,
            )
    finally:
        if writer is not None:
            writer.abort()  # no-op once committed
        _staging.remove(staging)
    return FitResult(name, man, False, list(ids), simulator, rs.n_examples, rs.n_tests)


def model_state(store, name: str) -> tuple | None:
    """What identifies the committed model ``name`` now: (parameters file, fitted_at), None
    when there is none. A computation records it when it starts and compares at commit."""
    mf = model_dir(store, name) / "model.json"
    try:
        man = json.loads(mf.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return ("unreadable",)
    files = man.get("files") if isinstance(man, dict) else None
    return (
        files.get("parameters") if isinstance(files, dict) else None,
        man.get("fitted_at") if isinstance(man, dict) else None,
    )


def check_snapshot(store, name: str, pins: dict[str, str], what: str = "fit") -> None:
    """Refuse to commit model ``name`` (ConflictError, one line) when the runs a computation
    read (``pins``: run id -> content hash, from ``RunSet.source.pins``) are not what the store
    holds now: a model recording that data hash would lie. Call with the write lock held.
    Other runs ingested or replaced meanwhile do not matter."""
    runs = store._manifest()["runs"]
    changed = []
    for rid, h in sorted(pins.items()):
        now = runs.get(rid)
        if now is None:
            changed.append(f"{rid!r} is no longer in the store")
        elif now.get("content_hash") != h:
            changed.append(
                f"{rid!r} was re-ingested with other content ({h[:12]} -> "
                f"{str(now.get('content_hash'))[:12]})"
            )
    if changed:
        raise ConflictError(
            f"model {name!r} not saved: {len(changed)} of its {len(pins)} fitting run(s) "
            f"changed while the {what} computed ({'; '.join(changed[:3])}"
            f"{'; ...' if len(changed) > 3 else ''}); the store is unchanged: rerun the {what}"
        )


def check_model_unchanged(
    store, name: str, before: tuple | None, config: dict, replace: bool, what: str = "fit"
) -> dict | None:
    """At commit (write lock held): did another command save model ``name`` while this
    computation ran (its state differs from ``before``, :func:`model_state` at the start)?

    The rule: the later commit never silently replaces the newer model. With ``replace`` it
    does, with a warning naming the model it overwrites (the last ``--replace`` to commit
    wins). Without, the model saved meanwhile is kept: when it has this very configuration
    and data it is returned (the result is the same: nothing to save), otherwise a
    ConflictError says so. None: go ahead and save (also when the model was deleted
    meanwhile)."""
    now = model_state(store, name)
    if now is None or now == before:
        return None
    when = now[1] if len(now) > 1 and now[1] else "just now"
    if replace:
        warnings.warn(
            f"model {name!r} was saved by another command (fitted {when}) while this {what} "
            "computed; it is overwritten by this one (--replace: the last to commit wins)",
            SimfluenceWarning,
            stacklevel=2,
        )
        return None
    try:
        prev = check_existing(store, name, config, replace=False)
    except (ConflictError, ModelError):
        raise ConflictError(
            f"model {name!r} not saved: another command saved a model of that name (fitted "
            f"{when}) with another configuration or data while this {what} computed; it is "
            f"kept and the store is unchanged: rerun the {what} with --replace to overwrite "
            "it, or with another --name"
        ) from None
    return prev


#: bytes of (C, T+1, M) float64 trajectories (and interval bounds) rolled out at once by
#: :func:`simulate_groups`; more curricula are rolled in groups of this size
SIMULATE_GROUP_BYTES = 256 * 2**20


def curriculum_groups(lengths: Sequence[int], M: int, arrays: int = 1) -> list[range]:
    """Consecutive index ranges of curricula whose ``arrays`` (C, T+1, M) float64 arrays fit
    in :data:`SIMULATE_GROUP_BYTES` (at least one curriculum per group)."""
    groups, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        longest_i = max(longest, n)
        if i > start and (i - start + 1) * (longest_i + 1) * M * 8 * arrays > SIMULATE_GROUP_BYTES:
            groups.append(range(start, i))
            start, longest_i = i, n
        longest = longest_i
    groups.append(range(start, len(lengths)))
    return groups


def simulate_groups(model, curricula, init_loss=None, *, unseen: str = "error", arrays: int = 1):
    """:func:`simulate_chunks` of many curricula, one batched rollout per memory-sized group
    (:func:`curriculum_groups`; ``arrays``: (C, T+1, M) arrays the caller keeps per group, e.g.
    3 with interval bounds). ``init_loss``: (M,) or (C, M). Yields (group as a range of
    curriculum indices, its (len(group), T+1, M) trajectories) in input order."""
    batches = [c.batches if hasattr(c, "batches") else c for c in curricula]
    M = len(model.test_ids_)
    L0 = model.init_loss_mean_ if init_loss is None else init_loss
    L0 = np.broadcast_to(np.asarray(L0, dtype=np.float64), (len(batches), M))
    for g in curriculum_groups([len(b) for b in batches], M, arrays):
        yield (
            g,
            simulate_chunks(model, batches[g.start : g.stop], L0[g.start : g.stop], unseen=unseen),
        )


def simulate_chunks(
    model,
    curricula,
    init_loss=None,
    *,
    unseen: str = "error",
) -> np.ndarray:
    """Roll ``curricula`` (lists of batches of example IDs) forward with a stored model one
    chunk of test examples at a time (memory: one chunk's parameters, see
    :func:`param_chunk_size`). ``model``: a :class:`StoredModel` or a fitted Simulator.
    ``init_loss``: (M,) or (C, M) aligned with ``model.test_ids_`` (None = the mean observed
    step-0 loss). Returns (C, T+1, M), NaN past a shorter curriculum's end, equal to
    ``load_model(...).simulate(curricula, init_loss, unseen=unseen)``.
    """
    batches = [c.batches if hasattr(c, "batches") else c for c in curricula]
    idx = model.encode(batches, unseen=unseen)
    lengths = [len(c) for c in batches]
    M = len(model.test_ids_)
    L0 = model.init_loss_mean_ if init_loss is None else init_loss
    L0 = np.broadcast_to(np.asarray(L0, dtype=np.float64), (len(batches), M))
    T = max(lengths, default=0)
    out = np.empty((len(batches), T + 1, M))
    pieces = model.chunks() if hasattr(model, "chunks") else [(list(model.test_ids_), model)]
    s = 0
    for chunk, part in pieces:
        k = len(chunk)
        out[:, :, s : s + k] = part.simulate(idx, init_loss=L0[:, s : s + k], lengths=lengths)
        s += k
        part = None  # free this chunk's parameters before the next one is loaded
    return out


class ModelRegistry:
    """The models of a store as a mapping: ``store.models``.

    ``store.models["linear"]`` loads a model (with parameters); ``"x" in store.models``;
    ``list(store.models)`` / ``len(...)`` give the names; :meth:`list` the manifests;
    ``del store.models["x"]`` / :meth:`delete` remove one (under the write lock, atomically:
    the manifest goes first); :meth:`fit` is :func:`fit_model`; :meth:`open` a
    :class:`StoredModel` that loads parameters one chunk of tests at a time.
    """

    def __init__(self, store):
        self.store = store

    def __repr__(self) -> str:
        return f"ModelRegistry({self.store.path}: {', '.join(self) or 'no models'})"

    def __iter__(self):
        return iter([m["name"] for m in list_models(self.store)])

    def __len__(self) -> int:
        return len(list_models(self.store))

    def __contains__(self, name) -> bool:
        return (
            isinstance(name, str)
            and _NAME.match(name) is not None
            and (model_dir(self.store, name) / "model.json").is_file()
        )

    def __getitem__(self, name: str) -> Simulator:
        """The fitted model; a missing name is a :class:`ModelNotFoundError` (a ModelError
        and a KeyError) naming the available ones."""
        if name not in self:
            self._missing(name)
        return load_model(self.store, name)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            self._missing(name)
        self.delete(name)

    def _missing(self, name) -> None:
        if not isinstance(name, str):
            raise ModelNotFoundError(f"model names are strings, got {name!r}")
        names = list(self)
        raise ModelNotFoundError(
            f"no model named {name!r} in {self.store.path}; "
            + (f"available: {', '.join(names)}" if names else "fit one with store.models.fit")
        )

    def keys(self) -> list[str]:
        """The model names, sorted."""
        return list(self)

    def get(self, name: str, default=None):
        """The fitted model ``name`` (parameters loaded), or ``default`` when there is none."""
        return self[name] if name in self else default

    def load(self, name: str, tests: list[str] | None = None, parameters: bool = True):
        """:func:`load_model` (a missing name is a ModelError naming the available ones)."""
        return load_model(self.store, name, tests=tests, parameters=parameters)

    def open(self, name: str, tests: list[str] | None = None) -> StoredModel:
        """A :class:`StoredModel`: metadata now, parameters one chunk of tests at a time."""
        return StoredModel(self.store, name, tests=tests)

    def list(self) -> list[dict]:
        """One dict per model: name, kind, method, l2, runs, n_examples, n_tests, fitted_at,
        description (a one-line summary)."""
        out = []
        for m in list_models(self.store):
            cfg = m.get("config") or {}
            out.append(
                {
                    "name": m.get("name"),
                    "kind": cfg.get("kind"),
                    "method": cfg.get("method"),
                    "l2": m.get("l2"),
                    "runs": len(cfg.get("runs") or []),
                    "n_examples": m.get("n_examples"),
                    "n_tests": m.get("n_tests"),
                    "fitted_at": m.get("fitted_at"),
                    "description": describe_model(m),
                }
            )
        return out

    def save(self, name: str, simulator: Simulator, *, replace: bool = False) -> FitResult:
        """Save a Simulator fitted in this session (``Simulator(...).fit(store.load(SEL))``)
        as ``name`` without refitting; :meth:`fit` fits and saves in one step.

        Its fitting runs (``run_ids_``) must be in the store as they were fitted: the model
        records the store's data hash of them, so a simulator whose ids or mean step-0 losses
        differ from those runs' (fitted on other data) is a ModelError. Under the write lock;
        an existing model of that name with another configuration is a ConflictError unless
        ``replace`` (one with the same configuration is overwritten by this fit)."""
        simulator._check_fitted(parameters=True)
        check_name(name)
        ids = list(simulator.run_ids_)
        if not ids:
            raise ModelError("this Simulator records no fitting runs; fit it on store.load(...)")
        with self.store.write_lock():
            data_hash = self.store.data_hash(ids)  # SelectionError when a run is not stored
            first = self.store.load(ids, loss_steps=1)  # curricula and step-0 losses only
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # tests absent from some runs
                L0 = np.nanmean(np.vstack([r.losses[0] for r in first.runs]), axis=0)
            same = (
                np.array_equal(first.example_ids, simulator.example_ids_)
                and np.array_equal(first.test_ids, simulator.test_ids_)
                and np.allclose(L0, simulator.init_loss_mean_, rtol=1e-12, equal_nan=True)
            )
            if not same:
                raise ModelError(
                    f"this Simulator was not fitted on the runs {', '.join(ids[:3])}"
                    f"{', ...' if len(ids) > 3 else ''} as {self.store.path} holds them (its "
                    "example ids, test ids or mean step-0 losses differ); fit and save with "
                    f"store.models.fit({name!r}, Simulator(...), runs=...)"
                )
            man = save_model(
                self.store, name, simulator, runs=ids, data_hash=data_hash, replace=replace
            )
        return FitResult(
            name, man, False, ids, simulator, len(simulator.example_ids_), len(simulator.test_ids_)
        )

    def manifest(self, name: str) -> dict:
        """The model's ``model.json`` as a dict (docs/store-format.md)."""
        return read_manifest(self.store, name)

    def fit(
        self,
        name: str,
        simulator: Simulator,
        runs: str | Sequence[str] = "all",
        **kw,
    ) -> FitResult:
        """:func:`fit_model` on this store."""
        return fit_model(self.store, name, simulator, runs, **kw)

    def delete(self, name: str) -> None:
        """Remove model ``name`` (ModelError if there is none)."""
        delete_model(self.store, name)


def describe_model(manifest: dict) -> str:
    """One line: kind/method, penalty, prior, clip, fitting runs, size."""
    cfg = manifest.get("config") or {}
    l2 = manifest.get("l2")
    how = "by CV" if manifest.get("cv_curve") else "given"
    parts = [
        f"{cfg.get('kind', 'simfluence')} {cfg.get('method')}",
        f"l2={l2:g} ({how})" if isinstance(l2, int | float) else f"l2={l2}",
        f"prior {cfg.get('prior')}",
        f"clip {cfg.get('clip')}",
        f"{len(cfg.get('runs') or [])} run(s)",
        f"{manifest.get('n_examples')} examples x {manifest.get('n_tests')} tests",
    ]
    return ", ".join(parts)


def delete_model(store, name: str) -> None:
    """Remove a stored model under the store's write lock. The manifest (the commit point) is
    removed first, atomically, so a reader sees the whole model or none; then its files."""
    import os
    import shutil

    d = model_dir(store, name)
    with store.write_lock():
        read_manifest(store, name)  # ModelError naming the available models
        trash = d.with_name(f".{name}.deleted-{secrets.token_hex(4)}")
        os.replace(d / "model.json", d / f".model.json.{secrets.token_hex(4)}.deleted")
        os.replace(d, trash)
        shutil.rmtree(trash, ignore_errors=True)

"""Fitted models stored next to the data they came from: ``<store>/models/<name>/``.

Each model directory holds
- ``parameters-<gen>.parquet``: one row per (test, training example): ``test_id, example_id,
  A, B`` (A null for additive models, whose alpha is fixed at 1), sorted by test then example
  and written in row groups of whole test examples;
- ``tests-<gen>.parquet``: per test example the mean initial loss and the observed loss range;
- ``examples-<gen>.parquet``: per training example its occurrences in the fitting curricula;
- ``model.json``: the manifest (configuration, penalty chosen and CV curve, runs used, data
  hash, tool version, fit time, file names). It is written last and is the commit point.
  After a save, files named neither by it nor by the previous manifest (leftovers of older
  generations or interrupted writes) are removed; the previous generation is kept so a reader
  that opened the old manifest can still read its files.

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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simfluence_cli._atomic import write_atomic, write_bytes_atomic
from simfluence_cli._version import __version__
from simfluence_cli.errors import ConflictError, ModelError, UsageError
from simfluence_cli.model.simulator import DEFAULT_L2_GRID, Simulator
from simfluence_cli.store.format import MODEL_FORMAT, PARAM_COLUMNS

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
        raise ModelError(
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
    """What identifies a fit: configuration, runs used and their data hash."""
    return {
        "kind": kind,
        **sim.get_params(),
        "runs": list(runs),
        "data_hash": data_hash,
        **({"source": extra["source"]} if extra and "source" in extra else {}),
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
    if prev.get("config") == config:
        return None if replace else prev
    if replace:
        return None
    diff = config_differences(prev.get("config") or {}, config)
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
    prev_files: set[str] = set()
    if (d / "model.json").is_file():
        try:
            prev_files = set(json.loads((d / "model.json").read_text()).get("files", {}).values())
        except (ValueError, AttributeError):
            prev_files = set()
    gen = f"{int(time.time())}-{secrets.token_hex(3)}" if parameters is None else parameters.gen
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
        "test_id": pa.array(sim.test_ids_.tolist(), pa.string()),
        "init_loss_mean": sim.init_loss_mean_,
        "loss_min": sim.loss_min_,
        "loss_max": sim.loss_max_,
    }
    test_meanings = {
        "init_loss_mean": "mean observed loss at step 0 over the fitting runs",
        "loss_min": "smallest observed loss in the fitting runs",
        "loss_max": "largest observed loss in the fitting runs",
    }
    oa = None
    if sim.method == "optimizer-aware":
        test_cols["ar"] = sim.ar_
        test_meanings["ar"] = "AR coefficient rho on the previous (transformed) loss increment"
        for h in range(sim.basis_.shape[1]):
            test_cols[f"basis_{h}"] = sim.basis_[:, h]
            test_meanings[f"basis_{h}"] = f"weight of time hat function {h} (drift per step)"
        oa = {"chosen": sim.config_.as_dict(), "schedule": sim.schedule_.to_dict()}
    _write_table(d / files["tests"], pa.table(test_cols), test_meanings)
    _write_table(
        d / files["examples"],
        pa.table(
            {
                "example_id": pa.array(sim.example_ids_.tolist(), pa.string()),
                "count": sim.example_counts_,
            }
        ),
        {"count": "occurrences of the example in the fitting runs' curricula"},
    )
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
        "tool_version": __version__,
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
        **({"optimizer_aware": oa} if oa is not None else {}),
        **(extra or {}),
    }
    write_bytes_atomic(d / "model.json", (json.dumps(manifest, indent=2) + "\n").encode())
    keep = {"model.json", *files.values(), *prev_files}
    for f in d.iterdir():  # leftovers of older generations or interrupted writes
        if f.name not in keep:
            f.unlink(missing_ok=True)
    return manifest


def _write_table(path: Path, table: pa.Table, meanings: dict[str, str]) -> None:
    meta = {
        b"simfluence.model_format": str(MODEL_FORMAT).encode(),
        b"simfluence.columns": json.dumps(meanings).encode(),
    }
    table = table.replace_schema_metadata(meta)
    write_atomic(path, lambda fh: pq.write_table(table, fh))


def _param_schema() -> pa.Schema:
    return pa.schema(
        [
            ("test_id", pa.dictionary(pa.int32(), pa.string())),
            ("example_id", pa.dictionary(pa.int32(), pa.string())),
            ("A", pa.float64()),
            ("B", pa.float64()),
        ],
        metadata={
            b"simfluence.model_format": str(MODEL_FORMAT).encode(),
            b"simfluence.columns": json.dumps(PARAM_COLUMNS).encode(),
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
    return pa.table(
        {
            "test_id": pa.DictionaryArray.from_arrays(pa.array(te), te_dict),
            "example_id": pa.DictionaryArray.from_arrays(pa.array(ex), ex_dict),
            "A": pa.array(a, mask=np.ones(len(a), bool)) if additive else a,
            "B": B.T.reshape(-1),
        },
        schema=schema,
    )


def _write_parameters(path: Path, sim: Simulator) -> None:
    n, m = sim.A_.shape
    additive = sim.method == "additive"
    ex_dict = pa.array(sim.example_ids_.tolist(), pa.string())
    te_dict = pa.array(sim.test_ids_.tolist(), pa.string())
    schema = _param_schema()
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
    Call with the store's write lock held (for the whole fit). :meth:`abort` removes the temp.
    """

    def __init__(self, store, name: str, example_ids, test_ids, method: str):
        self.dir = model_dir(store, name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.gen = f"{int(time.time())}-{secrets.token_hex(3)}"
        self.file_name = f"parameters-{self.gen}.parquet"
        self.tmp = self.dir / f".{self.file_name}.{secrets.token_hex(4)}.tmp"
        self.n, self.m = len(example_ids), len(test_ids)
        self.additive = method == "additive"
        self.ex_dict = pa.array([str(e) for e in example_ids], pa.string())
        self.te_dict = pa.array([str(t) for t in test_ids], pa.string())
        self.schema = _param_schema()
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


def _load_model(
    store,
    name: str,
    tests: list[str] | None = None,
    parameters: bool = True,
    manifest: dict | None = None,
) -> Simulator:
    man = manifest if manifest is not None else read_manifest(store, name)
    if man.get("format", 0) > MODEL_FORMAT:
        raise ModelError(f"model {name!r} was written by a newer simfluence; upgrade to read it")
    d = model_dir(store, name)
    cfg = man["config"]
    sim = Simulator(
        method=cfg["method"],
        l2=cfg.get("l2", 0.0),
        prior=cfg.get("prior", "no-change"),
        clip=cfg.get("clip", "observed"),
        clip_margin=cfg.get("clip_margin", 0.5),
        cv_folds=cfg.get("cv_folds", 5),
        l2_grid=cfg.get("l2_grid", DEFAULT_L2_GRID),
        **(
            {k: cfg[k] for k in ("transform", "ar", "time_basis") if k in cfg}
            if cfg["method"] == "optimizer-aware"
            else {}
        ),
    )
    tt = pq.read_table(d / man["files"]["tests"])
    et = pq.read_table(d / man["files"]["examples"])
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
    sim.example_counts_ = et["count"].to_numpy()
    sim.init_loss_mean_ = tt["init_loss_mean"].to_numpy()[cols]
    sim.loss_min_ = tt["loss_min"].to_numpy()[cols]
    sim.loss_max_ = tt["loss_max"].to_numpy()[cols]
    sim.l2_, sim.cv_curve_, sim.cv_folds_ = man["l2"], man.get("cv_curve"), man.get("cv_folds")
    sim.batch_size_ = man["batch_size"]
    sim.run_ids_ = list(cfg.get("runs", []))
    sim.fit_seconds_ = man.get("fit_seconds", 0.0)
    sim.manifest_ = man
    if sim.method == "optimizer-aware":
        from simfluence_cli.model.optimizer_aware import Config, Schedule

        oa = man["optimizer_aware"]
        sim.config_ = Config(**oa["chosen"])
        sim.schedule_ = Schedule.from_dict(oa["schedule"])
        sim.ar_ = tt["ar"].to_numpy()[cols]
        H = sim.config_.n_basis
        sim.basis_ = (
            np.column_stack([tt[f"basis_{h}"].to_numpy()[cols] for h in range(H)])
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
        sim.A_[ex, te] = pt["A"].to_numpy()
    sim.B_[ex, te] = pt["B"].to_numpy()
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
    for g in np.unique(group_of).tolist():
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
        a = t["A"].to_numpy().reshape(k, n) if with_a else None
        b = t["B"].to_numpy().reshape(k, n)
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
        return pq.read_table(path)
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
        return pq.read_table(path).slice(0, 0)
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
    return where[column.indices.to_numpy(zero_copy_only=False)]

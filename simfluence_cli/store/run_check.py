"""Checking one stored run's partition files against its manifest entry, and the report types
(:class:`Finding`, :class:`VerifyReport`) that ``verify`` and ``ingest --replace`` share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from simfluence_cli.io._arrow import _dict_column, np_view
from simfluence_cli.store.format import (
    CURRICULUM_LR_SCHEMA,
    CURRICULUM_SCHEMA,
    LOSS_SCHEMA,
    MANIFEST,
    PARTS,
    STORE_FORMAT,
    run_key,
)

ERROR, WARNING = "error", "warning"


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
        return (
            f"store {self.store} is {state}: {self.runs_checked} run(s), "
            f"{self.models_checked} model(s), {self.files_checked} file(s) checked; "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
            + (f"; repaired {len(self.repaired)}" if self.repaired else "")
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["errors"] = len(self.errors)
        d["warnings"] = len(self.warnings)
        return d

    def add(self, severity: str, where: str, message: str, fix: str, **kw) -> None:
        self.findings.append(Finding(severity, where, message, fix, **kw))


def _replace_fix(rid: str) -> str:
    return (
        f"re-ingest run {rid!r} from its source log with `simfluence ingest SOURCE --replace` "
        "(or restore the store from a backup)"
    )


def _present_values(col) -> set:
    """The distinct values of a null-free string column (without pyarrow.compute, ~0.1 s; the
    codes present by a count, not a sort)."""
    values, codes = _dict_column(col)
    return set(values[np.flatnonzero(np.bincount(codes, minlength=len(values)))].tolist())


def _check_run(store, rid: str, entry, rep: VerifyReport, named: set[str]) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from simfluence_cli.io.rundata import make_rundata

    where = f"{MANIFEST} run {rid!r}"
    need = ("files", "content_hash", "steps", "loss_rows", "curriculum_rows")
    if (
        not isinstance(entry, dict)
        or any(k not in entry for k in need)
        or not isinstance(entry.get("files"), dict)
        or any(not isinstance(entry["files"].get(p), str) for p in PARTS)
    ):
        rep.add(
            ERROR,
            where,
            "malformed manifest entry (missing files/content_hash/counts)",
            _replace_fix(rid),
            run=rid,
        )
        return False
    files = entry["files"]
    for part in PARTS:
        named.add(files[part])
    for part in PARTS:
        rel = files[part]
        p = store.path / rel
        try:
            inside = p.resolve().is_relative_to(store.path.resolve())
        except OSError:
            inside = False
        if not inside or not rel.startswith(f"{part}/"):
            rep.add(
                ERROR,
                where,
                f"{part} file {rel!r} is outside the store's {part}/ directory",
                _replace_fix(rid),
                run=rid,
            )
            return False
    if entry.get("key") not in (None, run_key(rid)):
        rep.add(
            WARNING,
            where,
            f"file key {entry.get('key')!r} is not the key of the run id",
            "harmless; the next --replace of this run rewrites it",
            run=rid,
        )
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
            rep.add(
                ERROR,
                rel,
                f"unreadable Parquet ({str(exc).splitlines()[0]})",
                _replace_fix(rid),
                run=rid,
            )
            ok = False
            continue
        want = schemas[part]
        if part == "curriculum" and entry.get("has_lr"):
            want = CURRICULUM_LR_SCHEMA
        if not schema.remove_metadata().equals(want):
            rep.add(
                ERROR,
                rel,
                f"schema {_schema_str(schema)} differs from the store's "
                f"{part} schema {_schema_str(want)}",
                _replace_fix(rid),
                run=rid,
            )
            ok = False
            continue
        meta = schema.metadata or {}
        fmt = meta.get(b"simfluence.store_format")
        if (
            fmt is None
            or not fmt.isdigit()
            or int(fmt) > STORE_FORMAT
            or meta.get(b"simfluence.table") != part.encode()
        ):
            rep.add(
                ERROR,
                rel,
                f"missing or wrong schema metadata (store_format={fmt!r}, "
                f"table={meta.get(b'simfluence.table')!r})",
                _replace_fix(rid),
                run=rid,
            )
            ok = False
            continue
        run_col = table.column("run")
        if run_col.null_count or _present_values(run_col) - {rid}:
            rep.add(
                ERROR, rel, f"holds rows of another run than {rid!r}", _replace_fix(rid), run=rid
            )
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
            rep.add(
                ERROR,
                f"{MANIFEST} run {rid!r}",
                f"{key} is {entry[key]} in the manifest but the file holds {got} rows",
                _replace_fix(rid),
                run=rid,
            )
            return False
    try:
        cstep = np_view(cur.column("step"))
        lstep = np_view(los.column("step"))
        loss = np_view(los.column("loss"))
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
        lr = None
        if entry.get("has_lr"):
            lr_rows = np_view(cur.column("lr"))[order]
            lr = lr_rows[ptr[:-1]]
            if not np.array_equal(lr_rows, np.repeat(lr, sizes)):
                raise ValueError("lr differs within a step")
        rd = make_rundata(rid, ex_codes[order], ex_vals, ptr, lstep, te_codes, te_vals, loss, lr=lr)
    except (ValueError, TypeError, IndexError) as exc:
        rep.add(
            ERROR,
            files["losses"],
            f"run {rid!r} content is invalid ({exc})",
            _replace_fix(rid),
            run=rid,
        )
        return False
    if rd.content_hash != entry["content_hash"]:
        rep.add(
            ERROR,
            f"{files['curriculum']} + {files['losses']}",
            f"content hash of run {rid!r} recomputed from its files is "
            f"{rd.content_hash[:12]}, the manifest records {str(entry['content_hash'])[:12]} "
            "(files modified or damaged)",
            _replace_fix(rid),
            run=rid,
        )
        return False
    st = rd.stats()
    for key in ("steps", "n_examples", "n_tests", "loss_steps", "batch_size_min", "batch_size_max"):
        if key in entry and int(entry[key]) != st[key]:
            rep.add(
                ERROR,
                f"{MANIFEST} run {rid!r}",
                f"{key} is {entry[key]} in the manifest but {st[key]} in the files",
                _replace_fix(rid),
                run=rid,
            )
            return False
    return True


def _schema_str(schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" for f in schema) + ")"


def _dict_values(col) -> list:
    import pyarrow as pa

    if pa.types.is_dictionary(col.type):
        return col.dictionary.to_pylist()
    return list(dict.fromkeys(col.to_pylist()))

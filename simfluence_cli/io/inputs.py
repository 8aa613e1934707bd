"""Which input paths hold which log encoding (:func:`plan_inputs`), and reading a plan run by run
(:func:`iter_runs`: every source parsed, validated and hashed).
"""

from __future__ import annotations

import gzip
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from simfluence_cli._hashing import file_sha256
from simfluence_cli.errors import InputError, UsageError
from simfluence_cli.io._fields import _base, _open_text
from simfluence_cli.io.gptdynamics import (
    C_LOSS,
    C_TRAIN,
    _is_c_dir,
    loss_file_name,
    raw_output_hint,
    read_gptdynamics,
)
from simfluence_cli.io.jsonl import read_jsonl
from simfluence_cli.io.rundata import RunData
from simfluence_cli.io.tables import _TableReader, table_header

FORMATS = {
    "jsonl": "A: JSON Lines, one file per run",
    "table": "B: long tables (CSV/Parquet): run,step,example_id and run,step,test_id,loss",
    "gptdynamics": "C: GPTDynamics run directories",
}
FORMAT_ALIASES = {
    "a": "jsonl",
    "jsonl": "jsonl",
    "b": "table",
    "table": "table",
    "csv": "table",
    "parquet": "table",
    "c": "gptdynamics",
    "gptdynamics": "gptdynamics",
}


# --------------------------------------------------------------------------------------------
# input planning: which files are which encoding
# --------------------------------------------------------------------------------------------

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def _sniff(path: Path) -> str | None:
    try:
        with _open_text(path) as fh:
            head = fh.read(4096)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if head[:4] == b"PAR1":
        return "table"
    text = head.lstrip()
    if text.startswith(b"{"):
        return "jsonl"
    first = text.split(b"\n", 1)[0].decode("utf-8", "replace")
    if "," in first and "run" in [c.strip().strip('"') for c in first.split(",")]:
        return "table"
    return None


@dataclass
class Plan:
    jsonl: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    gptdynamics: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # files skipped while walking directories
    # GPTDynamics: run id per directory (``<task>/<run>`` when found by walking a tree), the
    # trajectory file's metric and the example/test ID prefix (``{task}`` = parent dir name)
    gptdynamics_ids: dict[Path, str] = field(default_factory=dict)
    metric: str = "loss"
    id_prefix: str = ""

    @property
    def n_sources(self) -> int:
        return len(self.jsonl) + len(self.tables) + len(self.gptdynamics)


def _walk(d: Path, forced: str | None, plan: Plan, root: Path | None = None) -> None:
    root = d if root is None else root
    if forced in (None, "gptdynamics") and _is_c_dir(d, plan.metric):
        plan.gptdynamics.append(d)
        rel = d.relative_to(root).as_posix()
        plan.gptdynamics_ids[d] = rel if rel != "." else d.resolve().name
        return
    if forced in (None, "gptdynamics"):
        hint = raw_output_hint(d)
        if hint is not None:
            raise InputError(hint)
    try:
        entries = sorted(d.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(
            f"cannot list directory: {exc.strerror}", path=str(d), hint="check the permissions"
        ) from None
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir():
            _walk(p, forced, plan, root)
            continue
        base = _base(p.name)
        if base.endswith(_JSONL_SUFFIXES) and forced in (None, "jsonl"):
            plan.jsonl.append(p)
        elif base.endswith(_TABLE_SUFFIXES) and forced in (None, "table"):
            if _walked_table_is_log(p, plan):
                plan.tables.append(p)
        elif forced == "jsonl" and base.endswith(".json") and base != C_TRAIN:
            plan.jsonl.append(p)


def _walked_table_is_log(p: Path, plan: Plan) -> bool:
    """A table met while walking a directory is a run log only if it has a ``run`` column
    (e.g. ``examples.csv`` or a TracIn score table next to the logs is skipped with a note);
    unreadable tables are kept so the reader reports them. Named files are never skipped."""
    try:
        cols, _ = table_header(p)
    except InputError:
        return True
    if "run" in cols:
        return True
    plan.notes.append(
        f"skipped {p}: columns {','.join(cols)[:80]} are not a run log table (no 'run' column)"
    )
    return False


def plan_inputs(
    paths: Sequence[str | os.PathLike],
    format: str | None = None,
    metric: str = "loss",
    id_prefix: str = "",
) -> Plan:
    """Expand paths (files and directories) into the sources of each encoding.

    GPTDynamics only: ``metric`` reads ``all_<metric>_trajectory.out`` instead of the loss
    file; ``id_prefix`` is prepended to example and test IDs (``{task}`` = the run directory's
    parent, e.g. ``"{task}:"``). A run directory found by walking ``PATH`` gets the id of its
    path below ``PATH`` (``runs/`` -> ``rte/seed-1``); one given directly keeps its name.
    """
    if metric != "loss" or id_prefix:
        if format is not None and FORMAT_ALIASES.get(str(format).lower()) != "gptdynamics":
            raise UsageError("--metric and --id-prefix apply to GPTDynamics run directories only")
    if not metric or "/" in metric or not metric.replace("_", "").replace("-", "").isalnum():
        raise UsageError(f"--metric must be a plain name (e.g. loss, bleu), got {metric!r}")
    forced = None
    if format is not None:
        forced = FORMAT_ALIASES.get(str(format).lower())
        if forced is None:
            raise UsageError(
                f"unknown --format {format!r}; use jsonl (A), table (B) or gptdynamics (C)"
            )
    if not paths:
        raise UsageError("no input paths; give log files or directories to ingest")
    plan = Plan(metric=metric, id_prefix=id_prefix)
    c_loss = loss_file_name(metric)
    for raw in paths:
        if str(raw) == "-":
            raise UsageError(
                "ingest reads log files and directories, not stdin ('-'); save the log to a "
                "file first (a JSON Lines run is named after its file unless its lines carry "
                '"run")'
            )
        p = Path(raw)
        if not p.exists():
            raise InputError(
                "no such file or directory",
                path=str(p),
                hint="check the path (directories are walked for *.jsonl[.gz], "
                "*.csv[.gz], *.parquet and GPTDynamics run directories)",
            )
        if p.is_dir():
            before = plan.n_sources
            _walk(p, forced, plan)
            if plan.n_sources == before:
                raise InputError(
                    "no training logs found in this directory",
                    path=str(p),
                    hint="expected *.jsonl[.gz] (one run per file), *.csv[.gz] / "
                    "*.parquet long tables, or GPTDynamics run directories "
                    f"({C_TRAIN} + {c_loss}); use --format to force one",
                )
            continue
        base = _base(p.name)
        kind = forced
        if base in (C_TRAIN, C_LOSS, c_loss) and forced in (None, "gptdynamics"):
            if not _is_c_dir(p.parent, metric):
                raise InputError(
                    f"GPTDynamics run directory is incomplete: needs both {C_TRAIN} and {c_loss}",
                    path=str(p.parent),
                    hint="put both files in the run's directory",
                )
            plan.gptdynamics.append(p.parent)
            plan.gptdynamics_ids.setdefault(p.parent, p.parent.resolve().name)
            continue
        if kind is None:
            if base.endswith(_JSONL_SUFFIXES):
                kind = "jsonl"
            elif base.endswith(_TABLE_SUFFIXES):
                kind = "table"
            else:
                kind = _sniff(p)
        if kind is None:
            raise InputError(
                "cannot tell the log encoding from the name or contents",
                path=str(p),
                hint="name files *.jsonl / *.csv / *.parquet, or pass "
                "--format jsonl|table|gptdynamics",
            )
        if kind == "gptdynamics":
            raise InputError(
                f"--format gptdynamics expects run directories (or their {C_TRAIN} / {C_LOSS})",
                path=str(p),
                hint="pass the run directory, or drop --format to detect the encoding",
            )
        (plan.jsonl if kind == "jsonl" else plan.tables).append(p)
    # the same file named twice (e.g. a file and its directory) is read once
    for name in ("jsonl", "tables", "gptdynamics"):
        seen: dict[Path, Path] = {}
        for p in getattr(plan, name):
            seen.setdefault(p.resolve(), p)
        setattr(plan, name, list(seen.values()))
    if plan.gptdynamics:
        ids = [plan.gptdynamics_ids[d] for d in plan.gptdynamics]
        dup = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dup:
            raise InputError(
                f"{len(dup)} GPTDynamics run id(s) repeat ({', '.join(dup[:3])}): run directory "
                "names repeat across tasks",
                path=str(plan.gptdynamics[ids.index(dup[0])]),
                hint="ingest the whole runs/ tree in one call (run id = <task>/<run>)",
            )
        tasks = sorted({d.resolve().parent.name for d in plan.gptdynamics})
        if len(tasks) > 1 and "{task}" not in id_prefix:
            plan.notes.append(
                f"GPTDynamics runs of {len(tasks)} tasks ({', '.join(tasks[:4])}) share one "
                "example/test ID space; if their IDs are task-local (the published data's are), "
                "re-ingest with --id-prefix '{task}:'"
            )
    return plan


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------


def iter_runs(
    plan: Plan, progress: Callable | None = None, notes: list | None = None
) -> Iterator[RunData]:
    """Parse and validate every source of ``plan``, yielding one RunData per run.

    Source files are hashed (sha256) on a background thread while they are parsed.
    """
    total = plan.n_sources
    done = 0
    with ThreadPoolExecutor(max_workers=1) as pool:

        def hashed(rd: RunData, paths: list[str]) -> RunData:
            futs = {p: pool.submit(file_sha256, p) for p in paths}
            rd.sources = [{"path": p, "sha256": f.result()} for p, f in futs.items()]
            return rd

        for p in plan.jsonl:
            fut = pool.submit(file_sha256, p)
            rd = read_jsonl(p)
            rd.sources = [{"path": str(p), "sha256": fut.result()}]
            done += 1
            if progress:
                progress(done, total, str(p))
            yield rd
        for d in plan.gptdynamics:
            rd = read_gptdynamics(
                d,
                run_id=plan.gptdynamics_ids.get(d),
                metric=plan.metric,
                id_prefix=plan.id_prefix,
            )
            rd = hashed(rd, [s["path"] for s in rd.sources])
            done += 1
            if progress:
                progress(done, total, str(d))
            yield rd
        if plan.tables:
            tr = _TableReader()
            try:
                futs = {str(p): pool.submit(file_sha256, p) for p in plan.tables}
                for p in plan.tables:
                    tr.read(p)
                    done += 1
                    if progress:
                        progress(done, total, str(p))
                for rd in tr.finish():
                    rd.sources = [
                        {"path": s["path"], "sha256": futs[s["path"]].result()} for s in rd.sources
                    ]
                    yield rd
            finally:
                tr.close()

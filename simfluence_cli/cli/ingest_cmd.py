"""`simfluence ingest` (training logs -> run store) and `simfluence info` (what a store holds)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from simfluence_cli.cli._app import (
    DEFAULT_STORE,
    StoreOpt,
    command,
    info,
    open_store,
    show_progress,
    stderr_console,
    stdout_console,
    warn,
    wrote,
)
from simfluence_cli.cli._output import (
    Format,
    FormatOpt,
    OutputOpt,
    render_object,
    render_rows,
    resolve_format,
)
from simfluence_cli.errors import UsageError


class InputFormat(str, Enum):
    jsonl = "jsonl"
    table = "table"
    gptdynamics = "gptdynamics"


@command("ingest")
def ingest(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Log files or directories (walked). Encodings: jsonl = A, one <run>.jsonl[.gz] per "
            "run; table = B, long CSV/Parquet tables run,step,example_id and "
            "run,step,test_id,loss; gptdynamics = C, directories with train_samples_id.json "
            "and all_loss_trajectory.out (run id = its path below PATH, e.g. runs/ -> "
            "rte/seed-1; a run directory given directly keeps its name).",
            show_default=False,
            metavar="PATH...",
        ),
    ],
    store: StoreOpt = DEFAULT_STORE,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag",
            "-t",
            metavar="TAG",
            help="Tag the ingested runs (repeatable); selectors match tags.",
        ),
    ] = None,
    input_format: Annotated[
        InputFormat | None,
        typer.Option(
            "--format",
            help="Force the input encoding instead of detecting it from names/contents.",
            case_sensitive=False,
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Overwrite runs whose id exists with different content."),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the report (added/replaced/unchanged runs, rows) as JSON on stdout.",
        ),
    ] = False,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="GPTDynamics: read all_NAME_trajectory.out (e.g. bleu, rougeL; values under "
            "'loss') instead of all_loss_trajectory.out. The simulator then models that metric "
            "(higher may be better).",
        ),
    ] = "loss",
    id_prefix: Annotated[
        str,
        typer.Option(
            "--id-prefix",
            help="GPTDynamics: prepend this to every example and test ID; {task} = the run "
            "directory's parent (e.g. '{task}:' keeps task-local IDs of runs/<task>/<run> apart).",
        ),
    ] = "",
) -> None:
    """Read training logs into the run store (all-or-nothing; identical content is a no-op).

    Every input is parsed and validated before anything is written; an error names FILE:LINE
    and the field, exits 1 and leaves the store unchanged. A run id already stored with other
    content is refused unless --replace.
    """
    if tag is None:
        tag = []
    rs = open_store(store, create=True)
    fmt = input_format.value if input_format else None
    if show_progress():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=stderr_console(),
            transient=True,
        ) as bar:
            task = bar.add_task("", total=None)

            def progress(done: int, total: int, label: str) -> None:
                bar.update(task, completed=done, total=total, description=Path(label).name)

            report = rs.ingest(
                paths,
                tags=tag,
                format=fmt,
                replace=replace,
                progress=progress,
                metric=metric,
                id_prefix=id_prefix,
            )
    else:
        report = rs.ingest(
            paths, tags=tag, format=fmt, replace=replace, metric=metric, id_prefix=id_prefix
        )
    for note in report.notes:
        info(f"note: {note}")
    info(report.summary())
    written = report.added + report.replaced
    if written:
        from simfluence_cli.model.diagnostics import batch_size_warning
        from simfluence_cli.store.shapes import stored_batch_sizes

        msg = batch_size_warning(stored_batch_sizes(rs, written), "the ingested runs")
        if msg:
            warn(msg)
    if json_out:
        render_object(report.to_dict())


def _info_lines(d: dict) -> list[tuple[str, str]]:
    cov = d.get("coverage") or {}
    tags = ", ".join(f"{t} ({n})" for t, n in d["tags"].items()) or "(none)"
    rows = [
        ("store", d["store"]),
        ("runs", f"{d['runs']:,}"),
        ("tags", tags),
        ("steps", f"{d['steps']:,} training steps in total"),
        ("train_examples", f"{d['train_examples']:,} distinct"),
        ("test_examples", f"{d['test_examples']:,} distinct"),
        ("loss_rows", f"{d['loss_rows']:,} (logged steps: {d['logged_steps']:,})"),
        ("curriculum_rows", f"{d['curriculum_rows']:,}"),
        (
            "batch_size",
            "-"
            if d["batch_size_min"] is None
            else (
                f"{d['batch_size_min']}"
                if d["batch_size_min"] == d["batch_size_max"]
                else f"{d['batch_size_min']}..{d['batch_size_max']}"
            ),
        ),
    ]
    if cov:
        rows.append(
            (
                "coverage",
                f"occurrences per training example: min {cov['min']}, median "
                f"{cov['median']:g}, max {cov['max']}, mean {cov['mean']:g}, "
                f"CV {cov['cv']} (0 = perfectly even)",
            )
        )
    rows.append(
        (
            "learning_rate",
            f"logged per step in {d.get('runs_with_lr', 0):,} of {d['runs']:,} runs"
            + (f"; optimizer(s): {'; '.join(d['optimizers'])}" if d.get("optimizers") else ""),
        )
    )
    cal = d.get("calibrations") or {}
    stale = d.get("stale_models") or {}
    rows.append(
        (
            "models",
            ", ".join(
                f"{m} ({'STALE: refit it; ' if m in stale else ''}intervals {cal.get(m, 'no')})"
                for m in d["models"]
            )
            or "(none)",
        )
    )
    return rows


@command("info")
def info_cmd(
    store: StoreOpt = DEFAULT_STORE,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object (runs, train_examples, test_examples, steps, "
            "loss_rows, tags{tag: runs}, coverage, models, ...).",
        ),
    ] = False,
    list_runs: Annotated[
        bool,
        typer.Option("--list", "-l", help="List the runs (one row each) instead of the summary."),
    ] = False,
    fmt: FormatOpt = None,
    output: OutputOpt = "-",
) -> None:
    """What the store holds: runs, tags, steps, examples, loss rows, coverage, models.

    Coverage = how often each training example occurs across all curricula (min/median/max
    and coefficient of variation; CV 0 = every example seen equally often).

    The summary is text, or one JSON object with --json, --format json or -o FILE.json; the
    row formats (csv, jsonl, parquet) need --list.
    """
    rs = open_store(store)
    if list_runs:
        cols = [
            "run",
            "tags",
            "steps",
            "batch_size_min",
            "batch_size_max",
            "n_examples",
            "n_tests",
            "loss_steps",
            "loss_rows",
            "source_format",
            "source",
            "ingested_at",
        ]
        chosen = resolve_format(fmt, output)
        flat = chosen in (Format.csv, Format.table)  # a cell is text: "a,b"; else a list
        rows = [{**r, "tags": ",".join(r["tags"]) if flat else list(r["tags"])} for r in rs.runs()]
        render_rows(
            rows,
            cols,
            chosen,
            output,
            title=f"runs in {store}",
            table_columns=cols[:8],
            column_help={
                "table": "the first 8 columns; --format csv/json adds loss_rows, source_format, "
                "source, ingested_at"
            },
        )
        return
    d = rs.info()
    chosen = resolve_format(fmt, output) if fmt is not None or output != "-" else None
    if json_out or chosen is Format.json:
        render_object(d, output)
        return
    asked_rows = fmt is not None or Path(output).suffix.lower().lstrip(".") == chosen
    if chosen in (Format.csv, Format.jsonl, Format.parquet) and asked_rows:
        raise UsageError(
            f"info's summary is one object, not rows: use --format json (or --json), or "
            f"--list for one row per run in {chosen.value}"
        )
    lines = _info_lines(d)
    if sys.stdout.isatty() and output == "-":
        from rich.table import Table

        table = Table(title=f"run store {d['store']}", show_header=False)
        table.add_column("", style="bold")
        table.add_column("", overflow="fold")
        for k, v in lines:
            table.add_row(k, v)
        stdout_console().print(table)
    else:
        text = "".join(f"{k}: {v}\n" for k, v in lines)
        if output == "-":
            sys.stdout.write(text)
        else:
            from simfluence_cli._atomic import write_bytes_atomic

            write_bytes_atomic(output, text.encode())
            wrote(output)

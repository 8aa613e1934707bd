"""One shared set of output options for every command that prints data.

``--format csv|json|jsonl|table|parquet`` and ``-o PATH`` (``-`` = stdout). The default is a
rich table when stdout is a terminal and CSV otherwise, so pipelines get machine-readable data.
Writes to a file are atomic (temp file + rename).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from simfluence_cli._atomic import write_bytes_atomic
from simfluence_cli.cli._app import provenance, stdout_console, wrote
from simfluence_cli.errors import UsageError


class Format(str, Enum):
    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    table = "table"
    parquet = "parquet"


FormatOpt = Annotated[
    Format | None,
    typer.Option(
        "--format", "-f", help="Output format; default: table on a terminal, csv otherwise."
    ),
]
OutputOpt = Annotated[
    str, typer.Option("--output", "-o", help="Write data here instead of stdout ('-' = stdout).")
]


def resolve_format(fmt: Format | None, output: str = "-") -> Format:
    """Pick the default format: from the output file's suffix, else table on a TTY, else csv."""
    if fmt is not None:
        return fmt
    if output != "-":
        suffix = Path(output).suffix.lower().lstrip(".")
        if suffix in Format.__members__ and suffix != "table":
            return Format(suffix)
        return Format.csv
    return Format.table if stdout_is_terminal() else Format.csv


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (tables and summaries) rather than a pipe or file."""
    return sys.stdout.isatty()


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_clean(v: Any) -> Any:
    """``v`` with every non-finite float (nested in dicts, lists, tuples, numpy scalars) as
    None: JSON has no NaN, and ``json.dumps`` would write the invalid token ``NaN``."""
    if isinstance(v, dict):
        return {k: _json_clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_clean(x) for x in v]
    if getattr(v, "ndim", 0):  # a numpy array
        return _json_clean(v.tolist())
    return _jsonable(v) if isinstance(v, float) or hasattr(v, "item") else v


def _cell(v: Any) -> str:
    v = _jsonable(v)
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def render_rows(
    rows: Sequence[dict],
    columns: Sequence[str],
    fmt: Format,
    output: str = "-",
    *,
    title: str | None = None,
    document: dict | None = None,
    column_help: dict[str, str] | None = None,
    table_columns: Sequence[str] | None = None,
) -> None:
    """Render records. ``document`` (for json) wraps rows in an object with extra keys.

    ``table_columns``: the subset of ``columns`` a terminal table shows (the other formats
    always carry every column, under the same names)."""
    if fmt is Format.table:
        if output != "-":
            raise UsageError(
                "--format table prints to the terminal; use csv/json/jsonl/parquet with -o"
            )
        shown = [c for c in columns if table_columns is None or c in table_columns]
        cells = [[_fmt_cell(r.get(c)) for c in shown] for r in rows]
        numeric = {
            i
            for i, c in enumerate(shown)
            if rows and all(_is_number(r.get(c)) for r in rows if r.get(c) is not None)
        }
        caption = (
            None if not column_help else "; ".join(f"{k}: {v}" for k, v in column_help.items())
        )
        stdout_console().print(build_table(shown, cells, numeric, title=title, caption=caption))
        return
    if fmt is Format.parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tbl = pa.Table.from_pylist([{c: _jsonable(r.get(c)) for c in columns} for r in rows])
        meta = {f"column:{k}": v for k, v in (column_help or {}).items()}
        meta["simfluence.provenance"] = json.dumps(_json_clean(provenance()))
        tbl = tbl.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(tbl, buf)
        _emit_bytes(buf.getvalue(), output)
        return
    if fmt is Format.csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        # csv quotes fields holding the delimiter, the quote char or "\n", not a lone "\r",
        # which readers take as a line break: quote every field of such rows
        wq = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        w.writerow(columns)
        for r in rows:
            cells = [_cell(r.get(c)) for c in columns]
            (wq if any("\r" in v for v in cells) else w).writerow(cells)
        text = buf.getvalue()
    elif fmt is Format.jsonl:
        text = "".join(
            json.dumps(_json_clean({c: r.get(c) for c in columns}), allow_nan=False) + "\n"
            for r in rows
        )
    else:
        recs = [{c: r.get(c) for c in columns} for r in rows]
        obj: Any = recs if document is None else {**document, "results": recs}
        text = json.dumps(_json_clean(obj), indent=2, default=_jsonable, allow_nan=False) + "\n"
    emit_text(text, output)


def render_object(obj: dict, output: str = "-") -> None:
    """Print one JSON object (for --json reports)."""
    emit_text(
        json.dumps(_json_clean(obj), indent=2, default=_jsonable, allow_nan=False) + "\n", output
    )


SIG_DIGITS = 4  # significant digits of floats in terminal tables (csv/json keep full precision)


def _is_number(v: Any) -> bool:
    v = _jsonable(v)
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fmt_cell(v: Any) -> str:
    v = _jsonable(v)
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:#.{SIG_DIGITS}g}".rstrip(".") if math.isfinite(v) else str(v)
    return str(v)


def build_table(
    columns: Sequence[str],
    cells: Sequence[Sequence[str]],
    numeric: set[int],
    *,
    title: str | None = None,
    caption: str | None = None,
    width: int | None = None,
) -> Table:
    """A terminal table that fits ``width`` (default: the console's) without cutting values.

    Headers are the column names (the same as in csv/json); when the table would be too wide,
    the headers longer than their values are broken at '_' (never inside a word), longest
    first. Numeric columns are right-aligned and never wrapped or cut; text columns fold.
    """
    width = width or stdout_console().width
    n = len(columns)
    cellw = [max([len(r[i]) for r in cells] or [0]) for i in range(n)]
    natural = [max(len(c), cellw[i]) for i, c in enumerate(columns)]
    headers = list(columns)

    def total() -> int:
        return sum(natural) + 3 * n + 1  # borders and one space of padding either side

    for i in sorted(range(n), key=lambda i: cellw[i] - len(columns[i])):  # biggest gain first
        if total() <= width:
            break
        parts = columns[i].split("_")
        if len(parts) > 1:
            headers[i] = "_\n".join(parts)
            natural[i] = max(max(len(p) for p in headers[i].split("\n")), cellw[i])
    keep = n
    while total() > width and keep > 1:  # still too wide: leave the last columns to csv/json
        keep -= 1
        natural[keep] = -3  # a dropped column takes no width (nor borders)
    if keep < n:
        dropped = ", ".join(columns[keep:])
        more = f"not shown at this width (see -f csv/json or a wider terminal): {dropped}"
        if caption and caption.rstrip().endswith("."):  # a sentence: start a new one
            caption = f"{caption.rstrip()} {more[0].upper()}{more[1:]}."
        else:
            caption = f"{caption}; {more}" if caption else more
        columns, headers = columns[:keep], headers[:keep]
        cells = [r[:keep] for r in cells]
    table = Table(title=title, caption=caption)
    for i, h in enumerate(headers):
        words = max(len(p) for p in h.split("\n"))  # the longest header line
        if i in numeric:
            table.add_column(h, justify="right", no_wrap=True, min_width=max(words, cellw[i]))
        else:
            table.add_column(h, overflow="fold", min_width=max(words, min(cellw[i], 24)))
    for r in cells:
        table.add_row(*r)
    return table


def emit_text(text: str, output: str) -> None:
    """Write text to stdout ('-') or atomically to the file ``output`` (noted on stderr)."""
    if output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_bytes_atomic(output, text.encode())
        wrote(output)


def _emit_bytes(data: bytes, output: str) -> None:
    if output == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write binary Parquet to a terminal; use -o FILE.parquet")
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        write_bytes_atomic(output, data)
        wrote(output)

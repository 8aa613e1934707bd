"""Validation helpers shared by the log readers: JSON lines, IDs, steps, loss numbers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from simfluence_cli.errors import InputError


def _open_text(path: Path, mode: str = "rb"):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, mode)
    return open(path, mode)


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------

_MISSING = object()
_NUM = (float, int)


def _loads_line(raw: bytes, path: str, lineno: int):
    try:
        return json.loads(raw)
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        col = getattr(exc, "colno", None)
        raise InputError(
            f"malformed JSON ({msg}" + (f" at column {col})" if col else ")"),
            path=path,
            line=lineno,
            hint="each line must be one complete JSON object",
        ) from None
    except RecursionError:
        raise InputError(
            "malformed JSON (nested too deeply)",
            path=path,
            line=lineno,
            hint="each line must be one flat JSON object",
        ) from None


def _idstr(v, path: str, lineno, fld: str) -> str:
    t = type(v)
    if t is str:
        if not v:
            raise InputError(
                "empty ID",
                path=path,
                line=lineno,
                field=fld,
                hint="IDs must be non-empty strings or integers",
            )
        return v
    if t is int:
        return str(v)
    raise InputError(
        f"expected a string or integer ID, got {json.dumps(v)[:40]}",
        path=path,
        line=lineno,
        field=fld,
        hint='write IDs as "e17" or 17',
    )


def _step_int(v, path: str, lineno, fld: str = "step") -> int:
    if type(v) is int:
        return v
    if v is _MISSING or v is None:
        raise InputError(
            "missing",
            path=path,
            line=lineno,
            field=fld,
            hint='every line needs an integer "step" (0 = initial losses)',
        )
    if type(v) is float and v.is_integer():
        return int(v)
    raise InputError(
        f"expected an integer step, got {json.dumps(v)[:40]}",
        path=path,
        line=lineno,
        field=fld,
        hint="steps are integers 0, 1, 2, ...",
    )


def _check_numbers(vals: list, keys, path: str, lineno: int, prefix: str = "loss") -> None:
    for k, v in zip(keys, vals):
        if type(v) not in _NUM:
            raise InputError(
                f"expected a number, got {json.dumps(v)[:40]}",
                path=path,
                line=lineno,
                field=f"{prefix}.{k}" if k is not None else prefix,
                hint="losses are JSON numbers; leave a test out of the object if it "
                "was not evaluated at that step",
            )


class _Ids:
    """Insertion-ordered string -> int code table."""

    __slots__ = ("map", "list")

    def __init__(self):
        self.map: dict[str, int] = {}
        self.list: list[str] = []

    def code(self, s: str) -> int:
        c = self.map.get(s)
        if c is None:
            c = self.map[s] = len(self.list)
            self.list.append(s)
        return c

    def codes(self, values) -> np.ndarray:
        return np.fromiter((self.code(v) for v in values), dtype=np.int64, count=len(values))

    def array(self) -> np.ndarray:
        return np.asarray(self.list, dtype=object)


try:
    from zlib import error as zlib_error
except ImportError:  # pragma: no cover
    zlib_error = OSError


# --------------------------------------------------------------------------------------------
# encoding C: GPTDynamics run directories
# --------------------------------------------------------------------------------------------


def _json_lines(path: Path, object_hint: str = "write one JSON object per line"):
    """(line number, object) for each non-blank line of a JSON Lines file (plain or .gz);
    unreadable, truncated, non-UTF-8 or malformed input raises InputError at FILE:LINE."""
    label = str(path)
    try:
        fh = _open_text(path)
    except OSError as exc:
        raise InputError(
            f"cannot read: {exc.strerror}", path=label, hint="check the path and its permissions"
        ) from None
    lineno = 0
    try:
        with fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                obj = _loads_line(raw, label, lineno)
                if type(obj) is not dict:
                    raise InputError(
                        f"expected a JSON object, got {type(obj).__name__}",
                        path=label,
                        line=lineno,
                        hint=object_hint,
                    )
                yield lineno, obj
    except (OSError, EOFError, zlib_error) as exc:
        raise InputError(
            f"cannot read ({exc})",
            path=label,
            line=lineno or None,
            hint="the file is truncated or not valid gzip/text",
        ) from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not UTF-8 text ({exc.reason})",
            path=label,
            line=lineno,
            hint="logs are UTF-8 JSON Lines (optionally .gz)",
        ) from None


def _base(name: str) -> str:
    name = name.lower()
    return name[:-3] if name.endswith(".gz") else name

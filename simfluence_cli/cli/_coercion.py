"""Option values coerced without pydantic when the answer is plain.

typer (>= 0.2x) coerces every option value through a pydantic ``TypeAdapter``: importing
pydantic and building the adapters costs ~0.1 s CPU per command. Our options are plain ``str``,
``int``, ``float``, ``Path``, enum choices and lists of them; for a value that is plainly valid
(a canonical decimal number, a non-empty path, a known choice) the result is computed here,
equal to typer's. Anything else (an invalid value, a bound that fails, another annotation)
goes through typer's own coercion unchanged, so its values and error messages are typer's.
With a typer without this machinery nothing is installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

try:  # typer's private coercion layer (typer >= 0.2x); older typers coerce without pydantic
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_choice, coerce_cli_path
except ImportError:  # pragma: no cover
    RuntimeParam = None

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})(?:[eE][-+]?[0-9]{1,2})?")


class _Slow(Exception):
    """The value is not plain: typer's coercion decides."""


def _number(kind, value, info):
    if type(value) is kind:  # a default (an int default of a float option converts: slow)
        v = value
    elif isinstance(value, str) and (_INT if kind is int else _FLOAT).fullmatch(value):
        v = kind(value)
    else:
        raise _Slow
    if info.clamp or (info.min is not None and v < info.min):
        raise _Slow
    if info.max is not None and v > info.max:
        raise _Slow
    return v


def _leaf(annotation, info):
    """A plain coercion function ``f(value, param, ctx)`` for ``annotation``, or None."""
    if info.parser is not None:
        return None
    if annotation is bool:  # a flag's bool skips coercion; None (unset) is returned as is

        def coerce(value, param, ctx):
            if type(value) is not bool:
                raise _Slow
            return value

        return coerce
    if annotation is str:

        def coerce(value, param, ctx):
            if type(value) is not str:
                raise _Slow
            return value

        return coerce
    if annotation is int or annotation is float:
        return lambda value, param, ctx: _number(annotation, value, info)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        choices = list(annotation)

        def coerce(value, param, ctx):
            try:
                return coerce_cli_choice(
                    value, choices=choices, case_sensitive=info.case_sensitive, ctx=ctx
                )
            except Exception:
                raise _Slow from None

        return coerce
    if isinstance(annotation, type) and issubclass(annotation, Path):
        path_type = info.path_type or annotation

        def coerce(value, param, ctx):
            if type(value) is str and value and "\0" not in value:
                value = path_type(value)
            elif not isinstance(value, path_type):  # e.g. a default that is a Path already
                raise _Slow
            try:  # a Path: typer's own path checks, no pydantic validation
                return coerce_cli_path(value, info, path_type=path_type, param=param, ctx=ctx)
            except Exception:
                raise _Slow from None

        return coerce
    return None


def plain_coercion(annotation, info):
    """``f(value, param, ctx)`` raising _Slow when typer must decide, or None (never plain)."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        leaf = _leaf(item, info)
        if leaf is None:
            return None

        def coerce(value, param, ctx):
            items = value if isinstance(value, (list, tuple)) else [value]
            return [leaf(v, param, ctx) for v in items]

        return coerce
    return _leaf(annotation, info)


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _PlainRuntimeParam(RuntimeParam):
        """typer's RuntimeParam: the plain coercion first, typer's own when it declines."""

        descriptor: Any = None
        plain: Any = None

        def _coerce_value(self, value, param, ctx):
            try:
                return self.plain(value, param, ctx)
            except _Slow:
                slow = build_runtime_param(self.descriptor)
                return slow._coerce_value(value, param=param, ctx=ctx)


def install(param) -> bool:
    """Give one typer parameter the plain coercion (True when installed)."""
    if RuntimeParam is None or getattr(param, "_runtime_param", False) is not None:
        return False
    desc = getattr(param, "type_descriptor", None)
    if desc is None or desc.file_annotation is not None:
        return False
    plain = plain_coercion(desc.annotation, desc.parameter_info)
    if plain is None:
        return False
    param._runtime_param = _PlainRuntimeParam(
        parameter_info=desc.parameter_info,
        annotation=desc.annotation,
        descriptor=desc,
        plain=plain,
    )
    return True

"""Short reprs for result objects: a notebook cell that shows a result prints what it holds
(scalars, array shapes, sizes), not megabytes of arrays and ID lists."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

__all__ = ["short_value", "summary_repr"]

WIDTH = 60  # the longest field shown in full


def short_value(v: Any, width: int = WIDTH) -> str:
    """``repr(v)`` if short, else a summary: ``array(2, 251, 100) float64``, ``[300 items]``,
    ``{7 keys}``; an object whose own repr is longer than ``2 * width``: ``<TypeName>``."""
    shape, dtype = getattr(v, "shape", None), getattr(v, "dtype", None)
    if shape is not None and dtype is not None:  # numpy array or scalar
        if shape == ():
            return repr(v.item())
        return f"array({', '.join(map(str, shape))}) {dtype}"
    if isinstance(v, str):
        r = repr(v)
        return r if len(r) <= width else r[: width - 4] + "...'"
    r = repr(v)
    if len(r) <= width:
        return r
    if isinstance(v, dict):
        return f"{{{len(v)} keys}}"
    if isinstance(v, list | tuple | set):
        return f"[{len(v)} item{'' if len(v) == 1 else 's'}]"
    return r if len(r) <= 2 * width else f"<{type(v).__name__}>"  # e.g. a nested result


def summary_repr(obj: Any) -> str:
    """``Name(field=short value, ...)`` over a dataclass's fields (those with ``repr=True``)."""
    parts = [f"{f.name}={short_value(getattr(obj, f.name))}" for f in fields(obj) if f.repr]
    return f"{type(obj).__name__}({', '.join(parts)})"

"""Atomic file writes: temp file in the target directory, fsync, ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix."""
    write_atomic(path, lambda fh: fh.write(data))


def write_atomic(path: str | os.PathLike, writer: Callable) -> None:
    """Call ``writer(binary_file)`` on a temp file, then atomically move it to ``path``.

    The temp file starts with ``.`` (hidden from ``*.parquet`` globs) and the final file gets
    the process's umask permissions (not mkstemp's 0600), so shared stores stay readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

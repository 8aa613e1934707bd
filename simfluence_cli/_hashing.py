"""sha256 digests (the one place hashlib is used): of a file read in blocks (runs, scores,
models) and of in-memory bytes/text (run content, data hashes, file stems)."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def sha256_hex(*parts: bytes | str) -> str:
    """Hex sha256 of the parts concatenated (str parts as UTF-8)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
    return h.hexdigest()

"""Curriculum text files: one line per training step, whitespace-separated example IDs.

Blank lines and ``#`` comments (whole-line or trailing) are ignored; ``-`` reads stdin.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from simfluence_cli._repr import summary_repr
from simfluence_cli.errors import InputError, UsageError


@dataclass
class Curriculum:
    """Batches of example IDs, with the source line of each step for error messages."""

    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays

    batches: list[list[str]]
    lines: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.batches)

    def locate(self, ids: set[str]) -> list[tuple[str, int]]:
        """(id, line) of the first occurrence of each of ``ids``, in file order."""
        found: dict[str, int] = {}
        for batch, line in zip(self.batches, self.lines):
            for e in batch:
                if e in ids and e not in found:
                    found[e] = line
        return list(found.items())


def parse_curriculum(text: str, source: str = "<curriculum>") -> Curriculum:
    batches, lines = [], []
    for no, raw in enumerate(text.splitlines(), start=1):
        body = raw.split("#", 1)[0].strip()
        if body:
            batches.append(body.split())
            lines.append(no)
    if not batches:
        raise InputError(
            "no training steps found",
            path=source,
            hint="write one line per step with the batch's example IDs separated by spaces",
        )
    return Curriculum(batches, lines, source)


def read_curriculum(path: str) -> Curriculum:
    """Read a curriculum file (``-`` = stdin)."""
    if path == "-":
        return parse_curriculum(sys.stdin.read(), "<stdin>")
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not UTF-8 text (byte {exc.start})",
            path=path,
            hint="a curriculum is a text file of example IDs",
        ) from None
    return parse_curriculum(text, path)


def read_id_list(spec: str, what: str = "IDs") -> list[str]:
    """``a,b,c`` or ``@FILE`` (one ID per line or whitespace-separated; ``@-`` = stdin)."""
    if spec.startswith("@"):
        src = spec[1:]
        if not src.strip():
            raise UsageError(f"'@' needs a file name for {what}: @FILE, or @- for stdin")
        try:
            text = sys.stdin.read() if src == "-" else Path(src).read_text()
        except OSError as exc:
            raise InputError(f"cannot read {what} file: {exc.strerror}", path=src) from None
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{what} file is not UTF-8 text (byte {exc.start})",
                path=src,
                hint="list one ID per line in a UTF-8 text file",
            ) from None
        ids = [tok for line in text.splitlines() for tok in line.split("#", 1)[0].split()]
    else:
        ids = [t.strip() for t in spec.split(",") if t.strip()]
    if not ids:
        raise InputError(
            f"empty list of {what}",
            path=spec[1:] if spec.startswith("@") else None,
            hint=f"give {what} as a,b,c or @FILE",
        )
    return ids

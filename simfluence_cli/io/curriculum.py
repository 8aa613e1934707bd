"""Curriculum text files: one line per training step, whitespace-separated example IDs.

Blank lines and ``#`` comments (whole-line or trailing) are ignored; ``-`` reads stdin.

Several curricula in one stream (what ``simfluence plan`` prints, or several ``simfluence
curriculum RUN`` outputs one after the other): each starts at a header line ``# NAME: ...``
(or ``# curriculum of run NAME: ...``). A stream is split there only when it has two or more
header lines, no step before the first and at least one step after each; anything else is one
curriculum, read as before (a design file's ``# key: value`` lines stay comments).
"""

from __future__ import annotations

import re
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
    name: str | None = None  # the header's or the file's name when read with read_curricula

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


#: a header line that starts one curriculum of several in a stream: ``# NAME: ...`` (plan's
#: output) or ``# curriculum of run NAME: ...`` (`simfluence curriculum`'s)
HEADER = re.compile(r"#[ \t]*(?:curriculum of run[ \t]+)?([^\s#:]+):")


def split_curricula(text: str, source: str = "<curriculum>") -> list[Curriculum]:
    """The curricula of a stream: one per header line when it holds several (see the module
    docstring), else one curriculum (``name`` = the header's when its first comment is one)."""
    heads: list[tuple[int, str]] = []  # (index of the first step after it, name)
    batches, lines = [], []
    first_head = None
    for no, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        m = HEADER.match(stripped) if stripped.startswith("#") else None
        if m:
            heads.append((len(batches), m.group(1)))
            if first_head is None and not batches:
                first_head = m.group(1)
            continue
        body = raw.split("#", 1)[0].strip()
        if body:
            batches.append(body.split())
            lines.append(no)
    starts = [i for i, _ in heads]
    if (
        len(heads) < 2
        or starts[0] != 0
        or len(set(starts)) < len(starts)
        or starts[-1] == len(batches)
    ):
        cur = parse_curriculum(text, source)
        cur.name = first_head
        return [cur]
    ends = starts[1:] + [len(batches)]
    return [Curriculum(batches[a:b], lines[a:b], source, name) for (a, name), b in zip(heads, ends)]


def _read_text(path: str) -> str:
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
    return text


def read_curriculum(path: str) -> Curriculum:
    """Read a curriculum file (``-`` = stdin)."""
    if path == "-":
        return parse_curriculum(sys.stdin.read(), "<stdin>")
    return parse_curriculum(_read_text(path), path)


def read_curricula(sources: list[str]) -> list[Curriculum]:
    """The curricula of files, directories (their ``*.txt`` files, sorted by name) and ``-``
    (stdin), each named: a file holding one curriculum by its stem (stdin: by its header, else
    ``stdin``), a stream holding several by their headers. Duplicate names raise UsageError."""
    if list(sources).count("-") > 1:
        raise UsageError("'-' (stdin) given more than once: stdin can be read only once")
    out: list[Curriculum] = []
    for src in sources:
        if src != "-" and Path(src).is_dir():
            files = sorted(p for p in Path(src).iterdir() if p.suffix == ".txt" and p.is_file())
            if not files:
                raise InputError("no curriculum files (*.txt) in this directory", path=src)
            paths = [str(p) for p in files]
        else:
            paths = [src]
        for path in paths:
            if path == "-":
                found = split_curricula(sys.stdin.read(), "<stdin>")
                if len(found) == 1:
                    found[0].name = found[0].name or "stdin"
            else:
                found = split_curricula(_read_text(path), path)
                if len(found) == 1:
                    found[0].name = Path(path).stem
            out.extend(found)
    seen: dict[str, str] = {}
    for c in out:
        if c.name in seen:
            raise UsageError(
                f"two curricula named {c.name!r} ({seen[c.name]} and {c.source}): the "
                "output's curriculum column could not tell them apart; rename one"
            )
        seen[c.name] = c.source
    return out


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

"""Run selectors: one string shared by every command's ``--runs``.

Comma-separated terms. A term is
- ``all``: every run;
- ``tag:NAME``: runs carrying that tag;
- ``run:GLOB``: runs whose id matches the glob (``*``, ``?``, ``[abc]``; case-sensitive);
- a bare word: a glob if it contains ``*?[``, else a tag of that name and/or a run with that id.
A leading ``-`` excludes a term (``fit,-run-07``). Terms are unioned, then exclusions removed;
a selector made only of exclusions starts from ``all``. A term that matches nothing is an
error (it is almost always a typo), as is a selector that leaves no run.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from simfluence_cli.errors import SelectionError

__all__ = ["Term", "parse_selector", "resolve_selector"]

_GLOB = set("*?[")


@dataclass(frozen=True)
class Term:
    kind: str  # "all" | "tag" | "run" | "name" (bare: tag or run id) | "glob"
    value: str
    exclude: bool = False

    def __str__(self) -> str:
        body = {"all": "all", "tag": f"tag:{self.value}", "run": f"run:{self.value}"}.get(
            self.kind, self.value
        )
        return ("-" if self.exclude else "") + body


def parse_selector(selector: str) -> list[Term]:
    """Split a selector string into terms (no store access)."""
    if selector is None or not str(selector).strip():
        raise SelectionError("empty run selector; use 'all', a tag name or a run-id glob")
    terms = []
    for raw in str(selector).split(","):
        tok = raw.strip()
        if not tok:
            continue
        exclude = tok.startswith("-")
        if exclude:
            tok = tok[1:].strip()
        if not tok:
            raise SelectionError(
                f"selector {selector!r}: '-' must be followed by a term to exclude"
            )
        if tok == "all":
            terms.append(Term("all", "all", exclude))
        elif tok.startswith("tag:"):
            terms.append(Term("tag", tok[4:], exclude))
        elif tok.startswith("run:"):
            terms.append(Term("run", tok[4:], exclude))
        elif _GLOB & set(tok):
            terms.append(Term("glob", tok, exclude))
        else:
            terms.append(Term("name", tok, exclude))
    if not terms:
        raise SelectionError(
            f"empty run selector {selector!r}; use 'all', a tag name or a run-id glob"
        )
    return terms


def _match(term: Term, runs: Mapping[str, Sequence[str]]) -> set[str]:
    if term.kind == "all":
        return set(runs)
    if term.kind == "tag":
        return {r for r, tags in runs.items() if term.value in tags}
    if term.kind in ("run", "glob"):
        if not _GLOB & set(term.value):
            return {term.value} if term.value in runs else set()
        return {r for r in runs if fnmatch.fnmatchcase(r, term.value)}
    # bare name: a tag of that name and/or a run with that id
    out = {r for r, tags in runs.items() if term.value in tags}
    if term.value in runs:
        out.add(term.value)
    return out


def resolve_selector(selector: str | Sequence[str], runs: Mapping[str, Sequence[str]]) -> list[str]:
    """Run ids (sorted) selected from ``runs`` ({run_id: tags}).

    A list/tuple of strings is taken as explicit run ids (each must exist).
    """
    if not isinstance(selector, str):
        ids = list(dict.fromkeys(selector))
        missing = [r for r in ids if r not in runs]
        if missing:
            raise SelectionError(
                f"no run(s) {', '.join(map(repr, missing[:5]))} in the store" + _available(runs)
            )
        if not ids:
            raise SelectionError("empty list of run ids")
        return ids
    if not runs:
        raise SelectionError("the store holds no runs; add some with `simfluence ingest PATHS`")
    terms = parse_selector(selector)
    include: set[str] = set()
    exclude: set[str] = set()
    for term in terms:
        hit = _match(term, runs)
        if not hit:
            raise SelectionError(f"selector term {str(term)!r} matches no run" + _available(runs))
        (exclude if term.exclude else include).update(hit)
    if not any(not t.exclude for t in terms):
        include = set(runs)
    chosen = sorted(include - exclude)
    if not chosen:
        raise SelectionError(
            f"selector {selector!r} leaves no run (everything matched was excluded)"
        )
    return chosen


def _available(runs: Mapping[str, Sequence[str]]) -> str:
    tags = sorted({t for ts in runs.values() for t in ts})
    ids = sorted(runs)
    shown = ", ".join(ids[:5]) + (f", ... ({len(ids)} runs)" if len(ids) > 5 else "")
    return (
        f"; tags: {', '.join(tags) if tags else '(none)'}; runs: {shown}; "
        "see `simfluence info` (terms: all, TAG, run-id glob, tag:NAME, run:GLOB, -TERM)"
    )

"""Is an example ID a typo? One check for every command that takes training-example IDs.

Two different problems, reported differently:

- **unknown**: the ID occurs in no run of the store at all (a typo, or another data set):
  always an :class:`InputError` listing the IDs and where each came from;
- **unseen**: the ID is in the store but not in the model's fitting runs (so it has no fitted
  parameters): governed by ``--unseen`` (error / prior / skip), decided by the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from simfluence_cli.errors import InputError
from simfluence_cli.io._arrow import read_parquet


def store_example_ids(store) -> set[str]:
    """Every training-example ID in the store's curricula (reads only the dictionaries)."""
    out: set[str] = set()
    for r in store.runs():
        col = read_parquet(Path(store.path) / r["curriculum_file"], columns=["example_id"])
        for chunk in col.column("example_id").chunks:
            vals = chunk.dictionary if hasattr(chunk, "dictionary") else chunk.unique()
            out.update(vals.to_pylist())
    return out


def unknown_example_ids(store, ids: Iterable[str], known: Iterable[str] = ()) -> list[str]:
    """IDs of ``ids`` in no run of the store (sorted). ``known``: IDs known to exist (e.g. the
    model's), checked first so the store's curricula are read only when something is left."""
    known = set(known)
    candidates = {str(e) for e in ids} - known
    if not candidates:
        return []
    return sorted(candidates - store_example_ids(store))


def _by_source(sources: Sequence[tuple[str, Sequence[str]]]) -> Callable[[list[str]], str]:
    def where(ids: list[str]) -> str:
        origin: dict[str, list[str]] = {}
        for label, given in sources:
            for e in given:
                e = str(e)
                if e in ids and label not in origin.setdefault(e, []):
                    origin[e].append(label)
        shown = [f"{e} ({', '.join(origin.get(e, []))})" for e in ids[:10]]
        return ", ".join(shown) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")

    return where


def check_known_ids(
    store,
    sources: Sequence[tuple[str, Sequence[str]]],
    *,
    known: Iterable[str] = (),
    where: Callable[[list[str]], str] | None = None,
    path: str | None = None,
) -> None:
    """Raise InputError when any ID given in ``sources`` is in no run of the store.

    ``sources``: (where the IDs came from, e.g. ``"--drop"`` or ``"--group g1 (@g1.txt)"``,
    the IDs). ``where(ids)`` renders the unknown IDs with their origin (default: the source
    labels; ``simulate`` passes curriculum line numbers). ``known``: IDs that certainly exist.
    """
    ids = [e for _, given in sources for e in given]
    unknown = unknown_example_ids(store, ids, known)
    if unknown:
        render = where or _by_source(sources)
        raise InputError(
            f"{len(unknown)} unknown training example ID(s) (not in any run of the store): "
            f"{render(unknown)}",
            path=path,
            hint="check the IDs; `simfluence info` shows the store's runs and examples",
        )

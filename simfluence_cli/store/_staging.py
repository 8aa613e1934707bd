"""Staging directories: where a long computation writes its files before it holds the lock.

A fit streams its parameters (and an import its scores) into ``<store>/.staging/<entry>/``
while it computes WITHOUT the store's write lock; at commit, under the lock, the finished file
is renamed into ``models/<name>/`` (same file system: atomic). An entry's name records its
owner, ``<what>-<pid>-<token>@<host>``, so other writers never remove the files of a running
computation: only entries whose owner is dead (same host) are leftovers, removed by the next
model write or ``simfluence verify --repair`` and reported by ``verify``. The directory is
hidden (starts with ``.``), so globs over the store never see it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from pathlib import Path

from simfluence_cli.errors import StoreError
from simfluence_cli.store import _lock

STAGING_DIR = ".staging"


def new_entry(store_path: str | os.PathLike, what: str) -> Path:
    """A fresh staging directory owned by this process; a read-only store is a StoreError
    here, before any computation (the same message the write lock gives)."""
    root = Path(store_path) / STAGING_DIR
    name = f"{what}-{os.getpid()}-{secrets.token_hex(4)}@{socket.gethostname()}"
    try:
        for _ in range(5):
            root.mkdir(exist_ok=True)
            try:
                (root / name).mkdir()
                break
            except FileNotFoundError:  # a writer removed the empty root in between: again
                continue
    except OSError as exc:
        raise StoreError(
            f"{store_path} is not writable ({exc.strerror}): commands that write to the store "
            "(ingest, fit, import-scores, calibrate, verify --repair) are refused; commands "
            "that only read it still work"
        ) from None
    return root / name


def owner(entry: Path) -> dict:
    """``{"pid", "host"}`` parsed from an entry's name (empty when it is not ours)."""
    left, _, host = entry.name.rpartition("@")
    parts = left.split("-")
    try:
        return {"pid": int(parts[-2]), "host": host}
    except (IndexError, ValueError):
        return {}


def is_leftover(entry: Path) -> bool:
    """Whether a staging entry belongs to no running process (its owner died on this host,
    or its name is not one this module makes)."""
    who = owner(entry)
    return not who or _lock._is_stale(who)


def leftovers(store_path: str | os.PathLike) -> list[Path]:
    """Staging entries of dead processes (interrupted fits and imports)."""
    root = Path(store_path) / STAGING_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if is_leftover(p))


def remove(entry: Path) -> None:
    """Remove a staging entry (a directory; a stray file too), then the staging directory
    itself when that left it empty."""
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
    try:
        entry.parent.rmdir()  # only when empty; a concurrent new_entry retries
    except OSError:
        pass


def clean(store_path: str | os.PathLike) -> list[Path]:
    """Remove the leftovers (call with the write lock held); returns what was removed."""
    gone = leftovers(store_path)
    for p in gone:
        remove(p)
    return gone

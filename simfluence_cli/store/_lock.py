"""The store's exclusive writer lock: ``<store>/.lock``, created with O_CREAT|O_EXCL.

The lock file holds ``{"pid", "host", "since", "command"}``. A lock whose PID is dead (same
host) is stale and is broken; breaking happens under ``flock`` on the store directory so two
processes cannot both break it and then remove each other's fresh lock. A live lock is waited
for a short while (``SIMFLUENCE_LOCK_TIMEOUT`` seconds, default 10), then
:class:`StoreLockedError` names the holder. The lock is re-entrant within one process, so core
functions can take it even when their caller already holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from simfluence_cli.errors import SimfluenceWarning, StoreError, StoreLockedError

LOCK_NAME = ".lock"
_held: dict[str, int] = {}  # resolved store path -> re-entrancy depth (this process)
_mutex = threading.RLock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _read(lock: Path) -> dict | None:
    try:
        data = json.loads(lock.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _is_stale(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False  # cannot tell for another host or a foreign file: never break it
    return not _pid_alive(pid)


def _break_if_stale(store: Path, lock: Path) -> bool:
    """Remove the lock if its holder is dead; serialised by flock on the store directory."""
    fd = os.open(store, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = _read(lock)  # re-read under flock: only a breaker may remove a stale lock
        if holder is None:
            return True
        if _is_stale(holder):
            lock.unlink(missing_ok=True)
            warnings.warn(
                f"broke a stale write lock of PID {holder.get('pid')}"
                + (f" ({holder['command']})" if holder.get("command") else "")
                + (f" since {holder['since']}" if holder.get("since") else "")
                + ": that process no longer exists",
                SimfluenceWarning,
                stacklevel=2,
            )
            return True
        return False
    finally:
        os.close(fd)  # releases the flock


def _held_for(since: str | None) -> str:
    """' (N min ago)' for an ISO time, '' when it cannot be read."""
    try:
        age = (datetime.now(UTC) - datetime.fromisoformat(str(since))).total_seconds()
    except (TypeError, ValueError):
        return ""
    if age < 0:
        return ""
    return f" ({age:.0f} s ago)" if age < 120 else f" ({age / 60:.0f} min ago)"


def _describe(holder: dict | None, lock: Path, waited: float | None = None) -> str:
    holder = holder or {}
    who = f"PID {holder.get('pid', '?')}"
    if holder.get("host"):
        who += f" on {holder['host']}"
    extra = f" ({holder['command']})" if holder.get("command") else ""
    since = f" since {holder['since']}{_held_for(holder['since'])}" if holder.get("since") else ""
    waited_s = "" if waited is None else f"; waited {waited:g} s"
    return (
        f"store is locked by {who}{extra}{since}{waited_s}; wait for it to finish and retry "
        "(SIMFLUENCE_LOCK_TIMEOUT=SECONDS makes a writer wait up to that long; fits, "
        "imports and calibrations hold the lock only to commit, an ingest for as long as it "
        f"reads and writes its runs), or, if that process is gone, remove {lock}"
    )


def _command_line() -> str:
    """The holder's command as the user typed it: ``simfluence fit ...`` also for ``python -m
    simfluence_cli`` (whose argv[0] is the package's __main__.py)."""
    first = os.path.basename(sys.argv[0]) if sys.argv else ""
    if first == "__main__.py":
        first = "simfluence"
    return " ".join([first, *sys.argv[1:4]])


@contextlib.contextmanager
def write_lock(store: str | os.PathLike, timeout: float | None = None):
    """Hold the store's exclusive writer lock for the duration of the block."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    key = str(store.resolve())
    with _mutex:
        nested = bool(_held.get(key))
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield
        finally:
            with _mutex:
                _held[key] -= 1
        return
    if timeout is None:
        timeout = float(os.environ.get("SIMFLUENCE_LOCK_TIMEOUT", "10"))
    lock = store / LOCK_NAME
    payload = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": _command_line(),
        }
    ).encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileNotFoundError:  # the directory vanished (a failed first ingest removed it)
            store.mkdir(parents=True, exist_ok=True)
            continue
        except FileExistsError:
            if _break_if_stale(store, lock):
                continue
            if time.monotonic() >= deadline:
                raise StoreLockedError(_describe(_read(lock), lock, timeout)) from None
            time.sleep(0.1)
            continue
        except OSError as exc:  # read-only store: EACCES / EPERM / EROFS
            raise StoreError(
                f"{store} is not writable ({exc.strerror}): commands that write to the store "
                "(ingest, fit, import-scores, verify --repair) are refused; commands that "
                "only read it still work"
            ) from None
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        break
    with _mutex:
        _held[key] = 1
    try:
        yield
    finally:
        with _mutex:
            _held.pop(key, None)
        holder = _read(lock)
        if holder is not None and holder.get("pid") == os.getpid():
            lock.unlink(missing_ok=True)

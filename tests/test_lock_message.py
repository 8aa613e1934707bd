"""The "store is locked" error says how long the lock has been held and how to wait longer.

At 10,000 examples x 300 tests a fit holds the write lock for 6-8 minutes; an ingest started
meanwhile failed after 10 s with "wait for it to finish and retry" and the holder shown as
"__main__.py fit" (run as python -m simfluence_cli).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import UTC, datetime, timedelta

import pytest

from simfluence_cli.errors import StoreLockedError
from simfluence_cli.store import _lock


def test_locked_error_names_the_age_the_wait_and_the_timeout_variable(tmp_path):
    since = (datetime.now(UTC) - timedelta(minutes=7)).isoformat(timespec="seconds")
    holder = {
        "pid": os.getppid(),  # alive, and not this process
        "host": socket.gethostname(),
        "since": since,
        "command": "simfluence fit --runs fit",
    }
    (tmp_path / _lock.LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(StoreLockedError) as err:
        with _lock.write_lock(tmp_path, timeout=0.2):
            pass
    msg = str(err.value)
    assert f"store is locked by PID {os.getppid()}" in msg
    assert "(simfluence fit --runs fit)" in msg
    assert "(7 min ago)" in msg
    assert "waited 0.2 s" in msg
    assert "SIMFLUENCE_LOCK_TIMEOUT=SECONDS" in msg
    assert "\n" not in msg


def test_holder_command_reads_simfluence_under_python_dash_m(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/x/simfluence_cli/__main__.py", "fit", "--runs", "fit"])
    assert _lock._command_line() == "simfluence fit --runs fit"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/simfluence", "ingest", "logs/"])
    assert _lock._command_line() == "simfluence ingest logs/"


def test_age_of_an_unreadable_time_is_left_out():
    assert _lock._held_for("yesterday") == ""
    assert _lock._held_for(None) == ""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    assert _lock._held_for(now) in (" (0 s ago)", " (1 s ago)")

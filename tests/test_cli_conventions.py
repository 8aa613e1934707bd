"""Shell conventions, through the real entry point: colour, progress, quiet, stdout vs stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from simfluence_cli.io.synthetic import make_runs, write_jsonl


def run(*args, env_extra=None, drop=("NO_COLOR",)):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "simfluence_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs")
    rs, _, _ = make_runs(12, 4, 3, 20, 2, seed=3, noise=0.01)
    write_jsonl(rs, d)
    return d


@pytest.mark.slow
def test_no_color_is_honoured(tmp_path):
    missing = tmp_path / "missing.jsonl"
    coloured = run("ingest", missing, "--store", tmp_path / "s", env_extra={"FORCE_COLOR": "1"})
    plain = run(
        "ingest",
        missing,
        "--store",
        tmp_path / "s",
        env_extra={"FORCE_COLOR": "1", "NO_COLOR": "1"},
    )
    assert coloured.returncode == plain.returncode == 1
    assert "\x1b[31m" in coloured.stderr  # red error line when colour is forced
    assert "\x1b[" not in plain.stderr and plain.stderr.startswith(f"error: {missing}")


@pytest.mark.slow
def test_progress_and_messages_only_on_stderr_and_no_bar_off_a_tty(tmp_path, logs):
    p = run("ingest", logs, "--store", tmp_path / "s", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["added"]  # stdout is pure data
    assert "added" in p.stderr  # the summary line goes to stderr
    assert "\r" not in p.stderr and "━" not in p.stderr  # no progress bar: stderr is not a TTY
    q = run("-q", "fit", "--store", tmp_path / "s", "--l2", "1", "--name", "m")
    assert q.returncode == 0 and q.stdout == "" and q.stderr == ""  # --quiet: nothing at all


@pytest.mark.slow
def test_usage_error_exits_2_and_data_error_exits_1(tmp_path, logs):
    assert run("ingest", logs, "--no-such-option").returncode == 2
    assert run("fit", "--store", tmp_path / "s", "--l2", "-1").returncode == 2
    p = run("info", "--store", tmp_path / "nowhere")
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1
    d = run("--debug", "info", "--store", tmp_path / "nowhere")
    assert d.returncode == 1 and "Traceback" in d.stderr

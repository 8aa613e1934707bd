"""Ctrl-C while work runs on threads takes effect at once, not when the tasks in flight end.

At 10,000 examples x 300 tests a fold fit of `fit --l2 auto` runs for minutes on a worker
thread; a Ctrl-C 20 s into the fit used to stop it only after 144 s (the pool joined its
threads, then interpreter shutdown joined them again).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from simfluence_cli._pool import thread_pool
from simfluence_cli.model.rollout import run_chunks

ROOT = Path(__file__).resolve().parents[1]


def _interrupt_soon(delay: float = 0.3) -> threading.Timer:
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="SIGINT is not delivered as KeyboardInterrupt in this process",
)
def test_thread_pool_lets_keyboard_interrupt_through_without_waiting():
    release = threading.Event()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with thread_pool(2) as ex:
            futs = [ex.submit(release.wait, 30) for _ in range(3)]
            _interrupt_soon()
            for f in futs:
                f.result()
    took = time.perf_counter() - t0
    release.set()  # let the abandoned tasks end
    assert took < 5.0, took
    assert futs[2].cancelled()  # the pending one never started


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="SIGINT is not delivered as KeyboardInterrupt in this process",
)
def test_run_chunks_is_interruptible_while_a_chunk_runs():
    release = threading.Event()
    done = []

    def run(chunk):
        release.wait(30)
        done.append(chunk)

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        _interrupt_soon()
        run_chunks(run, [np.arange(2), np.arange(2, 4)], threads=2)
    took = time.perf_counter() - t0
    release.set()
    assert took < 5.0, took


_SLEEPY_COMMAND = r"""
import sys, threading, time
from simfluence_cli.cli._app import app, command
from simfluence_cli._pool import thread_pool

@command("sleepy")
def sleepy() -> None:
    with thread_pool(2) as ex:
        futs = [ex.submit(time.sleep, 60) for _ in range(2)]
        print("go", flush=True)
        for f in futs:
            f.result()

sys.argv = ["simfluence", "sleepy"]
app()
"""


def test_cli_exits_130_at_once_when_worker_threads_are_still_busy():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-c", _SLEEPY_COMMAND],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as a terminal delivers it, whatever the suite inherited
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "go", p.stderr.read()
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        t0 = time.perf_counter()
        out, err = p.communicate(timeout=120)
        took = time.perf_counter() - t0
    finally:
        p.kill()
    assert p.returncode == 130, (out, err)
    assert err.strip() == "interrupted"  # one line, no traceback
    assert took < 10.0, took  # the sleeping threads (60 s) are not joined

"""Progress of long commands: the fit reports its cross-validation, the ETA is the average rate."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from simfluence_cli.cli._progress import eta_seconds, new_progress
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _eta_text(bar, task) -> str:
    column = bar.columns[-1]
    return str(column.render(bar.tasks[task]))


def test_eta_after_a_jump_is_the_average_rate_not_the_last_burst():
    clock = Clock()
    bar = new_progress(Console(file=io.StringIO()), get_time=clock)
    task = bar.add_task("fitting", total=600)
    assert _eta_text(bar, task) == "-:--:--"  # nothing done yet: no estimate
    clock.now = 150.0  # minutes of cross-validation, then two folds finish together
    bar.advance(task, 60)
    clock.now = 150.1
    bar.advance(task, 60)
    # 120 of 600 in 150.1 s: 480 more at that rate take 600 s (rich's windowed speed: ~0 s)
    assert _eta_text(bar, task) == "0:10:00"


def test_eta_seconds():
    assert eta_seconds(None, 1, 10) is None
    assert eta_seconds(100.0, 0, 10) is None
    assert eta_seconds(1.0, 5, 10) is None  # too early to say
    assert eta_seconds(60.0, 0.001, 1.0) is None  # too little done to say
    assert eta_seconds(30.0, 3, 12) == pytest.approx(90.0)
    assert eta_seconds(30.0, 12, 12) == 0.0
    assert eta_seconds(30.0, 3, None) is None


def _oa_runs():
    runs, _, _ = make_runs(24, 6, 4, 30, 2, seed=3, noise=0.01)
    return runs


def test_optimizer_aware_fit_reports_its_cross_validation_before_the_final_fit():
    runs = _oa_runs()
    m = runs.n_tests
    seen: list[float] = []
    before_first_chunk: list[float] = []

    def sink(tests, A, B):
        if not before_first_chunk:
            before_first_chunk.append(sum(seen))

    sim = Simulator("optimizer-aware", l2="auto", ar="auto", transform="auto")
    assert sim.progress_total(runs) == 2 * m
    sim.fit(runs, param_sink=sink, progress=seen.append)
    assert sum(seen) == pytest.approx(2 * m)
    # the CV's half of the bar is filled while the CV runs, in several steps
    assert before_first_chunk[0] == pytest.approx(m)
    assert sum(1 for x in seen if x > 0) > 3
    assert all(x > 0 for x in seen)


@pytest.mark.filterwarnings("ignore:.*needs at least 2 fitting runs")  # the 1-run cases
@pytest.mark.parametrize(
    "kw, n_runs, cv",
    [
        (dict(method="linear", l2="auto"), 4, True),
        (dict(method="linear", l2="auto"), 1, False),  # one run: l2 = 1, no CV
        (dict(method="linear", l2=1.0), 4, False),
        (dict(method="optimizer-aware", l2=1.0, ar="auto"), 4, True),
        (dict(method="optimizer-aware", l2=1.0, ar=True, transform="identity"), 4, False),
        (dict(method="optimizer-aware"), 1, False),
        (dict(method="auto", l2="auto"), 4, True),
    ],
)
def test_progress_total_is_what_the_fit_reports(kw, n_runs, cv):
    runs = _oa_runs().subset(_oa_runs().run_ids[:n_runs])
    seen: list[float] = []
    sim = Simulator(**kw)
    total = sim.progress_total(runs)
    assert total == runs.n_tests * (2 if cv else 1)
    sim.fit(runs, progress=seen.append)
    assert float(np.sum(seen)) == pytest.approx(total)

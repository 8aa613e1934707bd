"""`calibrate` and `--interval` show a progress bar over their fold refits.

At 10,000 examples x 300 tests each of the 8 refits of a linear model takes over a minute;
`simfluence calibrate` printed one line and then nothing for minutes (206 s before a Ctrl-C).
"""

from __future__ import annotations

import pytest

import simfluence_cli.cli._intervals as intervals_cli
import simfluence_cli.cli._progress as progress_mod
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import save_model


@pytest.fixture
def store(tmp_path):
    runs, _, _ = make_runs(20, 3, 4, 15, 2, seed=2, noise=0.001)
    st = RunStore(tmp_path / "store", create=True)
    st.add_runset(runs, tags=["fit"])
    ids = st.select("fit")
    with st.write_lock():
        save_model(
            st, "lin", Simulator("linear", l2=0.1).fit(st.load(ids)), runs=ids,
            data_hash=st.data_hash(ids),
        )  # fmt: skip
    return st


@pytest.fixture
def bars(monkeypatch):
    """Every fraction bar the commands open: [label, advances, stopped]."""
    opened = []

    def fake(label, enabled, console_factory):
        assert enabled
        bar = [label, [], False]
        opened.append(bar)

        def stop():
            bar[2] = True

        return bar[1].append, stop

    monkeypatch.setattr(progress_mod, "fraction_bar", fake)
    monkeypatch.setattr(intervals_cli, "show_progress", lambda: True)
    return opened


def test_calibrate_advances_a_bar_once_per_fold_to_the_end(store, bars):
    intervals_cli.save_calibration_for(store, "lin")
    assert len(bars) == 1
    label, advances, stopped = bars[0]
    assert label == "refitting folds" and stopped
    assert len(advances) == 4  # 4 runs: 4 folds
    assert sum(advances) == pytest.approx(1.0)
    intervals_cli.save_calibration_for(store, "lin")  # up to date: no refits, no bar
    assert len(bars) == 1


def test_interval_refits_show_the_bar_and_a_saved_calibration_does_not(store, bars):
    intervals_cli.calibration_for(store, "lin", 0.9)  # none saved: refits
    assert len(bars) == 1 and sum(bars[0][1]) == pytest.approx(1.0) and bars[0][2]
    intervals_cli.save_calibration_for(store, "lin")
    intervals_cli.calibration_for(store, "lin", 0.9)  # the saved one: no refits, no bar
    assert len(bars) == 2

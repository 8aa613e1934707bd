"""A long fit does not hold the store's write lock while it computes (real processes).

The fit's compute phase is held open deterministically: a driver runs the real CLI with
``Simulator.fit`` (or the score-scale fit of ``import-scores``) wrapped to write a
``computing`` file and then wait for a ``go`` file the test creates. Meanwhile the test checks
that no lock is held, ingests other runs, replaces a fitting run, or saves another model of
the same name; then the fit commits or refuses with one line and the store unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simfluence_cli.io.synthetic import make_runs, write_jsonl
from simfluence_cli.store import _lock, _staging
from simfluence_cli.store.integrity import verify_store
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import list_models

DRIVER = """
import os, sys, time
from pathlib import Path
gate = Path(os.environ["SF_GATE"])
def held(fn):
    def wrapper(*a, **k):
        (gate / "computing").write_text(str(os.getpid()))
        while not (gate / "go").exists():
            time.sleep(0.01)
        return fn(*a, **k)
    return wrapper
from simfluence_cli.model import simulator, external_scores
simulator.Simulator.fit = held(simulator.Simulator.fit)
external_scores.fit_scale = held(external_scores.fit_scale)
sys.argv = ["simfluence", *sys.argv[1:]]
from simfluence_cli.cli import main
main()
"""


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "simfluence_cli", *map(str, args)]


def env() -> dict:
    return {**os.environ, "SIMFLUENCE_LOCK_TIMEOUT": "2", "NO_COLOR": "1"}


def make_logs(directory: Path, prefix: str, n_runs: int = 3, seed: int = 0) -> set[str]:
    rs, _, _ = make_runs(20, 6, n_runs, 20, 4, seed=seed, noise=0.01)
    for r in rs.runs:
        r.run_id = f"{prefix}-{r.run_id}"
    write_jsonl(rs, directory)
    return {r.run_id for r in rs.runs}


def run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)


class Held:
    """A CLI command whose compute phase waits for :meth:`release`."""

    def __init__(self, tmp: Path, *args):
        self.gate = tmp / "gate"
        self.gate.mkdir()
        self.p = subprocess.Popen(
            [sys.executable, "-c", DRIVER, *map(str, args)],
            env={**env(), "SF_GATE": str(self.gate)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not (self.gate / "computing").exists():
            assert self.p.poll() is None, self.p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)

    def release(self) -> tuple[int, str]:
        (self.gate / "go").write_text("")
        _, err = self.p.communicate(timeout=300)
        return self.p.returncode, err


@pytest.fixture
def store(tmp_path):
    st = tmp_path / "s"
    ids = make_logs(tmp_path / "base", "base", seed=1)
    RunStore(st, create=True).ingest([tmp_path / "base"], tags=["fit"])
    return st, ids


def files_of(store: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(store)): f.read_bytes()
        for f in sorted(store.rglob("*"))
        if f.is_file()
        and f.name != _lock.LOCK_NAME
        and not str(f.relative_to(store)).startswith(_staging.STAGING_DIR)
    }


FIT = ("fit", "--runs", "fit", "--method", "linear", "--l2", "1", "--name", "m")


def test_ingest_succeeds_while_a_fit_computes_and_the_fit_commits(store, tmp_path):
    st, base = store
    more = make_logs(tmp_path / "more", "more", seed=2)
    fit = Held(tmp_path, *FIT, "--store", st)
    assert not (st / _lock.LOCK_NAME).exists()  # computing without the lock
    staged = list((st / _staging.STAGING_DIR).iterdir())
    assert len(staged) == 1 and not _staging.is_leftover(staged[0])  # a live process's
    p = run(cli("ingest", tmp_path / "more", "--store", st, "--tag", "fit"))
    assert p.returncode == 0, p.stderr
    code, err = fit.release()
    assert code == 0, err
    man = json.loads((st / "models" / "m" / "model.json").read_text())
    assert set(man["config"]["runs"]) == base  # the runs it read, not the ones added since
    assert set(RunStore(st).run_ids()) == base | more
    assert man["config"]["data_hash"] == RunStore(st).data_hash(sorted(base))
    assert not (st / _staging.STAGING_DIR).exists()
    rep = verify_store(st)
    assert rep.ok and not rep.findings, [f.line() for f in rep.findings]


def test_fit_whose_fitting_run_was_replaced_refuses_and_leaves_the_store(store, tmp_path):
    st, base = store
    victim = sorted(base)[0]
    rs, _, _ = make_runs(20, 6, 1, 20, 4, seed=9, noise=0.01)
    rs.runs[0].run_id = victim
    write_jsonl(rs, tmp_path / "other")
    fit = Held(tmp_path, *FIT, "--store", st)
    p = run(cli("ingest", tmp_path / "other", "--store", st, "--replace"))
    assert p.returncode == 0, p.stderr
    before = files_of(st)
    code, err = fit.release()
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: model 'm' not saved"), err
    assert victim in lines[0] and "re-ingested with other content" in lines[0]
    assert "rerun the fit" in lines[0]
    assert files_of(st) == before  # store unchanged
    assert not (st / _staging.STAGING_DIR).exists()  # and the fit's staging removed
    assert not (st / "models" / "m").exists()
    rep = verify_store(st)
    assert rep.ok and not rep.findings, [f.line() for f in rep.findings]


def test_second_fit_of_a_name_does_not_silently_overwrite_the_newer_one(store, tmp_path):
    st, _ = store
    fit = Held(tmp_path, *FIT, "--store", st)  # l2 1
    other = run(cli(*FIT[:-4], "--l2", "10", "--name", "m", "--store", st))
    assert other.returncode == 0, other.stderr
    newer = (st / "models" / "m" / "model.json").read_bytes()
    code, err = fit.release()
    assert code == 1 and "another command saved a model of that name" in err, err
    assert "--replace" in err and err.count("error:") == 1 and "Traceback" not in err
    assert (st / "models" / "m" / "model.json").read_bytes() == newer  # kept


def test_with_replace_the_last_fit_to_commit_wins_and_says_so(store, tmp_path):
    st, _ = store
    run(cli(*FIT, "--store", st))
    fit = Held(tmp_path, *FIT, "--replace", "--store", st)
    other = run(cli(*FIT[:-4], "--l2", "10", "--name", "m", "--replace", "--store", st))
    assert other.returncode == 0, other.stderr
    code, err = fit.release()
    assert code == 0, err
    assert "was saved by another command" in err and "overwritten" in err
    man = json.loads((st / "models" / "m" / "model.json").read_text())
    assert man["l2"] == 1.0
    assert [m["name"] for m in list_models(RunStore(st))] == ["m"]


def test_same_fit_saved_meanwhile_is_kept_as_up_to_date(store, tmp_path):
    st, _ = store
    fit = Held(tmp_path, *FIT, "--store", st)
    assert run(cli(*FIT, "--store", st)).returncode == 0
    newer = (st / "models" / "m" / "model.json").read_bytes()
    code, err = fit.release()
    assert code == 0 and "up to date" in err, err
    assert (st / "models" / "m" / "model.json").read_bytes() == newer


def test_import_scores_scale_fit_computes_without_the_lock(store, tmp_path):
    st, base = store
    scores = tmp_path / "scores.csv"
    rs = RunStore(st).load("fit")
    rows = [f"{t},{e},0.01" for t in rs.test_ids for e in rs.example_ids]
    scores.write_text("test_id,example_id,score\n" + "\n".join(rows) + "\n")
    imp = Held(tmp_path, "import-scores", scores, "--name", "tr", "--scale", "fit", "--runs", "fit",
               "--store", st)  # fmt: skip
    assert not (st / _lock.LOCK_NAME).exists()
    more = make_logs(tmp_path / "more", "more", seed=2)
    assert run(cli("ingest", tmp_path / "more", "--store", st)).returncode == 0
    code, err = imp.release()
    assert code == 0, err
    assert set(RunStore(st).run_ids()) == base | more
    man = json.loads((st / "models" / "tr" / "model.json").read_text())
    assert set(man["config"]["runs"]) == base


def test_import_scores_refuses_when_its_runs_changed(store, tmp_path):
    st, base = store
    scores = tmp_path / "scores.csv"
    rs = RunStore(st).load("fit")
    rows = [f"{t},{e},0.01" for t in rs.test_ids for e in rs.example_ids]
    scores.write_text("test_id,example_id,score\n" + "\n".join(rows) + "\n")
    victim = sorted(base)[1]
    other, _, _ = make_runs(20, 6, 1, 20, 4, seed=9, noise=0.01)
    other.runs[0].run_id = victim
    write_jsonl(other, tmp_path / "other")
    imp = Held(tmp_path, "import-scores", scores, "--name", "tr", "--scale", "fit", "--runs", "fit",
               "--store", st)  # fmt: skip
    assert run(cli("ingest", tmp_path / "other", "--store", st, "--replace")).returncode == 0
    code, err = imp.release()
    assert code == 1 and "model 'tr' not saved" in err and "rerun the import" in err, err
    assert not (st / "models" / "tr").exists()


def test_fit_killed_while_computing_leaves_staging_that_the_next_write_removes(store, tmp_path):
    st, _ = store
    fit = Held(tmp_path, *FIT, "--store", st)
    fit.p.send_signal(signal.SIGKILL)
    fit.p.wait()
    rep = verify_store(st)
    assert rep.ok, [f.line() for f in rep.errors]
    assert any(f.where.startswith(_staging.STAGING_DIR) for f in rep.findings)
    p = run(cli(*FIT, "--store", st))
    assert p.returncode == 0, p.stderr
    rep = verify_store(st)
    assert rep.ok and not rep.findings, [f.line() for f in rep.findings]


def test_a_running_fits_staging_survives_verify_repair(store, tmp_path):
    st, _ = store
    fit = Held(tmp_path, *FIT, "--store", st)
    p = run(cli("verify", "--repair", "--store", st))
    assert p.returncode == 0, p.stderr
    assert len(list((st / _staging.STAGING_DIR).iterdir())) == 1
    code, err = fit.release()
    assert code == 0, err
    rep = verify_store(st)
    assert rep.ok and not rep.findings, [f.line() for f in rep.findings]


def test_worker_loads_refuse_runs_changed_since_the_snapshot(store, tmp_path):
    """Dask workers reload the runs from the store (StoreSource): they must fit the snapshot
    the coordinator read, or fail, never fit other content."""
    from simfluence_cli.errors import StoreError

    st, base = store
    rs = RunStore(st).load("fit")
    ids = list(rs.run_ids)
    assert rs.source.data_hash == RunStore(st).data_hash(ids)
    assert rs.source.load(ids).source.data_hash == rs.source.data_hash  # unchanged: loads
    other, _, _ = make_runs(20, 6, 1, 20, 4, seed=9, noise=0.01)
    other.runs[0].run_id = ids[0]
    RunStore(st).add_runset(other, replace=True)
    with pytest.raises(StoreError, match="changed while this computation ran"):
        rs.source.load(ids)


def test_calibrate_computes_without_the_lock_and_refuses_when_its_runs_changed(store, tmp_path):
    st, base = store
    assert run(cli(*FIT, "--store", st)).returncode == 0
    cal = Held(tmp_path, "calibrate", "-m", "m", "--store", st)  # held in the first fold refit
    assert not (st / _lock.LOCK_NAME).exists()
    victim = sorted(base)[2]
    other, _, _ = make_runs(20, 6, 1, 20, 4, seed=9, noise=0.01)
    other.runs[0].run_id = victim
    write_jsonl(other, tmp_path / "other")
    assert run(cli("ingest", tmp_path / "other", "--store", st, "--replace")).returncode == 0
    code, err = cal.release()
    assert code == 1 and "the calibration was not saved" in err, err
    assert "rerun `simfluence calibrate --model m`" in err
    assert not (st / "models" / "m" / "calibration.json").exists()
    assert not list((st / "models" / "m").glob("calibration-*"))
    assert not (st / _staging.STAGING_DIR).exists()

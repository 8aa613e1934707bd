"""Saved interval calibrations (store/calibrations.py, fit --calibrate, simfluence calibrate)
and the curriculum-novelty warning (analysis/novelty.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hs
from typer.testing import CliRunner

from simfluence_cli.analysis import intervals
from simfluence_cli.analysis.intervals import save_stored, stored_calibration
from simfluence_cli.analysis.novelty import Novelty, features_of_batches
from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_params, make_runs
from simfluence_cli.runs import RunSet
from simfluence_cli.store.calibrations import calibration_status
from simfluence_cli.store.run_store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A store with 10 fitting runs, 3 held-out runs and a model 'lin' (not calibrated)."""
    root = tmp_path_factory.mktemp("cal") / "store"
    params = make_params(12, 3, 2, seed=5, spread=0.05)
    runs, _, _ = make_runs(12, 3, 13, 16, 2, seed=5, noise=0.01, params=params)
    ids = list(runs.run_ids)
    st = RunStore(root, create=True)
    st.add_runset(runs.subset(ids[:10]), tags=["fit"])
    st.add_runset(runs.subset(ids[10:]), tags=["held"])
    r = cli("fit", "--store", root, "--runs", "fit", "--l2", "0.1", "-n", "lin")
    assert r.exit_code == 0, r.stderr
    return root


@pytest.fixture
def store(base, tmp_path):
    """A private copy of ``base`` for tests that change it."""
    path = tmp_path / "store"
    shutil.copytree(base, path)
    return path


def _simulate(store, *extra):
    cur = cli("curriculum", "syn-010", "--store", store)
    assert cur.exit_code == 0
    return cli(
        "simulate", "-", "--store", store, "-m", "lin", "--init-loss", "run:syn-010",
        "--interval", "0.9", "-f", "csv", *extra, input=cur.stdout,
    )  # fmt: skip


def _info(store) -> dict:
    r = cli("info", "--store", store, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


# ---- store level ---------------------------------------------------------------------------


def test_saved_calibration_round_trips_exactly(store):
    st = RunStore(store)
    assert calibration_status(st, "lin", 8, 0) == ("no", "")
    sim, cal, why = stored_calibration(st, "lin")
    assert cal.source == "computed" and why == "no saved calibration"
    man = save_stored(st, "lin", cal)
    assert (store / "models" / "lin" / man["generation"] / "residuals.npz").is_file()
    assert calibration_status(st, "lin", 8, 0) == ("calibrated", "")
    assert calibration_status(st, "lin", 4, 0)[0] == "stale"  # other folds: other key
    _, saved, why = stored_calibration(st, "lin")
    assert saved.source == "saved" and why == ""
    for a in ("obs", "pred", "obs_final", "pred_final", "fold_of"):
        np.testing.assert_array_equal(getattr(saved, a), getattr(cal, a))
    held = st.load("held")
    run = held["syn-010"]
    cur = [[str(held.example_ids[i]) for i in run.batch(t)] for t in range(1, run.n_steps + 1)]
    for q in ("trajectory", "final"):
        want = getattr(cal, q)([cur], run.losses[0], 0.9)
        got = getattr(saved, q)([cur], run.losses[0], 0.9)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(saved.novelty.reference, cal.novelty.reference)
    np.testing.assert_array_equal(saved.change_reference, cal.change_reference)
    edited = [b[:-1] for b in cur]
    for reduce in (None, "mean"):
        want = cal.change(cur, [edited], run.losses[0], 0.9, reduce=reduce)
        got = saved.change(cur, [edited], run.losses[0], 0.9, reduce=reduce)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.slow
def test_calibration_saved_before_change_scaling_is_recomputed(store):
    """A calibration.json without ``change_reference`` (saved by an older simfluence) would
    give unscaled change intervals: it is recomputed, and the reason is said."""
    st = RunStore(store)
    _, cal, _ = stored_calibration(st, "lin")
    save_stored(st, "lin", cal)
    path = store / "models" / "lin" / "calibration.json"
    man = json.loads(path.read_text())
    del man["change_reference"]
    path.write_text(json.dumps(man))
    _, again, why = stored_calibration(st, "lin")
    assert again.source == "computed" and "predates change-interval scaling" in why
    np.testing.assert_array_equal(again.change_reference, cal.change_reference)


@pytest.mark.parametrize(
    "method",
    [pytest.param("optimizer-aware", marks=pytest.mark.slow), "additive", "multiplicative"],
)
def test_every_method_round_trips(store, method):
    from simfluence_cli.model.simulator import Simulator

    st = RunStore(store)
    st.models.fit(method, Simulator(method, l2=0.1), "fit")
    _, cal, _ = stored_calibration(st, method)
    save_stored(st, method, cal)
    _, saved, _ = stored_calibration(st, method)
    assert saved.source == "saved"
    held = st.load("held")
    run = held["syn-011"]
    cur = [[str(held.example_ids[i]) for i in run.batch(t)] for t in range(1, run.n_steps + 1)]
    want = cal.trajectory([cur], run.losses[0], 0.8)
    got = saved.trajectory([cur], run.losses[0], 0.8)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ---- CLI: cache hit, staleness ---------------------------------------------------------------


@pytest.mark.slow
def test_cache_hit_gives_the_same_intervals_without_refitting(store, monkeypatch):
    cold = _simulate(store)
    assert cold.exit_code == 0, cold.stderr
    assert "no saved calibration; refitting on 8 folds" in cold.stderr
    r = cli("calibrate", "--store", store, "-m", "lin")
    assert r.exit_code == 0, r.stderr
    assert "saved calibration of 'lin'" in r.stderr
    assert _info(store)["calibrations"] == {"lin": "calibrated"}

    def no_refit(*a, **k):
        raise AssertionError("refitted although a current calibration is saved")

    monkeypatch.setattr(intervals, "refit_like", no_refit)
    warm = _simulate(store)
    assert warm.exit_code == 0, warm.stderr
    assert warm.stdout == cold.stdout
    assert "refitting" not in warm.stderr and "calibrat" not in warm.stderr
    again = cli("calibrate", "--store", store, "-m", "lin")  # current: nothing to do
    assert again.exit_code == 0 and "up to date" in again.stderr


@pytest.mark.slow
def test_fit_calibrate_saves_and_refit_drops_it(store):
    r = cli("fit", "--store", store, "--runs", "fit", "--l2", "0.1", "-n", "lin", "--calibrate")
    assert r.exit_code == 0, r.stderr
    assert "up to date" in r.stderr and "saved calibration of 'lin'" in r.stderr
    d = store / "models" / "lin"
    assert (d / "calibration.json").is_file()
    r = cli("fit", "--store", store, "--runs", "fit", "--l2", "1", "-n", "lin", "--replace")
    assert r.exit_code == 0, r.stderr
    assert not (d / "calibration.json").exists()
    assert not [p for p in d.iterdir() if p.name.startswith("calibration-")]
    assert _info(store)["calibrations"] == {"lin": "no"}
    assert "no saved calibration" in _simulate(store).stderr


@pytest.mark.slow
def test_reingesting_a_fitting_run_makes_it_stale(store):
    assert cli("calibrate", "--store", store, "-m", "lin").exit_code == 0
    st = RunStore(store)
    rs = st.load("syn-000")
    run = rs["syn-000"]
    run.losses = run.losses + 0.5  # other content under the same run id
    st.add_runset(RunSet(rs.example_ids, rs.test_ids, [run]), tags=["fit"], replace=True)
    status = _info(store)["calibrations"]["lin"]
    assert status == "stale: the fitting runs' data changed"
    r = _simulate(store)
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "intervals for 'lin'" in ln]
    assert len(lines) == 1 and "stale" in lines[0] and "refitting" in lines[0]
    v = json.loads(cli("verify", "--store", store, "--json").stdout)
    assert any("stale calibration" in f["message"] for f in v["findings"])


@pytest.mark.slow
def test_verify_reports_and_repair_removes_a_stray_generation(store):
    assert cli("calibrate", "--store", store, "-m", "lin").exit_code == 0
    d = store / "models" / "lin"
    gen = json.loads((d / "calibration.json").read_text())["generation"]
    stray = d / "calibration-0-abcdef"
    shutil.copytree(d / gen, stray)  # as a crash before the old generation's removal leaves
    r = cli("verify", "--store", store, "--json")
    found = [f for f in json.loads(r.stdout)["findings"] if "calibration-0-abcdef" in f["where"]]
    assert len(found) == 1 and found[0]["severity"] == "warning"
    r = cli("verify", "--store", store, "--repair")
    assert r.exit_code == 0, r.stderr
    assert not stray.exists() and (d / gen).is_dir()
    assert _info(store)["calibrations"] == {"lin": "calibrated"}
    assert cli("verify", "--store", store, "--strict").exit_code == 0


@pytest.mark.slow
def test_damaged_calibration_is_recomputed_not_used(store):
    assert cli("calibrate", "--store", store, "-m", "lin").exit_code == 0
    d = store / "models" / "lin"
    gen = json.loads((d / "calibration.json").read_text())["generation"]
    (d / gen / "residuals.npz").write_bytes(b"not an npz")
    r = _simulate(store)
    assert r.exit_code == 0, r.stderr
    assert "damaged" in r.stderr and "refitting" in r.stderr


def _as_nobody():
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and no setpriv to drop privileges")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.slow
def test_read_only_store_still_gives_intervals(base):
    import tempfile

    prefix = _as_nobody()
    tmp_path = Path(tempfile.mkdtemp(prefix="sf-cal-ro-"))  # world-traversable, unlike tmp_path
    os.chmod(tmp_path, 0o755)
    ro = tmp_path / "ro"
    shutil.copytree(base, ro)
    assert cli("fit", "--store", ro, "--runs", "fit", "--l2", "1", "-n", "cal").exit_code == 0
    assert cli("calibrate", "--store", ro, "-m", "cal").exit_code == 0
    cur = tmp_path / "cur.txt"
    cur.write_text(cli("curriculum", "syn-010", "--store", ro).stdout)
    for p in [ro, *ro.rglob("*")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    os.chmod(cur, 0o644)
    sf = [sys.executable, "-m", "simfluence_cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        for model, computed in (("cal", False), ("lin", True)):
            p = subprocess.run(
                prefix + sf + ["simulate", str(cur), "--store", str(ro), "-m", model,
                               "--interval", "0.9", "-f", "csv"],
                capture_output=True, text=True, cwd=tmp_path, env=env,
            )  # fmt: skip
            assert p.returncode == 0, p.stderr
            assert p.stdout.splitlines()[0] == "step,test_id,loss,lo_90,hi_90"
            assert ("refitting" in p.stderr) == computed, p.stderr
        p = subprocess.run(
            prefix + sf + ["calibrate", "--store", str(ro), "-m", "lin"],
            capture_output=True, text=True, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert p.returncode == 1 and "not writable" in p.stderr
    finally:
        for p in [ro, *ro.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(tmp_path, ignore_errors=True)


# ---- novelty -----------------------------------------------------------------------------


def _epochs(rng, order_of_epoch, n_epochs, batch):
    stream = np.concatenate([order_of_epoch(rng) for _ in range(n_epochs)])
    return [[f"e{i:03d}" for i in stream[s : s + batch]] for s in range(0, len(stream), batch)]


def _shuffles(rng, n, N=60, epochs=4, batch=4):
    return [_epochs(rng, lambda r: r.permutation(N), epochs, batch) for _ in range(n)]


def _class_ordered(rng, N=60, classes=6, epochs=4, batch=4):
    labels = np.arange(N) % classes
    order = rng.permutation(classes)

    def epoch(r):
        return np.concatenate([r.permutation(np.flatnonzero(labels == c)) for c in order])

    return _epochs(rng, epoch, epochs, batch)


def test_novelty_flags_class_ordered_not_shuffles():
    rng = np.random.default_rng(0)
    fit = _shuffles(rng, 30)
    nv = Novelty(features_of_batches(fit))
    assert np.all(np.isfinite(nv.loo_)) and nv.loo_.max() < 4
    shuffled = nv.score(_shuffles(rng, 20))
    assert not shuffled["flag"].any() and shuffled["p"].min() > 0.02
    ordered = nv.score([_class_ordered(rng) for _ in range(5)])
    assert ordered["flag"].all() and (ordered["z"] > 10).all()
    assert ordered["p"].max() == pytest.approx(1 / 31)
    assert nv.warning(_shuffles(rng, 3)) is None
    assert "2 of 2 curriculum(s) unlike the fitting runs" in nv.warning(
        [_class_ordered(rng), _class_ordered(rng)]
    )


def test_novelty_features_of_simple_orders():
    # the same order every epoch: every gap is one epoch, so gap regularity is 0
    fixed = _epochs(np.random.default_rng(1), lambda r: np.arange(40), 5, 4)
    assert features_of_batches([fixed])[0, 0] == pytest.approx(0.0)
    # half the examples only in the first half, half only in the second: large imbalance
    early = [[f"a{i}" for i in range(4)]] * 10 + [[f"b{i}" for i in range(4)]] * 10
    assert features_of_batches([early])[0, 1] > 1.5


@pytest.mark.slow
def test_novelty_on_the_sample_families(tmp_path):
    st = RunStore(tmp_path / "s", create=True)
    for fam in ("fit", "heldout-random", "heldout-classordered"):
        st.ingest([ROOT / "sample_runs" / fam], tags=[fam])
    from simfluence_cli.analysis.whatif import run_batches

    nv = Novelty.from_runs(st.load("fit"))
    for fam, flagged in (("heldout-random", 0), ("heldout-classordered", 8)):
        rs = st.load(fam)
        assert nv.score([run_batches(rs, r) for r in rs.run_ids])["flag"].sum() == flagged


@pytest.mark.slow
@given(
    hs.lists(
        hs.lists(hs.integers(0, 12), min_size=1, max_size=4, unique=True), min_size=2, max_size=40
    ),
    hs.permutations(list(range(13))),
)
def test_novelty_features_ignore_names_and_time_direction(cur, perm):
    """Laws: renaming examples and reversing the order of steps leave both features as they
    are (gaps keep their multiset; positions p become 1 - p)."""
    named = [[f"e{i}" for i in b] for b in cur]
    renamed = [[f"x{perm[i]}" for i in b] for b in cur]
    f = features_of_batches([named, renamed, named[::-1]])
    np.testing.assert_allclose(f[1], f[0], equal_nan=True)
    np.testing.assert_allclose(f[2], f[0], rtol=1e-9, atol=1e-12, equal_nan=True)


def test_calibrate_an_unknown_model_fails_before_any_work(store):
    r = cli("calibrate", "--store", store, "-m", "nosuch")
    assert r.exit_code == 1
    assert "no model named 'nosuch'" in r.stderr
    assert "calibrating" not in r.stderr  # no "refitting on 8 folds" line for a missing model
    assert calibration_status(RunStore(store), "lin", 8, 0)[0] == "no"


def test_design_trust_outside_0_1_is_a_usage_error(store):
    r = cli("design", "--store", store, "-m", "lin", "--trust", "2", "-o", store.parent / "d.txt")
    assert r.exit_code == 2
    assert "--trust" in r.stderr
    assert "starting from" not in r.stderr  # rejected while parsing, before the search starts


def test_novelty_warning_is_said_once_per_command(capsys):
    """eval --interval over several models fitted on the same runs: one warning line, not one
    per model; without ``said`` every call warns."""
    from types import SimpleNamespace

    from simfluence_cli.cli._intervals import novelty_warning

    line = "warning: 2 of 2 evaluated runs are unlike the fitting runs"
    cal = SimpleNamespace(novelty=SimpleNamespace(warning=lambda curricula, what: line))
    said: set[str] = set()
    for _ in range(3):
        novelty_warning(cal, [[[0]]], "evaluated run", said)
    assert capsys.readouterr().err.count("unlike the fitting runs") == 1
    novelty_warning(cal, [[[0]]])
    novelty_warning(cal, [[[0]]])
    assert capsys.readouterr().err.count("unlike the fitting runs") == 2

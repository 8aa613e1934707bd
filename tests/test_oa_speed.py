"""Issue 15, item 1: optimizer-aware commands without waste (no scipy to load, simulate or rank
with a model; one BLAS thread in the CLI), results unchanged."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from test_oa_removal import problems

from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator


def _oa_store(path):
    """A store with 6 fitting runs (tag 'fit') and an optimizer-aware model 'oa' with AR memory,
    an lr schedule and a time basis (every part of the 2-D state)."""
    import numpy as np

    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import save_model

    runs, _, _ = make_runs(30, 6, 6, 24, 3, method="linear", seed=2, noise=0.0)
    for r in runs.runs:
        r.lr = np.linspace(1.0, 0.4, r.n_steps)
    st = RunStore(path, create=True)
    st.add_runset(runs, tags=["fit"])
    ids = st.select("fit")
    sim = Simulator("optimizer-aware", l2=0.1, ar=True, time_basis=3, transform="log")
    with st.write_lock():
        save_model(st, "oa", sim.fit(st.load(ids)), runs=ids, data_hash=st.data_hash(ids))
    return st


def _cli(args, env_extra=None, env_drop=()):
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env.update(env_extra or {})
    code = (
        "import sys\nfrom simfluence_cli.cli import main\n"
        f"sys.argv = ['simfluence', *{list(map(str, args))!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "import os\n"
        "print('LOADED', *[m for m in ('scipy', 'scipy.sparse', 'scipy.linalg') if m in sys.modules])\n"
        "print('BLAS', os.environ.get('OPENBLAS_NUM_THREADS'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition("LOADED")
    loaded, blas = tail.split("\n")[0].split(), tail.split("BLAS")[1].split()[0]
    return body, loaded, blas


@pytest.mark.slow
def test_optimizer_aware_top_design_simulate_import_no_scipy(tmp_path):
    """scipy.sparse is imported to fit only (optimizer_aware.Observations): top (exact removal
    deltas), design and simulate with an optimizer-aware model load none of scipy (~0.2 s)."""
    st = _oa_store(tmp_path / "s")
    s = ["--store", st.path]
    _, loaded, _ = _cli(["top", *s, "--model", "oa", "--test", "all", "--k", "3"])
    assert loaded == []
    d = tmp_path / "d.txt"
    _, loaded, _ = _cli(["design", *s, "--model", "oa", "--seed", "0", "--random", "5", "-o", d])
    assert loaded == []
    cur = tmp_path / "c.txt"
    _cli(["curriculum", st.select("fit")[0], *s, "-o", cur])
    _, loaded, _ = _cli(["simulate", cur, *s, "--model", "oa", "--init-loss", "mean"])
    assert loaded == []


@pytest.mark.slow
def test_cli_sets_one_blas_thread_unless_the_user_chose(tmp_path):
    drop = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    _, _, blas = _cli(["--version"], env_drop=drop)
    assert blas == "1"
    _, _, blas = _cli(["--version"], env_extra={"OPENBLAS_NUM_THREADS": "2"})
    assert blas == "2"
    _, _, blas = _cli(["--version"], env_extra={"OMP_NUM_THREADS": "3"}, env_drop=drop[:1])
    assert blas == "None"  # OMP_NUM_THREADS is the user's choice: nothing set


def test_limit_blas_threads_is_too_late_once_numpy_is_loaded(monkeypatch):
    import numpy  # noqa: F401  (loaded: its BLAS has read its thread count)

    from simfluence_cli.cli._blas import THREAD_VARS, limit_blas_threads

    for v in THREAD_VARS:
        monkeypatch.delenv(v, raising=False)
    assert limit_blas_threads() is False
    assert "OPENBLAS_NUM_THREADS" not in os.environ


@pytest.mark.slow
def test_one_or_two_blas_threads_give_the_same_design_and_top(tmp_path):
    """The CLI's single BLAS thread changes no output: design (its move scores are a BLAS
    matmul) and top print the same with 2 threads."""
    pytest.importorskip("threadpoolctl")
    st = _oa_store(tmp_path / "s")
    s = ["--store", st.path]
    outs = {}
    for th in ("1", "2"):
        env = {"OPENBLAS_NUM_THREADS": th}
        d = tmp_path / f"d{th}.txt"
        _cli(["design", *s, "--model", "oa", "--seed", "0", "--random", "5", "-o", d], env)
        top, _, _ = _cli(["top", *s, "--model", "oa", "--test", "all", "--k", "3"], env)
        outs[th] = (d.read_text().split("# seconds")[0], top)
    assert outs["1"] == outs["2"]


# -- exact removal deltas: one table buffer for all groups, bit for bit the former results -----


@pytest.mark.slow
@settings(max_examples=120, deadline=None)
@given(problems())
def test_oa_removal_deltas_equal_the_former_implementation_bitwise(p):
    """model.oa_removal with its shared table buffer (stale entries of earlier groups left in
    it: budgets of 1 and 2000 bytes make one group per curriculum or per column) returns the
    former implementation's deltas, final losses and statistics bit for bit."""
    import numpy as np
    from _oa_removal_reference import oa_removal_deltas as former

    from simfluence_cli.model.oa_removal import oa_removal_deltas

    *args, budget = p
    st_new, st_old = {}, {}
    d1, f1 = oa_removal_deltas(*args, budget=budget, stats=st_new)
    d0, f0 = former(*args, budget=budget, stats=st_old)
    np.testing.assert_array_equal(d1, d0)
    np.testing.assert_array_equal(f1, f0)
    assert st_new == st_old


def test_removal_effect_of_the_demo_like_model_equals_the_former_bitwise():
    """On a fitted optimizer-aware model (clip observed, several table groups): the same."""
    import _oa_removal_reference as ref
    import numpy as np

    import simfluence_cli.model.oa_removal as oar
    from simfluence_cli.analysis.effects import removal_effect

    runs, _, _ = make_runs(40, 8, 6, 60, 4, method="linear", seed=4, noise=0.002)
    sim = Simulator("optimizer-aware", l2=1.0, ar=True, time_basis=0, transform="identity")
    sim.fit(runs)
    budget, current = oar.OA_REMOVAL_BUDGET, oar.oa_removal_deltas
    try:
        oar.OA_REMOVAL_BUDGET = ref.OA_REMOVAL_BUDGET = 300_000  # several groups
        got = removal_effect(sim, runs)
        oar.oa_removal_deltas = ref.oa_removal_deltas
        want = removal_effect(sim, runs)
    finally:
        oar.OA_REMOVAL_BUDGET = ref.OA_REMOVAL_BUDGET = budget
        oar.oa_removal_deltas = current
    assert np.abs(want).max() > 0
    np.testing.assert_array_equal(got, want)


def _former_losses(obs, cols, transform):
    """Observations.losses before its all-finite shortcut (always nan_to_num)."""
    import numpy as np

    from simfluence_cli.model.optimizer_aware import forward

    k = len(cols)
    y1, y0, y2 = (np.empty((obs.n_obs, k)) for _ in range(3))
    off = 0
    for r, pos in zip(obs.runs, obs.full_index):
        T = r.n_steps
        Y = np.full((T + 1, k), np.nan)
        ok = pos >= 0
        Y[ok] = forward(r.losses[pos[ok]][:, cols], transform)
        y1[off : off + T], y0[off : off + T] = Y[1:], Y[:-1]
        y2[off : off + T] = np.vstack([Y[:1], Y[:-2]]) if T > 1 else Y[:1]
        off += T
    dprev = y0 - y2
    mask = np.isfinite(y1) & np.isfinite(y0) & np.isfinite(dprev)
    z = np.where(mask, 1.0, 0.0)
    return np.nan_to_num(y0), np.nan_to_num(dprev), np.nan_to_num(y1 - y0), z


@pytest.mark.parametrize("transform", ["identity", "log", "logodds"])
@pytest.mark.parametrize("gaps", [False, True])
def test_observation_losses_equal_the_former_bitwise(transform, gaps):
    """The all-finite shortcut of Observations.losses returns the former arrays bit for bit;
    with unlogged steps the general path (masked, NaN -> 0) is taken as before."""
    import numpy as np

    from simfluence_cli.model.optimizer_aware import Observations, Schedule

    runs, _, _ = make_runs(12, 5, 4, 30, 2, seed=1, noise=0.002, log_every=3 if gaps else 1)
    obs = Observations(runs, Schedule.from_runs(runs), 0)
    cols = np.array([4, 0, 2])
    got, want = obs.losses(cols, transform), _former_losses(obs, cols, transform)
    assert bool(got[3].all()) is not gaps
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
        assert g.dtype == w.dtype and g.shape == w.shape

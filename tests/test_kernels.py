"""The compiled rollout kernel (numba, optional) against the numpy path, and the choice between
them ($SIMFLUENCE_KERNELS, the work threshold). numba tests skip when numba is not installed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import simfluence_cli.model.rollout as ro
from simfluence_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not ro.numba_available(), reason="numba not installed")
FMAX = np.finfo(np.float64).max


def _both(monkeypatch, *args, **kw):
    """rollout(*args, **kw) on the numpy path and on the numba path."""
    monkeypatch.setenv(ro.KERNELS_ENV, "numpy")
    ref = ro.rollout(*args, **kw)
    monkeypatch.setenv(ro.KERNELS_ENV, "numba")
    return ref, ro.rollout(*args, **kw)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 12))
    m = draw(st.integers(1, 70))  # > 2 blocks of BLOCK_COLS columns
    C = draw(st.integers(1, 4))
    T = draw(st.integers(1, 9))
    b = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    spread = draw(st.sampled_from([0.05, 1.0, 30.0]))  # 30: negative alphas, divergence
    A = rng.uniform(0.3 - spread, 0.3 + spread, (n, m))
    B = rng.normal(0, 0.1 * spread, (n, m))
    pad = draw(st.sampled_from([0.0, 0.3, 0.9]))
    idx = np.where(rng.random((C, T, b)) < pad, -1, rng.integers(0, n, (C, T, b)))
    if draw(st.booleans()):
        idx[0, T // 2] = -1  # an all-padding step
    L0 = rng.uniform(-1, 3, m) if draw(st.booleans()) else rng.uniform(-1, 3, (C, m))
    clip = draw(st.sampled_from(["none", "finite", "open"]))
    if clip == "none":
        lo = hi = None
    else:
        lo, hi = np.sort(rng.uniform(-2, 4, (2, m)), axis=0)
        if clip == "open":  # infinite ends, as the CV of --l2 auto passes for unlogged tests
            hi[::2] = np.inf
            lo[1::3] = -np.inf
    method = draw(st.sampled_from(["linear", "additive", "multiplicative"]))
    if method == "multiplicative":
        B = np.zeros_like(B)
    return A, B, idx, L0, method, lo, hi


@pytest.mark.slow
@needs_numba
@settings(max_examples=60)
@given(problems(), st.booleans(), st.sampled_from([1, 2]))
def test_numba_kernel_equals_numpy_path(problem, final, threads):
    """Same results to 1e-12 for every method, clip, padding pattern, block count, final mode
    and thread count (in practice bit for bit: no fast-math, the sums in slot order)."""
    with pytest.MonkeyPatch.context() as mp:
        ref, got = _both(mp, *problem, final=final, threads=threads)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0, equal_nan=True)
    # NaN-free and saturated at the largest float when unclipped (never inf)
    assert np.isfinite(got).all()


@pytest.mark.slow
@needs_numba
def test_numba_kernel_nan_in_losses_and_bounds_propagates_like_numpy(monkeypatch):
    rng = np.random.default_rng(3)
    n, m, C, T, b = 5, 40, 3, 6, 2
    A, B = rng.uniform(0.2, 0.6, (n, m)), rng.normal(0, 0.1, (n, m))
    idx = rng.integers(-1, n, (C, T, b))
    L0 = rng.uniform(1, 2, (C, m))
    L0[1, 3] = np.nan
    lo, hi = np.zeros(m), np.full(m, 2.0)
    lo[5], hi[7] = np.nan, np.nan  # np.maximum / np.minimum return NaN then
    ref, got = _both(monkeypatch, A, B, idx, L0, "linear", lo, hi)
    assert np.isnan(ref).any()
    np.testing.assert_array_equal(got, ref)  # NaN where the numpy path has NaN


@needs_numba
def test_simulate_with_unseen_prior_row_same_on_both_paths(monkeypatch):
    """Simulator.simulate (the extra 'prior' row for unseen examples, per-curriculum L0)."""
    from simfluence_cli.model.simulator import Simulator

    rng = np.random.default_rng(5)
    n, m = 30, 40
    sim = Simulator.from_params(
        rng.uniform(0.2, 0.3, (n, m)),
        rng.normal(0, 0.05, (n, m)),
        [f"e{i}" for i in range(n)],
        [f"t{j}" for j in range(m)],
        batch_size=4,
        loss_range=(np.zeros(m), np.full(m, 5.0)),
    )
    cur = [[[f"e{(3 * t + j) % n}" for j in range(4)] for t in range(7)], [["e1", "new"]] * 3]
    L0 = rng.uniform(1, 3, (2, m))
    monkeypatch.setenv(ro.KERNELS_ENV, "numpy")
    ref = sim.simulate(cur, L0, unseen="prior")
    monkeypatch.setenv(ro.KERNELS_ENV, "numba")
    got = sim.simulate(cur, L0, unseen="prior")
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0, equal_nan=True)
    assert np.isnan(got[1, 4:]).all() and np.isfinite(got[1, :4]).all()  # shorter curriculum


def test_kernel_choice_from_env_and_threshold(monkeypatch):
    monkeypatch.setattr(ro, "numba_available", lambda: True)
    monkeypatch.delenv(ro.KERNELS_ENV, raising=False)
    assert not ro.use_numba(ro.NUMBA_MIN_WORK - 1)  # small: numba's import would not pay
    assert ro.use_numba(ro.NUMBA_MIN_WORK)
    monkeypatch.setenv(ro.KERNELS_ENV, "numpy")
    assert not ro.use_numba(10**15)
    monkeypatch.setenv(ro.KERNELS_ENV, "NUMBA")
    assert ro.use_numba(1)
    monkeypatch.setenv(ro.KERNELS_ENV, "fast")
    with pytest.raises(UsageError, match="SIMFLUENCE_KERNELS"):
        ro.use_numba(1)
    monkeypatch.setattr(ro, "numba_available", lambda: False)
    monkeypatch.setenv(ro.KERNELS_ENV, "auto")
    assert not ro.use_numba(10**15)  # not installed: numpy, silently
    monkeypatch.setenv(ro.KERNELS_ENV, "numba")
    with pytest.raises(UsageError, match="not installed"):
        ro.use_numba(1)


@needs_numba
def test_uncached_kernel_only_for_very_large_problems(monkeypatch):
    """Without a writable cache every process compiles (~8 s): auto then keeps numpy below
    NUMBA_MIN_WORK_UNCACHED; SIMFLUENCE_KERNELS=numba still forces the kernel."""
    from simfluence_cli.model import _kernels

    monkeypatch.setattr(_kernels, "CACHED", False)
    monkeypatch.delenv(ro.KERNELS_ENV, raising=False)
    A = np.ones((4, 100))
    idx = np.zeros((ro.NUMBA_MIN_WORK // 100, 1, 1), np.int32)
    assert not ro.kernel_applies(A, idx)
    monkeypatch.setattr(ro, "NUMBA_MIN_WORK_UNCACHED", ro.NUMBA_MIN_WORK)
    assert ro.kernel_applies(A, idx)
    monkeypatch.setattr(ro, "NUMBA_MIN_WORK_UNCACHED", 10**12)
    monkeypatch.setenv(ro.KERNELS_ENV, "numba")
    assert ro.kernel_applies(A, idx[:1])
    monkeypatch.setattr(_kernels, "CACHED", True)
    monkeypatch.delenv(ro.KERNELS_ENV)
    assert ro.kernel_applies(A, idx) and not ro.kernel_applies(A, idx[:-1])


@needs_numba
def test_kernel_that_fails_to_compile_falls_back_to_numpy_with_a_warning(monkeypatch):
    import numba

    from simfluence_cli.model import _kernels

    def broken(*args):
        raise numba.core.errors.TypingError("no such intrinsic")

    monkeypatch.setattr(_kernels, "_compiled", broken)
    monkeypatch.setattr(_kernels, "BROKEN", False)
    monkeypatch.setattr(ro, "NUMBA_MIN_WORK", 1)
    monkeypatch.setattr(_kernels, "CACHED", True)
    rng = np.random.default_rng(4)
    A, B = rng.uniform(0.2, 0.3, (6, 20)), rng.normal(0, 0.1, (6, 20))
    idx = rng.integers(-1, 6, (3, 4, 2))
    monkeypatch.setenv(ro.KERNELS_ENV, "numpy")
    ref = ro.rollout(A, B, idx, np.ones(20), "linear", None, None)
    monkeypatch.setenv(ro.KERNELS_ENV, "auto")
    with pytest.warns(RuntimeWarning, match="failed to compile.*TypingError"):
        got = ro.rollout(A, B, idx, np.ones(20), "linear", None, None)
    np.testing.assert_array_equal(got, ref)
    assert _kernels.BROKEN and not ro.kernel_applies(A, idx)  # not tried again
    monkeypatch.setenv(ro.KERNELS_ENV, "numba")
    with pytest.raises(_kernels.KernelUnavailable):
        ro.rollout(A, B, idx, np.ones(20), "linear", None, None)


def test_numpy_path_when_numba_forced_but_indices_out_of_its_range(monkeypatch):
    """Indices the kernel does not take (row n = the numpy path's zero row) go to numpy."""
    monkeypatch.setattr(ro, "numba_available", lambda: True)
    monkeypatch.setenv(ro.KERNELS_ENV, "numba")
    A, B = np.full((2, 3), 0.5), np.ones((2, 3))
    idx = np.array([[[0, 2]]])  # 2 == n: padding in the numpy path
    out = ro.rollout(A, B, idx, np.ones(3), "linear", None, None, final=True)
    np.testing.assert_array_equal(out, [[1.5, 1.5, 1.5]])


@pytest.mark.parametrize("kind", ["linear", "optimizer-aware"])
def test_small_simulate_does_not_import_numba(kind):
    """Demo-sized problems stay on numpy: numba's import alone costs ~0.3-0.5 s."""
    call = (
        "rollout(A, B, idx, np.ones(100), 'linear', None, None, final=True)\n"
        if kind == "linear"
        else "oa.rollout(A - 0.25, B, np.full(100, 0.3), np.zeros((100, 0)), idx, "
        "np.ones((48, 250)), np.zeros((250, 0)), np.ones(100), 'log', None, None)\n"
    )
    code = (
        "import sys, numpy as np\n"
        "from simfluence_cli.model.rollout import rollout\n"
        "import simfluence_cli.model.optimizer_aware as oa\n"
        "rng = np.random.default_rng(0)\n"
        "A = rng.uniform(0.2, 0.3, (300, 100)); B = rng.normal(0, 0.1, (300, 100))\n"
        "idx = rng.integers(0, 300, (48, 250, 4))\n" + call + "print('numba' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(ro.KERNELS_ENV, None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


@needs_numba
@pytest.mark.slow
def test_read_only_package_dir_and_no_cache_dir_does_not_crash(tmp_path):
    """With the package on a read-only path and no writable cache directory anywhere, the
    kernel compiles in memory instead of caching (no crash, same results). Read-only for root
    too: the cache directories numba would create are regular files."""
    pkg = tmp_path / "ro"
    shutil.copytree(ROOT / "simfluence_cli", pkg / "simfluence_cli")
    for d in (pkg / "simfluence_cli").rglob("__pycache__"):
        shutil.rmtree(d)
    (pkg / "simfluence_cli" / "model" / "__pycache__").write_text("not a directory")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("not a directory")
    for p in [*pkg.rglob("*"), pkg, home]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    code = (
        "import os, numpy as np, simfluence_cli.model.rollout as ro\n"
        "assert ro.__file__.startswith(os.environ['PYTHONPATH'])\n"
        "rng = np.random.default_rng(0)\n"
        "A = rng.uniform(0.2, 0.3, (20, 40)); B = rng.normal(0, 0.1, (20, 40))\n"
        "idx = rng.integers(-1, 20, (3, 5, 2))\n"
        "os.environ['SIMFLUENCE_KERNELS'] = 'numpy'\n"
        "ref = ro.rollout(A, B, idx, np.ones(40), 'linear', None, None)\n"
        "os.environ['SIMFLUENCE_KERNELS'] = 'numba'\n"
        "got = ro.rollout(A, B, idx, np.ones(40), 'linear', None, None)\n"
        "np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)\n"
        "from simfluence_cli.model import _kernels\n"
        "print(type(_kernels._compiled._cache).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_", "PYTHON"))}
    env.update(HOME=str(home), PYTHONPATH=str(pkg), PYTHONDONTWRITEBYTECODE="1")
    try:
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=home
        )
    finally:
        for p in [*pkg.rglob("*"), pkg, home]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "NullCache"  # compiled in memory, not cached
    assert not list(pkg.rglob("*.nbi"))  # nothing cached in the read-only tree


@pytest.mark.slow
@needs_numba
def test_kernel_runs_in_a_forked_child_after_the_parent_ran_it():
    """The threading layer is fork-safe (GNU OpenMP would abort the child)."""
    code = (
        "import os, numpy as np\n"
        "from simfluence_cli.model import _kernels as K\n"
        "args = (np.ones((5, 40)), np.ones((5, 40)), np.zeros((2, 3, 2), np.int64), np.ones(40))\n"
        "K.rollout_numba(*args, 'linear', None, None, final=True, threads=2)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    out = K.rollout_numba(*args, 'linear', None, None, final=True, threads=2)\n"
        "    os._exit(0 if out[0, 0] == 22.0 else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_THREADING_LAYER", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"


# -- the optimizer-aware kernel and the kernel calls ---------------------------------------------


@st.composite
def oa_problems(draw):
    """An optimizer-aware rollout: every transform, AR on/off (|rho| up to 1.5: growing
    oscillations), time basis of 0 / 1 / 3 hats, lr schedules, padding, clip off / finite / open
    ends, and sometimes a start state (mid-curriculum) or an extra 'prior' row."""
    from simfluence_cli.model import optimizer_aware as oa

    n = draw(st.integers(1, 12))
    m = draw(st.integers(1, 70))
    C = draw(st.integers(1, 4))
    T = draw(st.integers(1, 9))
    b = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    spread = draw(st.sampled_from([0.01, 0.3, 3.0]))
    a = rng.normal(0, spread, (n, m))
    B = rng.normal(-0.05, spread, (n, m))
    rho = rng.uniform(-1.5, 1.5, m) if draw(st.booleans()) else np.zeros(m)
    H = draw(st.sampled_from([0, 1, 3]))
    gamma = rng.normal(0, 0.1 * spread, (m, H))
    pad = draw(st.sampled_from([0.0, 0.3, 0.9]))
    idx = np.where(rng.random((C, T, b)) < pad, -1, rng.integers(0, n, (C, T, b)))
    if draw(st.booleans()):
        idx[0, T // 2] = -1  # an all-padding step
    sched = oa.Schedule(0.1, 4.0, T, rng.uniform(0.05, 0.2, T) if draw(st.booleans()) else None)
    lr = rng.uniform(0.01, 0.3, (C, T)) if draw(st.booleans()) else None
    w = oa.curriculum_weights(sched, idx, lr)
    phi = oa.hat_basis(np.arange(1, T + 1), H, T)
    L0 = rng.uniform(0.01, 4, (C, m))
    clip = draw(st.sampled_from(["none", "finite", "open"]))
    lo = hi = None
    if clip != "none":
        lo, hi = np.sort(rng.uniform(0, 5, (2, m)), axis=0)
        lo[::4] = 0.0  # the floor of log / log-odds
        if clip == "open":
            hi[::2] = np.inf
            lo[1::3] = -np.inf
    transform = draw(st.sampled_from(["identity", "log", "logodds"]))
    start = None
    if draw(st.booleans()):
        start = (oa.forward(L0, transform), rng.normal(0, 0.1, (C, m)))
    return (a, B, rho, gamma, idx, w, phi, L0, transform, lo, hi), start


@needs_numba
@settings(max_examples=80, deadline=None)
@given(oa_problems(), st.booleans(), st.sampled_from([1, 2]), st.sampled_from([1, 40, 10**9]))
def test_oa_kernel_equals_numpy_path(problem, final, threads, call_work):
    """Bit for bit (no fast-math, sums in slot order, np.clip's NaN and tie rules) for every
    transform / AR / time basis / clip combination, final mode and thread count, in one kernel
    call or in many (blocks x curricula) of a few gather-adds each."""
    from simfluence_cli.model import _kernels
    from simfluence_cli.model import optimizer_aware as oa

    args, start = problem
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_kernels, "CALL_WORK_PER_THREAD", call_work)
        mp.setenv(ro.KERNELS_ENV, "numpy")
        ref = oa.rollout(*args, final=final, start=start)
        mp.setenv(ro.KERNELS_ENV, "numba")
        got = oa.rollout(*args, final=final, start=start, threads=threads)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


@needs_numba
def test_oa_kernel_nan_losses_and_bounds_propagate_like_numpy(monkeypatch):
    from simfluence_cli.model import optimizer_aware as oa

    rng = np.random.default_rng(7)
    n, m, C, T, b = 6, 40, 3, 7, 3
    idx = rng.integers(-1, n, (C, T, b))
    L0 = rng.uniform(1, 2, (C, m))
    L0[1, 3] = np.nan
    lo, hi = np.zeros(m), np.full(m, 3.0)
    lo[5], hi[7] = np.nan, np.nan
    args = (
        rng.normal(0, 0.1, (n, m)), rng.normal(0, 0.1, (n, m)), np.full(m, 0.5),
        np.zeros((m, 0)), idx, np.ones((C, T)), np.zeros((T, 0)), L0, "identity", lo, hi,
    )  # fmt: skip
    monkeypatch.setenv(ro.KERNELS_ENV, "numpy")
    ref = oa.rollout(*args)
    monkeypatch.setenv(ro.KERNELS_ENV, "numba")
    got = oa.rollout(*args)
    assert np.isnan(ref).any()
    np.testing.assert_array_equal(got, ref)


@needs_numba
def test_oa_simulate_with_unseen_prior_row_same_on_both_paths(monkeypatch):
    """Simulator.simulate of a fitted optimizer-aware model (extra prior row, a shorter
    curriculum, per-step lr) takes the kernel when forced, with the numpy path's results."""
    from simfluence_cli.io.synthetic import make_runs
    from simfluence_cli.model.simulator import Simulator

    runs, _, _ = make_runs(30, 20, 4, 25, 4, seed=3)
    sim = Simulator("optimizer-aware", l2=1.0, ar=True, time_basis=2, transform="log").fit(runs)
    cur = [[[f"{runs.example_ids[(3 * t + j) % 30]}" for j in range(4)] for t in range(9)]]
    cur.append([[runs.example_ids[1], "new"]] * 3)
    lr = np.linspace(0.5, 1.5, 9)
    monkeypatch.setenv(ro.KERNELS_ENV, "numpy")
    ref = sim.simulate(cur, unseen="prior", lr=lr)
    from simfluence_cli.model import _kernels

    calls = []
    kernel = _kernels.rollout_oa_numba
    monkeypatch.setattr(
        _kernels, "rollout_oa_numba", lambda *a, **k: calls.append(1) or kernel(*a, **k)
    )
    monkeypatch.setenv(ro.KERNELS_ENV, "numba")
    got = sim.simulate(cur, unseen="prior", lr=lr)
    assert calls == [1]
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(got[1, 4:]).all() and np.isfinite(got[1, :4]).all()


@pytest.mark.slow
@given(
    st.integers(1, 300), st.integers(1, 50), st.integers(1, 9), st.integers(1, 200),
    st.integers(1, 4), st.sampled_from([1, 10**3, 10**5, 4 * 10**8]),
)  # fmt: skip
def test_kernel_calls_cover_every_block_and_curriculum_once(C, T, nb, m, threads, work):
    """spans: each (column block, curriculum) in exactly one call; a call is at most the
    budget (or one block of one curriculum) and keeps every thread busy when it can."""
    pytest.importorskip("numba")
    from simfluence_cli.model import _kernels as K

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(K, "CALL_WORK_PER_THREAD", work)
        calls = K.spans(C, T, nb, m, threads)
    blocks = -(-m // K.BLOCK_COLS)
    seen = np.zeros((blocks, C), int)
    one = T * nb * K.BLOCK_COLS
    for b0, b1, c0, c1, groups in calls:
        seen[b0:b1, c0:c1] += 1
        assert (b1 - b0) * (c1 - c0) * one <= max(work * threads, one)
        assert 1 <= groups <= c1 - c0
    assert (seen == 1).all()


_LONG_ROLLOUT = r"""
import os, sys, time
import numpy as np
os.environ["SIMFLUENCE_KERNELS"] = "numba"
import simfluence_cli.model.optimizer_aware as oa
import simfluence_cli.model.rollout as ro
rng = np.random.default_rng(0)
n, m, C, T, b = 1000, 2048, 256, 4000, 16  # 3.4e10 gather-adds: ~40 s CPU on one thread
A, B = rng.uniform(0.05, 0.07, (n, m)), rng.normal(0, 0.01, (n, m))
idx = rng.integers(0, n, (C, T, b), dtype=np.int32)
L0 = np.ones(m)
small = idx[:1, :2]
if sys.argv[1] == "linear":
    run = lambda i: ro.rollout(A, B, i, L0, "linear", None, None, final=True, threads=1)
else:
    rho, gamma = np.full(m, 0.3), np.zeros((m, 0))
    run = lambda i: oa.rollout(A - 1 / b, B, rho, gamma, i, np.ones(i.shape[:2]),
                               np.zeros((i.shape[1], 0)), L0, "log", None, None, final=True,
                               threads=1)
run(small)  # loads the kernel
print("go", flush=True)
t0 = time.perf_counter()
try:
    run(idx)
except KeyboardInterrupt:
    print(f"interrupted after {time.perf_counter() - t0:.1f} s", flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


@needs_numba
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "optimizer-aware"])
def test_ctrl_c_interrupts_a_long_compiled_rollout_promptly(kind):
    """A SIGINT 1 s into a ~40 s compiled rollout raises KeyboardInterrupt within a kernel
    call's time (~0.5 s; 6 s allowed on a loaded machine): the rollout runs as many short
    kernel calls with Python between them (one call would hold the interrupt to the end)."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-c", _LONG_ROLLOUT, kind],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as a terminal delivers it, whatever the suite inherited (a background job
        # starts with SIGINT ignored, and so would every child)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "go", p.stderr.read()
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        t0 = time.perf_counter()
        out, err = p.communicate(timeout=120)
        took = time.perf_counter() - t0
    finally:
        p.kill()
    assert p.returncode == 130, (out, err)
    assert "interrupted" in out and "finished" not in out
    assert took < 6.0, (took, out)

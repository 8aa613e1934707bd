"""The optimizer-aware numpy rollout (model.optimizer_aware.rollout without the compiled kernel)
equals, bit for bit, the loop it replaced (tests/_oa_rollout_reference.py, main 4213dd6)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _oa_rollout_reference import rollout_reference
from hypothesis import given, settings
from hypothesis import strategies as st

import simfluence_cli.model.optimizer_aware as oa
import simfluence_cli.model.rollout as ro

TRANSFORMS = ["identity", "log", "logodds"]


def assert_bitwise(got: np.ndarray, want: np.ndarray) -> None:
    """Same shape and the same bits (NaN: NaN, whatever its payload)."""
    assert got.shape == want.shape and got.dtype == want.dtype == np.float64
    same = (got.view(np.uint64) == want.view(np.uint64)) | (np.isnan(got) & np.isnan(want))
    bad = np.argwhere(~same)
    assert same.all(), f"{len(bad)} differ, first at {bad[0]}: {got[tuple(bad[0])]!r} vs " + (
        f"{want[tuple(bad[0])]!r}"
    )


def numpy_rollout(*args, chunk_cols=None, gather_bytes=None, **kw):
    """oa.rollout on the numpy path; ``chunk_cols`` / ``gather_bytes`` force narrower column
    chunks (1 = one column each) and smaller blocks of steps (1 = one step each)."""
    saved = (os.environ.get(ro.KERNELS_ENV), ro.ROLLOUT_COLS, oa.OA_CHUNK_CELLS, oa.OA_GATHER_BYTES)
    os.environ[ro.KERNELS_ENV] = "numpy"
    try:
        if chunk_cols is not None:
            ro.ROLLOUT_COLS, oa.OA_CHUNK_CELLS = chunk_cols, 1
        if gather_bytes is not None:
            oa.OA_GATHER_BYTES = gather_bytes
        return oa.rollout(*args, **kw)
    finally:
        env, ro.ROLLOUT_COLS, oa.OA_CHUNK_CELLS, oa.OA_GATHER_BYTES = saved
        if env is None:
            del os.environ[ro.KERNELS_ENV]
        else:
            os.environ[ro.KERNELS_ENV] = env


@st.composite
def problems(draw):
    """(args, kwargs, layout) of a rollout: padding slots, all-padding steps, shorter curricula,
    indices of the extra trailing (zero) row, clamps that act, values that overflow the
    unclipped clamp, zero step weights, AR memory, a drift basis, a starting state."""
    n = draw(st.integers(1, 6))
    extra = draw(st.booleans())  # a and B with an extra trailing row (the "neutral" one)
    rows = n + extra
    m = draw(st.integers(1, 7))
    C = draw(st.integers(1, 5))
    T = draw(st.integers(0, 14))
    b = draw(st.integers(0, 4))
    H = draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    tr = draw(st.sampled_from(TRANSFORMS))
    clip = draw(st.sampled_from(["none", "wide", "tight", "zero"]))
    scale = draw(st.sampled_from([0.1, 3.0, 1e4]))  # 1e4: unclipped rollouts saturate
    rng = np.random.default_rng(seed)
    a = rng.normal(-0.05, 0.1, (rows, m)) * scale
    B = rng.normal(0.0, 0.1, (rows, m)) * scale
    a[rng.random((rows, m)) < 0.15] = -0.0
    B[rng.random((rows, m)) < 0.15] = 0.0
    if extra:
        a[-1], B[-1] = 0.0, 0.0
    rho = rng.uniform(-1.2, 1.2, m) * (rng.random() < 0.8)  # sometimes no AR (all 0)
    gamma = rng.normal(0.0, 0.05, (m, H))
    phi = oa.hat_basis(np.arange(1, T + 1), H, max(T, 2))
    idx = rng.integers(-1, rows + 1, (C, T, b))  # -1 = padding, rows = the zero row
    if T and b:
        idx[rng.integers(0, C), rng.integers(0, T)] = -1  # an all-padding step
        if draw(st.booleans()):
            idx[:, rng.integers(0, T)] = -1  # a step every curriculum pads
        if C > 1:
            idx[-1, T // 2 :] = -1  # a shorter curriculum
    sizes = (idx >= 0).sum(axis=2)
    w = np.where(sizes > 0, rng.uniform(0.0, 2.0, (C, T)), 0.0)
    L0 = rng.uniform(0.0, 3.0, (C, m) if rng.random() < 0.5 else (m,))
    lo = hi = None
    if clip == "wide":
        lo, hi = np.full(m, 0.05), np.full(m, 50.0)
    elif clip == "tight":
        lo, hi = rng.uniform(0.3, 1.2, m), rng.uniform(1.5, 2.5, m)
    elif clip == "zero":  # the clamp at 0 (log: at _LMIN)
        lo, hi = np.zeros(m), np.full(m, 2.0)
    kw = {"final": draw(st.booleans())}
    if draw(st.booleans()):
        y0 = oa.forward(np.broadcast_to(L0, (C, m)), tr) + rng.normal(0, 0.1, (C, m))
        kw["start"] = (y0, rng.normal(0, 0.05, (C, m)))
    layout = {
        "chunk_cols": draw(st.sampled_from([None, 1, 2, 3])),
        "gather_bytes": draw(st.sampled_from([None, 1, 8 * C * 2, 8 * C * m * 3])),
        "threads": draw(st.sampled_from([None, 1, 2])),
    }
    args = (a, B, rho, gamma, idx, w, phi, L0, tr, lo, hi)
    return args, kw, layout


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(problems())
def test_numpy_rollout_equals_the_former_loop_bitwise(p):
    args, kw, layout = p
    want = rollout_reference(*args, **kw)
    got = numpy_rollout(*args, **kw, **layout)
    assert_bitwise(got, want)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("final", [False, True])
def test_numpy_rollout_equals_the_former_loop_on_a_cv_sized_problem(transform, final):
    """A rollout as the default fit's CV runs them (16 runs x 60 steps x batch 4, 300 columns:
    one column chunk, several blocks of steps), and one in narrow chunks on two threads."""
    rng = np.random.default_rng(3)
    C, T, b, n, m = 16, 60, 4, 50, 300
    a, B = rng.normal(-0.05, 0.05, (n, m)), rng.normal(0.0, 0.05, (n, m))
    idx = rng.integers(0, n, (C, T, b))
    idx[3, 40:] = -1
    idx[:, 7, 2:] = -1
    w = np.where((idx >= 0).any(axis=2), rng.uniform(0.5, 1.5, (C, T)), 0.0)
    phi = oa.hat_basis(np.arange(1, T + 1), 8, T)
    args = (a, B, rng.uniform(0, 0.6, m), rng.normal(0, 1e-3, (m, 8)), idx, w, phi)
    args += (rng.uniform(0.2, 2.0, (C, m)), transform, np.full(m, 0.3), np.full(m, 1.5))
    want = rollout_reference(*args, final=final)
    assert_bitwise(numpy_rollout(*args, final=final), want)
    got = numpy_rollout(*args, final=final, chunk_cols=16, gather_bytes=8 * C * 16 * 7, threads=2)
    assert_bitwise(got, want)
    traj = rollout_reference(*args)
    assert np.isfinite(traj).all() and (traj == 0.3).any() and (traj == 1.5).any()  # clamps act


@pytest.mark.parametrize("m", [1, 2, 3, 37, 300])
@pytest.mark.parametrize("L0, lo, hi", [(0.0, -0.0, 1.0), (0.0, -1.0, -0.0), (-0.0, 0.0, 1.0)])
@pytest.mark.parametrize("bounds", ["per test", "scalar"])
def test_clamp_ties_of_signed_zeros_as_before(m, L0, lo, hi, bounds):
    """A loss that equals a bound up to the sign of zero: the same bits as np.clip in the former
    loop (its vector loop gives the bound, its scalar loop, taken with one test or scalar
    bounds, keeps the loss), in one chunk and in chunks of one and two columns."""
    C, T = 2, 3
    zeros = np.zeros((1, m))
    idx = np.zeros((C, T, 1), dtype=np.int64)
    args = (zeros, zeros, np.zeros(m), np.zeros((m, 0)), idx, np.ones((C, T)), np.zeros((T, 0)))
    args += (np.full((C, m), L0), "identity")
    clamp = (lo, hi) if bounds == "scalar" else (np.full(m, lo), np.full(m, hi))
    free = rollout_reference(*args, None, None)  # unclamped: 0.0, the tie
    assert (free[:, 1:] == 0).all() and not np.signbit(free[:, 1:]).any()
    for final in (False, True):
        want = rollout_reference(*args, *clamp, final=final)
        for layout in ({}, {"chunk_cols": 1}, {"chunk_cols": 2, "threads": 2}):
            assert_bitwise(numpy_rollout(*args, *clamp, final=final, **layout), want)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_nan_bounds_and_nan_losses_propagate_as_before(transform):
    """A NaN clamp bound gives NaN losses (np.clip's rule); a NaN starting loss stays NaN."""
    rng = np.random.default_rng(0)
    C, T, n, m = 3, 5, 4, 4
    idx = rng.integers(-1, n, (C, T, 2))
    lo, hi = np.array([0.1, np.nan, 0.1, 0.1]), np.array([5.0, 5.0, np.nan, 5.0])
    L0 = np.array([1.0, 1.0, 1.0, np.nan])
    args = (rng.normal(0, 0.1, (n, m)), rng.normal(0, 0.1, (n, m)), np.full(m, 0.3))
    args += (np.zeros((m, 0)), idx, np.ones((C, T)), np.zeros((T, 0)), L0, transform, lo, hi)
    want = rollout_reference(*args)
    assert np.isnan(want[:, 1:, 1:]).all() and np.isfinite(want[:, 1:, 0]).all()
    assert_bitwise(numpy_rollout(*args), want)


def test_out_of_range_indices_raise_index_error_as_before():
    rng = np.random.default_rng(0)
    n, m = 3, 2
    args = (rng.normal(size=(n, m)), rng.normal(size=(n, m)), np.zeros(m), np.zeros((m, 0)))
    for bad in (n + 1, -(n + 2)):
        idx = np.zeros((1, 2, 2), dtype=np.int64)
        idx[0, 1, 1] = bad
        rest = (idx, np.ones((1, 2)), np.zeros((2, 0)), np.ones(m), "identity", None, None)
        with pytest.raises(IndexError):
            rollout_reference(*args, *rest)
        with pytest.raises(IndexError):
            numpy_rollout(*args, *rest)


def test_diverging_rollout_on_threads_warns_nothing():
    """An unclipped rollout that overflows, in column chunks on two threads: no RuntimeWarning
    (numpy's error state is per thread) and the losses saturate as before."""
    import warnings

    rng = np.random.default_rng(0)
    n, m, C, T = 5, 6, 3, 30
    args = (rng.normal(0, 1e305, (n, m)), rng.normal(0, 1e305, (n, m)), np.full(m, 1.5))
    args += (np.zeros((m, 0)), rng.integers(0, n, (C, T, 2)), np.ones((C, T)), np.zeros((T, 0)))
    args += (np.ones(m), "log", None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = numpy_rollout(*args, chunk_cols=1, threads=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(over="warn"):  # what the threads would do
            _ = args[0] * 1e10
    assert len(caught) == 1  # such parameters times a loss do overflow
    want = rollout_reference(*args)
    assert (want[:, -1] > 1e300).any() and (want[:, -1] == 0).any()  # saturated both ways
    assert_bitwise(got, want)

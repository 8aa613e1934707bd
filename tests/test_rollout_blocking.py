"""The Linear numpy rollout's gathers: cache-blocked column chunks (narrower only for big tables
and many curricula, bit-identical to the unblocked rollout), and the index table checked once
(then gathered with np.take's unbuffered mode="wrap": the same rows as Python indexing)."""

import numpy as np
import pytest

import simfluence_cli.model.rollout as ro


def test_chunk_cols_narrows_only_for_large_tables_and_many_curricula():
    assert ro.chunk_cols(300, 1000) == ro.ROLLOUT_COLS  # small table: stays in cache anyway
    assert ro.chunk_cols(20_000, 1000) == ro.BLOCK_COLS  # 41 MB at 128 columns
    assert ro.chunk_cols(20_000, 8) == ro.ROLLOUT_COLS  # few curricula: call overhead wins
    assert ro.chunk_cols(20_000, 1000, itemsize=4) <= ro.chunk_cols(20_000, 1000, itemsize=8) * 2


def test_blocked_rollout_is_bit_identical(monkeypatch):
    rng = np.random.default_rng(7)
    n, m, C, T, b = 50, 70, 64, 12, 3
    A = rng.uniform(0.3, 0.36, (n, m))
    B = rng.normal(0, 0.05, (n, m))
    idx = rng.integers(-1, n, (C, T, b))
    L0 = rng.uniform(1, 3, (C, m))
    lo, hi = np.full(m, 0.5), np.full(m, 2.5)
    for precision in ("float64", "float32"):
        monkeypatch.setattr(ro, "TABLE_CACHE_BYTES", 1)  # force the narrowest chunks
        assert ro.chunk_cols(n, C) == ro.BLOCK_COLS < m
        blocked = ro.rollout(A, B, idx, L0, "linear", lo, hi, final=True, precision=precision)
        monkeypatch.setattr(ro, "TABLE_CACHE_BYTES", 2**40)
        assert ro.chunk_cols(n, C) == ro.ROLLOUT_COLS
        plain = ro.rollout(A, B, idx, L0, "linear", lo, hi, final=True, precision=precision)
        np.testing.assert_array_equal(blocked, plain)
        assert not np.array_equal(plain[:, 0], plain[:, 1])  # columns do differ


def test_float32_path_stays_within_1e_7_of_float64():
    """float32 gathers of centred A: the deviation from float64 (max |diff| / max |float64|,
    as the benchmarks report it) is below 1e-7, also with uneven batches and all-padding
    steps (uncentred float32 sums: 3.4e-7 on this problem)."""
    rng = np.random.default_rng(8)
    n, m, C, T, b = 400, 20, 30, 300, 8
    A = rng.uniform(0.11, 0.14, (n, m))  # alpha ~ 1: losses decay slowly, rounding adds up
    B = rng.normal(-0.002, 0.01, (n, m))
    idx = rng.integers(0, n, (C, T, b))
    idx[:, ::7, 5:] = -1  # uneven batch sizes
    idx[0, 10] = -1  # an all-padding step
    L0 = rng.uniform(1, 3, (C, m))
    f64 = ro.rollout(A, B, idx, L0, "linear", None, None, final=True)
    f32 = ro.rollout(A, B, idx, L0, "linear", None, None, final=True, precision="float32")
    rel = np.max(np.abs(f32 - f64)) / np.max(np.abs(f64))
    assert 0 < rel < 1e-7


def test_indices_read_the_rows_python_indexing_reads_and_out_of_range_raises():
    rng = np.random.default_rng(3)
    n, m = 5, 4
    A, B = rng.uniform(0.2, 0.3, (n, m)), rng.normal(0, 0.1, (n, m))
    L0 = rng.uniform(1, 2, (2, m))
    idx = rng.integers(0, n, (2, 6, 3))
    idx[0, 2, 1] = -1  # padding: the zero row
    idx[1, 4, :] = -1  # an all-padding step: the loss stays
    negative = idx.copy()
    negative[0, 3, 0], negative[1, 1, 2] = -2, -(n + 1)  # rows n - 1 and 0 of the n + 1 rows
    positive = idx.copy()
    positive[0, 3, 0], positive[1, 1, 2] = n - 1, 0
    want = ro.rollout(A, B, positive, L0, "linear", None, None, threads=1)
    got = ro.rollout(A, B, negative, L0, "linear", None, None, threads=1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want[1, 5], want[1, 4])  # the all-padding step
    for bad in (n + 1, -(n + 2)):
        wrong = idx.copy()
        wrong[1, 5, 0] = bad
        with pytest.raises(IndexError):
            ro.rollout(A, B, wrong, L0, "linear", None, None, threads=1)

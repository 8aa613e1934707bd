"""Same inputs, same bytes: results that must not depend on thread counts, paths or run order."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TWO_CPUS = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for a 2-thread BLAS"
)


def _run_py(code: str, **env) -> str:
    """stdout of ``python -c code`` in a fresh process with extra environment variables."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    out = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True
    )
    return out.stdout


SCALE_FIT = """
import numpy as np
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.external_scores import fit_scale
runs, A, B = make_runs(60, 50, 6, 400, 4, seed=3)
S = np.random.default_rng(0).normal(size=(len(runs.example_ids), len(runs.test_ids)))
res = fit_scale(S, runs.example_ids, runs.test_ids, runs)
print(repr(res["scale"]), repr(res["r2"]))
"""


@TWO_CPUS
def test_score_scale_does_not_depend_on_blas_threads():
    """`import-scores --scale fit`: one BLAS thread or two give the same scale to the bit (the
    sums over > 10,000 observations per run were BLAS dot products, split across threads)."""
    one = _run_py(SCALE_FIT, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    two = _run_py(SCALE_FIT, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    assert one == two

"""One BLAS thread for the ``simfluence`` command unless the user chose a thread count.

The commands' dense products are small (design's move scores: steps x tests x examples, the
optimizer-aware basis Gram, rollout drifts): a second OpenBLAS thread adds little work but spins
while waiting for the next call, which costs CPU on a shared machine (``design`` on the
optimizer-aware demo model: ~2.2 -> ~1.4 s CPU, the same output). The thread count must be set
before numpy loads its BLAS, so this runs first at the CLI's start; the variables are left
alone when the user set any of them (e.g. ``OPENBLAS_NUM_THREADS=2 simfluence design ...``),
and when numpy is already imported (the Python API never changes them).
"""

from __future__ import annotations

import os
import sys

#: variables that choose a BLAS library's thread count; any of them set = the user's choice
THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
#: what is set: numpy and scipy wheels bundle OpenBLAS; MKL and Accelerate builds read these
SET_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def limit_blas_threads() -> bool:
    """Set one BLAS thread (``SET_VARS`` = 1); True when set, False when the user chose a count
    or numpy is already loaded (too late to take effect)."""
    if "numpy" in sys.modules or any(v in os.environ for v in THREAD_VARS):
        return False
    for v in SET_VARS:
        os.environ[v] = "1"
    return True

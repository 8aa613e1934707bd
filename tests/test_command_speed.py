"""Issue 15, item 1: commands skip imports they do not need, with results unchanged."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import rankdata

from simfluence_cli.analysis.metrics import average_ranks


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + f"\nimport sys; print(*[m for m in {modules!r} if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out


@settings(max_examples=200)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(1, 12)),
        # few distinct values, so ties (and -0.0 next to 0.0) are common
        elements=st.sampled_from([-2.5, -0.0, 0.0, 1.0, 1e-300, 3.0, 7.25, 1e300]),
    )
)
def test_average_ranks_equal_scipy_rankdata_bitwise(X):
    np.testing.assert_array_equal(average_ranks(X), rankdata(X, axis=1))


@given(
    arrays(
        np.float64, st.tuples(st.integers(1, 4), st.integers(1, 30)), elements=st.floats(-1e6, 1e6)
    )
)
def test_average_ranks_equal_scipy_rankdata_on_floats(X):
    np.testing.assert_array_equal(average_ranks(X), rankdata(X, axis=1))


def test_average_ranks_hand_case():
    np.testing.assert_array_equal(
        average_ranks(np.array([[3.0, 1.0, 3.0, 2.0]])), [[3.5, 1, 3.5, 2]]
    )


def test_eval_modules_do_not_import_scipy_stats():
    code = "import simfluence_cli.analysis.evaluation, simfluence_cli.analysis.metrics"
    assert _loaded_after(code, ("scipy.stats",)) == []


def test_loading_a_model_does_not_import_scipy():
    # the normal equations (scipy.sparse) and the dense solver (scipy.linalg) load when fitting
    code = "import simfluence_cli.store.saved_models, simfluence_cli.model.simulator"
    assert _loaded_after(code, ("scipy", "scipy.sparse", "scipy.linalg")) == []

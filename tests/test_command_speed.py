"""Issue 15, item 1: commands skip imports they do not need, with results unchanged."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from simfluence_cli.analysis.metrics import average_ranks


def rankdata(X, axis):
    """scipy's ranks, the reference (imported here: scipy.stats costs ~1 s at collection)."""
    from scipy.stats import rankdata as reference

    return reference(X, axis=axis)


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_loading_a_model_does_not_import_scipy():
    # the normal equations (scipy.sparse) and the dense solver (scipy.linalg) load when fitting
    code = "import simfluence_cli.store.saved_models, simfluence_cli.model.simulator"
    assert _loaded_after(code, ("scipy", "scipy.sparse", "scipy.linalg")) == []


def _small_store(tmp_path):
    from simfluence_cli.io.synthetic import make_runs
    from simfluence_cli.model.simulator import Simulator
    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import save_model

    runs, _, _ = make_runs(30, 4, 3, 20, 2, seed=0)
    sim = Simulator(l2=1.0).fit(runs)
    st = RunStore(tmp_path / "s", create=True)
    save_model(st, "m", sim, runs=sim.run_ids_, data_hash="x")
    return st, sim


def test_read_parquet_equals_read_table(tmp_path):
    import pyarrow.parquet as pq

    from simfluence_cli.io._arrow import read_parquet

    st, _ = _small_store(tmp_path)
    files = sorted((st.path / "models").rglob("*.parquet"))
    assert files
    for f in files:
        t = read_parquet(f)
        assert t.equals(pq.read_table(f)) and t.schema.metadata == pq.read_table(f).schema.metadata
        assert read_parquet(f, columns=t.column_names[:1]).equals(
            pq.read_table(f, columns=t.column_names[:1])
        )


@pytest.mark.slow
def test_loading_a_model_imports_neither_pandas_nor_pyarrow_dataset(tmp_path):
    st, sim = _small_store(tmp_path)
    code = (
        "import numpy as np\n"
        "from simfluence_cli.store.run_store import RunStore\n"
        "from simfluence_cli.store.saved_models import load_model\n"
        f"m = load_model(RunStore({str(st.path)!r}, create=True), 'm')\n"
        f"m2 = load_model(RunStore({str(st.path)!r}, create=True), 'm', tests=['t1', 't0'])\n"
        "np.save(" + repr(str(tmp_path / "A.npy")) + ", m.A_)\n"
        "np.save(" + repr(str(tmp_path / "B2.npy")) + ", m2.B_)"
    )
    assert _loaded_after(code, ("pandas", "pyarrow.dataset", "scipy")) == []
    np.testing.assert_array_equal(np.load(tmp_path / "A.npy"), sim.A_)
    cols = [list(sim.test_ids_).index(t) for t in ("t1", "t0")]
    np.testing.assert_array_equal(np.load(tmp_path / "B2.npy"), sim.B_[:, cols])


@given(
    arrays(
        st.sampled_from([np.float64, np.int64, np.int32]),
        st.integers(0, 20),
        elements=st.integers(-1000, 1000),
    ),
    st.lists(st.text(max_size=6), max_size=8),
)
def test_arrow_builders_equal_pa_array(a, strs):
    import pyarrow as pa

    from simfluence_cli.io._arrow import arrow_numbers, arrow_strings

    assert arrow_numbers(a).equals(pa.array(a))
    assert arrow_numbers(a[::2]).equals(pa.array(a[::2]))
    assert arrow_strings(strs).equals(pa.array(strs, pa.string()))


@pytest.mark.slow
def test_fit_and_save_do_not_import_pandas(tmp_path):
    code = (
        "from simfluence_cli.io.synthetic import make_runs\n"
        "from simfluence_cli.model.simulator import Simulator\n"
        "from simfluence_cli.store.run_store import RunStore\n"
        "from simfluence_cli.store.saved_models import save_model\n"
        "runs, _, _ = make_runs(30, 4, 3, 20, 2, seed=0)\n"
        f"st = RunStore({str(tmp_path / 's')!r}, create=True)\n"
        "for m in ('linear', 'additive'):\n"
        "    sim = Simulator(l2=1.0, method=m).fit(runs)\n"
        "    save_model(st, m, sim, runs=sim.run_ids_, data_hash='x')"
    )
    assert _loaded_after(code, ("pandas", "pyarrow.dataset", "pyarrow.compute")) == []


@pytest.mark.slow
def test_verify_and_batch_sizes_import_neither_pandas_nor_pyarrow_compute(tmp_path):
    from simfluence_cli.io.synthetic import make_runs
    from simfluence_cli.model.simulator import Simulator
    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import save_model

    runs, _, _ = make_runs(10, 4, 4, 8, 3, seed=5, noise=0.01)
    st = RunStore(tmp_path / "s", create=True)
    st.add_runset(runs, tags=["fit"])
    ids = st.select("fit")
    for m in ("linear", "additive"):
        sim = Simulator(l2=1.0, method=m).fit(st.load(ids))
        with st.write_lock():
            save_model(st, m, sim, runs=ids, data_hash=st.data_hash(ids), selector="fit")
    code = (
        "from simfluence_cli.store.integrity import verify_store\n"
        f"rep = verify_store({str(st.path)!r})\n"
        "assert rep.files_checked > 0 and rep.models_checked == 2 and not rep.findings, rep.findings\n"
        "from simfluence_cli.store.run_store import RunStore\n"
        "from simfluence_cli.store.shapes import stored_batch_sizes\n"
        f"sizes = stored_batch_sizes(RunStore({str(st.path)!r}), {list(ids)!r})\n"
        "assert len(sizes) == 4 and all((s == 3).all() for s in sizes), sizes"
    )
    assert _loaded_after(code, ("pandas", "pyarrow.compute", "pyarrow.dataset")) == []


def test_arrow_strings_utf8_and_empty():
    import pyarrow as pa

    from simfluence_cli.io._arrow import arrow_strings

    out = arrow_strings(["é", "", "abc"])
    assert out.type == pa.string() and out.to_pylist() == ["é", "", "abc"]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([1, 3, 7]), st.integers(1, 5))
def test_interval_sums_equal_the_sparse_product_bitwise(seed, log_every, batch):
    import scipy.sparse as sp

    from simfluence_cli.io.synthetic import make_runs
    from simfluence_cli.model.external_scores import _interval_sums

    runs, _, _ = make_runs(12, 3, 2, 20, batch, seed=seed, log_every=log_every)
    S = np.random.default_rng(seed).standard_normal((runs.n_examples, 5))
    for run in runs.runs:
        steps = run.step_of_entry()
        k = np.searchsorted(run.loss_steps, steps, side="left")
        keep = k < len(run.loss_steps)
        K = len(run.loss_steps)
        cnt = sp.csr_matrix(
            (np.ones(int(keep.sum())), (k[keep] - 1, run.batch_idx[keep])),
            shape=(K - 1, S.shape[0]),
        )
        np.testing.assert_array_equal(_interval_sums(run, S), np.asarray(cnt @ S))


def test_scores_modules_do_not_import_scipy():
    code = "import simfluence_cli.model.external_scores, simfluence_cli.io.score_files"
    assert _loaded_after(code, ("scipy",)) == []


def _encode_loop(sim, curricula, unseen):
    """Simulator.encode as it was (a loop per batch): the reference for the vectorised one."""
    from simfluence_cli.model.simulator import map_examples
    from simfluence_cli.runs import stack_index

    vocab = sorted({str(e) for cur in curricula for batch in cur for e in batch})
    code = dict(zip(vocab, map_examples(sim.example_ids_, sim.example_counts_, vocab, unseen)))
    mats = []
    for cur in curricula:
        m = np.full((len(cur), max((len(b) for b in cur), default=1)), -1, dtype=np.int64)
        for t, batch in enumerate(cur):
            codes = [c for c in (int(code[str(e)]) for e in batch) if c != -1]
            m[t, : len(codes)] = codes
        mats.append(m)
    b = max((len(batch) for c in curricula for batch in c), default=1)
    return stack_index(mats, width=b)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.lists(st.sampled_from(["e0", "e1", "e3", "e5", "x", "y"]), max_size=4), max_size=5
        ),
        max_size=4,
    ),
    st.sampled_from(["skip", "prior"]),
)
def test_encode_equals_the_batch_loop(curricula, unseen):
    from simfluence_cli.io.synthetic import make_runs
    from simfluence_cli.model.simulator import Simulator

    global _ENC_SIM
    if _ENC_SIM is None:
        runs, _, _ = make_runs(8, 2, 2, 10, 2, seed=1)
        _ENC_SIM = Simulator(l2=1.0).fit(runs)
        _ENC_SIM.example_counts_[3] = 0  # e3 never trained on: "unseen" like x and y
    got = _ENC_SIM.encode(curricula, unseen=unseen)
    want = _encode_loop(_ENC_SIM, curricula, unseen)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


_ENC_SIM = None


_IDS = ["a", "b", "c", "d", "e"]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(_IDS), min_size=1, max_size=4), min_size=1, max_size=6),
    st.lists(st.sampled_from(_IDS), min_size=1, max_size=3),
    st.none() | st.lists(st.sampled_from(_IDS), min_size=1, max_size=4),
    st.sampled_from(["keep-steps", "repack", "shrink", "neutral"]),
)
def test_apply_edits_fast_filter_equals_the_general_loop(batches, drop, only, mode):
    from simfluence_cli.analysis.whatif import Edits, apply_edits
    from simfluence_cli.errors import SelectionError

    def edited(**extra):
        try:
            return apply_edits(batches, Edits(drop=drop, only=only, mode=mode, **extra))
        except SelectionError:
            return "empty"

    # repeating an ID that is not in the curriculum changes nothing but takes the general loop
    assert edited() == edited(repeat=["absent"])

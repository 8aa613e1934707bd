"""Issue 15, item 1 (second pass): cheaper command paths, results unchanged."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simfluence_cli.io.score_files import first_seen_codes, read_scores


@given(st.lists(st.sampled_from(["a", "b", "t10", "t2", "", "é", "a "]), max_size=40))
def test_first_seen_codes_equal_dictionary_encode(values):
    col = pa.array(values, pa.string())
    d = col.dictionary_encode()
    uniq, codes = first_seen_codes(col)
    assert list(uniq) == d.dictionary.to_pylist()
    np.testing.assert_array_equal(codes, np.asarray(d.indices.to_pylist(), dtype=np.int64))
    assert codes.dtype == np.int64


def test_reading_a_csv_score_table_does_not_import_pyarrow_compute(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("test_id,example_id,score\nt1,e2,0.5\nt0,e2,-1\nt1,e1,2e-3\n")
    code = (
        "import sys\nfrom simfluence_cli.io.score_files import read_scores\n"
        f"t = read_scores({str(p)!r})\n"
        "print(list(t.test_ids), list(t.example_ids), t.S.tolist(), 'pyarrow.compute' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("] ")[-1].strip() == "False", out.stdout
    t = read_scores(p)  # sorted ids, scores in place, absent pairs 0
    assert list(t.test_ids) == ["t0", "t1"] and list(t.example_ids) == ["e1", "e2"]
    np.testing.assert_array_equal(t.S, [[0.0, 2e-3], [-1.0, 0.5]])


def test_parquet_score_table_of_other_types_is_still_cast(tmp_path):
    import pyarrow.parquet as pq

    p = tmp_path / "s.parquet"
    t = pa.table({"test_id": pa.array([3, 1], pa.int64()), "example_id": ["x", "y"],
                  "score": pa.array([1.5, -2], pa.float32())})  # fmt: skip
    pq.write_table(t, p)
    s = read_scores(p)
    assert list(s.test_ids) == ["1", "3"] and list(s.example_ids) == ["x", "y"]
    np.testing.assert_array_equal(s.S, [[0.0, 1.5], [-2.0, 0.0]])


@given(st.integers(0, 10_000), st.sampled_from(["observed", "none"]))
def test_fold_bounds_equal_the_stacked_losses_range(seed, clip):
    import warnings

    from simfluence_cli.model.simulator import Simulator
    from simfluence_cli.runs import Run

    rng = np.random.default_rng(seed)
    runs = []
    for r in range(4):
        L = rng.uniform(0, 3, (rng.integers(2, 6), 5))
        L[rng.random(L.shape) < 0.3] = np.nan  # tests absent from some steps / whole runs
        L[:, r % 5] = np.nan
        runs.append(Run(f"r{r}", np.array([0, 1]), np.array([0]), np.arange(len(L)), L))
    sim = Simulator(clip=clip)
    ranges = None if clip == "none" else {r.run_id: sim._range(r) for r in runs}
    train = [runs[i].run_id for i in sorted(rng.choice(4, 3, replace=False))]
    lo, hi = sim._fold_bounds(ranges, train)
    if clip == "none":
        assert lo is None and hi is None
        return
    stacked = np.vstack([r.losses for r in runs if r.run_id in train])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = sim._widen(np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0))
    np.testing.assert_array_equal(lo, want[0])
    np.testing.assert_array_equal(hi, want[1])


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=0, max_size=30), st.integers(1, 3))
def test_present_values_are_the_distinct_values(values, chunks):
    from simfluence_cli.store.run_check import _present_values

    parts = [values[k::chunks] for k in range(chunks)]
    col = pa.chunked_array([pa.array(p, pa.string()) for p in parts], pa.string())
    assert _present_values(col) == set(values)
    dcol = pa.chunked_array([pa.array(p, pa.string()).dictionary_encode() for p in parts])
    assert _present_values(dcol) == set(values)


@given(st.lists(st.integers(0, 6), max_size=40), st.booleans())
def test_unique_inverse_equals_np_unique(values, presort):
    from simfluence_cli.store.run_store import unique_inverse

    a = np.asarray(sorted(values) if presort else values, dtype=np.int64)
    u, inv = unique_inverse(a)
    wu, winv = np.unique(a, return_inverse=True)
    np.testing.assert_array_equal(u, wu)
    np.testing.assert_array_equal(inv, winv)
    assert u.dtype == wu.dtype and inv.dtype == winv.dtype


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    code += f"\nimport sys; print(*[m for m in {modules!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.slow
def test_loading_model_columns_and_store_info_do_not_import_numpy_ma(tmp_path):
    # numpy 2.4's np.unique(x) imports numpy.ma (~0.015 s) to check for a masked array
    from simfluence_cli.io.synthetic import make_runs
    from simfluence_cli.model.simulator import Simulator
    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import save_model

    runs, _, _ = make_runs(30, 4, 3, 20, 2, seed=0)
    sim = Simulator(l2=1.0).fit(runs)
    store = RunStore(tmp_path / "s", create=True)
    store.add_runset(runs)
    save_model(store, "m", sim, runs=sim.run_ids_, data_hash="x")
    code = (
        "from simfluence_cli.store.run_store import RunStore\n"
        "from simfluence_cli.store.saved_models import load_model\n"
        f"st = RunStore({str(store.path)!r})\n"
        "m = load_model(st, 'm', tests=['t1', 't0'])\n"
        "assert st.info()['test_examples'] == 4\n"
    )
    assert _loaded_after(code, ("numpy.ma",)) == []


def test_solver_help_and_docs_state_the_auto_threshold():
    from pathlib import Path

    from typer.testing import CliRunner

    from simfluence_cli.cli import app
    from simfluence_cli.model.solvers import CV_TOL, DIRECT_MAX_PARAMS

    out = " ".join(CliRunner().invoke(app, ["fit", "--help"]).output.split())
    assert f"auto: exact dense solve when a test example has <= {DIRECT_MAX_PARAMS} " in out
    docs = Path(__file__).resolve().parents[1] / "docs"
    assert f"direct` for P <= {DIRECT_MAX_PARAMS}," in (docs / "scaling.md").read_text()
    assert (
        f"`{CV_TOL:.0e}`, they only rank penalties".replace("e-0", "e-")
        in (docs / "scaling.md").read_text()
    )
    assert f"more than {DIRECT_MAX_PARAMS} parameters" in (docs / "numerics.md").read_text()


_MAPPED = """
import ctypes, sys
import numpy as np
from simfluence_cli.cli._malloc import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tune" else False
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
x = np.ones(2 << 20)  # one 16 MiB block
print(tuned, libc.mallinfo2().hblkhd >> 20)  # MiB held in separate mmap()ed blocks
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_malloc_keeps_multi_mb_blocks_on_the_heap():
    """With the CLI's thresholds a 16 MiB block comes from the heap (reused after free, no
    fresh page faults); glibc's default maps it separately. Read from mallinfo2, not timed."""

    def mapped(mode, env=None):
        out = subprocess.run(
            [sys.executable, "-c", _MAPPED, mode], capture_output=True, text=True, env=env,
        )  # fmt: skip
        if out.returncode != 0 and "mallinfo2" in out.stderr:
            pytest.skip("no glibc >= 2.33")
        assert out.returncode == 0, out.stderr
        flag, mib = out.stdout.split()
        return flag, int(mib)

    tuned, on_maps = mapped("tune")
    if tuned != "True":
        pytest.skip("not glibc")
    assert on_maps == 0
    assert mapped("plain") == ("False", 16)
    assert mapped("tune", env={**os.environ, "SIMFLUENCE_MALLOC": "default"}) == ("False", 16)

"""Fuzzing ingest and simulate with malformed inputs (hypothesis).

Laws, for every generated input:
- no traceback: the CLI only ever ends with SystemExit, the library only raises SimfluenceError;
- the exit code is 0 (the input happened to be valid) or 1; on 1, stderr is exactly one line
  starting with ``error:`` and the store is byte-for-byte unchanged (every file hashed); a
  failed ingest into a new store path leaves no directory behind;
- inputs that are invalid by construction (NaN/inf/1e400 losses, empty files, binary garbage,
  wrong types where a number or ID must be) always exit 1;
- a successful ingest leaves a store that ``verify`` finds consistent; a successful simulate
  prints only finite losses.

``bench/fuzz_campaign.py`` runs the same checks for thousands of inputs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.errors import SimfluenceError
from simfluence_cli.io.synthetic import make_runs, runs_to_tables, write_jsonl
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.integrity import verify_store
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import save_model

FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)

# --------------------------------------------------------------------------------------------
# fixtures shared with bench/fuzz_campaign.py
# --------------------------------------------------------------------------------------------


def tree_hash(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root."""
    root = Path(root)
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_template(dest: Path) -> Path:
    """A store with two runs (syn-000, syn-001) and a fitted model 'lin'."""
    rs, _, _ = make_runs(8, 3, 2, 6, 2, seed=11, noise=0.01)
    st_ = RunStore(dest, create=True)
    st_.add_runset(rs, tags=["fit"])
    ids = st_.select("all")
    sim = Simulator(l2=1.0).fit(st_.load(ids))
    with st_.write_lock():
        save_model(st_, "lin", sim, runs=ids, data_hash=st_.data_hash(ids), selector="all")
    return dest


_BASE, _, _ = make_runs(6, 3, 1, 4, 2, seed=9)
_BASE.runs[0].run_id = "fz"
_tmp = Path(tempfile.mkdtemp(prefix="fuzzbase"))
BASE_JSONL = write_jsonl(_BASE, _tmp)[0].read_text().splitlines()
_cur_t, _loss_t = runs_to_tables(_BASE)
BASE_CUR = [["run", "step", "example_id"]] + [
    [str(v) for v in r.values()] for r in _cur_t.to_pylist()
]
BASE_LOSS = [["run", "step", "test_id", "loss"]] + [
    [str(v) for v in r.values()] for r in _loss_t.to_pylist()
]
shutil.rmtree(_tmp)

BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


def _json_values():
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=6,
    )


_weird_text = st.text(
    alphabet=st.characters(codec="utf-8"), min_size=0, max_size=10
) | st.sampled_from(
    [
        "",
        " ",
        "\t",
        "a b",
        " e1",
        "e1 ",
        "\u00a0",
        "é",
        "ø\u200b",
        "e1\n",
        "\x00",
        "..",
        "../../x",
        "/abs",
        "a,b",
        '"',
        "\u2028",
    ]
)


@st.composite
def jsonl_input(draw):
    """(kind, file bytes, must_fail) for an encoding-A log named fz.jsonl."""
    lines = [json.loads(x) for x in BASE_JSONL]
    kind = draw(
        st.sampled_from(
            [
                "field",
                "bad_number",
                "huge_number",
                "id",
                "truncate",
                "garbage",
                "binary",
                "empty",
                "lines",
                "enormous",
                "deep",
                "whitespace",
            ]
        )
    )
    must_fail = False
    i = draw(st.integers(0, len(lines) - 1))
    text = None
    if kind == "field":
        key = draw(st.sampled_from(["step", "batch", "loss", "run"]))
        lines[i][key] = draw(_json_values())
    elif kind == "bad_number":
        t = draw(st.sampled_from(sorted(lines[i]["loss"])))
        lines[i]["loss"][t] = "@@BAD@@"
        text = "\n".join(json.dumps(x) for x in lines).replace(
            '"@@BAD@@"', draw(st.sampled_from(BAD_NUMBERS))
        )
        must_fail = True
    elif kind == "huge_number":
        t = draw(st.sampled_from(sorted(lines[i]["loss"])))
        lines[i]["loss"][t] = draw(st.sampled_from([1e308, -1e308, 5e-324, 2**64, -(2**70), 0]))
    elif kind == "id":
        if i > 0 and draw(st.booleans()):
            j = draw(st.integers(0, len(lines[i]["batch"]) - 1))
            lines[i]["batch"][j] = draw(_weird_text)
        else:
            loss = lines[i]["loss"]
            k = draw(st.sampled_from(sorted(loss)))
            loss[draw(_weird_text)] = loss.pop(k)
    elif kind == "lines":
        op = draw(st.sampled_from(["drop", "dup", "swap"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    elif kind == "whitespace":
        text = draw(st.sampled_from(["\n\n", "  \n", "\r\n", "\t"])).join(
            json.dumps(x) for x in lines
        )
    if text is None:
        text = "\n".join(json.dumps(x, ensure_ascii=draw(st.booleans())) for x in lines) + "\n"
    data = text.encode("utf-8", "surrogatepass")
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
        must_fail = len(data) < len(BASE_JSONL[0]) + 1  # step 0 alone (or less) is not a run
    elif kind == "garbage":
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.binary(min_size=1, max_size=16)) + data[pos:]
    elif kind == "binary":
        data = draw(st.binary(min_size=1, max_size=64))
        must_fail = True
    elif kind == "empty":
        data = b""
        must_fail = True
    elif kind == "enormous":
        what = draw(st.sampled_from(["id", "garbage", "batch"]))
        if what == "id":
            lines[1]["batch"][0] = "x" * 300_000
            data = "\n".join(json.dumps(x) for x in lines).encode()
        elif what == "garbage":
            data = data + b"{" * 300_000 + b"\n"
            must_fail = True
        else:
            lines[1]["batch"] = [f"e{k}" for k in range(50_000)]
            data = "\n".join(json.dumps(x) for x in lines).encode()
    elif kind == "deep":
        data = data + b'{"step": 9, "loss": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
        must_fail = True
    return kind, data, must_fail


_cells = st.sampled_from(
    [
        "",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e400",
        "1e308",
        "-1",
        "0",
        "1.5",
        "99999999999999999999999",
        "abc",
        '"',
        '"a,b"',
        " ",
        "\t",
        "e1",
        "fz",
        "\u00e9",
        "0x10",
        "1_000",
        "true",
    ]
) | st.text(max_size=6)


@st.composite
def table_input(draw):
    """(kind, {name: bytes}, must_fail) for encoding B: cur.csv + loss.csv (or .parquet)."""
    cur = [list(r) for r in BASE_CUR]
    loss = [list(r) for r in BASE_LOSS]
    kind = draw(
        st.sampled_from(
            [
                "cell",
                "bad_loss",
                "header",
                "truncate",
                "garbage",
                "empty",
                "raw",
                "parquet_types",
                "extra_column",
                "no_curriculum",
            ]
        )
    )
    must_fail = False
    target = draw(st.sampled_from(["cur", "loss"]))
    tab = cur if target == "cur" else loss
    i = draw(st.integers(1, len(tab) - 1))
    j = draw(st.integers(0, len(tab[0]) - 1))
    if kind == "cell":
        tab[i][j] = draw(_cells)
    elif kind == "bad_loss":
        loss[draw(st.integers(1, len(loss) - 1))][3] = draw(
            st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "Infinity"])
        )
        must_fail = True
    elif kind == "header":
        tab[0][j] = draw(_cells)
    elif kind == "extra_column":
        tab[0].append(draw(st.sampled_from(["score", "label", "run", "loss", ""])))
        for r in tab[1:]:
            r.append("1")
        must_fail = True

    def dump(rows, quote):
        if quote:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            return buf.getvalue().encode("utf-8", "surrogatepass")
        return ("\n".join(",".join(r) for r in rows) + "\n").encode("utf-8", "surrogatepass")

    quote = kind != "raw" and draw(st.booleans())
    files = {"cur.csv": dump(cur, quote), "loss.csv": dump(loss, quote)}
    name = "cur.csv" if target == "cur" else "loss.csv"
    if kind == "truncate":
        data = files[name]
        files[name] = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "garbage":
        data = files[name]
        pos = draw(st.integers(0, len(data)))
        files[name] = data[:pos] + draw(st.binary(min_size=1, max_size=16)) + data[pos:]
    elif kind == "empty":
        files[name] = b""
        must_fail = True
    elif kind == "no_curriculum":
        del files["cur.csv"]
        must_fail = True
    elif kind == "parquet_types":
        col = draw(st.sampled_from(["step_frac", "loss_str", "id_float", "loss_nan", "step_neg"]))
        t = _loss_t
        if col == "step_frac":
            t = t.set_column(1, "step", pa.array(t.column("step").to_numpy() + 0.5))
        elif col == "loss_str":
            t = t.set_column(3, "loss", pa.array([str(v) for v in t.column("loss").to_pylist()]))
        elif col == "id_float":
            t = t.set_column(2, "test_id", pa.array(np.arange(t.num_rows) + 0.5))
        elif col == "loss_nan":
            v = t.column("loss").to_numpy().copy()
            v[draw(st.integers(0, len(v) - 1))] = draw(st.sampled_from([np.nan, np.inf]))
            t = t.set_column(3, "loss", pa.array(v))
        else:
            v = t.column("step").to_numpy().copy()
            v[-1] = -1
            t = t.set_column(1, "step", pa.array(v))
        buf = io.BytesIO()
        pq.write_table(t, buf)
        del files["loss.csv"]
        files["loss.parquet"] = buf.getvalue()
        must_fail = True
    return kind, files, must_fail


@st.composite
def curriculum_input(draw):
    """(kind, curriculum bytes, init-loss CSV bytes or None, must_fail) for `simulate`."""
    ids = [f"e{k}" for k in range(8)]
    kind = draw(
        st.sampled_from(["ids", "unknown", "binary", "empty", "comments", "init_loss", "enormous"])
    )
    must_fail = kind in ("unknown", "binary", "empty")
    tok = st.sampled_from(ids)
    batches = draw(st.lists(st.lists(tok, min_size=1, max_size=4), min_size=1, max_size=8))
    init = None
    if kind == "unknown":
        b = draw(st.integers(0, len(batches) - 1))
        batches[b].append(draw(st.sampled_from(["zzz", "e99", "E1", "é", "e1\u00a0x", "\x00"])))
    sep = draw(st.sampled_from([" ", "\t", "  ", " \u3000 "]))
    text = "\n".join(sep.join(b) for b in batches) + "\n"
    data = text.encode()
    if kind == "binary":
        data = b"\xff\xfe" + draw(st.binary(max_size=32))
    elif kind == "empty":
        data = draw(st.sampled_from([b"", b"\n\n", b"# only a comment\n", b"   \n\t\n"]))
    elif kind == "comments":
        data = ("# header\n" + text.replace("\n", " # trailing\n", 1)).encode()
    elif kind == "enormous":
        data = (" ".join(ids * 20_000) + "\n").encode()
    elif kind == "init_loss":
        vals = draw(
            st.lists(
                st.sampled_from(
                    [
                        "1e308",
                        "1e-308",
                        "0",
                        "2.5",
                        "1e400",
                        "nan",
                        "inf",
                        "-1",
                        "",
                        "x",
                        "1e4",
                        "1e-8",
                    ]
                ),
                min_size=3,
                max_size=3,
            )
        )
        rows = ["test_id,loss"] + [f"t{k},{v}" for k, v in enumerate(vals)]
        init = ("\n".join(rows) + "\n").encode()
        must_fail = any(v in ("1e400", "nan", "inf", "-1", "", "x") for v in vals)
    return kind, data, init, must_fail


# --------------------------------------------------------------------------------------------
# checks (also used by bench/fuzz_campaign.py)
# --------------------------------------------------------------------------------------------


def _cli(args: list[str]):
    r = CliRunner().invoke(app, args)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        tb = "".join(traceback.format_exception(*r.exc_info))
        raise AssertionError(f"uncaught exception for {args}:\n{tb}")
    return r


def _one_line_error(r) -> None:
    assert r.exit_code == 1, (r.exit_code, r.stdout[-500:], r.stderr[-500:])
    lines = r.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[:1000]
    assert "Traceback" not in r.stderr


def check_ingest(
    template: Path, files: dict[str, bytes], must_fail: bool, fresh: bool = False
) -> int:
    """Ingest ``files`` (named explicitly) through the CLI into a copy of ``template``."""
    work = Path(tempfile.mkdtemp(prefix="fz"))
    try:
        store = work / "s"
        if not fresh:
            shutil.copytree(template, store)
        paths = []
        for name, data in files.items():
            (work / name).write_bytes(data)
            paths.append(str(work / name))
        before = tree_hash(store)
        r = _cli(["ingest", *paths, "--store", str(store)])
        assert r.exit_code in (0, 1), (r.exit_code, r.stderr)
        if r.exit_code == 1:
            _one_line_error(r)
            assert tree_hash(store) == before, "a failed ingest changed the store"
            if fresh:
                assert not store.exists(), "a failed ingest left a new store directory behind"
        else:
            assert not must_fail, f"accepted an invalid input: {r.stderr}"
            rep = verify_store(store)
            assert rep.ok, [f.line() for f in rep.findings]
        return r.exit_code
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_ingest_library(template: Path, files: dict[str, bytes], must_fail: bool) -> int:
    """The same through RunStore.ingest: only SimfluenceError, store unchanged on error."""
    work = Path(tempfile.mkdtemp(prefix="fzl"))
    try:
        store = work / "s"
        shutil.copytree(template, store)
        paths = []
        for name, data in files.items():
            (work / name).write_bytes(data)
            paths.append(work / name)
        before = tree_hash(store)
        try:
            RunStore(store).ingest(paths)
        except SimfluenceError as exc:
            assert "\n" not in str(exc), str(exc)
            assert tree_hash(store) == before
            return 1
        assert not must_fail
        assert verify_store(store).ok
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_simulate(template: Path, cur: bytes, init: bytes | None, must_fail: bool) -> int:
    work = Path(tempfile.mkdtemp(prefix="fzs"))
    try:
        (work / "cur.txt").write_bytes(cur)
        before = tree_hash(template)
        args = ["simulate", str(work / "cur.txt"), "--store", str(template), "--format", "csv"]
        if init is not None:
            (work / "init.csv").write_bytes(init)
            args += ["--init-loss", str(work / "init.csv")]
        r = _cli(args)
        assert tree_hash(template) == before, "simulate changed the store"
        assert r.exit_code in (0, 1), (r.exit_code, r.stderr)
        if r.exit_code == 1:
            _one_line_error(r)
        else:
            assert not must_fail, f"accepted an invalid input: {r.stderr}"
            rows = list(csv.reader(io.StringIO(r.stdout)))
            assert rows[0] == ["step", "test_id", "loss"]
            losses = [float(x[2]) for x in rows[1:]]
            assert losses and all(math.isfinite(v) for v in losses)
        return r.exit_code
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template(tmp_path_factory.mktemp("fuzz") / "store")


@pytest.mark.slow
@FUZZ
@given(case=jsonl_input())
def test_fuzz_ingest_jsonl_cli(template, case):
    kind, data, must_fail = case
    check_ingest(template, {"fz.jsonl": data}, must_fail)


@pytest.mark.slow
@FUZZ
@given(case=table_input())
def test_fuzz_ingest_tables_cli(template, case):
    kind, files, must_fail = case
    check_ingest(template, files, must_fail)


@pytest.mark.slow
@settings(FUZZ, max_examples=30)
@given(case=jsonl_input() | table_input().map(lambda c: (c[0], c[1], c[2])))
def test_fuzz_ingest_library(template, case):
    kind, data, must_fail = case
    files = data if isinstance(data, dict) else {"fz.jsonl": data}
    check_ingest_library(template, files, must_fail)


@pytest.mark.slow
@settings(FUZZ, max_examples=25)
@given(case=jsonl_input())
def test_fuzz_ingest_into_new_store_leaves_nothing(template, case):
    kind, data, must_fail = case
    check_ingest(template, {"fz.jsonl": data}, must_fail, fresh=True)


@pytest.mark.slow
@FUZZ
@given(case=curriculum_input())
def test_fuzz_simulate(template, case):
    kind, cur, init, must_fail = case
    check_simulate(template, cur, init, must_fail)


@pytest.mark.sweep
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x02\xff" * 50,
        b"\n\n\n",
        b'{"step": 0, "batch": [], "loss": {"t0": NaN}}\n{"step": 1, "batch": ["e1"]}\n',
        b'{"step": 0, "batch": [], "loss": {"t0": 1e400}}\n{"step": 1, "batch": ["e1"]}\n',
        b'{"step": "0", "batch": [], "loss": {"t0": 1}}\n',
        b"[" * 200_000,
    ],
)
def test_known_bad_jsonl_inputs(template, data):
    assert check_ingest(template, {"fz.jsonl": data}, True) == 1


def test_unicode_and_whitespace_ids_round_trip(template, tmp_path):
    """Valid unicode/whitespace IDs are stored verbatim (not stripped or normalised)."""
    lines = [json.loads(x) for x in BASE_JSONL]
    lines[1]["batch"][0] = " é x\u00a0"
    lines[0]["loss"]["t\u200b"] = 1.0
    (tmp_path / "fz.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    store = tmp_path / "s"
    shutil.copytree(template, store)
    r = _cli(["ingest", str(tmp_path / "fz.jsonl"), "--store", str(store)])
    assert r.exit_code == 0, r.stderr
    rs = RunStore(store).load("fz")
    assert " é x\u00a0" in set(rs.example_ids) and "t\u200b" in set(rs.test_ids)
    assert verify_store(store).ok


@pytest.mark.sweep
@pytest.mark.parametrize(
    "name,mangle",
    [
        ("fz.jsonl.gz", "truncate"),
        ("fz.jsonl.gz", "random"),
        ("cur.csv.gz", "truncate"),
        ("cur.csv.gz", "random"),
        ("fz.parquet", "random"),
        ("fz.parquet", "truncate"),
    ],
)
def test_corrupt_compressed_and_parquet_inputs(template, name, mangle):
    import gzip

    rng = np.random.default_rng(len(name) + len(mangle))
    if name.endswith(".gz"):
        body = (
            "\n".join(BASE_JSONL) if "jsonl" in name else "\n".join(",".join(r) for r in BASE_CUR)
        ).encode()
        data = gzip.compress(body)
    else:
        buf = io.BytesIO()
        pq.write_table(_loss_t, buf)
        data = buf.getvalue()
    data = data[: len(data) // 2] if mangle == "truncate" else rng.bytes(300)
    files = {name: data}
    if name.startswith("cur"):
        files["loss.csv"] = "\n".join(",".join(r) for r in BASE_LOSS).encode()
    assert check_ingest(template, files, True) == 1


@pytest.mark.sweep
@pytest.mark.parametrize("option", ["--tests", "--init-loss"])
@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage", b"t0\n" * 3])
def test_bad_simulate_option_files(template, tmp_path, option, content):
    (tmp_path / "cur.txt").write_text("e0 e1\n")
    (tmp_path / "opt").write_bytes(content)
    arg = f"@{tmp_path / 'opt'}" if option == "--tests" else str(tmp_path / "opt")
    before = tree_hash(template)
    r = _cli(["simulate", str(tmp_path / "cur.txt"), "--store", str(template), option, arg])
    assert tree_hash(template) == before
    if r.exit_code != 0:
        _one_line_error(r)
    else:  # "t0\nt0\nt0" is a valid test list
        assert option == "--tests" and content.startswith(b"t0")

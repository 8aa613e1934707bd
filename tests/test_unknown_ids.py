"""Typos are errors, not zeros: an example ID in no run of the store given to simulate,
whatif (--drop/--only/--repeat/--order/--base) or groups (--group/--groups-from) is an error
listing the unknown IDs and where each came from (one check: store/example_ids.py). IDs that
are in the store but not in the fitting runs stay the --unseen case."""

import dataclasses

import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.runs import RunSet
from simfluence_cli.store.run_store import RunStore


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ids") / "store"
    st = RunStore(path, create=True)
    rs, _, _ = make_runs(6, 2, 3, 10, 2, seed=1)
    st.add_runset(rs, tags=["fit"])
    other, _, _ = make_runs(9, 2, 1, 10, 3, seed=2)  # e6..e8 only here: unseen, not unknown
    runs = [dataclasses.replace(r, run_id=f"other-{k}") for k, r in enumerate(other.runs)]
    st.add_runset(RunSet(other.example_ids, other.test_ids, runs), tags=["other"])
    r = cli("fit", "--store", path, "--runs", "fit", "--l2", "0.1", "-n", "m")
    assert r.exit_code == 0, r.stderr
    return path


def _unknown(r, *expected):
    assert r.exit_code == 1, (r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "unknown training example ID" in line, line
    assert "--unseen" not in line  # a typo is not a missing-parameters case
    for e in expected:
        assert e in line, (e, line)
    return line


@pytest.mark.parametrize(
    "opt, value, shown",
    [
        ("--drop", "e1,zz1", "zz1 (--drop)"),
        ("--only", "e1,e2,zz2", "zz2 (--only)"),
        ("--repeat", "zz3", "zz3 (--repeat)"),
    ],
)
def test_whatif_edit_options(store, opt, value, shown):
    _unknown(cli("whatif", "--store", store, "-m", "m", "-b", "syn-000", opt, value), shown)


def test_whatif_order_and_base_files(store, tmp_path):
    order = tmp_path / "order.txt"
    order.write_text("e0\ne1\nnope\n")
    _unknown(
        cli("whatif", "--store", store, "-m", "m", "-b", "syn-000", "--order", f"@{order}"),
        "nope (--order @",
    )
    base = tmp_path / "base.txt"
    base.write_text("e0 e1\ne2 typo9\n")
    _unknown(cli("whatif", "--store", store, "-m", "m", "-b", base, "--drop", "e0"), "typo9")


def test_groups(store, tmp_path):
    _unknown(
        cli("groups", "--store", store, "-m", "m", "-b", "syn-000", "-g", "a=e0,e1", "-g", "b=x9"),
        "x9 (--group b)",
    )
    f = tmp_path / "g.txt"
    f.write_text("e0\nbad7\n")
    _unknown(
        cli("groups", "--store", store, "-m", "m", "-b", "syn-000", "-g", f"@{f}"),
        f"bad7 (--group g from @{f})",
    )
    meta = tmp_path / "meta.csv"
    meta.write_text("example_id,label\ne0,a\ne1,a\nghost,b\n")
    _unknown(
        cli(
            "groups",
            "--store",
            store,
            "-m",
            "m",
            "-b",
            "syn-000",
            "--groups-from",
            meta,
            "--column",
            "label",
        ),  # fmt: skip
        "ghost (--groups-from",
    )


def test_simulate_lists_lines(store, tmp_path):
    cur = tmp_path / "c.txt"
    cur.write_text("e0 e1\ne2 missing5\n")
    line = _unknown(cli("simulate", cur, "--store", store, "-m", "m"), "missing5 (line 2)")
    assert str(cur) in line


def test_in_store_but_unseen_stays_the_unseen_case(store, tmp_path):
    base = tmp_path / "base.txt"
    base.write_text("e0 e7\ne1 e2\n")
    r = cli("whatif", "--store", store, "-m", "m", "-b", base, "--repeat", "e7")
    assert r.exit_code == 1 and "--unseen" in r.stderr and "unknown" not in r.stderr
    r = cli(
        "whatif", "--store", store, "-m", "m", "-b", base, "--repeat", "e7",
        "--unseen", "prior", "-f", "csv",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    cur = tmp_path / "c.txt"
    cur.write_text("e0 e1\ne2 e8\n")
    r = cli("simulate", cur, "--store", store, "-m", "m")
    assert r.exit_code == 1 and "--unseen prior" in r.stderr and "unknown" not in r.stderr


def test_valid_ids_still_work(store):
    r = cli("whatif", "--store", store, "-m", "m", "-b", "syn-000", "--drop", "e1", "-f", "csv")
    assert r.exit_code == 0, r.stderr
    r = cli("groups", "--store", store, "-m", "m", "-b", "syn-000", "-g", "a=e0,e1", "-f", "csv")
    assert r.exit_code == 0, r.stderr


def test_design_pool(store):
    _unknown(
        cli(
            "design",
            "--store",
            store,
            "-m",
            "m",
            "--steps",
            "3",
            "--pool",
            "e0,e1,nope3",
            "-o",
            "-",
        ),
        "nope3 (--pool e0,e1,nope3)",
    )
    r = cli("design", "--store", store, "-m", "m", "--steps", "3", "--pool", "e0,e7", "-o", "-")
    assert r.exit_code == 1 and "unknown training example" not in r.stderr  # unseen: the model's

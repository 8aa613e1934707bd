"""``simfluence plan`` (analysis/plan.py): seeded mixes of curricula for fitting runs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from simfluence_cli.analysis.plan import _counts, parse_mix, plan_curricula
from simfluence_cli.errors import UsageError
from simfluence_cli.io.curriculum import parse_curriculum

POOL = [f"e{i:03d}" for i in range(60)]
LABELS = {e: str(i % 6) for i, e in enumerate(POOL)}  # 6 classes of 10


def test_deterministic_given_seed():
    a = plan_curricula(POOL, 8, 40, 4, seed=3, labels=LABELS)
    b = plan_curricula(POOL, 8, 40, 4, seed=3, labels=LABELS)
    c = plan_curricula(POOL, 8, 40, 4, seed=4, labels=LABELS)
    assert [x.text() for x in a] == [x.text() for x in b]
    assert [x.text() for x in a] != [x.text() for x in c]


def test_shape_pool_and_distinct_batches():
    for cur in plan_curricula(POOL, 12, 50, 4, seed=0, labels=LABELS):
        assert len(cur.batches) == 50
        for b in cur.batches:
            assert len(b) == 4 and len(set(b)) == 4 and set(b) <= set(POOL)
        back = parse_curriculum(cur.text())  # the format simulate reads
        assert back.batches == cur.batches


def test_mix_counts_and_kind_signatures():
    assert _counts(10, parse_mix(None)) == {"shuffle": 3, "subset": 3, "repeat": 2, "blocked": 2}
    assert _counts(5, parse_mix("shuffle=1,blocked=3")) == {"shuffle": 1, "blocked": 4}
    plan = plan_curricula(POOL, 16, 60, 4, seed=1, labels=LABELS)
    kinds = Counter(c.kind for c in plan)
    assert kinds == {"shuffle": 4, "subset": 4, "repeat": 4, "blocked": 4}
    for c in plan:
        used = Counter(e for b in c.batches for e in b)
        if c.kind == "shuffle":  # 240 slots over 60 examples: each exactly 4 times
            assert set(used.values()) == {4}
        elif c.kind == "subset":
            assert len(used) < len(POOL)
        elif c.kind == "repeat":
            assert max(used.values()) >= 2 * min(used.values())
        else:  # blocked by label: the first 2 batches (8 examples) come from one class of 10
            first = {LABELS[e] for b in c.batches[:2] for e in b}
            assert len(first) == 1


def test_bad_arguments():
    with pytest.raises(UsageError):
        parse_mix("shuffle=1,zigzag=1")
    with pytest.raises(UsageError):
        parse_mix("shuffle=0")
    with pytest.raises(UsageError):
        plan_curricula(POOL[:5], 4, 10, 4)
    with pytest.raises(UsageError):
        plan_curricula(POOL, 0, 10, 4)


@pytest.mark.slow
def test_cli_plan_writes_files_simulate_reads(tmp_path):
    from typer.testing import CliRunner

    from simfluence_cli.cli import app
    from simfluence_cli.io.synthetic import make_runs
    from simfluence_cli.model.simulator import Simulator
    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import save_model

    runs, _, _ = make_runs(20, 3, 4, 15, 2, seed=2, noise=0.001)
    st = RunStore(tmp_path / "store", create=True)
    st.add_runset(runs, tags=["fit"])
    ids = st.select("fit")
    with st.write_lock():
        save_model(
            st, "lin", Simulator("linear", l2=0.1).fit(st.load(ids)), runs=ids,
            data_hash=st.data_hash(ids),
        )  # fmt: skip
    cli = CliRunner()
    s = str(tmp_path / "store")
    r = cli.invoke(app, ["plan", "--store", s, "-n", "6", "--seed", "2", "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.stderr
    files = sorted((tmp_path / "p").glob("plan-*.txt"))
    assert [f.name for f in files] == [f"plan-{k:03d}.txt" for k in range(6)]
    first = parse_curriculum(files[0].read_text())
    assert len(first.batches) == 15 and all(len(b) == 2 for b in first.batches)  # from the store
    r2 = cli.invoke(app, ["plan", "--store", s, "-n", "6", "--seed", "2"])
    assert r2.stdout == "".join(f.read_text() for f in files)  # stdout = the files in order
    sim = cli.invoke(app, ["simulate", str(files[0]), "--store", s, "-m", "lin", "-f", "csv"])
    assert sim.exit_code == 0, sim.stderr
    pool = cli.invoke(
        app, ["plan", "--pool", "a,b,c,d,e", "--steps", "3", "--batch-size", "2", "-n", "5"]
    )
    assert pool.exit_code == 0 and len(pool.stdout.strip().splitlines()) == 5 * 4
    bad = cli.invoke(app, ["plan", "--store", s, "--mix", "nope=1"])
    assert bad.exit_code == 2
    assert np.all([len(b.split()) == 2 for b in pool.stdout.splitlines() if b[0] != "#"])

"""Curriculum edits, whatif and group effects (core, and the CLI over a real store)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfluence_cli.analysis.groups import group_effects, read_groups
from simfluence_cli.analysis.whatif import (
    Edits,
    apply_edits,
    batch_size_of,
    drop_examples,
    final_losses,
    whatif,
)
from simfluence_cli.errors import InputError, SelectionError, UsageError
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator

BASE = [["a", "b"], ["c", "d"], ["e", "f"]]


def flat(batches):
    return [e for b in batches for e in b]


# -- edit semantics ---------------------------------------------------------------------------


def test_drop_repack_keeps_order_and_full_batches():
    # stream a b d e f -> [a b] [d e] [f]; the incomplete last batch is not trained on
    assert apply_edits(BASE, Edits(drop=["c"], mode="repack")) == [["a", "b"], ["d", "e"]]
    assert apply_edits(BASE, Edits(drop=["c", "d"], mode="repack")) == [["a", "b"], ["e", "f"]]


def test_drop_shrink_removes_in_place_and_empty_steps():
    assert apply_edits(BASE, Edits(drop=["c"], mode="shrink")) == [["a", "b"], ["d"], ["e", "f"]]
    assert apply_edits(BASE, Edits(drop=["c", "d"], mode="shrink")) == [["a", "b"], ["e", "f"]]


def test_drop_keep_steps_is_the_default_and_cycles_to_the_same_number_of_steps():
    assert Edits().mode == "keep-steps"
    out = apply_edits(BASE, Edits(drop=["c"], mode="keep-steps"))
    assert out == [["a", "b"], ["d", "e"], ["f", "a"]]
    assert len(out) == len(BASE)


def test_drop_neutral_replaces_in_place():
    from simfluence_cli.analysis.whatif import NEUTRAL

    out = apply_edits(BASE, Edits(drop=["c", "f"], mode="neutral"))
    assert out == [["a", "b"], [NEUTRAL, "d"], ["e", NEUTRAL]]
    assert apply_edits(BASE, Edits(repeat=["a"], mode="neutral"))[0] == ["a", "a", "b"]


def test_only_keeps_only_listed():
    assert apply_edits(BASE, Edits(only=["a", "d", "f"], mode="shrink")) == [["a"], ["d"], ["f"]]
    assert apply_edits(BASE, Edits(only=["a", "d"], mode="repack")) == [["a", "d"]]
    assert apply_edits(BASE, Edits(only=["a", "d"])) == [["a", "d"]] * 3  # keep-steps: cycled


def test_repeat_duplicates_each_occurrence():
    assert apply_edits(BASE, Edits(repeat=["a"], mode="shrink")) == [
        ["a", "a", "b"],
        ["c", "d"],
        ["e", "f"],
    ]
    out = apply_edits(BASE, Edits(repeat=["a", "f"], mode="repack"))
    assert out == [["a", "a"], ["b", "c"], ["d", "e"], ["f", "f"]]
    assert apply_edits(BASE, Edits(repeat=["a"])) == [["a", "a"], ["b", "c"], ["d", "e"]]


def test_order_edits():
    assert apply_edits(BASE, Edits(order="reverse")) == BASE[::-1]
    steps = apply_edits(BASE, Edits(order="shuffle-steps", seed=3))
    assert sorted(map(tuple, steps)) == sorted(map(tuple, BASE))
    assert apply_edits(BASE, Edits(order=["f", "c"])) == [["f", "c"], ["a", "b"], ["d", "e"]]


def test_order_list_sorts_each_epoch_or_the_whole_run():
    base = [["b", "a"], ["c", "b"], ["a", "c"]]  # two epochs over {a, b, c}
    by = ["c", "b", "a"]
    assert apply_edits(base, Edits(order=by)) == [["c", "b"], ["a", "c"], ["b", "a"]]
    assert apply_edits(base, Edits(order=by, order_scope="run")) == [
        ["c", "c"],
        ["b", "b"],
        ["a", "a"],
    ]


def test_shuffle_is_a_seeded_permutation_of_the_examples():
    base = [[f"e{2 * t}", f"e{2 * t + 1}"] for t in range(20)]
    a = apply_edits(base, Edits(order="shuffle", seed=1))
    assert a == apply_edits(base, Edits(order="shuffle", seed=1))
    assert a != apply_edits(base, Edits(order="shuffle", seed=2))
    assert Counter(flat(a)) == Counter(flat(base)) and all(len(b) == 2 for b in a)


def test_edits_apply_in_documented_order():
    # only -> drop -> repeat -> order
    out = apply_edits(
        BASE,
        Edits(only=["a", "b", "c", "d"], drop=["b"], repeat=["c"], order="reverse", mode="shrink"),
    )
    assert out == [["c", "c", "d"], ["a"]]


def test_edit_errors():
    with pytest.raises(SelectionError):
        apply_edits(BASE, Edits(drop=flat(BASE)))
    with pytest.raises(UsageError):
        Edits(mode="nope")
    with pytest.raises(UsageError):
        Edits(order="sideways")
    assert drop_examples(BASE, flat(BASE)) == []


def test_batch_size_is_the_most_common():
    assert batch_size_of([["a", "b"], ["c", "d"], ["e"]]) == 2


ids = st.lists(st.sampled_from([f"x{i}" for i in range(12)]), min_size=1, max_size=6, unique=True)
curricula = st.lists(ids, min_size=1, max_size=10)


@settings(max_examples=60, deadline=None)
@given(curricula, st.lists(st.sampled_from([f"x{i}" for i in range(12)]), max_size=5))
def test_drop_law_repack_and_shrink(base, drop):
    kept = [e for e in flat(base) if e not in set(drop)]
    shrink = drop_examples(base, drop, "shrink")
    assert flat(shrink) == kept  # every occurrence removed, order and others untouched
    rep = drop_examples(base, drop, "repack")
    if not drop:
        assert rep == base
        return
    b = batch_size_of(base)
    # remaining stream in order, full batches, at most b-1 tail examples left out
    assert kept[: len(flat(rep))] == flat(rep)
    assert all(len(x) == b for x in rep[:-1])
    assert len(kept) - len(flat(rep)) < b or not rep


@settings(max_examples=40, deadline=None)
@given(curricula, st.integers(0, 5))
def test_order_edits_keep_the_examples(base, seed):
    for order in ("shuffle", "shuffle-steps", "reverse"):
        out = apply_edits(base, Edits(order=order, seed=seed))
        assert Counter(flat(out)) == Counter(flat(base))


# -- whatif -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    runs, _, _ = make_runs(30, 6, 6, 25, 3, method="linear", seed=4, noise=0.001)
    sim = Simulator("linear", l2=0.01).fit(runs)
    run = runs.runs[0]
    base = [[str(runs.example_ids[i]) for i in run.batch(t)] for t in range(1, run.n_steps + 1)]
    return sim, base, run.losses[0]


def test_whatif_matches_manual_simulate(fitted):
    sim, base, L0 = fitted
    edits = Edits(drop=["e1", "e2", "e7"], order="reverse", mode="repack")
    res = whatif(sim, base, edits, L0)
    edited = apply_edits(base, edits)
    assert res.edited == edited
    manual_b = sim.simulate([base], L0)[0, -1]
    manual_e = sim.simulate([edited], L0)[0, -1]
    np.testing.assert_allclose(res.base_final, manual_b, rtol=1e-12)
    np.testing.assert_allclose(res.edited_final, manual_e, rtol=1e-12)
    np.testing.assert_allclose(res.change, manual_e - manual_b, rtol=1e-12)
    s = res.summary()
    assert s["mean_change"] == pytest.approx(float(np.mean(manual_e - manual_b)))
    assert s["edited_steps"] == len(edited) < len(base)
    rows = res.trajectory_rows()
    assert len(rows) == (len(base) + 1) * len(sim.test_ids_)
    last_edit = [r for r in rows if r["step"] == len(edited)]
    np.testing.assert_allclose([r["edited"] for r in last_edit], manual_e)


def test_whatif_no_edit_is_zero_change(fitted):
    sim, base, L0 = fitted
    res = whatif(sim, base, Edits(), L0)
    assert np.all(res.change == 0)


def test_final_losses_chunks_agree(fitted):
    sim, base, L0 = fitted
    curs = [base, drop_examples(base, ["e3"]), [], base[:5]]
    a = final_losses(sim, curs, L0)
    b = final_losses(sim, curs, L0, chunk=1)
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a[2], L0)  # an empty curriculum leaves L_0


# -- group effects ----------------------------------------------------------------------------


def _param_sim(method, seed=0, n=16, m=5, b=2):
    rng = np.random.default_rng(seed)
    A = (1.0 / b) * (1 - rng.uniform(0, 0.05, (n, m)))
    B = rng.normal(-0.01, 0.02, (n, m))
    return Simulator.from_params(
        A,
        B,
        [f"e{i}" for i in range(n)],
        [f"t{j}" for j in range(m)],
        method=method,
        clip="none",
        batch_size=b,
    )


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 1000),
    st.lists(st.lists(st.integers(0, 15), min_size=1, max_size=5), min_size=1, max_size=3),
    st.sampled_from(["shrink", "neutral"]),
)
def test_group_effect_is_additive_for_an_additive_model(seed, groups, mode):
    sim = _param_sim("additive", seed)
    rng = np.random.default_rng(seed)
    base = [[f"e{i}" for i in rng.choice(16, 2, replace=False)] for _ in range(12)]
    G = {f"g{k}": [f"e{i}" for i in g] for k, g in enumerate(groups)}
    L0 = np.full(5, 2.0)
    res = group_effects(sim, base, G, L0, mode=mode)
    np.testing.assert_allclose(res.group_effect, res.sum_individual, atol=1e-12)
    np.testing.assert_allclose(res.interaction, 0, atol=1e-12)


def test_group_effect_is_not_additive_for_a_multiplicative_model():
    sim = _param_sim("multiplicative", 1)
    rng = np.random.default_rng(1)
    base = [[f"e{i}" for i in rng.choice(16, 2, replace=False)] for _ in range(30)]
    G = {"g": ["e0", "e1", "e2", "e3", "e4"]}
    res = group_effects(sim, base, G, np.full(5, 2.0), mode="shrink")
    assert np.max(np.abs(res.interaction)) > 1e-3
    row = res.rows()[0]
    assert row["members"] == 5 and row["interaction"] == pytest.approx(
        row["group_effect"] - row["sum_individual"]
    )


def test_neutral_single_removals_match_the_top_removal_effect():
    from simfluence_cli.analysis.effects import removal_effect

    runs, _, _ = make_runs(20, 4, 3, 15, 2, method="linear", seed=11, noise=0.001)
    sim = Simulator("linear", l2=0.01).fit(runs)
    run = runs.runs[0]
    base = [[str(runs.example_ids[i]) for i in run.batch(t)] for t in range(1, run.n_steps + 1)]
    present = sorted({e for b in base for e in b})
    res = group_effects(sim, base, {e: [e] for e in present}, run.losses[0], mode="neutral")
    ref = removal_effect(sim, runs.subset([run.run_id]))
    pos = {e: i for i, e in enumerate(sim.example_ids_)}
    np.testing.assert_allclose(res.group_effect, ref[[pos[e] for e in present]], atol=1e-12)


def test_group_effect_matches_whatif_and_absent_members(fitted):
    sim, base, L0 = fitted
    present = sorted({e for b in base for e in b})
    G = {"two": present[:2], "ghost": ["nope1", "nope2"]}
    res = group_effects(sim, base, G, L0)
    w = whatif(sim, base, Edits(drop=present[:2]), L0)
    np.testing.assert_allclose(res.group_effect[0], w.change, rtol=1e-12)
    assert res.present == {"two": 2, "ghost": 0}
    single = sum(whatif(sim, base, Edits(drop=[e]), L0).change for e in present[:2])
    np.testing.assert_allclose(res.sum_individual[0], single, rtol=1e-12)


def test_read_groups(tmp_path):
    p = tmp_path / "examples.csv"
    p.write_text("example_id,label\ne0,1\ne1,0\ne2,1\n")
    assert read_groups(str(p), "label") == {"0": ["e1"], "1": ["e0", "e2"]}
    with pytest.raises(InputError, match="no column 'colour'"):
        read_groups(str(p), "colour")
    with pytest.raises(InputError, match="no such file"):
        read_groups(str(tmp_path / "missing.csv"), "label")


# -- CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_model(tmp_path_factory):
    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import save_model

    root = tmp_path_factory.mktemp("cf")
    runs, _, _ = make_runs(24, 5, 5, 20, 3, method="linear", seed=8, noise=0.001)
    st = RunStore(root / "store", create=True)
    st.add_runset(runs, tags=["fit"])
    ids = st.select("fit")
    sim = Simulator("linear", l2=0.01).fit(st.load(ids))
    with st.write_lock():
        save_model(st, "lin", sim, runs=ids, data_hash=st.data_hash(ids))
    return root, st, runs


def _cli(args, root):
    from typer.testing import CliRunner

    from simfluence_cli.cli import app

    return CliRunner().invoke(app, [*args[:1], "--store", str(root / "store"), *args[1:]])


def _csv(text):
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def test_cli_whatif_run_base_matches_core(store_model):
    from simfluence_cli.store.saved_models import load_model

    root, st, runs = store_model
    r = _cli(
        ["whatif", "--model", "lin", "--base", "syn-000", "--drop", "e1,e2", "-f", "csv"], root
    )
    assert r.exit_code == 0, r.stderr
    rows = _csv(r.stdout)
    sim = load_model(st, "lin")
    base = [[str(runs.example_ids[i]) for i in runs["syn-000"].batch(t)] for t in range(1, 21)]
    core = whatif(sim, base, Edits(drop=["e1", "e2"]), runs["syn-000"].losses[0])
    assert [x["test_id"] for x in rows] == list(core.test_ids)
    np.testing.assert_allclose([float(x["change"]) for x in rows], core.change, rtol=1e-12)
    assert "negative = the edit helps" in " ".join(r.stderr.split())

    j = _cli(
        ["whatif", "--model", "lin", "--base", "syn-000", "--drop", "e1,e2", "-f", "json"], root
    )
    import json

    doc = json.loads(j.stdout)
    assert doc["summary"]["mean_change"] == pytest.approx(float(core.change.mean()))
    assert doc["summary"]["edits"]["mode"] == "keep-steps" and len(doc["results"]) == 5


def test_cli_whatif_curriculum_file_trajectories_and_save(store_model, tmp_path):
    root, _, _ = store_model
    cur = tmp_path / "c.txt"
    cur.write_text("# two steps\ne1 e2 e3\ne4 e5 e6\n")
    out = tmp_path / "edited.txt"
    r = _cli(
        [
            "whatif",
            "-m",
            "lin",
            "-b",
            str(cur),
            "--order",
            "reverse",
            "--trajectories",
            "--save-edited",
            str(out),
            "-f",
            "csv",
            "--tests",
            "t0,t1",
        ],
        root,
    )
    assert r.exit_code == 0, r.stderr
    rows = _csv(r.stdout)
    assert list(rows[0]) == ["step", "test_id", "base", "edited"]
    assert len(rows) == 3 * 2 and rows[0]["base"] == rows[0]["edited"]
    assert [ln for ln in out.read_text().splitlines() if not ln.startswith("#")] == [
        "e4 e5 e6",
        "e1 e2 e3",
    ]


def test_cli_whatif_errors(store_model):
    root, _, _ = store_model
    r = _cli(["whatif", "-m", "nope", "-b", "syn-000", "--drop", "e1"], root)
    assert r.exit_code == 1 and "no model named 'nope'" in r.stderr
    r = _cli(["whatif", "-m", "lin", "-b", "syn-000", "--order", "sideways"], root)
    assert r.exit_code == 2 and "--order" in r.stderr
    r = _cli(["whatif", "-m", "lin", "-b", "no-such-run", "--drop", "e1"], root)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    r = _cli(["whatif", "-m", "lin", "-b", "syn-000", "--drop", "e1", "--mode", "fold"], root)
    assert r.exit_code == 2
    r = _cli(
        [
            "whatif",
            "-m",
            "lin",
            "-b",
            "syn-000",
            "--drop",
            "e1",
            "--mode",
            "neutral",
            "--save-edited",
            str(root / "x.txt"),
        ],
        root,
    )
    assert r.exit_code == 2 and "placeholder" in r.stderr and not (root / "x.txt").exists()


def test_cli_groups(store_model, tmp_path):
    root, _, _ = store_model
    meta = tmp_path / "examples.csv"
    meta.write_text("example_id,label\n" + "".join(f"e{i},{i % 3}\n" for i in range(24)))
    r = _cli(
        [
            "groups",
            "-m",
            "lin",
            "-b",
            "syn-001",
            "--groups-from",
            str(meta),
            "--column",
            "label",
            "-f",
            "csv",
        ],
        root,
    )
    assert r.exit_code == 0, r.stderr
    rows = _csv(r.stdout)
    assert [x["group"] for x in rows] == ["label=0", "label=1", "label=2"]
    for x in rows:
        assert float(x["interaction"]) == pytest.approx(
            float(x["group_effect"]) - float(x["sum_individual"])
        )
    r = _cli(
        [
            "groups",
            "-m",
            "lin",
            "-b",
            "syn-001",
            "-g",
            "pair=e1,e2",
            "-g",
            "e3",
            "--by",
            "test",
            "-f",
            "csv",
        ],
        root,
    )
    assert r.exit_code == 0, r.stderr
    rows = _csv(r.stdout)
    assert {x["group"] for x in rows} == {"pair", "group2"} and len(rows) == 10
    r = _cli(["groups", "-m", "lin", "-b", "syn-001"], root)
    assert r.exit_code == 2


def test_cli_whatif_edited_curriculum(store_model):
    from simfluence_cli.store.saved_models import load_model

    root, st, runs = store_model
    r = _cli(["whatif", "-m", "lin", "-b", "syn-000", "--edited", "syn-001", "-f", "csv"], root)
    assert r.exit_code == 0, r.stderr
    sim = load_model(st, "lin")
    b0 = [[str(runs.example_ids[i]) for i in runs["syn-000"].batch(t)] for t in range(1, 21)]
    b1 = [[str(runs.example_ids[i]) for i in runs["syn-001"].batch(t)] for t in range(1, 21)]
    fin = sim.simulate([b0, b1], runs["syn-000"].losses[0])[:, -1]
    np.testing.assert_allclose(
        [float(x["change"]) for x in _csv(r.stdout)], fin[1] - fin[0], rtol=1e-12
    )
    r = _cli(["whatif", "-m", "lin", "-b", "syn-000", "--edited", "syn-001", "--drop", "e1"], root)
    assert r.exit_code == 2


def test_batch_size_note_only_for_batch_sum_models_when_sizes_change():
    from simfluence_cli.analysis.whatif import batch_size_note

    base = [["e1", "e2"], ["e3", "e4"], ["e5"]]  # an epoch ending in a short batch
    full = apply_edits(base, Edits(drop=["e5"]))  # keep-steps: every batch full
    assert [len(b) for b in full] == [2, 2, 2]
    note = batch_size_note("linear", base, full)
    assert note is not None and "1 of 3 steps change batch size" in note
    assert "--mode neutral" in note
    shrunk = apply_edits(base, Edits(drop=["e5"], mode="shrink"))
    assert "3 -> 2 steps" in batch_size_note("additive", base, shrunk)
    # same sizes step by step, the optimizer-aware model (batch means), or neutral placeholders
    assert batch_size_note("linear", base, [["e2", "e1"], ["e4", "e3"], ["e1"]]) is None
    assert batch_size_note("optimizer-aware", base, full) is None
    assert (
        batch_size_note("linear", base, apply_edits(base, Edits(drop=["e5"], mode="neutral")))
        is None
    )


def test_cli_whatif_warns_when_a_linear_model_compares_batch_sizes(store_model):
    root, _, _ = store_model
    r = _cli(
        ["whatif", "--model", "lin", "--base", "syn-000", "--drop", "e1", "--mode", "shrink"], root
    )
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "batch sizes differ from the base's" in err and "a linear model sums" in err
    # the default keep-steps mode on full batches keeps every step's size: no warning
    k = _cli(["whatif", "--model", "lin", "--base", "syn-000", "--drop", "e1"], root)
    assert k.exit_code == 0 and "batch sizes differ" not in " ".join(k.stderr.split())

"""``design``: greedy or best-run start, trust-region descent by adjoint-ranked moves; beats random curricula."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simfluence_cli.analysis.curriculum_design import (
    best_run_start,
    curriculum_text,
    design_curriculum,
    random_curricula,
)
from simfluence_cli.errors import ModelError, SelectionError, UsageError
from simfluence_cli.io.curriculum import parse_curriculum
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator

N, M, B = 40, 6, 2
HELPFUL = [f"e{i}" for i in range(10)]


def known_sim(method="additive"):
    """Examples e0..e9 lower every test loss, the rest raise it a little."""
    rng = np.random.default_rng(0)
    Bm = np.full((N, M), 0.01) + rng.uniform(0, 0.002, (N, M))
    Bm[:10] = -0.05 - rng.uniform(0, 0.01, (10, M))
    A = np.full((N, M), 1.0 / B)
    return Simulator.from_params(
        A,
        Bm,
        [f"e{i}" for i in range(N)],
        [f"t{j}" for j in range(M)],
        method=method,
        clip="none",
        init_loss=np.full(M, 2.0),
        batch_size=B,
    )


def test_design_picks_the_helpful_examples_and_beats_random():
    sim = known_sim()
    res = design_curriculum(sim, 20, seed=0, iters=30, candidates=16, n_random=50)
    used = Counter(e for b in res.batches for e in b)
    assert res.params["max_uses"] == 2  # ceil(1.5 * 20 * 2 / 40)
    assert all(used[e] == 2 for e in HELPFUL)
    assert max(used.values()) <= 2
    assert all(len(set(b)) == len(b) == B for b in res.batches)
    rep = res.report()
    assert res.objective < rep["random_best"]
    assert rep["fraction_random_beaten"] == 1.0
    # the reported objective is the simulated mean final loss of the curriculum
    sim_final = sim.simulate([res.batches], np.full(M, 2.0))[0, -1].mean()
    assert res.objective == pytest.approx(sim_final, rel=1e-12)


def test_local_search_improves_on_greedy_for_a_fitted_linear_model():
    runs, _, _ = make_runs(40, 8, 8, 30, 4, method="linear", seed=2, noise=0.0)
    sim = Simulator("linear", l2=0.01).fit(runs)
    res = design_curriculum(sim, 30, seed=1, iters=60, candidates=32, n_random=40)
    assert res.objective <= res.start_objective
    assert all(np.diff(res.history) <= 0)  # never worse
    rep = res.report()
    assert res.objective < rep["random_mean"]
    traj = sim.simulate([res.batches])[0, -1].mean()
    assert res.objective == pytest.approx(traj, rel=1e-10)


def test_design_is_deterministic_given_the_seed():
    runs, _, _ = make_runs(30, 5, 6, 20, 3, method="linear", seed=5)
    sim = Simulator("linear", l2=0.1).fit(runs)
    a = design_curriculum(sim, 15, seed=7, iters=20, candidates=8, n_random=10)
    b = design_curriculum(sim, 15, seed=7, iters=20, candidates=8, n_random=10)
    assert a.batches == b.batches and a.objective == b.objective
    np.testing.assert_array_equal(a.random_objectives, b.random_objectives)


def test_pool_and_tests_restrict_the_search():
    sim = known_sim()
    pool = [f"e{i}" for i in range(5, 25)]
    res = design_curriculum(
        sim, 10, pool=pool, tests=["t0", "t1"], seed=0, iters=5, candidates=4, n_random=5
    )
    assert {e for b in res.batches for e in b} <= set(pool)
    assert res.params["tests"] == 2 and res.params["pool"] == 20


def test_design_errors():
    sim = known_sim()
    with pytest.raises(ModelError, match="unknown to the model"):
        design_curriculum(sim, 5, pool=["e1", "zzz", "e2"])
    with pytest.raises(SelectionError):
        design_curriculum(sim, 5, pool=["e1"], batch_size=2)
    with pytest.raises(UsageError):
        design_curriculum(sim, 5, pool=["e1", "e2"], max_uses=1)
    with pytest.raises(UsageError):
        design_curriculum(sim, 5, objective="accuracy")


def test_random_curricula_cover_the_pool_evenly():
    pool = np.arange(10)
    R = random_curricula(pool, 10, 2, 3, np.random.default_rng(0))
    for c in R:
        counts = Counter(c.reshape(-1).tolist())
        assert set(counts) == set(range(10)) and max(counts.values()) <= 3
        assert all(len(set(b)) == len(b) for b in c.tolist())


def test_curriculum_text_round_trips():
    text = curriculum_text([["a", "b"], ["c", "d"]], {"model": "m", "seed": 3})
    assert text.startswith("# simfluence design\n# model: m\n# seed: 3\n")
    assert parse_curriculum(text).batches == [["a", "b"], ["c", "d"]]


def _store_with_linear_model(path, n_runs: int):
    """A store at ``path`` with ``n_runs`` synthetic fitting runs (tag 'fit') and a linear
    model 'lin' fitted on them; returns (store, fitting run ids)."""
    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import save_model

    runs, _, _ = make_runs(20, 4, n_runs, 15, 2, method="linear", seed=3)
    st = RunStore(path, create=True)
    st.add_runset(runs, tags=["fit"])
    ids = st.select("fit")
    with st.write_lock():
        save_model(
            st, "lin", Simulator("linear", l2=0.1).fit(st.load(ids)), runs=ids,
            data_hash=st.data_hash(ids),
        )  # fmt: skip
    return st, ids


def test_cli_design_writes_a_deterministic_curriculum(tmp_path):
    import json

    from typer.testing import CliRunner

    from simfluence_cli.cli import app
    from simfluence_cli.io.curriculum import read_curriculum

    st, ids = _store_with_linear_model(tmp_path / "s", 4)
    outs = []
    for k in range(2):
        out, rep = tmp_path / f"d{k}.txt", tmp_path / f"r{k}.json"
        r = CliRunner().invoke(
            app,
            [
                "design",
                "--store",
                str(tmp_path / "s"),
                "-m",
                "lin",
                "--start",
                "greedy",
                "--steps",
                "12",
                "--seed",
                "4",
                "--iters",
                "10",
                "-K",
                "8",
                "--random",
                "20",
                "-o",
                str(out),
                "--report",
                str(rep),
            ],
        )
        assert r.exit_code == 0, r.stderr
        assert "random curricula from the same pool" in " ".join(r.stderr.split())
        outs.append(out.read_text())
        report = json.loads(rep.read_text())
    assert outs[0] == outs[1]
    cur = read_curriculum(str(tmp_path / "d0.txt"))
    assert len(cur) == 12 and all(len(b) == 2 for b in cur.batches)
    assert "# model: lin" in outs[0] and "# seed: 4" in outs[0]
    assert report["design"] <= report["start_objective"] and report["random_n"] == 20
    assert report["start"] == "greedy" and report["trust"] == 1.0


# -- start from the best fitting run, trust region, adjoint-ranked moves, consensus ------------


def _fitted(seed=2):
    runs, _, _ = make_runs(40, 8, 10, 30, 4, method="linear", seed=seed, noise=0.0)
    return runs, Simulator("linear", l2=0.01).fit(runs)


def test_best_run_start_is_the_run_with_the_lowest_final_loss():
    runs, _ = _fitted()
    rid, cur = best_run_start(runs)
    finals = [np.nanmean(r.losses[-1]) for r in runs.runs]
    k = int(np.argmin(finals))
    assert rid == runs.run_ids[k]
    run = runs.runs[k]
    assert len(cur) == run.n_steps
    assert cur[0] == [str(runs.example_ids[q]) for q in run.batch(1)]
    # restricted to one test: the best run for that test
    t = str(runs.test_ids[3])
    rid3, _ = best_run_start(runs, [t])
    assert rid3 == runs.run_ids[int(np.argmin([r.losses[-1][3] for r in runs.runs]))]


@pytest.mark.parametrize("trust", [0.0, 0.02, 0.1, 0.3])
def test_design_from_a_run_respects_the_trust_region_and_never_gets_worse(trust):
    runs, sim = _fitted()
    _, start = best_run_start(runs)
    # a noiseless simulator: the best run sits at some tests' data floor, which the guard
    # would hold (test_data_floor_...): here the trust region alone is under test
    kw = dict(iters=40, candidates=16, n_random=0, floor_guard=False)
    res = design_curriculum(sim, start=start, trust=trust, **kw)
    slots = sum(len(b) for b in start)
    changed = sum(x != y for a, b in zip(res.batches, start) for x, y in zip(a, b))
    assert changed == res.params["changed_slots"] <= int(trust * slots)
    assert res.params["max_changes"] == int(trust * slots)
    assert res.objective <= res.start_objective
    assert all(np.diff(res.history) <= 0)
    assert res.objective == pytest.approx(sim.simulate([res.batches])[0, -1].mean(), rel=1e-10)
    assert all(len(set(b)) == len(b) for b in res.batches)
    if trust == 0.0:
        assert res.batches == start and res.objective == res.start_objective
    else:
        assert res.objective < res.start_objective  # a noiseless linear model: moves help
    if trust == 0.3:  # a wider region reaches at least as low
        narrow = design_curriculum(sim, start=start, trust=0.02, **kw)
        assert res.objective <= narrow.objective


def test_design_from_a_run_is_deterministic_and_keeps_the_use_cap():
    runs, sim = _fitted(4)
    _, start = best_run_start(runs)
    a = design_curriculum(sim, start=start, trust=0.2, iters=30, candidates=8, n_random=5, seed=3)
    b = design_curriculum(sim, start=start, trust=0.2, iters=30, candidates=8, n_random=5, seed=3)
    assert a.batches == b.batches and a.objective == b.objective
    np.testing.assert_array_equal(a.random_objectives, b.random_objectives)
    used = Counter(e for x in a.batches for e in x)
    assert max(used.values()) <= a.params["max_uses"]


def test_consensus_of_fold_models_blocks_moves_they_disagree_with():
    runs, sim = _fitted()
    _, start = best_run_start(runs)
    free = design_curriculum(
        sim, start=start, trust=0.2, iters=20, candidates=8, n_random=0, floor_guard=False
    )
    assert free.params["moves_accepted"] > 0
    # fold models whose example effects are reversed: every move that helps the full model
    # hurts them, so a majority never agrees and the start is kept
    contrary = copy.deepcopy(sim)
    contrary.B_ = -sim.B_
    contrary.A_ = 2.0 / sim.batch_size_ - sim.A_
    blocked = design_curriculum(
        sim,
        start=start,
        trust=0.2,
        iters=20,
        candidates=8,
        n_random=0,
        floor_guard=False,
        fold_models=[contrary, contrary, sim],
    )
    assert blocked.batches == start and blocked.params["fold_models"] == 3
    agreeing = design_curriculum(
        sim,
        start=start,
        trust=0.2,
        iters=20,
        candidates=8,
        n_random=0,
        floor_guard=False,
        fold_models=[sim, sim, contrary],
    )
    assert agreeing.objective < agreeing.start_objective


def test_design_start_errors():
    runs, sim = _fitted()
    _, start = best_run_start(runs)
    with pytest.raises(UsageError, match="differs from the start"):
        design_curriculum(sim, 7, start=start)
    with pytest.raises(UsageError, match="--trust"):
        design_curriculum(sim, start=start, trust=1.5)


def test_cli_design_starts_from_the_best_fitting_run(tmp_path):
    import json

    from typer.testing import CliRunner

    from simfluence_cli.cli import app
    from simfluence_cli.io.curriculum import read_curriculum

    st, ids = _store_with_linear_model(tmp_path / "s", 6)
    rid, start = best_run_start(st.load(ids))
    base = ["design", "--store", str(tmp_path / "s"), "-m", "lin", "--iters", "10", "-K", "8"]
    out, rep = tmp_path / "d.txt", tmp_path / "r.json"
    r = CliRunner().invoke(
        app, [*base, "--trust", "0.2", "--interval", "0.9", "-o", str(out), "--report", str(rep)]
    )
    assert r.exit_code == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["start_run"] == rid and report["steps"] == 15
    # 6 fitting runs are too few for a finite 90% upper end: JSON has no Infinity, so null
    assert report["fold_models"] > 0 and report["interval"]["hi"] is None
    assert np.isfinite(report["interval"]["lo"])
    assert report["design"] <= report["start_objective"]
    cur = read_curriculum(str(out)).batches
    changed = sum(x != y for a, b in zip(cur, start) for x, y in zip(a, b))
    assert changed == report["changed_slots"] <= int(0.2 * 30)
    assert f"# start: {rid}" in out.read_text()
    # the data floor comes from the model's fitting runs in the store; no test goes below it
    from simfluence_cli.analysis.curriculum_design import final_loss_floor, fitting_runs
    from simfluence_cli.store.saved_models import load_model

    sim = load_model(st, "lin")
    floor = final_loss_floor(fitting_runs(st, sim)[0])
    np.testing.assert_array_equal(floor, final_loss_floor(st.load(ids)))
    s0 = sim.simulate([start])[0, -1]
    assert report["tests_below_data_floor"] == int(np.sum(s0 < floor))
    assert report["floor_guard"] is True
    assert np.sum(sim.simulate([cur])[0, -1] < floor - 1e-9) <= np.sum(s0 < floor)
    sim.run_ids_ = [*sim.run_ids_, "not-in-store"]
    runs, why = fitting_runs(st, sim)  # design then falls back to sim.loss_min_
    assert runs is None and "1 of the model's fitting runs are not in the store" in why
    # auto falls back to greedy (with a note) when --steps differs; best-run refuses
    r = CliRunner().invoke(app, [*base, "--steps", "7", "-o", str(out)])
    assert r.exit_code == 0 and "greedy construction" in " ".join(r.stderr.split())
    r = CliRunner().invoke(app, [*base, "--steps", "7", "--start", "best-run", "-o", str(out)])
    assert r.exit_code == 2 and "differs from the best fitting run" in " ".join(r.stderr.split())


def _floored_sim(rng):
    base = known_sim()
    return Simulator.from_params(
        base.A_,
        base.B_,
        base.example_ids_,
        base.test_ids_,
        method="additive",
        init_loss=np.full(M, 2.0),
        batch_size=B,
        loss_range=(np.full(M, 1.4) + rng.uniform(0, 0.1, M), np.full(M, 2.0)),
    )


def test_floor_guard_keeps_tests_off_the_clip_floor():
    rng = np.random.default_rng(0)
    sim = _floored_sim(rng)
    start = random_curricula(np.arange(N), 20, B, 1, rng)[0]
    start = [[f"e{i}" for i in b] for b in start]
    lo, _ = sim.bounds_
    at_floor = lambda cur: int(np.sum(sim.simulate([cur])[0, -1] <= lo + 1e-12))  # noqa: E731
    kw = dict(start=start, trust=0.5, iters=60, candidates=16, n_random=0)
    free = design_curriculum(sim, floor_guard=False, **kw)
    guarded = design_curriculum(sim, **kw)
    assert at_floor(free.batches) > at_floor(start)  # the unguarded search does saturate here
    assert at_floor(guarded.batches) <= at_floor(start)
    assert guarded.params["tests_at_clip_floor"] == at_floor(guarded.batches)
    assert free.objective <= guarded.objective < guarded.start_objective
    # without a given floor the data floor is the lowest loss at any step (sim.loss_min_)
    assert np.all(sim.simulate([start])[0, -1] >= sim.loss_min_)
    assert np.all(sim.simulate([guarded.batches])[0, -1] >= sim.loss_min_ - 1e-12)
    assert guarded.params["tests_below_data_floor"] == 0 < free.params["tests_below_data_floor"]


def _biased_toy():
    """A simulator that promises ever lower losses (every helpful example -0.05 per use, no
    saturation); only e0..e4 move test t0. Returns (sim, start, its final losses)."""
    rng = np.random.default_rng(1)
    base = _floored_sim(rng)
    Bm = base.B_.copy()
    Bm[5:, 0] = 0.0  # only e0..e4 move t0
    sim = Simulator.from_params(
        base.A_,
        Bm,
        base.example_ids_,
        base.test_ids_,
        method="additive",
        init_loss=np.full(M, 2.0),
        batch_size=B,
        clip="none",
    )
    start = random_curricula(np.arange(N), 20, B, 1, rng)[0]
    start = [[f"e{i}" for i in b] for b in start]
    return sim, start, sim.simulate([start])[0, -1]


def test_data_floor_stops_a_biased_simulator_at_what_the_fitting_runs_support():
    """The fitting runs never got a test below ``floor``: unguarded, design runs every test
    past it; guarded, no test that starts above its floor ends below it (t0, already below
    at the start, is not held), yet the design still improves on its start."""
    sim, start, s0 = _biased_toy()
    floor = s0 - np.linspace(0.1, 0.3, M)  # what the runs reached: below the start
    floor[0] = s0[0] + 0.01  # the simulator already puts t0 past the data at the start
    kw = dict(start=start, trust=0.5, iters=60, candidates=64, n_random=0)
    free = design_curriculum(sim, floor=floor, floor_guard=False, **kw)
    guarded = design_curriculum(sim, floor=floor, **kw)
    f_free = sim.simulate([free.batches])[0, -1]
    f_guard = sim.simulate([guarded.batches])[0, -1]
    assert np.sum(f_free < floor - 1e-9) == M  # unguarded: every test past the data
    assert free.params["tests_below_data_floor"] == M
    assert np.all(f_guard[1:] >= floor[1:] - 1e-9)
    assert guarded.params["tests_below_data_floor"] == 1  # t0, as at the start
    assert free.objective < guarded.objective < guarded.start_objective
    with pytest.raises(UsageError, match="floor has shape"):
        design_curriculum(sim, floor=floor[:2], **kw)


def test_design_stops_when_its_best_ranked_moves_all_leave_the_data():
    """Every helpful move lowers the tests by ~0.066, the floor allows 0.03: the top-ranked
    candidates all cross it and the search stops at the start; with room for the small
    moves further down the ranking it takes those, and stays above the floor."""
    sim, start, s0 = _biased_toy()
    floor = s0 - 0.03
    kw = dict(start=start, trust=0.5, iters=60, n_random=0, floor=floor)
    stopped = design_curriculum(sim, candidates=16, **kw)
    assert stopped.batches == start and stopped.params["moves_accepted"] == 0
    wide = design_curriculum(sim, candidates=2000, **kw)
    assert wide.params["moves_accepted"] > 0 and wide.objective < wide.start_objective
    assert np.all(sim.simulate([wide.batches])[0, -1] >= floor - 1e-9)


def test_final_loss_floor_is_the_lowest_final_loss_of_the_fitting_runs():
    from simfluence_cli.analysis.curriculum_design import final_loss_floor

    runs, _, _ = make_runs(8, 4, 5, 12, 3, method="linear", seed=3)
    fin = np.vstack([r.losses[-1] for r in runs.runs])
    np.testing.assert_array_equal(final_loss_floor(runs), fin.min(axis=0))
    t = [str(runs.test_ids[2]), str(runs.test_ids[0]), "nope"]
    got = final_loss_floor(runs, t)
    np.testing.assert_array_equal(got[:2], fin.min(axis=0)[[2, 0]])
    assert np.isnan(got[2])


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    trust=st.floats(0.0, 1.0),
    method=st.sampled_from(["linear", "additive", "multiplicative"]),
    l2=st.sampled_from([0.001, 0.1, 10.0]),
)
def test_law_design_never_worse_than_its_start_and_inside_the_trust_region(seed, trust, method, l2):
    runs, _, _ = make_runs(16, 4, 5, 12, 3, method="linear", seed=seed % 97)
    sim = Simulator(method, l2=l2).fit(runs)
    rng = np.random.default_rng(seed)
    start = [[f"e{i}" for i in b] for b in random_curricula(np.arange(16), 12, 3, 1, rng)[0]]
    res = design_curriculum(
        sim, start=start, trust=trust, iters=15, candidates=8, n_random=0, seed=seed
    )
    changed = sum(x != y for a, b in zip(res.batches, start) for x, y in zip(a, b))
    assert changed <= int(trust * 36 + 1e-9)
    assert res.objective <= res.start_objective + 1e-12
    assert all(len(set(b)) == len(b) == 3 for b in res.batches)
    assert max(Counter(e for b in res.batches for e in b).values()) <= res.params["max_uses"]


# -- optimizer-aware models: their own adjoint, exact checks from the mid-curriculum state ------


def _oa_fitted(seed=2):
    runs, _, _ = make_runs(30, 6, 6, 24, 3, method="linear", seed=seed, noise=0.0)
    for r in runs.runs:  # a decaying learning-rate schedule: AR term and time basis matter
        r.lr = np.linspace(1.0, 0.4, r.n_steps)
    sim = Simulator("optimizer-aware", l2=0.1, ar=True, time_basis=3, transform="log")
    return runs, sim.fit(runs)


def test_oa_exact_checks_from_the_mid_curriculum_state_equal_full_rollouts():
    """_OAObjective.finals (rolled from the state (y, d) at the first changed step) == the
    model's simulate from step 0; its objective == simulate's."""
    from simfluence_cli.analysis.curriculum_design import _apply, _OAObjective

    runs, sim = _oa_fitted()
    cols = np.arange(len(sim.test_ids_))
    cur = sim.encode([best_run_start(runs)[1]])[0]
    L0 = sim.init_loss_mean_
    lo, hi = sim.bounds_
    pad = np.zeros((1, len(cols)))
    models = [(np.vstack([sim.A_, pad]), np.vstack([sim.B_, pad]))]
    goal = _OAObjective(sim, [], models, [cols], cur, L0, lo, hi)
    traj, obj, S, Sf = goal.evaluate(cur)
    full = sim.simulate(cur[None], L0)[0]
    np.testing.assert_allclose(traj, full, rtol=1e-12)
    assert obj[0] == pytest.approx(full[-1].mean(), rel=1e-12) and Sf is None
    T = cur.shape[0]
    moves = [("r", 9, 0, int(cur[2, 1])), ("s", 12, 1, 20, 2), ("r", 15, 2, int(cur[3, 0]))]
    cands = np.stack([_apply(cur, mv) for mv in moves])
    got = goal.finals(cands, 9)
    want = sim.simulate(cands, L0)[:, -1]
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)
    assert np.abs(want - full[-1]).max() > 1e-6 and S.shape == (T, len(sim.example_ids_))


def test_oa_design_descends_by_ranked_moves_inside_the_trust_region():
    """design with an optimizer-aware model: ranked moves (accepted, counted), never worse
    than the start, inside the trust region, the reported objective is the simulated one;
    fold models' consensus is honoured."""
    runs, sim = _oa_fitted()
    name, start = best_run_start(runs)
    res = design_curriculum(sim, start=start, trust=0.2, iters=20, candidates=16, n_random=5)
    changed = sum(x != y for a, b in zip(res.batches, start) for x, y in zip(a, b))
    assert 0 < changed <= res.params["max_changes"]
    assert res.params["moves_accepted"] >= 1
    assert res.objective < res.start_objective
    assert res.objective == pytest.approx(sim.simulate([res.batches])[0, -1].mean(), rel=1e-12)
    folds = [
        Simulator("optimizer-aware", l2=0.1, ar=True, time_basis=3, transform="log").fit(
            runs.subset([r for j, r in enumerate(runs.run_ids) if j % 3 != f])
        )
        for f in range(3)
    ]
    res2 = design_curriculum(
        sim, start=start, trust=0.2, iters=20, candidates=16, n_random=0, fold_models=folds
    )
    assert res2.params["fold_models"] == 3
    assert res2.objective <= res2.start_objective


def _interrupt_after(rounds: int):
    seen = []

    def progress(k):
        seen.append(k)
        if len(seen) == rounds:
            raise KeyboardInterrupt

    return progress


def test_ctrl_c_keeps_the_best_curriculum_so_far_when_asked():
    runs, _, _ = make_runs(40, 8, 8, 30, 4, method="linear", seed=2, noise=0.0)
    sim = Simulator("linear", l2=0.01).fit(runs)
    kw = dict(seed=1, iters=60, candidates=32, n_random=40)
    res = design_curriculum(sim, 30, progress=_interrupt_after(3), keep_on_interrupt=True, **kw)
    assert res.params["stopped"] == "interrupted"
    assert res.params["moves_accepted"] == 3
    assert res.objective < res.start_objective  # three accepted moves, each an improvement
    assert res.objective == pytest.approx(res.history[-1], rel=1e-12)
    assert res.objective == pytest.approx(sim.simulate([res.batches])[0, -1].mean(), rel=1e-10)
    assert "random_mean" not in res.report()  # no comparison: the user is waiting
    with pytest.raises(KeyboardInterrupt):  # the library default: Ctrl-C raises
        design_curriculum(sim, 30, progress=_interrupt_after(3), **kw)


def test_cli_design_ctrl_c_writes_the_best_so_far_and_exits_130(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import simfluence_cli.analysis.curriculum_design as cd
    from simfluence_cli.cli import app
    from simfluence_cli.store.run_store import RunStore
    from simfluence_cli.store.saved_models import save_model

    runs, _, _ = make_runs(40, 8, 6, 30, 4, method="linear", seed=2, noise=0.001)
    st = RunStore(tmp_path / "store", create=True)
    st.add_runset(runs, tags=["fit"])
    ids = st.select("fit")
    with st.write_lock():
        save_model(
            st, "lin", Simulator("linear", l2=0.01).fit(st.load(ids)), runs=ids,
            data_hash=st.data_hash(ids),
        )  # fmt: skip
    real, calls = cd._adjoint_moves, []

    def moves_then_ctrl_c(*a, **k):  # Ctrl-C in the third round
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cd, "_adjoint_moves", moves_then_ctrl_c)
    out = tmp_path / "designed.txt"
    s = str(tmp_path / "store")
    args = ["design", "--store", s, "-m", "lin", "--no-floor-guard", "-o", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 130, r.stderr
    assert "interrupted after 2 accepted move(s)" in r.stderr and "Traceback" not in r.stderr
    text = out.read_text()
    assert "# stopped: interrupted (Ctrl-C) after 2 move(s)" in text
    assert len(parse_curriculum(text).batches) == 30


def test_design_start_with_repeated_examples_falls_back_with_a_reason():
    """A best fitting run that repeats an example within a batch (a sampler drawing with
    replacement) cannot start design's search (distinct examples per batch): 'auto' says why
    and goes greedy with --steps, or asks for --steps; it used to be a bare usage error."""
    from simfluence_cli.analysis.curriculum_design import resolve_start

    runs, _ = _fitted()
    for r in runs.runs:  # step 2 of every run draws its first example twice
        r.batch_idx = r.batch_idx.copy()
        r.batch_idx[r.batch_ptr[1] + 1] = r.batch_idx[r.batch_ptr[1]]
    rid, _ = best_run_start(runs)
    rid2, cur, note = resolve_start((runs, None), "auto", steps=30)
    assert (
        cur is None
        and f"the best fitting run {rid} repeats an example within a batch (step 2)" in note
    )
    with pytest.raises(UsageError, match="repeats an example .*; give --steps"):
        resolve_start((runs, None), "auto")
    with pytest.raises(UsageError, match="--start best-run: .* repeats .*; use --start greedy"):
        resolve_start((runs, None), "best-run")

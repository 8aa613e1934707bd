"""The library surface: Simulator's estimator protocol, unfitted errors, SimulatorConfig in the
manifest, store.models, and the workflows the CLI calls (fit_model, evaluate_models,
simulate_chunks, resolve_init_loss)."""

import json

import numpy as np
import pytest

import simfluence_cli
from simfluence_cli.analysis.evaluation import evaluate_models
from simfluence_cli.analysis.initial_losses import resolve_init_loss
from simfluence_cli.errors import (
    ConflictError,
    InputError,
    ModelError,
    ModelNotFoundError,
    NotFittedError,
    RunNotFoundError,
    SelectionError,
    UsageError,
)
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.config import FIT_METHODS
from simfluence_cli.model.simulator import (
    DEFAULT_L2_GRID,
    ExecutionOptions,
    Simulator,
    SimulatorConfig,
)
from simfluence_cli.runs import RunSet
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import (
    ModelRegistry,
    fit_model,
    list_models,
    load_model,
    simulate_chunks,
)


@pytest.fixture(scope="module")
def runs():
    return make_runs(10, 5, 6, 12, 2, seed=1, noise=0.01)[0]


@pytest.fixture
def store(tmp_path, runs):
    st = RunStore(tmp_path / "st", create=True)
    st.add_runset(runs.subset(runs.run_ids[:4]), tags=("fit",))
    st.add_runset(runs.subset(runs.run_ids[4:]), tags=("held",))
    return st


# -- estimator protocol ----------------------------------------------------------------------


def test_get_params_set_params_and_repr():
    sim = Simulator()
    assert sim.get_params() == {
        "method": "linear",
        "l2": 1.0,
        "prior": "no-change",
        "clip": "observed",
        "clip_margin": 0.5,
        "cv_folds": 5,
        "l2_grid": DEFAULT_L2_GRID,
        "transform": "auto",  # the optimizer-aware method's choices (CV by default)
        "ar": "auto",
        "time_basis": "auto",
    }
    assert sim.get_params(deep=False) == sim.get_params(deep=True)
    assert repr(sim) == "Simulator()"
    assert sim.set_params(l2="auto", prior="zero") is sim
    assert sim.l2 == "auto" and sim.prior == "zero"
    assert repr(sim) == "Simulator(l2='auto', prior='zero')"
    assert (
        repr(Simulator("additive", l2_grid=list(DEFAULT_L2_GRID))) == "Simulator(method='additive')"
    )
    assert repr(Simulator(l2_grid=np.asarray(DEFAULT_L2_GRID))) == "Simulator()"
    assert repr(Simulator(l2_grid=np.asarray([1.0, 2.0]))) == "Simulator(l2_grid=array([1., 2.]))"
    with pytest.raises(UsageError, match="invalid parameter 'solver'"):
        sim.set_params(solver="cg")  # an execution option, not a model parameter


def test_init_only_stores_and_fit_validates(runs):
    grid = [0.1, 1.0]  # stored as given: the same object (scikit-learn's clone checks this)
    sim = Simulator(method="quadratic", l2_grid=grid)
    assert sim.l2_grid is grid and sim.method == "quadratic"
    with pytest.raises(UsageError, match="quadratic"):
        sim.fit(runs)
    with pytest.raises(UsageError):
        Simulator().fit(runs, workers=0)
    with pytest.raises(UsageError):
        Simulator().fit(runs, execution=ExecutionOptions(solver="lu"))


@pytest.mark.slow
def test_sklearn_clone(runs):
    base = pytest.importorskip("sklearn.base")
    sim = Simulator("multiplicative", l2=0.3, clip="none", l2_grid=[0.1, 1.0]).fit(runs)
    twin = base.clone(sim)
    assert twin is not sim and type(twin) is Simulator
    assert twin.get_params() == sim.get_params()
    assert not hasattr(twin, "A_")  # unfitted
    np.testing.assert_array_equal(twin.fit(runs).A_, sim.A_)


def test_sklearn_check_is_fitted(store):
    """check_is_fitted raised AttributeError ('no attribute __sklearn_tags__') either way."""
    validation = pytest.importorskip("sklearn.utils.validation")
    with pytest.raises(validation.NotFittedError):
        validation.check_is_fitted(Simulator())
    validation.check_is_fitted(Simulator(l2=0.1).fit(store.load("fit")))
    fit_model(store, "lin", Simulator(l2=0.1), "fit")
    validation.check_is_fitted(load_model(store, "lin", parameters=False))  # loaded = fitted


def test_execution_options_do_not_change_the_fit(runs):
    seen = []
    a = Simulator(l2=0.1).fit(runs)
    b = Simulator(l2=0.1).fit(runs, solver="cg", tol=1e-12, progress=seen.append)
    c = Simulator(l2=0.1).fit(runs, execution=ExecutionOptions(solver="direct"))
    np.testing.assert_allclose(b.A_, a.A_, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(c.A_, a.A_)
    assert sum(seen) == runs.n_tests
    assert "solver" not in a.get_params()
    import pickle

    assert pickle.loads(pickle.dumps(b))._exec.progress is None  # not kept after fit


def test_constructor_parameters_are_the_config_fields():
    """A new Simulator parameter must also be a SimulatorConfig field (saved in the manifest)."""
    from dataclasses import fields

    assert list(Simulator().get_params()) == [f.name for f in fields(SimulatorConfig)]
    assert Simulator().config == SimulatorConfig()


def test_config_dataclass_round_trip():
    cfg = SimulatorConfig(method="additive", l2="auto", l2_grid=(0.1, 1.0))
    assert SimulatorConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert Simulator.from_config(cfg).config == cfg
    # manifests written before a key existed read back with its default; extra keys ignored
    assert SimulatorConfig.from_json({"method": "linear", "runs": ["r"]}) == SimulatorConfig()
    assert SimulatorConfig.CHOICES["prior"] == ("no-change", "zero")
    with pytest.raises(UsageError):
        SimulatorConfig(clip="soft").validate()


def test_cli_choices_come_from_the_config():
    from simfluence_cli.cli import fit_cmd

    methods = tuple(m.value for m in fit_cmd.Method)
    assert methods == ("auto", *SimulatorConfig.CHOICES["method"]) == FIT_METHODS
    assert tuple(p.value for p in fit_cmd.Prior) == SimulatorConfig.CHOICES["prior"]
    assert tuple(c.value for c in fit_cmd.Clip) == SimulatorConfig.CHOICES["clip"]


# -- unfitted and parameter-less models --------------------------------------------------------


def _public_calls(sim):
    cur = [[["e0", "e1"]]]
    return {
        "simulate": lambda: sim.simulate(cur),
        "encode": lambda: sim.encode(cur),
        "unseen_ids": lambda: sim.unseen_ids(cur),
        "seen_mask": lambda: sim.seen_mask(),
        "bounds_": lambda: sim.bounds_,
        "with_no_change_example": lambda: sim.with_no_change_example("x"),
    }


def test_unfitted_simulator_raises_not_fitted_error():
    for name, call in _public_calls(Simulator()).items():
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
        assert issubclass(NotFittedError, ModelError), name


def test_parameterless_model_raises_not_fitted_error(store):
    fit_model(store, "lin", Simulator(l2=0.1), "fit")
    meta = load_model(store, "lin", parameters=False)
    calls = _public_calls(meta)
    for name in ("simulate", "with_no_change_example"):
        with pytest.raises(NotFittedError, match="no parameters"):
            calls[name]()
    assert meta.encode([[["e0", "e1"]]]).shape == (1, 1, 2)  # metadata is enough for these
    assert meta.seen_mask().all() and meta.bounds_[0] is not None


def test_runset_repr_is_short(runs):
    r = repr(runs)
    assert r == "RunSet(6 runs, 10 training examples, 5 test examples)"
    assert len(repr(RunSet(runs.example_ids, runs.test_ids, []))) < 80


# -- store.models ------------------------------------------------------------------------------


def test_store_models_mapping(store):
    models = store.models
    assert isinstance(models, ModelRegistry) and list(models) == [] and "lin" not in models
    res = models.fit("lin", Simulator(l2=0.1), runs="fit")
    assert not res.up_to_date and res.simulator.A_ is None  # streamed, not kept
    models.fit("add", Simulator("additive", l2=0.1), runs="fit")
    assert list(models) == ["add", "lin"] and len(models) == 2 and "lin" in models
    assert "../x" not in models and 3 not in models
    lin = models["lin"]
    ref = Simulator(l2=0.1).fit(store.load("fit"))
    np.testing.assert_array_equal(lin.A_, ref.A_)
    (row,) = [m for m in models.list() if m["name"] == "lin"]
    assert row["method"] == "linear" and row["runs"] == 4 and "linear" in row["description"]
    with pytest.raises(KeyError):
        models["nope"]
    del models["add"]
    assert list(models) == ["lin"] and not (store.path / "models" / "add").exists()
    assert not [p for p in (store.path / "models").iterdir() if p.name.startswith(".")]
    with pytest.raises(KeyError):
        del models["add"]
    with pytest.raises(ModelError, match="available: lin"):
        models.delete("add")
    assert [m["name"] for m in list_models(store)] == ["lin"]  # the old function agrees


def test_missing_model_or_run_is_a_documented_error_and_a_key_error(store, runs):
    """A notebook catches a bad name with the documented tree (ModelError / SelectionError),
    while store.models and RunSet still behave as mappings (KeyError, .get)."""
    store.models.fit("lin", Simulator(l2=0.1), runs="fit")
    for call in (lambda: store.models["nope"], lambda: store.models.__delitem__("nope")):
        with pytest.raises(ModelNotFoundError, match="no model named 'nope'.*available: lin") as e:
            call()
        assert isinstance(e.value, ModelError) and isinstance(e.value, KeyError)
        assert str(e.value).startswith("no model named")  # the message, not a quoted repr
    with pytest.raises(ModelError, match="no model named"):
        load_model(store, "nope")
    assert store.models.get("nope") is None
    with pytest.raises(RunNotFoundError, match="no run 'nope' in this RunSet of 6 run") as e:
        runs["nope"]
    assert isinstance(e.value, SelectionError) and isinstance(e.value, KeyError)
    assert simfluence_cli.ModelNotFoundError is ModelNotFoundError
    assert simfluence_cli.RunNotFoundError is RunNotFoundError


def test_a_string_where_a_curriculum_or_batch_belongs_is_a_usage_error(store):
    """Iterating a string would read its characters as example IDs ('unseen e, 0, 1')."""
    sim = Simulator(l2=0.1).fit(store.load("fit"))
    cur = [["e0", "e1"], ["e2", "e3"]]
    assert sim.simulate([cur]).shape == (1, 3, 5)
    for bad, where in ((cur, "'e0' where a batch"), (["e0"], "'e0' where a curriculum")):
        with pytest.raises(
            UsageError, match=f"got the string {where} belongs.*pass \\[curriculum\\]"
        ):
            sim.simulate(bad)
        with pytest.raises(UsageError, match="got the string"):
            sim.encode(bad)


@pytest.mark.slow
def test_delete_respects_another_process_write_lock(store, monkeypatch):
    import subprocess
    import sys

    from simfluence_cli.errors import StoreLockedError

    store.models.fit("lin", Simulator(l2=0.1), runs="fit")
    hold = (
        "import sys, time\nfrom simfluence_cli.store.run_store import RunStore\n"
        "with RunStore(sys.argv[1]).write_lock():\n    print('held', flush=True)\n"
        "    time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(store.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("SIMFLUENCE_LOCK_TIMEOUT", "0.2")
        with pytest.raises(StoreLockedError):
            del store.models["lin"]
        assert "lin" in store.models and store.models["lin"].A_ is not None
    finally:
        holder.kill()
        holder.wait()


# -- workflows ---------------------------------------------------------------------------------


def test_fit_model_up_to_date_conflict_and_replace(store):
    first = fit_model(store, "m", Simulator(l2=0.1), "fit")
    again = fit_model(store, "m", Simulator(l2=0.1), "fit")
    assert again.up_to_date and again.simulator is None
    assert again.manifest["fitted_at"] == first.manifest["fitted_at"]
    with pytest.raises(ConflictError, match="l2: 0.1 -> 0.2"):
        fit_model(store, "m", Simulator(l2=0.2), "fit")
    redone = fit_model(store, "m", Simulator(l2=0.2), "fit", replace=True)
    assert not redone.up_to_date and redone.manifest["config"]["l2"] == 0.2
    assert SimulatorConfig.from_json(redone.manifest["config"]) == SimulatorConfig(l2=0.2)
    with pytest.raises(UsageError):
        fit_model(store, "bad name", Simulator(), "fit")
    with pytest.raises(UsageError):  # validated before the store is read
        fit_model(store, "m2", Simulator(prior="one"), "fit")
    totals = []

    def start(rs):
        totals.append(rs.n_tests)
        return lambda k: totals.append(k)

    fit_model(store, "m3", Simulator(l2=0.1), store.select("fit"), on_start=start)
    assert totals[0] == 5 and sum(totals[1:]) == 5


def test_simulate_chunks_equals_whole_model(store, monkeypatch):
    fit_model(store, "lin", Simulator(l2=0.1), "fit")
    from simfluence_cli.store.saved_models import StoredModel

    whole = load_model(store, "lin")
    cur = [[["e0", "e1"], ["e2", "e3"], ["e4", "e5"]], [["e6", "e7"]]]
    ref = whole.simulate(cur)
    monkeypatch.setenv("SIMFLUENCE_TEST_CHUNK", "2")  # 3 chunks of tests
    got = simulate_chunks(StoredModel(store, "lin"), cur)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(
        simulate_chunks(whole, cur, np.ones(5)), whole.simulate(cur, np.ones(5))
    )
    with pytest.raises(ModelError, match="ghost"):
        simulate_chunks(whole, [[["ghost", "e1"]]])


def test_evaluate_models_leaves_fitting_runs_out(store):
    fit_model(store, "lin", Simulator(l2=0.1), "fit")
    res = evaluate_models(store, ["lin"])
    assert res.run_ids == store.select("held") and res.fitting_runs_evaluated == []
    assert {m.name for m in res.evaluation.results} == {"lin", "constant", "mean-trajectory"}
    assert res.baseline_runs == store.select("fit")
    explicit = evaluate_models(store, ["lin"], "all")
    assert any("left out 4 run(s)" in w for w in explicit.warnings)
    with pytest.raises(SelectionError, match="allow-fitting-runs"):
        evaluate_models(store, ["lin"], "fit")
    insample = evaluate_models(store, ["lin"], "fit", exclude_fitting=False)
    assert insample.fitting_runs_evaluated == store.select("fit")
    assert any("in-sample" in w for w in insample.warnings)
    doc = insample.document(store.path)
    assert doc["allow_fitting_runs"] is True and doc["models"][0]["name"] == "lin"
    with pytest.raises(UsageError):
        evaluate_models(store, ["constant"])


def test_resolve_init_loss(store, tmp_path):
    fit_model(store, "lin", Simulator(l2=0.1), "fit")
    sim = load_model(store, "lin", parameters=False)
    np.testing.assert_array_equal(resolve_init_loss("mean", sim, store), sim.init_loss_mean_)
    rid = store.select("held")[0]
    np.testing.assert_array_equal(
        resolve_init_loss(f"run:{rid}", sim, store), store.load([rid]).runs[0].losses[0]
    )
    with pytest.raises(SelectionError, match="nope"):
        resolve_init_loss("run:nope", sim, store)
    with pytest.raises(SelectionError, match="matches 6 runs"):
        resolve_init_loss("run:*", sim, store)
    f = tmp_path / "init.csv"
    f.write_text("test_id,loss\n" + "".join(f"{t},{k}\n" for k, t in enumerate(sim.test_ids_)))
    np.testing.assert_array_equal(resolve_init_loss(str(f), sim, store), np.arange(5.0))
    f.write_text("test_id,loss\nt0,1\nt0,2\n")
    with pytest.raises(InputError, match="duplicate"):
        resolve_init_loss(str(f), sim, store)


def test_public_names_resolve():
    for name in simfluence_cli.__all__:
        assert getattr(simfluence_cli, name) is not None
    assert simfluence_cli.fit_model is fit_model
    assert simfluence_cli.NotFittedError is NotFittedError


def test_a_string_where_a_list_of_ids_belongs_is_a_usage_error(store):
    """tests='t0' asked for tests 't' and '0'; Edits(drop='e1') dropped 'e' and '1' (nothing:
    a silent no-op)."""
    from simfluence_cli.analysis.whatif import Edits

    sim = Simulator(l2=0.1).fit(store.load("fit"))
    cur = [["e0", "e1"], ["e2", "e3"]]
    assert sim.simulate([cur], tests=["t0"]).shape == (1, 3, 1)
    with pytest.raises(UsageError, match=r"got the string 't0'; pass \['t0'\]"):
        sim.simulate([cur], tests="t0")
    for field in ("drop", "only", "repeat"):
        with pytest.raises(UsageError, match=rf"got the string 'e1'; pass {field}=\['e1'\]"):
            Edits(**{field: "e1"})
    assert Edits(drop=["e1"]).describe()["drop"] == 1


def test_whatif_warns_about_edit_ids_nobody_knows(store):
    """whatif(..., Edits(drop=['e99'])) with a typo'd ID gave change 0 without a word (the CLI
    checks IDs against the store; the library had no check)."""
    from simfluence_cli.analysis.whatif import Edits, whatif
    from simfluence_cli.errors import SimfluenceWarning

    sim = Simulator(l2=0.1).fit(store.load("fit"))
    base = [["e0", "e1"], ["e2", "e3"]]
    with pytest.warns(
        SimfluenceWarning, match="neither the base curriculum nor the model knows: e99"
    ):
        w = whatif(sim, base, Edits(drop=["e1", "e99"]), None)
    assert w.edits["drop"] == 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", SimfluenceWarning)
        whatif(sim, base, Edits(drop=["e9"]), None)  # known to the model, not in base: no warning


def test_public_methods_say_what_they_do():
    """help() in a notebook: every public method and property of the exported classes has a
    docstring (RunStore.run_ids, RunSet.n_tests, ModelRegistry.get, ... had none)."""
    import inspect

    missing = []
    for name in simfluence_cli.__all__:
        cls = getattr(simfluence_cli, name)
        if not inspect.isclass(cls) or issubclass(cls, BaseException | Warning):
            continue
        for attr, member in vars(cls).items():
            if attr.startswith("_") or not (callable(member) or isinstance(member, property)):
                continue
            func = member.__func__ if isinstance(member, classmethod | staticmethod) else member
            if not (inspect.getdoc(func) or "").strip():
                missing.append(f"{name}.{attr}")
    assert not missing, missing


def test_store_models_save_keeps_a_fit_made_in_the_session(store, runs):
    """A simulator fitted in a notebook could be saved only by refitting (store.models.fit) or
    by save_model with a hand-made data hash and lock."""
    sim = Simulator(l2=0.1).fit(store.load("fit"))
    res = store.models.save("mine", sim)
    assert not res.up_to_date and res.manifest["config"]["runs"] == sorted(sim.run_ids_)
    back = store.models["mine"]
    np.testing.assert_array_equal(back.A_, sim.A_)
    refit = store.models.fit("mine", Simulator(l2=0.1), runs="fit")  # same config and data
    assert refit.up_to_date  # save recorded the data hash fit_model computes
    with pytest.raises(ConflictError):
        store.models.save("mine", Simulator(l2=0.5).fit(store.load("fit")))
    import dataclasses

    fit4 = runs.subset(runs.run_ids[:4])  # the same run ids, other content (a copy)
    moved = [dataclasses.replace(fit4.runs[0], losses=fit4.runs[0].losses + 1.0), *fit4.runs[1:]]
    other = RunSet(fit4.example_ids, fit4.test_ids, moved)
    with pytest.raises(ModelError, match="not fitted on the runs"):
        store.models.save("other", Simulator(l2=0.1).fit(other))
    with pytest.raises(NotFittedError):
        store.models.save("x", Simulator())
    assert "other" not in store.models and "x" not in store.models

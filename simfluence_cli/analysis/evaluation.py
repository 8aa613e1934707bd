"""Evaluate simulators on runs: roll each model from every run's observed L_0 through the run's
curriculum and compare with the observed losses (definitions in
:mod:`simfluence_cli.analysis.metrics`).

Works with anything that has the Simulator's ``simulate(idx, init_loss, tests=...)`` interface
(fitted :class:`~simfluence_cli.model.simulator.Simulator`, imported scores, the baselines).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simfluence_cli._repr import summary_repr
from simfluence_cli.analysis.metrics import run_errors, run_errors_from_parts, summarise_runs
from simfluence_cli.errors import ModelError, SelectionError, UsageError
from simfluence_cli.runs import Run, RunSet, stack_index

__all__ = [
    "evaluate",
    "Evaluation",
    "ModelEval",
    "encode_runs",
    "rollout_runs",
    "SUMMARY_COLUMNS",
    "METRIC_HELP",
]

SUMMARY_COLUMNS = [
    "model",
    "all_steps_mse",
    "final_step_mse",
    "final_spearman",
    "final_spearman_std",
    "run_spearman",
    "all_steps_mae",
    "final_step_mae",
    "n_runs",
    "n_tests",
    "on_fitting_runs",
]
RUN_COLUMNS = [
    "model",
    "run",
    "all_steps_mse",
    "final_step_mse",
    "final_spearman",
    "all_steps_mae",
    "final_step_mae",
    "on_fitting_run",
]
TEST_COLUMNS = ["model", "test_id", "all_steps_mse", "final_step_mse", "run_spearman", "n_runs"]

METRIC_HELP = {
    "all_steps_mse": "mean over runs of the mean squared error over test examples and logged steps > 0",
    "final_step_mse": "mean over runs of the squared error at the last logged step",
    "final_spearman": "mean over runs of Spearman's rho across test examples of final losses",
    "final_spearman_std": "std over runs of final_spearman",
    "run_spearman": "mean over test examples of Spearman's rho across runs of final losses "
    "(counterfactual skill; 0 = none)",
    "all_steps_mae": "mean over runs of the mean absolute error over test examples and "
    "logged steps > 0",
    "final_step_mae": "mean over runs of the absolute error at the last logged step",
    "on_fitting_runs": "how many of the evaluated runs the model was fitted on (in-sample)",
}

_ROLL_BYTES = 256 * 2**20


@dataclass
class ModelEval:
    """One model's (or baseline's) results on the evaluated runs."""

    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays

    name: str
    kind: str
    per_run: list[dict]
    summary: dict
    on_fitting_runs: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays
    run_ids: list[str]
    test_ids: np.ndarray
    results: list[ModelEval]
    warnings: list[str] = field(default_factory=list)

    def summary_rows(self) -> list[dict]:
        rows = []
        for me in self.results:
            s = me.summary
            rows.append(
                {
                    "model": me.name,
                    "kind": me.kind,
                    **{
                        k: s[k]
                        for k in (
                            "all_steps_mse",
                            "final_step_mse",
                            "final_spearman",
                            "final_spearman_std",
                            "run_spearman",
                        )
                    },
                    "all_steps_mae": s["mae"],  # the name the per-run rows use
                    "final_step_mae": s["final_step_mae"],
                    "n_runs": s["n_runs"],
                    "n_tests": len(self.test_ids),
                    "on_fitting_runs": len(me.on_fitting_runs),
                }
            )
        return rows

    def run_rows(self) -> list[dict]:
        rows = []
        for me in self.results:
            fit = set(me.on_fitting_runs)
            for r in me.per_run:
                rows.append(
                    {
                        "model": me.name,
                        "run": r["run"],
                        **{k: r[k] for k in RUN_COLUMNS[2:-1]},
                        "on_fitting_run": r["run"] in fit,
                    }
                )
        return rows

    def test_rows(self) -> list[dict]:
        rows = []
        for me in self.results:
            pr = me.per_run
            sse = np.sum([r["sse"] for r in pr], axis=0)
            cnt = np.sum([r["count"] for r in pr], axis=0)
            fe = np.vstack([r["final_sim"] - r["final_obs"] for r in pr])
            with np.errstate(invalid="ignore", divide="ignore"):
                all_mse = sse / cnt
                fin = (
                    np.nanmean(fe**2, axis=0)
                    if np.isfinite(fe).any()
                    else np.full(len(sse), np.nan)
                )
            rs = me.summary["run_spearman_per_test"]
            for j, t in enumerate(self.test_ids):
                rows.append(
                    {
                        "model": me.name,
                        "test_id": str(t),
                        "all_steps_mse": float(all_mse[j]),
                        "final_step_mse": float(fin[j]),
                        "run_spearman": float(rs[j]),
                        "n_runs": len(pr),
                    }
                )
        return rows


def _model_tests(model) -> np.ndarray | None:
    t = getattr(model, "test_ids_", None)
    return None if t is None else np.asarray(t, dtype=object)


def common_tests(
    models: Mapping[str, object], runs: RunSet, tests: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Test ids every model and the runs know (runs' order), and warnings about the rest."""
    notes = []
    have = list(runs.test_ids)
    if tests is not None:
        missing = [t for t in tests if t not in set(have)]
        if missing:
            raise SelectionError(f"the evaluated runs have no test id(s) {', '.join(missing[:10])}")
        have = list(tests)
    keep = have
    for name, m in models.items():
        mt = _model_tests(m)
        if mt is None:
            continue
        s = set(mt.tolist())
        dropped = [t for t in keep if t not in s]
        if dropped:
            if tests is not None:
                raise SelectionError(f"model {name!r} has no test id(s) {', '.join(dropped[:10])}")
            notes.append(
                f"model {name!r} does not know {len(dropped)} of the runs' test examples; "
                "they are left out for every model"
            )
        keep = [t for t in keep if t in s]
    if not keep:
        raise SelectionError("no test example is known to every model and present in the runs")
    return np.asarray(keep, dtype=object), notes


def example_map(model, example_ids: np.ndarray, unseen: str = "error") -> np.ndarray | None:
    """Position in the model of each of ``example_ids`` (-1 skip, n = prior); None for baselines."""
    ex = getattr(model, "example_ids_", None)
    if ex is None:
        return None
    from simfluence_cli.model.simulator import map_examples

    return map_examples(ex, getattr(model, "example_counts_", None), example_ids, unseen)


def encode_runs(
    model,
    runs: RunSet,
    run_list: Sequence[Run],
    unseen: str = "error",
    mapping: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Curricula of ``run_list`` as one padded (C, T, b) index array in the model's index space."""
    mats = [r.index_matrix() for r in run_list]
    idx = stack_index(mats)
    if mapping is not None:
        pad = idx < 0
        idx = np.where(pad, -1, mapping[np.where(pad, 0, idx)])
        if unseen == "error" and (idx == -2).any():
            bad = sorted(
                {str(runs.example_ids[i]) for m in mats for i in m[m >= 0] if mapping[i] == -2}
            )
            raise ModelError(
                f"{len(bad)} training example(s) of the evaluated runs were never seen in the "
                f"model's fitting runs: {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; "
                "choose --unseen prior (no effect beyond the prior) or --unseen skip "
                "(unseen='prior' / 'skip' in Python)"
            )
    return idx, [r.n_steps for r in run_list]


def rollout_runs(
    model,
    runs: RunSet,
    run_list: Sequence[Run],
    tests: np.ndarray,
    test_cols: np.ndarray,
    unseen: str = "error",
    init_fallback=None,
):
    """Yield (run, simulated losses at the run's logged steps (K, M)), chunking runs by memory."""
    mapping = example_map(model, runs.example_ids, unseen)
    M = len(tests)
    T = max((r.n_steps for r in run_list), default=0)
    per = max(1, int(_ROLL_BYTES // max(1, (T + 1) * M * 8)))
    for s in range(0, len(run_list), per):
        chunk = list(run_list[s : s + per])
        idx, lengths = encode_runs(model, runs, chunk, unseen, mapping)
        L0 = np.vstack([r.losses[0, test_cols] for r in chunk])
        if init_fallback is not None and not np.isfinite(L0).all():
            L0 = np.where(np.isfinite(L0), L0, init_fallback)
        if getattr(model, "stateful", False):  # each run's own logged lr (None: the schedule)
            lr = np.full((len(chunk), idx.shape[1]), np.nan)
            for c, r in enumerate(chunk):
                if r.lr is not None:
                    lr[c, : len(r.lr)] = r.lr
            traj = model.simulate(idx, L0, tests=list(tests), lengths=lengths, lr=lr)
        else:
            traj = model.simulate(idx, L0, tests=list(tests), lengths=lengths)
        for c, r in enumerate(chunk):
            yield r, traj[c, r.loss_steps]


def evaluate(
    models: Mapping[str, object],
    runs: RunSet,
    *,
    tests: Sequence[str] | None = None,
    unseen: str = "error",
    fitting_runs: Mapping[str, Sequence[str]] | None = None,
    kinds: Mapping[str, str] | None = None,
) -> Evaluation:
    """Metrics of every model on every run of ``runs``.

    ``fitting_runs``: per model name, the runs it was fitted on (evaluated runs among them are
    flagged). ``kinds``: per model name a label (e.g. 'simfluence', 'baseline').
    """
    if len(runs) == 0:
        raise SelectionError("no runs to evaluate on; check --runs")
    test_ids, notes = common_tests(models, runs, tests)
    pos = {t: j for j, t in enumerate(runs.test_ids)}
    cols = np.asarray([pos[t] for t in test_ids], dtype=np.int64)
    notes = list(notes)
    short = [r.run_id for r in runs.runs if r.loss_steps[-1] != r.n_steps]
    if short:
        notes.append(
            f"{len(short)} run(s) did not log their last step ({', '.join(short[:3])}); "
            "their final-step metrics use the last logged step"
        )
    nan0 = [r.run_id for r in runs.runs if not np.isfinite(r.losses[0, cols]).all()]
    if nan0:
        notes.append(
            f"{len(nan0)} run(s) miss some step-0 losses; those test examples start from "
            "the model's mean initial loss"
        )
    results = []
    for name, model in models.items():
        fallback = getattr(model, "init_loss_mean_", None)
        if fallback is not None and _model_tests(model) is not None:
            mpos = {t: j for j, t in enumerate(_model_tests(model))}
            fallback = np.asarray(fallback)[[mpos[t] for t in test_ids]]
        per_run = _chunked_run_errors(model, runs, test_ids, cols, unseen, fallback)
        summary = summarise_runs(per_run)
        if summary["n_constant_final"]:
            notes.append(
                f"{name}: final-step Spearman undefined (constant losses) on "
                f"{summary['n_constant_final']} run(s); left out of the mean"
            )
        if len(per_run) < 3:
            notes.append(
                f"{name}: run_spearman from {len(per_run)} run(s) is not meaningful; "
                "evaluate on 3 or more runs"
            )
        fit = set((fitting_runs or {}).get(name, ()))
        results.append(
            ModelEval(
                name,
                (kinds or {}).get(name, getattr(model, "method", "")),
                per_run,
                summary,
                [r for r in runs.run_ids if r in fit],
            )
        )
    return Evaluation(list(runs.run_ids), test_ids, results, notes)


def model_chunks(model, tests: np.ndarray):
    """(test ids, model) pieces: a :class:`~simfluence_cli.store.saved_models.StoredModel`
    loads its parameters one chunk of test examples at a time; anything else is one piece."""
    if hasattr(model, "chunks"):
        yield from model.chunks(list(tests))
    else:
        yield list(tests), model


def _chunked_run_errors(
    model, runs: RunSet, test_ids: np.ndarray, cols: np.ndarray, unseen: str, fallback
) -> list[dict]:
    """Per-run errors, rolling the model one chunk of test examples at a time and pooling the
    per-test pieces (sums, counts, final losses), so the metrics equal the unchunked ones."""
    parts: dict[str, list[dict]] = {r.run_id: [] for r in runs.runs}
    s = 0
    for chunk, sim in model_chunks(model, test_ids):
        c = slice(s, s + len(chunk))
        s += len(chunk)
        fb = None if fallback is None else np.asarray(fallback)[c]
        for run, traj in rollout_runs(
            sim, runs, runs.runs, np.asarray(chunk, dtype=object), cols[c], unseen, fb
        ):
            parts[run.run_id].append(run_errors(traj, run.losses[:, cols[c]]))
        sim = traj = None  # free this chunk's parameters before the next one is loaded
    per_run = []
    for run in runs.runs:
        ps = parts[run.run_id]
        e = (
            ps[0]
            if len(ps) == 1
            else run_errors_from_parts(
                *(
                    np.concatenate([p[k] for p in ps])
                    for k in ("sse", "sae", "count", "final_sim", "final_obs")
                )
            )
        )
        e["run"] = run.run_id
        per_run.append(e)
    return per_run


# -- workflow: evaluate stored models on held-out runs of a store ---------------------------------

BASELINE_NAMES = ("constant", "mean-trajectory")


def model_record(sim) -> dict:
    """Provenance of a stored model: name, kind, configuration, penalty, data hash, fit time
    and fitting runs (from its manifest)."""
    man = getattr(sim, "manifest_", {}) or {}
    cfg = man.get("config", {})
    return {
        "name": man.get("name"),
        "kind": cfg.get("kind"),
        "config": cfg,
        "l2": man.get("l2"),
        **(
            {"scale": man.get("scale"), "scale_mode": man.get("scale_mode")}
            if cfg.get("kind") == "tracin-scores"
            else {}
        ),
        "data_hash": cfg.get("data_hash"),
        "fitted_at": man.get("fitted_at"),
        "fitting_runs": list(cfg.get("runs", [])),
    }


@dataclass
class StoreEvaluation:
    """:func:`evaluate_models`'s result: the metrics (``evaluation``) and their provenance.

    ``selection_warnings``: about which runs were evaluated (left-out or in-sample fitting
    runs); ``evaluation.warnings``: about the metrics. ``fitting_runs_evaluated``: evaluated runs
    some model was fitted on (in-sample: optimistic numbers)."""

    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays

    evaluation: Evaluation
    records: list[dict]
    run_ids: list[str]
    baseline_runs: list[str]
    fitting_runs_evaluated: list[str]
    exclude_fitting: bool
    selection_warnings: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return self.selection_warnings + list(self.evaluation.warnings)

    def document(self, store_path, by: str = "summary") -> dict:
        """The JSON document ``simfluence eval --format json`` wraps the rows in."""
        ev = self.evaluation
        return {
            # resolved: --store s and --store /abs/s (or from another directory) give one document
            "store": str(Path(store_path).resolve()),
            "by": by,
            "runs": list(ev.run_ids),
            "n_tests": int(len(ev.test_ids)),
            "allow_fitting_runs": not self.exclude_fitting,
            "fitting_runs_evaluated": self.fitting_runs_evaluated,
            "models": self.records,
            "baselines": {
                "constant": {"definition": "L_t = L_0"},
                "mean-trajectory": {
                    "definition": "per test example, mean over runs of the loss at each step",
                    "runs": list(self.baseline_runs),
                },
            },
            "definitions": METRIC_HELP,
            "warnings": list(ev.warnings),
        }


def evaluate_models(
    store,
    names: Sequence[str],
    runs: str | Sequence[str] | None = None,
    *,
    exclude_fitting: bool = True,
    tests: Sequence[str] | None = None,
    baseline_runs: str | Sequence[str] | None = None,
    unseen: str = "error",
) -> StoreEvaluation:
    """Evaluate stored models ``names`` on runs of ``store``, beside the constant and
    mean-trajectory baselines (what ``simfluence eval`` computes).

    ``runs``: a selector or run ids (None = every run). With ``exclude_fitting`` (the default)
    runs any of the models was fitted on are left out (a SelectionError if none is left);
    ``exclude_fitting=False`` keeps them and flags them (in-sample, optimistic). Parameters are
    loaded one chunk of test examples at a time. ``baseline_runs``: what the mean-trajectory
    baseline averages (default: the first model's fitting runs still in the store).
    """
    from simfluence_cli.model.baselines import ConstantBaseline, MeanTrajectoryBaseline
    from simfluence_cli.store.saved_models import StoredModel

    names = list(names)
    if not names:
        raise UsageError("give at least one model name")
    if len(set(names)) != len(names):
        raise UsageError("each --model may be given once")
    clash = [m for m in names if m in BASELINE_NAMES]
    if clash:
        raise UsageError(f"model name {clash[0]!r} is reserved for a baseline; rename the model")
    sims = {name: StoredModel(store, name) for name in names}  # parameters by test chunk
    records = [model_record(s) for s in sims.values()]
    fit_by_model = {name: set(r["fitting_runs"]) for name, r in zip(names, records)}
    fit_union = set().union(*fit_by_model.values())
    selected = store.select("all" if runs is None else runs)
    overlap = [r for r in selected if r in fit_union]
    notes = []
    if overlap and exclude_fitting:
        eval_ids = [r for r in selected if r not in fit_union]
        if runs is not None:
            notes.append(
                f"left out {len(overlap)} run(s) a model was fitted on; pass "
                "--allow-fitting-runs to include them"
            )
        if not eval_ids:
            raise SelectionError(
                f"all {len(selected)} selected run(s) were used to fit "
                f"{'the model' if len(names) == 1 else 'the models'}; ingest held-out runs and "
                "select them with --runs, or pass --allow-fitting-runs (in-sample, optimistic)"
            )
    else:
        eval_ids = selected
    if not exclude_fitting and overlap:
        notes.append(
            f"evaluating on {len(overlap)} run(s) a model was fitted on: in-sample, optimistic"
        )
    rs = store.load(eval_ids)
    if baseline_runs is not None:
        base_ids = store.select(baseline_runs)
    else:
        have = set(store.select("all"))
        base_ids = next(
            (
                [r for r in rec["fitting_runs"] if r in have]
                for rec in records
                if any(r in have for r in rec["fitting_runs"])
            ),
            [],
        )
        if not base_ids:
            raise SelectionError(
                "no model has fitting runs in the store for the mean-trajectory "
                "baseline; pass --baseline-runs SELECTOR"
            )
    mean_traj = MeanTrajectoryBaseline().fit(store.load(base_ids))
    all_models = {**sims, "constant": ConstantBaseline(), "mean-trajectory": mean_traj}
    kinds = {name: r["kind"] or "simfluence" for name, r in zip(names, records)}
    kinds.update({"constant": "baseline", "mean-trajectory": "baseline"})
    fitting = {name: sorted(fit_by_model[name]) for name in names}
    fitting["mean-trajectory"] = list(base_ids)
    ev = evaluate(
        all_models,
        rs,
        tests=None if tests is None else list(tests),
        unseen=unseen,
        fitting_runs=fitting,
        kinds=kinds,
    )
    return StoreEvaluation(
        ev,
        records,
        list(eval_ids),
        list(base_ids),
        sorted(set(eval_ids) & fit_union),
        exclude_fitting,
        notes,
    )

"""``simfluence eval``, ``import-scores``, ``top`` and ``plot``: thin wrappers over
:mod:`simfluence_cli.analysis.evaluation`, :mod:`~simfluence_cli.model.external_scores`,
:mod:`~simfluence_cli.analysis.effects` and :mod:`~simfluence_cli.analysis.plots`."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from simfluence_cli.cli._app import (
    DEFAULT_STORE,
    StoreOpt,
    Unseen,
    UnseenOpt,
    command,
    info,
    open_store,
    show_progress,
    stderr_console,
    warn,
    wrote,
)
from simfluence_cli.cli._intervals import IntervalOpt, calibration_for, novelty_warning
from simfluence_cli.cli._output import Format, FormatOpt, OutputOpt, render_rows, resolve_format
from simfluence_cli.errors import InputError, SelectionError, UsageError


class MatrixLayout(str, Enum):
    test_by_train = "test-by-train"
    train_by_test = "train-by-test"


class By(str, Enum):
    summary = "summary"
    run = "run"
    test = "test"


class Measure(str, Enum):
    removal = "removal"
    coefficient = "coefficient"


class ScaleOn(str, Enum):
    step = "step"
    cumulative = "cumulative"


def _present(store, ids: list[str]) -> list[str]:
    have = set(store.select("all"))
    return [r for r in ids if r in have]


@command("eval")
def eval_command(
    model: Annotated[
        list[str], typer.Option("--model", "-m", help="Model name (repeat to compare several).")
    ],
    store: StoreOpt = DEFAULT_STORE,
    runs: Annotated[
        str | None,
        typer.Option(
            "--runs",
            "-r",
            help="Runs to evaluate on (selector). Default: every run in the store that "
            "none of the models was fitted on.",
        ),
    ] = None,
    allow_fitting_runs: Annotated[
        bool,
        typer.Option(
            "--allow-fitting-runs",
            help="Also evaluate on runs a model was fitted on (flagged in the "
            "output; in-sample numbers are optimistic).",
        ),
    ] = False,
    by: Annotated[
        By,
        typer.Option(
            "--by",
            help="summary: one row per model; run: per model and "
            "run; test: per model and test example.",
        ),
    ] = By.summary,
    tests: Annotated[
        str | None,
        typer.Option(
            "--tests",
            "-t",
            help="Only these test examples: a,b,c or @FILE (default: all the models know).",
        ),
    ] = None,
    baseline_runs: Annotated[
        str | None,
        typer.Option(
            "--baseline-runs",
            help="Runs the mean-trajectory baseline averages (default: the first "
            "model's fitting runs).",
        ),
    ] = None,
    unseen: UnseenOpt = Unseen.error,
    interval: IntervalOpt = None,
    fmt: FormatOpt = None,
    output: OutputOpt = "-",
) -> None:
    """Evaluate models against held-out runs, beside the constant and mean-trajectory baselines.

    With --interval 0.9: coverage_all / coverage_final = share of the real held-out losses
    (all logged steps > 0 / last step) inside the model's 90% prediction interval (target 0.9),
    width_all / width_final = mean interval width (docs/intervals.md).

    Each model is rolled from every run's observed step-0 loss through the run's curriculum.
    Metrics: all_steps_mse (test examples x logged steps > 0), final_step_mse, final_spearman
    (across test examples, mean and std over runs), run_spearman (per test example across runs,
    averaged: counterfactual skill, 0 = none), all_steps_mae. Lower MSE/MAE and higher Spearman are better.
    """
    from simfluence_cli.analysis.evaluation import (
        RUN_COLUMNS,
        SUMMARY_COLUMNS,
        TEST_COLUMNS,
        evaluate_models,
    )
    from simfluence_cli.io.curriculum import read_id_list

    out_fmt = resolve_format(fmt, output)
    st = open_store(store)
    res = evaluate_models(
        st,
        model,
        runs,
        exclude_fitting=not allow_fitting_runs,
        tests=read_id_list(tests, "test ids") if tests else None,
        baseline_runs=baseline_runs,
        unseen=unseen.value,
    )
    for note in res.warnings:
        warn(note)
    ev, records, base_ids = res.evaluation, res.records, res.baseline_runs
    evaluated_fit = res.fitting_runs_evaluated
    document = res.document(st.path, by.value)
    cov = {}
    if interval is not None:
        from simfluence_cli.analysis.whatif import run_batches

        rs = st.load(list(ev.run_ids))
        said: set[str] = set()
        for name in model:
            try:
                _, cal = calibration_for(st, name, interval)
            except SelectionError as exc:  # e.g. imported scores: nothing to refit
                warn(f"no interval for model {name!r}: {exc}")
                continue
            novelty_warning(cal, [run_batches(rs, r) for r in rs.run_ids], "evaluated run", said)
            cov[name] = cal.coverage(rs, interval, tests=list(ev.test_ids), unseen=unseen.value)
    if by is By.summary:
        rows, cols = ev.summary_rows(), ["model", "kind"] + SUMMARY_COLUMNS[1:]
    elif by is By.run:
        rows, cols = ev.run_rows(), RUN_COLUMNS
    else:
        rows, cols = ev.test_rows(), TEST_COLUMNS
    if cov and by is not By.test:
        rows = _with_coverage(rows, cov, by)
        cols = cols + list(COVERAGE_COLUMNS)
        document["interval"] = {"level": interval, "definitions": COVERAGE_HELP}
    elif cov:
        warn("--interval coverage is reported with --by summary or --by run")
    flag = " [INCLUDES FITTING RUNS: in-sample]" if evaluated_fit else ""
    title = f"simfluence eval: {len(ev.run_ids)} run(s), {len(ev.test_ids)} test examples{flag}"
    if out_fmt is Format.table and by is By.summary:
        if output != "-":
            raise UsageError(
                "--format table prints to the terminal; use csv/json/jsonl/parquet with -o"
            )
        _summary_table(rows, title, bool(evaluated_fit))
        if cov:
            render_rows(
                [r for r in rows if r["model"] in cov],
                ["model", *COVERAGE_COLUMNS],
                out_fmt,
                output,
                title=f"{100 * interval:g}% prediction intervals on the same runs "
                f"(target coverage {interval:g})",
                column_help=COVERAGE_HELP,
            )
    else:
        if out_fmt is Format.table:
            cols = [c for c in cols if c not in ("kind", "all_steps_mae", "final_step_mae")]
        render_rows(rows, cols, out_fmt, output, title=title, document=document)
    if out_fmt is not Format.json:
        _provenance(records, ev, base_ids, evaluated_fit)


COVERAGE_COLUMNS = ("coverage_all", "coverage_final", "width_all", "width_final")
COVERAGE_HELP = {
    "coverage_all": "share of real losses (test examples x logged steps > 0) inside the "
    "prediction interval, mean over runs (target: the --interval level)",
    "coverage_final": "the same at the last logged step",
    "width_all": "mean width of the interval over test examples and steps",
    "width_final": "mean width at the last logged step",
}


def _with_coverage(rows: list[dict], cov: dict, by) -> list[dict]:
    """Rows with the coverage columns (None for models without intervals, e.g. baselines)."""
    import numpy as np

    out = []
    for r in rows:
        per = cov.get(r["model"])
        if per is None:
            vals = dict.fromkeys(COVERAGE_COLUMNS)
        elif by is By.summary:
            vals = {c: float(np.nanmean([p[c] for p in per])) for c in COVERAGE_COLUMNS}
        else:
            p = next(p for p in per if p["run"] == r["run"])
            vals = {c: p[c] for c in COVERAGE_COLUMNS}
        out.append({**r, **vals})
    return out


def _g(v, digits: int = 4) -> str:
    import numpy as np

    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:#.{digits}g}".rstrip(".") if isinstance(v, float) else str(v)


def _summary_table(rows: list[dict], title: str, in_sample: bool) -> None:
    """The eval summary as a terminal table (lower MSE/MAE, higher Spearman = better); the
    columns are named as in csv/json (final_spearman shows its std over runs after ±)."""
    import numpy as np

    from simfluence_cli.cli._app import stdout_console
    from simfluence_cli.cli._output import build_table

    cols = ["model", "all_steps_mse", "final_step_mse", "final_spearman", "run_spearman"]
    cols += ["all_steps_mae"] + (["on_fitting_runs"] if in_sample else [])
    cells = []
    for r in rows:
        sp = _g(r["final_spearman"], 3) + (
            f" ± {_g(r['final_spearman_std'], 2)}"
            if r["final_spearman_std"] is not None and np.isfinite(r["final_spearman_std"])
            else ""
        )
        cells.append(
            [
                r["model"],
                _g(r["all_steps_mse"]),
                _g(r["final_step_mse"]),
                sp,
                _g(r["run_spearman"], 3),
                _g(r["all_steps_mae"]),
            ]
            + ([str(r["on_fitting_runs"])] if in_sample else [])
        )
    caption = (
        "all_steps: over test examples and logged steps > 0; final_spearman: across test "
        "examples, mean ± std over runs; run_spearman: per test example across runs, averaged "
        "(counterfactual skill, 0 = none). Means over runs."
        + (" on_fitting_runs: evaluated runs the model was fitted on." if in_sample else "")
    )
    numeric = set(range(1, len(cols)))
    stdout_console().print(build_table(cols, cells, numeric, title=title, caption=caption))
    sys.stdout.flush()


def _provenance(records, ev, base_ids, evaluated_fit) -> None:
    ids = ev.run_ids
    shown = ", ".join(ids[:6]) + (f", ... ({len(ids)} in all)" if len(ids) > 6 else "")
    info(f"evaluated on run(s): {shown}")
    for r in records:
        cfg = r["config"]
        info(
            f"model {r['name']}: kind={r['kind']} method={cfg.get('method')} "
            + (
                f"scale={r['scale']:.6g} ({r.get('scale_mode')}) "
                if r["kind"] == "tracin-scores" and r.get("scale") is not None
                else f"l2={r['l2']} "
            )
            + f"data_hash={r['data_hash']} fitted_at={r['fitted_at']} "
            f"fitting runs={len(r['fitting_runs'])}"
        )
    info(f"mean-trajectory baseline from {len(base_ids)} run(s)")
    if evaluated_fit:
        warn(
            f"{len(evaluated_fit)} evaluated run(s) were fitting runs: {', '.join(evaluated_fit[:6])}"
        )


KIND = "tracin-scores"


def _import_scores(st, read_table, name, run_ids, runs, data_hash, identity, replace) -> dict:
    """Read (``read_table()``), scale and save a score table as an additive model.

    Reads the table and a snapshot of the runs and fits the scale WITHOUT the write lock;
    takes it only to commit, after checking that the runs are still what was read and that no
    other command saved model ``name`` meanwhile (saved_models.check_snapshot,
    check_model_unchanged). Returns the manifest (with ``_up_to_date`` when a model with this
    very configuration was saved meanwhile and is kept)."""
    from simfluence_cli.store import _staging
    from simfluence_cli.store.saved_models import model_state

    before = model_state(st, name)
    probe = _staging.new_entry(st.path, "import")  # a read-only store fails before any work
    _staging.remove(probe)
    rs = st.load(run_ids) if run_ids else None
    if rs is not None:
        data_hash = rs.source.data_hash  # of exactly the runs read
    return _import_computed(
        st, read_table, name, rs, run_ids, runs, data_hash, identity, replace, before
    )


def _import_computed(st, read_table, name, rs, run_ids, runs, data_hash, identity, replace, before):
    from simfluence_cli.model.external_scores import fit_scale, scores_simulator
    from simfluence_cli.store.saved_models import (
        check_model_unchanged,
        check_snapshot,
        model_config,
        save_model,
    )

    request = identity["import"]
    table = read_table()
    fit_info = None
    if request["scale"] == "fit":
        sim0 = scores_simulator(table, 1.0, rs)
        fit_info = fit_scale(
            -sim0.B_, sim0.example_ids_, sim0.test_ids_, rs, on=request["scale_on"]
        )
        value = fit_info["scale"]
        if value <= 0:
            warn(
                f"the fitted scale is {value:.4g} <= 0: the scores predict loss changes with the "
                "wrong sign on these runs"
            )
    elif request["scale"] == "none":
        value = 1.0
    else:
        value = float(request["scale"])
    sim = scores_simulator(table, value, rs)
    extra = {
        **identity,
        "scale": value,
        "scale_mode": request["scale"] if request["scale"] in ("fit", "none") else "given",
        "scale_on": request["scale_on"],
        "scale_fit": fit_info,
        "score_rows": table.n_rows,
        "missing_pairs": table.n_missing,
        "score_convention": "score = predicted decrease of the test loss from one update "
        "containing the example; B = -scale * score",
    }
    with st.write_lock():
        if rs is not None:
            check_snapshot(st, name, dict(rs.source.pins), "import")
        config = model_config(sim, run_ids, data_hash, KIND, extra)
        same = check_model_unchanged(st, name, before, config, replace, "import")
        if same is not None:
            return {**same, "_up_to_date": True}
        man = save_model(
            st,
            name,
            sim,
            runs=run_ids,
            data_hash=data_hash,
            selector=runs,
            kind=KIND,
            replace=replace,
            extra=extra,
        )
    info(
        f"saved model {name!r}: additive, B = -{value:.6g} * score, {len(sim.test_ids_)} test "
        f"examples x {len(sim.example_ids_)} training examples ({table.n_missing} pair(s) missing "
        "from the table: score 0)"
    )
    return man


@command("import-scores")
def import_scores_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="Table with columns test_id,example_id,score (.csv, .csv.gz or .parquet), or "
            "a score matrix (.npy, .pt, .safetensors) with --test-ids and --train-ids."
        ),
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the model to create.")],
    test_ids_file: Annotated[
        str | None,
        typer.Option(
            "--test-ids",
            help="For a matrix: the test IDs in matrix order, one per line (or a JSON list); "
            "'-' = stdin.",
        ),
    ] = None,
    train_ids_file: Annotated[
        str | None,
        typer.Option(
            "--train-ids",
            help="For a matrix: the training example IDs in matrix order, one per line (or a "
            "JSON list); '-' = stdin.",
        ),
    ] = None,
    layout: Annotated[
        MatrixLayout,
        typer.Option(
            "--layout",
            help="For a matrix: test-by-train = rows are test examples (Captum TracInCP, "
            "Kronfluence); train-by-test = rows are training examples (TRAK, dattri).",
        ),
    ] = MatrixLayout.test_by_train,
    key: Annotated[
        str | None,
        typer.Option("--key", help="For a .pt/.safetensors file holding several tensors: which."),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    scale: Annotated[
        str,
        typer.Option(
            "--scale",
            metavar="[fit|none|NUMBER]",
            help="Multiply scores by this before use: 'fit' (one least-squares factor on "
            "the --runs loss changes, recorded), 'none' (= 1) or a number.",
        ),
    ] = "fit",
    scale_on: Annotated[
        ScaleOn,
        typer.Option(
            "--scale-on",
            help="What --scale fit explains: 'step' = loss changes between consecutive "
            "logged steps, 'cumulative' = changes from step 0.",
        ),
    ] = ScaleOn.step,
    runs: Annotated[
        str | None,
        typer.Option(
            "--runs",
            "-r",
            help="Fitting runs (selector): for --scale fit, the observed loss range "
            "(clipping) and the eval default of leaving them out.",
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite a model of that name.")
    ] = False,
    fmt: FormatOpt = None,
    output: OutputOpt = "-",
) -> None:
    """Turn TracIn-style scores into an additive simulator: B_i = -scale * score_i.

    score = predicted decrease of the test loss from one update containing the example
    (positive = helpful), so a positive score lowers the simulated loss. Negate scores that
    measure the increase of the loss (see docs/tda-libraries.md for each library's sign).
    """
    import numpy as np

    from simfluence_cli._hashing import file_sha256
    from simfluence_cli.io.score_files import is_matrix_file, read_id_list
    from simfluence_cli.model.external_scores import scores_base
    from simfluence_cli.store.saved_models import check_existing, check_name, model_config

    check_name(name)
    out_fmt = resolve_format(fmt, output)
    if scale == "fit":
        if runs is None:
            raise UsageError(
                "--scale fit needs the fitting runs: add --runs SELECTOR (e.g. --runs fit)"
            )
    elif scale != "none":
        try:
            value = float(scale)
        except ValueError:
            raise UsageError(f"--scale must be 'fit', 'none' or a number, got {scale!r}") from None
        if not np.isfinite(value):
            raise UsageError("--scale must be finite")
    matrix = None
    if is_matrix_file(file):
        if test_ids_file is None or train_ids_file is None:
            raise UsageError(
                f"{file.name} is a score matrix: give its IDs with --test-ids FILE and "
                "--train-ids FILE (one ID per line, in row/column order)"
            )
        if test_ids_file == "-" and train_ids_file == "-":
            raise UsageError("only one of --test-ids / --train-ids can read stdin ('-')")
        from simfluence_cli._hashing import sha256_hex

        tids = read_id_list(test_ids_file, "test ids")
        eids = read_id_list(train_ids_file, "training example ids")
        ids_sha = sha256_hex("\n".join([*tids, "", *eids]))
        matrix = {"layout": layout.value, "key": key, "ids_sha256": ids_sha}
    elif test_ids_file is not None or train_ids_file is not None or key is not None:
        raise UsageError(
            "--test-ids/--train-ids/--key are for score matrices (.npy, .pt, "
            ".safetensors); a table names its IDs in its test_id,example_id columns"
        )
    st = open_store(store)
    run_ids = st.select(runs) if runs is not None else []
    try:
        source_sha = file_sha256(file)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=str(file)) from None
    data_hash = st.data_hash(run_ids) if run_ids else f"scores-sha256:{source_sha}"
    request = {
        "scale": scale if scale in ("fit", "none") else value,
        "scale_on": scale_on.value if scale == "fit" else None,
    }
    identity = {"source": str(file), "source_sha256": source_sha, "import": request}
    if matrix is not None:
        identity["matrix"] = matrix

    def read_table():
        from simfluence_cli.io.score_files import read_score_matrix, read_scores

        if matrix is None:
            return read_scores(file)
        return read_score_matrix(file, tids, eids, layout=layout.value, key=key)

    config = model_config(scores_base(bool(run_ids)), run_ids, data_hash, KIND, identity)
    prev = check_existing(st, name, config, replace=replace)  # no lock: only the commit takes it
    if prev is None:
        man = _import_scores(st, read_table, name, run_ids, runs, data_hash, identity, replace)
        prev = man if man.get("_up_to_date") else None
    if prev is not None:
        info(
            f"model {name!r} is up to date (same score file, options and runs, imported "
            f"{prev.get('fitted_at')}); pass --replace to import again"
        )
        man = prev
    sim_scale = man.get("scale")
    fit_info = man.get("scale_fit") or {}
    row = {
        "name": name,
        "kind": KIND,
        "scale": sim_scale,
        "scale_mode": man.get("scale_mode"),
        "scale_r2": fit_info.get("r2"),
        "n_tests": man.get("n_tests"),
        "n_examples": man.get("n_examples"),
        "rows": man.get("score_rows"),
        "missing_pairs": man.get("missing_pairs"),
        "fitting_runs": len(run_ids),
    }
    if out_fmt is Format.table:  # one record: print it vertically
        render_rows(
            [{"field": k, "value": v} for k, v in row.items()],
            ["field", "value"],
            out_fmt,
            output,
            title="imported scores",
        )
    else:
        render_rows([row], list(row), out_fmt, output, title="imported scores")


@command("top")
def top_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")],
    test: Annotated[
        str,
        typer.Option(
            "--tests",
            "--test",
            "-t",
            help="Test example id, a,b,c / @FILE (averaged), or 'all' (mean over all "
            "test examples; the default). --test is the same option.",
        ),
    ] = "all",
    store: StoreOpt = DEFAULT_STORE,
    k: Annotated[
        int, typer.Option("--k", "-k", help="How many helpful and harmful examples.")
    ] = 20,
    measure: Annotated[
        Measure,
        typer.Option(
            "--measure",
            help="removal (default): simulated final loss without the example (its slot "
            "filled by a neutral no-change example) minus with it, mean over the "
            "fitting curricula; coefficient: one-step predicted loss decrease per "
            "occurrence. Both: positive = helpful.",
        ),
    ] = Measure.removal,
    runs: Annotated[
        str | None,
        typer.Option(
            "--runs",
            "-r",
            help="Curricula for --measure removal (default: the model's fitting runs).",
        ),
    ] = None,
    interval: IntervalOpt = None,
    fmt: FormatOpt = None,
    output: OutputOpt = "-",
) -> None:
    """The most helpful and most harmful training examples for a test example (or on average).

    With --interval 0.9 (--measure removal): lo_90, hi_90 = a 90% interval for the real
    effect of removing the example from one curriculum like the fitting runs (conservative for
    the mean over many; docs/intervals.md). 0 inside = the sign is not resolved.

    Sign: positive = helpful (the example lowers the test loss); the column header says which
    measure. Rows: direction (helpful = largest values, harmful = smallest), rank, example_id,
    value, occurrences (in the fitting curricula).
    """
    import numpy as np

    from simfluence_cli.analysis.effects import (
        MEASURE_HELP,
        mean_effect,
        removal_curricula,
        top_examples,
    )
    from simfluence_cli.analysis.evaluation import model_record
    from simfluence_cli.io.curriculum import read_id_list
    from simfluence_cli.store.saved_models import StoredModel

    if k < 1:
        raise UsageError("--k must be at least 1")
    out_fmt = resolve_format(fmt, output)
    st = open_store(store)
    tests = None if test == "all" else read_id_list(test, "test ids")
    sim = StoredModel(st, model)  # parameters loaded one chunk of test examples at a time
    if tests is not None:
        sim._test_columns(tests)  # validates, SelectionError on unknown ids
    only = None
    if measure is Measure.removal:
        ids = st.select(runs) if runs is not None else _present(st, list(sim.run_ids_))
        if not ids:
            raise SelectionError(
                f"model {model!r} has no fitting runs in the store to take examples "
                "out of; pass --runs SELECTOR or --measure coefficient"
            )
        rs = removal_curricula(st, ids)
        progress, finish = _progress("removal effects", show_progress())
        per_example = mean_effect(sim, "removal", tests, rs, progress=progress)
        finish()
        value_name = "removal_effect"
        only = np.asarray(sim.example_counts_) > 0
    else:
        per_example = mean_effect(sim, "coefficient", tests)
        value_name = "step_effect"
    rows = top_examples(
        per_example,
        sim.example_ids_,
        k,
        value_name,
        counts=np.asarray(sim.example_counts_),
        only=only,
    )
    what = (
        "all test examples (mean)"
        if tests is None
        else (f"test {tests[0]}" if len(tests) == 1 else f"{len(tests)} test examples (mean)")
    )
    for r in rows:
        r["test"] = "all" if tests is None else ",".join(tests)
    cols = ["direction", "rank", "example_id", value_name, "occurrences", "test"]
    extra_help = {}
    if interval is not None:
        if measure is not Measure.removal:
            raise UsageError("--interval needs --measure removal")
        from simfluence_cli.analysis.intervals import interval_columns

        _, cal = calibration_for(st, model, interval)
        lo, hi = cal.removal(rs, [r["example_id"] for r in rows], interval, tests=tests)
        c_lo, c_hi = interval_columns(interval)
        for r, a, b in zip(rows, lo, hi):
            r[c_lo], r[c_hi] = float(a), float(b)
        cols[4:4] = [c_lo, c_hi]
        unresolved = int(np.sum((lo <= 0) & (hi >= 0)))
        info(
            f"{unresolved} of {len(rows)} listed effect(s) have a {100 * interval:g}% interval "
            "that includes 0 (sign not resolved by the simulator)"
        )
        extra_help = {
            c_lo: f"lower end of the {100 * interval:g}% interval for the real removal effect",
            c_hi: f"upper end of the {100 * interval:g}% interval (0 inside = sign unknown)",
        }
    if out_fmt is Format.table:
        cols = cols[:-1]
    help_text = {value_name: MEASURE_HELP[measure.value].split(" = ", 1)[1], **extra_help}
    render_rows(
        rows,
        cols,
        out_fmt,
        output,
        title=f"top {k} for {what}, model {model}",
        column_help=help_text,
        document={
            "model": model,
            "test": test,
            "measure": measure.value,
            "definition": MEASURE_HELP[measure.value],
            "model_manifest": model_record(sim),
        },
    )


def _progress(label: str, enabled: bool):
    from simfluence_cli.cli._progress import fraction_bar

    return fraction_bar(label, enabled, stderr_console)


@command("plot")
def plot_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")],
    run: Annotated[str, typer.Option("--run", help="Run id to replay (its curriculum and L_0).")],
    store: StoreOpt = DEFAULT_STORE,
    tests: Annotated[
        str | None,
        typer.Option(
            "--tests",
            "-t",
            help="Test examples a,b,c or @FILE (default: 4 spread over the test ids).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write a .png/.svg/.pdf (needs the 'plot' extra). Without it: a "
            "terminal quick look.",
        ),
    ] = None,
    width: Annotated[int, typer.Option("--width", help="Terminal chart width in characters.")] = 60,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline/--no-baseline", help="Also draw the mean-trajectory baseline (file plots)."
        ),
    ] = True,
) -> None:
    """Observed vs simulated loss trajectories of one run for a few test examples."""
    from simfluence_cli.analysis.plots import pick_tests, plot_file, sparklines, trajectories
    from simfluence_cli.io.curriculum import read_id_list
    from simfluence_cli.store.saved_models import load_model

    st = open_store(store)
    sim = load_model(st, model)
    rs = st.load([run]) if run in set(st.select("all")) else None
    if rs is None:
        raise SelectionError(f"no run {run!r} in {st.path}; list runs with `simfluence info`")
    chosen = pick_tests(rs, sim, read_id_list(tests, "test ids") if tests else None)
    tr = trajectories(sim, model, rs, run, chosen)
    if output is None:
        typer.echo(sparklines(tr, width), nl=False)
        return
    extra = None
    fit_ids = _present(st, list(sim.run_ids_))
    if baseline and fit_ids:
        from simfluence_cli.model.baselines import MeanTrajectoryBaseline

        mt = MeanTrajectoryBaseline().fit(st.load(fit_ids))
        extra = {"mean-trajectory": trajectories(mt, "mean-trajectory", rs, run, chosen).simulated}
    plot_file(tr, output, extra)
    wrote(output)

"""`simfluence fit`, `simfluence simulate` and `simfluence curriculum`: thin layers over the core."""

from __future__ import annotations

import io
import math
import sys
from dataclasses import replace as replace_field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from simfluence_cli.cli._app import (
    DEFAULT_STORE,
    RunsOpt,
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
from simfluence_cli.cli._intervals import (
    IntervalOpt,
    calibration_for,
    novelty_warning,
    save_calibration_for,
)
from simfluence_cli.cli._output import (
    Format,
    FormatOpt,
    OutputOpt,
    emit_text,
    render_object,
    render_rows,
    resolve_format,
)
from simfluence_cli.errors import InputError, ModelError, SelectionError, UsageError
from simfluence_cli.model.config import FIT_METHODS, SOLVERS, SimulatorConfig, resolve_method

# The library (numpy, scipy, pyarrow) is imported inside the commands, so that
# `simfluence --help` and option errors stay fast (see docs/speed.md).
if TYPE_CHECKING:
    import numpy as np


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typer choice enum whose values are the library's own tuple (no re-declared list)."""
    return Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


Method = _choices("Method", FIT_METHODS)
Prior = _choices("Prior", SimulatorConfig.CHOICES["prior"])
Clip = _choices("Clip", SimulatorConfig.CHOICES["clip"])
Solver = _choices("Solver", SOLVERS)


LOSS_HELP = {
    "step": "training step (0 = the initial loss, before any update)",
    "test_id": "test example",
    "loss": "simulated loss of test_id after training on steps 1..step",
}


def _why_not_optimizer_aware(store, run_ids) -> str:
    """The note saying why ``--method auto`` fell back to linear: runs without a loss at every step."""
    ids = set(run_ids)
    sparse = [e for e in store.runs() if e["run"] in ids and e["loss_steps"] != e["steps"] + 1]
    e = sparse[0]
    return (
        f"note: method auto is linear here: {len(sparse)} of {len(ids)} fitting run(s) log test "
        f"losses at only some steps (e.g. {e['run']}: {e['loss_steps']} of {e['steps'] + 1}); the "
        "optimizer-aware method needs a loss after every step (log with eval_every=1)"
    )


def _parse_l2(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"--l2 must be a number >= 0 or 'auto', got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise UsageError(f"--l2 must be a finite number >= 0, got {text!r}")
    return v


class _Progress:
    """A rich progress bar over test examples (only when show_progress())."""

    def __init__(self, total: float | None, label: str):
        self.bar, self.label, self.entered = None, label, False
        if total is not None:
            self.start(total)

    def start(self, total: float) -> None:
        if show_progress() and self.bar is None:
            from simfluence_cli.cli._progress import new_progress

            self.bar = new_progress(stderr_console())
            self.task = self.bar.add_task(self.label, total=total)
            if self.entered:
                self.bar.__enter__()

    def __enter__(self):
        self.entered = True
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __call__(self, k: float) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, k)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


@command("fit")
def fit(
    store: StoreOpt = DEFAULT_STORE,
    runs: RunsOpt = "all",
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            help="auto (default): optimizer-aware when every fitting run logs its test losses "
            "after every step, else linear (the model records the method it resolved to); "
            "linear: the paper's L_t = alpha(c_t) L_{t-1} + beta(c_t) with alpha = sum of A_i, "
            "beta = sum of "
            "B_i over the batch; additive: alpha fixed at 1 (fits B); multiplicative: beta "
            "fixed at 0 (fits A); optimizer-aware: dL_t = w_t * sum_i (a_i L_{t-1} + B_i) + "
            "rho dL_{t-1} + drift(t) on a transformed loss, w_t = lr_t/lr_ref * b_ref/|c_t| "
            "(logged lr; batch mean), rho = optimizer memory, drift = per-test time basis; "
            "choices by CV (see --transform, --ar, --time-basis; docs/optimizer-aware.md).",
        ),
    ] = Method.auto,
    transform: Annotated[
        str,
        typer.Option(
            "--transform",
            help="optimizer-aware only: loss transform the model works on: identity | log | "
            "logodds (log(e^L - 1)) | auto (chosen by CV grouped by run).",
        ),
    ] = "auto",
    ar: Annotated[
        str,
        typer.Option(
            "--ar",
            help="optimizer-aware only: autoregressive term rho * (previous loss increment), "
            "one rho per test (momentum-like memory): on | off | auto (CV).",
        ),
    ] = "auto",
    time_basis: Annotated[
        str,
        typer.Option(
            "--time-basis",
            help="optimizer-aware only: number of hat functions of the step absorbing the "
            "drift shared by all curricula (0 = none), or auto: CV between 0 and 8 when the "
            "fitting runs' logged lr varies (a schedule), else 0.",
        ),
    ] = "auto",
    l2: Annotated[
        str,
        typer.Option(
            "--l2",
            metavar="[auto|NUMBER]",
            help="Ridge penalty l2 * ||theta - prior||^2 (a number >= 0), or 'auto': picked "
            "from 1e-3..1e3 by 5-fold cross-validation grouped by run (whole runs held "
            "out) on held-out rollout MSE; the choice and the CV curve are saved.",
        ),
    ] = "auto",
    prior: Annotated[
        Prior,
        typer.Option(
            "--prior",
            help="What the penalty shrinks toward: no-change (A_i = 1/batch, B_i = 0: a "
            "batch leaves the loss unchanged) or zero (A = B = 0).",
        ),
    ] = Prior.no_change,
    clip: Annotated[
        Clip,
        typer.Option(
            "--clip",
            help="Rollout safeguard: observed = clamp every simulated loss to the test "
            "example's loss range in the fitting runs, widened by half the range on "
            "each side and never below 0; none = raw recurrence (may diverge).",
        ),
    ] = Clip.observed,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", "-n", help="Model name in the store (default: the method, auto resolved)."
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Overwrite a model of this name fitted with a different "
            "configuration or data; with the same one, refit anyway.",
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the model manifest as JSON on stdout.")
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="Also compute and save the calibration --interval uses (8 refits at the "
            "chosen l2; same as `simfluence calibrate --model NAME` afterwards).",
        ),
    ] = False,
    solver: Annotated[
        Solver,
        typer.Option(
            "--solver",
            help="auto: exact dense solve when a test example has <= 64 parameters "
            "(2 x training examples for linear), preconditioned conjugate gradient "
            "(relative residual 1e-10) above; direct | cg force one. Both give the "
            "same parameters to 1e-6.",
        ),
    ] = Solver.auto,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Local processes to shard the fit over (by test example); "
            "results are identical to --workers 1.",
        ),
    ] = 1,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            help="Shard the fit over an existing Dask cluster (scheduler address, e.g. "
            "tcp://host:8786); its workers read this store's path, so it must be on "
            "a shared file system. One model is written here. Needs the "
            "simfluence-cli[dask] extra (pip install 'simfluence-cli[dask]').",
        ),
    ] = None,
) -> None:
    """Fit a Simfluence simulator on runs of the store and save it under a name.

    Per test example z, fits A_i(z), B_i(z) for every training example i by ridge least squares
    on one-step predictions (closed form). Same name, configuration and data as an existing
    model: nothing to do ("up to date"); a different configuration needs --replace.
    """
    import numpy as np

    from simfluence_cli.model.simulator import ExecutionOptions, Simulator
    from simfluence_cli.store.saved_models import check_name, fit_model, resolve_fit_method

    if name is not None:
        check_name(name)
    requested = method.value
    if requested == "auto" and any(v != "auto" for v in (transform, ar, time_basis)):
        requested = "optimizer-aware"  # an optimizer-aware option given: that method
    sim = Simulator(
        method=requested,
        l2=_parse_l2(l2),
        prior=prior.value,
        clip=clip.value,
        **_oa_options(requested, transform, ar, time_basis),
    )
    execution = ExecutionOptions(solver=solver.value, workers=workers, dask=dask)
    replace_field(sim.config, method=resolve_method(requested)).validate()  # usage: exit 2
    execution.validate()
    st = open_store(store)
    selected = st.select(runs)
    chosen = resolve_fit_method(st, requested, selected)
    if requested == "auto" and chosen != "optimizer-aware":
        info(_why_not_optimizer_aware(st, selected))
    sim.set_params(method=chosen)  # resolved once: fit_model sees the method, not "auto"
    name = check_name(name or chosen)
    with _Progress(None, "fitting") as bar:

        def start(rs):
            total = sim.progress_total(rs)  # twice the tests when the fit cross-validates
            what = "choices" if chosen == "optimizer-aware" else "l2"
            info(
                f"fitting {chosen} on {len(rs)} run(s): {rs.n_examples} training x "
                f"{rs.n_tests} test examples"
                + (f" ({what} by cross-validation)" if total > rs.n_tests else "")
            )
            bar.start(total)
            return bar

        res = fit_model(st, name, sim, runs, replace=replace, execution=execution, on_start=start)
    if res.up_to_date:
        info(
            f"model {name!r} is up to date (same configuration and data, fitted "
            f"{res.manifest.get('fitted_at')}); pass --replace to refit"
        )
        if calibrate:
            save_calibration_for(st, name)
        if json_out:
            render_object(res.manifest)
        return
    man, ids = res.manifest, res.run_ids
    how = (
        "chosen by CV"
        if sim.cv_curve_ and sim.l2 == "auto"
        else "fallback: --l2 auto could not cross-validate with 1 run"
        if sim.l2 == "auto"
        else "given"
    )
    info(
        f"saved model {name!r}: {chosen}{' (method auto)' if requested == 'auto' else ''}, l2={sim.l2_:g} ({how}), prior {prior.value}, "
        f"clip {clip.value}; {len(ids)} run(s), {res.n_examples} examples x {res.n_tests} tests, "
        f"{sim.fit_seconds_:.2f} s -> {Path(st.path) / 'models' / name}"
    )
    if sim.method == "optimizer-aware":
        c = sim.config_
        s = sim.schedule_
        lr = "varies" if s.lr_varies() else "not logged" if s.lr_by_step is None else "constant"
        info(
            f"optimizer-aware choices: transform {c.transform}, AR {'on' if c.ar else 'off'}"
            f" (median rho {float(np.median(sim.ar_)) if c.ar else 0.0:.3f}), time basis "
            f"{c.n_basis}, l2 {c.l2:g}; lr {lr} (auto offers the time basis only under a schedule)"
        )
    elif sim.cv_curve_:
        info(
            "CV rollout MSE by l2: "
            + ", ".join(
                f"{c['l2']:g}: " + ("diverged" if c["cv_mse"] is None else f"{c['cv_mse']:.4g}")
                for c in sim.cv_curve_
            )
        )
        grid = [c["l2"] for c in sim.cv_curve_]
        if len(grid) > 1 and sim.l2_ in (min(grid), max(grid)):
            warn(
                f"the chosen l2={sim.l2_:g} is at the edge of the searched range "
                f"{min(grid):g}..{max(grid):g}; a value beyond it may fit better: try --l2 X"
            )
    if calibrate:
        save_calibration_for(st, name)
    if json_out:
        render_object(man)


def _oa_options(method: str, transform: str, ar: str, time_basis: str) -> dict:
    given = {"--transform": transform, "--ar": ar, "--time-basis": time_basis}
    if method not in ("optimizer-aware", "auto"):
        bad = [k for k, v in given.items() if v != "auto"]
        if bad:
            raise UsageError(f"{', '.join(bad)} only apply to --method optimizer-aware")
        return {}
    if ar not in ("auto", "on", "off"):
        raise UsageError(f"--ar must be on, off or auto, got {ar!r}")
    tb: int | str = time_basis
    if time_basis != "auto":
        try:
            tb = int(time_basis)
        except ValueError:
            raise UsageError(
                f"--time-basis must be an integer >= 0 or auto, got {time_basis!r}"
            ) from None
    return {
        "transform": transform,
        "ar": {"on": True, "off": False}.get(ar, "auto"),
        "time_basis": tb,
    }


def _default_model(st) -> str:
    from simfluence_cli.store.saved_models import list_models

    names = [m["name"] for m in list_models(st)]
    if len(names) == 1:
        return names[0]
    raise UsageError(
        "pass --model NAME; "
        + (
            f"models in {st.path}: {', '.join(names)}"
            if names
            else f"no models in {st.path}: run `simfluence fit`"
        )
    )


def _where(cur, ids) -> str:
    locs = cur.locate(set(ids))
    shown = ", ".join(f"{e} (line {ln})" for e, ln in locs[:10])
    return shown + (f" and {len(locs) - 10} more" if len(locs) > 10 else "")


def _check_ids(cur, sim, st, unseen: str, prefix: str = "") -> None:
    from simfluence_cli.store.example_ids import check_known_ids

    missing = sim.unseen_ids([cur.batches])
    if not missing:
        return
    check_known_ids(
        st,
        [(cur.source, missing)],
        known=sim.example_ids_,
        where=lambda ids: _where(cur, ids),
        path=cur.source,
    )
    if unseen == "error":
        raise ModelError(
            f"{cur.source}: {len(missing)} training example(s) the model has no "
            f"parameters for (not in its fitting runs): {_where(cur, missing)}; "
            "pass --unseen prior (they act as the shrink target: no change) or "
            "--unseen skip (drop them from their batch), or refit on runs that "
            "contain them"
        )
    warn(
        f"{prefix}{len(missing)} example(s) without fitted parameters, handled by --unseen {unseen}: "
        f"{_where(cur, missing)}"
    )


@command("simulate")
def simulate(
    curriculum: Annotated[
        list[str],
        typer.Argument(
            help="Curriculum text files ('-' = stdin): one line per training step with the "
            "batch's example IDs separated by whitespace; blank lines and '#' comments are "
            "ignored. Several files, directories (their *.txt files) or a stream of several "
            "curricula (each after a '# NAME: ...' header line, as `simfluence plan` prints) are "
            "simulated in one batched rollout, with a curriculum column (the file's stem or the "
            "header's NAME).",
        ),
    ],
    store: StoreOpt = DEFAULT_STORE,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Fitted model name (default: the store's only model)."),
    ] = None,
    tests: Annotated[
        str | None,
        typer.Option(
            "--tests",
            "-t",
            help="Test example IDs to simulate: 'a,b,c' or @FILE (default: all of the model's).",
        ),
    ] = None,
    init_loss: Annotated[
        str,
        typer.Option(
            "--init-loss",
            help="Step-0 losses: mean (mean over the fitting runs), run:RUN (that "
            "run's step-0 losses) or FILE (CSV test_id,loss); the same for every curriculum, "
            "unless it holds {curriculum}, replaced by each curriculum's name (e.g. "
            "'run:{curriculum}' for curricula named after runs).",
        ),
    ] = "mean",
    unseen: UnseenOpt = Unseen.error,
    interval: IntervalOpt = None,
    name_column: Annotated[
        bool,
        typer.Option(
            "--name-column",
            help="Add the curriculum column also for a single curriculum (several always have it).",
        ),
    ] = False,
    fmt: FormatOpt = None,
    output: OutputOpt = "-",
) -> None:
    """Simulate the loss of every test example along a curriculum (long form: step,test_id,loss).

    With --interval 0.9 also lo_90, hi_90: a 90% prediction interval for the real loss at that
    step (CV+ over folds of the fitting runs; docs/intervals.md).

    Rolls L_t = alpha(c_t) L_{t-1} + beta(c_t) forward from step 0 (the initial loss) with a
    fitted model; losses are clamped by the model's --clip safeguard.

    Several curricula (simulate a.txt b.txt, simulate DIR, simfluence plan | simulate -): one
    batched rollout, long form curriculum,step,test_id,loss (each curriculum's own steps).
    """
    import numpy as np

    from simfluence_cli.analysis.initial_losses import resolve_init_loss
    from simfluence_cli.io.curriculum import read_curricula, read_id_list
    from simfluence_cli.store.saved_models import StoredModel, simulate_chunks

    explicit = fmt is not None
    fmt = resolve_format(fmt, output)
    curs = read_curricula(curriculum)
    st = open_store(store)
    name = model or _default_model(st)
    test_ids = read_id_list(tests, "test IDs") if tests else None
    sim = StoredModel(st, name, tests=test_ids)  # parameters loaded one test chunk at a time
    if len(curs) > 1 or name_column:
        _simulate_many(
            curs, sim, st, name, init_loss, unseen.value, interval, fmt, explicit, output
        )
        return
    cur = curs[0]
    _check_ids(cur, sim, st, unseen.value)
    L0 = resolve_init_loss(init_loss.replace("{curriculum}", cur.name or ""), sim, st)
    for msg in _batch_warnings(cur, sim):
        warn(msg)
    traj = simulate_chunks(sim, [cur.batches], L0, unseen=unseen.value)[0]  # (T+1, M)
    lo, hi = sim.bounds_
    clamped = 0 if lo is None else int(np.sum((traj[1:] <= lo) | (traj[1:] >= hi)))
    info(
        f"simulated {len(cur)} step(s) x {traj.shape[1]} test(s) with model {name!r} "
        f"({sim.method}, clip {sim.clip}"
        + (f": {clamped} value(s) at a bound" if lo is not None else "")
        + ")"
    )
    extra = {}
    if interval is not None:
        from simfluence_cli.analysis.intervals import interval_columns

        _, cal = calibration_for(st, name, interval)
        novelty_warning(cal, [cur.batches])
        lo_b, hi_b = cal.trajectory(
            [cur.batches], L0, interval, tests=list(sim.test_ids_), unseen=unseen.value
        )
        c_lo, c_hi = interval_columns(interval)
        extra = {c_lo: lo_b[0], c_hi: hi_b[0]}
    if fmt is Format.table and not explicit and output == "-" and len(traj) > 2 * HEAD_STEPS:
        # a terminal without -f: the first and last steps, not T x M rows
        keep = np.r_[0:HEAD_STEPS, len(traj) - HEAD_STEPS : len(traj)]
        tests = [str(t) for t in sim.test_ids_]
        rows = [
            {"step": int(t), **dict(zip(tests[:SHOWN_TESTS], traj[t, :SHOWN_TESTS].tolist()))}
            for t in keep
        ]
        render_rows(
            rows,
            ["step", *tests[:SHOWN_TESTS]],
            fmt,
            title=f"simulated loss ({name}): first and last {HEAD_STEPS} of {len(traj)} steps"
            + (f", {SHOWN_TESTS} of {len(tests)} tests" if len(tests) > SHOWN_TESTS else ""),
        )
        info(
            f"summary of {len(traj) * len(tests):,} rows; all of them: -f csv|json|parquet "
            "or -o FILE (-f table prints them all)"
        )
        return
    _write_long(
        traj, list(sim.test_ids_), fmt, output, title=f"simulated loss ({name})", extra=extra
    )


def _batch_warnings(cur, sim) -> list[str]:
    """The batch-size warnings of one curriculum (varying sizes, or one size unlike the fit's)."""
    from simfluence_cli.model.diagnostics import batch_size_warning

    out = []
    varying = not sim.normalises_batch_size and batch_size_warning(
        [[len(b) for b in cur.batches]], cur.source
    )
    if varying:
        out.append(varying)
    sizes = {len(b) for b in cur.batches}
    if (
        sim.method != "additive"  # additive: alpha = 1 whatever the batch size
        and not sim.normalises_batch_size
        and len(sizes) == 1
        and sizes != {int(round(sim.batch_size_))}
    ):
        out.append(
            f"curriculum batch sizes {sorted(sizes)} differ from the fitting runs' "
            f"({sim.batch_size_:g}): alpha is a sum over the batch, so other sizes scale it"
        )
    return out


def _simulate_many(curs, sim, st, name, init_loss, unseen, interval, fmt, explicit, output):
    """`simulate` of several curricula: one batched rollout per memory-sized group of them,
    written as long form with a leading curriculum column."""
    import numpy as np

    from simfluence_cli.analysis.initial_losses import resolve_init_loss
    from simfluence_cli.store.saved_models import simulate_groups

    seen_warnings: set[str] = set()
    for cur in curs:
        _check_ids(cur, sim, st, unseen, prefix=f"{cur.name}: ")
        for msg in _batch_warnings(cur, sim):
            if msg not in seen_warnings:
                seen_warnings.add(msg)
                warn(f"{cur.name}: {msg}")
    M = len(sim.test_ids_)
    if "{curriculum}" in init_loss:  # one step-0 loss vector per curriculum
        L0 = np.stack(
            [resolve_init_loss(init_loss.replace("{curriculum}", c.name), sim, st) for c in curs]
        )
    else:
        L0 = resolve_init_loss(init_loss, sim, st)
    L0 = np.broadcast_to(np.asarray(L0, dtype=np.float64), (len(curs), M))
    cal = cols = None
    if interval is not None:
        from simfluence_cli.analysis.intervals import interval_columns

        _, cal = calibration_for(st, name, interval)
        novelty_warning(cal, [c.batches for c in curs])
        cols = interval_columns(interval)
    lo, hi = sim.bounds_
    clamped = [0]

    def rolled():
        """(curriculum, its (T+1, M) trajectory, extra columns) in input order."""
        arrays = 1 if cal is None else 3
        for g, traj in simulate_groups(sim, curs, L0, unseen=unseen, arrays=arrays):
            if cal is not None:
                batches = [curs[i].batches for i in g]
                lo_b, hi_b = cal.trajectory(
                    batches,
                    L0[g.start : g.stop],
                    interval,
                    tests=list(sim.test_ids_),
                    unseen=unseen,
                )
            for k, i in enumerate(g):
                T1 = len(curs[i]) + 1  # its own steps, not the group's NaN padding
                t = traj[k, :T1]
                if lo is not None:
                    clamped[0] += int(np.sum((t[1:] <= lo) | (t[1:] >= hi)))
                extra = {} if cal is None else {cols[0]: lo_b[k, :T1], cols[1]: hi_b[k, :T1]}
                yield curs[i], t, extra

    def summary():
        info(
            f"simulated {len(curs)} curricula ({sum(len(c) for c in curs):,} steps) x {M} "
            f"test(s) with model {name!r} ({sim.method}, clip {sim.clip}"
            + (f": {clamped[0]} value(s) at a bound" if lo is not None else "")
            + ")"
        )

    advance, stop = _curricula_bar(len(curs))
    tests = [str(t) for t in sim.test_ids_]
    try:
        if fmt is Format.table and not explicit and output == "-":
            # a terminal without -f: one row per curriculum (its final losses), not C x T x M
            rows = []
            for cur, t, _ in rolled():
                rows.append(
                    {"curriculum": cur.name, "steps": len(cur), "mean final": float(np.mean(t[-1]))}
                    | dict(zip(tests[:SHOWN_TESTS], t[-1, :SHOWN_TESTS].tolist()))
                )
                advance()
            stop()
            render_rows(
                rows,
                ["curriculum", "steps", "mean final", *tests[:SHOWN_TESTS]],
                fmt,
                title=f"simulated final loss ({name}): {len(curs)} curricula"
                + (f", {SHOWN_TESTS} of {len(tests)} tests" if len(tests) > SHOWN_TESTS else ""),
            )
            summary()
            info(
                f"summary of {sum(len(c) + 1 for c in curs) * M:,} rows; all of them: "
                "-f csv|json|parquet or -o FILE (-f table prints them all)"
            )
            return
        _write_long_many(rolled(), [c.name for c in curs], tests, fmt, output, cols, advance, stop)
    finally:
        stop()
    summary()


def _curricula_bar(total: int):
    """(advance(), stop()) of a progress bar over curricula (stderr, on a terminal only)."""
    from simfluence_cli.cli._progress import fraction_bar

    step, stop = fraction_bar("simulating curricula", show_progress(), stderr_console)
    if step is None:
        return (lambda: None), stop
    return (lambda: step(1.0 / total)), stop


def _long_helps(interval_cols) -> dict[str, str]:
    """Meanings of the long-form columns: step, test_id, loss and interval bounds (lo_90, ...)."""
    helps = dict(LOSS_HELP)
    for c in interval_cols:
        pct = c.split("_", 1)[1].replace("_", ".")
        helps[c] = (
            f"{'lower' if c.startswith('lo') else 'upper'} end of the {pct}% prediction "
            "interval for the real loss (CV+ over the fitting runs)"
        )
    return helps


def _write_long_many(
    rolled, curriculum_names, tests, fmt, output, interval_cols, advance, stop
) -> None:
    """Long form curriculum,step,test_id,loss[,lo,hi] of ``rolled`` ((curriculum, (T+1, M)
    trajectory, extra) items); CSV and Parquet streamed one curriculum at a time."""
    import numpy as np
    import pyarrow as pa

    from simfluence_cli.io._arrow import arrow_numbers, arrow_strings

    extra_names = list(interval_cols or ())
    names = ["curriculum", "step", "test_id", "loss", *extra_names]
    helps = {"curriculum": "the curriculum (file stem or header name)"} | _long_helps(extra_names)
    M = len(tests)
    test_dict = arrow_strings(tests)
    name_dict = arrow_strings(curriculum_names)
    name_code = {n: k for k, n in enumerate(curriculum_names)}

    def table(cur, traj, extra):
        """One curriculum's rows; curriculum and test_id dictionary-encoded (as Parquet keeps
        them; CSV casts them to strings)."""
        T1 = traj.shape[0]
        codes = np.tile(np.arange(M, dtype=np.int32), T1)
        which = np.full(T1 * M, name_code[cur.name], dtype=np.int32)
        return pa.Table.from_arrays(
            [
                pa.DictionaryArray.from_arrays(arrow_numbers(which), name_dict),
                arrow_numbers(np.repeat(np.arange(T1, dtype=np.int64), M)),
                pa.DictionaryArray.from_arrays(arrow_numbers(codes), test_dict),
                arrow_numbers(traj.reshape(-1)),
            ]
            + [arrow_numbers(np.ascontiguousarray(v).reshape(-1)) for v in extra.values()],
            names=names,
        )

    as_strings = pa.schema(
        [("curriculum", pa.string()), ("step", pa.int64()), ("test_id", pa.string())]
        + [(c, pa.float64()) for c in names[3:]]
    )

    special = set(',"\r\n')
    if fmt is Format.parquet:
        import json

        import pyarrow.parquet as pq

        from simfluence_cli._atomic import write_atomic
        from simfluence_cli.cli._app import provenance

        if output == "-" and sys.stdout.isatty():
            raise UsageError("refusing to write binary Parquet to a terminal; use -o FILE.parquet")
        meta = {
            b"simfluence.columns": json.dumps(helps).encode(),
            b"simfluence.provenance": json.dumps(provenance()).encode(),
        }

        def write(fh):
            writer = None
            for item in rolled:
                t = table(*item)
                if writer is None:
                    writer = pq.ParquetWriter(fh, t.schema.with_metadata(meta))
                writer.write_table(t)
                advance()
            writer.close()

        if output == "-":
            buf = io.BytesIO()
            write(buf)
            stop()
            sys.stdout.buffer.write(buf.getvalue())
            sys.stdout.flush()
        else:
            write_atomic(output, write)
            stop()
            wrote(output)
        return
    if fmt is Format.csv and not any(set(t) & special for t in tests + curriculum_names):
        import pyarrow.csv as pcsv

        def write(fh):
            fh.write((",".join(names) + "\n").encode())
            options = pcsv.WriteOptions(include_header=False, quoting_style="none")
            for item in rolled:  # one curriculum at a time, written as one block (like one)
                buf = io.BytesIO()
                pcsv.write_csv(table(*item).cast(as_strings), buf, options)
                fh.write(buf.getvalue())
                advance()

        if output == "-":
            try:
                write(sys.stdout.buffer)
                sys.stdout.flush()
            except BrokenPipeError:  # the reader stopped (`| head`): end quietly, as one does
                import os

                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        else:
            from simfluence_cli._atomic import write_atomic

            write_atomic(output, write)
            stop()
            wrote(output)
        return
    rows = []
    for cur, traj, extra in rolled:  # json/jsonl/table: rows built from flat arrays
        T1 = traj.shape[0]
        steps, loss = np.repeat(np.arange(T1), M).tolist(), traj.reshape(-1).tolist()
        flat = {k: np.ascontiguousarray(v).reshape(-1).tolist() for k, v in extra.items()}
        rows += [
            {"curriculum": cur.name, "step": steps[i], "test_id": tests[i % M], "loss": loss[i]}
            | {k: a[i] for k, a in flat.items()}
            for i in range(T1 * M)
        ]
        advance()
    stop()
    render_rows(rows, names, fmt, output, title="simulated loss", column_help=helps)


HEAD_STEPS = 3  # steps shown at each end by `simulate` on a terminal without -f
SHOWN_TESTS = 5  # tests shown there (one column each)


def _write_long(
    traj: np.ndarray, tests: list[str], fmt: Format, output: str, title: str, extra=None
) -> None:
    """Long form (step, test_id, loss[, extra columns]), step-major; CSV and Parquet are
    written vectorised. ``extra``: column name -> (T+1, M) array (e.g. interval bounds)."""
    import numpy as np
    import pyarrow as pa

    extra = dict(extra or {})
    helps = _long_helps(extra)
    names = ["step", "test_id", "loss", *extra]

    T1, M = traj.shape
    step = np.repeat(np.arange(T1, dtype=np.int64), M)
    codes = np.tile(np.arange(M, dtype=np.int32), T1)
    loss = traj.reshape(-1)
    if fmt in (Format.csv, Format.parquet):
        from simfluence_cli.io._arrow import arrow_numbers, arrow_strings  # no pandas import

        tid = pa.DictionaryArray.from_arrays(arrow_numbers(codes), arrow_strings(tests))
        table = pa.Table.from_arrays(
            [arrow_numbers(step), tid, arrow_numbers(loss)]
            + [arrow_numbers(v.reshape(-1)) for v in extra.values()],
            names=names,
        )
        if fmt is Format.parquet:
            import json

            import pyarrow.parquet as pq

            from simfluence_cli._atomic import write_atomic
            from simfluence_cli.cli._app import provenance

            table = table.replace_schema_metadata(
                {
                    b"simfluence.columns": json.dumps(helps).encode(),
                    b"simfluence.provenance": json.dumps(provenance()).encode(),
                }
            )
            if output == "-":
                if sys.stdout.isatty():
                    raise UsageError(
                        "refusing to write binary Parquet to a terminal; use -o FILE.parquet"
                    )
                buf = io.BytesIO()
                pq.write_table(table, buf)
                sys.stdout.buffer.write(buf.getvalue())
                sys.stdout.flush()
            else:
                write_atomic(output, lambda fh: pq.write_table(table, fh))
                wrote(output)
            return
        if not any(set(t) & set(',"\r\n') for t in tests):
            import pyarrow.csv as pcsv

            buf = io.BytesIO()
            buf.write((",".join(names) + "\n").encode())
            pcsv.write_csv(
                table.cast(
                    pa.schema(
                        [("step", pa.int64()), ("test_id", pa.string())]
                        + [(c, pa.float64()) for c in names[2:]]
                    )
                ),
                buf,
                pcsv.WriteOptions(include_header=False, quoting_style="none"),
            )
            data = buf.getvalue()
            if output == "-":
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            else:
                from simfluence_cli._atomic import write_bytes_atomic

                write_bytes_atomic(output, data)
                wrote(output)
            return
    flat = {c: v.reshape(-1) for c, v in extra.items()}
    rows = [
        {"step": int(s), "test_id": tests[c], "loss": float(v)}
        | {k: float(a[i]) for k, a in flat.items()}
        for i, (s, c, v) in enumerate(zip(step, codes, loss))
    ]
    render_rows(rows, names, fmt, output, title=title, column_help=helps)


@command("curriculum")
def curriculum(
    run: Annotated[str, typer.Argument(help="Run id (or a selector matching exactly one run).")],
    store: StoreOpt = DEFAULT_STORE,
    output: OutputOpt = "-",
) -> None:
    """Print a run's curriculum in the text format `simfluence simulate` reads.

    One line per training step with the batch's example IDs; a leading '#' comment names the run.
    """
    st = open_store(store)
    ids = [run] if run in st.run_ids() else st.select(run)
    if len(ids) != 1:
        raise SelectionError(
            f"{run!r} matches {len(ids)} runs ({', '.join(ids[:5])}...); give one run id"
        )
    rs = st.load([ids[0]])
    r = rs.runs[0]
    ex = rs.example_ids
    bad = [e for e in ex if any(c.isspace() for c in e) or "#" in e]
    if bad:  # they would be split or cut when the file is read back
        raise InputError(
            f"run {ids[0]!r} has example IDs the curriculum text format cannot hold "
            f"(whitespace or '#'): {', '.join(map(repr, bad[:5]))}",
            hint="read its curriculum from the store's Parquet files instead",
        )
    lines = [f"# curriculum of run {ids[0]}: {r.n_steps} steps (line k+1 = step k)"]
    lines += [" ".join(ex[r.batch(t)]) for t in range(1, r.n_steps + 1)]
    emit_text("\n".join(lines) + "\n", output)

"""`simfluence fit`, `simfluence simulate` and `simfluence curriculum`: thin layers over the core."""

from __future__ import annotations

import csv
import io
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from simfluence_cli.cli._app import (
    DEFAULT_STORE,
    RunsOpt,
    StoreOpt,
    Unseen,
    UnseenOpt,
    command,
    info,
    show_progress,
    stderr_console,
    warn,
)
from simfluence_cli.cli._output import (
    Format,
    FormatOpt,
    OutputOpt,
    render_object,
    render_rows,
    resolve_format,
)
from simfluence_cli.errors import InputError, ModelError, SelectionError, UsageError


class Method(str, Enum):
    linear = "linear"
    additive = "additive"
    multiplicative = "multiplicative"
    optimizer_aware = "optimizer-aware"


class Prior(str, Enum):
    no_change = "no-change"
    zero = "zero"


class Clip(str, Enum):
    observed = "observed"
    none = "none"


class Solver(str, Enum):
    auto = "auto"
    direct = "direct"
    cg = "cg"


LOSS_HELP = {
    "step": "training step (0 = the initial loss, before any update)",
    "test_id": "test example",
    "loss": "simulated loss of test_id after training on steps 1..step",
}


def _open_store(path: Path):
    from simfluence_cli.store.run_store import RunStore

    return RunStore(path)


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

    def __init__(self, total: float, label: str):
        self.bar = None
        if show_progress():
            from rich.progress import Progress

            self.bar = Progress(console=stderr_console(), transient=True)
            self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
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
            help="linear: L_t = alpha(c_t) L_{t-1} + beta(c_t) with alpha = sum of A_i, beta = sum of "
            "B_i over the batch; additive: alpha fixed at 1 (fits B); multiplicative: beta "
            "fixed at 0 (fits A); optimizer-aware: dL_t = w_t * sum_i (a_i L_{t-1} + B_i) + "
            "rho dL_{t-1} + drift(t) on a transformed loss, w_t = lr_t/lr_ref * b_ref/|c_t| "
            "(logged lr; batch mean), rho = optimizer memory, drift = per-test time basis; "
            "choices by CV (see --transform, --ar, --time-basis; docs/optimizer-aware.md).",
        ),
    ] = Method.linear,
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
            "drift shared by all curricula (0 = none), or auto (CV between 0 and 8).",
        ),
    ] = "auto",
    l2: Annotated[
        str,
        typer.Option(
            "--l2",
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
        typer.Option("--name", "-n", help="Model name in the store (default: the method)."),
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
    solver: Annotated[
        Solver,
        typer.Option(
            "--solver",
            help="auto: exact dense solve when a test example has <= 400 parameters "
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
            "simfluence[dask] extra.",
        ),
    ] = None,
) -> None:
    """Fit a Simfluence simulator on runs of the store and save it under a name.

    Per test example z, fits A_i(z), B_i(z) for every training example i by ridge least squares
    on one-step predictions (closed form). Same name, configuration and data as an existing
    model: nothing to do ("up to date"); a different configuration needs --replace.
    """
    from simfluence_cli.model.simulator import Simulator
    from simfluence_cli.store.saved_models import (
        ParameterWriter,
        check_existing,
        check_name,
        model_config,
        save_model,
    )

    name = check_name(name or method.value)
    # options first: a malformed option is a usage error (exit 2) whatever the store holds
    sim = Simulator(
        method=method.value,
        l2=_parse_l2(l2),
        prior=prior.value,
        clip=clip.value,
        solver=solver.value,
        workers=workers,
        dask=dask,
        **_oa_options(method.value, transform, ar, time_basis),
    )
    st = _open_store(store)
    ids = st.select(runs)
    with st.write_lock():
        data_hash = st.data_hash(ids)
        prev = check_existing(st, name, model_config(sim, ids, data_hash), replace=replace)
        if prev is not None:
            info(
                f"model {name!r} is up to date (same configuration and data, fitted "
                f"{prev.get('fitted_at')}); pass --replace to refit"
            )
            if json_out:
                render_object(prev)
            return
        rs = st.load(ids)
        info(
            f"fitting {method.value} on {len(rs)} run(s): {rs.n_examples} training x "
            f"{rs.n_tests} test examples"
            + (" (l2 by cross-validation)" if sim.l2 == "auto" else "")
        )
        total = rs.n_tests * (2 if sim.l2 == "auto" else 1)
        # parameters stream into the model's next parameter file as test chunks are solved:
        # the whole training x test matrix is never in memory; the manifest still commits last
        writer = ParameterWriter(st, name, rs.example_ids, rs.test_ids, sim.method)
        try:
            with _Progress(total, "fitting") as bar:
                sim.progress = bar
                sim.fit(rs, param_sink=writer, keep_params=False)
                sim.progress = None
        except BaseException:
            writer.abort()
            raise
        man = save_model(
            st,
            name,
            sim,
            runs=ids,
            data_hash=data_hash,
            selector=runs,
            replace=replace,
            parameters=writer,
        )
    how = "chosen by CV" if sim.cv_curve_ else "given"
    info(
        f"saved model {name!r}: {method.value}, l2={sim.l2_:g} ({how}), prior {prior.value}, "
        f"clip {clip.value}; {len(ids)} run(s), {rs.n_examples} examples x {rs.n_tests} tests, "
        f"{sim.fit_seconds_:.2f} s -> {Path(st.path) / 'models' / name}"
    )
    if sim.method == "optimizer-aware":
        c = sim.config_
        info(
            f"optimizer-aware choices: transform {c.transform}, AR {'on' if c.ar else 'off'}"
            f" (median rho {float(np.median(sim.ar_)) if c.ar else 0.0:.3f}), time basis "
            f"{c.n_basis}, l2 {c.l2:g}; lr {'logged' if sim.schedule_.lr_by_step is not None else 'not logged'}"
        )
    elif sim.cv_curve_:
        info(
            "CV rollout MSE by l2: "
            + ", ".join(f"{c['l2']:g}: {c['cv_mse']:.4g}" for c in sim.cv_curve_)
        )
        grid = [c["l2"] for c in sim.cv_curve_]
        if len(grid) > 1 and sim.l2_ in (min(grid), max(grid)):
            warn(
                f"the chosen l2={sim.l2_:g} is at the edge of the searched range "
                f"{min(grid):g}..{max(grid):g}; a value beyond it may fit better: try --l2 X"
            )
    if json_out:
        render_object(man)


def _oa_options(method: str, transform: str, ar: str, time_basis: str) -> dict:
    given = {"--transform": transform, "--ar": ar, "--time-basis": time_basis}
    if method != "optimizer-aware":
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


def _store_example_ids(st) -> set[str]:
    """Every training-example ID in the store's curricula (read only on the error path)."""
    import pyarrow.parquet as pq

    out: set[str] = set()
    for r in st.runs():
        col = pq.read_table(Path(st.path) / r["curriculum_file"], columns=["example_id"])
        chunked = col.column("example_id")
        for chunk in chunked.chunks:
            vals = chunk.dictionary if hasattr(chunk, "dictionary") else chunk.unique()
            out.update(vals.to_pylist())
    return out


def _where(cur, ids) -> str:
    locs = cur.locate(set(ids))
    shown = ", ".join(f"{e} (line {ln})" for e, ln in locs[:10])
    return shown + (f" and {len(locs) - 10} more" if len(locs) > 10 else "")


def _check_ids(cur, sim, st, unseen: str) -> None:
    missing = sim.unseen_ids([cur.batches])
    if not missing:
        return
    in_model = set(sim.example_ids_)
    candidates = [e for e in missing if e not in in_model]
    unknown = []
    if candidates:
        known = _store_example_ids(st)
        unknown = [e for e in candidates if e not in known]
    if unknown:
        raise InputError(
            f"{len(unknown)} unknown training example ID(s) (not in any run of the "
            f"store): {_where(cur, unknown)}",
            path=cur.source,
            hint="check the IDs; `simfluence info` shows the store's examples",
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
        f"{len(missing)} example(s) without fitted parameters, handled by --unseen {unseen}: "
        f"{_where(cur, missing)}"
    )


def _read_init_file(path: str, tests: list[str]) -> np.ndarray:
    """A CSV with columns test_id, loss (header required); one loss per simulated test."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=path) from None
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or [h.strip() for h in header[:2]] != ["test_id", "loss"]:
        raise InputError(
            "expected a header line 'test_id,loss'",
            path=path,
            line=1,
            hint="--init-loss FILE is a CSV with columns test_id,loss",
        )
    got: dict[str, float] = {}
    for no, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise InputError("expected 2 fields: test_id,loss", path=path, line=no)
        tid = row[0].strip()
        try:
            v = float(row[1])
        except ValueError:
            raise InputError(
                f"not a number: {row[1]!r}", path=path, line=no, field="loss"
            ) from None
        if not (math.isfinite(v) and v >= 0):
            raise InputError(
                f"a loss must be finite and >= 0, got {row[1]!r}", path=path, line=no, field="loss"
            )
        if tid in got:
            raise InputError(f"duplicate test_id {tid!r}", path=path, line=no, field="test_id")
        got[tid] = v
    absent = [t for t in tests if t not in got]
    if absent:
        raise InputError(
            f"no initial loss for {len(absent)} simulated test(s): {', '.join(absent[:10])}",
            path=path,
            hint="give a row for every test, or restrict them with --tests",
        )
    return np.asarray([got[t] for t in tests])


def _init_loss(spec: str, sim, st) -> np.ndarray:
    tests = list(sim.test_ids_)
    if spec == "mean":
        return sim.init_loss_mean_
    if spec.startswith("run:"):
        rid = spec[4:]
        if rid not in st.run_ids():
            raise SelectionError(f"--init-loss {spec}: no run {rid!r} in {st.path}")
        rs = st.load([rid])
        run = rs.runs[0]
        if run.loss_steps[0] != 0:
            raise SelectionError(f"run {rid!r} has no losses logged at step 0")
        pos = {t: j for j, t in enumerate(rs.test_ids)}
        L0 = np.asarray([run.losses[0, pos[t]] if t in pos else np.nan for t in tests])
        bad = [t for t, v in zip(tests, L0) if not np.isfinite(v)]
        if bad:
            raise SelectionError(
                f"run {rid!r} has no step-0 loss for test(s) {', '.join(bad[:10])}"
            )
        return L0
    return _read_init_file(spec, tests)


@command("simulate")
def simulate(
    curriculum: Annotated[
        str,
        typer.Argument(
            help="Curriculum text file ('-' = stdin): one line per training step with the batch's "
            "example IDs separated by whitespace; blank lines and '#' comments are ignored."
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
            "run's step-0 losses) or FILE (CSV test_id,loss).",
        ),
    ] = "mean",
    unseen: UnseenOpt = Unseen.error,
    fmt: FormatOpt = None,
    output: OutputOpt = "-",
) -> None:
    """Simulate the loss of every test example along a curriculum (long form: step,test_id,loss).

    Rolls L_t = alpha(c_t) L_{t-1} + beta(c_t) forward from step 0 (the initial loss) with a
    fitted model; losses are clamped by the model's --clip safeguard.
    """
    from simfluence_cli.io.curriculum import read_curriculum, read_id_list
    from simfluence_cli.store.saved_models import StoredModel

    fmt = resolve_format(fmt, output)
    cur = read_curriculum(curriculum)
    st = _open_store(store)
    name = model or _default_model(st)
    test_ids = read_id_list(tests, "test IDs") if tests else None
    sim = StoredModel(st, name, tests=test_ids)  # parameters loaded one test chunk at a time
    _check_ids(cur, sim, st, unseen.value)
    L0 = _init_loss(init_loss, sim, st)
    sizes = {len(b) for b in cur.batches}
    if sim.method not in ("additive", "optimizer-aware") and sizes != {int(round(sim.batch_size_))}:
        warn(
            f"curriculum batch sizes {sorted(sizes)} differ from the fitting runs' "
            f"({sim.batch_size_:g}): alpha is a sum over the batch, so other sizes scale it"
        )
    idx = sim.encode([cur.batches], unseen=unseen.value)
    traj = np.empty((len(cur) + 1, len(sim.test_ids_)))  # (T+1, M), filled chunk by chunk
    s = 0
    for chunk, part in sim.chunks():
        traj[:, s : s + len(chunk)] = part.simulate(
            idx, init_loss=L0[s : s + len(chunk)], lengths=[len(cur)]
        )[0]
        s += len(chunk)
        part = None  # free this chunk's parameters before the next one is loaded
    lo, hi = sim.bounds_
    clamped = 0 if lo is None else int(np.sum((traj[1:] <= lo) | (traj[1:] >= hi)))
    info(
        f"simulated {len(cur)} step(s) x {traj.shape[1]} test(s) with model {name!r} "
        f"({sim.method}, clip {sim.clip}"
        + (f": {clamped} value(s) at a bound" if lo is not None else "")
        + ")"
    )
    _write_long(traj, list(sim.test_ids_), fmt, output, title=f"simulated loss ({name})")


def _write_long(traj: np.ndarray, tests: list[str], fmt: Format, output: str, title: str) -> None:
    """Long form (step, test_id, loss), step-major; CSV and Parquet are written vectorised."""
    import pyarrow as pa

    T1, M = traj.shape
    step = np.repeat(np.arange(T1, dtype=np.int64), M)
    codes = np.tile(np.arange(M, dtype=np.int32), T1)
    loss = traj.reshape(-1)
    if fmt in (Format.csv, Format.parquet):
        tid = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(tests, pa.string()))
        table = pa.table({"step": step, "test_id": tid, "loss": loss})
        if fmt is Format.parquet:
            import json

            import pyarrow.parquet as pq

            from simfluence_cli._atomic import write_atomic

            table = table.replace_schema_metadata(
                {b"simfluence.columns": json.dumps(LOSS_HELP).encode()}
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
            return
        if not any(set(t) & set(',"\r\n') for t in tests):
            import pyarrow.csv as pcsv

            buf = io.BytesIO()
            buf.write(b"step,test_id,loss\n")
            pcsv.write_csv(
                table.cast(
                    pa.schema(
                        [("step", pa.int64()), ("test_id", pa.string()), ("loss", pa.float64())]
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
            return
    rows = [
        {"step": int(s), "test_id": tests[c], "loss": float(v)}
        for s, c, v in zip(step, codes, loss)
    ]
    render_rows(rows, ["step", "test_id", "loss"], fmt, output, title=title, column_help=LOSS_HELP)


@command("curriculum")
def curriculum(
    run: Annotated[str, typer.Argument(help="Run id (or a selector matching exactly one run).")],
    store: StoreOpt = DEFAULT_STORE,
    output: OutputOpt = "-",
) -> None:
    """Print a run's curriculum in the text format `simfluence simulate` reads.

    One line per training step with the batch's example IDs; a leading '#' comment names the run.
    """
    from simfluence_cli._atomic import write_bytes_atomic

    st = _open_store(store)
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
    text = "\n".join(lines) + "\n"
    if output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_bytes_atomic(output, text.encode())

"""``whatif``, ``groups`` and ``design``: counterfactual curricula and curriculum search.

Thin layer over :mod:`simfluence_cli.analysis.whatif`, :mod:`simfluence_cli.analysis.groups`
and :mod:`simfluence_cli.analysis.curriculum_design`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from simfluence_cli._atomic import write_bytes_atomic
from simfluence_cli.analysis.choices import MODES, OBJECTIVES, ORDERS
from simfluence_cli.cli._app import (
    DEFAULT_STORE,
    StoreOpt,
    Unseen,
    UnseenOpt,
    command,
    info,
    open_store,
    provenance,
    show_progress,
    stderr_console,
    warn,
    wrote,
)
from simfluence_cli.cli._intervals import IntervalOpt, calibration_for, novelty_warning
from simfluence_cli.cli._output import Format, FormatOpt, OutputOpt, render_rows, resolve_format
from simfluence_cli.errors import SelectionError, UsageError

# The library (numpy, scipy, pyarrow) is imported inside the commands, so that
# `simfluence --help` and option errors stay fast (see docs/speed.md).
if TYPE_CHECKING:
    pass

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Name of a fitted model in the store.")
]
TestsOpt = Annotated[
    str | None,
    typer.Option(
        "--tests",
        "-t",
        help="Test examples: IDS (a,b,c), @FILE or 'all' (default: all "
        "test examples of the model).",
    ),
]
InitOpt = Annotated[
    str | None,
    typer.Option(
        "--init-loss",
        help="Initial losses L_0: 'mean' (the model's mean observed L_0), 'run:RUN' "
        "(that run's observed L_0) or a CSV file test_id,loss. Default: the base "
        "run's L_0 when --base is a run, else 'mean'.",
    ),
]
BaseOpt = Annotated[
    str,
    typer.Option(
        "--base",
        "-b",
        help="The base curriculum: a run id in the store ('run:ID' forces it), or a "
        "curriculum text file (one line per step; '-' = stdin).",
    ),
]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        metavar="[" + "|".join(MODES) + "]",
        help="How removed/added examples change the batches: 'keep-steps' (the edited "
        "example stream, in order, cut into full batches of the base's size and "
        "cycled to the base's number of steps: same compute), 'repack' (same, "
        "not cycled: fewer steps), 'shrink' (removed in place: smaller batches), "
        "'neutral' (replaced in place by a no-change placeholder, A = 1/b, B = 0).",
    ),
]


def _open(store: Path, model: str, tests: str | None):
    from simfluence_cli.io.curriculum import read_id_list
    from simfluence_cli.store.saved_models import load_model

    st = open_store(store)
    test_list = None if tests in (None, "all") else read_id_list(tests, "test IDs")
    sim = load_model(st, model, tests=test_list)
    return st, sim


def _curriculum(st, spec: str, what: str = "--base"):
    """(batches, RunSet or None, run id or None, description) of a run id or curriculum file."""
    from simfluence_cli.analysis.whatif import run_batches
    from simfluence_cli.io.curriculum import read_curriculum

    force_run = spec.startswith("run:")
    rid = spec[4:] if force_run else spec
    if not force_run and (spec == "-" or Path(spec).is_file()):
        return read_curriculum(spec).batches, None, None, f"curriculum {spec}"
    ids = st.select(f"run:{rid}")
    if len(ids) != 1:
        raise SelectionError(f"{what} {spec!r} matches {len(ids)} runs; give one run id")
    rs = st.load(ids)
    return run_batches(rs, ids[0]), rs, ids[0], f"run {ids[0]}"


def _base(st, sim, base: str, init: str | None):
    """(batches, init_loss, description) of --base, with --init-loss applied."""
    import numpy as np

    from simfluence_cli.analysis.initial_losses import resolve_init_loss, run_init_loss

    tests = list(sim.test_ids_)
    L0 = None
    batches, rs, rid, desc = _curriculum(st, base)
    if rs is not None:
        L0, missing = run_init_loss(rs, rid, tests)
        if missing and init is None:
            warn(
                f"run {rid} has no step-0 loss for {len(missing)} test(s) "
                f"(e.g. {missing[0]}); using the model's mean L_0 for them"
            )
            L0 = np.where(np.isfinite(L0), L0, sim.init_loss_mean_)
    if init is not None:
        L0 = resolve_init_loss(init, sim, st)
    elif L0 is None:
        L0 = sim.init_loss_mean_.copy()
    if not np.all(np.isfinite(L0)):
        raise UsageError("no initial loss for some test examples; give --init-loss run:RUN or FILE")
    return batches, L0, desc


def _flat(batches) -> list[str]:
    """The distinct example IDs of a curriculum (a list of batches)."""
    return list(dict.fromkeys(e for b in batches for e in b))


def _ids(spec: str | None, what: str):
    from simfluence_cli.io.curriculum import read_id_list

    return None if spec is None else read_id_list(spec, what)


def _order(spec: str | None):
    from simfluence_cli.analysis.whatif import ORDERS
    from simfluence_cli.io.curriculum import read_id_list

    if spec is None or spec in ORDERS:
        return spec
    if spec.startswith("@"):
        return read_id_list(spec, "example IDs for --order")
    raise UsageError(f"--order must be one of {', '.join(ORDERS)} or @FILE, got {spec!r}")


def _check_mode(mode: str) -> str:

    from simfluence_cli.analysis.whatif import MODES

    if mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


@command("whatif")
def whatif_cmd(
    model: ModelOpt,
    base: BaseOpt,
    drop: Annotated[
        str | None,
        typer.Option("--drop", help="Remove these examples (IDS or @FILE) from every step."),
    ] = None,
    only: Annotated[
        str | None, typer.Option("--only", help="Keep only these examples (IDS or @FILE).")
    ] = None,
    repeat: Annotated[
        str | None,
        typer.Option(
            "--repeat", help="Train twice on every occurrence of these examples (IDS or @FILE)."
        ),
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(
            "--order",
            metavar="[" + "|".join(ORDERS) + "|@FILE]",
            help="Reorder: 'shuffle' (random order of the examples, re-batched), "
            "'shuffle-steps' (random order of whole steps), 'reverse' (steps "
            "reversed), or @FILE (example IDs in the wanted order; each epoch is "
            "stably sorted by it, see --order-scope).",
        ),
    ] = None,
    order_scope: Annotated[
        str,
        typer.Option(
            "--order-scope",
            metavar="[epoch|run]",
            help="For --order @FILE: sort each epoch (one pass over the data) "
            "by the file's order ('epoch'), or the whole run ('run').",
        ),
    ] = "epoch",
    mode: ModeOpt = "keep-steps",
    seed: Annotated[int, typer.Option("--seed", help="Seed for --order shuffle*.")] = 0,
    edited_spec: Annotated[
        str | None,
        typer.Option(
            "--edited",
            help="Compare the base with this curriculum (a run id or curriculum file) "
            "instead of applying edit options.",
        ),
    ] = None,
    tests: TestsOpt = None,
    init_loss: InitOpt = None,
    unseen: UnseenOpt = Unseen.error,
    trajectories: Annotated[
        bool,
        typer.Option(
            "--trajectories",
            help="Print the step-wise trajectories side by side (long form "
            "step,test_id,base,edited) instead of the final-loss table.",
        ),
    ] = False,
    save_edited: Annotated[
        str | None,
        typer.Option("--save-edited", help="Also write the edited curriculum to this text file."),
    ] = None,
    interval: IntervalOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    fmt: FormatOpt = None,
    output: OutputOpt = "-",
) -> None:
    """Simulate a base curriculum and an edited one side by side.

    With --interval 0.9: lo_90, hi_90 = a 90% interval for the real change (calibrated on
    differences between pairs of fitting runs, scaled by how far the edited curriculum is
    from the base relative to two fitting runs; docs/intervals.md). An interval that includes
    0 means the simulator cannot tell whether the edit helps or hurts that test example.

    Per test example: base_final and edited_final (simulated loss after the last step) and
    change = edited_final - base_final (negative = the edit lowers the loss, i.e. helps).
    Edits are applied in the order --only, --drop, --repeat, --order; see docs/counterfactuals.md.
    """
    import numpy as np

    from simfluence_cli.analysis.curriculum_design import curriculum_text
    from simfluence_cli.analysis.whatif import NEUTRAL, Edits, batch_size_note, whatif

    st, sim = _open(store, model, tests)
    edits = Edits(
        drop=_ids(drop, "example IDs for --drop"),
        only=_ids(only, "example IDs for --only"),
        repeat=_ids(repeat, "example IDs for --repeat"),
        order=_order(order),
        mode=_check_mode(mode),
        seed=seed,
        order_scope=order_scope,
    )
    if edited_spec is not None and not edits.is_empty():
        raise UsageError("--edited replaces the edit options; drop --drop/--only/--repeat/--order")
    if edited_spec is None and edits.is_empty():
        warn(
            "no edit given (--drop/--only/--repeat/--order/--edited): the edited curriculum "
            "is the base"
        )
    batches, L0, desc = _base(st, sim, base, init_loss)
    if edited_spec is not None:
        edits, _, _, edesc = _curriculum(st, edited_spec, "--edited")
    checks = (
        []
        if edited_spec is not None
        else [("--drop", edits.drop), ("--only", edits.only), ("--repeat", edits.repeat)]
    )
    from simfluence_cli.store.example_ids import check_known_ids

    if edited_spec is None:
        order_ids = [] if edits.order is None or isinstance(edits.order, str) else edits.order
        check_known_ids(
            st,
            [(w, ids or []) for w, ids in checks]
            + [(f"--order {order}", order_ids), (f"--base {base}", _flat(batches))],
            known=sim.example_ids_,
        )
    else:
        check_known_ids(
            st,
            [(f"--base {base}", _flat(batches)), (f"--edited {edited_spec}", _flat(edits))],
            known=sim.example_ids_,
        )
    # unknown IDs are an error first; then IDs that are known but not in this base
    for what, ids in checks:
        if ids:
            present = {e for b in batches for e in b}
            n_in = sum(e in present for e in set(ids))
            if n_in == 0:
                warn(f"none of the {len(set(ids))} example(s) given to {what} occurs in the base")
    res = whatif(sim, batches, edits, L0, unseen=unseen.value)
    note = batch_size_note(sim.method, batches, res.edited)
    if note is not None:
        warn(note)
    if edited_spec is not None:
        res.edits = {"edited": edesc}
    s = res.summary()
    if save_edited:
        if any(e == NEUTRAL for b in res.edited for e in b):
            raise UsageError(
                "--save-edited: a --mode neutral curriculum holds placeholders, "
                "not real examples; use --mode keep-steps to retrain on it"
            )
        header = {"model": model, "base": desc, "edits": s["edits"]}
        write_bytes_atomic(
            save_edited,
            curriculum_text(
                res.edited, header, title="simfluence whatif: edited curriculum"
            ).encode(),
        )
        wrote(save_edited)
    summary = (
        f"{desc}: {s['base_steps']} steps -> edited {s['edited_steps']} steps "
        f"({s['base_examples']} -> {s['edited_examples']} example occurrences); mean final loss "
        f"{s['mean_base_final']:.6g} -> {s['mean_edited_final']:.6g}, change "
        f"{s['mean_change']:+.6g} (negative = the edit helps); tests helped {s['tests_helped']}, "
        f"hurt {s['tests_hurt']} of {s['tests']}"
    )
    f = resolve_format(fmt, output)
    doc = {"model": model, "base": desc, "summary": s}
    bounds = None
    if interval is not None and not trajectories:
        from simfluence_cli.analysis.curriculum_distance import edit_scale
        from simfluence_cli.analysis.intervals import interval_columns

        _, cal = calibration_for(st, model, interval)
        novelty_warning(cal, [batches, res.edited], "base or edited curriculum")
        tl = list(res.test_ids)
        lo, hi = cal.change(batches, [res.edited], L0, interval, tests=tl, unseen=unseen.value)
        mlo, mhi = cal.change(
            batches, [res.edited], L0, interval, tests=tl, unseen=unseen.value, reduce="mean"
        )
        bounds = (interval_columns(interval), lo[0], hi[0], float(mlo[0]), float(mhi[0]))
        scale = float(edit_scale(batches, [res.edited], cal.change_reference)[0])
        sure = int(np.sum((lo[0] > 0) | (hi[0] < 0)))
        zero = mlo[0] <= 0 <= mhi[0]
        if mlo[0] == mhi[0] == 0:
            verdict = ": the edited curriculum does not differ from the base"
        elif zero:
            verdict = (
                " includes 0: the simulator cannot tell whether the edit helps or hurts on average"
            )
        else:
            verdict = (
                " excludes 0: the edit " + ("helps" if mhi[0] < 0 else "hurts") + " on average"
            )
        info(
            f"{100 * interval:g}% interval of the mean change: [{mlo[0]:+.4g}, {mhi[0]:+.4g}]"
            + verdict
            + f"; {sure} of {len(tl)} test(s) have a change interval that excludes 0 "
            f"(edit scale {scale:.2f} of two fitting runs' difference; docs/intervals.md)"
        )
        if scale > 1:
            warn(
                f"the edit changes which examples occur more than two fitting runs differ "
                f"(edit scale {scale:.2f} > 1): its interval is extrapolated and may "
                "under-cover (docs/intervals.md)"
            )
        s["interval"] = {
            "level": interval,
            "mean_change_lo": float(mlo[0]),
            "mean_change_hi": float(mhi[0]),
            "mean_change_includes_zero": bool(zero),
            "tests_sign_certain": sure,
            "edit_scale": scale,
        }
    elif interval is not None:
        warn("--interval is not available with --trajectories (use simulate --interval)")
    if trajectories:
        render_rows(
            res.trajectory_rows(),
            ["step", "test_id", "base", "edited"],
            f,
            output,
            title=f"simulated trajectories: {desc} vs edited",
            document=doc,
            column_help={
                "base": "simulated loss under the base curriculum",
                "edited": "simulated loss under the edited curriculum (empty after its last step)",
            },
        )
        info(summary)  # after the table, so it stays visible
        return
    rows = res.rows()
    cols = ["test_id", "base_final", "edited_final", "change"]
    helps = {"change": "edited_final - base_final; negative = the edit helps"}
    if bounds is not None:
        (c_lo, c_hi), lo, hi, _, _ = bounds
        for r, a, b in zip(rows, lo, hi):
            r[c_lo], r[c_hi] = float(a), float(b)
        cols += [c_lo, c_hi]
        helps[c_lo] = f"lower end of the {100 * interval:g}% interval for the real change"
        helps[c_hi] = f"upper end of the {100 * interval:g}% interval (0 inside = sign unknown)"
    if f is Format.table:
        mean = {
            "test_id": "(mean)",
            "base_final": s["mean_base_final"],
            "edited_final": s["mean_edited_final"],
            "change": s["mean_change"],
        }
        if bounds is not None:
            mean[c_lo], mean[c_hi] = bounds[3], bounds[4]
        rows = rows + [mean]
    render_rows(rows, cols, f, output, title=f"what if: {desc}", document=doc, column_help=helps)
    info(summary)  # after the table, so it stays visible


@command("groups")
def groups_cmd(
    model: ModelOpt,
    base: BaseOpt,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", "-g", help="A group: [NAME=]IDS or [NAME=]@FILE (repeatable)."),
    ] = None,
    groups_from: Annotated[
        str | None,
        typer.Option(
            "--groups-from",
            help="Example metadata table (CSV/Parquet) with an example_id column; "
            "one group per value of --column.",
        ),
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", help="Grouping column of --groups-from, e.g. label.")
    ] = None,
    id_column: Annotated[
        str, typer.Option("--id-column", help="Example-id column of --groups-from.")
    ] = "example_id",
    mode: ModeOpt = "keep-steps",
    by: Annotated[
        str,
        typer.Option(
            "--by",
            metavar="[group|test]",
            help="'group': one row per group, averaged over "
            "tests; 'test': one row per group and test.",
        ),
    ] = "group",
    tests: TestsOpt = None,
    init_loss: InitOpt = None,
    unseen: UnseenOpt = Unseen.error,
    store: StoreOpt = DEFAULT_STORE,
    fmt: FormatOpt = None,
    output: OutputOpt = "-",
) -> None:
    """Removal effect of whole groups of training examples next to the sum of their members'.

    group_effect = simulated final loss without the group - with it (positive = the group
    helps); sum_individual = sum of the members' one-at-a-time removal effects;
    interaction = group_effect - sum_individual (0 = additive; for a helpful group, positive =
    redundancy: each member alone is replaceable by the others, the whole group is not;
    negative = the parts overlap, removing all costs less than their sum).
    """
    import numpy as np

    from simfluence_cli.analysis.groups import group_effects, read_groups
    from simfluence_cli.io.curriculum import read_id_list

    if by not in ("group", "test"):
        raise UsageError("--by must be 'group' or 'test'")
    groups: dict[str, list[str]] = {}
    if groups_from:
        if not column:
            raise UsageError("--groups-from needs --column (the grouping column, e.g. label)")
        groups.update(
            {f"{column}={k}": v for k, v in read_groups(groups_from, column, id_column).items()}
        )
    elif column:
        raise UsageError("--column needs --groups-from TABLE")
    origin = {name: f"--groups-from {groups_from}, group {name}" for name in groups}
    for k, spec in enumerate(group or []):
        name, _, ids = spec.partition("=") if "=" in spec.split("@", 1)[0] else ("", "", spec)
        name = name or (Path(ids[1:]).stem if ids.startswith("@") else f"group{k + 1}")
        groups[name] = read_id_list(ids, f"example IDs of group {name}")
        origin[name] = f"--group {name}" + (f" from {ids}" if ids.startswith("@") else "")
    if not groups:
        raise UsageError("give --group IDS|@FILE (repeatable) or --groups-from TABLE --column C")
    st, sim = _open(store, model, tests)
    batches, L0, desc = _base(st, sim, base, init_loss)
    from simfluence_cli.store.example_ids import check_known_ids

    check_known_ids(
        st,
        [(origin[g], ids) for g, ids in groups.items()] + [(f"--base {base}", _flat(batches))],
        known=sim.example_ids_,
    )
    members = len({e for v in groups.values() for e in v})
    info(
        f"{desc}: simulating {1 + len(groups) + members} curricula (base, {len(groups)} "
        f"group removal(s), up to {members} single removals)"
    )
    from simfluence_cli.cli._progress import fraction_bar

    progress, finish = fraction_bar("removals", show_progress(), stderr_console)
    try:
        res = group_effects(
            sim,
            batches,
            groups,
            L0,
            mode=_check_mode(mode),
            unseen=unseen.value,
            progress=progress,
        )
    finally:
        finish()
    f = resolve_format(fmt, output)
    doc = {
        "model": model,
        "base": desc,
        "mode": mode,
        "mean_base_final": float(np.mean(res.base_final)),
    }
    helpt = {
        "group_effect": "final loss without the group - with it; positive = group helps",
        "interaction": "group_effect - sum_individual; 0 = additive, > 0 = redundant members",
    }
    if by == "test":
        render_rows(
            res.test_rows(),
            ["group", "test_id", "group_effect", "sum_individual", "interaction"],
            f,
            output,
            title=f"group effects: {desc}",
            document=doc,
            column_help=helpt,
        )
    else:
        render_rows(
            res.rows(),
            [
                "group",
                "members",
                "in_base",
                "group_effect",
                "sum_individual",
                "interaction",
                "ratio",
                "mean_abs_interaction",
            ],
            f,
            output,
            title=f"group effects: {desc}",
            document=doc,
            column_help=helpt,
        )


@command("design")
def design_cmd(
    model: ModelOpt,
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="Write the curriculum text file here ('-' = stdout)."),
    ],
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            "-T",
            help="Number of training steps (default: the best fitting run's length; required "
            "with --start greedy).",
        ),
    ] = None,
    start: Annotated[
        str,
        typer.Option(
            "--start",
            metavar="[auto|best-run|greedy]",
            help="Where the search starts: 'best-run' = the model's fitting run with the lowest "
            "real mean final loss over the chosen tests; 'greedy' = step by step the examples "
            "with the lowest one-step simulated loss; 'auto' = best-run when that run matches "
            "--steps, --pool and --batch-size, else greedy.",
        ),
    ] = "auto",
    trust: Annotated[
        float | None,
        typer.Option(
            "--trust",
            min=0.0,
            max=1.0,
            help="Trust region: the largest fraction of the curriculum's slots (step, position) "
            "that may hold another example than the start (default 0.1 for best-run, 1 = "
            "unlimited for greedy).",
        ),
    ] = None,
    consensus: Annotated[
        float,
        typer.Option(
            "--consensus",
            help="With --interval: a move is taken only if it lowers the simulated objective "
            "under more than this fraction of the interval's fold models.",
        ),
    ] = 0.5,
    floor_guard: Annotated[
        bool,
        typer.Option(
            "--floor-guard/--no-floor-guard",
            help="Reject moves that bring more tests below their data floor than the start "
            "has (usually none): a test's data floor is the lowest final loss any fitting run "
            "reached for it. Below it the simulator extrapolates.",
        ),
    ] = True,
    objective: Annotated[
        str,
        typer.Option(
            "--objective",
            metavar="[" + "|".join(OBJECTIVES) + "]",
            help="What to minimise: 'mean-final-loss' = mean simulated loss of "
            "the chosen tests after the last step.",
        ),
    ] = "mean-final-loss",
    tests: TestsOpt = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Candidate training examples (IDS or @FILE); default: every example "
            "the model was fitted on.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", help="Examples per step (default: the model's median batch size)."
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Seed of the local search and the random reference curricula."),
    ] = 0,
    candidates: Annotated[
        int,
        typer.Option(
            "--candidates",
            "-K",
            help="Best-ranked moves simulated exactly per round.",
        ),
    ] = 64,
    iters: Annotated[int, typer.Option("--iters", help="Local-search rounds (at most).")] = 200,
    max_uses: Annotated[
        int | None,
        typer.Option(
            "--max-uses",
            help="Most times one example may appear (default: ceil(1.5 x steps x "
            "batch / pool), 1.5x the coverage of a random curriculum).",
        ),
    ] = None,
    n_random: Annotated[
        int, typer.Option("--random", help="Random curricula from the pool to compare with.")
    ] = 100,
    init_loss: Annotated[
        str, typer.Option("--init-loss", help="'mean', 'run:RUN' or a CSV file test_id,loss.")
    ] = "mean",
    report: Annotated[
        str | None,
        typer.Option("--report", help="Write the search report (JSON) here ('-' = stdout)."),
    ] = None,
    interval: IntervalOpt = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Search for a curriculum of --steps batches that minimises the simulated objective.

    Starts from the best fitting run (or a greedy construction) and descends within a trust
    region around it (--trust: how many slots may change): every round ranks all swap and
    replace moves by adjoint gradients of the objective, simulates the --candidates best
    exactly and takes the best improvement. No move may push a test's simulated final loss
    below the lowest final loss any fitting run reached for it (--floor-guard; tests the
    start already has there excepted); the search stops when the best-ranked moves would.
    The result is never worse than the start.

    With --interval 0.9 the objective comes with a 90% interval for the real mean final loss
    of the designed curriculum (CV+ over the fitting runs; a designed curriculum is unlike the
    fitting runs, so the coverage promise is weaker: docs/intervals.md), and a move must help
    under most of the interval's fold models (--consensus). Reports the design's objective
    next to random curricula from the same pool. Deterministic given --seed. See
    docs/counterfactuals.md.
    """
    from simfluence_cli.analysis.curriculum_design import (
        OBJECTIVES,
        curriculum_text,
        design_curriculum,
        final_loss_floor,
        fitting_runs,
        resolve_start,
    )
    from simfluence_cli.analysis.initial_losses import resolve_init_loss

    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}")
    if report == "-" and output == "-":
        raise UsageError("--report - and -o - both write to stdout; send one to a file")
    # counts checked before the start is resolved (its note would come before the error)
    if steps is not None and steps < 1:
        raise UsageError("--steps must be >= 1")
    if batch_size is not None and batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if candidates < 1 or iters < 0 or n_random < 0:
        raise UsageError("--candidates must be >= 1, --iters and --random >= 0")
    st, sim = _open(store, model, tests)
    L0 = resolve_init_loss(init_loss, sim, st)
    pool_ids = _ids(pool, "pool example IDs")
    if pool_ids:
        from simfluence_cli.store.example_ids import check_known_ids

        check_known_ids(st, [(f"--pool {pool}", pool_ids)], known=sim.example_ids_)
    fitting = fitting_runs(st, sim)  # loaded once: the start and the data floor
    start_run, start_cur, note = resolve_start(
        fitting,
        start,
        steps=steps,
        pool=pool_ids or None,
        batch_size=batch_size,
        tests=list(sim.test_ids_),
    )
    if note:
        info(note)
    cal = None
    if interval is not None:
        _, cal = calibration_for(st, model, interval)
    progress = None
    bar = None
    if show_progress():
        from simfluence_cli.cli._progress import new_progress

        bar = new_progress(stderr_console())
        bar.start()
        task = bar.add_task("local search", total=iters)
        progress = lambda k: bar.advance(task, k)  # noqa: E731
    try:
        res = design_curriculum(
            sim,
            steps,
            objective=objective,
            tests=list(sim.test_ids_),
            pool=pool_ids,
            batch_size=batch_size,
            init_loss=L0,
            seed=seed,
            candidates=candidates,
            iters=iters,
            max_uses=max_uses,
            n_random=n_random,
            start=start_cur,
            trust=trust,
            fold_models=None if cal is None else cal.fold_models,
            consensus=consensus,
            floor_guard=floor_guard,
            floor=(
                final_loss_floor(fitting[0], list(sim.test_ids_))
                if floor_guard and fitting[0] is not None
                else None  # design falls back to sim.loss_min_, the lowest loss at any step
            ),
            progress=progress,
            keep_on_interrupt=True,  # a Ctrl-C in the search keeps the best curriculum so far
        )
    finally:
        if bar is not None:
            bar.stop()
    rep = {"model": model, **res.report(), "start_run": start_run}
    interrupted = rep.get("stopped") == "interrupted"
    if cal is not None:
        novelty_warning(cal, [res.batches], "designed curriculum")
        mlo, mhi = cal.final([res.batches], L0, interval, tests=list(sim.test_ids_), reduce="mean")
        rep["interval"] = {"level": interval, "lo": float(mlo[0]), "hi": float(mhi[0])}
    header = {
        "model": model,
        "objective": objective,
        "simulated_objective": f"{res.objective:.6g}",
        "start": start_run or "greedy",
        "steps": rep["steps"],
        "batch_size": rep["batch_size"],
        "trust": rep["trust"],
        "changed_slots": rep["changed_slots"],
        "seed": seed,
        "pool": rep["pool"],
        "tests": rep["tests"],
        "max_uses": rep["max_uses"],
        "init_loss": " ".join(str(init_loss).split()),  # one line, whatever the path holds
    }
    prov = provenance()  # enough to tell later which fit and which version designed this
    made_by = (prov.get("models") or {}).get(model) or {}
    header["model_fitted_at"] = made_by.get("fitted_at")
    header["model_data_hash"] = made_by.get("data_hash")
    header["simfluence_version"] = prov["versions"]["simfluence"]
    if interrupted:
        header["stopped"] = f"interrupted (Ctrl-C) after {rep['moves_accepted']} move(s)"
    if interval is not None:
        header[f"interval_{100 * interval:g}"] = (
            f"[{rep['interval']['lo']:.6g}, {rep['interval']['hi']:.6g}]"
        )
    text = curriculum_text(res.batches, header)
    if output == "-":
        typer.echo(text, nl=False)
    else:
        write_bytes_atomic(output, text.encode())
        wrote(output)
    msg = f"design: {objective} {res.objective:.6g}"
    if interval is not None:
        msg += (
            f" ({100 * interval:g}% interval for the real value "
            f"[{rep['interval']['lo']:.4g}, {rep['interval']['hi']:.4g}])"
        )
    msg += (
        f" (start {start_run or 'greedy'}: simulated {res.start_objective:.6g}; "
        f"{rep['changed_slots']} of at most {rep['max_changes']} slots changed)"
    )
    if "random_mean" in rep:
        msg += (
            f"; {rep['random_n']} random curricula from the same pool: mean "
            f"{rep['random_mean']:.6g} (std {rep['random_std']:.3g}), best "
            f"{rep['random_best']:.6g}; the design beats {100 * rep['fraction_random_beaten']:.0f}%"
        )
    info(msg)
    if rep.get("stopped") == "data-floor" and rep["changed_slots"] == 0:
        info(
            "note: no move was taken: every move that improves the objective would bring more "
            "tests below their data floor (the lowest final loss any fitting run reached) than "
            "the start has; there the simulator extrapolates (--no-floor-guard lifts this guard)"
        )
    if rep["tests_at_clip_floor"]:
        warn(
            f"{rep['tests_at_clip_floor']} of {rep['tests']} test(s) end at the simulator's lower "
            "clip bound: their simulated loss is saturated there, so the objective overstates "
            "the gain (the search exploits extrapolation); check with real training"
        )
    if report:
        from simfluence_cli.cli._output import render_object

        render_object(rep, report)
    if interrupted:
        info(
            f"interrupted after {rep['moves_accepted']} accepted move(s) of at most {iters} "
            f"round(s): {'stdout' if output == '-' else output} holds the best curriculum found "
            "so far"
        )
        raise typer.Exit(130)

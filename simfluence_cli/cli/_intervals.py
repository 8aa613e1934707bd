"""The ``--interval LEVEL`` option shared by simulate, eval, whatif and design (CV+ intervals,
see :mod:`simfluence_cli.analysis.intervals` and docs/intervals.md), and the saved
calibration it uses (``fit --calibrate``, ``simfluence calibrate``)."""

from __future__ import annotations

from typing import Annotated

import typer

from simfluence_cli.cli._app import info, show_progress, stderr_console, warn

IntervalOpt = Annotated[
    float | None,
    typer.Option(
        "--interval",
        help="Also give a prediction interval at this coverage level, e.g. 0.9 (columns "
        "lo_90, hi_90): CV+ over 8 grouped-CV folds of the model's fitting runs. Uses the "
        "calibration saved by `fit --calibrate` / `simfluence calibrate` when it is current, "
        "else refits the model 8 times (needs the fitting runs in the store; says so on "
        "stderr). Calibrated for curricula like the fitting runs: a curriculum unlike them "
        "gets a warning; see docs/intervals.md.",
        callback=lambda level: _checked_level(level),
    ),
]


def _checked_level(level: float | None) -> float | None:
    """Reject a level outside (0, 1) while the command line is parsed, before any work
    (typer's own ``min``/``max`` admit the end points 0 and 1, which are no coverage)."""
    if level is not None and not (0.0 < level < 1.0):
        raise typer.BadParameter(
            f"must be a coverage level strictly between 0 and 1 (e.g. 0.9), got {level:g}"
        )
    return level


def calibration_for(st, name: str, level: float):
    """(full model, Calibration) for stored model ``name``: the saved calibration when it is
    current (silent), else computed now with one line on stderr saying why."""
    from simfluence_cli.analysis.intervals import check_level, stored_calibration

    check_level(level)
    bar = _FoldBar()

    def computing(why: str, saved: bool) -> None:
        _say_computing(name, why, saved)
        bar.start()

    try:
        sim, cal, why = stored_calibration(st, name, on_compute=computing, progress=bar)
    finally:
        bar.finish()
    return sim, cal


class _FoldBar:
    """A progress bar over the calibration's fold refits (minutes each on a large store),
    started when the refits start; ``bar(done, total)`` is the calibration's progress hook."""

    def __init__(self):
        self.advance, self.finish = None, lambda: None

    def start(self) -> None:
        from simfluence_cli.cli._progress import fraction_bar

        self.advance, self.finish = fraction_bar("refitting folds", show_progress(), stderr_console)

    def __call__(self, done: int, total: int) -> None:
        if self.advance is not None:
            self.advance(1 / total)


def _say_computing(name: str, why: str, saved: bool) -> None:
    """One line before the refits: a warning (not hidden by -q) when a saved calibration
    could not be used, else information."""
    msg = (
        f"intervals for {name!r}: {why}; refitting on 8 folds of its fitting runs "
        f"(`simfluence calibrate --model {name}` saves a calibration)"
    )
    (warn if saved else info)(msg)


def save_calibration_for(st, name: str, force: bool = False) -> None:
    """Calibrate stored model ``name`` and save it beside the model (skipped when a current
    one is saved, unless ``force``); one status line on stderr."""
    from simfluence_cli.analysis.intervals import DEFAULT_FOLDS, calibrate_and_save

    bar = _FoldBar()

    def starting(status: str, why: str) -> None:
        info(
            f"calibrating {name!r} ({'stale: ' + why if status == 'stale' else 'none saved'}): "
            f"refitting on {DEFAULT_FOLDS} folds of its fitting runs"
        )
        bar.start()

    try:
        cal, man = calibrate_and_save(st, name, force=force, on_start=starting, progress=bar)
    finally:
        bar.finish()
    if cal is None:
        info(f"calibration of {name!r} is up to date; pass --force to recompute it")
        return
    info(
        f"saved calibration of {name!r}: {len(cal.run_ids)} run(s), {DEFAULT_FOLDS} folds, "
        f"{cal.seconds:.1f} s -> {st.path}/models/{name}/{man['generation']}"
    )


def novelty_warning(cal, curricula, what: str = "curriculum", said: set | None = None) -> None:
    """Warn on stderr (one line) when a queried curriculum is unlike the fitting runs, so its
    interval may under-cover (:mod:`simfluence_cli.analysis.novelty`). ``said`` collects the
    lines already printed by this command: models fitted on the same runs warn once, not per model."""
    if cal.novelty is None or not len(curricula):
        return
    msg = cal.novelty.warning(curricula, what)
    if msg and (said is None or msg not in said):
        warn(msg)
        if said is not None:
            said.add(msg)

"""The ``--interval LEVEL`` option shared by simulate, eval, whatif and design (CV+ intervals,
see :mod:`simfluence_cli.analysis.intervals` and docs/intervals.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from simfluence_cli.cli._app import info

IntervalOpt = Annotated[
    float | None,
    typer.Option(
        "--interval",
        help="Also give a prediction interval at this coverage level, e.g. 0.9 (columns "
        "lo_90, hi_90): CV+ over 8 grouped-CV folds of the model's fitting runs (refits the "
        "model 8 times; needs the fitting runs in the store). Calibrated for curricula like the "
        "fitting runs; see docs/intervals.md.",
        min=0.0,
        max=1.0,
    ),
]


def calibration_for(st, name: str, level: float):
    """(full model, Calibration) for stored model ``name``, with a progress line on stderr."""
    from simfluence_cli.analysis.intervals import calibrate_stored, check_level

    check_level(level)
    info(f"calibrating {100 * level:g}% intervals for {name!r}: refitting on 8 folds of its runs")
    sim, cal = calibrate_stored(st, name)
    info(f"calibrated on {len(cal.run_ids)} fitting run(s) in {cal.seconds:.1f} s")
    return sim, cal

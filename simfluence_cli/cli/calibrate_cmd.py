"""``simfluence calibrate``: save a model's interval calibration beside it."""

from __future__ import annotations

from typing import Annotated

import typer

from simfluence_cli.cli._app import DEFAULT_STORE, StoreOpt, command, open_store
from simfluence_cli.cli._intervals import save_calibration_for


@command("calibrate")
def calibrate_cmd(
    store: StoreOpt = DEFAULT_STORE,
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="Stored model to calibrate (repeatable)."),
    ] = ...,  # type: ignore[assignment]
    force: Annotated[
        bool,
        typer.Option("--force", help="Recompute even when the saved calibration is current."),
    ] = False,
) -> None:
    """Compute and save the calibration that --interval uses (CV+ over 8 folds of the model's
    fitting runs: 8 refits at the model's penalty), so later --interval calls skip the refits.

    Saved as models/NAME/calibration.json plus one calibration-<gen>/ directory (fold models
    and out-of-fold residuals). It is used while the model and its fitting runs' data are
    unchanged; refitting the model drops it, re-ingesting a fitting run with other content
    makes it stale (`simfluence info` shows calibrated / stale / no per model).
    """
    st = open_store(store)
    for name in model:
        save_calibration_for(st, name, force=force)

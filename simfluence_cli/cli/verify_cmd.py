"""`simfluence verify`: check a run store against its manifest (thin layer over verify.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from simfluence_cli.cli._app import DEFAULT_STORE, StoreOpt, command, info
from simfluence_cli.cli._output import render_object


@command("verify")
def verify(
    store: StoreOpt = DEFAULT_STORE,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the report as one JSON object (ok, errors, warnings, findings "
            "[{severity, where, message, fix}], counts).",
        ),
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="First remove leftovers of interrupted writes (unnamed partition "
            "files, temp files, superseded model files and calibration generations, model "
            "directories without model.json) and rewrite "
            "runs.parquet, holding the write lock. Never touches committed data.",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 on warnings (leftovers) too, not only on errors."),
    ] = False,
) -> None:
    """Check a store: manifest and format version, every run's files (schema, row counts,
    content hash recomputed from the files), files the manifest does not name, runs.parquet,
    and every model (files, parameter shape and IDs, fitting runs unchanged).

    Prints one line per finding with its fix. Exit 0 = consistent (warnings are leftovers that
    simfluence ignores), 1 = errors found (missing/damaged data, stale models), or warnings
    with --strict.
    """
    from simfluence_cli.store.integrity import verify_store

    rep = verify_store(store, repair=repair)
    for line in rep.repaired:
        info(f"repair: {line}")
    if json_out:
        render_object(rep.to_dict())
    else:
        for f in rep.findings:
            typer.echo(f.line())
    info(rep.summary())
    if rep.errors or (strict and rep.warnings):
        raise typer.Exit(1)

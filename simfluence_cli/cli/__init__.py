"""Command-line interface: a thin layer that parses options, calls the core and renders.

Each command lives in its own module and registers itself on the shared ``app``.
"""

from __future__ import annotations

from simfluence_cli.cli import (
    calibrate_cmd,  # noqa: F401  (calibrate)
    eval_cmd,  # noqa: F401  (eval, import-scores, top, plot)
    fit_cmd,  # noqa: F401  (fit, simulate)
    ingest_cmd,  # noqa: F401  (ingest, info)
    plan_cmd,  # noqa: F401  (plan)
    verify_cmd,  # noqa: F401  (verify)
    whatif_cmd,  # noqa: F401  (whatif, groups, design)
)
from simfluence_cli.cli._app import GLOBAL_FLAGS, app


def app_for(args: list[str]):
    """The app to run ``args`` with: when they name a command (after global flags only), a
    copy of ``app`` holding just that command, so typer builds one command's options, not all
    15 (~0.03-0.05 s CPU); otherwise ``app`` itself (group help, unknown commands)."""
    import copy

    for k, a in enumerate(args):
        if a.startswith("-"):
            if a not in GLOBAL_FLAGS:
                return app
            continue
        picked = [c for c in app.registered_commands if c.name == a]
        if len(picked) != 1 or any(x in ("--help", "--version") for x in args[:k]):
            return app
        one = copy.copy(app)
        one.registered_commands = picked
        return one
    return app


def main() -> None:
    """Console-script entry point."""
    import sys

    from simfluence_cli.cli._blas import limit_blas_threads
    from simfluence_cli.cli._malloc import tune_malloc

    limit_blas_threads()  # before numpy loads: one BLAS thread (see cli/_blas.py)
    tune_malloc()  # multi-MB temporaries reuse heap blocks (see cli/_malloc.py)
    app_for(sys.argv[1:])()


__all__ = ["app", "app_for", "main"]

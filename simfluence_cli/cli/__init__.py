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
from simfluence_cli.cli._app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]

"""Command-line interface: a thin layer that parses options, calls the core and renders.

Each command lives in its own module and registers itself on the shared ``app``.
"""

from __future__ import annotations

from ._app import app
from . import ingest_cmd  # noqa: F401  (ingest, info)
from . import fit_cmd  # noqa: F401  (fit, simulate)
from . import eval_cmd  # noqa: F401  (eval, import-scores, top, plot)
from . import whatif_cmd  # noqa: F401  (whatif, groups, design)
from . import verify_cmd  # noqa: F401  (verify)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]

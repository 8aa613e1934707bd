"""Command-line interface: a thin layer that parses options, calls the core and renders.

Each command lives in its own module and registers itself on the shared ``app``.
"""

from __future__ import annotations

from ._app import app
from . import ingest_cmd  # noqa: F401  (registers ingest, info)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]

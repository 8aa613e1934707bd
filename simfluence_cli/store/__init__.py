"""The file-based Parquet run store: runs, saved models, integrity checks, locks.

Layer: above ``model`` and ``io`` (it persists models and ingests logs); never imports
``analysis`` or ``cli``.
"""

from simfluence_cli.store.run_store import IngestReport, RunStore

__all__ = ["IngestReport", "RunStore"]

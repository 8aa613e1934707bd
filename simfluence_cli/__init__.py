"""simfluence: learn training-run simulators (Simfluence, Guu et al. 2023) from logged runs.

Public API::

    from simfluence_cli import RunStore, Simulator
    runs = RunStore("simfluence-store").load("fit")
    sim = Simulator(method="linear", l2="auto").fit(runs)
    traj = sim.simulate(curricula, init_loss)

Errors derive from SimfluenceError (tree in ``simfluence_cli.errors``); fit diagnostics are
emitted as SimfluenceWarning. Modules starting with ``_`` are private.
"""

from simfluence_cli._version import __version__
from simfluence_cli.errors import (
    ConflictError,
    InputError,
    MissingExtraError,
    ModelError,
    SelectionError,
    SimfluenceError,
    SimfluenceWarning,
    StoreError,
    StoreLockedError,
    StoreVersionError,
    UsageError,
)

__all__ = [
    "__version__",
    "Run",
    "RunSet",
    "SimfluenceError",
    "SimfluenceWarning",
    "InputError",
    "SelectionError",
    "StoreError",
    "StoreLockedError",
    "StoreVersionError",
    "ConflictError",
    "ModelError",
    "MissingExtraError",
    "UsageError",
    "RunStore",
    "Simulator",
    "Curriculum",
    "read_curriculum",
    "save_model",
    "load_model",
    "list_models",
    "RunLogger",
]

# Everything that needs numpy, scipy or pyarrow loads on first use, so `import simfluence_cli`
# (and with it `simfluence --help`) stays fast.
_LAZY = {
    "Run": ".runs",
    "RunSet": ".runs",
    "RunStore": ".store.run_store",
    "Simulator": ".model.simulator",
    "Curriculum": ".io.curriculum",
    "read_curriculum": ".io.curriculum",
    "save_model": ".store.saved_models",
    "load_model": ".store.saved_models",
    "list_models": ".store.saved_models",
    "RunLogger": ".io.run_logger",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""simfluence: learn training-run simulators (Simfluence, Guu et al. 2023) from logged runs.

Public API (docs/python-api.md)::

    from simfluence_cli import RunStore, Simulator
    store = RunStore("simfluence-store")
    sim = Simulator(method="linear", l2="auto").fit(store.load("fit"))
    traj = sim.simulate(curricula, init_loss)
    store.models.fit("linear", Simulator(l2="auto"), runs="fit")   # fit and save by name
    sim = store.models["linear"]                                   # load it back

Errors derive from SimfluenceError (tree in ``simfluence_cli.errors``); fit diagnostics are
emitted as SimfluenceWarning. Modules starting with ``_`` are private.
"""

from simfluence_cli._version import __version__
from simfluence_cli.errors import (
    ConflictError,
    InputError,
    MissingExtraError,
    ModelError,
    ModelNotFoundError,
    NotFittedError,
    RunNotFoundError,
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
    "SimulatorConfig",
    "ExecutionOptions",
    "NotFittedError",
    "ModelNotFoundError",
    "RunNotFoundError",
    "ModelRegistry",
    "StoredModel",
    "fit_model",
    "delete_model",
    "simulate_chunks",
    "evaluate_models",
    "resolve_init_loss",
    "write_scores",
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
    "SimulatorConfig": ".model.simulator",
    "ExecutionOptions": ".model.simulator",
    "ModelRegistry": ".store.saved_models",
    "StoredModel": ".store.saved_models",
    "fit_model": ".store.saved_models",
    "delete_model": ".store.saved_models",
    "simulate_chunks": ".store.saved_models",
    "evaluate_models": ".analysis.evaluation",
    "resolve_init_loss": ".analysis.initial_losses",
    "write_scores": ".io.score_files",
}


def __dir__():
    """The public names too (they load lazily), so completion in a notebook finds them."""
    return sorted(set(globals()) | set(__all__))


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

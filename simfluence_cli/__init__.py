"""simfluence: learn training-run simulators (Simfluence, Guu et al. 2023) from logged runs.

Public API::

    from simfluence_cli import RunStore, Simulator
    runs = RunStore("simfluence-store").load("fit")
    sim = Simulator(method="linear", l2="auto").fit(runs)
    traj = sim.simulate(curricula, init_loss)
"""

from ._version import __version__
from .errors import (
    ConflictError,
    InputError,
    MissingExtraError,
    ModelError,
    SelectionError,
    SimfluenceError,
    StoreError,
    StoreLockedError,
    StoreVersionError,
    UsageError,
)
from .runs import Run, RunSet

__all__ = [
    "__version__",
    "Run",
    "RunSet",
    "SimfluenceError",
    "InputError",
    "SelectionError",
    "StoreError",
    "StoreLockedError",
    "StoreVersionError",
    "ConflictError",
    "ModelError",
    "MissingExtraError",
    "UsageError",
]

"""A simulator's model configuration (:class:`SimulatorConfig`) and the allowed choices.

Plain Python (no numpy): the CLI builds its ``--method/--prior/--clip/--solver`` choices from
these tuples at import time without loading the numerical stack.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from simfluence_cli.errors import UsageError

LINEAR_METHODS = ("linear", "additive", "multiplicative")  # the paper's form and its ablations
#: the optimizer-aware simulator (model/optimizer_aware.py): batch mean x logged lr, AR memory,
#: per-test time basis, loss transform; its choices by CV grouped by run
OPTIMIZER_AWARE = "optimizer-aware"
METHODS = (*LINEAR_METHODS, OPTIMIZER_AWARE)
#: what ``simfluence fit --method`` takes: a method, or "auto" (the default), resolved by
#: :func:`resolve_method` before the fit (a fitted model records the resolved method)
AUTO_METHOD = "auto"
FIT_METHODS = (AUTO_METHOD, *METHODS)
TRANSFORMS = ("identity", "log", "logodds")  # optimizer-aware loss transforms
DEFAULT_L2_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # 10^-3 .. 10^3
PRIORS = ("no-change", "zero")  # what the penalty shrinks toward
CLIPS = ("observed", "none")  # rollout safeguard
SOLVERS = ("auto", "direct", "cg")  # execution only: every solver gives the same parameters
UNSEEN_POLICIES = ("error", "prior", "skip")


def resolve_method(method: str, every_step_logged: bool = True) -> str:
    """The method ``auto`` stands for, given whether every fitting run logs its test losses
    after every step: optimizer-aware if so (it nests the paper's Linear, reducing to its form
    where the logs show no lr schedule and CV finds no memory, and is the more accurate on
    held-out runs of every optimizer family measured, bench/RESULTS-accuracy.md); else the
    paper's linear (optimizer-aware fits increments between consecutive logged steps; Linear
    also fits losses logged every k steps). Any other name is returned as is."""
    if method != AUTO_METHOD:
        return method
    return OPTIMIZER_AWARE if every_step_logged else "linear"


@dataclass(frozen=True)
class SimulatorConfig:
    """A simulator's model configuration: everything that changes the fitted parameters.

    Saved as JSON in the model manifest (``config``) beside the results and read back into
    this dataclass on load. Execution options (solver, workers, ...) are not part of it:
    see :class:`ExecutionOptions`. The CLI's ``--method/--prior/--clip`` choices come from
    ``SimulatorConfig.CHOICES``.
    """

    method: str = "linear"
    l2: float | str = 1.0
    prior: str = "no-change"
    clip: str = "observed"
    clip_margin: float = 0.5
    cv_folds: int = 5
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    # optimizer-aware only; "auto" = chosen by CV grouped by run (see docs/optimizer-aware.md)
    transform: str = "auto"
    ar: bool | str = "auto"
    time_basis: int | str = "auto"

    #: keys recorded only for the optimizer-aware method (older manifests lack them)
    OPTIMIZER_KEYS: ClassVar[tuple[str, ...]] = ("transform", "ar", "time_basis")

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "method": METHODS,
        "prior": PRIORS,
        "clip": CLIPS,
    }

    def validate(self) -> SimulatorConfig:
        """Raise UsageError on a malformed configuration; returns self."""
        for key, allowed in self.CHOICES.items():
            v = getattr(self, key)
            if v not in allowed:
                raise UsageError(f"unknown {key} {v!r}; choose one of {', '.join(allowed)}")
        if isinstance(self.l2, str):
            if self.l2 != "auto":
                raise UsageError(f"--l2 must be a number >= 0 or 'auto', got {self.l2!r}")
        elif not (isinstance(self.l2, int | float) and math.isfinite(self.l2) and self.l2 >= 0):
            raise UsageError(f"--l2 must be a finite number >= 0, got {self.l2!r}")
        if not (math.isfinite(self.clip_margin) and self.clip_margin >= 0):
            raise UsageError(f"clip_margin must be a finite number >= 0, got {self.clip_margin!r}")
        if not (isinstance(self.cv_folds, numbers.Integral) and self.cv_folds >= 2):
            raise UsageError(f"cv_folds must be an integer >= 2, got {self.cv_folds!r}")
        grid = [float(g) for g in self.l2_grid]
        if not grid or not all(math.isfinite(g) and g >= 0 for g in grid):
            raise UsageError("l2_grid must be a non-empty list of finite numbers >= 0")
        if self.transform != "auto" and self.transform not in TRANSFORMS:
            raise UsageError(
                f"unknown transform {self.transform!r}; choose auto, {', '.join(TRANSFORMS)}"
            )
        if self.ar not in ("auto", True, False):
            raise UsageError(f"ar must be 'auto', True or False, got {self.ar!r}")
        tb = self.time_basis
        if tb != "auto" and not (
            isinstance(tb, numbers.Integral) and not isinstance(tb, bool) and 0 <= tb <= 64
        ):
            raise UsageError(f"time_basis must be 'auto' or an integer 0..64, got {tb!r}")
        return self

    def to_json(self) -> dict:
        """The configuration as JSON-ready values (what a model manifest records)."""
        d = asdict(self)
        d["l2_grid"] = list(self.l2_grid)
        if self.method != OPTIMIZER_AWARE:  # the paper's methods record what they always did
            for k in self.OPTIMIZER_KEYS:
                d.pop(k)
        return d

    @classmethod
    def from_json(cls, data: dict) -> SimulatorConfig:
        """Read back :meth:`to_json` (extra keys, e.g. a manifest's runs, are ignored; missing
        keys take the defaults, as in manifests written before a key existed)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        if "l2_grid" in kw:
            kw["l2_grid"] = tuple(float(x) for x in kw["l2_grid"])
        return cls(**kw)

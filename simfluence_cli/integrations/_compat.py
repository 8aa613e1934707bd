"""Adapter between the integrations and :class:`simfluence_cli.RunLogger` (no torch import).

``RunLogger.step(..., lr=...)`` is being added on another branch. Until it lands everywhere,
:func:`log_step` passes the learning rate only to loggers whose ``step`` accepts ``lr``; with an
older ``RunLogger`` the rate is kept in memory by the caller (``.lrs``) but not written to the file.
Delete this module (and call ``logger.step(ids, losses, lr=lr)`` directly) once every supported
RunLogger takes ``lr``.
"""

from __future__ import annotations

import inspect

_ACCEPTS_LR: dict[type, bool] = {}


def step_accepts_lr(logger_type: type) -> bool:
    """True when ``logger_type.step`` takes an ``lr`` keyword (checked once per class)."""
    ok = _ACCEPTS_LR.get(logger_type)
    if ok is None:
        try:
            params = inspect.signature(logger_type.step).parameters
        except (TypeError, ValueError):
            params = {}
        ok = "lr" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        _ACCEPTS_LR[logger_type] = ok
    return ok


def log_step(logger, ids, losses, lr: float | None, step: int | None = None) -> int:
    """``logger.step(ids, losses, step=step, lr=lr)``, dropping ``lr`` if the logger cannot take it."""
    kwargs = {} if step is None else {"step": step}
    if lr is not None and step_accepts_lr(type(logger)):
        kwargs["lr"] = float(lr)
    return logger.step(ids, losses, **kwargs)

"""JAX / Optax helpers: log a JAX training loop as encoding A without a host sync per step.

:class:`simfluence_cli.RunLogger` already takes JAX arrays (IDs, losses, a 0-d learning rate),
but it converts each value when it is called, so a loop that logs every step waits for every
step's computation before dispatching the next one. :class:`JaxRunLogger` keeps the values as
they are (device arrays), and writes them in blocks of ``flush_every`` steps with one round of
host transfers per block. :func:`learning_rate` reads, from an optax state, the learning rate the
latest update used (not the schedule at the step index, which is one step ahead).

Usage in a jitted loop (``optax.inject_hyperparams`` keeps the learning rate in the state)::

    import optax
    from simfluence_cli.integrations.jax import JaxRunLogger

    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, warmup_steps=10, decay_steps=100)
    opt = optax.inject_hyperparams(optax.adamw)(learning_rate=schedule)
    with JaxRunLogger("runs/run-000.jsonl.gz", test_ids=test_ids) as log:
        log.initial(test_losses(params))             # step 0: the starting checkpoint
        for idx in batches:                          # arrays of example IDs
            params, opt_state = train_step(params, opt_state, X[idx], y[idx])
            log.step(idx, test_losses(params), opt_state=opt_state)   # lr read from opt_state

With ``optax.MultiSteps`` (gradient accumulation) call ``log.add(idx)`` per micro-batch and
``log.step(losses=..., opt_state=...)`` once per real update (every k-th micro-batch, counted
across epochs). Given ``opt_state``, every logged step is checked against the number of updates
the state has applied, which catches a step logged where no update happened, or a reused state.

Nothing here imports jax: values are handled through the array protocols (``__array__``,
``copy_to_host_async``), so the module needs no extra beyond the jax you train with.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from simfluence_cli import RunLogger
from simfluence_cli.io.run_logger import CommitOnExit, RunLogError

__all__ = ["JaxRunLogger", "learning_rate"]


def _nodes(tree, path=()):
    """Every node of an optax state tree (namedtuples, tuples, lists, dicts) with its path
    (indices / keys from the root), depth first."""
    yield path, tree
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, (tuple, list)):
        items = enumerate(tree)
    else:
        return
    for key, child in items:
        yield from _nodes(child, (*path, key))


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _has_field(node, field: str) -> bool:
    """A namedtuple field (``hasattr`` would also see ``tuple.count``, a method)."""
    return field in getattr(type(node), "_fields", ())


def _field_reader(path, type_name: str, field: str) -> Callable:
    """``state -> field of the node at path``; LookupError if that node is not a type_name."""

    def read(state):
        node = _at(state, path)
        if type(node).__name__ != type_name:
            raise LookupError(f"no {type_name} at {path}")
        return getattr(node, field)

    return read


def _lr_reader(opt_state, schedule: Callable | None = None) -> Callable:
    """A function ``opt_state -> learning rate of the latest update`` for states shaped like this
    one (the tree is searched once; see :func:`learning_rate`)."""
    found = [
        path
        for path, s in _nodes(opt_state)
        if isinstance(getattr(s, "hyperparams", None), Mapping) and "learning_rate" in s.hyperparams
    ]
    if len(found) > 1:
        raise ValueError(
            f"learning_rate: {len(found)} inject_hyperparams states with a learning_rate in "
            "opt_state; pass lr= to log.step() yourself"
        )
    if found:
        name = type(_at(opt_state, found[0])).__name__
        hyperparams = _field_reader(found[0], name, "hyperparams")
        return lambda state: hyperparams(state)["learning_rate"]
    if schedule is not None:
        counts = [
            path
            for path, s in _nodes(opt_state)
            if type(s).__name__ == "ScaleByScheduleState" and _has_field(s, "count")
        ]
        if len(counts) == 1:
            count = _field_reader(counts[0], "ScaleByScheduleState", "count")
            return lambda state: schedule(count(state) - 1)
        what = "no ScaleByScheduleState" if not counts else f"{len(counts)} ScaleByScheduleStates"
        raise ValueError(f"learning_rate: {what} in opt_state to evaluate the schedule at")
    raise ValueError(
        "learning_rate: opt_state holds no learning rate; build the optimizer with "
        "optax.inject_hyperparams(optax.adamw)(learning_rate=schedule), or pass schedule="
    )


def _updates_reader(opt_state) -> Callable | None:
    """A function ``opt_state -> number of updates applied`` (``MultiStepsState.gradient_step``,
    else an inject_hyperparams or ``ScaleBy...State`` count), or None if the state has none."""
    nodes = list(_nodes(opt_state))
    for test, field in (
        (lambda s: type(s).__name__ == "MultiStepsState", "gradient_step"),
        (lambda s: isinstance(getattr(s, "hyperparams", None), Mapping), "count"),
        (lambda s: type(s).__name__.startswith("ScaleBy"), "count"),
    ):
        for path, s in nodes:
            if test(s) and _has_field(s, field):
                return _field_reader(path, type(s).__name__, field)
    return None


def learning_rate(opt_state, schedule: Callable | None = None):
    """The learning rate the latest optax update used, read from ``opt_state`` after the update.

    - With ``optax.inject_hyperparams(...)(learning_rate=...)`` anywhere in the state (also
      inside ``optax.MultiSteps`` or a chain): its ``hyperparams["learning_rate"]``, which
      inject_hyperparams sets to the value the update used.
    - Else, with ``schedule`` given: ``schedule(count - 1)``, ``count`` being that of the
      state's ``ScaleByScheduleState`` (the number of updates done). The update number t uses
      ``schedule(t - 1)``: ``schedule(t)`` would log the next step's rate.

    Returns the value as the state holds it (a device scalar: no host sync here).
    """
    return _lr_reader(opt_state, schedule)(opt_state)


class _Micro(list):
    """The IDs of a step's micro-batches, given one by one to :meth:`JaxRunLogger.add`."""


def _leaves(value):
    """The values inside lists, tuples and dicts (one level per container), and value itself."""
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _start_transfers(values) -> None:
    """Start the device-to-host copies of every JAX array in values (host values: nothing)."""
    for leaf in _leaves(values):
        start = getattr(leaf, "copy_to_host_async", None)
        if start is not None:
            start()


def _to_host(x):
    """A device array as numpy (lists of arrays element-wise); host values unchanged."""
    if x is None or isinstance(x, (str, bytes, int, float, np.ndarray)):
        return x
    if isinstance(x, Mapping):
        return {k: _to_host(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_host(v) for v in x]
    if not hasattr(x, "__array__") and hasattr(x, "__jax_array__"):
        x = x.__jax_array__()
    return np.asarray(x) if hasattr(x, "__array__") else x


def _no_reader(state):
    raise LookupError("no learning-rate reader yet")


class JaxRunLogger(CommitOnExit):
    """Log one JAX training run as encoding A, moving values to the host in blocks.

    Same arguments as :class:`simfluence_cli.RunLogger` plus ``flush_every`` (steps per block;
    1 converts at every call like RunLogger) and ``schedule`` (for :func:`learning_rate` when the
    optimizer is not wrapped in ``optax.inject_hyperparams``). Values are checked when their block
    is written: an error (a non-finite loss, a float ID) is raised by a later ``step()`` or by
    ``close()``, naming the step, and leaves no file, as with RunLogger.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        run_id: str | None = None,
        *,
        test_ids: Iterable | None = None,
        precision: int | None = None,
        optimizer: str | None = None,
        schedule: Callable | None = None,
        flush_every: int = 256,
        resume: Mapping | None = None,
    ):
        if not isinstance(flush_every, int) or isinstance(flush_every, bool) or flush_every < 1:
            raise ValueError(f"flush_every must be an integer >= 1, got {flush_every!r}")
        self.log = RunLogger(
            path, run_id, test_ids=test_ids, precision=precision, optimizer=optimizer, resume=resume
        )
        self.path = self.log.path
        self.schedule = schedule
        self.flush_every = flush_every
        # last step queued; None before initial(); a resumed log continues after its last step
        self.last_step: int | None = self.log.last_step
        self._pending: list[tuple] = []  # (step, batch, losses, lr), device values as given
        self._micro: list = []
        self._read_lr: Callable = _no_reader
        self._read_updates: Callable | None = _no_reader

    def __enter__(self) -> JaxRunLogger:
        return self

    def initial(self, losses) -> None:
        """Queue step 0: the test losses at the shared starting checkpoint."""
        self._check_open()
        if self.last_step is not None:
            raise RunLogError(
                "initial() called twice (step 0 already logged)", path=str(self.path), field="step"
            )
        if losses is None:
            raise RunLogError("step 0 needs the initial losses", path=str(self.path), field="loss")
        self._pending.append((0, None, losses, None, None))
        self.last_step = 0
        self._maybe_flush()

    def add(self, ids) -> None:
        """Record a micro-batch's IDs for the next :meth:`step` (gradient accumulation)."""
        self._micro.append(ids)

    def step(self, ids=None, losses=None, *, lr=None, opt_state=None) -> int:
        """Queue one optimizer step; returns its number (1, 2, ...).

        ``ids``: the example IDs of the step's batch (an int array, a list); default: the IDs
        given to :meth:`add` since the last step. ``losses``: the test losses after the update,
        or ``None``. ``lr``: the learning rate the update used; or pass the updated
        ``opt_state`` to read it with :func:`learning_rate`. With ``opt_state`` the step is also
        checked (when its block is written) against the number of updates the state has applied
        (``MultiStepsState.gradient_step`` or the optimizer's ``count``): step t must be update t.
        """
        self._check_open()
        if self.last_step is None:
            raise RunLogError(
                "step() before initial()",
                path=str(self.path),
                field="step",
                hint="log the starting checkpoint's losses with initial(losses) first",
            )
        if ids is None:
            if not self._micro:
                raise RunLogError(
                    f"step {self.last_step + 1} has no IDs: pass ids= or call add()",
                    path=str(self.path),
                    field="batch",
                )
            ids = _Micro(self._micro)
        elif self._micro:
            raise RunLogError(
                f"step {self.last_step + 1}: IDs given both to add() and to step()",
                path=str(self.path),
                field="batch",
            )
        self._micro = []
        if lr is None and opt_state is not None:
            try:  # the state tree is searched once; searched again if its shape changed
                lr = self._read_lr(opt_state)
            except (LookupError, TypeError, AttributeError):
                self._read_lr = _lr_reader(opt_state, self.schedule)
                lr = self._read_lr(opt_state)
        updates = None
        if opt_state is not None:
            try:
                updates = None if self._read_updates is None else self._read_updates(opt_state)
            except (LookupError, TypeError, AttributeError):
                self._read_updates = _updates_reader(opt_state)
                updates = None if self._read_updates is None else self._read_updates(opt_state)
        self.last_step += 1
        self._pending.append((self.last_step, ids, losses, lr, updates))
        self._maybe_flush()
        return self.last_step

    def state_dict(self) -> dict:
        """The log so far (queued steps written first), to save with a training checkpoint and
        resume from: ``JaxRunLogger(path, ..., resume=state)`` continues after its last step, as
        :meth:`simfluence_cli.RunLogger.state_dict` (plain lists and strings)."""
        self.flush()
        return self.log.state_dict()

    def _maybe_flush(self) -> None:
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Move the queued steps to the host (one round of transfers) and write them."""
        pending, self._pending = self._pending, []
        try:
            _start_transfers([item[1:] for item in pending])
            for step, ids, losses, lr, updates in pending:
                if updates is not None and int(np.asarray(_to_host(updates))) != step:
                    raise RunLogError(
                        f"step {step}: the optimizer state has applied "
                        f"{int(np.asarray(_to_host(updates)))} update(s)",
                        path=str(self.path),
                        field="step",
                        hint="call step() once per applied update with the opt_state it returned, "
                        "starting from a fresh opt.init() (optax.MultiSteps applies an update "
                        "every k-th micro-batch, counted across epochs)",
                    )
                losses = _to_host(losses)
                if step == 0:
                    self.log.initial(losses)
                    continue
                if isinstance(ids, _Micro):  # micro-batches: arrays or lists of IDs, in order
                    parts = [_to_host(part) for part in ids]
                    ids = [
                        i
                        for p in parts
                        for i in (p.reshape(-1).tolist() if isinstance(p, np.ndarray) else p)
                    ]
                else:
                    ids = _to_host(ids)
                self.log.step(ids, losses, step=step, lr=_to_host(lr))
        except BaseException:
            self.abort()
            raise

    def close(self) -> None:
        """Write what is queued and move the file into place (see RunLogger.close)."""
        if self.log.closed:
            return
        if self._micro:
            self.abort()
            raise RunLogError(
                "add() was called after the last step(): those micro-batches are in no logged "
                "step (optax.MultiSteps never applies an incomplete last accumulation)",
                path=str(self.path),
                field="batch",
            )
        self.flush()
        self.log.close()

    def _check_open(self) -> None:
        if self.log.closed:
            raise RunLogError("logger is closed", path=str(self.path))

    def abort(self) -> None:
        """Stop without writing: no file is left."""
        self._pending = []
        self._micro = []
        self.log.abort()

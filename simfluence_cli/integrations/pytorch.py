"""PyTorch helpers: log plain PyTorch training runs as encoding A (``pip install 'simfluence-cli[torch]'``).

- :class:`IdDataset` attaches an example ID to every item (wrap *before* ``Subset``).
- :func:`per_example_losses` evaluates the per-example test loss (no grad, eval mode restored).
- :class:`TorchRunLogger` logs, per optimizer step, the batch IDs, the learning rate the optimizer
  actually used, and the test losses every ``eval_every`` steps and after the last one (step 0 =
  starting checkpoint); ``state_dict()`` / ``resume=`` continue a log after a restart.
- :func:`log_runs` trains N seeded curricula from one checkpoint and writes one log per run.

Usage in your own loop::

    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from simfluence_cli.integrations.pytorch import IdDataset, TorchRunLogger, batch_ids

    train = Subset(IdDataset(train_ds, ids=[f"e{i}" for i in range(len(train_ds))]), keep)  # IDs first
    loader = DataLoader(train, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10)
    with TorchRunLogger("runs/run-000.jsonl.gz", model, test_ds, optimizer=opt,
                        loss_fn=F.cross_entropy, eval_every=5) as log:   # logs step 0 on entry
        for (x, y), ids in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            log.step(ids)          # batch IDs + the lr used by opt.step() (+ test losses every 5 steps)
            sched.step()

Or let :func:`log_runs` do the loop for N runs from the same starting weights::

    paths = log_runs(model, IdDataset(train_ds), test_ds, "runs/", seeds=range(8),
                     optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1),
                     loss_fn=F.cross_entropy, batch_size=8, epochs=2, eval_every=5)

then ``simfluence ingest runs/ --tag mine``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from simfluence_cli import RunLogger
from simfluence_cli.errors import SimfluenceWarning
from simfluence_cli.integrations._same_start import check_same_start
from simfluence_cli.io.run_logger import CommitOnExit, RunLogError, _as_id

__all__ = [
    "IdDataset",
    "batch_ids",
    "strip_ids",
    "per_example_losses",
    "TorchRunLogger",
    "log_runs",
]

ID_KEY = "example_id"


def _plain_id(x):
    """A tensor / numpy scalar ID becomes a Python int; strings and ints pass through."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(
                f"an example ID must be a scalar, got a tensor of shape {tuple(x.shape)}"
            )
        return x.item()
    if isinstance(x, np.generic):
        return x.item()
    return x


class IdDataset(Dataset):
    """Wrap a map-style dataset so that every item carries its example ID.

    ``ids`` is a sequence aligned with ``dataset`` (strings or integers); by default the index
    ``0..len-1``. An item ``x`` becomes ``(x, id)``; a dict item becomes a copy with an extra
    ``id_key`` entry (``"example_id"``). With the default ``DataLoader`` collation a batch is then
    ``(items, ids)`` or a dict with ``batch["example_id"]``; :func:`batch_ids` reads either.

    Wrap the *full* dataset first and take subsets afterwards
    (``Subset(IdDataset(ds, ids), keep)``): a ``Subset`` renumbers its items 0..k-1, so IDs attached
    after subsetting (``IdDataset(Subset(ds, keep))``) would be positions in the subset, not the
    original example IDs.
    """

    def __init__(self, dataset, ids: Sequence | None = None, *, id_key: str = ID_KEY):
        self.dataset = dataset
        n = len(dataset)
        if ids is None:
            ids = range(n)
        ids = [_plain_id(i) for i in ids]
        if len(ids) != n:
            raise ValueError(f"IdDataset: {len(ids)} ids for a dataset of {n} items")
        if len(set(ids)) != n:
            raise ValueError("IdDataset: ids contain duplicates")
        self.ids = ids
        self.id_key = id_key

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        item = self.dataset[i]
        if isinstance(item, Mapping):
            out = dict(item)
            out[self.id_key] = self.ids[i]
            return out
        return item, self.ids[i]


def batch_ids(batch, id_key: str = ID_KEY) -> list:
    """The example IDs of a collated :class:`IdDataset` batch, as a list of str / int."""
    ids = batch[id_key] if isinstance(batch, Mapping) else batch[-1]
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        return ids.reshape(-1).tolist()
    return [_plain_id(i) for i in ids]


def strip_ids(batch, id_key: str = ID_KEY):
    """The collated batch without its IDs: ``items`` of ``(items, ids)``, or the dict minus ``id_key``."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != id_key}
    return batch[0]


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def _default_loss(output, target):
    return F.cross_entropy(output, target, reduction="none")


def _call_loss(loss_fn, output, target):
    red = getattr(loss_fn, "reduction", None)
    if isinstance(loss_fn, torch.nn.Module) and red not in (None, "none"):
        raise ValueError(f"loss_fn has reduction={red!r}; per-example losses need reduction='none'")
    if loss_fn is F.cross_entropy or loss_fn is F.mse_loss or loss_fn is F.nll_loss:
        return loss_fn(output, target, reduction="none")
    return loss_fn(output, target)


def _default_forward(model, batch, loss_fn):
    """``loss_fn(model(x), y)`` for an ``(x, y)`` batch; ``model(**inputs)`` + ``labels`` for dicts."""
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "label")}
        target = batch["labels"] if "labels" in batch else batch["label"]
        out = model(**inputs)
    else:
        x, y = batch[0], batch[1]
        out = model(x)
        target = y
    if hasattr(out, "logits"):
        out = out.logits
    return _call_loss(loss_fn, out, target)


@torch.no_grad()
def per_example_losses(
    model: torch.nn.Module,
    data,
    loss_fn: Callable | None = None,
    *,
    batch_size: int = 256,
    device=None,
    forward: Callable | None = None,
) -> np.ndarray:
    """Loss of every test example, in data order, as a float64 array.

    ``data`` is a ``DataLoader`` (must not shuffle) or a map-style dataset of ``(x, y)`` pairs (or
    dicts with ``"labels"``), batched here without shuffling. ``loss_fn(output, target)`` must return
    one loss per example, e.g. ``nn.CrossEntropyLoss(reduction="none")``; ``F.cross_entropy``,
    ``F.mse_loss`` and ``F.nll_loss`` are called with ``reduction="none"``; the default is
    cross-entropy. For other batch layouts pass ``forward(model, batch) -> tensor (batch,)``.
    Gradients are off; the model's train/eval mode is restored afterwards.
    """
    loss_fn = _default_loss if loss_fn is None else loss_fn
    device = _model_device(model) if device is None else torch.device(device)
    if not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    _check_test_loader(data)
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in data:
            batch = _to(batch, device)
            losses = (
                forward(model, batch)
                if forward is not None
                else _default_forward(model, batch, loss_fn)
            )
            losses = torch.as_tensor(losses)
            n = _batch_len(batch)
            if losses.dim() != 1 or (n is not None and losses.shape[0] != n):
                raise ValueError(
                    f"per-example loss has shape {tuple(losses.shape)}, expected ({n},): "
                    "use a loss with reduction='none' that returns one value per example"
                )
            out.append(losses.detach().double().cpu())
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("per_example_losses: the test data is empty")
    return torch.cat(out).numpy()


def _check_test_loader(loader: DataLoader) -> None:
    """A test DataLoader must give every test example once, in order: refuse shuffling."""
    sampler = getattr(loader.batch_sampler, "sampler", None) or loader.sampler
    if isinstance(sampler, RandomSampler):
        raise ValueError(
            "the test DataLoader shuffles (shuffle=True / RandomSampler): each evaluation would "
            "pair the losses with other test ids; pass the test dataset itself or a DataLoader "
            "with shuffle=False"
        )


def _batch_len(batch) -> int | None:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        for v in batch.values():
            n = _batch_len(v)
            if n is not None:
                return n
        return None
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    return None


class TorchRunLogger(CommitOnExit):
    """Log one PyTorch training run as encoding A: batch IDs, lr and test losses per optimizer step.

    On entering the ``with`` block the test losses of the current model are logged as step 0.
    Call :meth:`step` once per optimizer step, after ``optimizer.step()``. The learning rate
    logged for a step is ``optimizer.param_groups[0]["lr"]`` read by a step pre-hook at the moment
    ``optimizer.step()`` runs, so it is the rate actually used whether the scheduler is stepped
    before or after :meth:`step`. Test losses are evaluated every ``eval_every`` steps (0 = never
    after step 0) and after the last step, when the ``with`` block ends (so the final losses are
    logged whatever ``eval_every`` divides). If the block raises, or :meth:`abort` is called, no
    file is written.

    With gradient accumulation call :meth:`add` with each micro-batch's IDs and :meth:`step` with
    no IDs after ``optimizer.step()``: the step's batch is the union of its micro-batches.
    Micro-batches whose gradients ``optimizer.zero_grad()`` clears before any ``optimizer.step()``
    used them (left over at an epoch's end, zeroed when the next epoch starts) trained nothing:
    their IDs are dropped (counted in :attr:`discarded`); left over without zeroing, their
    gradients and IDs join the next step.

    A step whose update did not happen (a ``torch.amp.GradScaler`` found inf/NaN gradients and
    skipped ``optimizer.step()``) trained on nothing: pass ``scaler=`` and :meth:`step` drops it
    by itself (the scaler lowered its scale and the optimizer did not step), or call
    :meth:`skip` instead of :meth:`step` for it.

    Resuming from a checkpoint: save :meth:`state_dict` with the model and optimizer, and in the
    resumed process pass it as ``resume=``; step 0 is then not re-evaluated and the log continues
    after the checkpoint's step (steps trained after the checkpoint and lost are not logged twice).

    The rates are kept in :attr:`lrs` (one per step). They are written as ``"lr"`` in each line.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: torch.nn.Module,
        test_data,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        loss_fn: Callable | None = None,
        eval_every: int = 1,
        test_ids: Iterable | None = None,
        run_id: str | None = None,
        precision: int | None = None,
        batch_size: int = 256,
        device=None,
        forward: Callable | None = None,
        id_key: str = ID_KEY,
        resume: Mapping | None = None,
        scaler=None,
    ):
        if eval_every < 0:
            raise ValueError("eval_every must be >= 0")
        self.path = Path(path)
        self.resume = resume
        self.scaler = scaler
        self._scale = None if scaler is None else scaler.get_scale()
        self.skipped = 0  # steps dropped because the optimizer skipped them
        self.discarded = 0  # IDs from add() whose gradients were zeroed before any step used them
        self.model = model
        self.optimizer = optimizer
        self.eval_every = int(eval_every)
        self.id_key = id_key
        self._eval_kw = dict(loss_fn=loss_fn, batch_size=batch_size, device=device, forward=forward)
        if isinstance(test_data, DataLoader):
            _check_test_loader(test_data)
            self.test_data = test_data
        else:
            self.test_data = DataLoader(test_data, batch_size=batch_size, shuffle=False)
        if test_ids is None:
            test_ids = [f"t{j}" for j in range(len(self.test_data.dataset))]
        self.test_ids = list(test_ids)
        self._logger_kw = dict(run_id=run_id, test_ids=self.test_ids, precision=precision)
        self.log = None
        self.lrs: list[float | None] = []
        self.steps = 0
        self._pending: list = []
        self._held: tuple[list, float | None] | None = None  # last step, written by the next one
        self._lr_seen: list[float] = []
        self._hook = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> TorchRunLogger:
        state = self.resume
        self.log = RunLogger(
            self.path, **self._logger_kw, resume=None if state is None else state.get("log", state)
        )
        try:
            if state is None:
                if self.optimizer is not None and len(self.optimizer.state):
                    warnings.warn(
                        f"{self.path}: the optimizer already has state (it stepped before, or was "
                        "loaded from a checkpoint), so step 0 is not a fresh start: give each run a "
                        "new optimizer; to continue a logged run after an interruption, pass "
                        "resume=<log.state_dict() saved with the checkpoint>",
                        SimfluenceWarning,
                        stacklevel=2,
                    )
                initial = self.evaluate()
                check_same_start(self.model, self.test_ids, initial, str(self.path))
                self.log.initial(initial)
            else:
                self.lrs = list(state.get("lrs", []))
                self._pending = list(state.get("pending", []))
                held = state.get("held")
                self._held = None if held is None else (list(held[0]), held[1])
                self.steps = self.log.last_step + (held is not None)
            if self.optimizer is not None:
                self._hook = self.optimizer.register_step_pre_hook(self._on_optimizer_step)
                self._watch_zero_grad()
        except BaseException:
            self.abort()
            raise
        return self

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.optimizer is not None and "zero_grad" in vars(self.optimizer):
            del self.optimizer.zero_grad  # the class's method again

    def _watch_zero_grad(self) -> None:
        """Wrap this optimizer's ``zero_grad`` (the instance only): gradients zeroed before any
        ``optimizer.step()`` used them take their micro-batches' IDs out of the current step."""
        zero_grad = self.optimizer.zero_grad

        def zero_grad_and_forget(*args, **kwargs):
            if self._pending and not self._lr_seen:
                self.discarded += len(self._pending)
                self._pending = []
            return zero_grad(*args, **kwargs)

        self.optimizer.zero_grad = zero_grad_and_forget

    def close(self) -> None:
        """Evaluate the last step if it was not, and write the file (atomically)."""
        self._remove_hook()
        if self.log is None:
            return
        if self._held is not None and not self.log.closed:
            try:
                self._write_held(self.evaluate())
            except BaseException:
                self.abort()
                raise
        self.log.close()

    def _write_held(self, losses=None) -> None:
        """Write the step held back (the last one, if it had no evaluation)."""
        if self._held is not None:
            batch, lr = self._held
            self._held = None
            self.log.step(batch, losses, lr=lr)

    def abort(self) -> None:
        """Stop without writing a file."""
        self._remove_hook()
        if self.log is not None:
            self.log.abort()

    def state_dict(self) -> dict:
        """The log so far (plain lists and strings), to save with a training checkpoint and pass
        back as ``TorchRunLogger(..., resume=state)`` when training resumes from it."""
        if self.log is None:
            raise RuntimeError("TorchRunLogger.state_dict() outside its `with` block")
        return {
            "log": self.log.state_dict(),
            "lrs": list(self.lrs),
            "pending": list(self._pending),
            "held": None if self._held is None else [list(self._held[0]), self._held[1]],
        }

    # ------------------------------------------------------------------ logging
    def _on_optimizer_step(self, optimizer, args, kwargs) -> None:
        self._lr_seen.append(float(optimizer.param_groups[0]["lr"]))

    def evaluate(self) -> np.ndarray:
        """Per-example losses of the model on the test data now."""
        return per_example_losses(self.model, self.test_data, **self._eval_kw)

    def skip(self) -> None:
        """Drop the current step: its update did not happen (e.g. a GradScaler skipped
        ``optimizer.step()``), so its micro-batch IDs from :meth:`add` are discarded."""
        self._pending, self._lr_seen = [], []
        self.skipped += 1

    def add(self, ids) -> None:
        """Add a micro-batch's IDs (or the collated batch itself) to the current step."""
        self._pending.extend(self._ids(ids))

    def _ids(self, ids) -> list:
        if isinstance(ids, Mapping) or (
            isinstance(ids, (tuple, list))
            and len(ids) == 2
            and (
                isinstance(ids[0], (tuple, list, Mapping))
                or (isinstance(ids[0], torch.Tensor) and ids[0].dim() > 0)
            )
        ):
            return batch_ids(ids, self.id_key)  # a collated IdDataset batch
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            return ids.reshape(-1).tolist()
        return [_plain_id(i) for i in ids]

    def step(self, ids=None, *, lr: float | None = None, losses=None) -> int:
        """Log one optimizer step: its batch IDs (a list/tensor of IDs or a collated
        :class:`IdDataset` batch; default: the IDs given to :meth:`add`), the lr (default: the one
        ``optimizer.step()`` used) and, every ``eval_every`` steps, the test losses (``losses``
        overrides the evaluation). Returns the step number."""
        if self.log is None:
            raise RuntimeError("TorchRunLogger.step() outside its `with` block")
        if self.scaler is not None and self.optimizer is not None and not self._lr_seen:
            scale, self._scale = self._scale, self.scaler.get_scale()
            if scale is not None and self._scale < scale:  # inf/NaN gradients: no update
                self.skip()
                return self.steps
        elif self.scaler is not None:
            self._scale = self.scaler.get_scale()
        batch = self._ids(ids) if ids is not None else self._pending
        self._pending = []
        t = self.steps + 1
        if lr is None and self.optimizer is not None:
            if len(self._lr_seen) != 1:
                raise RuntimeError(
                    f"{self.path}: optimizer.step() ran {len(self._lr_seen)} times since the last "
                    "log.step(); call log.step() exactly once after each optimizer.step() (with "
                    "gradient accumulation: log.add(ids) per micro-batch); for a step a GradScaler "
                    "skipped, pass TorchRunLogger(..., scaler=scaler) or call log.skip()"
                )
            lr = self._lr_seen[0]
        if not batch:
            raise RunLogError(
                f"empty batch at step {t}",
                path=str(self.path),
                field="batch",
                hint="pass the step's IDs to log.step(ids), or each micro-batch's to log.add(ids)",
            )
        self._lr_seen = []
        batch = [_as_id(e, str(self.path), "batch") for e in batch]
        lr = None if lr is None else float(lr)
        if losses is None and self.eval_every and t % self.eval_every == 0:
            losses = self.evaluate()
        self._write_held()
        if losses is None and self.eval_every:
            self._held = (batch, lr)  # evaluated on close() if it is the last step
        else:
            self.log.step(batch, losses, lr=lr)
        self.steps = t
        self.lrs.append(lr)
        return t


def log_runs(
    model: torch.nn.Module,
    train_dataset,
    test_data,
    out_dir: str | os.PathLike,
    *,
    optimizer_factory: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
    seeds: Iterable[int] | None = None,
    curricula: Sequence[Sequence[Sequence[int]]] | None = None,
    scheduler_factory: Callable | None = None,
    loss_fn: Callable | None = None,
    train_step: Callable | None = None,
    epochs: int = 1,
    batch_size: int = 8,
    eval_every: int = 1,
    test_ids: Iterable | None = None,
    run_prefix: str = "run",
    suffix: str = ".jsonl.gz",
    collate_fn: Callable | None = None,
    precision: int | None = None,
    eval_batch_size: int = 256,
    id_key: str = ID_KEY,
) -> list[Path]:
    """Train several runs from the same starting checkpoint and log each as encoding A.

    ``train_dataset`` is an :class:`IdDataset` (or anything whose collated batches
    :func:`batch_ids` reads). The model's ``state_dict`` is copied once; every run starts from
    that copy with a fresh optimizer from ``optimizer_factory(model.parameters())`` (and
    ``scheduler_factory(optimizer)``, stepped after every optimizer step). Runs are either
    ``seeds`` (run i shuffles with ``torch.Generator().manual_seed(seeds[i])`` for ``epochs``
    epochs of ``batch_size``) or explicit ``curricula`` (run i = list of batches of dataset
    indices). The global torch RNG is also seeded per run (dropout), inside ``fork_rng`` so the
    caller's RNG state is untouched.

    The training step is ``loss_fn(model(x), y).mean()`` (default cross-entropy) with backward and
    ``optimizer.step()``; pass ``train_step(model, batch) -> loss`` for other batch layouts
    (``batch`` without the IDs). Run i is written to ``out_dir/{run_prefix}-{i:03d}{suffix}``. If a
    run raises, its log is discarded (no file) and the exception propagates; earlier runs' files
    stay. The model is restored to the starting checkpoint at the end. Returns the paths written.
    """
    if (seeds is None) == (curricula is None):
        raise ValueError("log_runs: pass exactly one of seeds= or curricula=")
    runs = (
        [("seed", int(s)) for s in seeds]
        if seeds is not None
        else [("curriculum", c) for c in curricula]
    )
    out_dir = Path(out_dir)
    init_state = copy.deepcopy(model.state_dict())
    loss_fn = _default_loss if loss_fn is None else loss_fn
    paths: list[Path] = []

    def default_step(m, batch):
        return _default_forward(m, batch, loss_fn).mean()

    step_fn = train_step or default_step
    try:
        for i, (kind, spec) in enumerate(runs):
            model.load_state_dict(init_state)
            model.train()
            opt = optimizer_factory(model.parameters())
            sched = scheduler_factory(opt) if scheduler_factory is not None else None
            seed = spec if kind == "seed" else i
            if kind == "seed":
                g = torch.Generator().manual_seed(seed)
                loaders = [
                    DataLoader(
                        train_dataset,
                        batch_size=batch_size,
                        shuffle=True,
                        generator=g,
                        collate_fn=collate_fn,
                    )
                ] * epochs
            else:
                loaders = [
                    DataLoader(
                        train_dataset, batch_sampler=[list(b) for b in spec], collate_fn=collate_fn
                    )
                ]
            path = out_dir / f"{run_prefix}-{i:03d}{suffix}"
            device = _model_device(model)
            with (
                torch.random.fork_rng(devices=[]),
                TorchRunLogger(
                    path,
                    model,
                    test_data,
                    optimizer=opt,
                    loss_fn=loss_fn,
                    eval_every=eval_every,
                    test_ids=test_ids,
                    precision=precision,
                    batch_size=eval_batch_size,
                    id_key=id_key,
                ) as log,
            ):
                torch.manual_seed(seed)
                for loader in loaders:
                    for batch in loader:
                        ids = batch_ids(batch, id_key)
                        opt.zero_grad()
                        loss = step_fn(model, _to(strip_ids(batch, id_key), device))
                        loss.backward()
                        opt.step()
                        log.step(ids)
                        if sched is not None:
                            sched.step()
            paths.append(path)
    finally:
        with contextlib.suppress(Exception):
            model.load_state_dict(init_state)
    return paths

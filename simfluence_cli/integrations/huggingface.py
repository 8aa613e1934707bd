"""Hugging Face ``Trainer`` callback: log each training run as encoding A (``pip install 'simfluence-cli[transformers]'``).

Give every training example an ``"example_id"`` field and attach one callback::

    from transformers import Trainer, TrainingArguments
    from simfluence_cli.integrations.huggingface import SimfluenceCallback

    # train_ds items: {"input_ids": [...], "attention_mask": [...], "labels": 1, "example_id": "e17"}
    # test_ds items: the same fields (no example_id needed; test IDs default to t0, t1, ...)
    trainer = Trainer(model=model, args=TrainingArguments("out", report_to=[], ...),
                      train_dataset=train_ds)
    SimfluenceCallback("runs/run-000.jsonl.gz", test_ds, eval_every=10).attach(trainer)
    trainer.train()          # -> runs/run-000.jsonl.gz, or no file at all if training raises

What it records, per *optimizer* step (``state.global_step``): the IDs of every example that went
into the step (with gradient accumulation, the union of its micro-batches), the learning rate
``optimizer.param_groups[0]["lr"]`` read right after ``optimizer.step()`` (before the scheduler
moves it), and the per-example test losses every ``eval_every`` steps and at the last step
(``state.max_steps``); step 0 holds the losses of the starting checkpoint.

How the IDs get there: :meth:`SimfluenceCallback.attach` wraps the trainer's data collator in an
:class:`IdCollator`, which collates the other fields as before and passes the IDs along as a list
under ``"example_id"``; a forward pre-hook on the model removes them from the inputs just before
the forward pass and records them. IDs are taken when a batch is *consumed*, so the DataLoader
(and Trainer) prefetching batches ahead does not shift them. The default
``remove_unused_columns=True`` would drop the ID field; the callback keeps it by adding
``"example_id"`` to the columns Trainer's column-removing collator keeps. A ``datasets.Dataset``
has its columns removed before any collator runs: pass ``remove_unused_columns=False`` with one
(the callback raises a clear error otherwise).

If ``trainer.train()`` raises, :meth:`attach` makes sure the log is discarded (no file).

Resuming: every checkpoint Trainer saves gets the log so far (``simfluence-log-<file stem>.json``
in the ``checkpoint-N`` directory); ``trainer.train(resume_from_checkpoint=...)`` with a fresh
callback on the same path continues that log after step N, so the file is the one an
uninterrupted run writes (Trainer restores the data order and skips the batches already trained).
A checkpoint saved without the callback is refused (a run log must start at step 0).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import TrainerCallback, default_data_collator

from simfluence_cli import RunLogger
from simfluence_cli.integrations._same_start import check_same_start

__all__ = ["IdCollator", "SimfluenceCallback", "per_example_loss"]

ID_KEY = "example_id"


def _plain_id(x):
    if isinstance(x, torch.Tensor):
        return x.item()
    if isinstance(x, np.generic):
        return x.item()
    return x


class IdCollator:
    """Wrap a data collator so the example IDs travel with the batch.

    Each feature's ``id_key`` entry is taken out before ``collator`` (default
    ``transformers.default_data_collator``) collates the rest; the batch then gets
    ``batch[id_key] = [id, ...]`` (a plain list, which Trainer moves to the device unchanged).
    A batch in which *no* feature has the field (Trainer's evaluation and prediction batches,
    which go through the same collator) is collated as it is; a batch in which only some do is
    refused. A training batch without IDs is stopped where it reaches the model
    (:class:`SimfluenceCallback`'s forward pre-hook).
    """

    def __init__(self, collator: Callable | None = None, id_key: str = ID_KEY):
        self.collator = default_data_collator if collator is None else collator
        self.id_key = id_key

    def __call__(self, features):
        if not any(isinstance(f, Mapping) and self.id_key in f for f in features):
            return self.collator(features)  # evaluation / prediction data: no IDs to carry
        ids, rest = [], []
        for f in features:
            if not isinstance(f, Mapping) or self.id_key not in f:
                raise KeyError(
                    f"IdCollator: a batch mixes examples with and without a {self.id_key!r} "
                    "field (give every training example an ID)"
                )
            ids.append(_plain_id(f[self.id_key]))
            rest.append({k: v for k, v in f.items() if k != self.id_key})
        batch = self.collator(rest)
        batch[self.id_key] = ids
        return batch


def _collator_chain(c):
    """The collator and the ones it wraps (RemoveColumnsCollator.data_collator, IdCollator.collator)."""
    seen = []
    while c is not None and len(seen) < 8:
        seen.append(c)
        c = getattr(c, "data_collator", None) or getattr(c, "collator", None)
    return seen


def per_example_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, shift: bool = False
) -> torch.Tensor:
    """Default per-example test loss from model logits and ``labels``.

    2-D logits ``(batch, classes)``: cross-entropy (MSE if there is one output and float labels).
    3-D logits ``(batch, tokens, vocab)``: mean token cross-entropy of each example over labels
    != -100; ``shift=True`` (causal LMs) predicts token t+1 from position t.
    """
    if logits.dim() == 2:
        if logits.shape[-1] == 1 and labels.is_floating_point():
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype), reduction="none")
        return F.cross_entropy(logits.float(), labels, reduction="none")
    if logits.dim() == 3:
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        tok = F.cross_entropy(
            logits.float().transpose(1, 2), labels, reduction="none", ignore_index=-100
        )
        n = (labels != -100).sum(dim=1).clamp(min=1)
        return tok.sum(dim=1) / n
    raise ValueError(f"per_example_loss: logits of shape {tuple(logits.shape)}; pass loss_fn=")


def _causal_lm_names() -> frozenset:
    """Class names of the causal LMs transformers knows (GPT2LMHeadModel is one: its name does
    not end in ForCausalLM)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - very old transformers
        return frozenset()
    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _is_causal(model) -> bool:
    """Whether the model predicts token t+1 from position t (its loss shifts the labels)."""
    name = type(model).__name__
    return name.endswith("ForCausalLM") or name in _causal_lm_names()


class SimfluenceCallback(TrainerCallback):
    """Log a ``transformers.Trainer`` run as encoding A (see the module docstring).

    Parameters
    ----------
    path:
        The run log (``*.jsonl`` or ``*.jsonl.gz``); run id on ingest = file stem unless ``run_id``.
    test_dataset:
        Sequence of features (dicts) for the test set, collated by ``collate_fn`` (default
        ``default_data_collator``); any ``id_key`` field is dropped before collation.
    test_ids:
        Test example IDs; default: the test features' ``id_key`` values if present, else t0, t1, ...
    eval_every:
        Evaluate the test set every k optimizer steps (step 0 always, and the last step);
        0 = only step 0.
    loss_fn:
        ``loss_fn(outputs, batch) -> tensor (batch,)``; default :func:`per_example_loss` on
        ``outputs.logits`` and ``batch["labels"]`` (shifted for causal LMs: ``*ForCausalLM``,
        ``GPT2LMHeadModel`` and every other class transformers maps as a causal LM).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        test_dataset,
        *,
        test_ids: Iterable | None = None,
        eval_every: int = 1,
        loss_fn: Callable | None = None,
        collate_fn: Callable | None = None,
        eval_batch_size: int = 64,
        id_key: str = ID_KEY,
        run_id: str | None = None,
        precision: int | None = None,
    ):
        if eval_every < 0:
            raise ValueError("eval_every must be >= 0")
        self.path = Path(path)
        self.test_features = list(test_dataset)
        if not self.test_features:
            raise ValueError("SimfluenceCallback: the test set is empty")
        if test_ids is None:
            if all(isinstance(f, Mapping) and id_key in f for f in self.test_features):
                test_ids = [_plain_id(f[id_key]) for f in self.test_features]
            else:
                test_ids = [f"t{j}" for j in range(len(self.test_features))]
        self.test_ids = list(test_ids)
        if len(self.test_ids) != len(self.test_features):
            raise ValueError(
                f"{len(self.test_ids)} test_ids for {len(self.test_features)} test examples"
            )
        self.eval_every = int(eval_every)
        self.loss_fn = loss_fn
        self.collate_fn = default_data_collator if collate_fn is None else collate_fn
        self.eval_batch_size = int(eval_batch_size)
        self.id_key = id_key
        self._logger_kw = dict(run_id=run_id, test_ids=self.test_ids, precision=precision)
        self.log = None
        self.lrs: list[float | None] = []
        self.batches: list[list] = []
        self._pending: list = []
        self._lr = None
        self._hook = None
        self._resume_dir = None

    # ------------------------------------------------------------------ wiring
    def attach(self, trainer) -> SimfluenceCallback:
        """Add this callback to ``trainer``, make its collator keep the IDs, and discard the log if
        ``trainer.train()`` raises. Returns ``self``."""
        if not any(isinstance(c, IdCollator) for c in _collator_chain(trainer.data_collator)):
            trainer.data_collator = IdCollator(trainer.data_collator, self.id_key)
        trainer.add_callback(self)
        train = trainer.train

        @functools.wraps(train)
        def train_and_abort_on_error(*args, **kwargs):
            resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
            self._resume_dir = resume if isinstance(resume, (str, os.PathLike)) else None
            try:
                return train(*args, **kwargs)
            except BaseException:
                self.abort()
                raise

        trainer.train = train_and_abort_on_error  # this instance only
        return self

    def __enter__(self) -> SimfluenceCallback:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """``with SimfluenceCallback(...) as cb: ...`` discards the log if the block raises."""
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        """Stop logging; no file is written."""
        self._remove_hook()
        if self.log is not None:
            self.log.abort()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _forward_pre_hook(self, module, args, kwargs):
        if self.id_key not in kwargs:
            if module.training and self.log is not None and not self.log.closed:
                self.abort()
                raise RuntimeError(
                    f"SimfluenceCallback: a training batch reached the model without {self.id_key!r}. "
                    "Give every training example that field and attach the callback with "
                    "SimfluenceCallback(...).attach(trainer) (or data_collator=IdCollator(...)); with a "
                    "datasets.Dataset also pass TrainingArguments(remove_unused_columns=False)."
                )
            return None
        kwargs = dict(kwargs)
        ids = kwargs.pop(self.id_key)
        if module.training:
            self._pending.extend(_plain_id(i) for i in ids)
        return args, kwargs

    # ------------------------------------------------------------------ events
    @property
    def _state_name(self) -> str:
        """The file, in each checkpoint directory, that holds the log up to that checkpoint."""
        stem = self.path.name.removesuffix(".gz").removesuffix(".jsonl")
        return f"simfluence-log-{stem}.json"

    def _resume_state(self, args, state) -> dict:
        """The log state saved with the checkpoint training resumes from (step ``global_step``)."""
        ckpt = self._resume_dir or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        f = Path(ckpt) / self._state_name
        if not f.is_file():
            raise RuntimeError(
                f"SimfluenceCallback: resuming at step {state.global_step} from {ckpt}, which has "
                f"no {self._state_name} (saved by a SimfluenceCallback logging to {self.path.name}); "
                "a run log must start at step 0: train from the start with the callback attached"
            )
        saved = json.loads(f.read_text(encoding="utf-8"))
        n = len(saved.get("lines", [])) - 1
        if n != state.global_step:
            raise RuntimeError(
                f"SimfluenceCallback: {f} holds the log up to step {n}, but training resumes at "
                f"step {state.global_step}; resume from the checkpoint that file was saved with"
            )
        return saved

    def on_save(self, args, state, control, **kwargs):
        # After Trainer has written checkpoint-N: keep the log so far beside it, for resuming.
        if self.log is None or self.log.closed or not args.should_save:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            tmp = ckpt / f".{self._state_name}.tmp"
            tmp.write_text(json.dumps(self.log.state_dict()), encoding="utf-8")
            os.replace(tmp, ckpt / self._state_name)

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        resume = self._resume_state(args, state) if state.global_step != 0 else None
        if model is None:
            raise RuntimeError("SimfluenceCallback: the Trainer passed no model to on_train_begin")
        # Trainer's RemoveColumnsCollator drops fields that model.forward does not take: keep the IDs.
        if train_dataloader is not None:
            chain = _collator_chain(getattr(train_dataloader, "collate_fn", None))
            for c in chain:
                cols = getattr(c, "signature_columns", None)
                if isinstance(cols, list) and self.id_key not in cols:
                    cols.append(self.id_key)
            if chain and not any(isinstance(c, IdCollator) for c in chain):
                raise RuntimeError(
                    "SimfluenceCallback: the training collator does not keep example IDs; "
                    "use SimfluenceCallback(...).attach(trainer) or data_collator=IdCollator(...)"
                )
            cols = getattr(getattr(train_dataloader, "dataset", None), "column_names", None)
            if isinstance(cols, list) and self.id_key not in cols:
                raise RuntimeError(
                    f"SimfluenceCallback: the training dataset has no {self.id_key!r} column "
                    "(Trainer removed it?): pass TrainingArguments(remove_unused_columns=False)"
                )
        self._model = model
        self._pending, self.lrs, self.batches, self._lr = [], [], [], None
        self.log = RunLogger(self.path, **self._logger_kw, resume=resume)
        try:
            if resume is None:
                initial = self.evaluate(model)
                check_same_start(model, self.test_ids, initial, str(self.path))
                self.log.initial(initial)
            else:  # the steps before the checkpoint, as logged then
                done = [json.loads(line) for line in resume["lines"][1:]]
                self.lrs = [d.get("lr") for d in done]
                self.batches = [d["batch"] for d in done]
            self._hook = model.register_forward_pre_hook(self._forward_pre_hook, with_kwargs=True)
        except BaseException:
            self.abort()
            raise

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        # The scheduler steps only after optimizer.step(), so the rate now is the one this step
        # will use. Fallback for transformers < 4.42, which has no on_optimizer_step.
        if optimizer is not None:
            self._lr = float(optimizer.param_groups[0]["lr"])

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # Called right after optimizer.step() and before lr_scheduler.step(): the rate just used.
        if optimizer is not None:
            self._lr = float(optimizer.param_groups[0]["lr"])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.log is None or self.log.closed:
            return
        ids, self._pending = self._pending, []
        lr, self._lr = self._lr, None
        t = state.global_step
        losses = None
        if self.eval_every and (t % self.eval_every == 0 or t == state.max_steps):
            losses = self.evaluate(model if model is not None else self._model)
        try:
            self.log.step(ids, losses, step=t, lr=None if lr is None else float(lr))
        except BaseException:
            self.abort()
            raise
        self.lrs.append(lr)
        self.batches.append(ids)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hook()
        if self.log is not None and not self.log.closed:
            self.log.close()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model) -> np.ndarray:
        """Per-example test losses of ``model`` now (no grad; train/eval mode restored)."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = []
        try:
            for i in range(0, len(self.test_features), self.eval_batch_size):
                feats = [
                    {k: v for k, v in f.items() if k != self.id_key}
                    for f in self.test_features[i : i + self.eval_batch_size]
                ]
                batch = self.collate_fn(feats)
                batch = {
                    k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
                }
                outputs = model(**batch)
                if self.loss_fn is not None:
                    losses = self.loss_fn(outputs, batch)
                else:
                    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
                    losses = per_example_loss(logits, batch["labels"], shift=_is_causal(model))
                if losses.dim() != 1 or losses.shape[0] != len(feats):
                    raise ValueError(
                        f"per-example test loss has shape {tuple(losses.shape)}, "
                        f"expected ({len(feats)},)"
                    )
                out.append(losses.detach().double().cpu())
        finally:
            model.train(was_training)
        return torch.cat(out).numpy()

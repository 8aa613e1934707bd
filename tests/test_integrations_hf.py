"""simfluence_cli.integrations.huggingface: a real Trainer on a tiny BERT built from a config."""

import gzip
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from typer.testing import CliRunner  # noqa: E402

from simfluence_cli.cli import app  # noqa: E402
from simfluence_cli.integrations.huggingface import IdCollator, SimfluenceCallback  # noqa: E402

# importing torch (and transformers) takes seconds: the quick loop skips this module
pytestmark = pytest.mark.slow

N_TRAIN, N_TEST, SEQ, MARK = 10, 4, 6, 5  # token 1 of train example i is MARK + i


def make_model():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg)


def make_data():
    g = torch.Generator().manual_seed(1)

    def feat(i, marker):
        ids = torch.randint(MARK + N_TRAIN, 32, (SEQ,), generator=g)
        ids[0], ids[1] = 2, marker
        return {
            "input_ids": ids,
            "attention_mask": torch.ones(SEQ, dtype=torch.long),
            "labels": int(torch.randint(0, 2, (1,), generator=g)),
        }

    train = [dict(feat(i, MARK + i), example_id=f"e{i}") for i in range(N_TRAIN)]
    test = [feat(j, 3) for j in range(N_TEST)]
    return train, test


class Recorder(TrainerCallback):
    """Ground truth: the examples the model actually ran forward on, grouped by optimizer step."""

    def __init__(self, model):
        self.current, self.steps = [], []
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if module.training:
            self.current += [f"e{int(t) - MARK}" for t in kwargs["input_ids"][:, 1]]

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(self.current)
        self.current = []


def make_trainer(
    tmp_path, model, train, ga, remove_unused=True, callbacks=(), seed=7, eval_dataset=None, **kw
):
    args = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=ga,
        num_train_epochs=2,
        learning_rate=1e-3,
        warmup_steps=2,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
        remove_unused_columns=remove_unused,
    )
    args = TrainingArguments(**(args | kw))
    return Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        callbacks=list(callbacks),
    )


def read_log(path):
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("ga,remove_unused", [(1, True), (2, True), (2, False)])
def test_trainer_ids_lr_losses_exact(tmp_path, ga, remove_unused):
    train, test = make_data()
    model = make_model()
    rec = Recorder(model)
    trainer = make_trainer(tmp_path, model, train, ga, remove_unused, callbacks=[rec])
    path = tmp_path / "runs" / "hf-000.jsonl.gz"
    cb = SimfluenceCallback(path, test, eval_every=2).attach(trainer)
    trainer.train()

    lines = read_log(path)
    steps = len(rec.steps)
    assert steps == (
        10 if ga == 1 else 6
    )  # 5 micro-batches per epoch -> 3 optimizer steps with ga=2
    assert [ln["step"] for ln in lines] == list(range(steps + 1))
    # The logged batch of every optimizer step = the examples the model was run on for that step.
    assert [ln["batch"] for ln in lines[1:]] == rec.steps
    if ga == 2:
        assert [len(b) for b in rec.steps] == [
            4,
            4,
            2,
            4,
            4,
            2,
        ]  # last step of an epoch: 1 micro-batch
    for epoch in (rec.steps[: steps // 2], rec.steps[steps // 2 :]):
        assert sorted(e for b in epoch for e in b) == sorted(f"e{i}" for i in range(N_TRAIN))
    # lr: the rate each optimizer step used (Trainer's own log records the same), warm-up from 0
    hf_lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert cb.lrs == pytest.approx(hf_lrs)
    assert (
        cb.lrs[0] == 0.0 and cb.lrs[1] == pytest.approx(5e-4) and cb.lrs[2] == pytest.approx(1e-3)
    )
    assert [ln["lr"] for ln in lines[1:]] == pytest.approx(hf_lrs)
    # test losses: step 0 (initial) and every 2nd step, one per test example
    assert [("loss" in ln) for ln in lines] == [t % 2 == 0 for t in range(steps + 1)]
    assert list(lines[0]["loss"]) == [f"t{j}" for j in range(N_TEST)]
    assert lines[-1 if steps % 2 == 0 else -2]["loss"] != lines[0]["loss"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["hf-000.jsonl.gz"]

    res = CliRunner().invoke(
        app, ["ingest", str(path.parent), "--store", str(tmp_path / "store"), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["added"] == ["hf-000"]


@pytest.mark.slow  # ~2.5-3 s
def test_same_checkpoint_same_initial_losses_and_deterministic(tmp_path):
    train, test = make_data()
    logs = []
    for k, seed in enumerate([7, 7, 8]):
        model = make_model()
        trainer = make_trainer(tmp_path, model, train, 1, seed=seed)
        path = tmp_path / "runs" / f"r{k}.jsonl.gz"
        SimfluenceCallback(path, test, eval_every=5).attach(trainer)
        trainer.train()
        logs.append(read_log(path))
    assert logs[0][0] == logs[1][0] == logs[2][0]  # identical initial losses
    assert logs[0] == logs[1]  # same seed -> same curriculum and losses
    assert [ln["batch"] for ln in logs[0]] != [ln["batch"] for ln in logs[2]]


class Boom(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("boom")


def test_failed_training_leaves_no_file(tmp_path):
    train, test = make_data()
    model = make_model()
    trainer = make_trainer(tmp_path, model, train, 1, callbacks=[Boom()])
    runs = tmp_path / "runs"
    cb = SimfluenceCallback(runs / "bad.jsonl.gz", test).attach(trainer)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert list(runs.iterdir()) == []  # neither the log nor its temp file
    assert cb.log.closed
    # The ID pre-hook is gone: the model runs without example IDs again.
    model.train()
    model(input_ids=train[0]["input_ids"][None])


def test_missing_ids_is_a_clear_error(tmp_path):
    train, test = make_data()
    model = make_model()
    no_ids = [{k: v for k, v in f.items() if k != "example_id"} for f in train]
    trainer = make_trainer(tmp_path, model, no_ids, 1)
    SimfluenceCallback(tmp_path / "runs" / "x.jsonl.gz", test).attach(trainer)
    # the collator lets ID-less batches through (evaluation data); the model's pre-hook stops
    # the first training batch without IDs
    with pytest.raises(RuntimeError, match="reached the model without 'example_id'"):
        trainer.train()
    assert not (tmp_path / "runs" / "x.jsonl.gz").exists()
    assert IdCollator()([train[0]])["example_id"] == ["e0"]


@pytest.mark.parametrize("eval_has_ids", [False, True])
def test_trainer_evaluation_runs_beside_the_callback(tmp_path, eval_has_ids):
    """Trainer's own evaluation (eval_dataset + eval_strategy) goes through the same wrapped
    collator: eval features need no example ID, and the logged training steps are unchanged."""
    train, test = make_data()
    model = make_model()
    rec = Recorder(model)
    evalset = [dict(f, example_id=f"v{j}") for j, f in enumerate(test)] if eval_has_ids else test
    trainer = make_trainer(
        tmp_path,
        model,
        train,
        2,
        callbacks=[rec],
        eval_dataset=evalset,
        eval_strategy="steps",
        eval_steps=2,
    )
    path = tmp_path / "runs" / "ev-000.jsonl.gz"
    SimfluenceCallback(path, test, eval_every=3).attach(trainer)
    trainer.train()
    assert sum("eval_loss" in h for h in trainer.state.log_history) == 3  # steps 2, 4, 6
    assert [ln["batch"] for ln in read_log(path)[1:]] == rec.steps
    assert "example_id" not in IdCollator()(test[:2])  # no IDs at all: collated as they are
    with pytest.raises(KeyError, match="example_id"):
        IdCollator()([train[0], test[0]])  # some with, some without: refused


class Interrupt(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt  # killed after checkpoint-2 was saved


def test_resume_from_checkpoint_continues_the_log(tmp_path):
    """trainer.train(resume_from_checkpoint=True) with a fresh callback on the same path writes
    the log an uninterrupted run writes; a checkpoint saved without the callback is refused."""
    train, test = make_data()
    kw = dict(save_strategy="steps", save_steps=2)
    runs = tmp_path / "runs"
    full = make_trainer(tmp_path / "a", make_model(), train, 2, **kw)
    SimfluenceCallback(runs / "full.jsonl.gz", test, eval_every=2).attach(full)
    full.train()
    cut = make_trainer(tmp_path / "b", make_model(), train, 2, callbacks=[Interrupt()], **kw)
    SimfluenceCallback(runs / "cut.jsonl.gz", test, eval_every=2).attach(cut)
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    assert not (runs / "cut.jsonl.gz").exists()
    resumed = make_trainer(tmp_path / "b", make_model(), train, 2, **kw)
    cb = SimfluenceCallback(runs / "cut.jsonl.gz", test, eval_every=2).attach(resumed)
    resumed.train(resume_from_checkpoint=True)  # the last checkpoint: checkpoint-2
    a, b = read_log(runs / "full.jsonl.gz"), read_log(runs / "cut.jsonl.gz")
    assert [ln["step"] for ln in b] == list(range(7))
    assert [ln["batch"] for ln in b] == [ln["batch"] for ln in a]
    assert [ln.get("lr") for ln in b] == pytest.approx([ln.get("lr") for ln in a])
    assert [("loss" in ln) for ln in b] == [("loss" in ln) for ln in a]
    for x, y in zip(a, b):
        if "loss" in x:
            assert list(y["loss"].values()) == pytest.approx(list(x["loss"].values()), rel=1e-4)
    assert cb.batches == [ln["batch"] for ln in a[1:]] and len(cb.lrs) == 6
    # a checkpoint without the callback's log: one clear error, no file
    (tmp_path / "b" / "out" / "checkpoint-4" / "simfluence-log-cut.json").unlink()
    again = make_trainer(tmp_path / "b", make_model(), train, 2, **kw)
    SimfluenceCallback(runs / "again.jsonl.gz", test).attach(again)
    with pytest.raises(RuntimeError, match="resuming at step 4 .* no simfluence-log-again.json"):
        again.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-4"))
    assert not (runs / "again.jsonl.gz").exists()


def test_last_step_evaluated_with_max_steps(tmp_path):
    """max_steps that eval_every does not divide: the last step still gets test losses."""
    train, test = make_data()
    trainer = make_trainer(tmp_path, make_model(), train, 1, max_steps=5)
    path = tmp_path / "runs" / "ms-000.jsonl.gz"
    SimfluenceCallback(path, test, eval_every=2).attach(trainer)
    trainer.train()
    assert [("loss" in ln) for ln in read_log(path)] == [True, False, True, False, True, True]


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "GPT2ForCausalLM-like"])
def test_causal_lm_test_losses_are_the_models_own(tmp_path, arch):
    """The per-example test loss of a causal LM predicts token t+1 from position t, as the
    model's own loss does, whatever the class is called (GPT2LMHeadModel has no ForCausalLM)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    class GPT2ForCausalLM(GPT2LMHeadModel):
        pass

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(cfg) if arch == "GPT2LMHeadModel" else GPT2ForCausalLM(cfg)
    g = torch.Generator().manual_seed(2)
    test = [{"input_ids": torch.randint(0, 32, (SEQ,), generator=g)} for _ in range(3)]
    for f in test:
        f["labels"] = f["input_ids"].clone()
    cb = SimfluenceCallback(tmp_path / "lm.jsonl.gz", test)
    got = cb.evaluate(model)
    model.eval()
    with torch.no_grad():
        own = [
            float(model(input_ids=f["input_ids"][None], labels=f["labels"][None]).loss)
            for f in test
        ]
    assert got.tolist() == pytest.approx(own, rel=1e-5)


def test_model_object_reused_for_the_next_run_warns(tmp_path):
    """A notebook loop that builds a new Trainer per run around the same, already trained model
    object: the second run's step 0 is the first run's end, which one warning says."""
    from simfluence_cli.errors import SimfluenceWarning

    train, test = make_data()
    model = make_model()
    first = make_trainer(tmp_path, model, train, 1, learning_rate=1e-2)
    SimfluenceCallback(tmp_path / "runs" / "a.jsonl.gz", test).attach(first)
    first.train()
    again = make_trainer(tmp_path, model, train, 1, seed=8)
    SimfluenceCallback(tmp_path / "runs" / "b.jsonl.gz", test).attach(again)
    with pytest.warns(SimfluenceWarning, match="started an earlier logged run"):
        again.train()

"""simfluence_cli.integrations.pytorch: IDs, per-example losses, lr per step, aborts, log_runs."""

import gzip
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Subset, TensorDataset  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from simfluence_cli import RunLogger  # noqa: E402
from simfluence_cli.cli import app  # noqa: E402
from simfluence_cli.integrations import pytorch as sp  # noqa: E402
from simfluence_cli.integrations.pytorch import (  # noqa: E402
    IdDataset,
    TorchRunLogger,
    batch_ids,
    log_runs,
    per_example_losses,
)
from simfluence_cli.io.run_logger import RunLogError  # noqa: E402

# importing torch (and transformers) takes seconds: the quick loop skips this module
pytestmark = pytest.mark.slow

N_TRAIN, N_TEST, D, C = 24, 6, 4, 3


def make_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN + N_TEST, D, generator=g)
    y = torch.randint(0, C, (N_TRAIN + N_TEST,), generator=g)
    x[:, 0] = torch.arange(N_TRAIN + N_TEST, dtype=torch.float32)  # feature 0 = row index
    train = TensorDataset(x[:N_TRAIN], y[:N_TRAIN])
    test = TensorDataset(x[N_TRAIN:], y[N_TRAIN:])
    return train, test


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(D, 8), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(8, C)
    )


def read_log(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        return [json.loads(line) for line in fh]


TRAIN_IDS = [f"e{i:02d}" for i in range(N_TRAIN)]


def test_ids_survive_subset_and_shuffle():
    train, _ = make_data()
    keep = [3, 5, 8, 13, 21, 22]
    sub = Subset(IdDataset(train, TRAIN_IDS), keep)
    seen = []
    for (x, _y), ids in DataLoader(
        sub, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1)
    ):
        assert isinstance(ids, (list, tuple))  # strings collate to a tuple
        for xi, e in zip(x[:, 0].tolist(), ids):
            assert e == TRAIN_IDS[int(xi)]  # the ID belongs to the item it travels with
        seen += list(ids)
    assert sorted(seen) == [TRAIN_IDS[i] for i in keep]
    # Integer IDs collate to a tensor; batch_ids gives a list either way.
    b = next(iter(DataLoader(Subset(IdDataset(train), keep), batch_size=6)))
    assert batch_ids(b) == keep
    # dict items get an "example_id" key
    d = IdDataset([{"x": 1}, {"x": 2}], ["a", "b"])
    assert d[1] == {"x": 2, "example_id": "b"}
    # Wrapping after subsetting numbers positions, not original IDs (why the docstring says: IDs first).
    assert batch_ids(next(iter(DataLoader(IdDataset(Subset(train, keep)), batch_size=6)))) == list(
        range(6)
    )


def test_per_example_losses_no_grad_and_mode_restored():
    train, test = make_data()
    model = make_model()
    model.train()
    got = per_example_losses(model, test, F.cross_entropy, batch_size=4)
    assert model.training
    model.eval()
    with torch.no_grad():
        want = (
            F.cross_entropy(model(test.tensors[0]), test.tensors[1], reduction="none")
            .double()
            .numpy()
        )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.shape == (N_TEST,) and got.dtype == np.float64
    assert not model.training  # eval stays eval
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="reduction"):
        per_example_losses(model, test, torch.nn.CrossEntropyLoss())  # mean reduction refused
    with pytest.raises(ValueError, match="one value per example"):
        per_example_losses(model, test, lambda o, y: F.cross_entropy(o, y))


class RecordingLogger(RunLogger):
    """A RunLogger whose step takes lr (as the coming RunLogger will) and records it."""

    seen: list = []

    def step(self, batch, losses=None, *, step=None, lr=None):
        RecordingLogger.seen.append((list(batch), lr))
        return super().step(batch, losses, step=step)


def warmup_lrs(base, factor, iters, steps):
    return [base * (factor + (1 - factor) * min(t, iters) / iters) for t in range(steps)]


@pytest.mark.parametrize("sched_first", [False, True])
def test_lr_per_step_under_warmup(tmp_path, monkeypatch, sched_first):
    train, test = make_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=4)
    loader = DataLoader(IdDataset(train, TRAIN_IDS), batch_size=4, shuffle=False)
    RecordingLogger.seen = []
    monkeypatch.setattr(sp, "RunLogger", RecordingLogger)
    path = tmp_path / "r.jsonl"
    with TorchRunLogger(path, model, test, optimizer=opt, eval_every=2) as log:
        for batch in loader:
            (x, y), ids = batch
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if sched_first:  # the lr logged is the one opt.step() used, whatever the call order
                sched.step()
                log.step(batch)
            else:
                log.step(ids)
                sched.step()
    want = warmup_lrs(0.2, 0.25, 4, 6)
    assert log.lrs == pytest.approx(want)
    assert [lr for _, lr in RecordingLogger.seen] == pytest.approx(want)
    assert [b for b, _ in RecordingLogger.seen] == [TRAIN_IDS[i : i + 4] for i in range(0, 24, 4)]
    lines = read_log(path)
    assert [ln["step"] for ln in lines] == list(range(7))
    assert [("loss" in ln) for ln in lines] == [True, False, True, False, True, False, True]
    assert len(lines[0]["loss"]) == N_TEST


def test_real_runlogger_file_carries_lr(tmp_path):
    train, test = make_data()
    model = make_model()
    paths = log_runs(
        model,
        IdDataset(train, TRAIN_IDS),
        test,
        tmp_path,
        seeds=[0],
        optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.2),
        batch_size=8,
        suffix=".jsonl",
        scheduler_factory=lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.25, total_iters=2),
    )
    lines = read_log(paths[0])
    assert [ln["lr"] for ln in lines[1:]] == pytest.approx(warmup_lrs(0.2, 0.25, 2, 3))


def test_log_aborted_on_exception(tmp_path):
    train, test = make_data()
    model = make_model()
    calls = {"n": 0}

    def flaky_step(m, batch):
        calls["n"] += 1
        if calls["n"] == 3 + 3:  # run 1, step 3
            raise RuntimeError("diverged")
        x, y = batch
        return F.cross_entropy(m(x), y)

    with pytest.raises(RuntimeError, match="diverged"):
        log_runs(
            model,
            IdDataset(train, TRAIN_IDS),
            test,
            tmp_path,
            seeds=[0, 1, 2],
            train_step=flaky_step,
            optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1),
            batch_size=8,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run-000.jsonl.gz"
    ]  # no run-001, no temp file
    # TorchRunLogger alone: an exception in the block leaves nothing
    with pytest.raises(KeyError):
        with TorchRunLogger(tmp_path / "x.jsonl", model, test) as log:
            log.step(["e1"], lr=0.1)
            raise KeyError("boom")
    assert not (tmp_path / "x.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-000.jsonl.gz"]


@pytest.mark.slow  # ~2.5-3 s
def test_log_runs_same_checkpoint_deterministic_and_ingestible(tmp_path):
    train, test = make_data()
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(
        optimizer_factory=lambda p: torch.optim.Adam(p, lr=0.05),
        batch_size=5,
        epochs=2,
        eval_every=3,
    )
    ds = IdDataset(train, TRAIN_IDS)
    a = log_runs(model, ds, test, tmp_path / "a", seeds=[0, 1, 2], **kw)
    b = log_runs(model, ds, test, tmp_path / "b", seeds=[0, 1, 2], **kw)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model restored
    runs = [read_log(p) for p in a]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]  # deterministic given seeds
    assert (
        runs[0][0] == runs[1][0] == runs[2][0]
    )  # same starting checkpoint -> identical step-0 losses
    assert runs[0][0]["loss"] == dict(
        zip([f"t{j}" for j in range(N_TEST)], per_example_losses(model, test).tolist())
    )
    assert runs[0][1]["batch"] != runs[1][1]["batch"]  # different seeds, different shuffles
    for r in runs:
        assert len(r) == 1 + 2 * 5  # 24 examples / 5 per batch = 5 steps per epoch
        ep1 = [e for ln in r[1:6] for e in ln["batch"]]
        assert sorted(ep1) == TRAIN_IDS  # every example once per epoch
        assert r[9]["loss"] != r[0]["loss"] and "loss" not in r[8]  # eval_every=3
        assert "loss" in r[10]  # and the last step
    # explicit curricula
    cur = [[[0, 1, 2], [3, 4, 5]], [[5, 4, 3], [2, 1, 0]]]
    c = log_runs(
        model, ds, test, tmp_path / "c", curricula=cur, optimizer_factory=kw["optimizer_factory"]
    )
    assert [ln["batch"] for ln in read_log(c[1])[1:]] == [
        ["e05", "e04", "e03"],
        ["e02", "e01", "e00"],
    ]
    res = CliRunner().invoke(
        app,
        [
            "ingest",
            str(tmp_path / "a"),
            "--store",
            str(tmp_path / "store"),
            "--tag",
            "torch",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["added"] == ["run-000", "run-001", "run-002"]


class Interrupted(Exception):
    pass


def train_with_checkpoints(path, ckpt_path, *, stop_after=None, resume=False):
    """An everyday resumable loop: AdamW + warm-up, gradient accumulation 2, a checkpoint (model,
    optimizer, scheduler, RNG, position, log state) every 3 optimizer steps; resumed mid-epoch by
    skipping the batches of the epoch already trained. ``stop_after``: interrupt after that step."""
    train, test = make_data()
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 0.2, total_iters=4)
    ds = IdDataset(train, TRAIN_IDS)
    start_epoch, skip, state = 0, 0, None
    if resume:
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        torch.set_rng_state(ck["rng"])
        start_epoch, skip, state = ck["epoch"], ck["micro"], ck["log"]
    with TorchRunLogger(path, model, test, optimizer=opt, eval_every=2, resume=state) as log:
        for epoch in range(start_epoch, 2):
            g = torch.Generator().manual_seed(100 + epoch)
            loader = DataLoader(ds, batch_size=5, shuffle=True, generator=g)  # 5 micro-batches
            for i, ((x, y), ids) in enumerate(loader):
                if epoch == start_epoch and i < skip:
                    continue
                (F.cross_entropy(model(x), y) / 2).backward()
                log.add(ids)
                if (i + 1) % 2 == 0 or i + 1 == len(loader):
                    opt.step()
                    sched.step()
                    opt.zero_grad()
                    t = log.step()
                    if t % 3 == 0:
                        ck = dict(model=model.state_dict(), opt=opt.state_dict(), epoch=epoch)
                        ck.update(sched=sched.state_dict(), rng=torch.get_rng_state())
                        torch.save(dict(ck, micro=i + 1, log=log.state_dict()), ckpt_path)
                    if t == stop_after:
                        raise Interrupted
    return read_log(path)


def test_interrupted_run_resumed_from_checkpoint_logs_as_if_uninterrupted(tmp_path):
    full = train_with_checkpoints(tmp_path / "full.jsonl", tmp_path / "full.pt")
    assert len(full) == 1 + 2 * 3  # 3 optimizer steps per epoch (2 + 2 + 1 micro-batches)
    cut, ckpt = tmp_path / "cut.jsonl", tmp_path / "cut.pt"
    with pytest.raises(Interrupted):
        train_with_checkpoints(cut, ckpt, stop_after=5)  # checkpoint at step 3, mid-epoch 2
    assert not cut.exists()
    resumed = train_with_checkpoints(cut, ckpt, resume=True)
    # the same steps, batches and rates; the step-4/5 work lost with the interruption is redone once
    assert [ln["step"] for ln in resumed] == list(range(7))
    assert [ln["batch"] for ln in resumed] == [ln["batch"] for ln in full]
    assert [ln.get("lr") for ln in resumed] == [ln.get("lr") for ln in full]
    for a, b in zip(resumed, full):
        assert a.keys() == b.keys()
        if "loss" in a:
            assert list(a["loss"].values()) == pytest.approx(list(b["loss"].values()), rel=1e-5)


def test_last_step_always_evaluated(tmp_path):
    """eval_every that does not divide the number of steps: the last step is evaluated when the
    block ends, with the final model, so final-step metrics get a real final loss."""
    train, test = make_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(IdDataset(train, TRAIN_IDS), batch_size=5)  # 5 steps, the last of 4
    with TorchRunLogger(tmp_path / "r.jsonl", model, test, optimizer=opt, eval_every=2) as log:
        for (x, y), ids in loader:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            log.step(ids)
        opt.step()
        with pytest.raises(RunLogError, match="field 'batch': empty batch at step 6; pass"):
            log.step()  # e.g. with accumulation but no log.add()
    lines = read_log(tmp_path / "r.jsonl")
    assert [("loss" in ln) for ln in lines] == [True, False, True, False, True, True]
    assert [len(ln["batch"]) for ln in lines] == [0, 5, 5, 5, 5, 4]
    final = per_example_losses(model, test, F.cross_entropy)
    assert list(lines[-1]["loss"].values()) == final.tolist()
    with TorchRunLogger(tmp_path / "never.jsonl", make_model(), test, eval_every=0) as log:
        log.step(["e00"], lr=0.1)  # eval_every=0: step 0 only, as before
    assert "loss" not in read_log(tmp_path / "never.jsonl")[-1]


def test_steps_a_grad_scaler_skipped_are_dropped(tmp_path):
    """fp16 autocast + GradScaler: steps with inf gradients never reach optimizer.step(); with
    scaler= the log holds exactly the steps that updated the model (without it: one clear error)."""
    train, test = make_data()
    loader = DataLoader(IdDataset(train, TRAIN_IDS), batch_size=4)

    def run(path, scaler_kw):
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=1)
        stepped, current = [], []
        opt.register_step_pre_hook(lambda *a: stepped.append(current))
        with TorchRunLogger(path, model, test, optimizer=opt, **scaler_kw(scaler)) as log:
            for (x, y), ids in loader:
                current = list(ids)
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = F.cross_entropy(model(x), y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad()
                log.step(ids)
        return stepped, log

    stepped, log = run(tmp_path / "s.jsonl", lambda sc: {"scaler": sc})
    assert 0 < log.skipped == 6 - len(stepped) < 6, log.skipped  # some steps skipped, not all
    assert [ln["batch"] for ln in read_log(tmp_path / "s.jsonl")[1:]] == stepped
    with pytest.raises(RuntimeError, match="ran 0 times .* scaler=scaler"):
        run(tmp_path / "n.jsonl", lambda sc: {})
    assert not (tmp_path / "n.jsonl").exists()


def test_shuffled_test_loader_is_refused(tmp_path):
    """A shuffled test DataLoader would pair each evaluation's losses with other test ids."""
    _, test = make_data()
    model = make_model()
    shuffled = DataLoader(test, batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match="test DataLoader shuffles"):
        TorchRunLogger(tmp_path / "r.jsonl", model, shuffled)
    with pytest.raises(ValueError, match="shuffle=False"):
        per_example_losses(model, shuffled)
    ordered = per_example_losses(model, DataLoader(test, batch_size=2))
    np.testing.assert_array_equal(ordered, per_example_losses(model, test))
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("zero_at_epoch_start", [True, False])
def test_accumulation_leftovers_follow_the_gradients(tmp_path, zero_at_epoch_start):
    """Accumulation over 2 micro-batches, stepping only on full groups: the micro-batch left at
    an epoch's end joins the next step if its gradient survives, and is dropped if
    optimizer.zero_grad() clears it first (a common loop zeroes at each epoch start)."""
    train, test = make_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(IdDataset(train, TRAIN_IDS), batch_size=5)  # 5 micro-batches, last of 4
    truth, in_grad = [], []  # the examples whose gradients each optimizer.step() used
    with TorchRunLogger(tmp_path / "r.jsonl", model, test, optimizer=opt, eval_every=0) as log:
        for _epoch in range(2):
            if zero_at_epoch_start:
                opt.zero_grad()
                in_grad = []
            for i, ((x, y), ids) in enumerate(loader):
                (F.cross_entropy(model(x), y) / 2).backward()
                log.add(ids)
                in_grad += list(ids)
                if (i + 1) % 2 == 0:
                    opt.step()
                    opt.zero_grad()  # before log.step(): the step already used the gradients
                    log.step()
                    truth.append(in_grad)
                    in_grad = []
    assert [ln["batch"] for ln in read_log(tmp_path / "r.jsonl")[1:]] == truth
    assert [len(b) for b in truth] == (
        [10, 10, 10, 10] if zero_at_epoch_start else [10, 10, 14, 10]
    )
    assert log.discarded == (4 if zero_at_epoch_start else 0)
    assert "zero_grad" not in vars(opt)  # the optimizer is left as it was


def test_resumed_without_log_state_warns(tmp_path):
    """An optimizer with state (loaded from a checkpoint, or reused from another run) means
    step 0 is not the shared fresh start: one warning names both fixes."""
    from simfluence_cli.errors import SimfluenceWarning

    train, test = make_data()
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    (x, y), ids = next(iter(DataLoader(IdDataset(train, TRAIN_IDS), batch_size=4)))
    F.cross_entropy(model(x), y).backward()
    opt.step()  # as if loaded from a checkpoint
    with pytest.warns(SimfluenceWarning, match="optimizer already has state .* resume="):
        with TorchRunLogger(tmp_path / "r.jsonl", model, test, optimizer=opt) as log:
            opt.step()
            log.step(ids)
    model = make_model()
    fresh = torch.optim.AdamW(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with TorchRunLogger(tmp_path / "f.jsonl", model, test, optimizer=fresh) as log:
            fresh.step()
            log.step(ids)


def test_model_reused_without_reloading_its_start_warns(tmp_path):
    """Run 2 trained on run 1's model object without reloading the starting weights starts from
    run 1's end: one warning; reloading them (rule 1) gives none."""
    from simfluence_cli.errors import SimfluenceWarning

    train, test = make_data()
    model = make_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}

    def run(k):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        with TorchRunLogger(tmp_path / f"r{k}.jsonl", model, test, optimizer=opt) as log:
            for (x, y), ids in DataLoader(IdDataset(train, TRAIN_IDS), batch_size=8):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                log.step(ids)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(0)
        model.load_state_dict(init)
        run(1)  # reloaded: the same start
    with pytest.warns(SimfluenceWarning, match="started an earlier logged run.*load_state_dict"):
        run(2)  # not reloaded: starts where run 1 ended
    assert read_log(tmp_path / "r0.jsonl")[0] == read_log(tmp_path / "r1.jsonl")[0]
    assert read_log(tmp_path / "r2.jsonl")[0] != read_log(tmp_path / "r0.jsonl")[0]

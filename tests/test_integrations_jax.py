"""simfluence_cli.integrations.jax: JaxRunLogger (values stay on the device until a block is
written), micro-batches, learning_rate() from optax states. The module imports no jax, so most
tests use duck-typed device arrays and optax-like state tuples; the ones against real jax/optax
are skipped when those are not installed."""

from __future__ import annotations

import gzip
import json
from typing import NamedTuple

import numpy as np
import pytest

from simfluence_cli import RunLogger
from simfluence_cli.integrations.jax import JaxRunLogger, learning_rate
from simfluence_cli.io.run_logger import RunLogError


def read_lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


class CountingDeviceArray:
    """A device array stand-in that records host transfers: ``copy_to_host_async`` (start) and
    ``__array__`` (the blocking read) append to a shared event list."""

    def __init__(self, values, events, dtype=None):
        self._a = np.asarray(values, dtype=dtype)
        self.events = events
        self.shape, self.ndim, self.dtype = self._a.shape, self._a.ndim, self._a.dtype

    def copy_to_host_async(self):
        self.events.append("start")

    def __array__(self, dtype=None, copy=None):
        self.events.append("read")
        return self._a if dtype is None else self._a.astype(dtype)

    def tolist(self):
        self.events.append("read")
        return self._a.tolist()

    def __float__(self):
        self.events.append("read")
        return float(self._a)


def test_values_stay_on_device_until_a_block_is_written(tmp_path):
    events = []

    def dev(v, dtype=np.float32):
        return CountingDeviceArray(v, events, dtype)

    path = tmp_path / "r.jsonl"
    with JaxRunLogger(path, test_ids=["t0", "t1"], flush_every=4) as log:
        log.initial(dev([2.0, 1.0]))
        assert log.step(dev([3, 5], np.int32), dev([1.5, 0.5]), lr=dev(0.25)) == 1
        assert log.step(dev([4], np.int32), None, lr=dev(0.125)) == 2
        assert events == []  # three calls, no transfer, nothing written yet
        log.step(dev([6], np.int32), dev([1.25, 0.25]), lr=dev(0.0625))  # 4th item: a block
        n_start = events.count("start")
        assert n_start == 9 and events[:n_start] == ["start"] * n_start  # all started first
        assert events.count("read") >= 9
        events.clear()
        log.step(dev([7], np.int32), dev([1.0, 0.125]))
        assert events == []  # the next block is queued again
    assert events.count("start") == 2
    assert read_lines(path) == [
        {"step": 0, "batch": [], "loss": {"t0": 2.0, "t1": 1.0}},
        {"step": 1, "batch": ["3", "5"], "lr": 0.25, "loss": {"t0": 1.5, "t1": 0.5}},
        {"step": 2, "batch": ["4"], "lr": 0.125},
        {"step": 3, "batch": ["6"], "lr": 0.0625, "loss": {"t0": 1.25, "t1": 0.25}},
        {"step": 4, "batch": ["7"], "loss": {"t0": 1.0, "t1": 0.125}},
    ]


@pytest.mark.parametrize("flush_every", [1, 3, 1000])
def test_same_bytes_as_runlogger(tmp_path, flush_every):
    rng = np.random.default_rng(0)
    test_ids = [f"t{j}" for j in range(5)]
    steps = [
        (rng.choice(50, size=4, replace=False), rng.random(5) if t % 2 else None, rng.random())
        for t in range(12)
    ]
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    with RunLogger(a, test_ids=test_ids, optimizer="adamw", precision=6) as log:
        log.initial(np.ones(5))
        for ids, losses, lr in steps:
            log.step(ids, losses, lr=lr)
    events = []
    with JaxRunLogger(
        b, test_ids=test_ids, optimizer="adamw", precision=6, flush_every=flush_every
    ) as log:
        log.initial(CountingDeviceArray(np.ones(5), events))
        for ids, losses, lr in steps:
            wrap = None if losses is None else CountingDeviceArray(losses, events)
            log.step(CountingDeviceArray(ids, events), wrap, lr=CountingDeviceArray(lr, events))
    assert a.read_bytes() == b.read_bytes()


def test_micro_batches_are_one_step(tmp_path):
    path = tmp_path / "r.jsonl"
    events = []
    with JaxRunLogger(path, test_ids=["t"]) as log:
        log.initial([2.0])
        log.add(CountingDeviceArray([1, 2], events, np.int32))
        log.add(["e9"])  # a list of IDs works too
        log.add(CountingDeviceArray([[3], [4]], events, np.int32))  # any shape, flattened
        assert log.step(losses=[1.5], lr=0.5) == 1
        log.add([5])
        assert log.step(lr=0.25) == 2
    assert [r["batch"] for r in read_lines(path)] == [[], ["1", "2", "e9", "3", "4"], ["5"]]


def test_resume_from_state_dict_continues_after_the_checkpoint(tmp_path):
    """A run resumed from a checkpoint's state_dict() (queued steps written first) gives the
    uninterrupted file; a step trained after the checkpoint and lost is not in it."""
    events = []
    steps = [([t, t + 1], [2.0 - 0.1 * t, 1.0 + 0.01 * t]) for t in range(1, 7)]

    def dev(v, dtype=np.float64):
        return CountingDeviceArray(v, events, dtype)

    def logger(path, resume=None):
        return JaxRunLogger(path, test_ids=["t0", "t1"], flush_every=4, resume=resume)

    with logger(tmp_path / "full.jsonl.gz") as log:
        log.initial(dev([2.0, 1.0]))
        for ids, losses in steps:
            log.step(dev(ids, np.int32), dev(losses), lr=0.1)
    first = logger(tmp_path / "cut.jsonl.gz")
    first.initial(dev([2.0, 1.0]))
    for ids, losses in steps[:3]:
        first.step(dev(ids, np.int32), dev(losses), lr=0.1)
    state = json.loads(json.dumps(first.state_dict()))  # steps 0-3, though 4 were queued
    assert len(state["lines"]) == 4
    first.step(dev([99], np.int32), dev([9.0, 9.0]), lr=0.1)  # after the checkpoint, then lost
    first.abort()
    with logger(tmp_path / "cut.jsonl.gz", resume=state) as log:
        assert log.last_step == 3
        for ids, losses in steps[3:]:
            assert log.step(dev(ids, np.int32), dev(losses), lr=0.1) == ids[0]
    assert read_lines(tmp_path / "cut.jsonl.gz") == read_lines(tmp_path / "full.jsonl.gz")


@pytest.mark.parametrize(
    "action, match",
    [
        (lambda log: log.step([1]), "before initial"),
        (lambda log: (log.initial([1.0]), log.initial([1.0])), "called twice"),
        (lambda log: log.initial(None), "needs the initial losses"),
        (lambda log: (log.initial([1.0]), log.step()), "step 1 has no IDs"),
        (lambda log: (log.initial([1.0]), log.add([1]), log.step([2])), "both to add"),
        (lambda log: (log.initial([1.0]), log.step([1]), log.add([2]), log.close()), "after the"),
        (lambda log: (log.initial([1.0]), log.step([1], [np.nan]), log.close()), "step 1: loss"),
        (lambda log: (log.initial([1.0]), log.step([1.5]), log.close()), "type float"),
        (lambda log: (log.initial([1.0]), log.step([1], lr=-1.0), log.close()), "lr must be"),
    ],
)
def test_errors_name_the_step_and_leave_no_file(tmp_path, action, match):
    log = JaxRunLogger(tmp_path / "r.jsonl", test_ids=["t"])
    with pytest.raises(RunLogError, match=match):
        action(log)
    log.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_in_a_later_block_discards_the_run(tmp_path):
    path = tmp_path / "r.jsonl"
    with pytest.raises(RunLogError, match='step 3: loss of "t" is nan'):
        with JaxRunLogger(path, test_ids=["t"], flush_every=2) as log:
            log.initial([1.0])
            log.step([1], [0.5])  # block 1 written
            log.step([2], [0.4])
            log.step([3], [np.nan])  # block 2: raises here
            log.step([4], [0.3])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RunLogError, match="logger is closed"):
        log.step([5])
    with pytest.raises(ValueError, match="flush_every"):
        JaxRunLogger(path, flush_every=0)


# ---- learning_rate() on optax-like states (the field names optax uses)


class InjectHyperparamsState(NamedTuple):
    count: object
    hyperparams: dict
    inner_state: object


class ScaleByScheduleState(NamedTuple):
    count: object


class ScaleByAdamState(NamedTuple):
    count: object
    mu: object
    nu: object


class MultiStepsState(NamedTuple):
    mini_step: object
    gradient_step: object
    inner_opt_state: object
    acc_grads: object


def schedule(count):
    return 0.1 * (np.asarray(count) + 1)  # the rate of update number count + 1


def test_learning_rate_from_inject_hyperparams_anywhere_in_the_state():
    inner = InjectHyperparamsState(
        3, {"learning_rate": 0.3, "b1": 0.9}, (ScaleByAdamState(3, 0, 0),)
    )
    assert learning_rate(inner) == 0.3
    wrapped = MultiStepsState(0, 3, inner, {"w": 0})
    assert learning_rate(wrapped) == 0.3
    assert learning_rate((wrapped, {"other": ()}), schedule=schedule) == 0.3  # state wins
    with pytest.raises(ValueError, match="2 inject_hyperparams states"):
        learning_rate((inner, inner))


def test_learning_rate_from_a_schedule_is_that_of_the_last_update():
    # after 3 updates the schedule's count is 3; the 3rd update used schedule(2), not schedule(3)
    state = (ScaleByAdamState(3, 0, 0), (), ScaleByScheduleState(np.int32(3)))
    assert learning_rate(state, schedule=schedule) == pytest.approx(0.3)
    assert learning_rate(MultiStepsState(1, 3, state, 0), schedule=schedule) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        learning_rate(state)
    with pytest.raises(ValueError, match="no ScaleByScheduleState"):
        learning_rate((ScaleByAdamState(3, 0, 0),), schedule=schedule)


def test_step_reads_lr_from_opt_state(tmp_path):
    path = tmp_path / "r.jsonl"
    with JaxRunLogger(path, test_ids=["t"], schedule=schedule) as log:
        log.initial([1.0])
        log.step([1], opt_state=(ScaleByScheduleState(1),))
        log.step([2], opt_state=InjectHyperparamsState(2, {"learning_rate": 0.5}, ()))
        log.step([3], lr=0.7, opt_state=(ScaleByScheduleState(3),))  # an explicit lr wins
    assert [r.get("lr") for r in read_lines(path)] == [None, pytest.approx(0.1), 0.5, 0.7]


def test_steps_are_checked_against_the_updates_the_state_applied(tmp_path):
    """Logging a step where optax.MultiSteps applied no update (e.g. at an epoch end), or from a
    state that is not fresh, is an error naming the step; one step per update passes."""

    def multi(mini, grad_steps):
        inner = InjectHyperparamsState(grad_steps, {"learning_rate": 0.1}, ())
        return MultiStepsState(mini, grad_steps, inner, 0)

    ok = tmp_path / "ok.jsonl"
    with JaxRunLogger(ok, test_ids=["t"]) as log:
        log.initial([1.0])
        for t in (1, 2):
            log.add([2 * t])
            log.add([2 * t + 1])
            log.step(opt_state=multi(0, t))
    assert [r["batch"] for r in read_lines(ok)[1:]] == [["2", "3"], ["4", "5"]]

    bad = tmp_path / "bad.jsonl"
    with pytest.raises(RunLogError, match=r"step 2: the optimizer state has applied 1 update"):
        with JaxRunLogger(bad, test_ids=["t"], flush_every=1) as log:
            log.initial([1.0])
            log.step([1, 2], opt_state=multi(0, 1))
            log.step([3], opt_state=multi(1, 1))  # a micro-batch, no update: step 2 is wrong
    with pytest.raises(RunLogError, match=r"step 1: .* applied 5 update"):
        with JaxRunLogger(bad, test_ids=["t"], schedule=schedule) as log:  # a reused state
            log.initial([1.0])
            log.step([1], opt_state=(ScaleByAdamState(5, 0, 0), ScaleByScheduleState(5)))
    assert not bad.exists()


# ---- against real jax / optax (skipped when they are not installed)


@pytest.mark.slow
def test_learning_rate_matches_optax_semantics():
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    sched = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=3, decay_steps=10)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 0.5)}
    inject = optax.inject_hyperparams(optax.adamw)(learning_rate=sched)
    plain = optax.adamw(sched)
    multi = optax.MultiSteps(optax.inject_hyperparams(optax.sgd)(learning_rate=sched), 2)
    s_inject, s_plain, s_multi = inject.init(params), plain.init(params), multi.init(params)
    for t in range(1, 6):
        _, s_inject = inject.update(grads, s_inject, params)
        _, s_plain = plain.update(grads, s_plain, params)
        for _ in range(2):  # two micro-batches per real update
            _, s_multi = multi.update(grads, s_multi, params)
        want = float(sched(t - 1))  # update t uses the schedule at count t - 1
        assert float(learning_rate(s_inject)) == want
        assert float(learning_rate(s_plain, schedule=sched)) == want
        assert float(learning_rate(s_multi)) == pytest.approx(want, rel=1e-6)  # float32, jitted
    assert float(sched(0)) == 0.0 and float(learning_rate(s_inject)) > 0


@pytest.mark.slow
def test_jitted_loop_with_bfloat16_losses_and_int32_ids(tmp_path):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jnp = jax.numpy
    rng = np.random.default_rng(0)
    X, y = jnp.asarray(rng.normal(size=(20, 3)), jnp.float32), jnp.asarray(rng.normal(size=20))
    Xt, yt = X[:4], y[:4]
    ids = jnp.arange(100, 120, dtype=jnp.int32)
    sched = optax.linear_schedule(0.1, 0.01, 6)
    opt = optax.MultiSteps(optax.inject_hyperparams(optax.adam)(learning_rate=sched), 2)

    def per_example(w, x, t):
        return (x @ w - t) ** 2

    @jax.jit
    def train(w, s, idx):
        g = jax.grad(lambda w: jnp.mean(jax.vmap(per_example, (None, 0, 0))(w, X[idx], y[idx])))(w)
        u, s = opt.update(g, s, w)
        return optax.apply_updates(w, u), s

    @jax.jit
    def test_losses(w):
        return jax.vmap(per_example, (None, 0, 0))(w, Xt, yt).astype(jnp.bfloat16)

    w = jnp.zeros(3)
    s = opt.init(w)
    path = tmp_path / "jax-000.jsonl.gz"
    with JaxRunLogger(path, test_ids=[f"t{j}" for j in range(4)], flush_every=2) as log:
        log.initial(test_losses(w))
        starts = [0, 3, 6, 9, 12, 15, 18, 19, 20]  # 8 micro-batches, the last two short
        for k, (start, end) in enumerate(zip(starts[:-1], starts[1:])):
            idx = jnp.arange(start, end)
            w, s = train(w, s, idx)
            log.add(ids[idx])
            if k % 2 == 1:
                log.step(losses=test_losses(w), opt_state=s)
    rows = read_lines(path)
    assert len(rows) == 5 and rows[1]["batch"] == [str(i) for i in range(100, 106)]
    assert rows[4]["batch"] == ["118", "119"]
    lrs = [float(sched(t)) for t in range(4)]
    assert [r["lr"] for r in rows[1:]] == pytest.approx(lrs, rel=1e-6)
    assert rows[1]["lr"] == float(np.float32(0.1))  # the 1st update used schedule(0), in float32
    assert all(np.float32(v) == np.float32(jnp.bfloat16(v)) for v in rows[-1]["loss"].values())


@pytest.mark.slow
def test_multisteps_logged_at_epoch_ends_is_caught():
    """With 3 micro-batches per epoch and k = 2, optax applies updates across epoch boundaries:
    logging a step at every epoch end (a natural mistake) is refused."""
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    import tempfile
    from pathlib import Path

    opt = optax.MultiSteps(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), 2)
    params = {"w": jnp.ones(2)}
    grads = {"w": jnp.ones(2)}
    state = opt.init(params)
    path = Path(tempfile.mkdtemp()) / "r.jsonl"
    with pytest.raises(RunLogError, match="step 2: the optimizer state has applied 1 update"):
        with JaxRunLogger(path, test_ids=["t"]) as log:
            log.initial([1.0])
            for epoch in range(2):
                for k in range(3):
                    _, state = opt.update(grads, state, params)
                    log.add([3 * epoch + k])
                    if k % 2 == 1 or k == 2:  # every 2nd micro-batch, and the epoch's last
                        log.step(opt_state=state)
    assert not path.exists()

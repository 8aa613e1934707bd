"""The canonical per-run form every log reader produces (:class:`RunData`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from simfluence_cli._hashing import sha256_hex
from simfluence_cli.errors import InputError

# --------------------------------------------------------------------------------------------
# canonical per-run content
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class RunData:
    """One validated run in canonical form (IDs sorted; losses sorted by step then test id)."""

    run_id: str
    example_ids: np.ndarray  # object (n,), sorted unique ids used by the curriculum
    ex_codes: np.ndarray  # int32 (entries,), positions in example_ids, in batch order
    batch_ptr: np.ndarray  # int64 (T+1,)
    test_ids: np.ndarray  # object (m,), sorted unique
    loss_step: np.ndarray  # int64 (rows,)
    loss_test: np.ndarray  # int32 (rows,), positions in test_ids
    loss: np.ndarray  # float64 (rows,)
    source: str = "python"
    source_format: str = "python"
    sources: list[dict] = field(default_factory=list)  # [{"path", "sha256"}]
    notes: list[str] = field(default_factory=list)
    tags: tuple[str, ...] = ()
    lr: np.ndarray | None = None  # float64 (T,): the learning rate of each step 1..T, or None
    optimizer: str | None = None  # optimizer description (step-0 "optimizer"), or None
    _hash: str | None = None

    @property
    def n_steps(self) -> int:
        return len(self.batch_ptr) - 1

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical content: the same run gives the same hash from any format."""
        if self._hash is None:
            parts = [
                b"simfluence-run-content-v1\n",
                json.dumps(list(self.example_ids), ensure_ascii=False).encode(),
                b"\n",
                json.dumps(list(self.test_ids), ensure_ascii=False).encode(),
                b"\n",
                np.ascontiguousarray(self.batch_ptr, "<i8").tobytes(),
                np.ascontiguousarray(self.ex_codes, "<i4").tobytes(),
                np.ascontiguousarray(self.loss_step, "<i8").tobytes(),
                np.ascontiguousarray(self.loss_test, "<i4").tobytes(),
                np.ascontiguousarray(self.loss + 0.0, "<f8").tobytes(),  # -0.0 -> 0.0
            ]
            if self.lr is not None:  # runs without lr keep the hash they always had
                parts += [b"lr\n", np.ascontiguousarray(self.lr + 0.0, "<f8").tobytes()]
            self._hash = sha256_hex(*parts)
        return self._hash

    def stats(self) -> dict:
        sizes = np.diff(self.batch_ptr)
        return {
            "steps": int(self.n_steps),
            "batch_size_min": int(sizes.min()) if len(sizes) else 0,
            "batch_size_max": int(sizes.max()) if len(sizes) else 0,
            "n_examples": int(len(self.example_ids)),
            "n_tests": int(len(self.test_ids)),
            "loss_steps": int(
                len(self.loss_step) and 1 + np.count_nonzero(np.diff(self.loss_step))
            ),
            "curriculum_rows": int(len(self.ex_codes)),
            "loss_rows": int(len(self.loss)),
            **({"has_lr": True} if self.lr is not None else {}),
            **({"optimizer": self.optimizer} if self.optimizer is not None else {}),
        }


def canon_ids(codes: np.ndarray, universe) -> tuple[np.ndarray, np.ndarray]:
    """Re-code ``codes`` (indices into ``universe``) to indices into the sorted used ids.

    O(len(codes) + len(universe)) with a lookup table; only the used ids are sorted.
    """
    codes = np.asarray(codes)
    uni = universe if isinstance(universe, np.ndarray) else np.asarray(universe, dtype=object)
    if not len(codes):
        return np.asarray([], dtype=object), np.zeros(0, dtype=np.int32)
    present = np.zeros(len(uni), dtype=bool)
    present[codes] = True
    used = np.flatnonzero(present)
    ids = np.asarray(uni[used], dtype=object)
    order = np.argsort(ids, kind="stable")
    lut = np.empty(len(uni), dtype=np.int32)
    lut[used[order]] = np.arange(len(used), dtype=np.int32)
    return ids[order], lut[codes]


def make_rundata(
    run_id: str,
    ex_codes,
    ex_universe,
    batch_ptr,
    loss_step,
    test_codes,
    test_universe,
    loss,
    **meta,
) -> RunData:
    """Canonicalise already-validated arrays (IDs sorted, losses ordered by step, test id)."""
    ex_ids, ex_c = canon_ids(ex_codes, ex_universe)
    te_ids, te_c = canon_ids(test_codes, test_universe)
    loss_step = np.asarray(loss_step, dtype=np.int64)
    loss = np.asarray(loss, dtype=np.float64)
    key = loss_step * max(len(te_ids), 1) + te_c
    if len(key) > 1 and not bool(np.all(key[1:] > key[:-1])):  # logs are usually in order
        order = np.argsort(key, kind="stable")
        loss_step, te_c, loss = loss_step[order], te_c[order], loss[order]
    return RunData(
        run_id,
        ex_ids,
        ex_c,
        np.asarray(batch_ptr, dtype=np.int64),
        te_ids,
        loss_step,
        te_c,
        loss,
        **meta,
    )


def run_from_runset(runset, run, source: str = "python") -> RunData:
    """A :class:`RunData` from a ``runs.Run`` of a ``RunSet`` (validated like a log)."""
    where = f"run {run.run_id!r}"
    steps = np.asarray(run.loss_steps, dtype=np.int64)
    L = np.asarray(run.losses, dtype=np.float64)
    ptr = np.asarray(run.batch_ptr, dtype=np.int64)
    if not run.run_id:
        raise InputError("empty run id", path=source, field="run_id", hint="give every run a name")
    if len(ptr) < 2:
        raise InputError(
            f"{where} has no training steps",
            path=source,
            field="batch_ptr",
            hint="a run needs at least one step with a batch",
        )
    if np.any(np.diff(ptr) <= 0):
        t = int(np.flatnonzero(np.diff(ptr) <= 0)[0]) + 1
        raise InputError(
            f"{where}: step {t} has an empty batch",
            path=source,
            field="batch",
            hint="every training step 1..T needs the IDs it trained on",
        )
    if L.ndim != 2 or L.shape[0] != len(steps) or not len(steps) or steps[0] != 0:
        raise InputError(
            f"{where}: losses must be (K, M) with loss_steps starting at 0",
            path=source,
            field="loss_steps",
            hint="log the initial losses at step 0",
        )
    if np.any(np.diff(steps) <= 0) or steps[-1] > run.n_steps:
        raise InputError(
            f"{where}: loss_steps must increase and stay within 0..{run.n_steps}",
            path=source,
            field="loss_steps",
            hint="fix the logged step numbers",
        )
    if np.isinf(L).any():
        raise InputError(
            f"{where}: non-finite loss",
            path=source,
            field="loss",
            hint="losses must be finite numbers; NaN means 'not logged'",
        )
    logged = ~np.isnan(L)
    present = logged.any(axis=0)
    if np.any(present & ~logged[0]):
        j = int(np.flatnonzero(present & ~logged[0])[0])
        raise InputError(
            f"{where}: test {runset.test_ids[j]!r} has no step-0 loss",
            path=source,
            field="loss",
            hint="log every test example at step 0 (initial losses)",
        )
    if not present.any():
        raise InputError(
            f"{where}: no losses",
            path=source,
            field="loss",
            hint="log the initial losses at step 0",
        )
    k, j = np.nonzero(logged)
    return make_rundata(
        run.run_id,
        run.batch_idx,
        runset.example_ids,
        ptr,
        steps[k],
        j,
        runset.test_ids,
        L[k, j],
        source=source,
        source_format="python",
        tags=tuple(run.tags or ()),
        lr=check_lr(run.lr, run.n_steps, source),
        optimizer=run.optimizer,
    )


def check_lr(lr, n_steps: int, source: str) -> np.ndarray | None:
    """A per-step learning-rate array (T,) validated (finite, >= 0), or None."""
    if lr is None:
        return None
    a = np.asarray(lr, dtype=np.float64).reshape(-1)
    if len(a) != n_steps:
        raise InputError(
            f"lr has {len(a)} values for {n_steps} steps",
            path=source,
            field="lr",
            hint="give one learning rate per training step, or none at all",
        )
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise InputError(
            "lr must be finite and >= 0",
            path=source,
            field="lr",
            hint="log the learning rate each step's update used",
        )
    return a

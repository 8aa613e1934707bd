"""Which training examples help or hurt a test example, according to a simulator.

Measures (sign: positive = helpful, i.e. the example lowers the test loss):

- ``removal`` (default, counterfactual): for each curriculum (the model's fitting runs), the
  simulated final loss with every occurrence of the example taken out of its batches minus the
  simulated final loss of the curriculum as it is, averaged over the curricula (an example a
  curriculum does not contain contributes 0 for it). Rolled from each run's observed L_0.
  The batch keeps its size: the removed example's slot is filled by a *neutral* example
  (A = 1/b, B = 0, i.e. "no change"), because in Simfluence alpha is a sum over the batch and
  simply dropping one of b examples would shrink alpha by about 1/b, an artefact of the model
  rather than the example's influence.
- ``coefficient`` (cheap, one step): the predicted decrease of the test loss from one occurrence
  of the example, at a reference loss L_ref (midpoint of the observed range):
  -( (A_i - a0) L_ref + B_i ), with a0 = 1/batch size (the no-change multiplier) for models that
  fit A, and -B_i for additive models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simfluence_cli.analysis.evaluation import example_map
from simfluence_cli.errors import ModelError, UsageError
from simfluence_cli.runs import RunSet

__all__ = [
    "removal_curricula",
    "removal_effect",
    "coefficient_effect",
    "mean_effect",
    "top_examples",
    "MEASURE_HELP",
]

MEASURE_HELP = {
    "removal": "removal_effect = simulated final loss without the example (slot filled by a "
    "neutral no-change example) - with it, mean over the fitting curricula; "
    "positive = helpful",
    "coefficient": "step_effect = predicted decrease of the test loss from one occurrence of the "
    "example at the midpoint of the observed loss range; positive = helpful",
}
_CHUNK_BYTES = 128 * 2**20


def _cols(sim, tests: Sequence[str] | None) -> np.ndarray:
    return sim._test_columns(tests)


def removal_curricula(store, run_ids: Sequence[str]) -> RunSet:
    """The runs ``removal_effect`` (and a calibration's removal intervals) take examples out
    of: their curricula and only their first logged losses (the L_0 rolled from), not the
    whole loss trajectories."""
    return store.load(list(run_ids), loss_steps=1)


def removal_effect(
    sim, runs: RunSet, tests: Sequence[str] | None = None, unseen: str = "skip", progress=None
) -> np.ndarray:
    """(n_examples_of_model, M) mean change of the final loss when each example is removed.

    Exact and without re-rolling: ``model.rollout.removal_deltas`` (compositions of the clamped
    affine step maps) for the paper's methods, ``model.oa_removal`` (the 2-D state's matrix
    products, with a clip certificate) for optimizer-aware; docs/rollout.md.
    """
    cols = _cols(sim, tests)
    test_names = list(np.asarray(sim.test_ids_)[cols])
    tpos = {t: j for j, t in enumerate(runs.test_ids)}
    missing = [t for t in test_names if t not in tpos]
    if missing:
        raise ModelError(f"the curricula's runs did not log test id(s) {', '.join(missing[:5])}")
    rcols = np.asarray([tpos[t] for t in test_names], dtype=np.int64)
    n = len(sim.example_ids_)
    mapping = example_map(sim, runs.example_ids, unseen)
    # a copy of the model with one extra, neutral example (row n): A = 1/b, B = 0
    neutral = sim.with_no_change_example("\x00neutral")
    if len(runs) == 0:
        raise ModelError("no curricula to remove examples from; give --runs")
    bases, L0s = [], []
    for run in runs.runs:
        raw = run.index_matrix()
        base = np.where(raw < 0, -1, mapping[np.maximum(raw, 0)])
        if (base == -2).any():
            raise ModelError("some examples of the runs are unknown to the model")
        L0 = run.losses[0, rcols]
        if not np.isfinite(L0).all():
            L0 = np.where(np.isfinite(L0), L0, np.asarray(sim.init_loss_mean_)[cols])
        bases.append(base)
        L0s.append(L0)
    from simfluence_cli.runs import stack_index

    lo, hi = sim.bounds_
    if lo is not None:
        lo, hi = lo[cols], hi[cols]
    idx, A, B = stack_index(bases), neutral.A_[:, cols], neutral.B_[:, cols]
    if sim.method == "optimizer-aware":  # its 2-D state (loss, carried increment)
        from simfluence_cli.model.oa_removal import simulator_removal_deltas

        deltas, _ = simulator_removal_deltas(
            sim, A, B, cols, idx, np.asarray(L0s), lo, hi, n, progress=progress
        )
    else:
        from simfluence_cli.model.rollout import removal_deltas

        deltas, _ = removal_deltas(
            A, B, idx, np.asarray(L0s), sim.method, lo, hi, n, progress=progress
        )
    return deltas[:n] / len(runs)


def _removal_rerolled(sim, neutral, bases, L0s, test_names, progress) -> np.ndarray:
    """Summed removal deltas by rolling every one-example-removed curriculum again from step 0
    (the reference the exact paths are tested against)."""
    n = len(sim.example_ids_)
    total = np.zeros((n, len(test_names)))
    for base, L0 in zip(bases, L0s):
        T, b = base.shape
        traj = sim.simulate(base[None], L0, tests=test_names, lengths=[T])[0]  # (T+1, M)
        final = traj[T]
        present = np.unique(base[(base >= 0) & (base < n)])
        if len(present) == 0:
            continue
        per = max(1, int(_CHUNK_BYTES // max(1, (T + 1) * max(len(test_names), b) * 8)))
        for s in range(0, len(present), per):
            ex = present[s : s + per]
            idx = np.where(base[None] == ex[:, None, None], n, base[None])
            out = neutral.simulate(idx, L0, tests=test_names, lengths=[T] * len(ex))
            total[ex] += out[:, T] - final
            if progress is not None:
                progress(len(ex) / len(present) / len(bases))
    return total


def coefficient_effect(sim, tests: Sequence[str] | None = None) -> np.ndarray:
    """(n_examples, M) one-step predicted decrease of the test loss per occurrence."""
    cols = _cols(sim, tests)
    A, B = sim.A_[:, cols], sim.B_[:, cols]
    if sim.method == "additive":
        return -B
    lref = 0.5 * (np.asarray(sim.loss_min_)[cols] + np.asarray(sim.loss_max_)[cols])
    lref = np.where(np.isfinite(lref), lref, np.asarray(sim.init_loss_mean_)[cols])
    if sim.method == "optimizer-aware":  # in transformed space y = f(L), mapped back by dL/dy
        from simfluence_cli.model.optimizer_aware import forward, inverse

        tr = sim.config_.transform
        y = forward(lref, tr)
        eps = 1e-6 * np.maximum(1.0, np.abs(y))
        dLdy = (inverse(y + eps, tr) - inverse(y - eps, tr)) / (2 * eps)
        return -(A * y + B) * dLdy
    a0 = 1.0 / sim.batch_size_
    return -((A - a0) * lref + B)


def mean_effect(
    model,
    measure: str,
    tests: Sequence[str] | None = None,
    runs: RunSet | None = None,
    progress=None,
) -> np.ndarray:
    """(n_examples,) ``removal`` or ``coefficient`` effect averaged over ``tests`` (None = all).

    A :class:`~simfluence_cli.store.saved_models.StoredModel` is used one chunk of test
    examples at a time (its tests' effects added to a running total one test at a time, in
    test order, so the result is the same to the bit for any chunk size; divided by their
    number at the end), so the whole N_train x N_test parameter matrix is never in memory; a
    Simulator is one chunk.
    """
    from simfluence_cli.analysis.evaluation import model_chunks

    names = list(np.asarray(model.test_ids_)[model._test_columns(tests)])
    total = np.zeros(len(model.example_ids_))
    for chunk, sim in model_chunks(model, np.asarray(names, dtype=object)):
        if measure == "removal":
            share = len(chunk) / len(names)
            prog = None if progress is None else (lambda x, f=share: progress(x * f))
            eff = removal_effect(sim, runs, chunk, progress=prog)
        elif measure == "coefficient":
            eff = coefficient_effect(sim, chunk)
        else:
            raise UsageError("--measure must be removal or coefficient")
        for j in range(eff.shape[1]):  # not eff.sum(axis=1): its grouping follows the chunks
            total += eff[:, j]
        sim = eff = None  # free this chunk's parameters before the next one is loaded
    return total / len(names)


def top_examples(
    effect: np.ndarray,
    example_ids: np.ndarray,
    k: int,
    value_name: str,
    counts: np.ndarray | None = None,
    only: np.ndarray | None = None,
) -> list[dict]:
    """Rows for the k most helpful (largest value) and k most harmful (smallest) examples.

    ``effect``: (n,) one value per example (already averaged over tests). ``only``: boolean mask
    of the examples to rank (e.g. those occurring in the curricula).
    """
    if k < 1:
        raise UsageError("--k must be at least 1")
    ids = np.asarray(example_ids, dtype=object)
    cand = np.arange(len(ids)) if only is None else np.flatnonzero(only)
    v = effect[cand]
    name_order = np.argsort(ids[cand].astype(str), kind="stable")
    # sort by value (desc) with example id as the tie-breaker
    desc = name_order[np.argsort(-v[name_order], kind="stable")]
    asc = name_order[np.argsort(v[name_order], kind="stable")]
    rows = []
    for direction, order in (("helpful", desc[:k]), ("harmful", asc[:k])):
        for rank, j in enumerate(order, start=1):
            i = cand[j]
            row = {
                "direction": direction,
                "rank": rank,
                "example_id": str(ids[i]),
                value_name: float(effect[i]),
            }
            if counts is not None:
                row["occurrences"] = int(counts[i])
            rows.append(row)
    return rows

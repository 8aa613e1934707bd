"""Fit diagnostics: identifiability problems of a fit, each naming the affected examples."""

from __future__ import annotations

import numpy as np

# ---- fit diagnostics ------------------------------------------------------------------------


def _names(ids, limit: int = 10) -> str:
    ids = [str(i) for i in ids]
    return ", ".join(map(repr, ids[:limit])) + (
        f" and {len(ids) - limit} more" if len(ids) > limit else ""
    )


def fit_warnings(runs, sim) -> list[str]:
    """Identifiability problems of a fit, each naming the affected examples.

    Called by ``Simulator.fit`` after it has counted example occurrences and the loss range:
    - training examples that never occur in the fitting curricula (their parameters stay at
      the prior: the fit knows nothing about them);
    - groups of examples that always occur together (same steps of the same runs): only the
      sum of their parameters is determined; the penalty splits it evenly among them. With
      sparse logging the unit is the logged interval, not the step: examples trained only
      between the same two logged losses of the same runs (never separated by a logged step)
      enter the same observations and are not identifiable either;
    - examples that occur only outside the logged range of each of their runs (after the
      last or before the first logged loss: in no observation, their parameters are the prior);
    - test examples whose loss never changes in the fitting runs (nothing to learn: the fit
      predicts "no change").
    Vectorised: one random fingerprint per (run, logged interval), summed per example. The
    intervals are those between the steps at which any test is logged (the finest logging of
    the run; tests logged more sparsely than others can have larger groups).
    """
    out: list[str] = []
    varying = (
        None
        if sim.normalises_batch_size
        else batch_size_warning([r.batch_sizes for r in runs.runs], "the fitting runs")
    )
    if varying:
        out.append(varying)
    n = len(sim.example_ids_)
    counts = np.asarray(sim.example_counts_)
    never = np.flatnonzero(counts == 0)
    if len(never):
        out.append(
            f"{len(never)} training example(s) never occur in the fitting runs; their "
            f"parameters are the prior (no effect): {_names(sim.example_ids_[never])}"
        )
    if n and len(runs.runs):
        rng = np.random.default_rng(12345)
        prints = np.zeros((n, 2))
        sparse = False
        for r in runs.runs:
            w = rng.random((r.n_steps, 2)) + 1.0
            # logged interval (s, t] of each step: steps between two logged losses share one
            # fingerprint (every-step logging: one interval per step); steps after the last
            # logged loss are in no observation (weight 0)
            logged = r.loss_steps[np.isfinite(r.losses).any(axis=1)]
            steps = np.arange(1, r.n_steps + 1)
            iv = np.searchsorted(logged, steps, side="left")
            iv_w = np.zeros((r.n_steps, 2))
            if len(logged):  # steps before the first or after the last logged loss: weight 0
                observed = (iv < len(logged)) & (steps > logged[0])
                end = logged[np.minimum(iv, len(logged) - 1)]  # the interval's last step
                iv_w[observed] = w[end[observed] - 1]
            sparse |= bool(np.any(np.diff(logged) > 1))
            step = np.repeat(np.arange(r.n_steps), np.diff(r.batch_ptr))
            for k in range(2):
                prints[:, k] += np.bincount(r.batch_idx, weights=iv_w[step, k], minlength=n)
        late = np.flatnonzero((counts > 0) & (prints[:, 0] == 0))
        if len(late):
            out.append(
                f"{len(late)} training example(s) occur only after the last (or before the "
                "first) logged loss of their runs, in no observation; their parameters are the "
                f"prior (no effect): "
                f"{_names(sim.example_ids_[late])}"
            )
        seen = np.flatnonzero((counts > 0) & (prints[:, 0] > 0))
        if len(seen) > 1:
            _, inv, size = np.unique(prints[seen], axis=0, return_inverse=True, return_counts=True)
            inv = inv.reshape(-1)
            shared = np.flatnonzero(size[inv] > 1)
            if len(shared):
                groups: dict[int, list] = {}
                for j in shared:
                    groups.setdefault(int(inv[j]), []).append(sim.example_ids_[seen[j]])
                shown = "; ".join(
                    "{" + ", ".join(map(str, g[:5])) + (", ..." if len(g) > 5 else "") + "}"
                    for g in list(groups.values())[:5]
                )
                where = (
                    "between the same logged losses of the same runs: losses are not logged "
                    "after every step, so examples trained in the same logging interval "
                    "enter the same observations"
                    if sparse
                    else "same steps of the same runs"
                )
                out.append(
                    f"{len(shared)} training example(s) in {len(groups)} group(s) always "
                    f"occur together ({where}): only each group's "
                    "summed effect is identified, split evenly among its members: "
                    + shown
                    + (" ..." if len(groups) > 5 else "")
                )
    lo, hi = np.asarray(sim.loss_min_, float), np.asarray(sim.loss_max_, float)
    with np.errstate(invalid="ignore"):
        const = np.flatnonzero(
            np.isfinite(lo) & (hi - lo <= 1e-12 * np.maximum(np.abs(hi), 1e-300))
        )
    if len(const):
        out.append(
            f"{len(const)} test example(s) have a constant loss in every fitting run "
            f"(nothing to learn; the fit predicts no change): "
            f"{_names(sim.test_ids_[const])}"
        )
    return out


BATCH_SIZE_ADVICE = (
    "the optimizer-aware method (what `simfluence fit` fits by default when every step logs "
    "its test losses) averages over the batch and is not affected (`simfluence fit --help`); "
    "else log with DataLoader(drop_last=True) so every step has a full batch"
)


def batch_size_warning(sizes, what: str = "the runs") -> str | None:
    """A warning when batch sizes vary within or across runs, else None.

    ``sizes``: one array of per-step batch sizes per run (or curriculum). The batch-sum
    simulator adds A_i and B_i over a step's batch, so a step with k examples instead of the
    usual b moves the loss by about k/b of a full step (a DataLoader's short last batch, kept
    by default, roughly halves the simulated change at every such step).
    """
    arrays = [np.asarray(s, dtype=np.int64) for s in sizes if len(s)]
    if not arrays:
        return None
    allsz = np.concatenate(arrays)
    vals, counts = np.unique(allsz, return_counts=True)
    if len(vals) < 2:
        return None
    b = int(vals[np.argmax(counts)])
    odd = int(np.sum(allsz != b))
    within = sum(1 for s in arrays if len(np.unique(s)) > 1)
    smaller = int(np.sum(allsz < b))
    return (
        f"batch sizes vary in {what}: {odd} of {len(allsz)} steps have a batch size other than "
        f"the usual {b} (sizes {', '.join(map(str, vals[:6].tolist()))}"
        f"{', ...' if len(vals) > 6 else ''}; {within} of {len(arrays)} run(s) vary within "
        f"the run, {smaller} step(s) are smaller"
        + (", e.g. a DataLoader's short last batch). The " if smaller else "). The ")
        + "batch-sum methods (linear, additive, multiplicative) add A_i and B_i over the "
        f"batch, so a step of k examples moves the loss by about k/{b} of a full step (a half "
        f"batch roughly halves it); {BATCH_SIZE_ADVICE}"
    )


def cg_warning(stats: dict, test_ids, tol: float) -> str | None:
    """The warning naming the test examples whose CG solve did not converge (None if all did):
    their parameters are inaccurate; raising the penalty or the direct solver helps."""
    bad = stats.get("cg_not_converged_tests") or []
    if not bad:
        return None
    return (
        f"the CG solver did not converge for {len(bad)} test example(s) (largest relative "
        f"residual {stats['cg_max_rel_residual']:.2g}, tolerance {tol:g}); their "
        f"parameters are inaccurate: raise --l2 or use --solver direct: "
        f"{_names(np.asarray(test_ids)[np.asarray(bad)])}"
    )

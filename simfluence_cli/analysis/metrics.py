"""Accuracy metrics of simulated against observed loss trajectories (vectorised).

Definitions (one held-out run; the simulator is rolled from the run's observed L_0 through its
curriculum; "logged steps" are the steps > 0 at which the run logged a loss):

- ``all_steps_mse``: mean of (simulated - observed)^2 over test examples and logged steps > 0;
- ``all_steps_mae``: the same with |simulated - observed|;
- ``final_step_mse`` / ``final_step_mae``: over test examples at the run's last logged step;
- ``final_spearman``: Spearman's rho across test examples between simulated and observed
  final-step losses (average ranks for ties; NaN when either side is constant).

Across runs, ``run_spearman``: for each test example, Spearman's rho across runs between its
simulated and observed final losses, averaged over test examples. A prediction that does not
change from run to run (e.g. the mean-trajectory baseline) scores 0 for that test example:
it has no counterfactual skill. Test examples whose observed final loss is the same in every
run carry no information and are left out (NaN).
"""

from __future__ import annotations

import numpy as np

__all__ = ["spearman", "run_errors", "run_errors_from_parts", "run_spearman", "summarise_runs"]


def _spearman_rows(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of finite (R, n) arrays; NaN where a row is constant."""
    from scipy.stats import rankdata  # lazy: scipy.stats costs ~1 s to import; top needs none

    rx = rankdata(X, axis=1)
    ry = rankdata(Y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    num = np.einsum("ij,ij->i", rx, ry)
    den = np.sqrt(np.einsum("ij,ij->i", rx, rx) * np.einsum("ij,ij->i", ry, ry))
    out = np.full(len(X), np.nan)
    ok = den > 0
    out[ok] = np.clip(num[ok] / den[ok], -1.0, 1.0)
    return out


def spearman(x, y, axis: int = -1) -> np.ndarray | float:
    """Spearman's rho along ``axis`` for every slice (ties get average ranks).

    Pairs where either value is NaN are dropped. A slice with fewer than 2 finite pairs or a
    constant side gives NaN. Returns a float for 1-D input, else an array of the other axes.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = np.broadcast_arrays(x, y)
    scalar = x.ndim == 1
    x = np.moveaxis(x, axis, -1)
    y = np.moveaxis(y, axis, -1)
    shape, n = x.shape[:-1], x.shape[-1]
    X = x.reshape(-1, n)
    Y = y.reshape(-1, n)
    ok = np.isfinite(X) & np.isfinite(Y)
    full = ok.all(axis=1)
    out = np.full(len(X), np.nan)
    if n >= 2 and full.any():
        out[full] = _spearman_rows(X[full], Y[full])
    for r in np.flatnonzero(~full):  # rare: slices with missing values
        m = ok[r]
        if m.sum() >= 2:
            out[r] = _spearman_rows(X[r, m][None], Y[r, m][None])[0]
    out = out.reshape(shape)
    return float(out) if scalar else out


def run_errors(sim: np.ndarray, obs: np.ndarray) -> dict:
    """Errors of one run. ``sim``, ``obs``: (K, M) losses at the logged steps, step 0 first.

    Returns per-run scalars (``all_steps_mse``, ``all_steps_mae``, ``final_step_mse``,
    ``final_step_mae``, ``final_spearman``) and per-test pieces for pooling across runs
    (``sse``, ``sae``, ``count`` over steps > 0; ``final_sim``, ``final_obs``).
    """
    sim = np.asarray(sim, dtype=np.float64)
    obs = np.asarray(obs, dtype=np.float64)
    err = sim[1:] - obs[1:]
    ok = np.isfinite(err)
    e2 = np.where(ok, err * err, 0.0)
    e1 = np.where(ok, np.abs(err), 0.0)
    return run_errors_from_parts(e2.sum(axis=0), e1.sum(axis=0), ok.sum(axis=0), sim[-1], obs[-1])


def run_errors_from_parts(sse, sae, count, final_sim, final_obs) -> dict:
    """:func:`run_errors` from its per-test pieces (over test examples: (M,) each).

    Pieces of column chunks concatenated give the same result as the whole run at once (how
    eval uses a model's parameters one chunk of test examples at a time).
    """
    sse, sae, count = (np.asarray(v) for v in (sse, sae, count))
    fs = np.asarray(final_sim, dtype=np.float64)
    fo = np.asarray(final_obs, dtype=np.float64)
    n = count.sum()
    fe = fs - fo
    fok = np.isfinite(fe)
    return {
        "all_steps_mse": float(sse.sum() / n) if n else np.nan,
        "all_steps_mae": float(sae.sum() / n) if n else np.nan,
        "final_step_mse": float(np.mean(fe[fok] ** 2)) if fok.any() else np.nan,
        "final_step_mae": float(np.mean(np.abs(fe[fok]))) if fok.any() else np.nan,
        "final_spearman": spearman(fs, fo),
        "sse": sse,
        "sae": sae,
        "count": count,
        "final_sim": fs,
        "final_obs": fo,
    }


def run_spearman(final_sim: np.ndarray, final_obs: np.ndarray) -> np.ndarray:
    """Per test example, Spearman's rho across runs of simulated vs observed final losses.

    ``final_sim``, ``final_obs``: (R, M). Returns (M,): 0 where the simulated value is the same
    in every run but the observed one varies (no counterfactual skill), NaN where the observed
    value does not vary (or fewer than 2 runs).
    """
    S = np.asarray(final_sim, dtype=np.float64)
    O = np.asarray(final_obs, dtype=np.float64)
    rho = spearman(S, O, axis=0)
    rho = np.atleast_1d(rho)
    with np.errstate(invalid="ignore"):
        obs_varies = np.nanmax(O, axis=0) > np.nanmin(O, axis=0)
        sim_const = ~(np.nanmax(S, axis=0) > np.nanmin(S, axis=0))
    rho = np.where(np.isnan(rho) & obs_varies & sim_const & (O.shape[0] >= 2), 0.0, rho)
    return rho


def summarise_runs(per_run: list[dict]) -> dict:
    """Mean over runs of the per-run metrics, std of ``final_spearman``, and run_spearman."""

    def col(k):
        return np.asarray([r[k] for r in per_run], dtype=np.float64)

    out = {}
    for k in (
        "all_steps_mse",
        "all_steps_mae",
        "final_step_mse",
        "final_step_mae",
        "final_spearman",
    ):
        v = col(k)
        out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
    sp = col("final_spearman")
    out["final_spearman_std"] = float(np.nanstd(sp)) if np.isfinite(sp).any() else np.nan
    out["mae"] = out["all_steps_mae"]
    if len(per_run) >= 2:
        rs = run_spearman(
            np.vstack([r["final_sim"] for r in per_run]),
            np.vstack([r["final_obs"] for r in per_run]),
        )
    else:
        rs = np.full(len(per_run[0]["final_obs"]) if per_run else 0, np.nan)
    out["run_spearman_per_test"] = rs
    out["run_spearman"] = float(np.nanmean(rs)) if np.isfinite(rs).any() else np.nan
    out["n_runs"] = len(per_run)
    out["n_constant_final"] = int(np.isnan(sp).sum())
    return out

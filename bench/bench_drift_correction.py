"""An out-of-fold rollout drift correction where the time basis is on (issue 11, LM final-step gap).

    .venv/bin/python bench/bench_drift_correction.py [--families plain,momentum,adamw,lm]
        [--samples DIR] [--lm-runs DIR] [--work DIR] [--json OUT.json] [--out REPORT.md]

The time basis assumes a drift shared by every curriculum, learnable from the fitting runs. Where
that assumption is in force (the default's CV chose n_basis > 0; never on plain SGD, where the
basis is not offered), this adds its rollout-level counterpart: a per-(test, step) correction

    delta_j(t) = mean over the fitting runs of (real - simulated) loss at step t, test j,

each fitting run simulated OUT OF FOLD (a model with the default's chosen configuration fitted
on the other folds: the default CV's own grouped folds), added to the default's simulation in
LOSS space after the inverse transform and clipped to the model's loss bounds (so differences
between curricula are unchanged except at the clip). Past the longest fitting run the last
step's delta is held.

Variants, declared before any held-out figure was looked at:

- ``all-1``: delta added at every step (shrink s = 1, no CV);
- ``final-1``: delta added only at each run's final step (s = 1, no CV);
- ``all-cv``: delta x s at every step, s in (0, 0.5, 1) by grouped CV on the fitting runs: for
  fold f the correction is the mean residual of the runs of the OTHER folds, scored on fold f's
  residuals; s = the smallest whose CV all-steps MSE is within 0.5% (the optimizer-aware CV's
  margin) of the best; then accepted only if it lowers both the CV all-steps and the CV
  final-step MSE by more than 0.5% relative to s = 0 (else s = 0: no correction);
- ``final-cv``: delta x s at the final step only, s by the CV final-step MSE (same margin rule).

Every variant is evaluated with simfluence's own evaluation on every held-out set, beside the
default (``optimizer-aware``, all choices by CV), the paper's ``linear`` and the mean-trajectory
baseline; the issue-11 targets are checked for each variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_optimizer_aware as boa
from _machine import cpu_model
from bench_optimizer_aware import METRICS, build_store, ensure_family, heldout_sets

from simfluence_cli.analysis.evaluation import evaluate, rollout_runs
from simfluence_cli.model.baselines import MeanTrajectoryBaseline
from simfluence_cli.model.optimizer_aware import CV_MARGIN
from simfluence_cli.model.simulator import Simulator

SHRINK = (0.0, 0.5, 1.0)


class Corrected:
    """A fitted optimizer-aware Simulator whose rollouts get ``s * delta`` added in loss space
    (every step, or only each curriculum's final step), clipped to the model's loss bounds."""

    stateful = True

    def __init__(self, sim, delta: np.ndarray, shrink: float, where: str):
        self.sim, self.delta, self.shrink, self.where = sim, delta, float(shrink), where

    def __getattr__(self, name):
        return getattr(self.sim, name)

    def simulate(self, idx, init_loss=None, tests=None, lengths=None, lr=None, **kw):
        traj = self.sim.simulate(idx, init_loss, tests=tests, lengths=lengths, lr=lr, **kw)
        if self.shrink == 0.0:
            return traj
        cols = self.sim._test_columns(tests)
        D = self.shrink * self.delta[:, cols]  # (T_ref + 1, m), row 0 = 0
        T = traj.shape[1] - 1
        lengths = [T] * traj.shape[0] if lengths is None else lengths
        traj = np.array(traj, dtype=np.float64)
        if self.where == "all":
            traj += D[np.minimum(np.arange(T + 1), len(D) - 1)][None]
        else:
            for c, n in enumerate(lengths):
                traj[c, n] += D[min(n, len(D) - 1)]
        lo, hi = self.sim.bounds_
        if lo is not None:
            with np.errstate(invalid="ignore"):
                traj = np.clip(traj, lo[cols], hi[cols])
        return traj


def oof_residuals(fit, sim) -> tuple[np.ndarray, list[list[str]], list[float]]:
    """(real - simulated) losses (runs, T + 1, tests) of every fitting run, each simulated by a
    model with ``sim``'s configuration fitted without its fold (the default CV's folds)."""
    cfg = sim.config_
    folds = sim.cv_folds_
    T = max(r.n_steps for r in fit.runs)
    R = np.full((len(fit.runs), T + 1, fit.n_tests), np.nan)
    row = {r: k for k, r in enumerate(fit.run_ids)}
    cpu = []
    tests = np.asarray(fit.test_ids, dtype=object)
    for fold in folds:
        c0 = time.process_time()
        train = fit.subset([r for r in fit.run_ids if r not in set(fold)])
        s = Simulator(
            "optimizer-aware",
            l2=cfg.l2,
            transform=cfg.transform,
            ar=cfg.ar,
            time_basis=cfg.n_basis,
        ).fit(train)
        held = fit.subset(fold)
        for r, simL in rollout_runs(
            s, held, held.runs, tests, np.arange(fit.n_tests), unseen="prior"
        ):
            R[row[r.run_id], r.loss_steps] = r.losses - simL
        cpu.append(round(time.process_time() - c0, 1))
    return R, folds, cpu


def _mse_at(R: np.ndarray, shift: np.ndarray, final: bool) -> tuple[float, float]:
    """(sse, count) of R - shift over steps 1.. (or each run's last logged step)."""
    if final:
        sse = cnt = 0.0
        for k in range(R.shape[0]):
            ok = np.flatnonzero(np.isfinite(R[k]).any(axis=1))
            last = ok[-1]
            e = R[k, last] - shift[min(last, len(shift) - 1)]
            e = e[np.isfinite(e)]
            sse, cnt = sse + float(np.sum(e**2)), cnt + len(e)
        return sse, cnt
    e = R[:, 1:] - shift[None, 1 : R.shape[1]]
    e = e[np.isfinite(e)]
    return float(np.sum(e**2)), float(len(e))


def cv_shrink(fit, R: np.ndarray, folds) -> dict:
    """CV all-steps and final-step MSE of the residuals after subtracting s x (the mean residual
    of the other folds' runs), per s and per variant ('all': every step; 'final': last step)."""
    row = {r: k for k, r in enumerate(fit.run_ids)}
    out = {}
    for where in ("all", "final"):
        for s in SHRINK:
            acc = np.zeros(4)  # sse_all, cnt_all, sse_final, cnt_final
            for fold in folds:
                inf = np.array([row[r] for r in fold])
                rest = np.setdiff1d(np.arange(len(fit.runs)), inf)
                with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
                    sup.filter(RuntimeWarning)
                    delta = np.nan_to_num(np.nanmean(R[rest], axis=0))
                shift_all = s * delta
                if where == "all":
                    a = _mse_at(R[inf], shift_all, final=False)
                else:  # the final step only: all-steps error changes only there
                    shift0 = np.zeros_like(delta)
                    a0 = _mse_at(R[inf], shift0, final=False)
                    f0 = _mse_at(R[inf], shift0, final=True)
                    f1 = _mse_at(R[inf], shift_all, final=True)
                    a = (a0[0] - f0[0] + f1[0], a0[1])
                f = _mse_at(R[inf], shift_all, final=True)
                acc += [a[0], a[1], f[0], f[1]]
            out[f"{where}:{s}"] = {"cv_all": acc[0] / acc[1], "cv_final": acc[2] / acc[3]}
    return out


def choose_shrink(cv: dict, where: str) -> tuple[float, str]:
    """The declared rule (module docstring): (s, why)."""
    key = "cv_all" if where == "all" else "cv_final"
    vals = [cv[f"{where}:{s}"][key] for s in SHRINK]
    best = min(vals)
    s = next(s for s, v in zip(SHRINK, vals) if v <= best * (1 + CV_MARGIN))
    if s == 0.0:
        return 0.0, f"{key} best at s = 0 (within the margin)"
    if where == "all":
        base, got = cv[f"all:{0.0}"], cv[f"all:{s}"]
        ok = all(got[k] < base[k] * (1 - CV_MARGIN) for k in ("cv_all", "cv_final"))
        if not ok:
            return 0.0, f"s = {s} by cv_all but does not lower both CV MSEs by > 0.5%"
    return s, f"{key} chose s = {s}"


def fit_family(st, fam: str) -> tuple[dict, dict]:
    fit = st.load("fit")
    models, notes = {}, {}
    for name, kw in (
        ("optimizer-aware", dict(method="optimizer-aware", l2="auto")),
        ("linear", dict(method="linear", l2="auto")),
    ):
        t0, c0 = time.perf_counter(), time.process_time()
        sim = Simulator(**kw).fit(fit)
        note = {
            "fit_seconds": round(time.perf_counter() - t0, 1),
            "fit_cpu_seconds": round(time.process_time() - c0, 1),
            "l2": sim.l2_,
        }
        if sim.method == "optimizer-aware":
            note.update(sim.config_.as_dict())
        models[name], notes[name] = sim, note
        print(f"  {fam}: fitted {name} {note}", file=sys.stderr)
    sim = models["optimizer-aware"]
    corr = {"applies": bool(sim.config_.n_basis > 0)}
    if corr["applies"]:
        c0 = time.process_time()
        R, folds, fold_cpu = oof_residuals(fit, sim)
        with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
            sup.filter(RuntimeWarning)
            delta = np.nan_to_num(np.nanmean(R, axis=0))
        cv = cv_shrink(fit, R, folds)
        row = {r: k for k, r in enumerate(fit.run_ids)}
        F = np.stack([r.losses[-1] for r in fit.runs])
        fold_bias, mt_shift = [], []
        for fold in folds:  # a fold's mean final residual; its real mean minus the others'
            inf = [row[r] for r in fold]
            rest = np.setdiff1d(np.arange(len(fit.runs)), inf)
            fold_bias.append(round(float(np.sqrt(np.mean(R[inf, -1].mean(0) ** 2))), 5))
            shift = F[inf].mean(0) - F[rest].mean(0)
            mt_shift.append(round(float(np.sqrt(np.mean(shift**2))), 5))
        means = np.stack([R[[row[r] for r in fold], -1].mean(0) for fold in folds])
        fold_corr = np.corrcoef(means)[np.triu_indices(len(folds), 1)]
        chosen = {w: choose_shrink(cv, w) for w in ("all", "final")}
        corr.update(
            cpu_seconds=round(time.process_time() - c0, 1),
            fold_fit_cpu=fold_cpu,
            cv=cv,
            chosen={w: {"s": s, "why": why} for w, (s, why) in chosen.items()},
            delta_final_rms=float(np.sqrt(np.mean(delta[-1] ** 2))),
            delta_final_mean=float(np.mean(delta[-1])),
            fold_final_bias_rms=fold_bias,
            fold_mean_shift_rms=mt_shift,
            fold_bias_corr=[round(float(v), 2) for v in fold_corr],
        )
        models["all-1"] = Corrected(sim, delta, 1.0, "all")
        models["final-1"] = Corrected(sim, delta, 1.0, "final")
        models["all-cv"] = Corrected(sim, delta, chosen["all"][0], "all")
        models["final-cv"] = Corrected(sim, delta, chosen["final"][0], "final")
        corr["delta"] = delta
        print(f"  {fam}: correction {json.dumps(corr['chosen'])}", file=sys.stderr)
    models["mean-trajectory"] = MeanTrajectoryBaseline().fit(fit)
    return models, {"models": notes, "correction": corr}


def final_bias(models: dict, held, delta: np.ndarray | None, fit_final_mean) -> dict:
    """The default's final-step error on the held-out runs split per test into the bias shared
    by the runs and the rest, beside the mean trajectory's (reported, not used for a choice):
    with pred_r = p + e_r and real_r = y + u_r (p, y the means over the held-out runs),
    MSE = bias^2 + var(e) + var(u) - 2 cov(e, u); the mean trajectory pays its bias^2 + var(u).
    Also how the out-of-fold delta's final step lines up with the default's bias."""
    sim = models["optimizer-aware"]
    real = np.stack([r.losses[-1] for r in held.runs])
    tests = np.asarray(held.test_ids, dtype=object)
    cols = sim._test_columns(list(tests))
    pred = np.stack(
        [L[-1] for _, L in rollout_runs(sim, held, held.runs, tests, np.arange(held.n_tests))]
    )
    err = pred - real
    bias = err.mean(axis=0)
    mt_bias = fit_final_mean[cols] - real.mean(axis=0)
    e, u = pred - pred.mean(axis=0), real - real.mean(axis=0)
    out = {
        "final_mse": float(np.mean(err**2)),
        "bias2": float(np.mean(bias**2)),
        "pred_spread": float(np.mean(e**2)),
        "cov_pred_real": float(np.mean(e * u)),
        "real_final_variance": float(real.var(axis=0).mean()),
        "mt_bias2": float(np.mean(mt_bias**2)),
        "corr_bias_vs_mt_bias": float(np.corrcoef(bias, mt_bias)[0, 1]),
    }
    if delta is not None:
        T = min(max(r.n_steps for r in held.runs), len(delta) - 1)
        d = delta[T, cols]
        out["corr_bias_vs_minus_delta"] = float(np.corrcoef(bias, -d)[0, 1])
        out["bias2_after_delta"] = float(np.mean((bias + d) ** 2))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="plain,momentum,adamw,lm")
    ap.add_argument("--work", default=None)
    ap.add_argument("--samples", default=None, help="dir of the momentum/adamw families")
    ap.add_argument("--lm-runs", default=None, help="dir of the LM family (bench/lm_runs/)")
    ap.add_argument("--out", default=None, help="markdown report (default: stdout)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--render", default=None, help="only re-render OUT from this --json file")
    ns = ap.parse_args(argv)
    if ns.render:
        write_report(render(json.loads(Path(ns.render).read_text())), ns.out)
        return 0
    if ns.samples:
        boa.SAMPLES = Path(ns.samples)
    if ns.lm_runs:
        boa.LM_RUNS = Path(ns.lm_runs)
    work = Path(ns.work or tempfile.mkdtemp(prefix="bench-driftcorr-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "families": {},
        "command": " ".join(sys.argv),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    for fam in ns.families.split(","):
        ensure_family(fam)
        st = build_store(fam, work)
        models, info = fit_family(st, fam)
        delta = info["correction"].pop("delta", None)
        fr = {**info, "heldout": {}, "final_bias": {}}
        fit_final_mean = np.mean([r.losses[-1] for r in st.load("fit").runs], axis=0)
        for h in heldout_sets(fam):
            held = st.load(h)
            rows = evaluate(models, held).summary_rows()
            order = list(models)
            rows.sort(key=lambda row: order.index(row["model"]))
            fr["heldout"][h] = {row["model"]: {k: row[k] for k in METRICS} for row in rows}
            fr["final_bias"][h] = final_bias(models, held, delta, fit_final_mean)
        res["families"][fam] = fr
        print(json.dumps(fr["heldout"], indent=1), file=sys.stderr)
    res["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if ns.json:
        Path(ns.json).write_text(json.dumps(res, indent=1))
    write_report(render(res), ns.out)
    return 0


def write_report(text: str, out: str | None) -> None:
    if out is None:
        print(text)
    else:
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)


VARIANTS = ("optimizer-aware", "all-1", "final-1", "all-cv", "final-cv")


def targets(res: dict, name: str) -> list[str]:
    """Issue-11 targets for model ``name`` (the default where the variant does not apply)."""
    fams, missed = res["families"], []
    for fam, fr in fams.items():
        for h, t in fr["heldout"].items():
            o, mt = t.get(name, t["optimizer-aware"]), t["mean-trajectory"]
            if o["all_steps_mse"] >= mt["all_steps_mse"]:
                missed.append(
                    f"{fam}/{h} all-steps {o['all_steps_mse'] / mt['all_steps_mse']:.3f}x"
                )
            r = o["final_step_mse"] / mt["final_step_mse"]
            if r > 1.1:
                missed.append(f"{fam}/{h} final {r:.3f}x")
    rs = [
        fams[f]["heldout"][h].get(name, fams[f]["heldout"][h]["optimizer-aware"])["run_spearman"]
        for f in ("momentum", "adamw")
        if f in fams
        for h in ("heldout-random", "heldout-leave30")
    ]
    if rs and not (np.mean(rs) >= 0.4 and min(rs) > 0.1):
        missed.append(f"run-Spearman mean {np.mean(rs):.3f} min {min(rs):.3f}")
    return missed


def render(res: dict) -> str:
    lines = [
        "# Out-of-fold drift correction where the time basis is on (issue 11): figures",
        "",
        f"Command: `{res['command']}` (numbers below are from that run).",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in res["machine"].items()),
        "",
        "Variants (declared before the held-out figures were seen; bench/bench_drift_correction.py"
        " docstring): `all-1` / `final-1` the out-of-fold mean residual added at every step / at"
        " the final step only; `all-cv` / `final-cv` the same shrunk by s in (0, 0.5, 1) chosen"
        " by grouped CV on the fitting runs (s = 0: the default). Only where the default's CV"
        " chose the time basis.",
        "",
        "## Final-step MSE over the mean trajectory's, every held-out set",
        "",
        "| family / held-out | " + " | ".join(VARIANTS) + " | linear |",
        "|---" * (len(VARIANTS) + 2) + "|",
    ]
    for fam, fr in res["families"].items():
        for h, t in fr["heldout"].items():
            mt = t["mean-trajectory"]["final_step_mse"]
            cells = [
                f"{t[v]['final_step_mse'] / mt:.3f}x" if v in t else "(= default)"
                for v in (*VARIANTS, "linear")
            ]
            lines.append(f"| {fam} / {h} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets (issue 11) missed, per variant", ""]
    for v in VARIANTS:
        miss = targets(res, v)
        lines.append(f"- `{v}`: " + ("none" if not miss else "; ".join(miss)))
    lines.append("")
    for fam, fr in res["families"].items():
        lines += [f"## {fam}", ""]
        for name, note in fr["models"].items():
            lines.append(f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in note.items()))
        c = fr["correction"]
        if not c["applies"]:
            lines += ["- correction: not applied (the default's CV chose no time basis)", ""]
        else:
            lines.append(
                f"- correction: out-of-fold fits CPU {c['fold_fit_cpu']} s (total "
                f"{c['cpu_seconds']} s); final-step delta mean {c['delta_final_mean']:.4g}, "
                f"RMS {c['delta_final_rms']:.4g}; chosen: "
                + "; ".join(f"{w}: s = {v['s']} ({v['why']})" for w, v in c["chosen"].items())
            )
            lines.append(
                "- per CV fold: RMS over tests of the fold's mean final-step residual (out of "
                f"fold) {c['fold_final_bias_rms']}; of its runs' mean real final loss minus the "
                f"other folds' {c['fold_mean_shift_rms']}; correlation across tests of the "
                f"folds' mean final residuals, pairwise {c['fold_bias_corr']}"
            )
            lines += [
                "",
                "| CV on the fitting runs | all-steps MSE | final-step MSE |",
                "|---|---|---|",
            ]
            for k, v in c["cv"].items():
                lines.append(f"| {k} | {v['cv_all']:.4g} | {v['cv_final']:.4g} |")
            lines.append("")
        for h, table in fr["heldout"].items():
            fb = fr["final_bias"][h]
            lines += [
                f"### {fam} / {h}",
                "",
                "Default's final-step MSE split per test (means over the held-out runs): "
                f"{fb['final_mse']:.4g} = bias^2 {fb['bias2']:.4g} + spread of its predictions "
                f"{fb['pred_spread']:.4g} + real variance {fb['real_final_variance']:.4g} - "
                f"2 x covariance {fb['cov_pred_real']:.4g}; the mean trajectory's bias^2 "
                f"{fb['mt_bias2']:.4g} (the held-out runs' mean final loss minus the fitting "
                f"runs'), correlation of the two biases across tests "
                f"{fb['corr_bias_vs_mt_bias']:.2f}"
                + (
                    f"; bias^2 after the fitting runs' delta: {fb['bias2_after_delta']:.4g} "
                    f"(correlation of the bias with -delta {fb['corr_bias_vs_minus_delta']:.2f})"
                    if "bias2_after_delta" in fb
                    else ""
                ),
                "",
                "| model | all-steps MSE | final MSE | final Spearman | run-Spearman |",
                "|---|---|---|---|---|",
            ]
            for model, m in table.items():
                cells = ["-" if m[k] is None else f"{m[k]:.4g}" for k in METRICS]
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

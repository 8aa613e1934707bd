"""Data-as-Demonstrator (DaD) refits of Linear and the optimizer-aware model (issue 11 gaps).

    .venv/bin/python bench/bench_dad.py [--families plain,momentum,adamw] [--samples DIR]
        [--models linear,oa] [--l2 X] [--work DIR] [--json OUT.json] [--out REPORT.md]

DaD (Venkatraman, Hebert, Bagnell, AAAI 2015): fit the one-step regression, roll the fitted
model out on every FITTING run from its real initial loss, add the pairs (simulated state at
t-1, batch c_t) -> real loss at t to the regression and refit; iterate, aggregating all pairs.
For the optimizer-aware model the state is (y^_{t-1}, y^_{t-1} - y^_{t-2}) in the transformed
space the model is fitted in (the AR term gets the simulated increment). The fit stays
linear in (a, B, rho, gamma): the extra rows share the batch matrix Z; a set of rows with
weight w enters as its rows scaled by sqrt(w) (model/oa_system.py's mask stays 0/1).

Models refitted: ``linear`` (optimizer-aware with identity transform, no AR, no basis, Linear's
CV l2: on plain SGD, constant lr and batch, that is the paper's form and its held-out figures
equal Linear's; on momentum / AdamW it still weighs steps by the logged lr and 1/|batch|, so
there it is not the paper's Linear, which is evaluated beside it as ``linear (library)``) and
``oa`` (the configuration the default's CV chooses). Variants declared up front (l2 and the other choices fixed at the
plain fit's CV choice):

- ``dad1``, ``dad2``, ``dad3``: 1-3 DaD iterations, every rollout set weighted 1 (as the real
  pairs: the paper's aggregation);
- ``dad2-half``, ``dad3-half``: 2-3 iterations, the rollout sets sharing weight 1 in total
  (each 1/k), so real and rollout pairs weigh the same.
- added after the first run showed every variant above raising the fitting runs' own rollout
  all-steps MSE: ``dad1-w0.1`` .. ``dad3-w0.1``, the rollout sets sharing weight 0.1 in total.

Selection rule, on the fitting runs only (3 folds grouped by run, the optimizer-aware CV's
folds; every fold: the plain fit and the DaD iterations on the training runs, rollouts of the
held fold scored in loss space): the variant with the lowest CV final-step MSE among those whose
CV all-steps MSE is at most the plain fit's; it is taken over the plain fit only if its CV
final-step MSE is lower by more than 0.5% (the optimizer-aware CV's margin). The held-out
figures of every variant are reported regardless, with simfluence's own evaluation.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_optimizer_aware as boa
from _machine import cpu_model
from bench_optimizer_aware import (
    METRICS,
    build_store,
    ensure_family,
    heldout_sets,
)

from simfluence_cli.analysis.evaluation import evaluate
from simfluence_cli.model import optimizer_aware as oa
from simfluence_cli.model.baselines import MeanTrajectoryBaseline
from simfluence_cli.model.simulator import Simulator

#: weight of each rollout set after k iterations, by aggregation mode; the variants are
#: dad{k} (equal), dad{k}-half (k >= 2) and dad{k}-w0.1 (k = 1..3)
MODES = {
    "equal": lambda k: 1.0,  # declared before the first run
    "half": lambda k: 1.0 / k,  # declared before the first run
    "w0.1": lambda k: 0.1 / k,  # added after the first run (rollout pairs at 1/10 in total)
}


def variant_name(mode: str, k: int) -> str | None:
    if mode == "equal":
        return f"dad{k}"
    if mode == "half":
        return f"dad{k}-half" if k >= 2 else None
    return f"dad{k}-{mode}"


CV_MARGIN = 0.005


# -- the DaD regression -------------------------------------------------------------------------


class Problem:
    """The regression of ``cfg`` on some runs (standardised for the identity transform)."""

    def __init__(self, fit_runs, cfg, clip: str, margin: float, bound_runs):
        self.runs, self.cfg = fit_runs, cfg
        self.sched = oa.Schedule.from_runs(fit_runs)
        self.obs = oa.Observations(fit_runs, self.sched, cfg.n_basis)
        self.m = fit_runs.n_tests
        y0, dprev, dy, mk = self.obs.losses(np.arange(self.m), cfg.transform)
        self.real = (y0, dprev, dy, mk)
        self.target = y0 + dy  # real y_t (meaningless where mk == 0)
        self.idx = oa._index_array(fit_runs.runs)
        T = self.idx.shape[1]
        self.w = oa.curriculum_weights(self.sched, self.idx, oa._run_lr(fit_runs.runs, T))
        self.phi = oa.hat_basis(np.arange(1, T + 1), cfg.n_basis, self.sched.T_ref)
        self.lo, self.hi = oa._bounds(bound_runs, clip, margin)
        self.L0 = np.vstack([r.losses[0] for r in fit_runs.runs])

    def rollout(self, params, runs=None):
        """(C, T+1, m) simulated losses of ``runs`` (default: the fitting runs)."""
        a, B, rho, gamma = params
        if runs is None:
            idx, w, phi, L0 = self.idx, self.w, self.phi, self.L0
        else:
            idx = oa._index_array(runs.runs)
            T = idx.shape[1]
            w = oa.curriculum_weights(self.sched, idx, oa._run_lr(runs.runs, T))
            phi = oa.hat_basis(np.arange(1, T + 1), self.cfg.n_basis, self.sched.T_ref)
            L0 = np.vstack([r.losses[0] for r in runs.runs])
        return oa.rollout(a, B, rho, gamma, idx, w, phi, L0, self.cfg.transform, self.lo, self.hi)

    def dad_rows(self, params):
        """(y0, dprev, dy, mask) of the pairs (simulated state at t-1) -> real y_t."""
        traj = self.rollout(params)
        Y = oa.forward(traj, self.cfg.transform)
        m = self.m
        y0 = np.zeros((self.obs.n_obs, m))
        dprev = np.zeros_like(y0)
        off = 0
        for c, r in enumerate(self.runs.runs):
            T = r.n_steps
            y0[off : off + T] = Y[c, :T]
            d = np.zeros((T, m))
            d[1:] = Y[c, 1:T] - Y[c, : T - 1]
            dprev[off : off + T] = d
            off += T
        ok = np.isfinite(y0) & np.isfinite(dprev)
        mk = self.real[3] * ok
        dy = np.where(mk > 0, self.target - y0, 0.0)
        return np.where(ok, y0, 0.0), np.where(ok, dprev, 0.0), dy, mk

    def solve(self, sets, weights):
        """(a, B, rho, gamma) of the weighted union of row sets (each (y0, dprev, dy, mask))."""
        o = self.obs
        sw = [np.sqrt(float(x)) for x in weights]
        Z = sp.vstack([s * o.Z for s in sw]).tocsr()
        Phi = np.vstack([s * o.Phi for s in sw])
        PhiS = sp.csr_matrix(Phi)
        stacked = SimpleNamespace(
            Z=Z,
            Z2T=Z.multiply(Z).T.tocsr(),
            Phi=Phi,
            PhiS=PhiS,
            PhiTS=PhiS.T.tocsr(),
            n_obs=Z.shape[0],
        )
        y0 = np.vstack([r[0] for r in sets])
        dprev = np.vstack([s * r[1] for s, r in zip(sw, sets)])
        dy = np.vstack([s * r[2] for s, r in zip(sw, sets)])
        mk = np.vstack([r[3] for r in sets])
        n, m, H = Z.shape[1], self.m, self.cfg.n_basis
        a, B, rho, gamma = np.zeros((n, m)), np.zeros((n, m)), np.zeros(m), np.zeros((m, H))
        for ch in oa.plan_chunks(stacked, np.arange(m)):
            ca, cB, cr, cg, _, conv, _ = oa._solve_chunk(
                stacked,
                y0[:, ch],
                dprev[:, ch],
                dy[:, ch],
                mk[:, ch],
                self.cfg.ar,
                self.cfg.l2,
                1e-8,
                oa.CG_MAXITER,
            )
            a[:, ch], B[:, ch], rho[ch], gamma[ch] = ca, cB, cr, cg
        return a, B, rho, gamma

    def fit_all(self):
        """{variant: params} for the plain fit and every declared DaD variant."""
        plain = self.solve([self.real], [1.0])
        out = {"plain": plain}
        for mode, weight in MODES.items():
            params, sets = plain, [self.real]
            for k in range(1, 4):
                sets.append(self.dad_rows(params))
                params = self.solve(sets, [1.0] + [weight(k)] * k)
                name = variant_name(mode, k)
                if name is not None:
                    out[name] = params
        return out

    def target_rms(self, params) -> dict:
        """RMS one-step residual of ``params`` on the real pairs and on its own rollout pairs
        (fit units): how far the DaD targets are from what one step of the model can do."""
        a, B, rho, gamma = params
        out = {}
        for name, (y0, dprev, dy, mk) in (("real", self.real), ("rollout", self.dad_rows(params))):
            pred = (self.obs.Z @ B) + (self.obs.Z @ a) * y0 + rho * dprev
            if gamma.shape[1]:
                pred += self.obs.Phi @ gamma.T
            r = np.where(mk > 0, dy - pred, 0.0)
            out[name] = float(np.sqrt(np.sum(r**2) / max(mk.sum(), 1)))
        return out


def units(runs, cfg):
    """(runs the cfg fits, per-test scale back to loss units)."""
    if cfg.transform == "identity":
        return oa.standardised(runs)
    return runs, np.ones(runs.n_tests)


def cv_variants(runs, cfg, clip, margin) -> dict:
    """CV (3 folds grouped by run) rollout MSEs, loss space, of the plain fit and the variants."""
    fit_runs, scale = units(runs, cfg)
    folds = oa._folds(runs.run_ids, min(3, len(runs)))
    sse: dict = {}
    for fold in folds:
        train = [r for r in runs.run_ids if r not in fold]
        prob = Problem(fit_runs.subset(train), cfg, clip, margin, fit_runs.subset(train))
        held = fit_runs.subset(fold)
        for name, params in prob.fit_all().items():
            traj = prob.rollout(params, held)
            acc = sse.setdefault(name, np.zeros(4))
            for c, r in enumerate(held.runs):
                sim = traj[c][r.loss_steps][1:] * scale
                real = r.losses[1:] * scale
                ok = np.isfinite(real) & np.isfinite(sim)
                err = np.where(ok, sim - real, 0.0) ** 2
                acc += [err.sum(), ok.sum(), err[-1].sum(), ok[-1].sum()]
    return {
        k: {"cv_all_steps_mse": v[0] / v[1], "cv_final_step_mse": v[2] / v[3]}
        for k, v in sse.items()
    }


def choose(cv: dict) -> str:
    """The declared rule (module docstring)."""
    base = cv["plain"]
    ok = [k for k in cv if k != "plain" and cv[k]["cv_all_steps_mse"] <= base["cv_all_steps_mse"]]
    if not ok:
        return "plain"
    best = min(ok, key=lambda k: cv[k]["cv_final_step_mse"])
    if cv[best]["cv_final_step_mse"] < base["cv_final_step_mse"] * (1 - CV_MARGIN):
        return best
    return "plain"


def with_params(sim, params, scale):
    """A copy of the fitted optimizer-aware ``sim`` with other parameters (fit units)."""
    a, B, rho, gamma = params
    out = copy.copy(sim)
    out.A_, out.B_ = a, B * scale[None, :]
    out.ar_, out.basis_ = rho, gamma * scale[:, None]
    return out


# -- the benchmark ------------------------------------------------------------------------------


def exact_check() -> dict:
    """Mechanics check: on runs generated exactly by a Linear simulator (no noise, l2 ~ 0)
    the rollouts equal the data, so every DaD variant must return the plain fit's parameters
    (max abs difference, up to the solver tolerance)."""
    from simfluence_cli.io.synthetic import make_runs

    runs, A, _ = make_runs(12, 3, 8, 40, 2, seed=0, noise=0.0)
    cfg = oa.Config(transform="identity", ar=False, n_basis=0, l2=1e-9)
    fit_runs, _ = units(runs, cfg)
    fits = Problem(fit_runs, cfg, "none", 0.0, fit_runs).fit_all()
    plain = fits["plain"]
    out = {"plain_A_vs_truth": float(np.max(np.abs(plain[0] + 1.0 / 2 - A)))}
    for name, params in fits.items():
        if name != "plain":
            out[name] = float(max(np.max(np.abs(params[i] - plain[i])) for i in range(3)))
    return out


def base_models(fit) -> dict:
    """The two models DaD refits, fitted as the project fits them (CV choices)."""
    lin = Simulator(method="linear", l2="auto").fit(fit)
    oa_auto = Simulator(method="optimizer-aware", l2="auto").fit(fit)
    lin_oa = Simulator(
        method="optimizer-aware", l2=lin.l2_, transform="identity", ar=False, time_basis=0
    ).fit(fit)
    return {"linear": (lin_oa, lin), "oa": (oa_auto, None)}


def run_family(fam: str, work: Path, models_wanted, l2=None) -> dict:
    ensure_family(fam)
    st = build_store(fam, work)
    fit = st.load("fit")
    t0 = time.process_time()
    bases = base_models(fit)
    res: dict = {"models": {}, "heldout": {}}
    evald: dict = {"mean-trajectory": MeanTrajectoryBaseline().fit(fit)}
    for key in models_wanted:
        sim, paper = bases[key]
        if l2 is not None:  # the same choices at another penalty (plain fit included)
            kw = dict(transform=sim.config_.transform, ar=sim.config_.ar)
            sim = Simulator(
                method="optimizer-aware", l2=l2, time_basis=sim.config_.n_basis, **kw
            ).fit(fit)
        cfg = sim.config_
        fit_runs, scale = units(fit, cfg)
        c0 = time.process_time()
        cv = cv_variants(fit, cfg, sim.clip, sim.clip_margin)
        chosen = choose(cv)
        prob = Problem(fit_runs, cfg, sim.clip, sim.clip_margin, fit_runs)
        fits = prob.fit_all()
        gap = max(
            float(np.max(np.abs(fits["plain"][0] - sim.A_))),
            float(np.max(np.abs(fits["plain"][1] * scale - sim.B_))),
            float(np.max(np.abs(fits["plain"][2] - sim.ar_))),
        )
        in_sample = {}
        for name, params in fits.items():
            traj = prob.rollout(params)
            real = np.stack([r.losses for r in fit_runs.runs])
            err = (traj - real) * scale
            in_sample[name] = {
                "fit_all_steps_mse": float(np.mean(err[:, 1:] ** 2)),
                "fit_final_step_mse": float(np.mean(err[:, -1] ** 2)),
                "rho_median": float(np.median(params[2])),
            }
            evald[f"{key}-{name}"] = with_params(sim, params, scale)
        res["models"][key] = {
            "residual_rms_plain": prob.target_rms(fits["plain"]),
            "config": cfg.as_dict(),
            "cv": cv,
            "chosen": chosen,
            "in_sample": in_sample,
            "plain_refit_vs_library_max_abs": gap,
            "cpu_seconds": round(time.process_time() - c0, 1),
        }
        if paper is not None:
            evald["linear (library)"] = paper
        print(f"  {fam}/{key}: chosen {chosen}; cv {json.dumps(cv)}", file=sys.stderr)
    for h in heldout_sets(fam):
        rows = evaluate(evald, st.load(h)).summary_rows()
        res["heldout"][h] = {row["model"]: {k: row[k] for k in METRICS} for row in rows}
    res["cpu_seconds_total"] = round(time.process_time() - t0, 1)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="plain")
    ap.add_argument("--models", default="linear,oa")
    ap.add_argument("--samples", default=None, help="dir of momentum/adamw (default sample_runs/)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out", default=None, help="markdown report (default: stdout)")
    ap.add_argument("--render", default=None, help="only re-render OUT from this --json file")
    ap.add_argument("--l2", type=float, default=None, help="fix l2 (default: each model's CV)")
    ns = ap.parse_args(argv)
    if ns.render:
        emit(render(json.loads(Path(ns.render).read_text())), ns.out)
        return 0
    if ns.samples:
        boa.SAMPLES = Path(ns.samples)
    work = Path(ns.work or tempfile.mkdtemp(prefix="bench-dad-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "command": " ".join(sys.argv),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
        },
        "families": {},
        "exact_linear_check": exact_check(),
    }
    for fam in ns.families.split(","):
        results["families"][fam] = run_family(fam, work, ns.models.split(","), ns.l2)
        if ns.json:  # partial results survive a later family's failure
            Path(ns.json).write_text(json.dumps(results, indent=1))
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=1))
    emit(render(results), ns.out)
    return 0


def emit(text: str, out: str | None) -> None:
    if out is None:
        print(text)
    else:
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)


def _f(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def render(res: dict) -> str:
    lines = [
        "# DaD refits (bench/bench_dad.py)",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {json.dumps(res['machine'])}",
        "",
    ]
    if "exact_linear_check" in res:
        lines += [
            "Mechanics check (runs generated exactly by a Linear simulator, no noise, l2 1e-9: "
            "every variant must return the plain fit), max abs parameter difference: "
            + json.dumps({k: float(f"{v:.2g}") for k, v in res["exact_linear_check"].items()}),
            "",
        ]
    for fam, fr in res["families"].items():
        lines += [f"## {fam}", ""]
        for key, mr in fr["models"].items():
            lines += [
                f"### {fam} / {key}: config {json.dumps(mr['config'])}, chosen by CV: "
                f"**{mr['chosen']}** (plain refit vs library fit, max abs parameter "
                f"difference {mr['plain_refit_vs_library_max_abs']:.2g}; "
                f"{mr['cpu_seconds']} CPU s). One-step residual RMS of the plain fit (fit "
                f"units): real pairs {mr['residual_rms_plain']['real']:.4g}, its own rollout "
                f"pairs {mr['residual_rms_plain']['rollout']:.4g}",
                "",
                "| variant | CV all-steps MSE | CV final MSE | fitting-run rollout all-steps "
                "| fitting-run rollout final | rho median |",
                "|---|---|---|---|---|---|",
            ]
            for name, cv in mr["cv"].items():
                ins = mr["in_sample"][name]
                lines.append(
                    f"| {name} | {_f(cv['cv_all_steps_mse'])} | {_f(cv['cv_final_step_mse'])} "
                    f"| {_f(ins['fit_all_steps_mse'])} | {_f(ins['fit_final_step_mse'])} "
                    f"| {_f(ins['rho_median'])} |"
                )
            lines.append("")
        for h, rows in fr["heldout"].items():
            mt = rows["mean-trajectory"]["final_step_mse"]
            lines += [
                f"### {fam} / {h}",
                "",
                "| model | all-steps MSE | final MSE | final / mean-traj | final Spearman "
                "| run-Spearman |",
                "|---|---|---|---|---|---|",
            ]
            for name, r in rows.items():
                lines.append(
                    f"| {name} | {_f(r['all_steps_mse'])} | {_f(r['final_step_mse'])} | "
                    f"{r['final_step_mse'] / mt:.3f}x | {_f(r['final_spearman'])} | "
                    f"{_f(r['run_spearman'])} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

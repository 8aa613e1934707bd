"""Validate whatif and design against real training on the sample runs (issue 7, item 4).

    .venv/bin/python bench/bench_counterfactual.py [--samples sample_runs] [--work DIR]
        [--l2 auto] [--design-iters 200] [--n-random-train 5] [--json OUT.json]

1. Fit Simfluence-Linear on ``sample_runs/fit`` and build the TracIn additive simulator
   (B = -scale * score, scale fitted by least squares on the fitting runs' step changes).
2. For every held-out leave-30%-out and class-ordered run, predict its final test losses and
   its change against a base, with each simulator, three ways:
   - ``direct``: simulate the held-out curriculum (base: fit-000, or the mean over all fitting
     runs, for the change);
   - ``edit fit-000``: whatif with base = fitting run fit-000 and the edit that turns it into
     the held-out kind (leave-30: ``--drop REMOVED`` in keep-steps mode; class-ordered:
     ``--order @IDS-BY-CLASS``);
   - ``edit mean``: the same edit applied to every fitting run; prediction = the mean over them,
     change = mean edited - mean base; observed change = held-out final - mean fitting final.
   Metrics: Spearman across test examples (mean over runs) and MSE (over runs and tests) of
   final losses and of changes, plus, across the held-out runs of a family, the per-test
   Spearman of the predicted and observed final loss (mean over tests: counterfactual skill).
3. Design: ``design_curriculum`` (default settings with seeds 0, 1, 2, and seed 0 with
   ``--max-uses 4`` and ``7``) on the fitted model; retrain the sample model
   on each design and on ``--n-random-train`` random curricula from the same pool with
   ``sample_runs/generate.py train-curriculum``; compare real final mean test losses (also with
   the 64 random-curriculum runs already in fit/ + heldout-random/).

Runs are read with a small encoding-A reader (so the bench needs no store).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simfluence_cli.analysis.curriculum_design import (
    curriculum_text,
    design_curriculum,
    random_curricula,
)
from simfluence_cli.analysis.metrics import spearman
from simfluence_cli.analysis.whatif import Edits, apply_edits, final_losses
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.runs import RunSet

FAMILIES = ("fit", "heldout-random", "heldout-leave30", "heldout-classordered")


def read_family(d: Path):
    out = {}
    tests = None
    for f in sorted(glob.glob(str(d / "*.jsonl.gz"))):
        with gzip.open(f, "rt") as fh:
            rows = [json.loads(line) for line in fh]
        tests = tests or sorted(rows[0]["loss"])
        rid = os.path.basename(f).split(".")[0]
        out[rid] = (
            [r["batch"] for r in rows[1:]],
            np.array([[r["loss"][t] for t in tests] for r in rows]),
        )
    return out, tests


def load(samples: Path) -> tuple[RunSet, dict]:
    allruns, tags, tests = {}, {}, None
    for fam in FAMILIES:
        r, tests = read_family(samples / fam)
        allruns.update(r)
        tags.update({k: [fam] for k in r})
    return RunSet.from_batches(allruns, tests, tags=tags), tags


def batches_of(rs: RunSet, rid: str):
    run = rs[rid]
    return [[str(rs.example_ids[i]) for i in run.batch(t)] for t in range(1, run.n_steps + 1)]


def tracin_sim(samples: Path, fit: RunSet):
    try:
        from simfluence_cli.io.score_files import read_scores
        from simfluence_cli.model.external_scores import fit_scale, scores_simulator

        tab = read_scores(samples / "tracin_scores.csv.gz")
        sc = fit_scale(tab.S, tab.example_ids, tab.test_ids, fit)
        return scores_simulator(tab, sc["scale"], runs=fit), sc["scale"]
    except ImportError:  # scores.py not there: build the additive simulator here
        import csv

        with gzip.open(samples / "tracin_scores.csv.gz", "rt") as fh:
            rows = list(csv.DictReader(fh))
        ex = sorted({r["example_id"] for r in rows})
        te = list(fit.test_ids)
        epos, tpos = {e: i for i, e in enumerate(ex)}, {t: j for j, t in enumerate(te)}
        S = np.zeros((len(ex), len(te)))
        for r in rows:
            S[epos[r["example_id"]], tpos[r["test_id"]]] = float(r["score"])
        num = den = 0.0
        for run in fit.runs:
            X = np.stack(
                [
                    S[[epos[fit.example_ids[i]] for i in run.batch(t)]].sum(0)
                    for t in range(1, run.n_steps + 1)
                ]
            )
            y = np.diff(run.losses, axis=0)
            num += float((X * y).sum())
            den += float((X * X).sum())
        scale = -num / den
        allL = np.vstack([r.losses for r in fit.runs])
        return Simulator.from_params(
            None,
            -scale * S,
            ex,
            te,
            method="additive",
            init_loss=fit.runs[0].losses[0],
            loss_range=(allL.min(0), allL.max(0)),
        ), scale


def metrics(pred: np.ndarray, obs: np.ndarray) -> dict:
    """pred, obs: (R, M). Spearman across tests per run (mean) and MSE over all."""
    sp = spearman(pred, obs, axis=1)
    return {"spearman": float(np.nanmean(sp)), "mse": float(np.mean((pred - obs) ** 2))}


def across_runs(pred: np.ndarray, obs: np.ndarray) -> float:
    """Per test, Spearman across runs; mean over tests."""
    return float(np.nanmean(spearman(pred.T, obs.T, axis=1)))


def validate(sims: dict, rs: RunSet, tags: dict, samples: Path) -> dict:
    fit_ids = [r for r in rs.run_ids if tags[r] == ["fit"]]
    fit_cur = {r: batches_of(rs, r) for r in fit_ids}
    obs_fit = np.stack([rs[r].losses[-1] for r in fit_ids])
    L0 = rs[fit_ids[0]].losses[0]
    labels = {}
    import csv

    with open(samples / "examples.csv") as fh:
        for row in csv.DictReader(fh):
            labels[row["example_id"]] = int(row["label"])
    removed = json.loads((samples / "heldout-leave30" / "removed.json").read_text())
    orders = json.loads((samples / "heldout-classordered" / "class_order.json").read_text())
    out = {}
    for fam in ("heldout-leave30", "heldout-classordered"):
        hids = [r for r in rs.run_ids if tags[r] == [fam]]
        obs = np.stack([rs[r].losses[-1] for r in hids])
        edits = []
        for h in hids:
            if fam == "heldout-leave30":
                edits.append(Edits(drop=removed[h], mode="keep-steps"))
            else:
                rank = {c: k for k, c in enumerate(orders[h])}
                ids = sorted(labels, key=lambda e: (rank[labels[e]], e))
                edits.append(Edits(order=ids))
        res = {"runs": len(hids)}
        base_obs0 = rs[fit_ids[0]].losses[-1]
        base_obs_mean = obs_fit.mean(0)
        res["no_change_baseline"] = {
            "change_mse_vs_fit-000": float(np.mean((obs - base_obs0) ** 2)),
            "change_mse_vs_mean": float(np.mean((obs - base_obs_mean) ** 2)),
            "final_mse_mean_fit_final": float(np.mean((obs - base_obs_mean) ** 2)),
        }
        for name, sim in sims.items():
            t0 = time.perf_counter()
            direct = final_losses(sim, [batches_of(rs, h) for h in hids], L0)
            base_fit = final_losses(sim, [fit_cur[r] for r in fit_ids], L0)
            ed0 = final_losses(sim, [apply_edits(fit_cur[fit_ids[0]], e) for e in edits], L0)
            edm = np.stack(
                [
                    final_losses(sim, [apply_edits(fit_cur[r], e) for r in fit_ids], L0).mean(0)
                    for e in edits
                ]
            )
            secs = time.perf_counter() - t0
            r = {}
            r["direct"] = {
                "final": metrics(direct, obs),
                "final_across_runs": across_runs(direct, obs),
                "change_vs_fit-000": metrics(direct - base_fit[0], obs - base_obs0),
                "change_vs_mean": metrics(direct - base_fit.mean(0), obs - base_obs_mean),
            }
            r["edit fit-000"] = {
                "final": metrics(ed0, obs),
                "final_across_runs": across_runs(ed0, obs),
                "change": metrics(ed0 - base_fit[0], obs - base_obs0),
            }
            r["edit mean"] = {
                "final": metrics(edm, obs),
                "final_across_runs": across_runs(edm, obs),
                "change": metrics(edm - base_fit.mean(0), obs - base_obs_mean),
            }
            r["seconds"] = round(secs, 2)
            res[name] = r
        out[fam] = res
    return out


def train(curriculum: Path, out: Path) -> float:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "sample_runs" / "generate.py"),
            "train-curriculum",
            str(curriculum),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    with gzip.open(out, "rt") as fh:
        last = fh.readlines()[-1]
    return float(np.mean(list(json.loads(last)["loss"].values())))


def design_check(
    sim, rs: RunSet, tags: dict, work: Path, iters: int, n_train: int, tracin=None
) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    steps, b = 250, 4
    L0 = rs.runs[0].losses[0]
    res = {"designs": {}, "random": []}
    existing = [
        float(rs[r].losses[-1].mean())
        for r in rs.run_ids
        if tags[r][0] in ("fit", "heldout-random")
    ]
    plan = [(f"design --seed {s}", None, s, sim) for s in (0, 1, 2)]
    plan += [
        ("design --seed 0 --max-uses 4", 4, 0, sim),
        ("design --seed 0 --max-uses 7", 7, 0, sim),
    ]
    if tracin is not None:
        plan.append(("design --model tracin --seed 0", None, 0, tracin))
    for label, mu, seed, model in plan:
        t0 = time.perf_counter()
        d = design_curriculum(
            model,
            steps,
            init_loss=L0,
            seed=seed,
            iters=iters,
            candidates=64,
            max_uses=mu,
            n_random=100,
        )
        secs = time.perf_counter() - t0
        tag = "tracin-" if model is tracin else ""
        path = work / f"design-{tag}mu{mu or 'auto'}-s{seed}.txt"
        path.write_text(curriculum_text(d.batches, {"objective": "mean-final-loss", "seed": seed}))
        real = train(path, work / f"design-{tag}mu{mu or 'auto'}-s{seed}.jsonl.gz")
        rep = d.report()
        res["designs"][label] = {
            "simulated": d.objective,
            "start (greedy)": d.start_objective,
            "beats_existing_random_runs": int(np.sum(real < np.asarray(existing))),
            "random_sim_mean": rep["random_mean"],
            "random_sim_best": rep["random_best"],
            "max_uses": rep["max_uses"],
            "distinct_examples": rep["distinct_examples"],
            "seconds": round(secs, 2),
            "real_final_mean_loss": real,
            "curriculum": str(path),
        }
    pool = np.flatnonzero(np.asarray(sim.example_counts_) > 0)
    R = random_curricula(pool, steps, b, n_train, np.random.default_rng(2024))
    for k in range(n_train):
        batches = [[str(sim.example_ids_[i]) for i in row] for row in R[k]]
        path = work / f"random-{k}.txt"
        path.write_text(curriculum_text(batches, {"random": k}))
        simv = float(sim.simulate([batches], L0)[0, -1].mean())
        real = train(path, work / f"random-{k}.jsonl.gz")
        res["random"].append({"simulated": simv, "real_final_mean_loss": real})
    res["existing_random_runs"] = {
        "n": len(existing),
        "mean": float(np.mean(existing)),
        "min": float(np.min(existing)),
        "max": float(np.max(existing)),
    }
    return res


def exact_edits(sims: dict, rs: RunSet, tags: dict, samples: Path, work: Path) -> dict:
    """Edits of fit-000 (drop a class, drop a leave-30 set, class order per epoch, reverse),
    each retrained for real from the same checkpoint: the observed change is an exact
    counterfactual (no curriculum noise), compared with whatif's predicted change."""
    import csv

    work.mkdir(parents=True, exist_ok=True)
    base_id = [r for r in rs.run_ids if tags[r] == ["fit"]][0]
    base = batches_of(rs, base_id)
    L0 = rs[base_id].losses[0]
    obs_base = rs[base_id].losses[-1]
    with open(samples / "examples.csv") as fh:
        labels = {row["example_id"]: int(row["label"]) for row in csv.DictReader(fh)}
    removed = json.loads((samples / "heldout-leave30" / "removed.json").read_text())
    orders = json.loads((samples / "heldout-classordered" / "class_order.json").read_text())
    edits = {}
    for c in range(10):
        edits[f"drop class {c}"] = Edits(drop=[e for e, v in labels.items() if v == c])
    for k, (_h, ids) in enumerate(sorted(removed.items())[:8]):
        edits[f"drop leave30 set {k}"] = Edits(drop=ids)
    for k, (_h, order) in enumerate(sorted(orders.items())[:4]):
        rank = {c: i for i, c in enumerate(order)}
        edits[f"class order {k} per epoch"] = Edits(
            order=sorted(labels, key=lambda e: (rank[labels[e]], e))
        )
    edits["reverse"] = Edits(order="reverse")
    real = {}
    t0 = time.perf_counter()
    for name, e in edits.items():
        path = work / (name.replace(" ", "_") + ".txt")
        path.write_text(curriculum_text(apply_edits(base, e), {"edit": name}))
        out = work / (name.replace(" ", "_") + ".jsonl.gz")
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "sample_runs" / "generate.py"),
                "train-curriculum",
                str(path),
                "-o",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        with gzip.open(out, "rt") as fh:
            loss = json.loads(fh.readlines()[-1])["loss"]
        real[name] = np.asarray([loss[t] for t in rs.test_ids]) - obs_base
    res = {
        "base": base_id,
        "n_edits": len(edits),
        "retrain_seconds": round(time.perf_counter() - t0, 1),
        "edits": {},
    }
    obs = np.stack([real[n] for n in edits])
    for mname, sim in sims.items():
        fin = final_losses(sim, [base] + [apply_edits(base, e) for e in edits.values()], L0)
        pred = fin[1:] - fin[0]
        per = spearman(pred, obs, axis=1)
        kinds = {"drop class": [], "drop leave30": [], "class order": [], "reverse": []}
        for i, n in enumerate(edits):
            for k in kinds:
                if n.startswith(k):
                    kinds[k].append(i)
        res[mname] = {
            k: {
                "n": len(ix),
                "change_spearman_across_tests": float(np.nanmean(per[ix])),
                "change_mse": float(np.mean((pred[ix] - obs[ix]) ** 2)),
                "no_change_mse": float(np.mean(obs[ix] ** 2)),
                "mean_change_pred": float(pred[ix].mean()),
                "mean_change_real": float(obs[ix].mean()),
            }
            for k, ix in kinds.items()
        }
        res[mname]["mean_change_spearman_across_edits"] = float(spearman(pred.mean(1), obs.mean(1)))
        for i, n in enumerate(edits):
            res["edits"].setdefault(n, {"real_mean_change": float(obs[i].mean())})
            res["edits"][n][f"{mname}_mean_change"] = float(pred[i].mean())
    return res


def group_check(sims: dict, rs: RunSet, tags: dict, samples: Path, work: Path, label: int) -> dict:
    """Group effect vs sum of single removals for one class, simulated (``group_effects``) and
    real (1 + members retrains of fit-000 with keep-steps drops)."""
    import csv

    from simfluence_cli.analysis.groups import group_effects

    work.mkdir(parents=True, exist_ok=True)
    base_id = [r for r in rs.run_ids if tags[r] == ["fit"]][0]
    base = batches_of(rs, base_id)
    L0, obs_base = rs[base_id].losses[0], rs[base_id].losses[-1]
    with open(samples / "examples.csv") as fh:
        members = [row["example_id"] for row in csv.DictReader(fh) if int(row["label"]) == label]

    def real(ids, name):
        path = work / f"{name}.txt"
        path.write_text(curriculum_text(apply_edits(base, Edits(drop=ids)), {"drop": name}))
        out = work / f"{name}.jsonl.gz"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "sample_runs" / "generate.py"),
                "train-curriculum",
                str(path),
                "-o",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        with gzip.open(out, "rt") as fh:
            loss = json.loads(fh.readlines()[-1])["loss"]
        return np.asarray([loss[t] for t in rs.test_ids]) - obs_base

    t0 = time.perf_counter()
    g_real = real(members, f"class{label}")
    singles = np.stack([real([e], e) for e in members])
    res = {
        "class": label,
        "members": len(members),
        "retrain_seconds": round(time.perf_counter() - t0, 1),
        "real": {
            "group_effect": float(g_real.mean()),
            "sum_individual": float(singles.sum(0).mean()),
            "interaction": float((g_real - singles.sum(0)).mean()),
        },
    }
    for name, sim in sims.items():
        t1 = time.perf_counter()
        ge = group_effects(sim, base, {"g": members}, L0)
        res[name] = {
            "group_effect": float(ge.group_effect.mean()),
            "sum_individual": float(ge.sum_individual.mean()),
            "interaction": float(ge.interaction.mean()),
            "group_effect_spearman_across_tests": spearman(ge.group_effect[0], g_real),
            "seconds": round(time.perf_counter() - t1, 2),
        }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default=str(ROOT / "sample_runs"))
    ap.add_argument("--work", default="/tmp/simfluence-bench-counterfactual")
    ap.add_argument("--l2", default="auto")
    ap.add_argument("--design-iters", type=int, default=200)
    ap.add_argument("--n-random-train", type=int, default=5)
    ap.add_argument("--skip-design", action="store_true")
    ap.add_argument("--skip-exact", action="store_true")
    ap.add_argument("--skip-validation", action="store_true")
    ap.add_argument(
        "--group-class",
        type=int,
        default=5,
        help="class whose group effect is checked by real retraining (-1: skip)",
    )
    ap.add_argument("--json", default=None, help="also write the figures here")
    ns = ap.parse_args()
    samples = Path(ns.samples)
    t0 = time.perf_counter()
    rs, tags = load(samples)
    fit = rs.subset([r for r in rs.run_ids if tags[r] == ["fit"]])
    l2 = ns.l2 if ns.l2 == "auto" else float(ns.l2)
    lin = Simulator("linear", l2=l2).fit(fit)
    tr, scale = tracin_sim(samples, fit)
    info = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, numpy {np.__version__}",
        "linear_l2": lin.l2_,
        "tracin_scale": scale,
        "load_fit_seconds": round(time.perf_counter() - t0, 2),
    }
    print(json.dumps(info), file=sys.stderr)
    out = {"info": info}
    if not ns.skip_validation:
        out["validation"] = validate({"linear": lin, "tracin": tr}, rs, tags, samples)
        print(json.dumps(out["validation"], indent=1), file=sys.stderr)
    if not ns.skip_exact:
        out["exact_edits"] = exact_edits(
            {"linear": lin, "tracin": tr}, rs, tags, samples, Path(ns.work) / "exact"
        )
        print(json.dumps(out["exact_edits"], indent=1), file=sys.stderr)
    if ns.group_class >= 0:
        out["group_check"] = group_check(
            {"linear": lin, "tracin": tr},
            rs,
            tags,
            samples,
            Path(ns.work) / "group",
            ns.group_class,
        )
        print(json.dumps(out["group_check"], indent=1), file=sys.stderr)
    if not ns.skip_design:
        out["design"] = design_check(
            lin, rs, tags, Path(ns.work), ns.design_iters, ns.n_random_train, tracin=tr
        )
    print(json.dumps(out, indent=1))
    if ns.json:
        Path(ns.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

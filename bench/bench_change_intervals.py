"""Change intervals (``whatif --interval``) against real edits retrained on the sample model.

    .venv/bin/python bench/bench_change_intervals.py --work DIR [--families sgd,adamw]
        [--bases 8] [--methods auto,linear] [--level 0.9]

For each family (``sgd``: the bundled ``sample_runs/fit`` runs, plain SGD, 250 steps x 4;
``adamw``: ``sample_runs/generate.py --family adamw`` written under DIR/adamw if missing,
250 steps x 8) and simulator (``auto`` = what ``simfluence fit`` resolves it to, optimizer-aware
on these runs; ``linear``), fitted with ``l2="auto"`` on the 48 fitting runs and calibrated
(8 folds):

* bases: the first ``--bases`` fitting runs' curricula, retrained for real (same checkpoint,
  deterministic training: the only difference between two runs is the curriculum);
* edits of each base, each retrained for real: ``drop-k`` (whatif ``--drop`` of k random
  examples, keep-steps: the stream is re-cut and cycled, so others take their places; k in 5,
  20, 60), ``replace-20`` (every occurrence of 20 examples replaced in place by other
  examples), ``drop-class`` (every example of one label), ``move-block`` (25 consecutive steps
  moved elsewhere), ``dup-20`` (whatif ``--repeat`` of 20 examples), and the noise floor
  ``swap-2`` (two steps' batches swapped);
* for each edit: the real change of every test's final loss and of the mean final loss, the
  predicted change and its interval two ways: ``pairs``, the unscaled construction
  ``[min_k delta_k - q, max_k delta_k + q]`` (q: quantile of fitting-run pair differences,
  computed here as the baseline), and ``scaled``, the library's ``Calibration.change``
  (q times the edit's scale, analysis/curriculum_distance.py).

``top --interval`` (SGD): the removal effects of ``--top-examples`` random examples
(``Calibration.removal``: the example's slots made inert, mean over the bases' curricula),
against real retraining with those slots contributing a zero gradient to the batch mean.

Reports per family x simulator x edit kind (and all edits, split by scale <= 1 / > 1):
coverage of the real changes (per test and of the mean over tests), mean interval width,
share of intervals excluding 0, sign accuracy of the point prediction where the interval
excludes 0, the size of the real changes and of the point prediction's error. Retrained
losses are cached under ``DIR/retrain-<family>/`` (one ``.npy`` per curriculum hash).
Prints markdown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import run_facts
from bench_plan import _generate_module

from simfluence_cli.analysis.curriculum_distance import edit_scale, replacement_scale
from simfluence_cli.analysis.intervals import _quantile_abs, calibrate
from simfluence_cli.analysis.whatif import NEUTRAL, Edits, apply_edits, final_losses
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore

KINDS = (
    "swap-2",
    "move-block",
    "drop-5",
    "replace-20",
    "dup-20",
    "drop-20",
    "drop-60",
    "drop-class",
)


def _family(gen, name: str, work: Path):
    """(fit-run directory, example labels, trainer(batches of IDs) -> (steps+1, tests))."""
    if name == "sgd":
        ex = gen.Experiment(gen.Config())
        fit = ROOT / "sample_runs" / "fit"

        def train(b):
            return ex.train([[ex.index[e] for e in x] for x in b], os.devnull)

    else:
        cfg = gen.loop_config(name)
        out = work / name
        if not (out / "config.json").exists():
            gen.generate_family(name, out, cfg)
        ex = gen.Experiment(cfg.base())
        fit = out / "fit"

        def train(b):
            return gen.loop_train(ex, cfg, [[ex.index[e] for e in x] for x in b], os.devnull)[0]

    labels = dict(zip(ex.example_ids, (str(int(c)) for c in ex.yp)))
    return fit, labels, train


def _cached(train, cache: Path):
    """``train`` with its final losses cached on disk by curriculum content."""
    cache.mkdir(parents=True, exist_ok=True)

    def final(batches) -> np.ndarray:
        h = hashlib.sha256("\n".join(" ".join(b) for b in batches).encode()).hexdigest()[:24]
        f = cache / f"{h}.npy"
        if f.exists():
            return np.load(f)
        out = np.asarray(train(batches))[-1]
        np.save(f, out)
        return out

    return final


def edits_of(base, labels: dict, rng) -> dict:
    """{kind: edited curriculum} for one base curriculum (see the module docstring)."""
    present = sorted({e for b in base for e in b})
    T = len(base)
    out = {}
    t1, t2 = rng.choice(T, 2, replace=False)
    sw = [list(b) for b in base]
    sw[t1], sw[t2] = sw[t2], sw[t1]
    out["swap-2"] = sw
    a = int(rng.integers(0, T - 25))
    block, rest = base[a : a + 25], base[:a] + base[a + 25 :]
    at = int(rng.integers(0, len(rest) + 1))
    while abs(at - a) < 25:
        at = int(rng.integers(0, len(rest) + 1))
    out["move-block"] = [list(b) for b in rest[:at] + block + rest[at:]]
    for k in (5, 20, 60):
        drop = list(rng.choice(present, k, replace=False))
        out[f"drop-{k}"] = apply_edits(base, Edits(drop=drop))
    gone = set(rng.choice(present, 20, replace=False))
    others = [e for e in present if e not in gone]
    out["replace-20"] = [
        [str(rng.choice([o for o in others if o not in b])) if e in gone else e for e in b]
        for b in base
    ]
    out["dup-20"] = apply_edits(base, Edits(repeat=list(rng.choice(present, 20, replace=False))))
    cls = str(rng.choice(sorted({labels[e] for e in present})))
    out["drop-class"] = apply_edits(base, Edits(drop=[e for e in present if labels[e] == cls]))
    return out


def _pairs_interval(cal, delta: np.ndarray, level: float, reduce: bool):
    """The unscaled construction: [min_k delta_k - q, max_k delta_k + q], q the level-quantile
    of |R_i - R_j| over fitting-run pairs (the library before curriculum distances)."""
    res = cal.obs_final - cal.pred_final
    if reduce:
        res = np.nanmean(res, axis=-1)
    i, j = np.triu_indices(res.shape[0], 1)
    q = _quantile_abs(res[i] - res[j], level)
    return delta.min(axis=0) - q, delta.max(axis=0) + q


def _stats(real, pred, lo, hi) -> dict:
    inside = (real >= lo) & (real <= hi)
    sure = (lo > 0) | (hi < 0)
    right = np.sign(pred) == np.sign(real)
    return {
        "n": int(real.size),
        "coverage": float(inside.mean()),
        "width": float(np.mean(hi - lo)),
        "excl0": float(sure.mean()),
        "sign_ok": float(right[sure].mean()) if sure.any() else float("nan"),
        "n_sure": int(sure.sum()),
    }


def _md(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def run_family(fam: str, ns, gen) -> list[dict]:
    fit_dir, labels, train = _family(gen, fam, ns.work)
    final = _cached(train, ns.work / f"retrain-{fam}")
    store = ns.work / f"store-{fam}"
    if not store.exists():
        exe = Path(sys.executable).with_name("simfluence")
        subprocess.run(
            [str(exe), "ingest", str(fit_dir), "--tag", "fit", "--store", str(store), "-q"],
            check=True,
        )
    runs = RunStore(store).load("fit")
    ex = runs.example_ids
    curricula = [
        [[str(ex[q]) for q in r.batch(t)] for t in range(1, r.n_steps + 1)] for r in runs.runs
    ]
    rng = np.random.default_rng(0)
    cases = []  # (base index, kind, edited)
    t0 = time.process_time()
    base_final = {}
    for b in range(ns.bases):
        base_final[b] = final(curricula[b])
        for kind, cur in edits_of(curricula[b], labels, rng).items():
            cases.append((b, kind, cur, final(cur) - base_final[b]))
    retrain_s = time.process_time() - t0
    print(
        f"{fam}: {len(cases)} edits of {ns.bases} bases retrained or read from the cache "
        f"({retrain_s:.1f} s CPU)",
        file=sys.stderr,
        flush=True,
    )
    rows = []
    for method in ns.methods.split(","):
        t0 = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sim = Simulator(method, l2="auto").fit(runs)
            cal = calibrate(sim, runs)
        fit_s = time.process_time() - t0
        per = {k: {"test": [], "mean": []} for k in KINDS}
        raw = {"real": [], "pred": [], "delta": []}
        for b, kind, cur, real in cases:
            L0 = runs.runs[b].losses[0]
            base = curricula[b]
            pred = final_losses(sim, [base, cur], L0)
            pred = pred[1] - pred[0]
            fold = cal._fold_sim([base, cur], L0, None, "error", final=True)
            delta = fold[:, 1] - fold[:, 0]  # (K, M)
            raw["real"].append(real)
            raw["pred"].append(pred)
            raw["delta"].append(delta)
            sc = float(edit_scale(base, [cur], cal.change_reference)[0])
            for red, key in ((False, "test"), (True, "mean")):
                lo, hi = cal.change(base, [cur], L0, ns.level, reduce="mean" if red else None)
                d = delta.mean(axis=-1) if red else delta
                plo, phi = _pairs_interval(cal, d, ns.level, red)
                r = real.mean() if red else real
                p = pred.mean() if red else pred
                per[kind][key].append(
                    (np.atleast_1d(r), np.atleast_1d(p), lo[0], hi[0], plo, phi, sc)
                )
        groups = [(k, lambda kind, sc, k=k: kind == k) for k in KINDS] + [
            ("all edits", lambda kind, sc: True),
            ("all, scale <= 1", lambda kind, sc: sc <= 1),
            ("all, scale > 1", lambda kind, sc: sc > 1),
        ]
        for key in ("test", "mean"):
            for name, keep in groups:
                parts = [x for k in KINDS for x in per[k][key] if keep(k, x[6])]
                if not parts:
                    continue
                real, pred, lo, hi, plo, phi = (
                    np.concatenate([np.ravel(x[i]) for x in parts]) for i in range(6)
                )
                new, old = _stats(real, pred, lo, hi), _stats(real, pred, plo, phi)
                rows.append(
                    {
                        "family": fam,
                        "simulator": f"{method} ({sim.method})",
                        "change of": "each test" if key == "test" else "mean over tests",
                        "edit": name,
                        "n": new["n"],
                        "mean scale": float(np.mean([x[6] for x in parts])),
                        "mean abs real": float(np.mean(np.abs(real))),
                        "mean abs error": float(np.mean(np.abs(pred - real))),
                        "pairs: cover": old["coverage"],
                        "width": old["width"],
                        "excl. 0": old["excl0"],
                        "sign ok": old["sign_ok"],
                        "scaled: cover": new["coverage"],
                        "width ": new["width"],
                        "excl. 0 ": new["excl0"],
                        "sign ok ": new["sign_ok"],
                    }
                )
        print(f"{fam} {method}: fit + calibrate {fit_s:.1f} s CPU", file=sys.stderr, flush=True)
        if ns.dump:
            np.savez_compressed(
                ns.work / f"dump-{fam}-{method}.npz",
                res=cal.obs_final - cal.pred_final,
                run_ids=np.asarray(cal.run_ids),
                **{k: np.stack(v) for k, v in raw.items()},
            )
            (ns.work / f"cases-{fam}.json").write_text(
                json.dumps([[b, kind, cur] for b, kind, cur, _ in cases])
            )
    return rows


def _neutral_trainer(gen):
    """Plain-SGD retraining where the placeholder NEUTRAL contributes a zero gradient to the
    batch mean (the real counterpart of top's removal: the example's slot does nothing)."""
    ex = gen.Experiment(gen.Config())

    def final(batches) -> np.ndarray:
        p = {k: v.copy() for k, v in ex.checkpoint.items()}
        for b in batches:
            idx = [ex.index[e] for e in b if e != NEUTRAL]
            if idx:  # sgd_step divides by its batch: scale lr to keep the base's divisor
                gen.sgd_step(p, ex.Xp[idx], ex.yp[idx], ex.cfg.lr * len(idx) / len(b))
        return gen.per_example_loss(p, ex.Xt, ex.yt)

    return final


def run_top(ns, gen) -> list[dict]:
    """``top --interval``'s removal effects (Calibration.removal) against real retraining of
    the first ``--bases`` fitting runs with each of ``--top-examples`` random examples' slots
    made inert (plain SGD): coverage of the real effect averaged over the runs (what top
    reports) and of each run's own effect."""
    store = ns.work / "store-sgd"
    runs = RunStore(store).load("fit")
    runs = runs.subset(list(runs.run_ids)[: ns.bases])
    ex = runs.example_ids
    curricula = [
        [[str(ex[q]) for q in r.batch(t)] for t in range(1, r.n_steps + 1)] for r in runs.runs
    ]
    final = _cached(_neutral_trainer(gen), ns.work / "retrain-sgd-neutral")
    rng = np.random.default_rng(1)
    examples = [str(e) for e in rng.choice(np.asarray(ex, dtype=object), ns.top_examples, False)]
    real = np.empty((len(examples), len(curricula)))  # mean-over-tests effect per run
    for j, cur in enumerate(curricula):
        base = final(cur).mean()
        for i, e in enumerate(examples):
            real[i, j] = final([[NEUTRAL if x == e else x for x in b] for b in cur]).mean() - base
    rows = []
    full = RunStore(store).load("fit")
    for method in ns.methods.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sim = Simulator(method, l2="auto").fit(full)
            cal = calibrate(sim, full)
        lo, hi = cal.removal(runs, examples, ns.level)
        share = np.array([[sum(x == e for b in c for x in b) for e in examples] for c in curricula])
        share = share / np.array([sum(map(len, c)) for c in curricula])[:, None]
        sc = replacement_scale(share, cal.change_reference).max(axis=0)  # as removal() does
        res = np.nanmean(cal.obs_final, axis=1) - np.nanmean(cal.pred_final, axis=1)
        i, j = np.triu_indices(len(res), 1)
        q = _quantile_abs(res[i] - res[j], ns.level)
        plo, phi = lo - (1 - sc) * q, hi + (1 - sc) * q  # the unscaled construction
        for what, r, rep in (
            ("mean over runs (top)", real.mean(axis=1), 1),
            ("each run", real.ravel(), real.shape[1]),
        ):
            mid = np.repeat((lo + hi) / 2, rep)
            old = _stats(r, mid, np.repeat(plo, rep), np.repeat(phi, rep))
            new = _stats(r, mid, np.repeat(lo, rep), np.repeat(hi, rep))
            rows.append(
                {
                    "simulator": f"{method} ({sim.method})",
                    "real removal effect": what,
                    "n": new["n"],
                    "mean scale": float(sc.mean()),
                    "mean abs real": float(np.mean(np.abs(r))),
                    "pairs: cover": old["coverage"],
                    "width": old["width"],
                    "excl. 0": old["excl0"],
                    "scaled: cover": new["coverage"],
                    "width ": new["width"],
                    "excl. 0 ": new["excl0"],
                }
            )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/simfluence-bench-change"))
    ap.add_argument("--families", default="sgd,adamw")
    ap.add_argument("--methods", default="auto,linear")
    ap.add_argument("--bases", type=int, default=8)
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--dump", action="store_true", help="save the raw arrays under --work")
    ap.add_argument(
        "--top-examples",
        type=int,
        default=30,
        help="examples whose removal effect (top --interval) is retrained, SGD only; 0 = skip",
    )
    ap.add_argument("--skip-whatif", action="store_true", help="only the top section")
    ns = ap.parse_args(argv)
    ns.work.mkdir(parents=True, exist_ok=True)
    t0 = time.process_time()
    print(json.dumps(run_facts()))
    gen = _generate_module()
    rows = []
    for fam in [] if ns.skip_whatif else ns.families.split(","):
        rows += run_family(fam, ns, gen)
    if rows:
        print(_md(rows, list(rows[0])))
    if ns.top_examples and "sgd" in ns.families.split(","):
        top = run_top(ns, gen)
        print(f"\n`top --interval {ns.level:g}` removal effects, plain SGD, real retraining:\n")
        print(_md(top, list(top[0])))
    print(
        f"\nCPU {time.process_time() - t0:.1f} s; load average at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

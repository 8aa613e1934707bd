"""Reproducibility: the demo sequence under varied execution settings, compared file by file.

    .venv/bin/python bench/bench_repro.py                       # all variants (~6 min on 2 cores)
    .venv/bin/python bench/bench_repro.py --variants again,blas2

Builds a store from sample_runs/ and runs every command with a data output (ingest, info,
fit linear / default, import-scores, curriculum, simulate, eval, top, whatif, groups, design,
plan, calibrate, simulate --interval, plot) once as the reference and once per variant, then
compares every written file and stdout capture with the reference: byte-identical, or
identical once the fields docs/numerics.md ("Reproducibility") names as varying are dropped
(times, generations, execution record, versions, paths), or different. A variant passes
when nothing is different. Variants:

* ``again``: the same commands again;
* ``blas2``: ``OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=2`` (the command's default is 1);
* ``1cpu``: ``taskset -c 0`` (the fit solves on one thread instead of one per CPU);
* ``numba`` / ``numpy``: ``SIMFLUENCE_KERNELS`` forced either way;
* ``chunk7``: ``SIMFLUENCE_TEST_CHUNK=7`` (eval, top, simulate use 7 tests at a time);
* ``workers``: ``fit --workers 2``;
* ``relative``: the store given as a relative path from another working directory;
* ``moved``: the reference store copied elsewhere; the commands after the fits run on the copy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _machine import run_facts

VARIANTS = ("again", "blas2", "1cpu", "numba", "numpy", "chunk7", "workers", "relative", "moved")
#: JSON keys docs/numerics.md lists as varying between equal computations
VOLATILE = {
    "fitted_at",
    "fit_seconds",
    "files",
    "seconds",
    "created_at",
    "generation",
    "model_generation",
    "environment",
    "solver_stats",
    "store",
    "ingested_at",
    "updated_at",
    "loss_rows_per_second",
    "versions",
}
#: options a Parquet output's provenance records as typed: paths of this variant's directory
PATH_OPTIONS = {"store", "output", "curriculum", "report"}
#: header lines of a designed curriculum that name the fit it came from
HEADER_VOLATILE = ("# model_fitted_at:",)
GEN = re.compile(r"-\d{9,11}-[0-9a-f]{6}|\.g\d+\.parquet$")


def commands(store: str, out: Path, fit_extra: list[str]) -> tuple[list, list]:
    """(build, use): argument lists of the simfluence commands; a trailing '>NAME' = capture
    stdout into out/NAME."""
    s = ["--store", store]
    src = ROOT / "sample_runs"
    build = [
        ["ingest", str(src / "fit"), "--tag", "fit", *s, "--json", ">ingest-fit.json"],
        ["ingest", str(src / "heldout-random"), "--tag", "heldout-random", *s],
        ["ingest", str(src / "heldout-classordered"), "--tag", "heldout-classordered", *s],
        ["info", *s, "--json", ">info.json"],
        ["fit", *s, "--runs", "fit", "--method", "linear", "--name", "linear", "--json",
         *fit_extra, ">fit-linear.json"],
        ["fit", *s, "--runs", "fit", "--name", "default", "--json", *fit_extra,
         ">fit-default.json"],
        ["import-scores", str(src / "tracin_scores.csv.gz"), *s, "--name", "tracin",
         "--runs", "fit", "-f", "csv", ">import.csv"],
    ]  # fmt: skip
    cur = str(out / "cur.txt")
    use = [
        ["curriculum", "heldout-classordered-000", *s, ">cur.txt"],
        ["simulate", cur, *s, "-m", "linear", "--init-loss", "run:heldout-classordered-000",
         "-o", str(out / "sim-linear.csv")],
        ["simulate", cur, *s, "-m", "default", "--init-loss", "run:heldout-classordered-000",
         "-f", "parquet", "-o", str(out / "sim-default.parquet")],
        ["eval", *s, "-m", "default", "-m", "linear", "-m", "tracin", "--runs",
         "heldout-random", "-f", "json", ">eval.json"],
        ["top", *s, "-m", "linear", "--k", "300", "-f", "csv", ">top-linear.csv"],
        ["top", *s, "-m", "default", "--k", "300", "-f", "csv", ">top-default.csv"],
        ["top", *s, "-m", "default", "--measure", "coefficient", "--k", "300", "-f", "csv",
         ">top-coef.csv"],
        ["whatif", *s, "-m", "default", "--base", "fit-000", "--drop", "e001,e007", "-f", "csv",
         ">whatif.csv"],
        ["groups", *s, "-m", "default", "--base", "fit-000", "-g", "a=e001,e002", "-g",
         "b=e010,e011,e012", "-f", "csv", ">groups.csv"],
        ["design", *s, "-m", "default", "-o", str(out / "designed.txt"), "--iters", "5",
         "--random", "20", "--report", str(out / "design-report.json")],
        ["plan", *s, "-n", "4", "-o", str(out / "planned")],
        ["calibrate", *s, "--model", "linear", "--force"],
        ["simulate", cur, *s, "-m", "linear", "--init-loss", "run:heldout-classordered-000",
         "--interval", "0.9", "-o", str(out / "sim-linear-interval.csv")],
        ["plot", *s, "-m", "linear", "--run", "heldout-random-000", "-o", str(out / "plot.svg")],
    ]  # fmt: skip
    return build, use


def run(cmds: list, out: Path, env: dict, cwd: Path, prefix: list[str]) -> None:
    for args in cmds:
        capture = args[-1][1:] if args[-1].startswith(">") else None
        argv = [*prefix, sys.executable, "-m", "simfluence_cli", *(args[:-1] if capture else args)]
        res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"failed ({res.returncode}): {' '.join(args)}\n{res.stderr}")
        if capture:
            (out / capture).write_text(res.stdout)


def files(d: Path) -> dict[str, Path]:
    """Relative path (generation tokens replaced by -GEN) -> file, lock files left out."""
    return {
        GEN.sub("-GEN", str(p.relative_to(d))): p
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _strip(x):
    if isinstance(x, dict):
        drop = VOLATILE | PATH_OPTIONS | {"name"}
        return {k: _strip(v) for k, v in x.items() if k not in drop}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return GEN.sub("-GEN", x) if isinstance(x, str) else x


def same_after_strip(a: Path, b: Path) -> bool:
    """Equal once the documented varying fields are dropped (JSON keys; runs.parquet columns)."""
    if a.suffix == ".json":
        try:
            return _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
        except ValueError:
            return False
    if a.suffix == ".parquet":
        import pyarrow.parquet as pq

        drop = {"ingested_at", "curriculum_file", "losses_file"}
        ta, tb = pq.read_table(a), pq.read_table(b)
        keep = [c for c in ta.column_names if c not in drop]
        if not ta.select(keep).equals(tb.select(keep)):
            return False
        ma, mb = ta.schema.metadata or {}, tb.schema.metadata or {}
        key = b"simfluence.provenance"  # the output's provenance: created_at, paths as typed
        pa_, pb_ = ma.pop(key, None), mb.pop(key, None)
        same_prov = (pa_ is None) == (pb_ is None) and (
            pa_ is None or _strip(json.loads(pa_)) == _strip(json.loads(pb_))
        )
        return same_prov and ma == mb
    if a.suffix == ".txt":

        def keep(p):
            return [x for x in p.read_text().splitlines() if not x.startswith(HEADER_VOLATILE)]

        return keep(a) == keep(b)
    return False


def compare(ref: Path, other: Path) -> dict:
    fa, fb = files(ref), files(other)
    res = {"files": 0, "bytes": 0, "stripped": 0, "different": [], "missing": []}
    for k in sorted(set(fa) | set(fb)):
        if k not in fa or k not in fb:
            res["missing"].append(k)
            continue
        res["files"] += 1
        if fa[k].read_bytes() == fb[k].read_bytes():
            res["bytes"] += 1
        elif same_after_strip(fa[k], fb[k]):
            res["stripped"] += 1
        else:
            res["different"].append(k)
    return res


def variant_setup(name: str, work: Path) -> tuple[dict, Path, list[str], list[str]]:
    """(extra environment, working directory, command prefix, extra fit options)."""
    env, cwd, prefix, fit_extra = {}, work, [], []
    if name == "blas2":
        env = {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    elif name == "1cpu":
        prefix = ["taskset", "-c", "0"]
    elif name in ("numba", "numpy"):
        env = {"SIMFLUENCE_KERNELS": name}
    elif name == "chunk7":
        env = {"SIMFLUENCE_TEST_CHUNK": "7"}
    elif name == "workers":
        fit_extra = ["--workers", "2"]
    return env, cwd, prefix, fit_extra


def one(name: str, work: Path, ref: Path | None) -> tuple[Path, float]:
    """Run the sequence for ``name`` into work/name (store in work/name/store, outputs in
    work/name/out); returns the variant directory and its wall seconds."""
    d = work / name
    shutil.rmtree(d, ignore_errors=True)
    out = d / "out"
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    env.pop("SIMFLUENCE_STORE", None)
    extra, cwd, prefix, fit_extra = variant_setup(name, work)
    env.update(extra)
    t0 = time.perf_counter()
    if name == "moved":  # the reference's store, copied; only the commands after the fits
        shutil.copytree(ref / "store", d / "store")
        (d / "elsewhere").mkdir()
        _, use = commands("../store", out, fit_extra)
        run(use, out, env, d / "elsewhere", prefix)
        for f in (ref / "out").iterdir():  # the build step's captures are the reference's
            if f.is_file() and not (out / f.name).exists():
                shutil.copy(f, out / f.name)
    else:
        store = "store" if name == "relative" else str(d / "store")
        build, use = commands(store, out, fit_extra)
        run(build + use, out, env, d if name == "relative" else cwd, prefix)
    return d, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--work", default="/tmp/simfluence-bench-repro")
    args = ap.parse_args(argv)
    print(json.dumps(run_facts()))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ref, sec = one("reference", work, None)
    print(f"reference: {sec:.0f} s wall", flush=True)
    print("\n| variant | files | byte-identical | identical but documented varying fields | "
          "different |\n|---|---|---|---|---|")  # fmt: skip
    bad = 0
    for name in args.variants.split(","):
        d, sec = one(name, work, ref)
        r = compare(ref, d)
        diff = ", ".join(r["different"] + [f"{m} (missing)" for m in r["missing"]]) or "none"
        bad += bool(r["different"] or r["missing"])
        print(f"| {name} | {r['files']} | {r['bytes']} | {r['stripped']} | {diff} |", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

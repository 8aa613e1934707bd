"""Time every `simfluence` command on the demo store (issue 15, item 1).

    .venv/bin/python bench/bench_commands.py                       # builds /tmp/simfluence-demo
    .venv/bin/python bench/bench_commands.py --store demo-store    # reuse a store made by make demo
    .venv/bin/python bench/bench_commands.py --repeat 3 --out bench/commands.md
    .venv/bin/python bench/bench_commands.py --baseline /tmp/cmd-base   # against another tree

Each command runs as a child process (the console script, as a user runs it). Reported per
command: wall seconds, CPU seconds of the child (user + sys, all threads, from
``resource.getrusage(RUSAGE_CHILDREN)`` deltas), the target in CPU seconds and the 1-minute load
average just before. With ``--repeat K`` the best (lowest CPU) of K runs is kept. The machine is
shared: CPU seconds are the figure to compare with the targets, wall seconds depend on the load.

``--baseline TREE`` times every command also with ``PYTHONPATH=TREE`` (e.g. a ``git worktree`` of
main), on its own copy of the same store, alternating baseline and this tree run by run, and
reports CPU ratios (this tree / baseline) measured under the same load.

``--pycache DIR`` runs the children with bytecode caches under DIR (``PYTHONPYCACHEPREFIX``,
without ``PYTHONDONTWRITEBYTECODE``), as an installed package runs: with
``PYTHONDONTWRITEBYTECODE=1`` in the environment (the sessions' sandbox sets it) every command
compiles the project's ~40 modules from source, ~0.1 s CPU (take ``--repeat`` >= 2: the first
run of each tree writes its caches).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SF = [str(Path(sys.executable).parent / "simfluence")]
if not Path(SF[0]).exists():  # not installed as a console script: run the package
    SF = [sys.executable, "-m", "simfluence_cli"]


#: environment changes for every child (``--pycache``); None as a value removes the variable
CHILD_ENV: dict[str, str | None] = {}


def run(args: list[str], check: bool = True, tree: str | None = None) -> dict:
    """Run one command as a child; ``tree``: the source tree to import (PYTHONPATH)."""
    env = None
    if tree is not None or CHILD_ENV:
        env = {**os.environ, **({"PYTHONPATH": tree} if tree is not None else {})}
        for k, v in CHILD_ENV.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(SF + args, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if check and r.returncode != 0:
        raise SystemExit(
            f"simfluence {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}"
        )
    return {"wall": wall, "cpu": cpu, "load": load, "stdout": r.stdout, "stderr": r.stderr}


def build_store(store: Path) -> None:
    if store.exists():
        shutil.rmtree(store)
    for fam in ("fit", "heldout-random", "heldout-leave30", "heldout-classordered"):
        run(["ingest", f"sample_runs/{fam}", "--tag", fam, "--store", str(store)])


def commands(store: Path, work: Path) -> list[tuple[str, list[str], float]]:
    """(label, argv, CPU-second target) for every command, in an order that creates what the
    later ones need (models, curriculum files)."""
    s = ["--store", str(store)]
    cur = str(work / "classordered-000.txt")
    return [
        ("--help", ["--help"], 0.25),
        ("info", ["info", *s, "--format", "table"], 1.0),
        ("verify", ["verify", *s], 1.0),
        (
            "fit linear --l2 auto",
            ["fit", *s, "--runs", "fit", "--method", "linear", "--l2", "auto", "--name", "linear"],
            2.0,
        ),
        *[
            (
                f"fit {m} --l2 1 --solver {so}",
                ["fit", *s, "--runs", "fit", "--method", m, "--l2", "1", "--solver", so]
                + ["--name", f"{m}-{so}", "--replace"],
                1.0,
            )
            for m in ("linear", "additive", "multiplicative")
            for so in ("auto", "cg", "direct")
        ],
        (
            "fit optimizer-aware",
            ["fit", *s, "--runs", "fit", "--method", "optimizer-aware", "--name", "oa"]
            + ["--replace"],
            2.0,
        ),
        (
            "import-scores",
            ["import-scores", "sample_runs/tracin_scores.csv.gz", *s, "--name", "tracin"]
            + ["--scale", "fit", "--runs", "fit", "--replace"],
            1.0,
        ),
        ("curriculum", ["curriculum", "heldout-classordered-000", *s, "-o", cur], 1.0),
        (
            "simulate",
            ["simulate", cur, *s, "--model", "linear", "--init-loss"]
            + ["run:heldout-classordered-000", "-o", str(work / "sim.csv")],
            1.0,
        ),
        (
            "eval",
            ["eval", *s, "--model", "linear", "--model", "tracin", "--runs", "heldout-random"],
            1.0,
        ),
        ("top --test all", ["top", *s, "--model", "linear", "--test", "all", "--k", "5"], 1.0),
        (
            "top --test all (optimizer-aware)",
            ["top", *s, "--model", "oa", "--test", "all", "--k", "5"],
            1.0,
        ),
        (
            "whatif",
            ["whatif", *s, "--model", "linear", "--base", "fit-000", "--drop", "e001,e007"],
            1.0,
        ),
        (
            "groups",
            ["groups", *s, "--model", "linear", "--base", "fit-000"]
            + ["--groups-from", "sample_runs/examples.csv", "--column", "label"],
            1.0,
        ),
        (
            "design",
            ["design", *s, "--model", "linear", "--steps", "250", "--seed", "0"]
            + ["-o", str(work / "designed.txt")],
            3.0,
        ),
        (
            "design (optimizer-aware)",
            ["design", *s, "--model", "oa", "--steps", "250", "--seed", "0"]
            + ["-o", str(work / "designed-oa.txt")],
            3.0,
        ),
    ]


def _best(args: list[str], repeat: int, trees: list[str | None], swap) -> list[dict]:
    """Best (lowest CPU) of ``repeat`` runs per tree, the trees alternating run by run;
    ``swap(args, k)`` gives tree k's arguments (its own store and work directory)."""
    best: list[dict | None] = [None] * len(trees)
    for _ in range(max(1, repeat)):
        for k, tree in enumerate(trees):
            r = run(swap(args, k), tree=tree)
            if best[k] is None or r["cpu"] < best[k]["cpu"]:
                best[k] = r
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None, help="existing demo store (default: build one)")
    ap.add_argument("--work", default="/tmp/simfluence-bench-commands")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated labels (prefix match)")
    ap.add_argument("--skip", default=None, help="comma-separated labels to leave out (prefix)")
    ap.add_argument("--baseline", default=None, help="source tree to compare with (PYTHONPATH)")
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    ap.add_argument(
        "--pycache", default=None, help="bytecode cache directory for the children (as installed)"
    )
    a = ap.parse_args(argv)
    if a.pycache:
        CHILD_ENV.update(PYTHONPYCACHEPREFIX=str(Path(a.pycache).resolve()))
        CHILD_ENV["PYTHONDONTWRITEBYTECODE"] = None
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import run_facts

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.store is None:
        store = work / "demo-store"
        t0 = time.perf_counter()
        build_store(store)
        print(f"built {store} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    else:
        store = Path(a.store)
    this = os.environ.get("PYTHONPATH") or str(ROOT)
    trees: list[str | None] = [this]
    stores, works = [store], [work]
    if a.baseline:
        bstore, bwork = work / "baseline-store", work / "baseline-work"
        if bstore.exists():
            shutil.rmtree(bstore)
        shutil.copytree(store, bstore)
        bwork.mkdir(parents=True, exist_ok=True)
        trees = [a.baseline, this]
        stores, works = [bstore, store], [bwork, work]

    def swap(args: list[str], k: int) -> list[str]:
        return [
            str(stores[k]) if x == str(store) else x.replace(str(work), str(works[k])) for x in args
        ]

    facts = run_facts(
        "load_start",
        tree=this,
        baseline=a.baseline,
        pycache=a.pycache,
        dont_write_bytecode=bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
    )
    print(json.dumps(facts), flush=True)
    rows = []
    for label, args, target in commands(store, work):
        if a.only and not any(label.startswith(p) for p in a.only.split(",")):
            continue
        if a.skip and any(label.startswith(p) for p in a.skip.split(",")):
            continue
        if label == "fit linear --l2 auto":
            args = [*args, "--replace"]
        res = _best(args, a.repeat, trees, swap)
        head = res[-1]
        row = {
            "command": label,
            "wall_s": round(head["wall"], 2),
            "cpu_s": round(head["cpu"], 2),
            "target_cpu_s": target,
            "ok": head["cpu"] <= target,
            "load": round(head["load"], 1),
        }
        if a.baseline:
            row["base_cpu_s"] = round(res[0]["cpu"], 2)
            row["ratio"] = round(head["cpu"] / res[0]["cpu"], 2) if res[0]["cpu"] else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    facts["load_end"] = [round(x, 2) for x in os.getloadavg()]
    if a.baseline:
        md = [
            "| command | baseline CPU s | CPU s | ratio | wall s | target CPU s | met | load avg |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            md.append(
                f"| `{r['command']}` | {r['base_cpu_s']} | {r['cpu_s']} | {r['ratio']} | "
                f"{r['wall_s']} | {r['target_cpu_s']} | {'yes' if r['ok'] else 'NO'} | "
                f"{r['load']} |"
            )
    else:
        md = [
            "| command | wall s | CPU s | target CPU s | met | load avg |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            md.append(
                f"| `{r['command']}` | {r['wall_s']} | {r['cpu_s']} | {r['target_cpu_s']} | "
                f"{'yes' if r['ok'] else 'NO'} | {r['load']} |"
            )
    text = json.dumps(facts) + "\n\n" + "\n".join(md) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()

"""Peak memory of `simfluence eval`, `top --measure coefficient` and `simulate` (issue 5, item 2).

    .venv/bin/python bench/bench_memory.py --store /tmp/sc/L/store --model scale-L
    .venv/bin/python bench/bench_memory.py --store S --model M --src /tmp/old-checkout  # before
    .venv/bin/python bench/bench_memory.py --store S --model M --chunk 100   # $SIMFLUENCE_TEST_CHUNK
    .venv/bin/python bench/bench_memory.py --synthetic /tmp/mem --fit       # make a store first

Each command runs in a child process (``--src``: the directory holding the ``simfluence_cli``
package to run, default this checkout, so an older checkout gives the "before" figures);
reported: wall seconds and the child's peak RSS (``ru_maxrss`` from ``wait4``). eval runs on
``--eval-runs`` runs (default the first 4 of the store) with ``--allow-fitting-runs`` and the
mean-trajectory baseline from the same runs (so the baseline's loss table does not dominate);
simulate replays the first run's curriculum and writes Parquet. ``--fit`` also times
``simfluence fit`` (into a model named ``<model>-mem``). ``--synthetic DIR`` first builds a
store of size L (N=20,000, M=1,000; 4 runs x 2,500 steps, batch 8: every example occurs) and fits model ``--model``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_child(args: list[str], src: Path, env_extra: dict | None = None) -> dict:
    """Run ``simfluence *args`` from ``src`` in a child; wall seconds and peak RSS (MB)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ['simfluence'] + sys.argv[2:];"
        "from simfluence_cli.cli import app; app()"
    )
    env = {**os.environ, **(env_extra or {})}
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(src), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"simfluence {' '.join(args)} failed ({rc}): {err.decode()[-2000:]}")
    return {"seconds": round(wall, 2), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1)}


def make_store(path: Path, model: str, src: Path) -> Path:
    """A store of size L with 4 runs, and a fitted model (parameters 20,000 x 1,000)."""
    sys.path.insert(0, str(src))
    from simfluence_cli.io.synthetic import make_runs
    from simfluence_cli.store.run_store import RunStore

    rs, _, _ = make_runs(20_000, 1_000, 4, 2_500, 8, seed=0, noise=1e-3, spread=0.05)
    store = RunStore(path / "store", create=True)
    store.add_runset(rs, tags=["fit"])
    run_child(["--quiet", "fit", "--store", str(store.path), "--l2", "1", "--name", model], src)
    return store.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path("/tmp/sc/L/store"))
    ap.add_argument("--model", default="scale-L")
    ap.add_argument("--src", type=Path, default=ROOT)
    ap.add_argument(
        "--chunk", type=int, default=None, help="$SIMFLUENCE_TEST_CHUNK for the children"
    )
    ap.add_argument("--eval-runs", default=None, help="selector (default: the first 4 runs)")
    ap.add_argument("--fit", action="store_true", help="also time `simfluence fit`")
    ap.add_argument("--synthetic", type=Path, default=None, help="build an L-size store here first")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    src = a.src.resolve()
    store = make_store(a.synthetic, a.model, src) if a.synthetic else a.store
    sys.path.insert(0, str(ROOT))
    from simfluence_cli.store.run_store import RunStore

    ids = RunStore(store).select("all")
    runs = a.eval_runs or ",".join(ids[:4])
    env = {"SIMFLUENCE_TEST_CHUNK": str(a.chunk)} if a.chunk else {}
    man = json.loads((Path(store) / "models" / a.model / "model.json").read_text())
    out: dict = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "src": str(src),
        "store": str(store),
        "model": a.model,
        "n_examples": man["n_examples"],
        "n_tests": man["n_tests"],
        "test_chunk": a.chunk or "default",
        "results": {},
    }
    s = ["--store", str(store)]
    with tempfile.TemporaryDirectory() as tmp:
        cur = Path(tmp) / "cur.txt"
        run_child(["curriculum", ids[0], *s, "-o", str(cur)], ROOT)
        cmds = {
            "eval": [
                "eval",
                *s,
                "-m",
                a.model,
                "--runs",
                runs,
                "--allow-fitting-runs",
                "--baseline-runs",
                runs,
                "--format",
                "csv",
            ],
            "top_coefficient": [
                "top",
                *s,
                "-m",
                a.model,
                "--test",
                "all",
                "--measure",
                "coefficient",
                "--k",
                "10",
                "--format",
                "csv",
            ],
            "simulate": [
                "simulate",
                str(cur),
                *s,
                "-m",
                a.model,
                "--format",
                "parquet",
                "-o",
                str(Path(tmp) / "sim.parquet"),
            ],
        }
        if a.fit:
            cmds["fit"] = [
                "--quiet",
                "fit",
                *s,
                "--runs",
                runs,
                "--l2",
                "1",
                "--name",
                f"{a.model}-mem",
                "--replace",
            ]
        for name, args in cmds.items():
            out["results"][name] = run_child(args, src, env)
            if not a.json:
                print(
                    f"{name:16s} {out['results'][name]['seconds']:8.2f} s  "
                    f"peak RSS {out['results'][name]['peak_rss_mb']:8.1f} MB",
                    flush=True,
                )
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(json.dumps({k: v for k, v in out.items() if k != "results"}))


if __name__ == "__main__":
    main()

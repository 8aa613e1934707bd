"""``simfluence plan``: curricula to train and log as fitting runs (see analysis/plan.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from simfluence_cli.cli._app import DEFAULT_STORE, StoreOpt, command, info, open_store
from simfluence_cli.errors import InputError, SelectionError, UsageError


def _labels(path: str) -> dict[str, str]:
    """CSV with a header: first column example id, second column label."""
    import csv

    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise InputError(f"cannot read labels: {exc.strerror}", path=path) from None
    if len(rows) < 2 or len(rows[0]) < 2:
        raise InputError("expected a CSV with a header and two columns example_id,label", path=path)
    return {r[0]: r[1] for r in rows[1:] if len(r) >= 2}


@command("plan")
def plan_cmd(
    n: Annotated[int, typer.Option("--n", "-n", help="Number of curricula to write.")] = 48,
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="Training steps per curriculum (default: the store's runs')."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Examples per step (default: the store's runs' median)."),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Training-example pool: IDS (a,b,c) or @FILE (default: every example in the "
            "store's runs, or in --pool-from's).",
        ),
    ] = None,
    pool_from: Annotated[
        str | None,
        typer.Option(
            "--pool-from", help="Pool = the examples used in these runs of the store (selector)."
        ),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="CSV example_id,label (with header): 'blocked' curricula walk the label "
            "classes in a random order (class-ordered); without it, 10 random blocks.",
        ),
    ] = None,
    mix: Annotated[
        str | None,
        typer.Option(
            "--mix",
            help="Weights of the curriculum kinds, e.g. 'shuffle=1,subset=1,repeat=1,blocked=1' "
            "(the default): shuffle = every example once per epoch; subset = a random 40-80% "
            "of the pool; repeat = 10-20% of the pool 2-3 times per epoch; blocked = blocks "
            "(classes) in a fixed random order each epoch. See docs/plan.md.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: same arguments, same files.")] = 0,
    prefix: Annotated[str, typer.Option("--prefix", help="File name prefix.")] = "plan",
    store: StoreOpt = DEFAULT_STORE,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="Directory to write PREFIX-000.txt ... into ('-' = all curricula to stdout, "
            "each after a '# PREFIX-k' comment line).",
        ),
    ] = "-",
) -> None:
    """Write N curricula to train and log as fitting runs: a seeded mix of plain shuffles,
    random subsets, repeats and blocked (class-ordered) orders over a pool.

    Each file is a curriculum in the format `simfluence curriculum` prints and `simulate`
    reads (one line per step, example IDs separated by spaces). Fitting on such a mix lets
    the simulator see examples used more or less often and at uneven positions, which plain
    shuffles never show (docs/plan.md).
    """
    import numpy as np

    from simfluence_cli.analysis.plan import parse_mix, plan_curricula
    from simfluence_cli.io.curriculum import read_id_list

    weights = parse_mix(mix)
    ids = read_id_list(pool, "pool example IDs") if pool else None
    if ids is None or steps is None or batch_size is None:
        if not Path(store).is_dir():
            raise UsageError(
                "give --pool, --steps and --batch-size, or --store with runs to take them from"
            )
        st = open_store(store)
        sel = st.select(pool_from or "all")
        if not sel:
            raise SelectionError(f"no runs in {st.path} match {pool_from or 'all'!r}")
        rs = st.load(sel)
        if ids is None:
            used = np.zeros(rs.n_examples, bool)
            for r in rs.runs:
                used[np.unique(r.batch_idx)] = True
            ids = [str(e) for e in np.asarray(rs.example_ids)[used]]
        if steps is None:
            steps = int(np.median([r.n_steps for r in rs.runs]))
        if batch_size is None:
            batch_size = int(round(np.median(np.concatenate([r.batch_sizes for r in rs.runs]))))
    bad = [e for e in ids if any(c.isspace() for c in e) or "#" in e]
    if bad:
        raise InputError(
            f"example IDs with whitespace or '#' cannot be written as a curriculum: {bad[0]!r}"
        )
    cur = plan_curricula(
        ids,
        n,
        steps,
        batch_size,
        seed=seed,
        mix=weights,
        labels=_labels(labels) if labels else None,
        prefix=prefix,
    )
    kinds = {}
    for c in cur:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in kinds.items())
    if output == "-":
        sys.stdout.write("".join(c.text() for c in cur))
        sys.stdout.flush()
    else:
        from simfluence_cli._atomic import write_bytes_atomic

        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        for c in cur:
            write_bytes_atomic(str(out / f"{c.name}.txt"), c.text().encode())
    info(
        f"planned {len(cur)} curricula ({summary}) of {steps} steps x {batch_size} over a pool of "
        f"{len(ids)} examples, seed {seed}" + ("" if output == "-" else f" -> {out}/")
    )

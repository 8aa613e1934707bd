"""Group effects: the predicted effect of removing a whole group of training examples,
against the sum of its members' single removals (interaction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from simfluence_cli._repr import summary_repr
from simfluence_cli.analysis.whatif import (
    MODES,
    Batches,
    drop_examples,
    final_losses,
    removal_finals,
)
from simfluence_cli.errors import InputError, SelectionError, UsageError

# -- group effects ----------------------------------------------------------------------------


@dataclass
class GroupEffects:
    """Removal effects (edited - base final loss, per test) of whole groups and of members."""

    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays

    test_ids: np.ndarray
    groups: dict[str, list[str]]
    present: dict[str, int]  # members that occur in the base curriculum
    group_effect: np.ndarray  # (G, M)
    sum_individual: np.ndarray  # (G, M)
    base_final: np.ndarray  # (M,)
    mode: str = "keep-steps"

    @property
    def interaction(self) -> np.ndarray:
        """group - sum of individual effects: 0 = additive. For a helpful group (removal effects
        > 0), interaction > 0 = redundancy: each member alone is replaceable (by the others),
        the group is not; interaction < 0 = the parts' effects overlap (the whole costs less)."""
        return self.group_effect - self.sum_individual

    def rows(self) -> list[dict]:
        out = []
        for g, name in enumerate(self.groups):
            ge, si = self.group_effect[g], self.sum_individual[g]
            mg, ms = float(np.mean(ge)), float(np.mean(si))
            out.append(
                {
                    "group": name,
                    "members": len(self.groups[name]),
                    "in_base": self.present[name],
                    "group_effect": mg,
                    "sum_individual": ms,
                    "interaction": mg - ms,
                    "ratio": mg / ms if ms != 0 else float("nan"),
                    "mean_abs_interaction": float(np.mean(np.abs(ge - si))),
                }
            )
        return out

    def test_rows(self) -> list[dict]:
        out = []
        for g, name in enumerate(self.groups):
            for j, t in enumerate(self.test_ids):
                ge, si = float(self.group_effect[g, j]), float(self.sum_individual[g, j])
                out.append(
                    {
                        "group": name,
                        "test_id": t,
                        "group_effect": ge,
                        "sum_individual": si,
                        "interaction": ge - si,
                    }
                )
        return out


def group_effects(
    sim,
    base: Sequence[Sequence[str]],
    groups: Mapping[str, Sequence[str]],
    init_loss: np.ndarray,
    tests: Sequence[str] | None = None,
    mode: str = "keep-steps",
    unseen: str = "error",
    chunk: int | None = None,
    progress=None,
) -> GroupEffects:
    """Simulated removal effect of each whole group next to the sum of its members' effects.

    All curricula (base, one per group, one per distinct member occurring in the base) are
    simulated in memory-bounded vectorised chunks. Members absent from the base have effect 0.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    base = [list(map(str, b)) for b in base]
    if not groups:
        raise SelectionError("no groups given")
    in_base = {e for b in base for e in b}
    groups = {str(k): list(dict.fromkeys(map(str, v))) for k, v in groups.items()}
    members = sorted({e for v in groups.values() for e in v if e in in_base})
    curricula: list[Batches] = [base]
    curricula += [drop_examples(base, v, mode) for v in groups.values()]
    head = len(curricula)
    share = head / (head + len(members))  # of the progress: whole curricula vs removals
    fin = final_losses(sim, curricula, init_loss, tests=tests, unseen=unseen, chunk=chunk)
    if progress is not None:
        progress(share)
    rest = None if progress is None else (lambda x: progress(x * (1 - share)))
    singles = None
    if mode == "keep-steps" and chunk is None:  # one example removed: index arrays, final step
        singles = removal_finals(
            sim, base, members, init_loss, tests=tests, unseen=unseen, progress=rest
        )
    if singles is None:
        removed = [drop_examples(base, [e], mode) for e in members]
        singles = final_losses(sim, removed, init_loss, tests=tests, unseen=unseen, chunk=chunk)
        if rest is not None:
            rest(1.0)
    fin = np.vstack([fin, singles])
    base_final = fin[0]
    G = len(groups)
    gfx = fin[1 : 1 + G] - base_final
    single = dict(zip(members, fin[1 + G :] - base_final))
    M = fin.shape[1]
    sums = np.zeros((G, M))
    for g, v in enumerate(groups.values()):
        for e in v:
            if e in single:
                sums[g] += single[e]
    present = {k: sum(e in in_base for e in v) for k, v in groups.items()}
    test_ids = np.asarray(list(tests) if tests is not None else sim.test_ids_, dtype=object)
    return GroupEffects(test_ids, groups, present, gfx, sums, base_final, mode)


def read_groups(path: str, column: str, id_column: str = "example_id") -> dict[str, list[str]]:
    """Groups from an example metadata table (CSV, optionally .gz, or Parquet): one group per
    distinct value of ``column``; members = the ``id_column`` values of its rows."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from simfluence_cli.io._arrow import read_parquet

    try:
        if path.endswith(".parquet"):
            tbl = read_parquet(path)
        else:
            tbl = pcsv.read_csv(
                path,
                convert_options=pcsv.ConvertOptions(
                    column_types={id_column: pa.string(), column: pa.string()},
                    strings_can_be_null=False,
                ),
            )
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"cannot read the table: {str(exc).splitlines()[0]}",
            path=path,
            hint="give a CSV or Parquet table with an example_id column",
        ) from None
    for c in (id_column, column):
        if c not in tbl.column_names:
            raise InputError(
                f"no column {c!r} (columns: {', '.join(tbl.column_names)})",
                path=path,
                field=c,
                hint="pick one with --column / --id-column",
            )
    ids = [str(x) for x in tbl[id_column].to_pylist()]
    vals = [str(x) for x in tbl[column].to_pylist()]
    out: dict[str, list[str]] = {}
    for ex, val in zip(ids, vals):
        out.setdefault(val, []).append(ex)
    if not out:
        raise InputError("the table has no rows", path=path)
    return dict(sorted(out.items()))

"""Observed vs simulated loss trajectories of one run: a PNG/SVG (matplotlib, optional extra
``plot``) or a quick look in the terminal (unicode sparklines, no extra needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simfluence_cli._atomic import write_atomic
from simfluence_cli._repr import summary_repr
from simfluence_cli.analysis.evaluation import rollout_runs
from simfluence_cli.errors import MissingExtraError, SelectionError, UsageError
from simfluence_cli.runs import RunSet

__all__ = [
    "Trajectories",
    "trajectories",
    "plot_figure",
    "plot_file",
    "sparklines",
    "pick_tests",
]

_BARS = "▁▂▃▄▅▆▇█"


@dataclass
class Trajectories:
    __repr__ = summary_repr  # scalars, shapes and sizes, not whole arrays
    run_id: str
    model: str
    test_ids: list[str]
    steps: np.ndarray  # (K,) logged steps
    observed: np.ndarray  # (K, m)
    simulated: np.ndarray  # (K, m) at the logged steps


def pick_tests(runs: RunSet, model, tests: Sequence[str] | None, n: int = 4) -> list[str]:
    """The given tests, or ``n`` spread evenly over the test ids (in their order) that both
    the model and the runs know."""
    known = set(getattr(model, "test_ids_", runs.test_ids).tolist()) & set(runs.test_ids.tolist())
    if tests:
        bad = [t for t in tests if t not in known]
        if bad:
            raise SelectionError(
                f"unknown test id(s) {', '.join(bad[:10])}; the model and run know "
                f"{len(known)} test ids"
            )
        return list(tests)
    ids = [t for t in runs.test_ids if t in known]
    return ids[:: max(1, len(ids) // n)][:n]


def trajectories(model, name: str, runs: RunSet, run_id: str, tests: Sequence[str]) -> Trajectories:
    """Roll ``model`` from the run's L_0 through its curriculum; observed vs simulated."""
    try:
        run = runs[run_id]
    except KeyError:
        raise SelectionError(f"no run {run_id!r}") from None
    sub = RunSet(runs.example_ids, runs.test_ids, [run])
    pos = {t: j for j, t in enumerate(runs.test_ids)}
    cols = np.asarray([pos[t] for t in tests], dtype=np.int64)
    _, sim = next(
        rollout_runs(model, sub, [run], np.asarray(tests, dtype=object), cols, unseen="prior")
    )
    return Trajectories(run_id, name, list(tests), run.loss_steps, run.losses[:, cols], sim)


def plot_figure(tr: Trajectories, extra: dict[str, np.ndarray] | None = None):
    """A matplotlib ``Figure``: one panel per test example, observed (dots) vs simulated
    (line), each of ``extra`` (name -> (K, m) losses at ``tr.steps``, e.g. a baseline) dashed.

    A bare Figure, no pyplot: it shows inline when it is a notebook cell's value, and
    ``fig.savefig(...)`` writes it. Needs matplotlib (``pip install 'simfluence-cli[plot]'``).
    """
    try:  # a bare Figure on the Agg canvas: no pyplot, no global backend switch
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError(
            "plotting needs matplotlib: "
            "pip install 'simfluence-cli[plot]' "
            "(or omit -o for a terminal quick look)"
        ) from None
    m = len(tr.test_ids)
    ncol = min(m, 2)
    nrow = -(-m // ncol)
    fig = Figure(figsize=(5.2 * ncol, 3.2 * nrow))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True)
    for j, t in enumerate(tr.test_ids):
        ax = axes[j // ncol][j % ncol]
        ax.plot(tr.steps, tr.observed[:, j], ".", ms=3, color="0.25", label="observed")
        ax.plot(
            tr.steps, tr.simulated[:, j], "-", lw=1.6, color="C0", label=f"simulated ({tr.model})"
        )
        for k, (ename, traj) in enumerate((extra or {}).items()):
            ax.plot(tr.steps, traj[:, j], "--", lw=1.1, color=f"C{k + 1}", label=ename)
        ax.set_title(f"test {t}", fontsize=10)
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    for j in range(m, nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    for j in range(max(0, m - ncol), m):  # the lowest panel of each column gets the step axis
        ax = axes[j // ncol][j % ncol]
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"run {tr.run_id}: observed vs simulated test loss", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if nrow == 1 else 0.04, 1, 1))
    return fig


def plot_file(
    tr: Trajectories, path: str | Path, extra: dict[str, np.ndarray] | None = None
) -> None:
    """Write :func:`plot_figure` to a PNG/SVG/PDF (atomically)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise UsageError(f"-o must end in .png, .svg or .pdf, got {path.name!r}")
    fig = plot_figure(tr, extra)

    # no creation date and fixed SVG element ids: the same plot is the same bytes
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)

    def write(fh):
        from matplotlib import rc_context

        with rc_context({"svg.hashsalt": "simfluence"}):
            fig.savefig(fh, format=fmt, dpi=120, metadata=metadata)

    write_atomic(path, write)


def _spark(values: np.ndarray, lo: float, hi: float) -> str:
    span = hi - lo if hi > lo else 1.0
    out = []
    for v in values:
        if not np.isfinite(v):
            out.append(" ")
        else:
            out.append(
                _BARS[int(np.clip((v - lo) / span * (len(_BARS) - 1) + 0.5, 0, len(_BARS) - 1))]
            )
    return "".join(out)


def _resample(steps: np.ndarray, y: np.ndarray, width: int) -> np.ndarray:
    grid = np.linspace(steps[0], steps[-1], width)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return np.full(width, np.nan)
    return np.interp(grid, steps[ok], y[ok])


def sparklines(tr: Trajectories, width: int = 60) -> str:
    """Terminal quick look: mean over the tests and each test, observed vs simulated."""
    width = max(8, width)
    lines = [
        f"run {tr.run_id}, model {tr.model}: loss from step {tr.steps[0]} to {tr.steps[-1]} "
        "(each pair of rows shares one scale)"
    ]
    series = [("mean", np.nanmean(tr.observed, axis=1), np.nanmean(tr.simulated, axis=1))]
    series += [(t, tr.observed[:, j], tr.simulated[:, j]) for j, t in enumerate(tr.test_ids)]
    label_w = max(len(s[0]) for s in series) + 2
    for name, o, s in series:
        ro, rs = _resample(tr.steps, o, width), _resample(tr.steps, s, width)
        both = np.concatenate([ro[np.isfinite(ro)], rs[np.isfinite(rs)]])
        lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
        lines.append(f"{name:<{label_w}}observed  {_spark(ro, lo, hi)}  {o[0]:.3g} -> {o[-1]:.3g}")
        lines.append(f"{'':<{label_w}}simulated {_spark(rs, lo, hi)}  {s[0]:.3g} -> {s[-1]:.3g}")
    return "\n".join(lines) + "\n"

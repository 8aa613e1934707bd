"""simfluence plot: terminal quick look, PNG/SVG files, the missing-extra message."""

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from simfluence_cli.analysis.plots import plot_file, sparklines, trajectories
from simfluence_cli.cli import app
from simfluence_cli.errors import MissingExtraError
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import save_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rs, _, _ = make_runs(12, 4, 5, 20, 2, seed=5, noise=1e-3, log_every=2)
    fit, held = rs.subset(rs.run_ids[:4]), rs.subset(rs.run_ids[4:])
    sim = Simulator(l2=0.1).fit(fit)
    path = tmp_path_factory.mktemp("plotstore") / "store"
    st = RunStore(path, create=True)
    st.add_runset(fit, tags=["fit"])
    st.add_runset(held, tags=["heldout"])
    with st.write_lock():
        save_model(st, "lin", sim, runs=fit.run_ids, data_hash=st.data_hash(fit.run_ids))
    return rs, sim, path


def test_trajectories_and_sparklines(setup):
    rs, sim, _ = setup
    tr = trajectories(sim, "lin", rs, "syn-004", ["t0", "t3"])
    run = rs["syn-004"]
    np.testing.assert_array_equal(tr.steps, run.loss_steps)
    assert tr.simulated.shape == tr.observed.shape == (len(run.loss_steps), 2)
    np.testing.assert_allclose(tr.simulated[0], run.losses[0, [0, 3]])  # rolled from the run's L_0
    text = sparklines(tr, width=30)
    lines = text.splitlines()
    assert len(lines) == 1 + 2 * 3  # header + (mean, t0, t3) x (observed, simulated)
    assert "observed" in lines[1] and "simulated" in lines[2]
    assert all(len(line.split()[-4]) == 30 for line in lines[1:] if "observed" in line)


@pytest.mark.slow
def test_plot_png_and_svg(setup, tmp_path):
    pytest.importorskip("matplotlib")
    rs, sim, _ = setup
    tr = trajectories(sim, "lin", rs, "syn-004", ["t0", "t1", "t2"])
    plot_file(tr, tmp_path / "a.png", {"other": tr.observed})
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_file(tr, tmp_path / "a.svg")
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:2000]


def test_missing_matplotlib_names_the_extra(setup, tmp_path, monkeypatch):
    rs, sim, path = setup
    tr = trajectories(sim, "lin", rs, "syn-004", ["t0"])
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + [
        "matplotlib"
    ]:
        monkeypatch.setitem(sys.modules, mod, None)  # any matplotlib import -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'simfluence-cli\[plot\]'"):
        plot_file(tr, tmp_path / "a.png")
    r = CliRunner().invoke(
        app,
        [
            "plot",
            "--store",
            str(path),
            "-m",
            "lin",
            "--run",
            "syn-004",
            "-o",
            str(tmp_path / "b.png"),
        ],
    )
    assert r.exit_code == 1 and "simfluence-cli[plot]" in r.stderr
    assert not (tmp_path / "b.png").exists()
    # the terminal quick look needs no extra
    r = CliRunner().invoke(app, ["plot", "--store", str(path), "-m", "lin", "--run", "syn-004"])
    assert r.exit_code == 0, r.stderr
    assert "observed" in r.stdout and "simulated" in r.stdout


@pytest.mark.slow
def test_cli_plot_file_and_errors(setup, tmp_path):
    pytest.importorskip("matplotlib")
    _, _, path = setup
    out = tmp_path / "p.png"
    r = CliRunner().invoke(
        app,
        [
            "plot",
            "--store",
            str(path),
            "-m",
            "lin",
            "--run",
            "syn-004",
            "--tests",
            "t1,t2",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    r = CliRunner().invoke(app, ["plot", "--store", str(path), "-m", "lin", "--run", "nope"])
    assert r.exit_code == 1 and "nope" in r.stderr
    r = CliRunner().invoke(
        app, ["plot", "--store", str(path), "-m", "lin", "--run", "syn-004", "--tests", "zz"]
    )
    assert r.exit_code == 1 and "zz" in r.stderr
    r = CliRunner().invoke(
        app,
        [
            "plot",
            "--store",
            str(path),
            "-m",
            "lin",
            "--run",
            "syn-004",
            "-o",
            str(tmp_path / "p.jpg"),
        ],
    )
    assert r.exit_code == 2


def test_plot_figure_returns_the_figure_the_file_shows(setup, tmp_path):
    """A notebook gets a matplotlib Figure (shown inline, restyled, saved by the user)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from simfluence_cli.analysis.plots import plot_figure

    rs, sim, _ = setup
    tr = trajectories(sim, "lin", rs, "syn-004", ["t0", "t1", "t3"])
    fig = plot_figure(tr, extra={"baseline": tr.observed * 0 + 1.0})
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in shown] == ["test t0", "test t1", "test t3"]
    lines = shown[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["observed", "simulated (lin)", "baseline"]
    np.testing.assert_array_equal(lines[1].get_ydata(), tr.simulated[:, 0])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "observed",
        "simulated (lin)",
        "baseline",
    ]
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"

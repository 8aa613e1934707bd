"""Issue 15: fast start-up (lazy imports at the CLI edge), solver statistics kept in the model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.model.simulator import Simulator
from simfluence_cli.store.run_store import RunStore
from simfluence_cli.store.saved_models import load_model, save_model

HEAVY = ("numpy", "scipy", "pyarrow")


def _loaded_after(code: str) -> list[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + f"\nimport sys; print(*[m for m in {HEAVY!r} if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out


def test_cli_import_does_not_load_the_library():
    # `simfluence --help` imports the CLI package only: numpy, scipy, pyarrow load inside
    # the commands that need them
    assert _loaded_after("import simfluence_cli.cli") == []
    assert _loaded_after("import simfluence_cli") == []


def test_help_runs_without_numpy():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from simfluence_cli.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['fit', '--help'])\n"
        "assert r.exit_code == 0 and '--l2' in r.output, r.output"
    )
    assert _loaded_after(code) == []


def test_lazy_public_names_still_resolve():
    import simfluence_cli

    assert simfluence_cli.RunSet.__name__ == "RunSet"
    assert simfluence_cli.Run.__name__ == "Run"


@pytest.mark.filterwarnings("ignore:model .* is stale")  # runs never ingested
def test_manifest_keeps_solver_stats(tmp_path):
    runs, _, _ = make_runs(30, 4, 3, 20, 2, seed=0)
    sim = Simulator(l2=1.0).fit(runs, solver="cg")
    assert sim.solver_stats_["solver"] == "cg"
    assert sim.solver_stats_["cg_iterations_max"] >= 1
    st = RunStore(tmp_path / "s", create=True)
    save_model(st, "m", sim, runs=sim.run_ids_, data_hash="x")
    back = load_model(st, "m")
    assert (
        back.manifest_["solver_stats"]["cg_iterations_max"]
        == sim.solver_stats_["cg_iterations_max"]
    )
    assert back.solver_stats_["solver"] == "cg"
    assert isinstance(back.manifest_["solver_stats"]["cg_iterations_mean"], float)
    np.testing.assert_array_equal(back.A_, sim.A_)

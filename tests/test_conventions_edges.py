"""CLI conventions a new user meets first: --version, global options after the subcommand,
plain usage lines and listed choices, plain validation messages, one 'wrote PATH' per -o,
top's default test, provenance of imported scores, the l2 auto fallback, packaging."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from simfluence_cli import __version__
from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.store.run_store import RunStore

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(typer.main.get_command(app).commands)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv") / "store"
    rs, _, _ = make_runs(6, 2, 3, 8, 2, seed=1)
    RunStore(path, create=True).add_runset(rs, tags=["fit"])
    assert cli("fit", "--store", path, "--l2", "0.1", "-n", "m").exit_code == 0
    return path


def test_version():
    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"simfluence {__version__}"


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_global_flags_after_the_subcommand(store, flag):
    before = cli(flag, "fit", "--store", store, "--l2", "0.1", "-n", "m")
    after = cli("fit", "--store", store, "--l2", "0.1", "-n", "m", flag)
    assert before.exit_code == after.exit_code == 0
    assert before.stderr == after.stderr == ""  # quiet either way
    loud = cli("fit", "--store", store, "--l2", "0.1", "-n", "m")
    assert "up to date" in loud.stderr


def test_debug_after_the_subcommand_shows_the_traceback(store):
    r = cli("simulate", "/nonexistent/cur.txt", "--store", store, "--debug")
    assert r.exit_code != 0 and r.exception is not None
    assert not isinstance(r.exception, SystemExit)  # raised, not turned into one line


@pytest.mark.sweep
@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_no_internal_types_and_lists_choices(name):
    r = cli(name, "--help")
    assert r.exit_code == 0
    usage = r.stdout.splitlines()[0]
    assert "{" not in usage and "<" not in usage, usage
    assert not re.search(r"<(str|int|float|path|Path|list\[[^\]]*\])>", r.stdout), r.stdout
    for line in r.stdout.splitlines():  # enum options list their choices
        m = re.match(r"\s+(?:-\w, )?(--(?:format|unseen|method|mode|by|prior|clip))\s+(\S+)", line)
        if m:
            assert m.group(2).startswith("[") and "|" in m.group(2), line


@pytest.mark.parametrize(
    "args, says, command",
    [
        (["fitt"], "No such command 'fitt'. Did you mean 'fit'?", "simfluence"),
        (["fit", "--bogus"], "No such option: --bogus", "simfluence fit"),
        (
            ["simulate", "-m", "m", "--interval", "1.5", "-"],
            "strictly between 0 and 1",
            "simfluence simulate",
        ),
        (["top"], "Missing option '--model' / '-m'", "simfluence top"),
        (["simulate"], "Missing argument 'CURRICULUM'", "simfluence simulate"),
        (["--bogus"], "No such option: --bogus", "simfluence"),
    ],
)
def test_usage_errors_are_one_line_naming_the_help(store, args, says, command):
    """Like the tool's own errors: 'error: ... (see ... --help)', exit 2, nothing else."""
    r = cli(
        *args[:1], *(["--store", store] if args[0] in ("fit", "simulate", "top") else []), *args[1:]
    )
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [r.stderr.strip()], r.stderr  # one line
    assert r.stderr.startswith("error: ") and says in r.stderr, r.stderr
    assert r.stderr.strip().endswith(f"(see '{command} --help')"), r.stderr


def test_usage_error_is_one_line_from_the_installed_command():
    exe = Path(sys.executable).with_name("simfluence")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "simfluence_entry"]
    r = subprocess.run([*cmd, "fit", "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: No such option: --bogus")
    assert r.stderr.endswith(" (see 'simfluence fit --help')\n"), r.stderr


def test_validation_messages_have_no_library_prefix(store):
    r = cli("fit", "--store", store, "--method", "bad")
    assert r.exit_code == 2 and "Value error" not in r.stderr
    assert "'bad' is not one of" in r.stderr
    r = cli("fit", "--store", store, "--workers", "0")
    assert r.exit_code == 2 and "Input should be" not in r.stderr and "must be" in r.stderr


@pytest.mark.slow
def test_every_output_file_prints_one_wrote_line(store, tmp_path):
    cur = tmp_path / "c.txt"
    cur.write_text("e0 e1\ne2 e3\n")
    runs = [
        ("eval", "--store", store, "-m", "m", "--allow-fitting-runs"),
        ("top", "--store", store, "-m", "m"),
        ("simulate", cur, "--store", store, "-m", "m"),
        ("curriculum", "syn-000", "--store", store),
        ("info", "--store", store, "--list"),
        ("whatif", "--store", store, "-m", "m", "-b", cur, "--drop", "e0"),
        ("groups", "--store", store, "-m", "m", "-b", cur, "-g", "a=e0"),
        ("design", "--store", store, "-m", "m", "--steps", "3"),
    ]
    for k, args in enumerate(runs):
        out = tmp_path / f"out{k}.csv"
        r = cli(*args, "-o", out)
        assert r.exit_code == 0, (args[0], r.stderr)
        assert out.exists()
        wrote = [ln for ln in r.stderr.splitlines() if "wrote" in ln]
        assert wrote == [f"wrote {out}"], (args[0], r.stderr)


def test_top_defaults_to_all_tests(store):
    r = cli("top", "--store", store, "-m", "m", "-f", "csv")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == cli("top", "--store", store, "-m", "m", "-t", "all", "-f", "csv").stdout


def test_eval_provenance_of_imported_scores_shows_the_scale(store, tmp_path):
    src = tmp_path / "s.csv"
    src.write_text("test_id,example_id,score\nt0,e0,0.1\nt1,e1,-0.2\n")
    r = cli("import-scores", src, "--store", store, "-n", "sc", "--scale", "0.5", "--runs", "fit")
    assert r.exit_code == 0, r.stderr
    r = cli("eval", "--store", store, "-m", "sc", "--allow-fitting-runs", "-f", "csv")
    assert r.exit_code == 0, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("model sc:"))
    assert "scale=0.5 (given)" in line and "l2=" not in line


def test_l2_auto_fallback_says_so(tmp_path):
    rs, _, _ = make_runs(6, 2, 1, 8, 2, seed=1)
    path = tmp_path / "one"
    RunStore(path, create=True).add_runset(rs)
    r = cli("fit", "--store", path, "-n", "m")
    assert r.exit_code == 0, r.stderr
    saved = next(ln for ln in r.stderr.splitlines() if ln.startswith("saved model"))
    assert "fallback" in saved and "(given)" not in saved


def test_licence_is_an_spdx_string():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"


def test_makefile_demo_outputs_are_git_ignored():
    make = (ROOT / "Makefile").read_text()
    outs = re.findall(r"-o (\S+)", make)
    assert outs, "the demo writes files with -o"
    for out in outs:
        path = out.replace("$(DEMO_OUT)", "demo-out").replace("$(DEMO_STORE)", "demo-store")
        p = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, capture_output=True
        )
        assert p.returncode == 0, f"{path} is not ignored by git"
        assert not path.startswith("demo-store/"), "demo outputs do not belong in the store"


def test_dask_extra_is_named_as_pip_knows_it():
    r = cli("fit", "--help")
    flat = " ".join(r.stdout.split())
    assert "simfluence-cli[dask]" in flat and "simfluence[dask]" not in flat

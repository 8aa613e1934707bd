"""Rough edges of a first session with the tool: error lines that name what the user typed, in
plain words, before any work; stale models named by every command; option names that match
across commands."""

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.io.synthetic import make_runs
from simfluence_cli.store.run_store import RunStore


def cli(*args, input=None):
    r = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small store with one fitted model 'm' (fitting runs tagged 'fit')."""
    path = tmp_path_factory.mktemp("newcomer") / "store"
    rs, _, _ = make_runs(6, 3, 3, 8, 2, seed=1)
    RunStore(path, create=True).add_runset(rs, tags=["fit"])
    r = cli("fit", "--store", path, "--l2", "0.1", "-n", "m")
    assert r.exit_code == 0, r.stderr
    return path


def _one_error_line(r, code=1) -> str:
    assert r.exit_code == code, (r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_non_finite_loss_is_named_in_plain_words(tmp_path, suffix):
    if suffix == "jsonl":
        lines = [
            {"step": 0, "batch": [], "loss": {"t0": 1.0}},
            {"step": 1, "batch": ["e0"], "loss": {"t0": float("nan")}},
        ]
        (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        files = [tmp_path / "r.jsonl"]
    else:
        (tmp_path / "c.csv").write_text("run,step,example_id\nr,1,e0\n")
        (tmp_path / "l.csv").write_text("run,step,test_id,loss\nr,0,t0,1.0\nr,1,t0,inf\n")
        files = [tmp_path / "c.csv", tmp_path / "l.csv"]
    r = cli("ingest", *files, "--store", tmp_path / "st")
    line = _one_error_line(r)
    assert "non-finite loss" in line
    assert "np.float64" not in line  # numpy's repr is noise to a user
    assert "non-finite loss nan" in line or "non-finite loss inf" in line
    assert not (tmp_path / "st" / "manifest.json").exists()


def _curriculum(tmp_path):
    cur = tmp_path / "cur.txt"
    cur.write_text("e0 e1\ne2 e3\n")
    return cur


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "{cur}", "-m", "m", "-o", "{bad}/x.csv"],
        ["design", "-m", "m", "--steps", "2", "-o", "{tmp}/d.txt", "--report", "{bad}/r.json"],
        ["whatif", "-m", "m", "-b", "{cur}", "--drop", "e0", "--save-edited", "{bad}/e.txt"],
        ["plan", "-n", "2", "--steps", "2", "-o", "{bad}/plans/"],
        ["curriculum", "syn-000", "-o", "{bad}/c.txt"],
    ],
    ids=lambda a: a[0],
)
def test_output_under_a_file_fails_first_naming_the_path(store, tmp_path, args):
    afile = tmp_path / "afile"
    afile.write_text("x")
    fill = {"cur": _curriculum(tmp_path), "bad": afile, "tmp": tmp_path}
    args = [a.format(**fill) for a in args]
    r = cli(*args, "--store", store)
    line = _one_error_line(r)
    given = next(a for a in args if a.startswith(str(afile)))
    assert "cannot write" in line and given in line, line
    assert f"{afile} is a file, not a directory" in line, line
    assert "File exists" not in line
    # refused before any work: no status line, nothing written beside it
    assert "simulated" not in r.stderr and "wrote" not in r.stderr, r.stderr
    assert not (tmp_path / "d.txt").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_in_proc_names_the_path_not_a_temp_file(store, tmp_path):
    r = cli("simulate", _curriculum(tmp_path), "-m", "m", "--store", store, "-o", "/proc/x.csv")
    line = _one_error_line(r)
    assert "cannot write --output /proc/x.csv: cannot create files in /proc" in line, line
    assert ".tmp" not in line


def test_output_into_new_directories_still_works(store, tmp_path):
    out = tmp_path / "new" / "sub" / "x.csv"
    r = cli("simulate", _curriculum(tmp_path), "-m", "m", "--store", store, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert out.read_text().startswith("step,test_id,loss")
    assert [p.name for p in out.parent.iterdir()] == ["x.csv"]  # no probe file left


def test_top_takes_tests_like_every_other_command(store):
    """`--tests` (and `-t`) name test examples on simulate/whatif/design/eval/plot; top too."""
    base = ["top", "--store", store, "-m", "m", "--k", "2", "-f", "csv"]
    old = cli(*base, "--test", "t0,t1")
    assert old.exit_code == 0, old.stderr
    for spelling in (["--tests", "t0,t1"], ["-t", "t0,t1"]):
        r = cli(*base, *spelling)
        assert r.exit_code == 0, r.stderr
        assert r.stdout == old.stdout
    other = cli(*base, "--tests", "t2")
    assert other.exit_code == 0 and other.stdout != old.stdout  # the option is really read


@pytest.mark.parametrize("command", ["eval", "plot"])
def test_tests_has_the_short_form_t_everywhere(store, command):
    extra = ["--allow-fitting-runs", "-f", "csv"] if command == "eval" else ["--run", "syn-000"]
    r = cli(command, "--store", store, "-m", "m", *extra, "-t", "t1")
    assert r.exit_code == 0, r.stderr
    if command == "eval":
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert {row["n_tests"] for row in rows} == {"1"}
    else:
        assert "t1" in r.stdout and "t0" not in r.stdout


def test_ingest_from_stdin_is_a_clear_usage_error(tmp_path):
    log = '{"step": 0, "batch": [], "loss": {"t0": 1.0}}\n'
    r = cli("ingest", "-", "--store", tmp_path / "st", input=log)
    line = _one_error_line(r, code=2)
    assert "not stdin" in line and "save the log to a file" in line, line
    assert not (tmp_path / "st").exists()


def test_whatif_unknown_id_is_one_error_without_a_warning_first(store, tmp_path):
    base = ["whatif", "--store", store, "-m", "m", "-b", "syn-000", "-f", "csv"]
    r = cli(*base, "--drop", "zz9")
    line = _one_error_line(r)
    assert "unknown training example ID(s)" in line and "zz9" in line
    assert r.stderr.strip().splitlines() == [line], r.stderr  # no warning before the error
    # a known example that the base never trains on still gets its warning
    cur = tmp_path / "cur.txt"
    cur.write_text("e0 e1\ne0 e1\n")
    r = cli("whatif", "--store", store, "-m", "m", "-b", cur, "--drop", "e5", "-f", "csv")
    assert r.exit_code == 0, r.stderr
    assert "none of the 1 example(s) given to --drop occurs in the base" in r.stderr


@pytest.mark.parametrize(
    "bad", [["--steps", "0"], ["--steps", "-5"], ["--batch-size", "0"], ["--iters", "-1"]]
)
def test_design_bad_counts_are_one_usage_line_before_any_note(store, tmp_path, bad):
    r = cli("design", "--store", store, "-m", "m", "-o", tmp_path / "d.txt", *bad)
    line = _one_error_line(r, code=2)
    assert bad[0] in line, line
    assert r.stderr.strip().splitlines() == [line], r.stderr  # no "starting from ..." note
    assert not (tmp_path / "d.txt").exists()


def test_narrow_table_caption_reads_as_sentences():
    from simfluence_cli.cli._output import build_table

    cols = ["model", "a_long_metric_name", "another_long_metric", "third_metric_here"]
    cells = [["linear", "0.123456", "0.234567", "0.345678"]]
    table = build_table(cols, cells, {1, 2, 3}, caption="Means over runs.", width=40)
    assert ".;" not in table.caption
    assert table.caption.startswith("Means over runs. Not shown at this width")
    assert build_table(cols, cells, {1, 2, 3}, caption="x", width=40).caption.startswith("x; not")


def test_plan_names_its_directory_once(store, tmp_path):
    out = tmp_path / "planned"
    r = cli("plan", "--store", store, "-n", "2", "--steps", "2", "-o", f"{out}/")
    assert r.exit_code == 0, r.stderr
    assert f"-> {out}/" in r.stderr and f"{out}//" not in r.stderr, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["plan-000.txt", "plan-001.txt"]


@pytest.mark.slow
def test_a_stale_model_is_named_once_by_the_commands_that_use_it(tmp_path):
    path = tmp_path / "store"
    rs, _, _ = make_runs(6, 3, 3, 8, 2, seed=1)
    st = RunStore(path, create=True)
    st.add_runset(rs, tags=["fit"])
    assert cli("fit", "--store", path, "--l2", "0.1", "-n", "m").exit_code == 0
    cur = _curriculum(tmp_path)
    sim = ["simulate", cur, "--store", path, "-m", "m", "-f", "csv"]
    fresh = cli(*sim)
    assert fresh.exit_code == 0 and "stale" not in fresh.stderr, fresh.stderr
    # the same run ids with other content: the model now describes data the store lost
    other, _, _ = make_runs(6, 3, 3, 8, 2, seed=2)
    st.add_runset(other.subset([rs.run_ids[0]]), replace=True)
    for args in (sim, [*sim, "--interval", "0.8"], ["top", "--store", path, "-m", "m"]):
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        stale = [ln for ln in r.stderr.splitlines() if "model 'm' is stale" in ln]
        assert len(stale) == 1, r.stderr  # said once, even when the model is loaded twice
        assert stale[0].startswith("warning:") and "fit --name m --replace" in stale[0]
    assert cli(*sim).stdout == fresh.stdout  # a warning only: the same numbers as before


def test_help_lists_commands_in_session_order():
    r = cli("--help")
    assert r.exit_code == 0
    listed = [
        ln.split()[0]
        for ln in r.stdout.split("Commands:")[1].splitlines()
        if ln.startswith("  ") and ln.split()
    ]
    assert listed[:4] == ["ingest", "info", "fit", "simulate"]
    from simfluence_cli.cli._app import WORKFLOW_ORDER

    assert listed == list(WORKFLOW_ORDER)  # every command, each once


def test_refit_after_a_data_change_says_the_data_changed(tmp_path):
    path = tmp_path / "store"
    rs, _, _ = make_runs(6, 3, 3, 8, 2, seed=1)
    st = RunStore(path, create=True)
    st.add_runset(rs, tags=["fit"])
    fit = ["fit", "--store", path, "--runs", "fit", "--l2", "0.1", "-n", "m"]
    assert cli(*fit).exit_code == 0
    other, _, _ = make_runs(6, 3, 3, 8, 2, seed=2)
    st.add_runset(other.subset([rs.run_ids[0]]), replace=True)
    line = _one_error_line(cli(*fit))
    assert "their data has changed since" in line and "--replace" in line, line
    assert "different configuration" not in line and len(line) < 400, line
    # a real option change still lists the differing option
    line = _one_error_line(cli(*fit, "--prior", "zero"))
    assert "different configuration" in line and '"no-change" -> "zero"' in line
    assert cli(*fit, "--replace").exit_code == 0


@pytest.mark.slow
def test_info_marks_a_stale_model(tmp_path):
    path = tmp_path / "store"
    rs, _, _ = make_runs(6, 3, 3, 8, 2, seed=1)
    st = RunStore(path, create=True)
    st.add_runset(rs, tags=["fit"])
    assert cli("fit", "--store", path, "--l2", "0.1", "-n", "m").exit_code == 0
    assert cli("fit", "--store", path, "--l2", "0.1", "-n", "k", "--runs", "syn-001").exit_code == 0
    before = json.loads(cli("info", "--store", path, "--json").stdout)
    assert before["stale_models"] == {}
    other, _, _ = make_runs(6, 3, 3, 8, 2, seed=2)
    st.add_runset(other.subset(["syn-000"]), replace=True)  # m's data changed, k's did not
    after = json.loads(cli("info", "--store", path, "--json").stdout)
    assert list(after["stale_models"]) == ["m"] and "changed" in after["stale_models"]["m"]
    line = next(ln for ln in cli("info", "--store", path).stdout.splitlines() if "models" in ln)
    assert "m (STALE" in line and "k (intervals" in line, line


@pytest.mark.parametrize(
    "args, names",
    [
        (["simulate", "-", "-m", "m", "--tests", "@-"], "CURRICULUM and --tests"),
        (["whatif", "-m", "m", "-b", "-", "--drop", "@-"], "--base and --drop"),
        (["groups", "-m", "m", "-b", "-", "-g", "g=@-"], "--base and --group"),
    ],
    ids=lambda a: a[0] if isinstance(a, list) else None,
)
def test_two_inputs_from_stdin_is_a_usage_error(store, args, names):
    r = cli(*args, "--store", store, input="e0 e1\ne2 e3\n")
    line = _one_error_line(r, code=2)
    assert f"{names} both read stdin" in line, line


def test_one_input_from_stdin_still_works(store, tmp_path):
    cur = _curriculum(tmp_path)
    r = cli(
        "simulate", cur, "-m", "m", "--store", store, "--tests", "@-", "-f", "csv", input="t1\n"
    )
    assert r.exit_code == 0, r.stderr
    assert {ln.split(",")[1] for ln in r.stdout.strip().splitlines()[1:]} == {"t1"}


def test_simulate_with_a_wrong_number_of_initial_losses_says_what_it_expects():
    from simfluence_cli import Simulator, UsageError

    rs, _, _ = make_runs(6, 3, 3, 8, 2, seed=1)
    sim = Simulator(l2=0.1).fit(rs)
    cur = [["e0", "e1"], ["e2", "e3"]]
    assert sim.simulate([cur], init_loss=[1.0, 2.0, 3.0]).shape == (1, 3, 3)
    with pytest.raises(UsageError, match=r"init_loss has shape \(2,\); expected \(3,\) shared"):
        sim.simulate([cur], init_loss=[1.0, 2.0])


def test_package_lists_its_lazy_public_names():
    import simfluence_cli

    assert {"RunStore", "Simulator", "RunLogger", "evaluate_models"} <= set(dir(simfluence_cli))


def test_novelty_warning_says_when_p_is_at_its_floor():
    """A large z next to p = 0.143 reads as a contradiction unless the line says that 0.143
    is 1/(n+1), the smallest p-value n fitting runs allow."""
    from simfluence_cli.analysis.novelty import Novelty

    rs, _, _ = make_runs(12, 3, 6, 30, 2, seed=1)
    novelty = Novelty.from_runs(rs)
    ids = [f"e{i}" for i in range(12)]
    fixed_order = [ids[i : i + 2] for i in range(0, 12, 2)] * 5  # the same order every epoch
    line = novelty.warning([fixed_order])
    assert line is not None and "p = 0.143, the smallest possible with 6 fitting runs" in line
    run = rs.runs[0]  # a fitting run's own curriculum is not novel
    own = [list(rs.example_ids[run.batch(t)]) for t in range(1, run.n_steps + 1)]
    assert novelty.warning([own]) is None


def test_design_says_why_it_stopped():
    """A design that changes nothing because the data floor blocks every improving move says
    so (report "stopped"), instead of an unexplained "0 slots changed"."""
    import numpy as np

    from simfluence_cli import Simulator
    from simfluence_cli.analysis.curriculum_design import design_curriculum

    rs, _, _ = make_runs(12, 3, 6, 30, 2, seed=1, noise=0.01)
    sim = Simulator(l2=0.1).fit(rs)
    run = rs.runs[0]
    start = [list(rs.example_ids[run.batch(t)]) for t in range(1, run.n_steps + 1)]
    L0 = run.losses[0]
    free = design_curriculum(
        sim, start=start, init_loss=L0, n_random=0, trust=0.3, floor_guard=False
    )
    assert free.params["changed_slots"] > 0  # improving moves exist
    # the start's own final losses as the floor: every improving move goes below it somewhere
    own_final = sim.simulate([start], L0)[0, -1]
    kw = dict(start=start, init_loss=L0, n_random=0, trust=0.3)
    held = design_curriculum(sim, floor=own_final, **kw)
    assert held.params["changed_slots"] == 0 and held.params["stopped"] == "data-floor"
    assert np.isclose(held.objective, held.start_objective)
    assert free.params["stopped"] in ("iters", "no-moves", "no-improving-move")


def test_design_cli_notes_a_floor_stop(store, tmp_path, monkeypatch):
    from simfluence_cli.analysis import curriculum_design as cd

    monkeypatch.setattr(
        cd, "_adjoint_search", lambda goal, cur, *a, **kw: (cur, None, [0.0], "data-floor")
    )
    r = cli("design", "--store", store, "-m", "m", "-o", tmp_path / "d.txt", "--random", "0")
    assert r.exit_code == 0, r.stderr
    assert "no move was taken" in r.stderr and "--no-floor-guard" in r.stderr, r.stderr


def test_at_without_a_file_name_is_a_usage_error(store):
    r = cli("whatif", "--store", store, "-m", "m", "-b", "syn-000", "--drop", "@")
    line = _one_error_line(r, code=2)
    assert "'@' needs a file name" in line and "@-" in line, line
    assert "Is a directory" not in line

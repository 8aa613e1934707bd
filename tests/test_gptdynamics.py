"""GPTDynamics as published (issue 13 item 4): the runs/<task>/<run>/ tree of the GPTfluence
data release, --metric, --id-prefix, the raw pre-processing layout, and the lenient cases."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from simfluence_cli.cli import app
from simfluence_cli.store.run_store import RunStore

T = 6  # training steps 1..T
BS = 2
HOLES = {"rte": {3}, "sst2": set()}  # checkpoints whose eval file was missing
RUNS = ("output_bs-2_seed-1", "output_bs-2_seed-2")  # run names repeat across tasks
N_TEST = {"rte": 3, "sst2": 2}


def _loss(task, run, t, s):
    return 2.0 + len(task) / 10 + RUNS.index(run) / 100 + t / 7 - s / 50


def _write_run(d, task, run, metric="loss", extra_lines=()):
    """One converted run, as GPTfluence's utils/construct_runs-data*.py writes it: steps 1..T in
    the training log, losses at checkpoints 1..T (no step 0), a missing checkpoint = a hole."""
    d.mkdir(parents=True)
    seed = RUNS.index(run)
    with (d / "train_samples_id.json").open("w") as fh:
        for s in range(1, T + 1):
            ids = [(s * 3 + k + seed) % 10 for k in range(BS)]
            print(json.dumps({"step": s, "samples_id": ids}), file=fh)
    with (d / f"all_{metric}_trajectory.out").open("w") as fh:
        for t in range(N_TEST[task]):
            traj = [
                {"step": s, "loss": _loss(task, run, t, s)}
                for s in range(1, T + 1)
                if s not in HOLES[task]
            ]
            print(json.dumps({"id": t, "loss_trajectory": traj}), file=fh)
        for line in extra_lines:
            print(line, file=fh)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "runs"
    for task in ("rte", "sst2"):
        for run in RUNS:
            _write_run(root / task / run, task, run)
    return root


def _ingest(*args):
    return CliRunner().invoke(app, ["ingest", *map(str, args)])


def test_whole_tree_unique_run_ids_and_task_prefix(tree, tmp_path):
    st = tmp_path / "st"
    r = _ingest(tree, "--store", st, "--id-prefix", "{task}:")
    assert r.exit_code == 0, r.output
    rs = RunStore(st).load()
    assert sorted(rs.run_ids) == sorted(f"{t}/{r}" for t in ("rte", "sst2") for r in RUNS)
    assert sorted(rs.test_ids) == ["rte:0", "rte:1", "rte:2", "sst2:0", "sst2:1"]
    assert all(e.split(":")[0] in ("rte", "sst2") for e in rs.example_ids)
    run = rs["rte/output_bs-2_seed-1"]
    # no step-0 losses: the run starts at checkpoint 1 (its first batch dropped), so T-1 steps;
    # the missing checkpoint 3 is a hole (renumbered 2), not an error
    assert run.n_steps == T - 1
    assert list(run.loss_steps) == [s - 1 for s in range(1, T + 1) if s != 3]
    j = list(rs.test_ids).index("rte:1")
    assert run.losses[0, j] == pytest.approx(_loss("rte", RUNS[0], 1, 1))
    # the batch of step 2 (1-based) is the first stored batch
    assert list(rs.example_ids[run.batch(1)]) == [f"rte:{(2 * 3 + k) % 10}" for k in range(BS)]
    assert "starts at checkpoint 1" in r.stderr


def test_tree_without_prefix_notes_the_shared_id_space(tree, tmp_path):
    r = _ingest(tree, "--store", tmp_path / "st")
    assert r.exit_code == 0, r.output
    assert "share one example/test ID space" in r.stderr and "--id-prefix '{task}:'" in r.stderr
    assert sorted(RunStore(tmp_path / "st").load().test_ids) == ["0", "1", "2"]


def test_task_dirs_one_by_one_collide_and_the_message_says_why(tree, tmp_path):
    # runs given one level down keep only their names: the two tasks' runs collide
    r = _ingest(tree / "rte", tree / "sst2", "--store", tmp_path / "st")
    assert r.exit_code == 1
    assert "run id(s) repeat" in r.stderr and "ingest the whole runs/ tree" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_single_run_directory_keeps_its_name(tree, tmp_path):
    r = _ingest(tree / "sst2" / RUNS[1], "--store", tmp_path / "st")
    assert r.exit_code == 0, r.output
    assert RunStore(tmp_path / "st").load().run_ids == [RUNS[1]]


def test_metric_reads_all_metric_trajectory(tmp_path):
    root = tmp_path / "runs"
    _write_run(root / "webnlg" / RUNS[0], "rte", RUNS[0], metric="bleu")
    st = tmp_path / "st"
    assert _ingest(root, "--store", st).exit_code == 1  # no all_loss_trajectory.out
    r = _ingest(root, "--store", st, "--metric", "bleu")
    assert r.exit_code == 0, r.output
    rs = RunStore(st).load()
    assert rs.run_ids == [f"webnlg/{RUNS[0]}"]
    assert rs.runs[0].losses[0, 0] == pytest.approx(_loss("rte", RUNS[0], 0, 1))
    assert _ingest(root, "--store", st, "--metric", "../x").exit_code == 2


def test_raw_preprocessing_layout_names_the_script(tmp_path):
    raw = tmp_path / "output_rte_bs-4_seed-1"
    (raw / "loss_rte").mkdir(parents=True)
    (raw / "log.out").write_text("{'loss': 1.2, 'samples_id': [1, 2], 'step': 1}\n")
    (raw / "loss_rte" / "loss_rte_checkpoint-1.out").write_text('{"id": 0, "loss": 1.0}\n')
    r = _ingest(tmp_path, "--store", tmp_path / "st")
    assert r.exit_code == 1
    assert "raw GPTfluence training output" in r.stderr
    assert "utils/construct_runs-data.py" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_lenient_cases_are_notes(tmp_path):
    d = tmp_path / "runs" / "rte" / "r1"
    d.mkdir(parents=True)
    lines = [{"step": s, "samples_id": [s, s + 1]} for s in range(1, 5)]
    lines.insert(2, dict(lines[1]))  # an identical repeated log line
    (d / "train_samples_id.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    trajs = [
        # NaN = not logged at checkpoint 2; an identical duplicate point
        '{"id": 0, "loss_trajectory": [{"step": 1, "loss": 1.0}, {"step": 3, "loss": 0.8}, '
        '{"step": 2, "loss": NaN}, {"step": 3, "loss": 0.8}, {"step": 4, "loss": 0.7}]}',
        # out of step order, and first logged at a later checkpoint: no initial loss, dropped
        '{"id": 1, "loss_trajectory": [{"step": 4, "loss": 1.9}, {"step": 3, "loss": 2.0}]}',
        '{"id": 2, "loss_trajectory": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": null}]}',
    ]
    (d / "all_loss_trajectory.out").write_text("\n".join(trajs) + "\n")
    r = _ingest(tmp_path / "runs", "--store", tmp_path / "st")
    assert r.exit_code == 0, r.output
    err = r.stderr
    assert "1 identical repeated line(s) in train_samples_id.json skipped" in err
    assert "2 NaN/null loss(es) read as not logged" in err
    assert "1 trajectory(ies) not in step order were sorted" in err
    assert "1 identical repeated loss point(s) skipped" in err
    assert "1 test(s) first logged after checkpoint 1" in err and "(1)" in err
    rs = RunStore(tmp_path / "st").load()
    run = rs[rs.run_ids[0]]
    assert rs.run_ids == ["rte/r1"] and list(rs.test_ids) == ["0", "2"]
    assert run.n_steps == 3 and list(run.loss_steps) == [0, 2, 3]
    np.testing.assert_allclose(run.losses[:, 0], [1.0, 0.8, 0.7])
    assert run.losses[0, 1] == 3.0 and np.isnan(run.losses[1:, 1]).all()


def test_conflicting_duplicates_still_abort(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "train_samples_id.json").write_text(
        '{"step": 1, "samples_id": [1]}\n{"step": 2, "samples_id": [2]}\n'
    )
    (d / "all_loss_trajectory.out").write_text(
        '{"id": 0, "loss_trajectory": [{"step": 1, "loss": 1.0}, {"step": 1, "loss": 0.9}]}\n'
    )
    r = _ingest(d, "--store", tmp_path / "st")
    assert r.exit_code == 1 and "logged twice with different losses" in r.stderr

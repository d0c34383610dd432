"""Optuna searches as a user runs them: real processes, real training (MNIST or synthetic),
the study in its sqlite file beside the MLflow store."""

from __future__ import annotations

import signal
import subprocess
import sys

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from helpers.config import TRAIN_SCRIPT
from helpers.processes import SLOW, start, sweep, wait_for_line
from helpers.runs import parent_and_children, report_csv
from sweeplab.sweep.optuna_search import REQUEUED
from sweeplab.track.tags import PRUNED_TAG, TRIAL_TAG

pytestmark = pytest.mark.slow
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def the_study(root):
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{root}/optuna.db")
    return optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{root}/optuna.db")


def test_a_pruned_search_on_mnist_records_pruning_in_mlflow_and_the_study(tmp_path, data_dir):
    args = [
        "hparams_search=optuna",
        "experiment=mnist_quick",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.sampler.n_startup_trials=3",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "dataset.train_subset=1000",
        "trainer.epochs=3",
        "trainer.num_threads=1",
        f"dataset.root={data_dir}",
    ]
    rc, out = sweep(args, tmp_path, timeout=900)
    assert rc == 0, out[-3000:]
    study = the_study(tmp_path / "mlruns")
    states = [t.state for t in study.trials]
    assert len(states) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "MedianPruner pruned no trial"

    client, parent, runs = parent_and_children(tmp_path / "mlruns", "mnist_quick")
    by_trial = {int(r.data.tags[TRIAL_TAG]): r for r in runs}
    assert sorted(by_trial) == list(range(6))
    for trial in pruned:  # KILLED with the epoch it reached, its best.pt kept, no test score
        run = by_trial[trial.number]
        epoch = max(trial.intermediate_values)
        assert run.info.status == "KILLED" and run.data.tags[PRUNED_TAG] == str(epoch)
        kept = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert "checkpoints/best.pt" in kept
        assert "test_acc" not in run.data.metrics and "error" not in run.data.tags
        assert "sweep.trial" not in run.data.tags["sweeplab.reproduce"]
    for trial in study.trials:  # each epoch's value reached the study from the job's process
        assert sorted(trial.intermediate_values)[0] == 1
    rows = report_csv(client, parent)
    shown = {r["status"] for r in rows}
    assert {f"PRUNED@{max(t.intermediate_values)}" for t in pruned} <= shown

    # the parent run: best parameters and value, Optuna's plots, where the study lives
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["hydra.sweeper"] == "SweeplabOptunaSweeper"
    assert parent.data.tags["optuna.study"] == parent.data.tags["sweeplab.sweep_id"]
    assert parent.data.tags["optuna.storage"] == "sqlite:///mlruns/optuna.db"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.params["best.optimizer"] == study.best_params["optimizer"]
    assert parent.data.metrics["jobs_pruned"] == len(pruned)
    optuna_files = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert optuna_files == {
        f"optuna/{f}"
        for f in (
            "optimization_results.yaml",
            "optuna_param_importances.png",
            "optuna_optimization_history.png",
        )
    }
    result = OmegaConf.load(next((tmp_path / "outputs").rglob("optimization_results.yaml")))
    assert result.best_value == pytest.approx(study.best_value)
    assert float(rows[0]["best_val_acc"]) == pytest.approx(study.best_value)  # best first


def test_a_killed_search_relaunched_ends_with_exactly_n_trials(tmp_path):
    args = [
        "-m",
        "hparams_search=optuna",
        *SLOW,
        "trainer.epochs=3",
        "dataset.num_train=400",
        "hydra.sweeper.n_trials=4",
        "hydra/sweeper/pruner=none",
    ]
    first = start(args, tmp_path)
    wait_for_line(first, "trial 1 started")
    wait_for_line(first, "epoch 1/3")  # trial 1 has a last.pt: its run can be resumed
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    study = the_study(tmp_path / "mlruns")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]

    again = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert "trial 1 was left RUNNING by a dead launch" in log
    # the dead launch's trial is FAIL and queued again: its requeued copy is what counts
    assert "1 of 4 trials done or running, 1 queued again" in log
    study = the_study(tmp_path / "mlruns")
    trials = study.trials  # n_trials results: the dead launch's trial does not count
    assert all(t.state in ENDED for t in trials)  # none RUNNING
    replaced = {t.user_attrs[REQUEUED] for t in trials if REQUEUED in t.user_attrs}
    counted = [t for t in trials if t.number not in replaced]
    assert len(trials) == 5 and [t.state for t in counted] == [TrialState.COMPLETE] * 4
    assert trials[1].state == TrialState.FAIL and replaced == {1}
    assert trials[2].params == trials[1].params  # queued again, run first
    client, parent, runs = parent_and_children(tmp_path / "mlruns")
    resumed = [r for r in runs if r.data.tags.get("sweeplab.resumed") == "true"]
    assert len(resumed) == 1 and resumed[0].data.tags[TRIAL_TAG] == "2"  # trial 1's run, resumed
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 4
    assert parent.data.tags["sweeplab.launches"] == "2" and parent.info.status == "FINISHED"


def test_parallel_trials_reuse_a_freed_slot_and_outlive_failed_ones(tmp_path):
    # RandomSampler seeded by trainer.seed=31 draws: trial 0 lr 0.01 for 8 epochs (long), then
    # lr 1e10 for 1 epoch (its loss becomes NaN at once: the job fails), ...
    args = [
        *SLOW,
        "dataset.num_train=600",
        "hparams_search=optuna",
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=5",
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.max_failure_rate=0.9",
        "trainer.seed=31",
        "optimizer=sgd",
        "optimizer.lr=choice(0.01,1e10)",
        "trainer.epochs=choice(1,8)",
    ]
    rc, out = sweep(args, tmp_path, timeout=900)
    assert rc == 1, out[-3000:]  # failed jobs: exit 1 and the summary, as a grid sweep
    assert "sweep summary: " in out and "Traceback" not in out
    trials = the_study(tmp_path / "mlruns").trials
    assert [t.params["trainer.epochs"] for t in trials[:3]] == [8, 1, 1]
    assert all(t.state in ENDED for t in trials) and len(trials) == 5
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["optimizer.lr"] == 1e10 for t in failed)
    assert all("NonFiniteLossError" in t.user_attrs["sweeplab.error"] for t in failed)
    assert trials[-1].datetime_start > failed[0].datetime_complete  # the search went on
    # steady state: trial 1's slot took trial 2 while trial 0 (8 epochs) was still running
    long, short, next_one = trials[0], trials[1], trials[2]
    assert short.datetime_complete <= next_one.datetime_start < long.datetime_complete
    _, parent, runs = parent_and_children(tmp_path / "mlruns")
    assert {r.data.tags["sweeplab.threads"] for r in runs} == {"1"}  # 2 cores, 2 in flight


def test_a_multi_objective_search_reports_its_pareto_front(tmp_path):
    args = [
        *SLOW,
        "trainer.epochs=1",
        "dataset.num_train=300",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "optimized_metric=[best_val_acc,train_time_s]",
        "hydra.sweeper.direction=[maximize,minimize]",
    ]
    rc, out = sweep(args, tmp_path)
    assert rc == 0, out[-3000:]
    study = the_study(tmp_path / "mlruns")
    front = sorted(t.number for t in study.best_trials)
    client, parent, _ = parent_and_children(tmp_path / "mlruns")
    assert parent.data.tags["sweeplab.pareto_trials"] == ",".join(map(str, front))
    report = (next((tmp_path / "outputs").rglob("report.md"))).read_text()
    section = report.split("## Pareto front")[1]
    assert "| trial | configuration | best_val_acc | train_time_s |" in section
    assert sorted(int(line.split("|")[1]) for line in section.splitlines()[4:] if line) == front
    assert "Pareto front:" in out
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert "optuna/optuna_pareto_front.png" in files


def test_trials_in_flight_under_submitit_each_in_its_own_process(tmp_path):
    args = [
        *SLOW,
        "trainer.epochs=2",
        "dataset.num_train=300",
        "hparams_search=optuna",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=3",
        "hydra/sweeper/pruner=none",
    ]
    rc, out = sweep(args, tmp_path, timeout=900)
    assert rc == 0, out[-3000:]
    trials = the_study(tmp_path / "mlruns").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    first, second = trials[0], trials[1]
    assert second.datetime_start < first.datetime_complete  # two in flight at once
    _, _, runs = parent_and_children(tmp_path / "mlruns")
    assert len({r.data.tags["sweeplab.pid"] for r in runs}) == 3  # a process per trial
    assert len(list((tmp_path / "outputs").rglob("*_log.out"))) == 3


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (["hydra.sweeper.n_trials=0"], "n_trials=0 and n_jobs=1 must be >= 1"),
        (["hydra.sweeper.direction=maximise"], "give maximize or minimize"),
        (["optimizer.lr=interval(0.1,0.001)"], "optimizer.lr=interval(0.1,0.001): "),
        (["optimizer.lr=tag(log,interval(0,1))"], "optimizer.lr=tag(log,interval(0,1)): "),
        (["+garbage_study_file=yes"], "cannot open the Optuna study storage"),
    ],
)
def test_search_mistakes_are_one_line_exit_2_and_create_nothing(given, said, tmp_path):
    """Reliability 20: each was a traceback (a 93-line chain for a garbage optuna.db), exit 1,
    with an empty parent run marked KILLED and an empty report."""
    if given == ["+garbage_study_file=yes"]:
        (tmp_path / "mlruns").mkdir()
        (tmp_path / "mlruns" / "optuna.db").write_bytes(b"not a database\n" * 500)
        given = []
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "-m", "hparams_search=optuna", *SLOW, *given],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert said in line and "Traceback" not in proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

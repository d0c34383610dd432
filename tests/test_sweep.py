"""Sweeps at scale: launchers (joblib, submitit_local), the parent run and its report (Optuna
searches: test_search.py, test_search_e2e.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers.config import CONF
from helpers.processes import SLOW, sweep
from helpers.runs import parent_and_children, report_csv
from sweeplab.config.identity import sweep_id
from sweeplab.sweep.placement import Placement, choose_joblib_jobs, concurrent_jobs, placement

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


# --- where parallel jobs run ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("launcher", "job", "cores", "gpus", "expected"),
    [
        ({"_target_": BASIC}, 3, 8, 2, Placement(None, None, 1)),  # one at a time: torch default
        ({"_target_": JOBLIB, "n_jobs": 2}, 0, 2, 0, Placement(1, None, 2)),
        ({"_target_": JOBLIB, "n_jobs": 4}, 5, 16, 2, Placement(4, 1, 4)),  # job 5 -> GPU 1
        ({"_target_": JOBLIB, "n_jobs": 4}, 6, 16, 1, Placement(4, None, 4)),  # all on GPU 0
        ({"_target_": JOBLIB, "n_jobs": -1}, 2, 8, 4, Placement(1, 2, 8)),  # -1 = all cores
        ({"_target_": JOBLIB, "n_jobs": -2}, 0, 8, 0, Placement(1, None, 7)),
        ({"_target_": SUBMITIT_LOCAL, "cpus_per_task": 4}, 1, 16, 0, Placement(4, None, 4)),
    ],
)
def test_parallel_jobs_split_cores_and_gpus(launcher, job, cores, gpus, expected):
    assert placement(launcher, job, cores, gpus, env={}) == expected


def test_a_slurm_job_uses_the_cpus_it_was_granted():
    launcher = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    assert placement(launcher, 7, 64, 8, env={"SLURM_CPUS_PER_TASK": "6"}) == Placement(6, None, 1)
    assert concurrent_jobs(launcher, 64) == 1  # each SLURM job has its own allocation


@pytest.mark.parametrize(
    ("overrides", "cores", "expected"),
    [
        (["hydra/launcher=joblib"], 2, 1),  # default n_jobs on 2 cores: one at a time
        (["hydra/launcher=joblib"], 8, None),  # enough cores: parallel, as configured
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 2, None),  # the user chose
        (["hydra/launcher=joblib", "trainer.num_threads=1"], 2, None),  # 1-thread jobs: parallel
        ([], 2, None),  # basic launcher: nothing to choose
    ],
)
def test_a_default_joblib_sweep_is_not_made_slower_than_sequential(overrides, cores, expected):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides, return_hydra_config=True)
    before = cfg.hydra.launcher.get("n_jobs")
    assert choose_joblib_jobs(cfg, cores) == expected
    if expected is None:
        assert cfg.hydra.launcher.get("n_jobs") == before
    else:  # the launcher and the jobs (which recompose from the hydra overrides) both see it
        assert cfg.hydra.launcher.n_jobs == 1
        assert cfg.hydra.overrides.hydra[-1] == "hydra.launcher.n_jobs=1"


def test_slurm_config_composes_with_its_cluster_knobs():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]
        cfg = compose("train", overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.array_parallelism == 32
    assert {"gpus_per_node", "cpus_per_task", "timeout_min", "mem_gb"} <= set(launcher)


def _hydra_view(task: list[str], params: dict | None = None):
    return OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": {"params": params}}})


def test_sweep_id_is_the_command_not_where_it_logs():
    a = sweep_id(_hydra_view(["optimizer=sgd,adam", "model=lenet"]))
    assert a == sweep_id(_hydra_view(["model=lenet", "optimizer=sgd,adam"]))
    assert a == sweep_id(_hydra_view(["optimizer=sgd,adam", "model=lenet", "tracking.root=x"]))
    assert a != sweep_id(_hydra_view(["optimizer=sgd,adam", "model=simple_cnn"]))
    searched = sweep_id(_hydra_view(["model=lenet"], {"optimizer.lr": "interval(0.1, 1)"}))
    assert searched != sweep_id(_hydra_view(["model=lenet"]))


# --- real sweeps -------------------------------------------------------------------------------

QUICK = [*SLOW, "trainer.epochs=2", "dataset.num_train=200"]


@pytest.mark.slow
def test_joblib_sweep_with_failed_jobs_reports_from_mlflow(tmp_path):
    # alexnet's pooling cannot run on 32x32 images: that job fails inside its run; no_such_net
    # fails while the model is built, before any run exists. Both fail inside joblib workers,
    # which the launching process never sees: the summary and report come from MLflow.
    rc, out = sweep(
        [
            *QUICK,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "model=torchvision",
            "model.name=resnet18,alexnet,no_such_net",
        ],
        tmp_path,
    )
    assert rc != 0, out[-3000:]
    assert "sweep summary: 2 of 3 jobs failed" in out
    summary = out.split("sweep summary")[1]
    assert "model.name=alexnet" in summary and "model.name=no_such_net" in summary
    assert "is not a torchvision classifier" in summary
    client, parent, children = parent_and_children(tmp_path / "mlruns")
    assert parent.info.status == "FAILED"
    assert "model.name=resnet18,alexnet,no_such_net" in parent.data.tags["sweeplab.command"]
    assert parent.data.tags["sweeplab.swept"] == "model.name"
    assert len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    trained = [r for r in children if r.info.run_name != "model.name=no_such_net"]
    for run in trained:
        assert run.data.tags["sweeplab.threads"] == "1"  # 2 cores // 2 parallel jobs
    assert len({run.data.tags["sweeplab.pid"] for run in trained}) == 2  # two workers
    rows = report_csv(client, parent)
    assert [(r["model.name"], r["status"]) for r in rows] == [
        ("resnet18", "FINISHED"),
        ("alexnet", "FAILED"),
        ("no_such_net", "FAILED"),
    ]
    finished = next(r for r in children if r.info.status == "FINISHED")
    assert float(rows[0]["test_acc"]) == finished.data.metrics["test_acc"]
    assert rows[0]["reproduce"] == finished.data.tags["sweeplab.reproduce"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {
        f"report/{f}" for f in ("report.md", "report.csv", "test_acc.png", "val_curves.png")
    }
    assert re.search(r"#\s+model\.name\s+best_val_acc\s+test_acc\s+status", out)  # the table

    # On demand, by experiment name (its latest sweep) or by sweep id: the same table.
    sid = parent.data.tags["sweeplab.sweep_id"]
    for target in ("synthetic", sid):
        again = subprocess.run(
            [sys.executable, "-m", "sweeplab.cli.report", target, "--out", str(tmp_path / "r")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"Sweep {sid}" in again.stdout and "FAILED" in again.stdout
    assert (tmp_path / "r" / "report.md").read_text().count("| alexnet |") == 1
    missing = subprocess.run(
        [sys.executable, "-m", "sweeplab.cli.report", "nope"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "neither a sweep id nor an experiment" in missing.stderr


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    rc, out = sweep([*QUICK, "hydra/launcher=submitit_local", "trainer.seed=1,2"], tmp_path)
    assert rc == 0, out[-3000:]
    client, parent, children = parent_and_children(tmp_path / "mlruns")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["hydra.launcher"] == "LocalLauncher"
    assert sorted(r.data.params["trainer.seed"] for r in children) == ["1", "2"]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert [r["status"] for r in report_csv(client, parent)] == ["FINISHED", "FINISHED"]
    # submitit ran each job in its own process, which wrote its own log
    assert len(list((tmp_path / "outputs" / "multiruns").rglob("*_log.out"))) == 2


def test_two_sweeps_started_in_the_same_second_get_their_own_folders(tmp_path):
    """Reliability 20: `outputs/multiruns/<second>/` was shared by two sweeps started together,
    so job 0 held the other sweep's overrides (a re-run from it ran the wrong config)."""
    from helpers.config import TRAIN_SCRIPT

    launches = [
        subprocess.Popen(
            [
                sys.executable,
                str(TRAIN_SCRIPT),
                "-m",
                *SLOW,
                "sweep.dry_run=true",
                f"optimizer.lr={lrs}",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lrs in ("0.1,0.2", "0.3,0.4")
    ]
    for proc in launches:
        assert proc.wait(300) == 0, proc.stderr.read()[-2000:]
    folders = sorted((tmp_path / "outputs" / "multiruns").iterdir())
    assert len(folders) == 2
    seen = set()
    for folder in folders:
        lrs = {
            next(o for o in OmegaConf.load(job / ".hydra" / "overrides.yaml") if "lr=" in o)
            for job in (folder / "0", folder / "1")
        }
        seen.add(frozenset(lrs))
    assert seen == {
        frozenset({"optimizer.lr=0.1", "optimizer.lr=0.2"}),
        frozenset({"optimizer.lr=0.3", "optimizer.lr=0.4"}),
    }

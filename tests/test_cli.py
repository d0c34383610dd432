"""The CLI as a user runs it: the headline sweep, re-running a job, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.config import TRAIN_SCRIPT
from helpers.fake_datasets import CIFAR10_CLASSES, subprocess_env
from helpers.processes import run_train
from helpers.runs import job_runs, per_class, store_client

SMALL = ["dataset=mnist", "dataset.train_subset=512", "trainer.epochs=2", "trainer.batch_size=64"]


def run_cli(args: list[str], cwd: Path, data_dir: Path, timeout: int = 900):
    env = {**os.environ, "SWEEPLAB_DATA_DIR": str(data_dir), "HYDRA_FULL_ERROR": "0"}
    return run_train(args, cwd, env, timeout)


@pytest.fixture(scope="module")
def headline_sweep(tmp_path_factory, data_dir):
    """`python src/train.py -m optimizer=sgd,adam model=simple_cnn,resnet18` on small MNIST."""
    cwd = tmp_path_factory.mktemp("launch")
    proc = run_cli(["-m", "optimizer=sgd,adam", "model=simple_cnn,resnet18", *SMALL], cwd, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = store_client(cwd / "mlruns")
    return cwd, client, proc


@pytest.mark.slow
def test_headline_sweep_gives_four_finished_runs_in_one_experiment(headline_sweep):
    cwd, client, _ = headline_sweep
    experiments = [e.name for e in client.search_experiments()]
    assert "mnist" in experiments
    exp = client.get_experiment_by_name("mnist")
    runs = job_runs(client, exp.experiment_id)
    assert len(runs) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    combos = {(r.data.params["model._target_"], r.data.params["optimizer._target_"]) for r in runs}
    assert len(combos) == 4
    # run names show what the sweep varies, not the fixed overrides
    assert {r.info.run_name for r in runs} == {
        f"optimizer={o},model={m}" for o in ("sgd", "adam") for m in ("simple_cnn", "resnet18")
    }
    for r in runs:
        assert {"best_val_acc", "test_acc", "test_macro_f1"} <= set(r.data.metrics)
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == [1, 2]
        paths = {
            a.path
            for d in ("checkpoints", "plots", "hydra")
            for a in client.list_artifacts(r.info.run_id, d)
        }
        assert {
            "checkpoints/best.pt",
            "plots/confusion_matrix.png",
            "hydra/config.yaml",
            "hydra/overrides.yaml",
        } <= paths
        assert r.data.tags["hydra.output_dir"].startswith("outputs/multiruns/")
        # artifacts live under the launch directory's mlruns/, not in a job directory
        assert r.info.artifact_uri.startswith((cwd / "mlruns").as_uri())
    # Every job's checkpoint is loadable safely.
    best = client.download_artifacts(runs[0].info.run_id, "checkpoints/best.pt")
    assert "model" in torch.load(best, weights_only=True)


@pytest.mark.slow
def test_rerun_from_saved_hydra_config_gives_equal_metrics(headline_sweep, data_dir):
    cwd, client, _ = headline_sweep
    exp = client.get_experiment_by_name("mnist")
    (original,) = client.search_runs(
        [exp.experiment_id],
        "params.model._target_ = 'sweeplab.train.models.simple_cnn' and "
        "params.optimizer._target_ = 'torch.optim.Adam'",
    )
    job_dir = cwd / original.data.tags["hydra.output_dir"]
    proc = run_cli(
        ["--config-path", str(job_dir / ".hydra"), "--config-name", "config"], cwd, data_dir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = client.search_runs([exp.experiment_id], order_by=["start_time DESC"], max_results=1)
    again = runs[0]
    assert again.info.run_id != original.info.run_id
    assert again.data.metrics["test_acc"] == original.data.metrics["test_acc"]
    for name in ("train_loss", "val_loss"):
        a = [m.value for m in client.get_metric_history(original.info.run_id, name)]
        b = [m.value for m in client.get_metric_history(again.info.run_id, name)]
        assert a == b, name


HEADLINE = [
    sys.executable,
    str(TRAIN_SCRIPT),
    "-m",
    "optimizer=sgd,adam",
    "model=simple_cnn,resnet18",
]
TINY = ["trainer.epochs=1", "trainer.batch_size=32"]


@pytest.mark.slow
def test_headline_sweep_runs_on_the_default_dataset_cifar10(tmp_path, fake_data_root):
    """The headline command as written (plus a tiny size) on dataset=cifar10, the default,
    through files in torchvision's CIFAR-10 format."""
    env = subprocess_env(tmp_path, SWEEPLAB_DATA_DIR=str(fake_data_root), HYDRA_FULL_ERROR="0")
    proc = subprocess.run(
        [*HEADLINE, *TINY], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = store_client(tmp_path / "mlruns")
    exp = client.get_experiment_by_name("cifar10")
    runs = job_runs(client, exp.experiment_id)
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"optimizer={o},model={m}" for o in ("sgd", "adam") for m in ("simple_cnn", "resnet18")
    )
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.params["dataset.name"] == "cifar10"
        table = per_class(client, r.info.run_id)
        assert table["class"] == CIFAR10_CLASSES and sum(table["support"]) > 0
        assert 0 <= r.data.metrics["test_acc"] <= 1


@pytest.mark.slow
def test_a_parallel_sweep_downloads_its_dataset_once_before_any_job(tmp_path):
    """joblib, 2 jobs at once, an empty data folder: the launching process downloads (a fake
    download that logs its pid and takes 3 s), the jobs only read."""
    log = tmp_path / "downloads.log"
    env = subprocess_env(
        tmp_path,
        SWEEPLAB_DATA_DIR=str(tmp_path / "data"),
        SWEEPLAB_FAKE_DOWNLOAD_LOG=str(log),
        SWEEPLAB_FAKE_DOWNLOAD_SECONDS="3",
        HYDRA_FULL_ERROR="0",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            str(TRAIN_SCRIPT),
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "optimizer=sgd,adam",
            "model=lenet",
            *TINY,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert log.read_text().split() == [str(proc.pid)]  # once, by the launching process
    assert "cifar10: downloading into" in out + err
    client = store_client(tmp_path / "mlruns")
    runs = job_runs(client, client.get_experiment_by_name("cifar10").experiment_id)
    assert [r.info.status for r in runs] == ["FINISHED"] * 2
    assert {r.data.params["dataset.name"] for r in runs} == {"cifar10"}


def test_an_offline_sweep_stops_once_before_any_job_and_creates_no_store(tmp_path):
    env = subprocess_env(tmp_path, offline=True, SWEEPLAB_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run(
        [*HEADLINE, *TINY], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "cifar10 is not available under" in line and "the download failed" in line
    assert "Traceback" not in proc.stderr
    # No store, no experiment, no run, no empty outputs/ or data/ folder: only the test's own.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sitecustomize"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.epoch=3"], "trainer.epoch"),
        (["optimizer.lr=abc"], "optimizer.lr='abc' has the wrong type"),
        (["trainer.epochs=0"], "trainer.epochs=0 is invalid"),
        (["model=resnet19"], "simple_cnn"),
        (["-m", "--cfg", "job", "trainer.seed=1,2"], "--multirun and --cfg cannot be combined"),
        # the ones that get as far as loading data are slow: in the full run only
        pytest.param(
            ["dataset=cifar10", "dataset.download=false"],
            "cifar10 is not available under",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["dataset=mnist", "trainer.device=cuda:7"],
            "trainer.device=cuda:7",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["dataset=mnist", "trainer.amp=fp16", "trainer.device=cpu"],
            "fp16 needs a CUDA",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_bad_input_gives_one_clear_error_and_nonzero_exit(args, message, tmp_path, data_dir):
    proc = run_cli(args, tmp_path, data_dir if "cifar10" not in args[0] else tmp_path, 300)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_group_option_is_one_line_and_exit_2(tmp_path, data_dir):
    proc = run_cli(["-m", "model=simple_cnn,resnet19"], tmp_path, data_dir, 300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    options = "lenet, resnet18, simple_cnn, torchvision"
    said = f"error: Could not find 'model/resnet19': the options of model are {options}"
    assert proc.stderr.strip() == said
    assert list(tmp_path.iterdir()) == []


def test_bad_input_writes_no_tracking_store(tmp_path, data_dir):
    proc = run_cli(["dataset=mnist", "optimizer.lr=-1"], tmp_path, data_dir, 300)
    assert proc.returncode == 2 and "optimizer.lr=-1 is invalid" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no store, no outputs/

"""One run across processes (DDP, gloo on CPU) and the GPU-path knobs, checked on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.config import TRAIN_SCRIPT
from helpers.runs import job_runs, store_client
from sweeplab.job import train
from sweeplab.track import logged_model

# lenet has no BatchNorm and augmentation=none: a 2-rank run then computes the same global
# gradients as one process with the same global batch, up to float rounding.
COMMON = [
    "dataset=synthetic",
    "dataset.num_train=640",
    "dataset.num_test=200",
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "trainer.device=cpu",
    "model=lenet",
    "augmentation=none",
    "optimizer=adam",
    "trainer.num_threads=1",
]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def assert_bare_model_logged(client, run_id: str, uri: str) -> None:
    """The run's logged model is the bare module: no DDP (`module.`) or torch.compile
    (`_orig_mod.`) wrapper in its weights' names, and it runs on the CPU."""
    (output,) = client.get_run(run_id).outputs.model_outputs
    model, meta = logged_model.load(f"models:/{output.model_id}", uri)
    names = list(model.state_dict())
    assert names and not any("module." in k or "_orig_mod" in k for k in names), names
    c, size = meta["in_channels"], meta["image_size"]
    assert model(torch.zeros(3, c, size, size, dtype=torch.uint8)).shape == (3, 10)


def history(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir()
    ddp.mkdir()
    run([sys.executable, str(TRAIN_SCRIPT), *COMMON], single)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    out = run([*torchrun, str(TRAIN_SCRIPT), *COMMON, "trainer.strategy=ddp"], ddp)
    assert (out.stdout + out.stderr).count("best epoch") == 2  # both ranks scored the test set

    ref_client, client = store_client(single / "mlruns"), store_client(ddp / "mlruns")
    (ref,) = job_runs(ref_client, ref_client.get_experiment_by_name("synthetic").experiment_id)
    runs = job_runs(client, client.get_experiment_by_name("synthetic").experiment_id)
    assert len(runs) == 1  # only rank 0 logs
    (got,) = runs
    assert got.info.status == "FINISHED"
    for key in ("train_loss", "val_loss"):
        a, b = history(ref_client, ref.info.run_id, key), history(client, got.info.run_id, key)
        assert len(a) == len(b) == 3
        assert b == pytest.approx(a, rel=1e-4), key
    assert (
        history(client, got.info.run_id, "train_loss")[0]
        != history(client, got.info.run_id, "train_loss")[-1]
    )  # it learned something
    for key in ("best_val_acc", "test_acc"):  # all-reduced over both ranks' halves of the sets
        assert got.data.metrics[key] == pytest.approx(ref.data.metrics[key], abs=0.011), key
    checkpoints = sorted(p.name for p in (ddp / "outputs").rglob("*.pt"))
    assert checkpoints == ["best.pt"]  # rank 0 only (last.pt is removed once FINISHED)
    assert_bare_model_logged(client, got.info.run_id, f"sqlite:///{ddp}/mlruns/mlflow.db")


def test_ddp_without_torchrun_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *COMMON, "trainer.strategy=ddp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "trainer.strategy=ddp needs torchrun" in proc.stderr


def test_channels_last_gives_the_same_training(small_cfg):
    nchw = ["model=simple_cnn", "trainer.epochs=2", "trainer.channels_last=false"]
    base = train(small_cfg(*nchw))
    nhwc = train(small_cfg("model=simple_cnn", "trainer.epochs=2", "trainer.channels_last=true"))
    for a, b in zip(base["history"], nhwc["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_compiled_model_trains_and_reports_its_compile_time(small_cfg, client):
    eager = train(small_cfg("model=lenet", "augmentation=none", "trainer.epochs=2"))
    cfg = small_cfg("model=lenet", "augmentation=none", "trainer.epochs=2", "trainer.compile=true")
    compiled = train(cfg)
    assert_bare_model_logged(client, compiled["run_id"], cfg.tracking.uri)
    metrics = client.get_run(compiled["run_id"]).data.metrics
    assert metrics["compile_time_s"] > 0
    for a, b in zip(eager["history"], compiled["history"], strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)

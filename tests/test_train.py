"""train(cfg): every model × optimizer trains and is tracked; runs reproduce and re-run."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch

from helpers.config import GROUPS, compose_cfg
from helpers.core import trainer_for
from helpers.runs import per_class
from sweeplab.cli.rerun import RerunError, rerun
from sweeplab.job import train
from sweeplab.train import trainer as core
from sweeplab.train.checkpoint import load_checkpoint

EPOCH_METRICS = {
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_time_s",
    "train_images_per_s",
}
FINAL_METRICS = {"best_val_acc", "best_epoch", "test_loss", "test_acc"}


@pytest.mark.parametrize("optimizer", GROUPS["optimizer"])
@pytest.mark.parametrize("model", GROUPS["model"])
def test_every_model_and_optimizer_trains(model, optimizer, small_cfg):
    cfg = small_cfg(f"model={model}", f"optimizer={optimizer}", "dataset.image_size=32")
    trainer = trainer_for(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    (row,) = trainer.fit([])
    assert type(trainer.optimizer).__name__ == cfg.optimizer._target_.rsplit(".", 1)[-1]
    assert math.isfinite(row["train_loss"]) and 0 <= row["val_acc"] <= 1
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # it stepped
    loss, acc, confusion = trainer.evaluate(trainer.data.test)
    assert math.isfinite(loss) and int(confusion.sum()) == 100  # the whole test set


@pytest.mark.parametrize("model", GROUPS["model"])
def test_every_model_is_tracked_with_its_metrics_table_and_logged_model(model, small_cfg, client):
    cfg = small_cfg(f"model={model}", "dataset.image_size=32")
    result = train(cfg)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) >= EPOCH_METRICS | FINAL_METRICS
    assert run.data.metrics["test_acc"] == result["test_acc"]
    assert torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))
    assert run.data.params["optimizer._target_"] == cfg.optimizer._target_
    assert run.data.params["model.num_classes"] == "10"
    table = per_class(client, run.info.run_id)  # one row per class, not 3 metrics per class
    assert table["class"] == [f"class_{k}" for k in range(10)]
    assert sum(table["support"]) == 100  # the whole test set (dataset.num_test)
    assert run.data.metrics["test_macro_f1"] == pytest.approx(sum(table["f1"]) / 10)
    assert not any(k.startswith(("test_f1_", "test_precision_")) for k in run.data.metrics)
    (model,) = run.outputs.model_outputs  # every model exports as an MLflow model
    assert client.get_logged_model(model.model_id).status == "READY"


@pytest.fixture(scope="module")
def unaugmented_loss(store_root, tmp_path_factory):
    """Epoch-1 train loss with augmentation=none, to compare every option against."""
    cfg = compose_cfg(
        [
            "dataset=synthetic",
            "dataset.num_train=320",
            "dataset.num_test=100",
            "trainer.epochs=1",
            "trainer.batch_size=32",
            "trainer.device=cpu",
            f"tracking.root={store_root}",
            "tracking.experiment=test-unaugmented",
            f"output_dir={tmp_path_factory.mktemp('none')}",
            "augmentation=none",
        ]
    )
    return trainer_for(cfg).fit([])[0]["train_loss"]


@pytest.mark.parametrize("option", [o for o in GROUPS["augmentation"] if o != "none"])
def test_every_augmentation_option_trains_and_changes_the_training_batches(
    option, small_cfg, unaugmented_loss
):
    # flips on, so that every option has something to apply on the synthetic set
    trainer = trainer_for(small_cfg(f"augmentation={option}", "dataset.flips_keep_label=true"))
    loss = trainer.fit([])[0]["train_loss"]
    assert torch.isfinite(torch.tensor(loss)) and loss != unaugmented_loss
    assert 0 <= trainer.evaluate(trainer.data.test)[1] <= 1


def test_a_run_logs_everything_a_comparison_needs(small_cfg, client):
    result = train(small_cfg("trainer.epochs=3"))
    run_id = result["run_id"]
    for name in ("train_loss", "val_acc", "lr"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert steps == [1, 2, 3], name
    artifacts = {
        a.path
        for d in ("", "checkpoints", "hydra", "plots", "metrics")
        for a in client.list_artifacts(run_id, d or None)
    }
    assert {
        "checkpoints/best.pt",
        "hydra/config.yaml",
        "hydra/overrides.yaml",
        "plots/confusion_matrix.png",
        "metrics/test_per_class.json",
    } <= artifacts
    tags = client.get_run(run_id).data.tags
    assert tags["sweeplab.reproduce_run"] == f"sweeplab-rerun {run_id}"
    assert "git.commit" in tags and tags["git.dirty"] in ("true", "false")
    params = client.get_run(run_id).data.params
    assert not any(v.startswith("/") or "sqlite:////" in v for v in params.values()), params


def test_it_actually_learns(small_cfg):
    cfg = small_cfg(
        "optimizer=adam", "trainer.epochs=4", "dataset.num_train=1000", "augmentation=none"
    )
    result = train(cfg)
    assert result["test_acc"] > 0.9
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]


def test_same_config_and_seed_give_identical_metrics(small_cfg):
    a = train(small_cfg("trainer.epochs=2", "augmentation=seed_tutorial"))
    b = train(small_cfg("trainer.epochs=2", "augmentation=seed_tutorial"))

    def strip(history):
        return [
            {k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in history
        ]

    assert strip(a["history"]) == strip(b["history"])
    assert a["test_acc"] == b["test_acc"]
    c = train(small_cfg("trainer.epochs=2", "augmentation=seed_tutorial", "trainer.seed=1"))
    assert strip(c["history"]) != strip(a["history"])


def test_best_checkpoint_is_safe_to_load_and_reproduces_test_acc(small_cfg, client, tmp_path):
    cfg = small_cfg("trainer.epochs=2", "model=lenet", "dataset.image_size=32")
    result = train(cfg)
    path = client.download_artifacts(result["run_id"], "checkpoints/best.pt", str(tmp_path))
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == result["best_epoch"]
    assert state["val_acc"] == result["best_val_acc"]
    model = core.build(cfg.model)
    model.load_state_dict(state["model"])
    data = core.build(cfg.dataset, device=torch.device("cpu"), seed=cfg.trainer.seed)
    from sweeplab.train.augment import Normalize
    from sweeplab.train.loop import evaluate

    _, acc, _ = evaluate(
        model,
        data.test.batches(64),
        normalize=Normalize(data.mean, data.std, torch.device("cpu")),
        loss_fn=torch.nn.CrossEntropyLoss(),
        num_classes=10,
        device=torch.device("cpu"),
    )
    assert acc == result["test_acc"]
    assert load_checkpoint(path)["classes"] == data.classes


def test_augmentation_touches_training_batches_only(small_cfg):
    seen = []

    def recording(x, y, g=None):
        seen.append(len(x))
        return x, y

    trainer = trainer_for(small_cfg("trainer.epochs=2", "trainer.batch_size=32"))
    trainer.augment = recording  # the Trainer's own part, replaced for this test
    trainer.fit([])
    trainer.evaluate(trainer.data.test)
    # 320 images, 10% val -> 288 train -> 9 full batches per epoch; val/test never augmented
    assert seen == [32] * 18


def test_an_exception_ends_the_run_failed_with_its_traceback(small_cfg, client, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash in epoch 1")

    monkeypatch.setattr(core, "train_epoch", boom)
    cfg = small_cfg()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert "simulated crash" in run.data.tags["error"]
    text = client.download_artifacts(run.info.run_id, "error/traceback.txt")
    assert "RuntimeError: simulated crash" in Path(text).read_text()


def test_rerun_from_run_id_gives_equal_metrics(small_cfg, store_root, client, tmp_path):
    original = train(small_cfg("trainer.epochs=2", "model=lenet", "dataset.image_size=32"))
    uri = f"sqlite:///{store_root}/mlflow.db"
    # a folder with a space, a comma and a quote (was an OverrideParseException on output_dir=)
    out = tmp_path / "re run, it's"
    again = rerun(original["run_id"], tracking_uri=uri, output_dir=str(out))
    assert (out / "checkpoints" / "best.pt").is_file()
    assert again["run_id"] != original["run_id"]
    assert again["test_acc"] == original["test_acc"]
    assert [h["train_loss"] for h in again["history"]] == [
        h["train_loss"] for h in original["history"]
    ]
    new = client.get_run(again["run_id"])
    assert new.data.tags["sweeplab.source_run_id"] == original["run_id"]
    assert new.info.run_name.endswith("(rerun)")
    assert new.info.experiment_id == client.get_run(original["run_id"]).info.experiment_id


def test_a_run_records_its_environment_and_a_rerun_says_what_differs(
    small_cfg, store_root, client, tmp_path, caplog
):
    """Issue 23 (environment part): key versions as tags, every distribution as
    environment/requirements.txt (no paths); a rerun prints what differs, nothing if all match."""
    import importlib.metadata
    import logging

    original = train(small_cfg())
    run = client.get_run(original["run_id"])
    assert run.data.tags["sweeplab.env.torch"] == importlib.metadata.version("torch")
    assert run.data.tags["sweeplab.env.python"] == sys.version.split()[0]
    assert {"sweeplab.env.mlflow", "sweeplab.env.cuda", "sweeplab.env.cpu"} <= set(run.data.tags)
    text = Path(
        client.download_artifacts(run.info.run_id, "environment/requirements.txt", str(tmp_path))
    ).read_text()
    lines = text.splitlines()[1:]
    assert f"torch=={importlib.metadata.version('torch')}" in lines
    assert f"mlflow=={importlib.metadata.version('mlflow')}" in lines
    assert all("/" not in line and "==" in line for line in lines)

    uri = f"sqlite:///{store_root}/mlflow.db"
    caplog.set_level(logging.WARNING, logger="sweeplab.cli.rerun")
    rerun(original["run_id"], tracking_uri=uri, output_dir=str(tmp_path / "same"))
    assert "another environment" not in caplog.text
    client.set_tag(original["run_id"], "sweeplab.env.torch", "2.0.0")
    rerun(original["run_id"], tracking_uri=uri, output_dir=str(tmp_path / "changed"))
    (line,) = [r.getMessage() for r in caplog.records if "another environment" in r.getMessage()]
    assert line.endswith(f"torch 2.0.0 -> {importlib.metadata.version('torch')}")


def test_rerun_of_unknown_run_or_run_without_config_is_a_clear_error(store_root, client):
    uri = f"sqlite:///{store_root}/mlflow.db"
    with pytest.raises(RerunError, match="no run 'deadbeef'"):
        rerun("deadbeef", tracking_uri=uri)
    exp = client.create_experiment("not-sweeplab")
    bare = client.create_run(exp).info.run_id
    with pytest.raises(RerunError, match="no hydra/config.yaml"):
        rerun(bare, tracking_uri=uri)


def test_a_rerun_with_a_typod_override_is_one_error(small_cfg, store_root):
    original = train(small_cfg())
    uri = f"sqlite:///{store_root}/mlflow.db"
    with pytest.raises(RerunError, match=r"Could not override 'trainer.epoch'"):
        rerun(original["run_id"], ["trainer.epoch=3"], tracking_uri=uri)


def test_a_config_logged_before_the_subpackages_reruns_with_the_moved_targets():
    """Runs recorded before 2026-12-04 name `sweeplab.models.simple_cnn`; a rerun reads their
    config.yaml with the current paths, each importable; current configs pass unchanged."""
    from hydra.utils import get_method

    from helpers.config import CONF
    from sweeplab.cli.rerun import current_targets

    old = "model:\n  _target_: sweeplab.models.simple_cnn\n  x: sweeplab.models.keep\n"
    assert current_targets(old) == (
        "model:\n  _target_: sweeplab.train.models.simple_cnn\n  x: sweeplab.models.keep\n"
    )
    for path in CONF.rglob("*.yaml"):
        text = path.read_text()
        assert current_targets(text) == text
        for target in re.findall(r"_target_: (sweeplab\.train\.\S+)", text):
            moved_back = target.replace("sweeplab.train.", "sweeplab.")
            (new,) = re.findall(r"_target_: (\S+)", current_targets(f"_target_: {moved_back}"))
            assert new == target and callable(get_method(new))

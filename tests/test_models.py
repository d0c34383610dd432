"""Model factories: ResNet stem/head/weights/freezing, and trainer knobs that touch the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sweeplab.job import train
from sweeplab.train.checkpoint import save_checkpoint
from sweeplab.train.models import ModelError, torchvision_model


def test_cifar_stem_keeps_resolution():
    model = torchvision_model("resnet18", 3, 10, cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    with pytest.raises(ModelError, match="ResNet family"):
        torchvision_model("mobilenet_v3_small", 3, 10, cifar_stem=True)


def test_head_and_input_channels_follow_the_dataset():
    model = torchvision_model("resnet18", 1, 7)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_weights_file_transfers_backbone_and_replaces_head(tmp_path):
    source = torchvision_model("resnet18", 3, 1000)  # an "ImageNet-shaped" state_dict
    path = tmp_path / "imagenet_like.pt"
    torch.save(source.state_dict(), path)
    model = torchvision_model("resnet18", 3, 10, weights=str(path), freeze_backbone=True)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == 10
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    # grayscale target: pretrained RGB stem summed over channels
    gray = torchvision_model("resnet18", 1, 10, weights=str(path))
    assert torch.allclose(gray.conv1.weight, source.conv1.weight.sum(1, keepdim=True))


def test_sweeplab_checkpoint_is_accepted_as_weights(tmp_path):
    trained = torchvision_model("resnet18", 1, 10)
    save_checkpoint({"model": trained.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    model = torchvision_model("resnet18", 1, 10, weights=str(tmp_path / "best.pt"))
    assert torch.equal(model.fc.weight, trained.fc.weight)


def test_weights_of_another_architecture_are_refused_clearly(tmp_path):
    torch.save(torchvision_model("resnet34", 3, 10).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ModelError, match="does not fit this model"):
        torchvision_model("resnet18", 3, 10, weights=str(tmp_path / "r34.pt"))
    with pytest.raises(ModelError, match="does not exist"):
        torchvision_model("resnet18", 3, 10, weights=str(tmp_path / "missing.pt"))


def test_named_weights_offline_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: must try to download

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError, match=r"IMAGENET1K_V1: could not download .*Offline"):
        torchvision_model("resnet18", 3, 10, weights="IMAGENET1K_V1")
    with pytest.raises(ModelError, match="offers IMAGENET1K_V1"):
        torchvision_model("resnet18", 3, 10, weights="IMAGENET9K")


def test_unknown_torchvision_name_lists_known_ones():
    with pytest.raises(ModelError, match="resnet50"):
        torchvision_model("resnet5000", 3, 10)


def test_bf16_autocast_grad_clip_and_label_smoothing_train_on_cpu(small_cfg):
    result = train(
        small_cfg(
            "trainer.amp=bf16",
            "trainer.grad_clip=1.0",
            "trainer.label_smoothing=0.1",
            "scheduler=onecycle",
        )
    )
    assert 0 <= result["test_acc"] <= 1
    assert torch.isfinite(torch.tensor(result["test_loss"]))


def test_early_stopping_stops_when_val_acc_stalls(small_cfg):
    # lr 0 (via a step schedule with gamma 0 after epoch 1): val_acc cannot improve after epoch 1
    cfg = small_cfg(
        "trainer.epochs=6",
        "trainer.early_stopping=2",
        "scheduler=step",
        "scheduler.step_epochs=1",
        "scheduler.gamma=0.0",
    )
    result = train(cfg)
    assert len(result["history"]) < 6
    assert result["history"][-1]["epoch"] - result["best_epoch"] == 2

"""Model factories: in_channels and num_classes always come from the dataset config."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from sweeplab.errors import SweeplabError
from sweeplab.train.checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger(__name__)


class ModelError(SweeplabError, ValueError):
    """The model config or its weights do not fit; the message says which and why."""


def simple_cnn(in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.0):
    """Three conv-BN-ReLU-maxpool blocks (width, 2w, 4w) + global average pool + linear."""
    layers, c_in = [], in_channels
    for c_out in (width, 2 * width, 4 * width):
        layers += [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        c_in = c_out
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(c_in, num_classes),
    )


def lenet(in_channels: int, num_classes: int, image_size: int = 32):
    """The PyTorch CIFAR tutorial's Net; the flatten size follows from image_size."""
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ModelError(f"lenet needs images of at least 16 px, got image_size={image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def torchvision_model(
    name: str,
    in_channels: int,
    num_classes: int,
    weights: str | None = None,
    cifar_stem: bool = False,
    freeze_backbone: bool = False,
):
    """Any torchvision classifier by name, with its stem/head adapted to the dataset.

    weights: None (random init), a torchvision weights name such as "IMAGENET1K_V1" (downloaded
    to $TORCH_HOME once), or the path to a state_dict / sweeplab checkpoint file.
    """

    if name not in torchvision.models.list_models(module=torchvision.models):
        known = ", ".join(torchvision.models.list_models(module=torchvision.models))
        raise ModelError(f"model.name={name!r} is not a torchvision classifier; known: {known}")
    weights_file = None
    if weights is not None and _looks_like_path(weights):
        weights_file, weights = Path(weights), None
    model = torchvision.models.get_model(name, weights=_pretrained(name, weights))
    if cifar_stem:
        if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
            raise ModelError("model.cifar_stem=true works for the ResNet family only")
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    else:
        _adapt_first_conv(model, in_channels)
    head_name = _replace_head(model, num_classes)
    if weights_file is not None:
        load_weights_file(model, weights_file, head_name)
    if freeze_backbone:
        for pname, p in model.named_parameters():
            p.requires_grad = pname.startswith(head_name + ".")
    return model


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or weights.endswith((".pt", ".pth", ".bin")) or Path(weights).exists()


def _pretrained(name: str, weights: str | None):
    if weights is None:
        return None

    enum = torchvision.models.get_model_weights(name)
    if weights not in enum.__members__:
        raise ModelError(
            f"model.weights={weights!r}: {name} offers {', '.join(enum.__members__)} "
            "(or pass a path to a state_dict file)"
        )
    w = enum[weights]
    try:  # fetch now, so an offline machine gets one clear message
        w.get_state_dict(progress=False, check_hash=True)
    except Exception as e:
        raise ModelError(
            f"model.weights={weights}: could not download {w.url} ({type(e).__name__}: {e}). "
            "Offline? Download it once on a networked machine into $TORCH_HOME/hub/checkpoints "
            "or pass model.weights=<path to a state_dict file>."
        ) from None
    return w


def _named_child(model: nn.Module, kind: type, last: bool) -> tuple[str, nn.Module]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]
    if not found:
        raise ModelError(f"{type(model).__name__} has no {kind.__name__} layer to adapt")
    return found[-1] if last else found[0]


def _set_child(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def _replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the last Linear for a fresh one with num_classes outputs; return its name."""
    name, old = _named_child(model, nn.Linear, last=True)
    if old.out_features != num_classes:
        _set_child(model, name, nn.Linear(old.in_features, num_classes))
    return name


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit pretrained first-conv weights to another channel count (timm's trick)."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    name, old = _named_child(model, nn.Conv2d, last=False)
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        old.groups,
        old.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _set_child(model, name, new)


def load_weights_file(model: nn.Module, path: Path, head_name: str) -> None:
    """Load a state_dict (or a sweeplab checkpoint's model) into `model`.

    The head is skipped when its shape differs (transfer learning), a first conv with another
    channel count is adapted; anything else that does not fit is an error naming the keys.
    """

    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        raise ModelError(f"model.weights: {e}") from None
    state = state.get("model", state)
    own = model.state_dict()
    fitted, skipped, bad = {}, [], []
    for key, value in state.items():
        if key not in own:
            bad.append(f"unexpected {key}")
            continue
        target = own[key].shape
        if value.shape == target:
            fitted[key] = value
        elif key.startswith(head_name + "."):
            skipped.append(key)
        elif value.ndim == 4 and value.shape[0] == target[0] and value.shape[2:] == target[2:]:
            fitted[key] = adapt_input_conv(value, target[1])
        else:
            bad.append(f"{key}: file {tuple(value.shape)} vs model {tuple(target)}")
    missing = [k for k in own if k not in fitted and not k.startswith(head_name + ".")]
    if bad or missing:
        detail = "; ".join(bad[:3] + [f"missing {k}" for k in missing[:3]])
        raise ModelError(
            f"model.weights={path} does not fit this model ({len(bad)} mismatched or "
            f"unexpected, {len(missing)} missing): {detail}"
        )
    model.load_state_dict(fitted, strict=False)
    if skipped:
        log.info("weights %s: kept a fresh head (%s)", path, ", ".join(skipped))

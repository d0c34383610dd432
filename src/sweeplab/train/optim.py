"""Optimizer parameter groups and per-step learning-rate schedules.

Optimizers come from `_partial_: true` configs (`torch.optim.SGD(lr=..., ...)` waiting for its
params). Schedulers are factories called with (optimizer, steps_per_epoch, epochs) and are
stepped once per batch, so warm-up and annealing are smooth whatever the epoch count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights of conv/linear layers decay; biases and norm parameters (ndim <= 1) do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(make: Callable[..., torch.optim.Optimizer], model: nn.Module):
    """`make` is the partial from the optimizer config; its weight decay goes into the groups."""
    weight_decay = getattr(make, "keywords", {}).get("weight_decay", 0.0)
    return make(param_groups(model, weight_decay))


def constant_lr(optimizer, steps_per_epoch: int, epochs: int) -> LRScheduler:
    return LambdaLR(optimizer, lambda step: 1.0)


def cosine_lr(
    optimizer,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LRScheduler:
    total = max(1, steps_per_epoch * epochs)
    warmup = round(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step_lr(
    optimizer, steps_per_epoch: int, epochs: int, step_epochs: int = 30, gamma: float = 0.1
) -> LRScheduler:
    return LambdaLR(optimizer, lambda step: gamma ** (step // (steps_per_epoch * step_epochs)))


def onecycle_lr(
    optimizer,
    steps_per_epoch: int,
    epochs: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> LRScheduler:
    """Peak lr is the optimizer's configured lr."""
    peak = [g["lr"] for g in optimizer.param_groups]
    return OneCycleLR(
        optimizer,
        max_lr=peak,
        total_steps=max(2, steps_per_epoch * epochs),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=False,  # Adam has no momentum key; keep all optimizers alike
    )

"""The training loop itself: one epoch of training, one pass of evaluation. Plain PyTorch.

Nothing here knows about Hydra or MLflow. Running sums stay on the device (no `.item()` per
batch), so a GPU step never waits for the host; they are read once per epoch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from sweeplab.errors import SweeplabError


def autocast(device: torch.device, amp: str):
    """Mixed precision context for `amp` in none | bf16 | fp16."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class NonFiniteLossError(SweeplabError, ArithmeticError):
    """The training loss became NaN/inf; raised before the step, so the weights stay finite."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    augment: Callable,
    normalize: Callable,
    generator: torch.Generator | None,
    device: torch.device,
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    epoch: int = 0,
) -> dict[str, float]:
    """Train one epoch; returns train_loss, train_acc (over every image seen) and speed."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    _sync(device)
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        x = normalize(augment(x, generator))
        with autocast(device, amp):
            logits = model(x)
            loss = loss_fn(logits, y)
        if not torch.isfinite(loss):  # one host sync per step: cheap next to a NaN'd hour
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {epoch}, step {step + 1}: lower optimizer.lr, "
                "set trainer.grad_clip, or use trainer.amp=none"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step(step, loss)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_sum.item() / max(seen, 1),
        "train_acc": correct.item() / max(seen, 1),
        "epoch_time_s": seconds,
        "train_images_per_s": seen / seconds if seconds > 0 else 0.0,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    normalize: Callable,
    loss_fn: nn.Module,
    num_classes: int,
    device: torch.device,
    amp: str = "none",
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, confusion matrix [true, predicted]) over *every* batch given."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    for x, y in batches:
        with autocast(device, amp):
            logits = model(normalize(x))
        loss_sum += loss_fn(logits.float(), y) * len(y)
        pred = logits.argmax(1)
        confusion += torch.bincount(y * num_classes + pred, minlength=num_classes**2)
    confusion = confusion.view(num_classes, num_classes).cpu()
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("evaluate() got no batches: the split is empty")
    return loss_sum.item() / total, confusion.diagonal().sum().item() / total, confusion

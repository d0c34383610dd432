"""The training loop itself: one epoch of training, one pass of evaluation, a progress bar.

Nothing here knows about Hydra or MLflow. Running sums stay on the device (no `.item()` per
batch), so a GPU step never waits for the host; they are read once per epoch. `reduce` sums a
tensor over DDP ranks (identity in a single process), so every rank sees the same metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from sweeplab.errors import SweeplabError


def autocast(device: torch.device, amp: str):
    """Mixed precision context for `amp` in none | bf16 | fp16."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class NonFiniteLossError(SweeplabError, ArithmeticError):
    """The training loss became NaN/inf; raised before the step, so the weights stay finite."""


# On CUDA, reading the NaN flag waits for the GPU: do it every CHECK_EVERY steps, not every step.
# On CPU it costs nothing, so a NaN is caught at its own step, before the weights change.
CHECK_EVERY = 100


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


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
    scaler: torch.amp.GradScaler | None = None,  # None: no loss scaling
    grad_clip: float | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    epoch: int = 0,
    reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
) -> dict[str, float]:
    """Train one epoch: train_loss, train_acc (every image seen, against its own label, also
    under mixup/cutmix), speed, last lr, first step's time (with torch.compile's compiling)."""
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    nonfinite = torch.zeros((), device=device, dtype=torch.bool)
    seen, first_step_time_s, step, lr = 0, 0.0, -1, optimizer.param_groups[0]["lr"]
    check_every = CHECK_EVERY if device.type == "cuda" else 1
    _sync(device)
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        x, target = augment(x, y, generator)  # target: y, or soft labels from mixup/cutmix
        x = normalize(x)
        with autocast(device, amp):
            logits = model(x)
            loss = loss_fn(logits, target)
        nonfinite |= ~torch.isfinite(reduce(loss.detach().float().clone()))  # any rank's NaN
        if (step + 1) % check_every == 0:
            _raise_if(nonfinite, epoch, step, check_every)
        lr = _optimizer_step(model, loss, optimizer, scaler, grad_clip)
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if step == 0:  # one sync per epoch: how long the first step took
            _sync(device)
            first_step_time_s = time.perf_counter() - start
        if on_step is not None:
            on_step(step, loss)
    _raise_if(nonfinite, epoch, step, check_every)
    _sync(device)
    seconds = time.perf_counter() - start
    seen = int(reduce(torch.tensor(seen, device=device)))
    return {
        "train_loss": reduce(loss_sum).item() / max(seen, 1),
        "train_acc": reduce(correct).item() / max(seen, 1),
        "epoch_time_s": seconds,
        "train_images_per_s": seen / seconds if seconds > 0 else 0.0,
        "lr": lr,  # of the epoch's last step
        "first_step_time_s": first_step_time_s,
    }


def _optimizer_step(model, loss, optimizer, scaler, grad_clip: float | None) -> float:
    """Backward through the scaler (a disabled one, without fp16, passes everything through),
    clip, step; returns the lr this step used (a float: no device sync)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return optimizer.param_groups[0]["lr"]


def _raise_if(nonfinite: torch.Tensor, epoch: int, step: int, check_every: int) -> None:
    if nonfinite:  # reads the flag: the one host sync of the check
        where = f"step {step + 1}" if check_every == 1 else f"one of steps ..{step + 1}"
        raise NonFiniteLossError(
            f"loss is not finite at epoch {epoch}, {where}: lower optimizer.lr, "
            "set trainer.grad_clip, or use trainer.amp=none"
        )


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
    reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, confusion matrix [true, predicted]) over *every* batch given
    (over every rank's batches, with `reduce`)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    for x, y in batches:
        with autocast(device, amp):
            logits = model(normalize(x))
        loss_sum += loss_fn(logits.float(), y) * len(y)
        pred = logits.argmax(1)
        confusion += torch.bincount(y * num_classes + pred, minlength=num_classes**2)
    loss_sum, confusion = reduce(loss_sum), reduce(confusion)
    confusion = confusion.view(num_classes, num_classes).cpu()
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("evaluate() got no batches: the split is empty")
    return loss_sum.item() / total, confusion.diagonal().sum().item() / total, confusion


class Progress:
    """A tqdm bar on an interactive terminal; silent in logs/CI (`disable=None`: tqdm's own
    TTY check), where the epoch line says it all."""

    def __init__(self, total: int, desc: str):

        self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)

    def __call__(self, step: int, loss: torch.Tensor) -> None:
        if self.bar.disable:
            return
        self.bar.update(1)
        if step % 25 == 0:  # reading the loss syncs the device: do it rarely
            self.bar.set_postfix(loss=f"{loss.item():.4f}")

    def close(self) -> None:
        self.bar.close()

"""sweeplab's `train_epoch` against the most tuned bare loop we can write, and where any gap goes.

    python benchmarks/loop_gap.py [--shape mnist|cifar] [--images 8192] [--rounds 3]

Same model (simple_cnn), optimizer (SGD lr=0.001 momentum=0.9), batch 128, no augmentation,
same shuffled order, same timing rule (the whole epoch, first step included, wall clock).

tuned bare loop: the whole set pre-normalised once into a float channels_last tensor (outside
the timed region), then per step only: index the batch, zero_grad, forward, loss, backward, step.
No accuracy count, no NaN check, no scheduler.

Ablation: the bare loop with sweeplab's per-step work added one piece at a time, so the gap is
measured piece by piece rather than guessed:
  +uint8      batches stay uint8 in memory, converted and normalised per batch (sweeplab's
              Normalize), as sweeplab keeps them (4x less memory, and augmentations need them)
  +stats      running loss and accuracy sums on the device
  +nan-check  the non-finite loss flag (read every step on CPU)
  +sched      the lr scheduler step and GradScaler pass-through (disabled scaler)
`--model linear` swaps simple_cnn for one Linear layer, so a step is almost only the loop's own
work: its ms/step column shows what each piece costs in absolute terms.
Rounds alternate between contenders (every other round in reverse order); the table gives
the best and the median round of each, as img/s and as a ratio to the tuned bare loop.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from sweeplab.train.augment import Normalize
from sweeplab.train.loop import train_epoch
from sweeplab.train.models import simple_cnn
from sweeplab.train.optim import constant_lr
from sweeplab.train.splits import TensorSplit

CPU = torch.device("cpu")
SHAPES = {"mnist": (1, 28, (0.1307,), (0.3081,)), "cifar": (3, 32, (0.5,) * 3, (0.25,) * 3)}


def make_data(n: int, shape: str) -> tuple[TensorSplit, tuple, tuple]:
    c, size, mean, std = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)
    return TensorSplit(images, torch.randint(0, 10, (n,), generator=g)), mean, std


MODEL = "simple_cnn"  # set from --model; "linear" leaves almost only the loop's own work


def fresh(c: int):
    torch.manual_seed(0)
    if MODEL == "linear":
        size = {1: 28, 3: 32}[c]
        model = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, 10))
    else:
        model = simple_cnn(c, 10).to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)


def bare_epoch(split: TensorSplit, mean, std, batch: int, extras: set[str]) -> float:
    """images/s of the tuned bare loop, plus the sweeplab pieces named in `extras`."""
    model, opt = fresh(split.images.shape[1])
    norm = Normalize(mean, std, CPU, channels_last=True)
    pre = norm(split.images)  # pre-normalised once, channels_last (not timed)
    data = split.images if "uint8" in extras else pre
    labels = split.labels
    loss_fn = nn.CrossEntropyLoss()
    sched = constant_lr(opt, 1, 1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    nonfinite = torch.zeros((), dtype=torch.bool)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    n = len(split) // batch * batch
    model.train()
    start = time.perf_counter()
    for i in range(0, n, batch):
        idx = order[i : i + batch]
        x, y = data[idx], labels[idx]
        if "uint8" in extras:
            x = norm(x)
        logits = model(x)
        loss = loss_fn(logits, y)
        if "nan-check" in extras:
            nonfinite |= ~torch.isfinite(loss.detach().float().clone())
            if nonfinite:
                raise ArithmeticError("nan")
        opt.zero_grad(set_to_none=True)
        if "sched" in extras:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
        else:
            loss.backward()
            opt.step()
        if "stats" in extras:
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
    return n / (time.perf_counter() - start)


def sweeplab_epoch(split: TensorSplit, mean, std, batch: int) -> float:
    model, opt = fresh(split.images.shape[1])
    stats = train_epoch(
        model,
        split.batches(batch, True, torch.Generator().manual_seed(0), drop_last=True),
        optimizer=opt,
        scheduler=constant_lr(opt, 1, 1),
        loss_fn=nn.CrossEntropyLoss(),
        augment=lambda x, y, g=None: (x, y),
        normalize=Normalize(mean, std, CPU, True),
        generator=None,
        device=CPU,
    )
    return stats["train_images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="mnist")
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--model", choices=["simple_cnn", "linear"], default="simple_cnn")
    args = p.parse_args()
    global MODEL
    MODEL = args.model
    torch.set_num_threads(args.threads)
    split, mean, std = make_data(args.images, args.shape)
    ladder = [
        ("tuned bare loop", set()),
        ("+uint8", {"uint8"}),
        ("+stats", {"uint8", "stats"}),
        ("+nan-check", {"uint8", "stats", "nan-check"}),
        ("+sched", {"uint8", "stats", "nan-check", "sched"}),
    ]
    contenders = [*ladder, ("sweeplab train_epoch", None)]
    speeds: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for r in range(args.rounds):  # every other round in reverse: no contender always goes first
        for name, extras in contenders if r % 2 == 0 else contenders[::-1]:
            if extras is None:
                speeds[name].append(sweeplab_epoch(split, mean, std, args.batch))
            else:
                speeds[name].append(bare_epoch(split, mean, std, args.batch, extras))
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.shape}-shaped, "
        f"{args.images} images, batch {args.batch}, {args.model}, "
        f"{args.rounds} rounds, img/s"
    )
    best = {name: max(v) for name, v in speeds.items()}
    median = {name: statistics.median(v) for name, v in speeds.items()}
    print(f"  {'':22s} {'best':>8s}  {'ratio':>6s}   {'median':>8s}  {'ratio':>6s}  ms/step")
    for name in speeds:
        print(
            f"  {name:22s} {best[name]:8.0f}  {best[name] / best['tuned bare loop']:6.3f}x  "
            f"{median[name]:8.0f}  {median[name] / median['tuned bare loop']:6.3f}x  "
            f"{1000 * args.batch / best[name]:7.2f}"
        )


if __name__ == "__main__":
    main()

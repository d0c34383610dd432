"""sweeplab's training loop against two baselines, side by side in one process (CPU or GPU).

    python benchmarks/loop_speed.py [--images 5000] [--rounds 2] [--threads 2]
                                    [--layout channels_last|contiguous]

Data: synthetic uint8 32x32x3 images, 10 classes (CIFAR-shaped; runs offline).
Model: simple_cnn, SGD(lr=0.001, momentum=0.9), batch 128, CPU.

1. tutorial: the classic CIFAR tutorial loop: a Dataset of PIL images with per-image
   RandomHorizontalFlip, RandomVerticalFlip, RandomRotation(10), ToTensor, Normalize through a
   DataLoader(num_workers=2) -- against sweeplab's train_epoch with `augmentation=seed_tutorial`
   (the same three augmentations, batched on tensors). Figure: epoch time ratio.
2. bare: the tuned bare loop over the same tensors, pre-normalised once in the model's layout
   (index, forward, backward, step; no augmentation, statistics, NaN check, tracking or
   progress) -- against train_epoch with `augmentation=none`. Figure: images/s ratio.
   benchmarks/loop_gap.py breaks that ratio down piece by piece.
3. augmentation throughput: each option on uint8 batches of 512, and the share of a simple_cnn
   training step spent on data (augment + normalise).
Rounds alternate between contenders; each figure is the best round. `--layout` is sweeplab's
memory layout (`trainer.channels_last`, default true: NHWC model and batches); the bare loop
uses the same layout to stay like for like, the tutorial loop stays as the tutorial wrote it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sweeplab.train import augment as aug
from sweeplab.train import mixing
from sweeplab.train.loop import train_epoch
from sweeplab.train.models import simple_cnn
from sweeplab.train.optim import constant_lr
from sweeplab.train.splits import TensorSplit

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CPU = torch.device("cpu")


def make_data(n: int) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return TensorSplit(images, torch.randint(0, 10, (n,), generator=g))


CHANNELS_LAST = True  # set from --layout


def fresh_model(channels_last: bool = False):
    torch.manual_seed(0)
    model = simple_cnn(3, 10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)


def tutorial_epoch(split: TensorSplit, batch: int, workers: int) -> float:
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.RandomRotation(10),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    hwc = split.images.permute(0, 2, 3, 1).numpy()
    labels = split.labels.tolist()

    class PilDataset(torch.utils.data.Dataset):  # what torchvision.datasets.CIFAR10 does
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return transform(Image.fromarray(np.ascontiguousarray(hwc[i]))), labels[i]

    loader = torch.utils.data.DataLoader(
        PilDataset(), batch_size=batch, shuffle=True, num_workers=workers
    )
    model, opt = fresh_model()
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def sweeplab_epoch(split: TensorSplit, batch: int, option) -> tuple[float, float]:
    model, opt = fresh_model(CHANNELS_LAST)
    stats = train_epoch(
        model,
        split.batches(batch, True, torch.Generator().manual_seed(0), drop_last=True),
        optimizer=opt,
        scheduler=constant_lr(opt, 1, 1),
        loss_fn=torch.nn.CrossEntropyLoss(),
        augment=option,
        normalize=aug.Normalize(MEAN, STD, CPU, CHANNELS_LAST),
        generator=torch.Generator().manual_seed(1),
        device=CPU,
    )
    return stats["epoch_time_s"], stats["train_images_per_s"]


def bare_epoch(split: TensorSplit, batch: int) -> float:
    """The tuned bare loop (as in benchmarks/loop_gap.py): the whole set normalised once, in
    the model's layout, outside the timed region; per step only index, forward, backward, step."""
    model, opt = fresh_model(CHANNELS_LAST)
    pre = aug.Normalize(MEAN, STD, CPU, CHANNELS_LAST)(split.images)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = len(split) // batch * batch
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    model.train()
    start = time.perf_counter()
    for i in range(0, n, batch):
        idx = order[i : i + batch]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(pre[idx]), split.labels[idx]).backward()
        opt.step()
    return n / (time.perf_counter() - start)


def augmentation_throughput(batch: int, repeats: int) -> dict[str, float]:
    data = make_data(batch)
    x, y = data.images, data.labels
    g = torch.Generator().manual_seed(0)
    options = {
        "standard": aug.standard(),
        "seed_tutorial": aug.seed_tutorial(),
        "randaugment": aug.randaugment(),
        "trivialaugment": aug.trivialaugment(),
        "mixup": mixing.mixup(10),
        "cutmix": mixing.cutmix(10),
    }
    out = {}
    for name, fn in options.items():
        fn(x, y, g)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x, y, g)
        out[name] = batch * repeats / (time.perf_counter() - start)
    return out


def data_share_of_step(batch: int, repeats: int) -> float:
    """(augment standard + normalise) time / (that + forward/backward/step) for simple_cnn."""
    x = make_data(batch).images
    y = torch.randint(0, 10, (batch,))
    g = torch.Generator().manual_seed(0)
    standard, norm = aug.standard(), aug.Normalize(MEAN, STD, CPU)
    model, opt = fresh_model()
    loss_fn = torch.nn.CrossEntropyLoss()
    data_t = step_t = 0.0
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        xb = norm(standard(x, y, g)[0])
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), y).backward()
        opt.step()
        t2 = time.perf_counter()
        if i:  # first iteration is warm-up
            data_t += t1 - t0
            step_t += t2 - t1
    return data_t / (data_t + step_t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--layout", choices=["channels_last", "contiguous"], default="channels_last")
    args = p.parse_args()
    global CHANNELS_LAST
    CHANNELS_LAST = args.layout == "channels_last"
    torch.set_num_threads(args.threads)
    split = make_data(args.images)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.images} images, "
        f"batch {args.batch}, layout {args.layout}"
    )

    tut, ours = float("inf"), float("inf")
    for _ in range(args.rounds):
        tut = min(tut, tutorial_epoch(split, args.batch, args.workers))
        ours = min(ours, sweeplab_epoch(split, args.batch, aug.seed_tutorial())[0])
    print(
        f"1. flip+vflip+rotation epoch: tutorial {tut:.2f}s, sweeplab {ours:.2f}s, "
        f"ratio {ours / tut:.2f}x"
    )

    bare, loop = 0.0, 0.0
    for _ in range(args.rounds):
        bare = max(bare, bare_epoch(split, args.batch))
        loop = max(loop, sweeplab_epoch(split, args.batch, aug.none())[1])
    print(
        f"2. no augmentation: bare loop {bare:.0f} img/s, sweeplab {loop:.0f} img/s, "
        f"ratio {loop / bare:.3f}x"
    )

    rates: dict[str, float] = {}
    for _ in range(args.rounds):
        for k, v in augmentation_throughput(512, 20).items():
            rates[k] = max(rates.get(k, 0.0), v)
    print(
        "3. augmentation, uint8 32x32x3 batches of 512: "
        + ", ".join(f"{k} {v / 1000:.0f}k img/s" for k, v in rates.items())
    )
    share = data_share_of_step(args.batch, 20)
    print(f"   data (standard augment + normalise) = {100 * share:.1f}% of a simple_cnn step")


if __name__ == "__main__":
    main()

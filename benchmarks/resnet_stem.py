"""Cost of ResNet-18's stems on 32x32 images: training throughput, default vs cifar_stem.

    python benchmarks/resnet_stem.py [--batch 128] [--steps 5] [--device cpu]

Both models are timed side by side in one process (alternating rounds), on the same random
batches, with a plain SGD step: the ratio is what matters, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import time

import torch

from sweeplab.train.models import torchvision_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    models = {
        stem: torchvision_model("resnet18", 3, 10, cifar_stem=stem == "cifar").to(device)
        for stem in ("default", "cifar")
    }
    best = {stem: float("inf") for stem in models}
    for _ in range(args.rounds):
        for stem, model in models.items():
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            loss_fn = torch.nn.CrossEntropyLoss()
            loss_fn(model(x), y).backward()  # warm-up step, not timed
            start = time.perf_counter()
            for _ in range(args.steps):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[stem] = min(best[stem], (time.perf_counter() - start) / args.steps)
    for stem, sec in best.items():
        print(f"{stem:8s} stem: {args.batch / sec:8.1f} img/s  ({sec * 1000:.0f} ms/step)")
    print(f"cifar_stem costs {best['cifar'] / best['default']:.1f}x the default stem per image")


if __name__ == "__main__":
    main()

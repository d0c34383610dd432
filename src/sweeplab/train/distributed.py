"""One run across several processes with DistributedDataParallel (`trainer.strategy=ddp`).

    torchrun --nproc_per_node=N src/train.py trainer.strategy=ddp ...

Every rank holds the whole in-memory dataset and draws the same shuffled order (same seed), so
each global batch of `trainer.batch_size` images is the same on every rank; rank r trains on its
r-th slice of it. DDP averages the gradients, which equals the gradient of the global batch's
mean loss: the run matches a single-process run with the same batch size, up to float rounding
(BatchNorm statistics and augmentation randomness are per rank, as in any DDP run). Metric sums
are all-reduced, so every rank sees the same numbers and takes the same decisions (best epoch,
early stop); only rank 0 logs to MLflow and writes checkpoints. Backend: nccl on CUDA, else gloo.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sweeplab.config.schema import ConfigError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1 or dist.is_initialized()


SINGLE = Ranks()


def setup(strategy: str, device_name: str) -> Ranks:
    """Join the process group that torchrun describes in the environment (ddp), or not."""
    if strategy != "ddp":
        return SINGLE
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError(
            "trainer.strategy=ddp needs torchrun: "
            "torchrun --nproc_per_node=N src/train.py trainer.strategy=ddp ..."
        )
    ranks = Ranks(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    )
    cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return ranks


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """Each rank on its own GPU (by local rank); CPU ranks share the CPU."""
    if ranks.active and device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    return device


def check_batch(ranks: Ranks, batch_size: int) -> None:
    if batch_size % ranks.world:
        raise ConfigError(
            f"trainer.batch_size={batch_size} is the global batch and must divide evenly "
            f"between the {ranks.world} processes"
        )


def shard(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], ranks: Ranks) -> Iterator:
    """This rank's slice of every (global) batch; slices differ by at most one image."""
    if not ranks.active:
        yield from batches
        return
    for x, y in batches:
        yield x.tensor_split(ranks.world)[ranks.rank], y.tensor_split(ranks.world)[ranks.rank]


def all_reduce_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Sum over ranks, in place (a no-op in a single process)."""
    if ranks.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup(ranks: Ranks) -> None:
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()

"""A dataset's splits: uint8 tensors resident on the training device (`TensorSplit`), or files
decoded in DataLoader workers (`LoaderSplit`), both yielding the same uint8 batches."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from sweeplab.errors import SweeplabError


class DatasetError(SweeplabError, RuntimeError):
    """Data is missing, unreadable or does not fit the config; the message says where and why."""


Batch = tuple[torch.Tensor, torch.Tensor]


class TensorSplit:
    """Images (uint8, N×C×H×W) and labels (int64) held as tensors on one device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        assert images.dtype == torch.uint8 and images.ndim == 4, images.shape
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def to_device(self, device: torch.device) -> TensorSplit:
        return TensorSplit(self.images.to(device), self.labels.to(device))

    def head(self, n: int) -> torch.Tensor:
        """The first `n` images as they are stored (uint8), e.g. a model's input example."""
        return self.images[:n]

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return _num_batches(len(self), batch_size, drop_last)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        n = len(self)
        order = torch.randperm(n, generator=generator).to(self.labels.device) if shuffle else None
        for start in range(0, self.num_batches(batch_size, drop_last) * batch_size, batch_size):
            if order is None:
                yield (
                    self.images[start : start + batch_size],
                    self.labels[start : start + batch_size],
                )
            else:
                idx = order[start : start + batch_size]
                yield self.images[idx], self.labels[idx]


class LoaderSplit:
    """A map-style dataset of (uint8 image, label) read through DataLoader workers."""

    def __init__(self, dataset: Dataset, device: torch.device, num_workers: int):
        self.dataset, self.device, self.num_workers = dataset, device, num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def head(self, n: int) -> torch.Tensor:
        """The first `n` images, decoded and resized like every batch (uint8)."""
        return torch.stack([self.dataset[i][0] for i in range(min(n, len(self)))])

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return _num_batches(len(self), batch_size, drop_last)

    def batches(self, batch_size, shuffle=False, generator=None, drop_last=False):
        n = len(self)
        order = torch.randperm(n, generator=generator).tolist() if shuffle else range(n)
        loader = DataLoader(
            Subset(self.dataset, list(order)),
            batch_size=batch_size,
            drop_last=drop_last and n >= batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield (
                x.to(self.device, non_blocking=True),
                y.to(self.device, non_blocking=True),
            )


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    # drop_last only drops a *partial* last batch (a batch of 1 breaks BatchNorm in training).
    return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)


@dataclass
class Data:
    train: TensorSplit | LoaderSplit
    val: TensorSplit | LoaderSplit
    test: TensorSplit | LoaderSplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flips_keep_label: bool = True  # false where a mirrored image is another class (digits)


def split_train_val(
    n: int, val_fraction: float, train_subset: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of (train, val): val is a fixed random share of the train set, set by `seed`."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    if len(train) == 0:
        raise DatasetError(
            f"dataset.val_fraction={val_fraction} leaves no training images (all {n} go to "
            "validation): lower it"
        )
    if train_subset is not None:
        if train_subset > len(train):
            raise DatasetError(
                f"dataset.train_subset={train_subset} is larger than the {len(train)} training "
                f"examples left after the validation split (val_fraction={val_fraction})"
            )
        train = train[:train_subset]
    return train, val

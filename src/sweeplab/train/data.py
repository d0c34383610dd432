"""Datasets as uint8 tensors resident on the training device, split into train / val / test.

In-memory sets (CIFAR, MNIST, synthetic) are sliced batch by batch from a shuffled index: no
per-image PIL work and no DataLoader workers. ImageFolder (variable sizes, too big for memory)
decodes and resizes in DataLoader workers and yields the same uint8 batches, so augmentation and
normalisation are identical for every dataset (see augment.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
import torchvision
from filelock import FileLock
from omegaconf import DictConfig
from torch.utils.data import Dataset, Subset

from sweeplab.train.images import ImageFile, read_image_folders
from sweeplab.train.splits import Data, DatasetError, LoaderSplit, TensorSplit, split_train_val

log = logging.getLogger("sweeplab")


# --- torchvision datasets ----------------------------------------------------------------------

# name -> (torchvision class name, folder torchvision expects under root)
TORCHVISION_SETS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "mnist": ("MNIST", "MNIST/raw"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw"),
}


def torchvision_dataset(
    name: str,
    root: str,
    download: bool,
    val_fraction: float,
    train_subset: int | None,
    flips_keep_label: bool,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: list[float],
    std: list[float],
    *,
    device: torch.device,
    seed: int,
) -> Data:
    """Load a torchvision dataset once as uint8 tensors and move it to `device`."""
    if name not in TORCHVISION_SETS:
        raise DatasetError(f"dataset.name={name!r}: known names are {sorted(TORCHVISION_SETS)}")
    train_x, train_y, classes = _read_torchvision(name, root, download, train=True)
    test_x, test_y, _ = _read_torchvision(name, root, download, train=False)
    got = (len(classes), train_x.shape[1], train_x.shape[2])
    if got != (num_classes, in_channels, image_size):
        raise DatasetError(
            f"{name} has (num_classes, in_channels, image_size)={got} but the config says "
            f"{(num_classes, in_channels, image_size)}"
        )
    return in_memory(
        TensorSplit(train_x, train_y),
        TensorSplit(test_x, test_y),
        classes,
        mean,
        std,
        val_fraction,
        train_subset,
        device,
        seed,
        flips_keep_label,
    )


def in_memory(
    full_train: TensorSplit,
    test: TensorSplit,
    classes: list[str],
    mean: list[float],
    std: list[float],
    val_fraction: float,
    train_subset: int | None,
    device: torch.device,
    seed: int,
    flips_keep_label: bool = True,
) -> Data:
    """Carve the val split from the train set and put all three splits on `device`."""
    train_idx, val_idx = split_train_val(len(full_train), val_fraction, train_subset, seed)
    x, y = full_train.images, full_train.labels
    return Data(
        train=TensorSplit(x[train_idx], y[train_idx]).to_device(device),
        val=TensorSplit(x[val_idx], y[val_idx]).to_device(device),
        test=test.to_device(device),
        classes=classes,
        mean=tuple(mean),
        std=tuple(std),
        flips_keep_label=flips_keep_label,
    )


def _read_torchvision(name: str, root: str, download: bool, train: bool):
    cls_name, folder = TORCHVISION_SETS[name]
    expected = Path(root) / folder
    try:
        try:  # the files are usually there: read them without taking the download lock
            ds = _open_torchvision(name, root, train, download=False)
        except Exception:
            if not download:
                raise
            with download_lock(root, name):  # missing (or being written by another job)
                ds = _open_torchvision(name, root, train, download=True)
    except Exception as e:  # urllib/HTTP errors, "Dataset not found", corrupt archives, ...
        cause = f"{type(e).__name__}: {e}".splitlines()[0]
        if expected.is_dir() and any(expected.iterdir()):
            raise DatasetError(
                f"{name}: the files under {expected} could not be read (truncated or corrupt? "
                f"{cause}). Delete them and download again, or replace them."
            ) from None
        how = (
            "the download failed (offline?)"
            if download
            else "download is off (dataset.download=false)"
        )
        raise DatasetError(
            f"{name} is not available under {expected} and {how}: {cause}. "
            "Put the files there, point SWEEPLAB_DATA_DIR (or dataset.root) at their parent, "
            "or run once on a networked machine with dataset.download=true."
        ) from None
    data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(ds.data)
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    return images.contiguous(), labels, [str(c) for c in ds.classes]


def _open_torchvision(name: str, root: str, train: bool, download: bool):

    cls = getattr(torchvision.datasets, TORCHVISION_SETS[name][0])
    return cls(root=root, train=train, download=download)


def download_lock(root: str, name: str):
    """One process at a time downloads `name` into `root`: parallel sweep jobs (or two sweeps)
    wait here, then find the files there and skip the download."""

    Path(root).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(root) / f".sweeplab-{name}.lock"))


def fetch_dataset_files(dataset: DictConfig) -> None:
    """Make a torchvision dataset's files present before a run or sweep starts (called once, in
    the launching process), so its jobs only read them. Missing files are downloaded under
    `download_lock`; an unusable download ends here with the same DatasetError a job would give.
    Datasets whose files are there are not read (that is the job's work)."""
    if dataset.get("_target_") != f"{__name__}.torchvision_dataset" or not dataset.download:
        return
    name, root = str(dataset.name), str(dataset.root)
    if name not in TORCHVISION_SETS:
        return  # torchvision_dataset reports the unknown name with the valid ones
    folder = Path(root) / TORCHVISION_SETS[name][1]
    if folder.is_dir() and any(folder.iterdir()):
        return
    log.info("%s: downloading into %s once, before any job starts", name, root)
    made = [p for p in (Path(root), *Path(root).parents) if not p.exists()]
    try:
        for train in (True, False):
            _read_torchvision(name, root, download=True, train=train)
    except DatasetError:
        if made:  # the folders were made for this download alone: a failed launch leaves none
            shutil.rmtree(made[-1], ignore_errors=True)
        raise


# --- synthetic -----------------------------------------------------------------------------


def synthetic_dataset(
    name: str,
    num_train: int,
    num_test: int,
    val_fraction: float,
    train_subset: int | None,
    flips_keep_label: bool,
    noise: float,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: list[float],
    std: list[float],
    *,
    device: torch.device,
    seed: int,
) -> Data:
    """Per-class random templates blended with per-image noise: learnable, made on the fly."""
    if not 0 <= noise <= 1:
        raise DatasetError(f"dataset.noise={noise} must be in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    shape = (in_channels, image_size, image_size)
    templates = torch.rand((num_classes, *shape), generator=g)

    def make(n: int) -> TensorSplit:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        pixels = (1 - noise) * templates[labels] + noise * torch.rand((n, *shape), generator=g)
        return TensorSplit((pixels * 255).round().to(torch.uint8), labels)

    classes = [f"class_{i}" for i in range(num_classes)]
    return in_memory(
        make(num_train),
        make(num_test),
        classes,
        mean,
        std,
        val_fraction,
        train_subset,
        device,
        seed,
        flips_keep_label,
    )


# --- image folders -------------------------------------------------------------------------


def imagefolder_dataset(
    name: str,
    root: str,
    val_fraction: float,
    test_fraction: float,
    train_subset: int | None,
    flips_keep_label: bool,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: list[float],
    std: list[float],
    num_workers: int = 2,
    *,
    device: torch.device,
    seed: int,
) -> Data:
    """root/{train,val,test}/<class>/*; missing val/ or test/ are carved from train."""
    base = Path(root)
    if in_channels not in (1, 3):
        raise DatasetError(f"dataset.in_channels={in_channels}: image folders give 1 or 3")
    train_dir, full, splits = read_image_folders(base, ImageFile(in_channels, image_size))
    n = len(full)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    taken = 0
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        if split not in splits:
            k = max(1, round(n * fraction))
            splits[split] = Subset(full, perm[taken : taken + k])
            taken += k
    train_idx = perm[taken:]
    if not train_idx:
        raise DatasetError(
            f"dataset.val_fraction={val_fraction} and dataset.test_fraction={test_fraction} "
            f"leave no training images of the {n} under {train_dir}: lower them"
        )
    if train_subset is not None:
        if train_subset > len(train_idx):
            raise DatasetError(
                f"dataset.train_subset={train_subset} is larger than the {len(train_idx)} "
                "training images left after the val/test splits"
            )
        train_idx = train_idx[:train_subset]
    if len(full.classes) != num_classes:
        raise DatasetError(f"{train_dir} has {len(full.classes)} classes, config {num_classes}")

    def wrap(ds: Dataset) -> LoaderSplit:
        return LoaderSplit(ds, device, num_workers)

    return Data(
        train=wrap(Subset(full, train_idx)),
        val=wrap(splits["val"]),
        test=wrap(splits["test"]),
        classes=list(full.classes),
        mean=tuple(mean),
        std=tuple(std),
        flips_keep_label=flips_keep_label,
    )

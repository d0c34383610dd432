"""Tiny random datasets written in torchvision's own on-disk formats, so that the real loading
code of `dataset=cifar10 / cifar100 / fashion_mnist` runs in tests without a download.

- CIFAR-10 / CIFAR-100: the pickled "python version" batches (dicts with `data` as N x 3072
  uint8 rows, `labels` / `fine_labels`, and the meta file with the class names).
- Fashion-MNIST: the four idx files (big-endian header, then raw uint8) under FashionMNIST/raw.

torchvision checks CIFAR files against the md5 sums of the real archives; `patch_torchvision`
replaces that check with "the file exists" (tests only: in-process through monkeypatch, in
subprocesses through a sitecustomize.py that `subprocess_env` puts on PYTHONPATH). With
SWEEPLAB_FAKE_DOWNLOAD_LOG set there, CIFAR-10's download writes the fake files instead of
fetching, after appending its pid to that file and sleeping SWEEPLAB_FAKE_DOWNLOAD_SECONDS:
how the tests count downloads.
"""

from __future__ import annotations

import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
SIZES = {"train": 200, "test": 50}  # per split; CIFAR-10's train is 5 batches of 40


def _images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path) -> Path:
    folder = Path(root) / "cifar-10-batches-py"
    per_batch = SIZES["train"] // 5
    for i in range(1, 6):
        data, labels = _images(per_batch, (3072,), seed=i)
        _pickle(folder / f"data_batch_{i}", {"data": data, "labels": labels})
    data, labels = _images(SIZES["test"], (3072,), seed=0)
    _pickle(folder / "test_batch", {"data": data, "labels": labels})
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_CLASSES})
    return folder


def write_cifar100(root: Path) -> Path:
    folder = Path(root) / "cifar-100-python"
    for split, seed in (("train", 1), ("test", 0)):
        data, _ = _images(SIZES[split], (3072,), seed)
        fine = np.random.default_rng(seed).integers(0, 100, SIZES[split]).tolist()
        _pickle(
            folder / split,
            {"data": data, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]},
        )
    _pickle(folder / "meta", {"fine_label_names": [f"class{i:02d}" for i in range(100)]})
    return folder


def _idx(path: Path, array: np.ndarray) -> None:
    """The idx format: 0, 0, dtype code (0x08 = uint8), number of dims, sizes as >i4, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path) -> Path:
    folder = Path(root) / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for split, prefix, seed in (("train", "train", 1), ("test", "t10k", 0)):
        images, labels = _images(SIZES[split], (28, 28), seed)
        _idx(folder / f"{prefix}-images-idx3-ubyte", images)
        _idx(folder / f"{prefix}-labels-idx1-ubyte", np.array(labels))
    return folder


WRITERS = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "fashion_mnist": write_fashion_mnist,
}


def exists_check(fpath, md5=None) -> bool:
    return os.path.isfile(fpath)


def patch_torchvision(setattr_=setattr) -> None:
    """CIFAR's md5 check -> existence check; with SWEEPLAB_FAKE_DOWNLOAD_LOG, a counting,
    sleeping CIFAR-10 download that writes the fake files. `setattr_` is monkeypatch.setattr
    in-process (undone after the test), plain setattr in a test's subprocess."""
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as cifar

    setattr_(cifar, "check_integrity", exists_check)
    log = os.environ.get("SWEEPLAB_FAKE_DOWNLOAD_LOG")
    if log:

        def download(self) -> None:
            if self._check_integrity():
                return
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(float(os.environ.get("SWEEPLAB_FAKE_DOWNLOAD_SECONDS", "2")))
            write_cifar10(Path(self.root))

        setattr_(tvd.CIFAR10, "download", download)


OFFLINE = """
import urllib.error, urllib.request
def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
urllib.request.urlopen = _offline
"""


def subprocess_env(tmp: Path, offline: bool = False, **extra: str) -> dict[str, str]:
    """os.environ plus a PYTHONPATH whose sitecustomize.py calls patch_torchvision() at the
    start of every Python process of the test (the launcher and its joblib workers alike);
    with `offline`, every download fails as it does without a network."""
    site = Path(tmp) / "sitecustomize"
    site.mkdir(parents=True, exist_ok=True)
    code = "from helpers import fake_datasets\nfake_datasets.patch_torchvision()\n"
    (site / "sitecustomize.py").write_text(code + (OFFLINE if offline else ""))
    tests = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (str(site), tests, os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": path, **extra}

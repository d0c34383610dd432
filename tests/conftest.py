"""Shared fixtures: configs composed with hydra.compose and shrunk for a 2-core CPU.

MNIST comes from $SWEEPLAB_DATA_DIR when it is set (CI points it at ../shared/data), else it is
downloaded once through torchvision into the user's cache ($XDG_CACHE_HOME/sweeplab, else
~/.cache/sweeplab). CIFAR-10/100 and Fashion-MNIST are tiny random files in torchvision's own
formats (helpers/fake_datasets.py). One MLflow sqlite store serves the whole session (creating
one costs seconds); each test logs into its own experiment so tests never see each other's runs.
Helpers that are not fixtures live in tests/helpers/.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import torchvision
from omegaconf import DictConfig

from helpers import fake_datasets
from helpers.config import DATA_ENV, compose_cfg, mnist_cache
from helpers.runs import store_client
from sweeplab.train.data import download_lock


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """A folder holding MNIST/raw: $SWEEPLAB_DATA_DIR, else the user's cache (downloaded once,
    under the lock a sweep uses). If neither works the session stops with one line."""
    root = os.environ.get(DATA_ENV)
    if root:
        if not (Path(root) / "MNIST" / "raw").is_dir():
            pytest.exit(f"{DATA_ENV}={root} holds no MNIST/raw (torchvision layout)", 4)
        return Path(root).resolve()
    cache = mnist_cache()
    try:
        with download_lock(str(cache), "mnist"):
            for train in (True, False):
                torchvision.datasets.MNIST(str(cache), train=train, download=True)
    except Exception as e:
        cause = f"{type(e).__name__}: {e}".splitlines()[0].rstrip(":")
        pytest.exit(
            f"MNIST is needed: {DATA_ENV} is not set and torchvision's MNIST download into "
            f"{cache} failed ({cause}). Set {DATA_ENV} to a folder holding MNIST/raw "
            "(torchvision layout), e.g. SWEEPLAB_DATA_DIR=../shared/data",
            4,
        )
    return cache


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory) -> Path:
    """Tiny CIFAR-10, CIFAR-100 and Fashion-MNIST in torchvision's on-disk formats."""

    root = tmp_path_factory.mktemp("fake-data")
    for write in fake_datasets.WRITERS.values():
        write(root)
    return root


@pytest.fixture
def fake_torchvision(monkeypatch):
    """torchvision's CIFAR md5 check becomes an existence check, for this test only."""
    from helpers.fake_datasets import patch_torchvision

    patch_torchvision(monkeypatch.setattr)


@pytest.fixture(scope="session")
def store_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlruns")


@pytest.fixture
def small_cfg(store_root, tmp_path):
    """compose + shrink: CPU, 1 epoch, few images, a fresh experiment in the session store."""
    experiment = f"test-{uuid.uuid4().hex[:8]}"

    def make(*overrides: str) -> DictConfig:
        # A small synthetic set unless the test picks another dataset.
        synthetic = (
            []
            if any(o.startswith("dataset=") for o in overrides)
            else [
                "dataset=synthetic",
                "dataset.num_train=320",
                "dataset.num_test=100",
            ]
        )
        return compose_cfg(
            [
                *synthetic,
                "trainer.epochs=1",
                "trainer.batch_size=32",
                "trainer.device=cpu",
                f"tracking.root={store_root}",
                f"tracking.experiment={experiment}",
                f"output_dir={tmp_path / 'out'}",
                *overrides,
            ]
        )

    return make


@pytest.fixture
def client(store_root):
    return store_client(store_root)


@pytest.fixture
def image_folder(tmp_path, data_dir) -> Path:
    """A real image folder: 3 MNIST digit classes as PNG files, train/ and val/ splits."""
    mnist = torchvision.datasets.MNIST(str(data_dir), train=True, download=False)
    root = tmp_path / "digits"
    counts: dict[tuple[str, int], int] = {}
    for image, label in zip(mnist.data[:400], mnist.targets[:400], strict=True):
        label = int(label)
        if label > 2:
            continue
        split = "val" if counts.get(("val", label), 0) < 8 else "train"
        counts[(split, label)] = counts.get((split, label), 0) + 1
        folder = root / split / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        torchvision.io.write_png(image[None], str(folder / f"{counts[(split, label)]}.png"))
    return root

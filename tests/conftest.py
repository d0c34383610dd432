"""Shared fixtures: configs composed with hydra.compose and shrunk for a 2-core CPU.

MNIST comes from $SWEEPLAB_DATA_DIR when it is set (CI points it at ../shared/data), else it is
downloaded once through torchvision into the user's cache ($XDG_CACHE_HOME/sweeplab, else
~/.cache/sweeplab). CIFAR-10/100 and Fashion-MNIST are tiny random files in torchvision's own
formats (fake_datasets.py). One MLflow sqlite store serves the whole session (creating one costs
seconds); each test logs into its own experiment so tests never see each other's runs.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TRAIN_SCRIPT = REPO / "src" / "train.py"

# Every option of every group, read from conf/ so a new option file is tested automatically.
GROUPS = {
    g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
    for g in ("dataset", "model", "optimizer", "scheduler", "augmentation")
}


def compose_cfg(overrides: list[str] = ()) -> DictConfig:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


DATA_ENV = "SWEEPLAB_DATA_DIR"


def mnist_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweeplab"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """A folder holding MNIST/raw: $SWEEPLAB_DATA_DIR, else the user's cache (downloaded once,
    under the lock a sweep uses). If neither works the session stops with one line."""
    import torchvision

    from sweeplab.train.data import download_lock

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
    from fake_datasets import WRITERS

    root = tmp_path_factory.mktemp("fake-data")
    for write in WRITERS.values():
        write(root)
    return root


@pytest.fixture
def fake_torchvision(monkeypatch):
    """torchvision's CIFAR md5 check becomes an existence check, for this test only."""
    from fake_datasets import patch_torchvision

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


def store_client(root: Path):
    """An MlflowClient on the sqlite store under `root` (tracking.root)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")


@pytest.fixture
def client(store_root):
    return store_client(store_root)


@pytest.fixture
def image_folder(tmp_path, data_dir) -> Path:
    """A real image folder: 3 MNIST digit classes as PNG files, train/ and val/ splits."""
    import torchvision

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


def job_runs(client, experiment_id: str, query: str = "") -> list:
    """The runs of jobs in an experiment: a sweep's parent run (tag sweeplab.role) left out."""
    runs = client.search_runs([experiment_id], query)
    return [r for r in runs if r.data.tags.get("sweeplab.role") != "sweep"]


def per_class(client, run_id: str) -> dict[str, list]:
    """A run's per-class test table (logged with log_table) as {column: values}."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "metrics/test_per_class.json", tmp)
        table = json.loads(Path(path).read_text())
    return {c: [row[i] for row in table["data"]] for i, c in enumerate(table["columns"])}

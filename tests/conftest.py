"""Shared fixtures: configs composed with hydra.compose and shrunk for a 2-core CPU.

MNIST comes from $SWEEPLAB_DATA_DIR (CI points it at ../shared/data); nothing is downloaded.
One MLflow sqlite store serves the whole session (creating one costs seconds); each test logs
into its own experiment so tests never see each other's runs.
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


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = os.environ.get("SWEEPLAB_DATA_DIR")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.fail(
            "MNIST is needed: set SWEEPLAB_DATA_DIR to a folder holding MNIST/raw "
            "(torchvision layout), e.g. SWEEPLAB_DATA_DIR=../shared/data"
        )
    return Path(root).resolve()


@pytest.fixture(scope="session")
def store_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlruns")


@pytest.fixture
def small_cfg(store_root, tmp_path):
    """compose + shrink: CPU, 1 epoch, few images, a fresh experiment in the session store."""
    experiment = f"test-{uuid.uuid4().hex[:8]}"

    def make(*overrides: str) -> DictConfig:
        # A small synthetic set unless the test picks another dataset.
        synthetic = [] if any(o.startswith("dataset=") for o in overrides) else [
            "dataset=synthetic", "dataset.num_train=320", "dataset.num_test=100",
        ]  # fmt: skip
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
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store_root}/mlflow.db")


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

"""Data: real MNIST as device tensors, fixed val split, whole-set batching, image folders;
CIFAR-10/100 and Fashion-MNIST through torchvision's own file formats; one download at a time."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from helpers import fake_datasets
from helpers.config import REPO, compose_cfg
from sweeplab.train.loop import evaluate
from sweeplab.train.splits import DatasetError, TensorSplit, split_train_val
from sweeplab.train.trainer import build

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist(data_dir):
    return build(compose_cfg(["dataset=mnist"]).dataset, device=CPU, seed=0)


def test_mnist_loads_as_uint8_tensors_with_a_val_split(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (54000, 6000, 10000)
    assert mnist.train.images.dtype == torch.uint8
    assert mnist.train.images.shape[1:] == (1, 28, 28)
    assert mnist.classes[0].startswith("0") and len(mnist.classes) == 10
    assert set(mnist.test.labels.unique().tolist()) == set(range(10))


def test_val_split_is_fixed_by_seed_and_disjoint_from_train():
    train, val = split_train_val(1000, 0.1, None, seed=7)
    train2, val2 = split_train_val(1000, 0.1, None, seed=7)
    _, val3 = split_train_val(1000, 0.1, None, seed=8)
    assert torch.equal(val, val2) and torch.equal(train, train2)
    assert not torch.equal(val, val3)
    assert len(val) == 100 and len(set(train.tolist()) | set(val.tolist())) == 1000


def test_train_subset_caps_train_only_and_refuses_too_large():
    train, val = split_train_val(1000, 0.1, 250, seed=0)
    assert (len(train), len(val)) == (250, 100)
    with pytest.raises(DatasetError, match="train_subset=901"):
        split_train_val(1000, 0.1, 901, seed=0)


def test_shuffled_batches_cover_every_sample_once():
    split = TensorSplit(torch.zeros(103, 1, 2, 2, dtype=torch.uint8), torch.arange(103))
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in split.batches(10, shuffle=True, generator=gen)])
    assert sorted(seen.tolist()) == list(range(103)) and seen.tolist() != list(range(103))
    dropped = [len(y) for _, y in split.batches(10, shuffle=True, drop_last=True)]
    assert dropped == [10] * 10


def test_evaluate_scores_every_image_not_just_one_batch():
    n, k = 1003, 4
    split = TensorSplit(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n) % k)

    class Constant(torch.nn.Module):  # always predicts class 1
        def forward(self, x):
            return torch.tensor([0.0, 1.0, 0.0, 0.0]).expand(len(x), -1)

    loss, acc, confusion = evaluate(
        Constant(),
        split.batches(300),
        normalize=lambda x: x.float(),
        loss_fn=torch.nn.CrossEntropyLoss(),
        num_classes=k,
        device=CPU,
    )
    assert int(confusion.sum()) == n
    assert acc == pytest.approx(int((torch.arange(n) % k == 1).sum()) / n)
    assert confusion[:, 1].sum() == n


def test_synthetic_has_the_configured_shapes():
    cfg = compose_cfg(
        [
            "dataset=synthetic",
            "dataset.in_channels=1",
            "dataset.image_size=16",
            "dataset.mean=[0.5]",
            "dataset.std=[0.25]",
        ]
    )
    data = build(cfg.dataset, device=CPU, seed=0)
    assert data.train.images.shape[1:] == (1, 16, 16)
    assert len(data.train) + len(data.val) == cfg.dataset.num_train


def test_image_folder_loads_through_workers_as_uint8_batches(image_folder):
    cfg = compose_cfg(
        [
            "dataset=imagefolder",
            f"dataset.root={image_folder}",
            "dataset.image_size=32",
            "dataset.num_workers=1",
        ]
    )
    assert cfg.dataset.num_classes == 3  # counted from the folder
    data = build(cfg.dataset, device=CPU, seed=0)
    assert data.classes == ["digit0", "digit1", "digit2"]
    assert len(data.val) == 24  # from val/, 8 per class
    x, y = next(iter(data.train.batches(16, shuffle=True)))
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 32, 32)
    assert y.max() <= 2


def test_image_folder_with_one_class_is_refused(image_folder, tmp_path):
    import shutil

    one = tmp_path / "one"
    shutil.copytree(image_folder / "train" / "digit0", one / "digit0")
    cfg = compose_cfg(["dataset=imagefolder", f"dataset.root={one}"])
    with pytest.raises(DatasetError, match="1 class"):
        build(cfg.dataset, device=CPU, seed=0)


def test_image_folder_without_images_is_refused(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "empty" / c).mkdir(parents=True)
    cfg = compose_cfg(["dataset=imagefolder", f"dataset.root={tmp_path / 'empty'}"])
    with pytest.raises(DatasetError, match="empty"):
        build(cfg.dataset, device=CPU, seed=0)


# --- torchvision's own file formats through dataset=... (helpers/fake_datasets.py) ---


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("cifar10", (3, 32, 32), fake_datasets.CIFAR10_CLASSES),
        ("cifar100", (3, 32, 32), [f"class{i:02d}" for i in range(100)]),
        (
            "fashion_mnist",
            (1, 28, 28),
            [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        ),
    ],
)
def test_torchvision_formats_load_through_the_dataset_option(
    name, shape, classes, fake_data_root, fake_torchvision
):
    cfg = compose_cfg([f"dataset={name}", f"dataset.root={fake_data_root}"])
    data = build(cfg.dataset, device=CPU, seed=0)
    train_n, test_n = fake_datasets.SIZES["train"], fake_datasets.SIZES["test"]
    assert (len(data.train), len(data.val), len(data.test)) == (
        train_n * 0.9,
        train_n * 0.1,
        test_n,
    )
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == shape
        assert split.labels.dtype == torch.int64 and split.labels.max() < len(classes)
    assert data.classes == classes
    # pixel for pixel what the files hold: CIFAR rows are R, G, B planes of 32x32
    written, labels = fake_datasets._images(test_n, (3072,) if shape[0] == 3 else shape[1:], 0)
    assert torch.equal(data.test.images, torch.from_numpy(written).view(test_n, *shape))
    if name != "cifar100":  # CIFAR-100's fine labels are drawn by a generator of their own
        assert data.test.labels.tolist() == labels


def test_parallel_loads_of_a_missing_dataset_download_it_once(tmp_path, monkeypatch):
    log = tmp_path / "downloads.log"
    monkeypatch.setenv("SWEEPLAB_FAKE_DOWNLOAD_LOG", str(log))
    monkeypatch.setenv("SWEEPLAB_FAKE_DOWNLOAD_SECONDS", "1")
    fake_datasets.patch_torchvision(monkeypatch.setattr)
    cfg = compose_cfg(["dataset=cifar10", f"dataset.root={tmp_path / 'data'}"])
    results = []

    def load():
        results.append(len(build(cfg.dataset, device=CPU, seed=0).test))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [fake_datasets.SIZES["test"]] * 3
    assert len(log.read_text().splitlines()) == 1  # the others waited on the lock, then read


def _pytest_without_data_dir(tmp_path: Path, sitecustomize: str) -> subprocess.CompletedProcess:
    """README's test command (one MNIST test of it) with SWEEPLAB_DATA_DIR unset, a fresh
    cache, and `sitecustomize` run first in the process (to point the download somewhere)."""
    env = {k: v for k, v in os.environ.items() if k != "SWEEPLAB_DATA_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(sitecustomize)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    test = "tests/test_data.py::test_mnist_loads_as_uint8_tensors_with_a_val_split"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_without_data_dir_mnist_is_downloaded_once_into_the_user_cache(tmp_path, data_dir):
    """torchvision's real download code, from a local server holding the official .gz files."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(data_dir / "MNIST/raw"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        proc = _pytest_without_data_dir(
            tmp_path,
            f"import torchvision.datasets\ntorchvision.datasets.MNIST.mirrors = {[mirror]}\n",
        )
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stdout[-3000:]
    raw = tmp_path / "cache" / "sweeplab" / "MNIST" / "raw"
    assert {"train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"} <= {p.name for p in raw.iterdir()}


def test_without_data_dir_and_offline_the_session_stops_with_one_line(tmp_path):
    proc = _pytest_without_data_dir(tmp_path, fake_datasets.OFFLINE)
    assert proc.returncode == 4, proc.stdout[-2000:]
    (line,) = [x for x in proc.stdout.splitlines() if "MNIST is needed" in x]
    assert "SWEEPLAB_DATA_DIR is not set" in line and str(tmp_path / "cache") in line
    assert "download" in line and "Traceback" not in proc.stdout


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_grey_images_are_scaled_not_clamped(tmp_path, channels):
    """Reliability 20: convert('L') clamped a 16-bit PNG (99.7 % of pixels read as 255)."""
    import numpy as np
    from PIL import Image

    from sweeplab.train.images import ImageFile

    wide = (np.arange(64 * 64, dtype=np.float64).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(wide).save(path)  # uint16: mode I;16
    assert Image.open(path).mode in ("I", "I;16")  # PIL reads it back as 16 bits
    x = ImageFile(channels, 64)(path)
    expected = torch.from_numpy(np.rint(wide * (255 / 65535)).astype(np.uint8))
    assert x.shape == (channels, 64, 64)
    assert torch.equal(x[0], expected) and (x == 255).float().mean() < 0.01


def test_a_broken_image_in_a_training_folder_is_named_in_one_line(small_cfg, image_folder):
    """Reliability 20: a truncated JPEG was a DataLoader-worker traceback naming no file."""
    from sweeplab.job import train
    from sweeplab.train.images import UnreadableImage

    bad = image_folder / "train" / "digit1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF truncated")
    cfg = small_cfg(
        "dataset=imagefolder",
        f"dataset.root={image_folder}",
        "dataset.in_channels=1",
        "dataset.mean=[0.13]",
        "dataset.std=[0.31]",
        "dataset.image_size=28",
        "dataset.num_workers=1",
    )  # a real worker process
    with pytest.raises(UnreadableImage) as e:
        train(cfg)
    message = str(e.value)
    assert message.startswith(f"{bad}: not a readable image (") and "\n" not in message

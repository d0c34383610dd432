"""Data: real MNIST as device tensors, fixed val split, whole-set batching, image folders."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg
from sweeplab.data import DatasetError, TensorSplit, split_train_val
from sweeplab.loop import evaluate
from sweeplab.runner import build

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
        Constant(), split.batches(300), normalize=lambda x: x.float(),
        loss_fn=torch.nn.CrossEntropyLoss(), num_classes=k, device=CPU,
    )  # fmt: skip
    assert int(confusion.sum()) == n
    assert acc == pytest.approx(int((torch.arange(n) % k == 1).sum()) / n)
    assert confusion[:, 1].sum() == n


def test_synthetic_has_the_configured_shapes():
    cfg = compose_cfg(["dataset=synthetic", "dataset.in_channels=1", "dataset.image_size=16",
                       "dataset.mean=[0.5]", "dataset.std=[0.25]"])  # fmt: skip
    data = build(cfg.dataset, device=CPU, seed=0)
    assert data.train.images.shape[1:] == (1, 16, 16)
    assert len(data.train) + len(data.val) == cfg.dataset.num_train


def test_image_folder_loads_through_workers_as_uint8_batches(image_folder):
    cfg = compose_cfg(["dataset=imagefolder", f"dataset.root={image_folder}",
                       "dataset.image_size=32", "dataset.num_workers=1"])  # fmt: skip
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

"""Batched augmentation: right shapes and ranges, per-sample randomness, reproducible."""

from __future__ import annotations

import pytest
import torch

from conftest import GROUPS, compose_cfg
from sweeplab import augment
from sweeplab.runner import build


def _batch(n=64, c=3, size=32, seed=0):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip


@pytest.mark.parametrize("option", GROUPS["augmentation"])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_a_valid_image_batch(option, channels):
    aug = build(compose_cfg([f"augmentation={option}"]).augmentation)
    x = _batch(c=channels)
    out = aug(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    as_float = augment.to_float(out)
    assert as_float.min() >= 0 and as_float.max() <= 1
    # Same generator seed -> same result (reproducible runs).
    again = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


@pytest.mark.parametrize("option", [o for o in GROUPS["augmentation"] if o != "none"])
def test_randomness_is_per_sample_not_per_batch(option):
    aug = build(compose_cfg([f"augmentation={option}"]).augmentation)
    # 64 copies of one image: a per-batch transform would give 64 identical outputs.
    x = _batch(n=1).expand(64, -1, -1, -1).contiguous()
    out = augment.to_float(aug(x, torch.Generator().manual_seed(3)))
    distinct = {tuple(img.flatten()[::7].mul(255).round().int().tolist()) for img in out}
    assert len(distinct) > 8


def test_none_is_identity():
    x = _batch()
    assert torch.equal(augment.none()(x, None), x)


def test_flip_flips_exactly_the_chosen_images():
    x = _batch(n=200)
    out = augment.random_flip(x, 0.5, 3, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = _batch(n=50, size=8)
    out = augment.random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for o, p in zip(out, padded, strict=True):
        windows = [p[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(o, w) for w in windows)
    # the centre (no shift) is one of 25 choices: most crops must be shifted
    assert sum(torch.equal(o, i) for o, i in zip(out, x, strict=True)) < 15


def test_rotation_by_zero_degrees_keeps_the_image():
    x = _batch(n=4)
    out = augment.affine(x, augment._rotation_theta(torch.zeros(4)))
    assert torch.allclose(out, augment.to_float(x), atol=1e-5)


def test_normalize_uses_dataset_statistics():
    norm = augment.Normalize([0.5], [0.25], torch.device("cpu"))
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    assert norm(x).flatten().tolist() == pytest.approx([-2.0, 2.0])


def test_crop_with_flip_is_a_mirrored_or_plain_window():
    x = _batch(n=100, size=8)
    out = augment.random_crop(x, 2, torch.Generator().manual_seed(0), hflip_p=0.5)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    mirrored = 0
    for o, p in zip(out, padded, strict=True):
        windows = [p[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(o, w) for w in windows)
        flipped = any(torch.equal(o, w.flip(2)) for w in windows)
        assert plain or flipped
        mirrored += flipped and not plain
    assert 25 < mirrored < 75

"""Batched augmentation: right shapes and ranges, per-sample randomness, reproducible; flips
only where the dataset allows them; mixup/cutmix soft targets that match the mixed pixels."""

from __future__ import annotations

import pytest
import torch

from conftest import GROUPS, compose_cfg
from sweeplab import augment, mixing
from sweeplab.runner import build


def _batch(n=64, c=3, size=32, seed=0):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip


@pytest.mark.parametrize("option", GROUPS["augmentation"])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_a_valid_image_batch(option, channels):
    aug = build(compose_cfg([f"augmentation={option}"]).augmentation)
    x, y = _batch(c=channels), torch.arange(64) % 10
    out, target = aug(x, y, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    as_float = augment.to_float(out)
    assert as_float.min() >= 0 and as_float.max() <= 1
    if target.ndim == 2:  # mixup / cutmix: class probabilities
        assert target.shape == (64, 10) and torch.allclose(target.sum(1), torch.ones(64))
    else:
        assert torch.equal(target, y)
    # Same generator seed -> same result (reproducible runs).
    again, target_again = aug(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and torch.equal(target, target_again)


@pytest.mark.parametrize("option", [o for o in GROUPS["augmentation"] if o != "none"])
def test_randomness_is_per_sample_not_per_batch(option):
    aug = build(compose_cfg([f"augmentation={option}"]).augmentation)
    # 64 copies of one image: a per-batch transform would give 64 identical outputs.
    x = _batch(n=1).expand(64, -1, -1, -1).contiguous()
    if option in ("mixup", "cutmix"):  # mixing copies of one image changes nothing: mix two
        x[::2] = _batch(n=1, seed=5)
    out = augment.to_float(aug(x, torch.arange(64) % 2, torch.Generator().manual_seed(3))[0])
    distinct = {tuple(img.flatten()[::7].mul(255).round().int().tolist()) for img in out}
    assert len(distinct) > 8


def test_none_is_identity():
    x, y = _batch(), torch.arange(64)
    out, target = augment.none()(x, y, None)
    assert torch.equal(out, x) and torch.equal(target, y)


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


@pytest.mark.parametrize("option", ["standard", "seed_tutorial", "mixup", "cutmix"])
def test_flips_only_where_the_dataset_says_mirrored_images_keep_their_class(option):
    flip_keys = [
        k
        for k in ("hflip_p", "vflip_p")
        if k in compose_cfg([f"augmentation={option}"]).augmentation
    ]
    for dataset, expected in [("cifar10", 0.5), ("fashion_mnist", 0.5), ("mnist", 0.0)]:
        aug_cfg = compose_cfg([f"augmentation={option}", f"dataset={dataset}"]).augmentation
        assert [aug_cfg[k] for k in flip_keys] == [expected] * len(flip_keys), dataset
    # an explicit value is the user's choice, even on MNIST
    forced = compose_cfg([f"augmentation={option}", "dataset=mnist", "augmentation.hflip_p=0.3"])
    assert forced.augmentation.hflip_p == 0.3


def test_standard_on_mnist_crops_and_never_mirrors():
    aug = build(compose_cfg(["augmentation=standard", "dataset=mnist"]).augmentation)
    x = _batch(n=100, c=1, size=8)
    out, _ = aug(x, torch.zeros(100, dtype=torch.long), torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for o, p in zip(out, padded, strict=True):
        windows = [p[:, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(o, w) for w in windows)  # a plain window, never a mirrored one


def _constant_images(n: int) -> torch.Tensor:
    """Image i is filled with the value 2 * i: which image a pixel came from is readable."""
    return (torch.arange(n, dtype=torch.uint8) * 2).view(n, 1, 1, 1).expand(n, 3, 8, 8).clone()


def test_mixup_blends_each_image_with_one_partner_by_its_own_ratio():
    n = 100
    x, y = _constant_images(n), torch.arange(n)  # one class per image: targets name the partner
    out, target = mixing.mixup(n, alpha=0.8, padding=0, hflip_p=0)(
        x, y, torch.Generator().manual_seed(0)
    )
    lam = target[torch.arange(n), y]
    assert ((target > 0).sum(1) <= 2).all() and torch.allclose(target.sum(1), torch.ones(n))
    partner = torch.where(lam < 1, (target - torch.diag(lam)).argmax(1), y)
    expected = lam * (2 * y) / 255 + (1 - lam) * (2 * partner) / 255
    assert torch.allclose(out[:, 0, 0, 0], expected, atol=1e-5)
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out))  # the whole image is blended
    assert len(set(lam.round(decimals=4).tolist())) > 90  # a ratio per image, not per batch


def test_cutmix_pastes_a_box_whose_area_is_the_partners_weight():
    n = 100
    x, y = _constant_images(n), torch.arange(n)
    out, target = mixing.cutmix(n, alpha=1.0, padding=0, hflip_p=0)(
        x, y, torch.Generator().manual_seed(0)
    )
    own = (out == x).flatten(1).float().mean(1)  # share of pixels still from the image itself
    lam = target[torch.arange(n), y]
    moved = lam < 1  # images whose partner is another image
    assert torch.allclose(own[moved], lam[moved])
    assert moved.sum() > 50 and len(set(lam[moved].tolist())) > 20


@pytest.mark.parametrize("alpha", [0.2, 0.8, 1.0, 2.0])
def test_beta_sampler_matches_torch_distributions(alpha):
    n = 20000
    ours = mixing.beta(alpha, n, torch.Generator().manual_seed(0), "cpu").sort().values
    torch.manual_seed(0)
    ref = torch.distributions.Beta(alpha, alpha).sample((n,)).sort().values
    # two-sample Kolmogorov-Smirnov statistic: the critical value at p = 0.001 is 0.0195
    grid = torch.linspace(0, 1, 2001)
    cdf = lambda s: torch.searchsorted(s, grid, right=True) / n  # noqa: E731
    assert (cdf(ours) - cdf(ref)).abs().max() < 0.0195
    assert ours.min() >= 0 and ours.max() <= 1

"""Batched augmentation: right shapes and ranges, per-sample randomness, reproducible; flips
only where the dataset allows them; mixup/cutmix soft targets that match the mixed pixels."""

from __future__ import annotations

import pytest
import torch

from helpers.config import GROUPS, compose_cfg
from sweeplab.train import augment, mixing
from sweeplab.train.trainer import build


def _batch(n=64, c=3, size=32, seed=0):
    return torch.randint(
        0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


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


# --- each batched op against torchvision's own op, same parameters ------------------------------


def _tv_cases():
    """(op name, our magnitude, torchvision's call on one float image) as RandAugment uses
    them (torchvision.transforms.RandAugment._apply_op)."""
    import math

    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    bil = InterpolationMode.BILINEAR

    def affine(img, **kw):
        args = {"angle": 0.0, "translate": [0, 0], "scale": 1.0, "shear": [0.0, 0.0]}
        return TF.affine(img, **{**args, **kw}, interpolation=bil)

    shear = math.degrees(math.atan(0.3))
    return [
        ("brightness", 0.3, lambda i: TF.adjust_brightness(i, 1.3)),
        ("color", -0.4, lambda i: TF.adjust_saturation(i, 0.6)),
        ("contrast", 0.3, lambda i: TF.adjust_contrast(i, 1.3)),
        ("sharpness", 0.5, lambda i: TF.adjust_sharpness(i, 1.5)),
        ("posterize", 3.0, lambda i: TF.posterize((i * 255).round().byte(), 3).float() / 255),
        ("solarize", 0.6, lambda i: TF.solarize(i, 0.6)),
        ("autocontrast", 0.0, TF.autocontrast),
        ("equalize", 0.0, lambda i: TF.equalize((i * 255).round().byte()).float() / 255),
        ("rotate", 20.0, lambda i: TF.rotate(i, 20.0, interpolation=bil)),
        ("shear_x", 0.3, lambda i: affine(i, shear=[shear, 0.0], center=[0, 0])),
        ("shear_y", 0.3, lambda i: affine(i, shear=[0.0, shear], center=[0, 0])),
        ("translate_x", 5.0, lambda i: affine(i, translate=[5, 0])),
        ("translate_y", -4.0, lambda i: affine(i, translate=[0, -4])),
    ]


CASES = [
    pytest.param(name, magnitude, theirs, shape, id=f"{name}-{tag}")
    for name, magnitude, theirs in _tv_cases()
    for shape, tag in (((3, 32, 32), "rgb-square"), ((1, 24, 32), "gray-wide"))
    if not (name == "color" and shape[0] == 1)  # saturation exists for RGB images only
]


@pytest.mark.parametrize(("name", "magnitude", "theirs", "shape"), CASES)
def test_each_randaugment_op_matches_torchvision(name, magnitude, theirs, shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, *shape, generator=g) * 255).round() / 255  # what uint8 images become
    ours = augment.OPS[name](x, torch.full((4,), magnitude))
    expected = torch.stack([theirs(img) for img in x])
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_flip_crop_and_rotation_match_torchvision_for_the_drawn_parameters():
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    x = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    assert torch.equal(augment.random_flip(x, 1.0, 3, None), TF.horizontal_flip(x))
    assert torch.equal(augment.random_flip(x, 1.0, 2, None), TF.vertical_flip(x))
    # random_crop draws the row offsets, then the column offsets, from the generator
    out = augment.random_crop(x, 4, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    dy, dx = torch.randint(0, 9, (6,), generator=g), torch.randint(0, 9, (6,), generator=g)
    for img, got, top, left in zip(x, out, dy.tolist(), dx.tolist(), strict=True):
        assert torch.equal(got, TF.crop(TF.pad(img, [4]), top, left, 20, 20))
    xf = x.float() / 255
    out = augment.random_rotation(xf, 30.0, torch.Generator().manual_seed(2))
    angles = torch.rand(6, generator=torch.Generator().manual_seed(2)) * 60 - 30
    for img, got, angle in zip(xf, out, angles.tolist(), strict=True):
        expected = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR)
        assert torch.allclose(got, expected, atol=1e-5)

"""Augmentations applied to whole batches on the training device, with per-sample randomness.

Every option is a factory returning `aug(x, y, generator) -> (x, target)`: x is an N×C×H×W
batch of uint8 (or float in [0, 1]) images, y its int64 labels. Ops that must interpolate return
float in [0, 1]; most options leave the labels alone, mixup/cutmix (mixing.py) return soft
targets (N×classes probabilities) for the loss. Only the training loop calls these: val/test
batches go straight to `Normalize`.

Flips are left out where a mirrored image is another class (a mirrored 2 is not a digit): the
knobs default to `${sweeplab.flip_p:0.5}`, which is 0 when `dataset.flips_keep_label` is false.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import equalize

Augment = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator | None], tuple[torch.Tensor, torch.Tensor]
]


class Normalize(nn.Module):
    """uint8 or [0, 1] float batch -> float, normalised with the dataset's mean/std. The same
    module runs in training and inside the logged model (sweeplab.track.logged_model), so a
    served model sees exactly what training saw."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        stats = {"dtype": torch.float32, "device": device}
        self.register_buffer("mean", torch.tensor(mean, **stats).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, **stats).view(1, -1, 1, 1))
        # NHWC batches for a channels_last model: convs then skip a layout change per call
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (to_float(x) - self.mean) / self.std
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=layout)

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}"


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def _uniform(n: int, g, device, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def _chance(n: int, p: float, g, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


# --- the building blocks -------------------------------------------------------------------


def random_flip(x: torch.Tensor, p: float, dim: int, g) -> torch.Tensor:
    """Flip each image along `dim` (3 = horizontal, 2 = vertical) with probability p."""
    mask = _chance(len(x), p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(dim), x)


def random_crop(x: torch.Tensor, padding: int, g, hflip_p: float = 0.0) -> torch.Tensor:
    """Zero-pad by `padding`, take a random H×W window per image, and mirror it with
    probability `hflip_p` -- all in one gather over the flattened images (no Python loop;
    5x faster than a gather per axis on CPU, see docs/benchmarks.md)."""
    n, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding,) * 4) if padding else x
    width = w + 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=dev)
    cols = torch.arange(w, device=dev).expand(n, w)
    if hflip_p > 0:
        cols = torch.where(_chance(n, hflip_p, g, dev)[:, None], cols.flip(1), cols)
    rows = torch.arange(h, device=dev)[None, :] + dy[:, None]
    index = (rows[:, :, None] * width + (cols + dx[:, None])[:, None, :]).view(n, 1, h * w)
    return padded.flatten(2).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply per-sample 2×3 affine matrices (normalised coordinates), zero fill."""
    x = to_float(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _rotation_theta(degrees: torch.Tensor, h: int = 1, w: int = 1) -> torch.Tensor:
    """Rotation about the centre, counter-clockwise as torchvision's `rotate`. Built in pixel
    units, then scaled to normalised ones, so a non-square image is not sheared by it."""
    rad = degrees * (math.pi / 180)
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    rows = [torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)]
    return torch.stack(rows, 1)


def random_rotation(x: torch.Tensor, degrees: float, g) -> torch.Tensor:
    angles = _uniform(len(x), g, x.device, -degrees, degrees)
    return affine(x, _rotation_theta(angles, *x.shape[-2:]))


# --- options (one factory per conf/augmentation/*.yaml) ------------------------------------


def images_only(fn: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]) -> Augment:
    """An image transform as an augmentation option: the labels pass through unchanged."""

    def aug(x, y, g=None):
        return fn(x, g), y

    return aug


def none() -> Augment:
    return lambda x, y, g=None: (x, y)


def standard(padding: int = 4, hflip_p: float = 0.5) -> Augment:
    return images_only(lambda x, g=None: random_crop(x, padding, g, hflip_p))


def seed_tutorial(hflip_p: float = 0.5, vflip_p: float = 0.5, degrees: float = 10.0) -> Augment:
    def aug(x, g=None):
        x = random_flip(x, hflip_p, 3, g)
        x = random_flip(x, vflip_p, 2, g)
        return random_rotation(x, degrees, g) if degrees > 0 else x

    return images_only(aug)


def randaugment(num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> Augment:
    """RandAugment with torchvision's op list and ranges; each image draws its own ops/signs."""
    if not 0 <= magnitude < num_magnitude_bins:
        raise ValueError(f"augmentation.magnitude={magnitude} must be in [0, num_magnitude_bins)")

    def aug(x, g=None):
        for _ in range(num_ops):
            bins = torch.full((len(x),), magnitude, device=x.device)
            x = _random_op(x, _space("rand", num_magnitude_bins, x.shape[-1]), bins, g)
        return x

    return images_only(aug)


def trivialaugment(num_magnitude_bins: int = 31) -> Augment:
    """TrivialAugment Wide: one op per image at a per-image random magnitude."""

    def aug(x, g=None):
        bins = torch.randint(0, num_magnitude_bins, (len(x),), generator=g, device=x.device)
        return _random_op(x, _space("wide", num_magnitude_bins, x.shape[-1]), bins, g)

    return images_only(aug)


# --- RandAugment / TrivialAugment ops: each takes a float batch and per-sample magnitudes ----


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.2989 * r + 0.587 * g + 0.114 * b  # torchvision's rgb_to_grayscale weights


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """b + factor * (a - b), per sample, clamped to [0, 1] (PIL ImageEnhance semantics)."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp_(0, 1)


def _sharpness(x, m):
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
    c = x.shape[1]
    blurred = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = blurred  # PIL keeps the border pixels
    return _blend(x, smooth, 1 + m)


def _posterize(x, bits):
    keep = (0xFF << (8 - bits.long())) & 0xFF
    q = (x * 255).round().to(torch.int64) & keep.view(-1, 1, 1, 1)
    return q.float() / 255


def _autocontrast(x, m):
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1 / (hi - lo).clamp_min(1e-8))
    return torch.where(flat, x, ((x - lo) * scale).clamp(0, 1))


def _equalize(x, m):

    return equalize((x * 255).round().to(torch.uint8)).float() / 255


def _shear(axis: int):
    """Shear about the top-left corner, as torchvision's RandAugment does (center=[0, 0]):
    x' = x + m*y in pixels, which in normalised coordinates adds a shift of the same size."""

    def op(x, m):
        h, w = x.shape[-2:]
        ratio = h / w if axis == 0 else w / h  # normalised units differ on non-square images
        theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, axis, 1 - axis] = m * ratio
        theta[:, axis, 2] = m * ratio
        return affine(x, theta)

    return op


def _translate(axis: int):
    def op(x, m):  # m in pixels; normalised coordinates span 2 over the image size
        theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, axis, 2] = -2 * m / x.shape[3 - axis]
        return affine(x, theta)

    return op


OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "identity": lambda x, m: x,
    "shear_x": _shear(0),
    "shear_y": _shear(1),
    "translate_x": _translate(0),
    "translate_y": _translate(1),
    "rotate": lambda x, m: affine(x, _rotation_theta(m, *x.shape[-2:])),
    "brightness": lambda x, m: _blend(x, torch.zeros_like(x), 1 + m),
    "color": lambda x, m: _blend(x, _gray(x).expand_as(x), 1 + m),
    "contrast": lambda x, m: _blend(x, _gray(x).mean((1, 2, 3), keepdim=True).expand_as(x), 1 + m),
    "sharpness": _sharpness,
    "posterize": _posterize,
    "solarize": lambda x, m: torch.where(x >= m.view(-1, 1, 1, 1), 1 - x, x),
    "autocontrast": _autocontrast,
    "equalize": _equalize,
}
SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate"}
SIGNED |= {"brightness", "color", "contrast", "sharpness"}


def _space(policy: str, bins: int, size: int) -> dict[str, torch.Tensor]:
    """Magnitude per bin for each op, as in torchvision's RandAugment / TrivialAugmentWide."""
    wide = policy == "wide"
    lin = lambda hi: torch.linspace(0.0, hi, bins)  # noqa: E731
    color = lin(0.99 if wide else 0.9)
    levels = 6 if wide else 4
    return {
        "identity": torch.zeros(bins),
        "shear_x": lin(0.99 if wide else 0.3),
        "shear_y": lin(0.99 if wide else 0.3),
        "translate_x": lin(32.0 if wide else 150.0 / 331.0 * size),
        "translate_y": lin(32.0 if wide else 150.0 / 331.0 * size),
        "rotate": lin(135.0 if wide else 30.0),
        "brightness": color,
        "color": color,
        "contrast": color,
        "sharpness": color,
        "posterize": 8 - (torch.arange(bins) / ((bins - 1) / levels)).round(),
        "solarize": torch.linspace(1.0, 0.0, bins),
        "autocontrast": torch.zeros(bins),
        "equalize": torch.zeros(bins),
    }


def _random_op(x: torch.Tensor, space: dict, bins: torch.Tensor, g) -> torch.Tensor:
    """Each image gets one op from OPS at magnitude space[op][bin], with a random sign."""
    x = to_float(x).clone()
    n = len(x)
    choice = torch.randint(0, len(OPS), (n,), generator=g, device=x.device)
    sign = torch.where(_chance(n, 0.5, g, x.device), -1.0, 1.0)
    for k, (name, op) in enumerate(OPS.items()):
        idx = (choice == k).nonzero().squeeze(1)
        if name == "identity" or idx.numel() == 0:
            continue
        m = space[name].to(x.device)[bins[idx]]
        if name in SIGNED:
            m = m * sign[idx]
        x[idx] = op(x[idx], m)
    return x

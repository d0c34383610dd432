"""MixUp and CutMix as augmentation options: each image is mixed with a random partner of the
same batch, with its own mixing ratio, and the labels become the matching soft targets.

Both start with the `standard` crop (+ flip where the dataset allows it), then mix. The ratio
lambda is drawn per image from Beta(alpha, alpha) (torchvision's MixUp/CutMix draw one lambda
per batch). CrossEntropyLoss takes the soft targets as class probabilities.

torch's Beta/Gamma samplers take no `generator`, so they would draw from the global RNG, which
a resumed run does not restore; `beta` below draws from the augmentation generator instead, so
a resume replays the exact stream (tests compare it with torch.distributions.Beta).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sweeplab.train.augment import Augment, random_crop, to_float

CANDIDATES = 8  # gamma proposals per value: all rejected has probability < 1e-10 (alpha >= 0.1)


def gamma(concentration: float, n: int, g, device) -> torch.Tensor:
    """n draws of Gamma(concentration, 1): Marsaglia & Tsang (2000), vectorised by drawing
    CANDIDATES proposals per value and keeping the first accepted one."""
    boost = concentration < 1  # Gamma(a) = Gamma(a + 1) * U^(1/a) for a < 1
    a = concentration + 1 if boost else concentration
    d = a - 1 / 3
    c = 1 / (9 * d) ** 0.5
    z = torch.randn(n, CANDIDATES, generator=g, device=device)
    u = torch.rand(n, CANDIDATES, generator=g, device=device)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (u.log() < 0.5 * z**2 + d - d * v + d * v.clamp_min(1e-12).log())
    first = ok.int().argmax(1, keepdim=True)  # first accepted proposal (0 if none was)
    draw = torch.where(ok.any(1), (d * v).gather(1, first).squeeze(1), torch.full_like(z[:, 0], d))
    if boost:
        draw = draw * torch.rand(n, generator=g, device=device) ** (1 / concentration)
    return draw


def beta(alpha: float, n: int, g, device) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) from the generator `g`."""
    x, y = gamma(alpha, n, g, device), gamma(alpha, n, g, device)
    return x / (x + y).clamp_min(1e-12)


def _soft_targets(y, partner, lam, num_classes: int) -> torch.Tensor:
    onehot = F.one_hot(y, num_classes).float()
    lam = lam.view(-1, 1)
    return lam * onehot + (1 - lam) * onehot[partner]


def mixup(num_classes: int, alpha: float = 0.8, padding: int = 4, hflip_p: float = 0.5) -> Augment:
    """MixUp (Zhang et al. 2018): lam * image + (1 - lam) * partner, per image."""

    def aug(x, y, g=None):
        x = to_float(random_crop(x, padding, g, hflip_p))
        n = len(x)
        lam = beta(alpha, n, g, x.device)
        partner = torch.randperm(n, generator=g, device=x.device)
        weight = lam.view(-1, 1, 1, 1)
        return weight * x + (1 - weight) * x[partner], _soft_targets(y, partner, lam, num_classes)

    return aug


def cutmix(num_classes: int, alpha: float = 1.0, padding: int = 4, hflip_p: float = 0.5) -> Augment:
    """CutMix (Yun et al. 2019): a box covering about 1 - lam of each image comes from its
    partner; the target weights follow the box's real area after clipping at the border."""

    def aug(x, y, g=None):
        x = random_crop(x, padding, g, hflip_p)
        n, _, h, w = x.shape
        dev = x.device
        cut = (1 - beta(alpha, n, g, dev)).sqrt()
        half_h, half_w = (cut * h / 2).round().long(), (cut * w / 2).round().long()
        cy = torch.randint(0, h, (n,), generator=g, device=dev)
        cx = torch.randint(0, w, (n,), generator=g, device=dev)
        rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_rows = (rows >= (cy - half_h)[:, None]) & (rows < (cy + half_h)[:, None])
        in_cols = (cols >= (cx - half_w)[:, None]) & (cols < (cx + half_w)[:, None])
        box = in_rows[:, :, None] & in_cols[:, None, :]  # N×H×W
        partner = torch.randperm(n, generator=g, device=dev)
        mixed = torch.where(box[:, None], x[partner], x)
        lam = 1 - box.flatten(1).float().mean(1)
        return mixed, _soft_targets(y, partner, lam, num_classes)

    return aug

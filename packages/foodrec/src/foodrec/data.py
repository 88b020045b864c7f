"""Food-101 training augmentation: seed 002's albumentations pipeline, with torchvision.transforms.v2.

Indexes (Food-101's own layout, the seed's parquet index), the dataset, evaluation preprocessing and
prediction are the shared classification toolkit's (:mod:`mlcore.vision`); only the augmentation is
food's own. Every random draw comes from the global torch RNG at call time, so mlcore's per-sample
re-seeding (:class:`mlcore.data.SeededDataset`) makes it reproducible.

Why four small transforms of our own: torchvision.transforms.v2 (the workspace's CPU transform library,
DESIGN.md) has no transform with the seed's albumentations semantics for these four. ``ColorJitter``
brightness is multiplicative, not additive. ``GaussianNoise`` takes a fixed sigma, not a variance drawn
per image. ``GaussianBlur`` draws sigma, not the kernel size. ``RandomErasing`` cuts one hole, not a
fixed count. The four modules below reproduce albumentations 1.x exactly as the seed configures them,
without adding albumentations (and its OpenCV pin) as a dependency for four lines each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mlcore.data import IMAGENET_MEAN, IMAGENET_STD

SEED_IMAGE_SIZE = 300
"""The seed's input size; CoarseDropout's 30 px holes are scaled from it (10% of the side)."""


class RandomBrightnessContrast(nn.Module):
    """albumentations' ``RandomBrightnessContrast(brightness_limit, contrast_limit, p)`` (``brightness_by_max``):
    ``x * alpha + beta`` with ``alpha = 1 + U(-contrast, contrast)`` and ``beta = U(-brightness, brightness)``
    (on 0-1 floats, i.e. times the maximum value), clipped to [0, 1]. Input/output ``(3, H, W)`` float32."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, p: float = 0.5) -> None:
        super().__init__()
        self.brightness, self.contrast, self.p = brightness, contrast, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        alpha = 1 + (torch.rand(()) * 2 - 1) * self.contrast
        beta = (torch.rand(()) * 2 - 1) * self.brightness
        return (x * alpha + beta).clamp_(0, 1)


class GaussNoise(nn.Module):
    """albumentations 1.x ``GaussNoise(var_limit=(10, 50), mean=0, per_channel=True, p)``: the variance is
    drawn from ``U(var_limit)`` on the 0-255 scale, then zero-mean Gaussian noise of that variance per pixel
    and channel is added and the result clipped. Input/output ``(3, H, W)`` float32 in [0, 1]."""

    def __init__(self, var_limit: tuple[float, float] = (10.0, 50.0), p: float = 0.2) -> None:
        super().__init__()
        self.var_limit, self.p = var_limit, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        lo, hi = self.var_limit
        sigma = math.sqrt(lo + float(torch.rand(())) * (hi - lo)) / 255.0
        return (x + torch.randn_like(x) * sigma).clamp_(0, 1)


class GaussianBlur(nn.Module):
    """albumentations 1.x ``GaussianBlur(blur_limit=(3, 5), sigma_limit=0, p)``: an odd kernel size drawn
    uniformly from ``blur_limit`` (3 or 5) and, as OpenCV does for sigma 0, ``sigma = 0.3 ((k - 1) / 2 - 1)
    + 0.8`` (0.8 for k 3, 1.1 for k 5). Input/output ``(3, H, W)``."""

    def __init__(self, blur_limit: tuple[int, int] = (3, 5), p: float = 0.2) -> None:
        super().__init__()
        self.kernels = list(range(blur_limit[0], blur_limit[1] + 1, 2))
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        k = self.kernels[int(torch.randint(len(self.kernels), ()))]
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
        return TF.gaussian_blur(x, [k, k], [sigma, sigma])


class CoarseDropout(nn.Module):
    """albumentations 1.x ``CoarseDropout(max_holes=8, max_height=30, max_width=30, fill_value=0, p)``, whose
    ``min_holes``/``min_height``/``min_width`` default to the maxima: exactly ``holes`` squares of ``size`` px,
    each at a uniform position inside the image, set to 0 (black, before normalisation).
    Input/output ``(3, H, W)``."""

    def __init__(self, holes: int = 8, size: int = 30, p: float = 0.3) -> None:
        super().__init__()
        self.holes, self.size, self.p = holes, size, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        h, w = x.shape[-2:]
        sh, sw = min(self.size, h), min(self.size, w)
        x = x.clone()
        for _ in range(self.holes):
            top = int(torch.randint(h - sh + 1, ()))
            left = int(torch.randint(w - sw + 1, ()))
            x[..., top:top + sh, left:left + sw] = 0
        return x


def train_transform(size: int = SEED_IMAGE_SIZE, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Seed 002's training augmentation: ``tv_tensors.Image (3, H, W) uint8`` -> ``(3, size, size) float32``
    normalised with ``mean``/``std`` (the model's data config; the seed's ImageNet values by default).

    In the seed's order, with its parameters:

    - ``RandomResizedCrop(size, scale 0.8-1.0, ratio 0.9-1.1)``, ``HorizontalFlip(p 0.5)``;
    - ``ShiftScaleRotate(0.1, 0.1, 15, p 0.5)`` -> ``RandomAffine(15 degrees, translate 0.1, scale 0.9-1.1)``, p 0.5;
    - ``ColorJitter(0.2, 0.2, 0.2, 0.1, p 0.5)``; :class:`RandomBrightnessContrast` (0.2, 0.2, p 0.5);
    - :class:`GaussNoise` (variance 10-50 on 0-255, p 0.2); :class:`GaussianBlur` (kernel 3 or 5, p 0.2);
    - :class:`CoarseDropout` (8 holes of 30 px at the seed's 300 px, scaled to ``size``: 10% of the side, p 0.3);
    - normalisation.
    """
    return v2.Compose([
        v2.RandomResizedCrop((size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.RandomAffine(degrees=15.0, translate=(0.1, 0.1), scale=(0.9, 1.1))], p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
        RandomBrightnessContrast(0.2, 0.2, p=0.5),
        GaussNoise((10.0, 50.0), p=0.2),
        GaussianBlur((3, 5), p=0.2),
        CoarseDropout(8, max(1, round(30 * size / SEED_IMAGE_SIZE)), p=0.3),
        v2.Normalize(list(mean), list(std)),
    ])

"""Plant training pipelines for the seed's ``--use_gpu_aug`` switch (indexes, dataset and evaluation
preprocessing are the shared classification toolkit's, :mod:`mlcore.vision`).

- ``--gpu-aug`` (:func:`decode_transform`): workers only decode and resize to ``(3, S, S) uint8``;
  augmentation and normalisation run on the training device (:mod:`plantid.augment`).
- ``--no-gpu-aug`` (:func:`train_transform`): the same augmentation with torchvision in the workers,
  giving ``(3, S, S) float32`` normalised tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from mlcore.data import IMAGENET_MEAN, IMAGENET_STD


def decode_transform(size: int) -> v2.Compose:
    """``--gpu-aug`` worker side: ``Resize((size, size))`` (bilinear, antialiased) only.

    ``tv_tensors.Image (3, H, W) uint8`` -> ``(3, size, size) uint8``; everything random happens on the
    training device.
    """
    return v2.Compose([v2.Resize((size, size), antialias=True)])


def train_transform(size: int, *, scale_min: float = 0.6, rotation: float = 20.0, jitter: float = 0.3,
                    blur_p: float = 0.1, vflip_p: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """``--no-gpu-aug`` training pipeline (the seed's torchvision augmentation), in the workers.

    ``tv_tensors.Image (3, H, W) uint8`` -> ``(3, size, size) float32`` normalised with ``mean``/``std``:
    RandomResizedCrop(scale ``scale_min``-1), horizontal flip (p 0.5), vertical flip (``vflip_p``),
    rotation (+-``rotation`` degrees), ColorJitter(``jitter`` brightness/contrast/saturation, hue
    ``jitter``/3), Gaussian blur (kernel 5, sigma 0.1-2, p ``blur_p``). Same operations and
    parameters as :class:`plantid.augment.DeviceAugmentation`.
    """
    ops: list[v2.Transform] = [v2.RandomResizedCrop((size, size), scale=(scale_min, 1.0), antialias=True),
                               v2.RandomHorizontalFlip(p=0.5)]
    if vflip_p > 0:
        ops.append(v2.RandomVerticalFlip(p=vflip_p))
    if rotation > 0:
        ops.append(v2.RandomRotation(rotation))
    if jitter > 0:
        ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 3))
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=blur_p))
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

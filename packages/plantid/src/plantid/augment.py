"""On-device batch augmentation with kornia (the seed's ``GPUAugmentation``), used by ``--gpu-aug``.

The loader workers only decode and resize (``(N, 3, S, S) uint8``); the step function
(:func:`plantid.train.make_step`) hands the batch to :class:`DeviceAugmentation` on the training
device when the model is training, and to :class:`DeviceNormalize` when it is evaluating. kornia runs
on CPU too, so the same code path is exercised on a CPU-only machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import nn

from mlcore.data import IMAGENET_MEAN, IMAGENET_STD


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W) uint8`` in [0, 255] -> float32 in [0, 1]; float input is returned as float32.

    Raises:
        ValueError: not a 4-D 3-channel batch.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an (N, 3, H, W) image batch, got shape {tuple(x.shape)}")
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class DeviceAugmentation(nn.Module):
    """kornia ``AugmentationSequential``: RandomResizedCrop, horizontal + vertical flip, rotation,
    colour jitter, Gaussian blur, normalisation with ``mean``/``std`` (the model's data config; ImageNet's
    by default) (the seed's list), per sample.

    ``forward``: ``(N, 3, H, W) uint8`` (or float in [0, 1]) on any device -> ``(N, 3, size, size)``
    float32, normalised, on the same device. Randomness comes from the global torch RNG of
    that device. Parameters mirror :func:`plantid.data.train_transform` so ``--gpu-aug`` and
    ``--no-gpu-aug`` train on the same distribution.
    """

    def __init__(self, size: int, *, scale_min: float = 0.6, rotation: float = 20.0, jitter: float = 0.3,
                 blur_p: float = 0.1, vflip_p: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.size = size
        ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=(scale_min, 1.0)), K.RandomHorizontalFlip(p=0.5)]
        # operations switched off by their strength are left out rather than run as identities
        if vflip_p > 0:
            ops.append(K.RandomVerticalFlip(p=vflip_p))
        if rotation > 0:
            ops.append(K.RandomRotation(rotation, p=1.0))
        if jitter > 0:
            ops.append(K.ColorJitter(jitter, jitter, jitter, jitter / 3, p=1.0))
        if blur_p > 0:
            ops.append(K.RandomGaussianBlur((5, 5), (0.1, 2.0), p=blur_p))
        ops.append(K.Normalize(mean=torch.tensor(list(mean)), std=torch.tensor(list(std))))
        self.pipeline = K.AugmentationSequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pipeline(to_unit_float(x))


class DeviceNormalize(nn.Module):
    """Evaluation side of ``--gpu-aug``: ``(N, 3, H, W) uint8`` -> float32 normalised with ``mean``/``std``
    (ImageNet's by default), same size."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

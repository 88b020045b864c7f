"""Images people look at: prediction grids and overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hairseg.data import IMAGENET_MEAN, IMAGENET_STD


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 80),
            alpha: float = 0.5) -> np.ndarray:
    """Tint ``mask`` pixels of ``image``.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        mask: ``(H, W)`` uint8, 0..255 alpha (or {0, 1}: anything > 1 is treated as 0..255).
    Returns:
        ``(H, W, 3) uint8``.
    """
    a = mask.astype(np.float32)
    a = a / 255.0 if a.max() > 1 else a
    a = (alpha * a)[..., None]
    out = image.astype(np.float32) * (1 - a) + np.asarray(color, np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def denormalise(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """``(3, H, W) float32`` normalised with ``mean``/``std`` -> ``(H, W, 3) uint8``."""
    mean = torch.tensor(mean).view(3, 1, 1)
    std = torch.tensor(std).view(3, 1, 1)
    x = (image.detach().cpu().float() * std + mean).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


@torch.inference_mode()
def save_examples(model: torch.nn.Module, dataset, path: str | Path, *, n: int = 8,
                  device: torch.device | str = "cpu") -> Path:
    """Write a grid: one row per sample, columns photo | ground truth overlay | prediction overlay.

    ``dataset[i]`` must return ``{"image": (3, S, S) float32 normalised, "mask": (1, S, S)}``.
    """
    was_training = model.training
    model.eval()
    rows = []
    for i in np.linspace(0, len(dataset) - 1, num=min(n, len(dataset)), dtype=int):
        item = dataset[int(i)]
        img = denormalise(item["image"], getattr(dataset, "mean", IMAGENET_MEAN), getattr(dataset, "std", IMAGENET_STD))
        gt = (item["mask"][0].numpy() > 0.5).astype(np.uint8) * 255
        prob = torch.sigmoid(model(item["image"].unsqueeze(0).to(device)).float())[0, 0].cpu().numpy()
        pred = (prob >= 0.5).astype(np.uint8) * 255
        rows.append(np.concatenate([img, overlay(img, gt, (0, 200, 0)), overlay(img, pred)], axis=1))
    model.train(was_training)
    path = Path(path)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path

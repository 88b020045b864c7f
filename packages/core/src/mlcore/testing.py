"""Small real models and datasets for tests, benchmarks and smoke runs of the trainer.

They are deliberately tiny (CPU, seconds) but exercise everything the trainer does: dropout and
BatchNorm (RNG and buffers), random augmentation inside ``__getitem__`` (worker RNG), uneven last
batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mlcore.metrics import Metric


class NoisyBlobs(Dataset):
    """``n`` samples of ``(C, S, S)`` float32 images of a class-dependent blob, 4 classes.

    With ``augment=True`` each fetch adds Gaussian noise and a random flip drawn from the global
    torch RNG, the way real augmentation pipelines do.
    """

    def __init__(self, n: int = 64, size: int = 16, channels: int = 3, augment: bool = True, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=g)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        centres = [(size * 0.25, size * 0.25), (size * 0.25, size * 0.75), (size * 0.75, size * 0.25),
                   (size * 0.75, size * 0.75)]
        blobs = [torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (size / 3)) for cy, cx in centres]
        self.images = torch.stack([blobs[int(c)].expand(channels, size, size) for c in self.labels]).float()
        self.images += 0.1 * torch.randn(self.images.shape, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.images[i].clone()
        if self.augment:
            x = x + 0.05 * torch.randn_like(x)
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return {"image": x, "label": self.labels[i]}


class TinyCNN(nn.Module):
    """conv-BN-ReLU x2, global pool, dropout, linear: ``(N, C, S, S) -> (N, classes)`` logits."""

    def __init__(self, channels: int = 3, classes: int = 4, width: int = 16, dropout: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def classification_step(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Cross-entropy step for :class:`NoisyBlobs` batches: ``{"loss", "logits"}``."""
    logits = model(batch["image"])
    return {"loss": F.cross_entropy(logits, batch["label"]), "logits": logits}


class Accuracy(Metric):
    """Top-1 accuracy over a split, from summed correct/total counts."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros((), dtype=torch.float64))
        self.add_state("total", torch.zeros((), dtype=torch.float64))

    def update(self, outputs: Mapping[str, Any], batch: Any) -> None:
        self.correct += (outputs["logits"].argmax(-1) == batch["label"]).sum()
        self.total += batch["label"].numel()

    def compute(self) -> dict[str, float]:
        return {"top1": float(self.correct / self.total.clamp(min=1))}

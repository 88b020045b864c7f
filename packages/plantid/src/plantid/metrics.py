"""Split-level classification metrics: top-1, top-5, macro-F1 (and per-class F1) from a confusion matrix.

States are sums (a ``(C, C)`` confusion matrix and a top-5 hit count) so the value over a split and over
all DDP ranks is computed once from the summed states (:class:`mlcore.metrics.Metric`). Definitions
follow torchmetrics (``MulticlassAccuracy(average="micro", top_k=1/5)``, ``MulticlassF1Score(average="macro")``);
torchmetrics' own classes are not used because their states cannot be summed through mlcore's protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from mlcore.metrics import Metric


class ClassificationMetrics(Metric):
    """Top-1/top-5 accuracy and macro-F1 over ``num_classes`` classes.

    ``update(outputs, batch)`` reads ``outputs["logits"]`` ``(N, C)`` float and ``batch["label"]``
    ``(N,)`` int64. ``compute()`` returns ``{"top1", "top5", "f1"}`` floats in [0, 1]; per class
    ``F1 = 2 TP / (2 TP + FP + FN)``, macro-averaged over classes that occur in labels or predictions.
    ``top5`` uses ``min(5, C)`` classes.

    Raises:
        ValueError: ``num_classes < 1``; logits/labels of the wrong shape or class range.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.top_k = min(5, num_classes)
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.int64))
        self.add_state("top5_correct", torch.zeros((), dtype=torch.int64))

    def update(self, outputs: Mapping[str, Any], batch: Any) -> None:
        """Accumulate one batch (see the class docstring)."""
        logits, labels, c = outputs["logits"].detach(), batch["label"], self.num_classes
        if logits.ndim != 2 or logits.shape[1] != c:
            raise ValueError(f"outputs['logits']: expected shape (N, {c}), got {tuple(logits.shape)}")
        if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"batch['label']: expected ({logits.shape[0]},) class indices, got {tuple(labels.shape)}")
        device = self.confusion.device
        labels, logits = labels.to(device=device, dtype=torch.int64), logits.to(device)
        if labels.numel() == 0:
            return
        if int(labels.min()) < 0 or int(labels.max()) >= c:
            raise ValueError(f"batch['label']: class indices must lie in [0, {c})")
        pred = logits.argmax(dim=1)
        self.confusion += torch.bincount(labels * c + pred, minlength=c * c).view(c, c)
        self.top5_correct += (logits.topk(self.top_k, dim=1).indices == labels[:, None]).any(dim=1).sum()

    def per_class_f1_tensor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f1 (C,) float64, present (C,) bool)`` from the confusion matrix."""
        cm = self.confusion.double()
        tp = cm.diagonal()
        denom = 2 * tp + (cm.sum(dim=0) - tp) + (cm.sum(dim=1) - tp)
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
        return f1, denom > 0

    def compute(self) -> dict[str, float]:
        """``{"top1", "top5", "f1"}`` (0 before any update)."""
        total = max(int(self.confusion.sum()), 1)
        f1, present = self.per_class_f1_tensor()
        return {"top1": int(self.confusion.diagonal().sum()) / total,
                "top5": int(self.top5_correct) / total,
                "f1": float(f1[present].mean()) if bool(present.any()) else 0.0}

    def per_class_f1(self, classes: Sequence[str]) -> dict[str, float]:
        """``{class name: F1}`` for every class. Raises ``ValueError`` if ``len(classes) != C``."""
        if len(classes) != self.num_classes:
            raise ValueError(f"classes: expected {self.num_classes} names, got {len(classes)}")
        f1, _ = self.per_class_f1_tensor()
        return {name: float(v) for name, v in zip(classes, f1.tolist(), strict=True)}


def confusion_png(confusion: np.ndarray, classes: Sequence[str], path: str | Path, *, cell: int = 40) -> Path:
    """Render a ``(C, C)`` int confusion matrix (rows: true class, columns: predicted) as a PNG heatmap,
    rows normalised to recall (white 0 -> dark green 1) with the counts in the cells."""
    c = len(classes)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    margin = 10 + 7 * max(len(n) for n in classes)
    img = Image.new("RGB", (margin + c * cell + 8, margin + c * cell + 8), "white")
    draw = ImageDraw.Draw(img)
    for i in range(c):
        draw.text((4, margin + i * cell + cell // 3), classes[i], fill="black")
        draw.text((margin + i * cell + 2, 4 + (i % 2) * 12), classes[i][:6], fill="black")
        for j in range(c):
            v = float(rows[i, j])
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1],
                           fill=(int(255 * (1 - v)), int(255 - 100 * v), int(255 * (1 - v))), outline=(220, 220, 220))
            if confusion[i, j]:
                draw.text((x0 + 4, y0 + cell // 3), str(int(confusion[i, j])), fill="white" if v > 0.5 else "black")
    path = Path(path)
    img.save(path)
    return path

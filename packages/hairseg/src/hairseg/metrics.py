"""Hair segmentation metrics (IoU, F1, precision, recall) and the plan's acceptance bands.

Two reductions are reported, both from summed states (so they are exact over a split and over
DDP ranks):

- pooled (``iou``, ``f1``, ``precision``, ``recall``): true/false positives/negatives summed over
  every pixel of every image, then the ratio (smp's ``reduction="micro"``). Large images and
  images with much hair weigh more.
- per image (``*_per_image``): the ratio per image, averaged over images (smp's
  ``reduction="micro-imagewise"``). Every photo counts once.

Zero division follows smp's default ``zero_division=1.0``: a ratio whose denominator is 0 is 1.
Per image this means: an image with no hair in both the prediction and the mask (empty union) has
IoU = F1 = precision = recall = 1; an image with hair in the mask but none predicted has
IoU = F1 = recall = 0 and precision = 1 (no false positives); hair predicted on an image with no
hair in the mask gives IoU = F1 = precision = 0 and recall = 1. The same rule applies to the pooled
values when the whole split has an empty denominator.

Thresholds (``verdict``) follow the plan's "Model Performance Benchmarks": IoU < 0.85 reject,
0.85-0.90 acceptable for the MVP, > 0.90 production-ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch

from mlcore.metrics import Metric

THRESHOLD = 0.5
"""Probability threshold: a pixel is hair when ``sigmoid(logit) >= 0.5`` (smp's ``>=`` rule)."""

ZERO_DIVISION = 1.0
"""Value of a ratio with a zero denominator (smp's default)."""

IOU_REJECT_BELOW = 0.85
IOU_PRODUCTION_ABOVE = 0.90

_SCORES = {
    "iou": smp.metrics.iou_score,
    "f1": smp.metrics.f1_score,
    "precision": smp.metrics.precision,
    "recall": smp.metrics.recall,
}


def verdict(iou: float) -> str:
    """The plan's verdict for a validation IoU in [0, 1].

    Returns ``"reject"`` (IoU < 0.85: investigate the dataset), ``"acceptable"``
    (0.85 <= IoU <= 0.90: MVP, monitor edge cases) or ``"production"`` (IoU > 0.90).

    Raises:
        ValueError: ``iou`` is NaN or outside [0, 1].
    """
    if not (0.0 <= iou <= 1.0):
        raise ValueError(f"iou: expected a value in [0, 1], got {iou}")
    if iou < IOU_REJECT_BELOW:
        return "reject"
    if iou <= IOU_PRODUCTION_ABOVE:
        return "acceptable"
    return "production"


def _scores(
    tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor
) -> dict[str, torch.Tensor]:
    """IoU/F1/precision/recall of float64 stat tensors (any shape), smp formulas, zero_division=1."""
    out = {}
    for name, fn_score in _SCORES.items():
        # reduction=None: elementwise, with smp's zero-division replacement.
        out[name] = fn_score(tp, fp, fn, tn, reduction=None, zero_division=ZERO_DIVISION)
    return out


def _stats(prob: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-image (N,) float64 tp, fp, fn, tn of ``(N, 1, H, W)`` probabilities vs a {0, 1} mask."""
    tp, fp, fn, tn = smp.metrics.get_stats(
        prob, (target >= THRESHOLD).long(), mode="binary", threshold=THRESHOLD
    )
    return tuple(s.sum(dim=1).to(torch.float64) for s in (tp, fp, fn, tn))


def binary_stats(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Confusion counts and scores of one binary mask against one ground-truth mask.

    Args:
        pred: ``(H, W)`` bool (or {0, 1} integer) prediction, True = hair.
        target: ``(H, W)`` bool (or {0, 1} integer) ground truth, True = hair.

    Returns:
        ``{"tp", "fp", "fn", "tn"}`` pixel counts and ``{"iou", "f1", "precision", "recall"}``
        (zero-division convention of this module), all floats.

    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    p = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred)
    t = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(
            f"binary_stats: expected pred and target of the same (H, W) shape, got {tuple(p.shape)} "
            f"and {tuple(t.shape)}"
        )
    p = (p != 0).long().view(1, 1, *p.shape)
    t = (t != 0).long().view(1, 1, *t.shape)
    tp, fp, fn, tn = (s.sum().to(torch.float64) for s in smp.metrics.get_stats(p, t, mode="binary"))
    out = {"tp": float(tp), "fp": float(fp), "fn": float(fn), "tn": float(tn)}
    out.update({k: float(v) for k, v in _scores(tp, fp, fn, tn).items()})
    return out


class HairSegMetrics(Metric):
    """Pooled and per-image IoU, F1, precision and recall of binary hair masks.

    ``update(outputs, batch)`` reads ``outputs["logits"]`` ``(N, 1, H, W)`` float logits and
    ``batch["mask"]`` ``(N, 1, H, W)`` float/int/bool {0, 1} (1 = hair); a pixel is predicted hair
    when ``sigmoid(logit) >= 0.5``. Counts come from ``smp.metrics.get_stats``.

    States (float64, summed over batches and DDP ranks): ``tp``, ``fp``, ``fn``, ``tn`` (pixels over
    all images), ``iou_sum``, ``f1_sum``, ``precision_sum``, ``recall_sum`` (per-image scores summed)
    and ``n_images``.

    ``compute()`` returns floats ``iou, f1, precision, recall`` (pooled over all pixels, smp's
    ``"micro"``) and ``iou_per_image, f1_per_image, precision_per_image, recall_per_image`` (mean over
    images, smp's ``"micro-imagewise"``). See the module docstring for the zero-division rule.
    """

    def __init__(self) -> None:
        super().__init__()
        for name in ("tp", "fp", "fn", "tn", "n_images", *(f"{k}_sum" for k in _SCORES)):
            self.add_state(name, torch.zeros((), dtype=torch.float64))

    def update(self, outputs: Mapping[str, Any], batch: Any) -> None:
        """Accumulate one batch (see the class docstring for the expected keys and shapes).

        Raises:
            KeyError: ``outputs`` has no ``"logits"`` or ``batch`` no ``"mask"``.
            ValueError: shapes differ or are not ``(N, 1, H, W)``.
        """
        if "logits" not in outputs:
            raise KeyError(f"HairSegMetrics.update: outputs has no 'logits' (keys: {list(outputs)})")
        if "mask" not in batch:
            raise KeyError("HairSegMetrics.update: batch has no 'mask'")
        logits = outputs["logits"].detach()
        mask = batch["mask"].detach().to(logits.device)
        if logits.ndim != 4 or logits.shape[1] != 1 or logits.shape != mask.shape:
            raise ValueError(
                f"HairSegMetrics.update: expected logits and mask of the same shape (N, 1, H, W), "
                f"got {tuple(logits.shape)} and {tuple(mask.shape)}"
            )
        prob = torch.sigmoid(logits.float())
        tp, fp, fn, tn = _stats(prob, mask.float())
        device = self.tp.device
        self.tp += tp.sum().to(device)
        self.fp += fp.sum().to(device)
        self.fn += fn.sum().to(device)
        self.tn += tn.sum().to(device)
        for name, per_image in _scores(tp, fp, fn, tn).items():
            state = getattr(self, f"{name}_sum")
            state += per_image.sum().to(device)
        self.n_images += float(tp.numel())

    def compute(self) -> dict[str, float]:
        """Pooled and per-image scores as floats (all NaN before any image was seen)."""
        n = float(self.n_images)
        if n == 0:
            return {k: float("nan") for name in _SCORES for k in (name, f"{name}_per_image")}
        out = {k: float(v) for k, v in _scores(self.tp, self.fp, self.fn, self.tn).items()}
        for name in _SCORES:
            out[f"{name}_per_image"] = float(getattr(self, f"{name}_sum")) / n
        return out

"""Split-level classification metrics for Food-101: top-1, top-5, macro precision/recall/F1, per-class F1.

States are sums (a confusion matrix and a top-5 hit count), so values over a split and over all DDP
ranks come from the summed states (:class:`mlcore.metrics.Metric`). Definitions follow torchmetrics
(``MulticlassAccuracy(average="micro", top_k=1/5)``, ``MulticlassPrecision/Recall/F1Score(average="macro")``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mlcore.metrics import Metric


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` elementwise, 0 where ``den == 0`` (zero-division 0, as torchmetrics)."""
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


class ClassificationMetrics(Metric):
    """Top-1/top-5 accuracy and macro precision, recall, F1 over ``num_classes`` classes.

    States: ``confusion`` ``(C, C)`` int64 (row = true class, column = top-1 prediction) and
    ``top5_correct`` ``()`` int64 (samples whose true class is among the ``min(5, C)`` highest logits).

    ``update(outputs, batch)`` reads ``outputs["logits"]`` ``(N, C)`` float and ``batch["label"]``
    ``(N,)`` int64 hard labels (soft/mixed targets are never read: metrics score hard labels).

    ``compute()`` returns ``{"top1", "top5", "precision", "recall", "f1"}`` (floats in [0, 1]):
    per class ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``F1 = 2 TP / (2 TP + FP + FN)``
    (0 where the denominator is 0), macro-averaged over the classes that occur in the labels or the
    predictions (torchmetrics' macro convention). All values are 0 before any update.

    Raises:
        ValueError: ``num_classes < 1``; logits/labels of the wrong shape, dtype or class range.
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
        """Accumulate one batch: ``outputs["logits"]`` ``(N, C)``, ``batch["label"]`` ``(N,)`` int64."""
        logits = outputs["logits"].detach()
        labels = batch["label"]
        c = self.num_classes
        if logits.ndim != 2 or logits.shape[1] != c:
            raise ValueError(f"outputs['logits']: expected shape (N, {c}), got {tuple(logits.shape)}")
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"batch['label']: expected ({logits.shape[0]},) int64 class indices, "
                f"got {tuple(labels.shape)} {labels.dtype}"
            )
        device = self.confusion.device
        labels = labels.to(device=device, dtype=torch.int64)
        logits = logits.to(device)
        if labels.numel() == 0:
            return
        if int(labels.min()) < 0 or int(labels.max()) >= c:
            raise ValueError(
                f"batch['label']: class indices must lie in [0, {c}), got [{int(labels.min())}, {int(labels.max())}]"
            )
        pred = logits.argmax(dim=1)
        self.confusion += torch.bincount(labels * c + pred, minlength=c * c).view(c, c)
        topk = logits.topk(self.top_k, dim=1).indices
        self.top5_correct += (topk == labels[:, None]).any(dim=1).sum()

    def _per_class(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cm = self.confusion.double()
        tp = cm.diagonal()
        fp = cm.sum(dim=0) - tp
        fn = cm.sum(dim=1) - tp
        precision = _safe_div(tp, tp + fp)
        recall = _safe_div(tp, tp + fn)
        f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
        present = (tp + fp + fn) > 0
        return precision, recall, f1, present

    def compute(self) -> dict[str, float]:
        """``{"top1", "top5", "precision", "recall", "f1"}`` from the summed states (see the class doc)."""
        total = self.confusion.sum().double()
        precision, recall, f1, present = self._per_class()
        n_present = present.sum().double()

        def macro(v: torch.Tensor) -> float:
            return float(_safe_div(v[present].sum(), n_present))

        return {
            "top1": float(_safe_div(self.confusion.diagonal().sum().double(), total)),
            "top5": float(_safe_div(self.top5_correct.double(), total)),
            "precision": macro(precision),
            "recall": macro(recall),
            "f1": macro(f1),
        }

    def per_class_f1(self, classes: Sequence[str]) -> dict[str, float]:
        """``{class name: F1}`` for every class (0 for a class never labelled nor predicted).

        Raises:
            ValueError: ``len(classes) != num_classes``.
        """
        if len(classes) != self.num_classes:
            raise ValueError(f"classes: expected {self.num_classes} names, got {len(classes)}")
        _, _, f1, _ = self._per_class()
        return {name: float(v) for name, v in zip(classes, f1.tolist(), strict=True)}

"""Metric protocol for the trainer: states are tensors summed across a split (and across ranks).

A metric accumulates *sums* (true positives, per-image IoU totals, counts, ...) so that the value
over a whole split, and over all DDP ranks, is computed once at the end from the summed states,
never averaged from per-batch values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


class Metric:
    """Base class for split-level metrics.

    Subclasses call :meth:`add_state` in ``__init__`` for every tensor that is a sum over samples,
    implement :meth:`update` (called once per evaluation batch with the step outputs and the
    batch) and :meth:`compute` (returns ``{name: float}``). The trainer sums the states across
    ranks before ``compute`` under DDP, so ``compute`` sees the global sums.
    """

    def __init__(self) -> None:
        self._defaults: dict[str, torch.Tensor] = {}

    def add_state(self, name: str, default: torch.Tensor) -> None:
        """Register a summable tensor state (float64 or int64 recommended) named ``name``."""
        self._defaults[name] = default.detach().clone()
        setattr(self, name, default.detach().clone())

    def reset(self) -> None:
        """Reset every state to its default, keeping the device the state is on."""
        for name, default in self._defaults.items():
            current = getattr(self, name, default)
            setattr(self, name, default.clone().to(current.device))

    def to(self, device: torch.device | str) -> Metric:
        """Move all states to ``device`` (the strategy's metric device)."""
        for name in self._defaults:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def states(self) -> dict[str, torch.Tensor]:
        """The current state tensors by name."""
        return {name: getattr(self, name) for name in self._defaults}

    def sync(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace each state with ``all_reduce(state)`` (a SUM across ranks)."""
        for name in self._defaults:
            setattr(self, name, all_reduce(getattr(self, name)))

    def update(self, outputs: Mapping[str, Any], batch: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover - abstract
        """``{name: float}``; names with a ``/`` (per-class detail such as ``f1/apple_pie``) are logged to
        metrics.jsonl and TensorBoard but left out of the trainer's one-line console summary."""
        raise NotImplementedError


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` elementwise, 0 where ``den == 0`` (zero-division 0, as torchmetrics)."""
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


class ClassificationMetrics(Metric):
    """Top-1/top-5 accuracy, macro precision, recall, F1 and per-class F1 over ``num_classes`` classes.

    Definitions follow torchmetrics (``MulticlassAccuracy(average="micro", top_k=1/5)``,
    ``MulticlassPrecision/Recall/F1Score(average="macro")``); torchmetrics' own objects are not used
    because the trainer sums metric states across batches and ranks, which this class's
    confusion-matrix states allow.

    States: ``confusion`` ``(C, C)`` int64 (row = true class, column = top-1 prediction) and
    ``top5_correct`` ``()`` int64 (samples whose true class is among the ``min(5, C)`` highest logits).

    ``update(outputs, batch)`` reads ``outputs["logits"]`` ``(N, C)`` float and ``batch["label"]``
    ``(N,)`` int64 hard labels (soft/mixed targets are never read: metrics score hard labels).

    ``compute()`` returns ``{"top1", "top5", "precision", "recall", "f1"}`` (floats in [0, 1]):
    per class ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``F1 = 2 TP / (2 TP + FP + FN)``
    (0 where the denominator is 0), macro-averaged over the classes that occur in the labels or the
    predictions (torchmetrics' macro convention). With ``class_names`` it also returns ``"f1/<name>"``
    for every class (logged every evaluation, left out of the trainer's one-line console summary).
    All values are 0 before any update.

    Raises:
        ValueError: ``num_classes < 1``; logits/labels of the wrong shape, dtype or class range.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names: expected {num_classes} names, got {len(class_names)}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
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
        """``{"top1", "top5", "precision", "recall", "f1"}`` (+ ``"f1/<name>"``) from the summed states (see the class doc)."""
        total = self.confusion.sum().double()
        precision, recall, f1, present = self._per_class()
        n_present = present.sum().double()

        def macro(v: torch.Tensor) -> float:
            return float(_safe_div(v[present].sum(), n_present))

        out = {
            "top1": float(_safe_div(self.confusion.diagonal().sum().double(), total)),
            "top5": float(_safe_div(self.top5_correct.double(), total)),
            "precision": macro(precision),
            "recall": macro(recall),
            "f1": macro(f1),
        }
        if self.class_names is not None:
            out.update({f"f1/{name}": value for name, value in self.per_class_f1(self.class_names).items()})
        return out

    def per_class_f1(self, classes: Sequence[str]) -> dict[str, float]:
        """``{class name: F1}`` for every class (0 for a class never labelled nor predicted).

        Raises:
            ValueError: ``len(classes) != num_classes``.
        """
        if len(classes) != self.num_classes:
            raise ValueError(f"classes: expected {self.num_classes} names, got {len(classes)}")
        _, _, f1, _ = self._per_class()
        return {name: float(v) for name, v in zip(classes, f1.tolist(), strict=True)}

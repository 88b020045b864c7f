"""Plant identification metrics: top-1, top-5, macro precision/recall/F1 and per-class F1.

The implementation is mlcore's :class:`~mlcore.metrics.ClassificationMetrics` (one confusion-matrix
metric for every classification domain, checked against torchmetrics in ``tests/core``).
"""

from __future__ import annotations

from mlcore.metrics import ClassificationMetrics

__all__ = ["ClassificationMetrics"]

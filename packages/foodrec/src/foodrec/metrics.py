"""Food-101 metrics: top-1, top-5, macro precision/recall/F1 and per-class F1.

The implementation is mlcore's :class:`~mlcore.metrics.ClassificationMetrics` (shared by every
classification domain); foodrec builds it with its class names so per-class F1 is logged every epoch.
"""

from __future__ import annotations

from mlcore.metrics import ClassificationMetrics

__all__ = ["ClassificationMetrics"]

"""Classification loss: cross-entropy with label smoothing (Szegedy et al. 2016), computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(N, C)`` (any float dtype; upcast to float32) against ``labels``
    ``(N,)`` int64 class indices, with ``label_smoothing`` in [0, 1) (torch's definition: the target is
    ``(1 - eps) * one_hot + eps / C``). Returns a scalar float32 tensor.

    Raises:
        ValueError: ``label_smoothing`` outside [0, 1).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)

"""The seed's combined classification loss (cross-entropy + focal) and its mixup/cutmix.

With mixup/cutmix, build the mixer with :func:`make_mixup` (``timm.data.Mixup(..., label_smoothing=0.1)``):
timm folds the label smoothing into the mixed soft targets, and :class:`CombinedClassificationLoss`
applies its own smoothing only to hard (class-index) targets, so smoothing is applied exactly once.
"""

from __future__ import annotations

import timm.data
import torch
import torch.nn.functional as F
from torch import nn


def _soft_targets(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """``(N, C)`` float target rows: hard ``(N,)`` int64 labels one-hot smoothed, soft rows as they are."""
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape (N, C), got {tuple(logits.shape)}")
    n, c = logits.shape
    if target.ndim == 1:
        if target.dtype.is_floating_point or target.shape[0] != n:
            raise ValueError(
                f"target: expected (N,)={n} int64 class indices or (N, C) float rows, "
                f"got {tuple(target.shape)} {target.dtype}"
            )
        if n and (int(target.min()) < 0 or int(target.max()) >= c):
            raise ValueError(f"target: class indices must lie in [0, {c}), got [{int(target.min())}, "
                             f"{int(target.max())}]")
        # Same smoothing as torch's cross_entropy(label_smoothing=e) and timm's Mixup: (1-e) one-hot + e/C.
        onehot = F.one_hot(target, c).to(logits.dtype)
        return onehot * (1.0 - smoothing) + smoothing / c
    if target.shape != logits.shape or not target.dtype.is_floating_point:
        raise ValueError(
            f"target: expected (N,) int64 class indices or (N, C)={tuple(logits.shape)} float rows, "
            f"got {tuple(target.shape)} {target.dtype}"
        )
    return target.to(logits.dtype)


class CombinedClassificationLoss(nn.Module):
    """``ce_weight`` x cross-entropy + ``focal_weight`` x focal loss, as in the seed (0.7 / 0.3).

    With target rows ``t`` (``(N, C)``, each summing to 1) and ``p = softmax(logits)``, per sample:

    - cross-entropy: ``CE = -sum_c t_c log p_c``
    - focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", extended to soft targets):
      ``FL = -sum_c t_c (1 - p_c)^gamma log p_c``; for a one-hot ``t`` it is the paper's
      ``-(1 - p_y)^gamma log p_y`` (without the alpha balancing, Food-101 is balanced).

    The loss is ``ce_weight * mean(CE) + focal_weight * mean(FL)`` over the batch.

    Targets:

    - ``(N,)`` int64 class indices: smoothed here to ``t = (1 - e) onehot + e / C`` (``e = label_smoothing``,
      torch's ``cross_entropy(label_smoothing=e)`` convention), used by both terms.
    - ``(N, C)`` float probability rows (e.g. from ``timm.data.Mixup``): used as given, NOT smoothed
      again. When training with mixup/cutmix build ``timm.data.Mixup(..., label_smoothing=0.1)``
      (:func:`make_mixup`), which already folds the smoothing into the mixed target.

    Args:
        ce_weight, focal_weight: non-negative term weights.
        label_smoothing: ``e`` in [0, 1), applied to hard targets only.
        gamma: focal focusing parameter (>= 0; 0 turns the focal term into cross-entropy).

    Forward: ``logits`` ``(N, C)`` float, ``target`` as above -> scalar float loss.

    Raises:
        ValueError: bad constructor values, or logits/target shapes or dtypes that do not match.
    """

    def __init__(
        self,
        ce_weight: float = 0.7,
        focal_weight: float = 0.3,
        label_smoothing: float = 0.1,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if ce_weight < 0 or focal_weight < 0:
            raise ValueError(f"ce_weight/focal_weight: expected >= 0, got {ce_weight}/{focal_weight}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}")
        if gamma < 0:
            raise ValueError(f"gamma: expected >= 0, got {gamma}")
        self.ce_weight = ce_weight
        self.focal_weight = focal_weight
        self.label_smoothing = label_smoothing
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = _soft_targets(logits, target, self.label_smoothing)
        log_p = F.log_softmax(logits, dim=1)
        ce = -(t * log_p).sum(dim=1)
        focal = -(t * (1.0 - log_p.exp()).pow(self.gamma) * log_p).sum(dim=1)
        return self.ce_weight * ce.mean() + self.focal_weight * focal.mean()

    def extra_repr(self) -> str:
        return (f"ce_weight={self.ce_weight}, focal_weight={self.focal_weight}, "
                f"label_smoothing={self.label_smoothing}, gamma={self.gamma}")


def make_mixup(
    num_classes: int,
    mixup_alpha: float = 0.2,
    cutmix_alpha: float = 1.0,
    switch_prob: float = 0.5,
    label_smoothing: float = 0.1,
    prob: float = 1.0,
) -> timm.data.Mixup:
    """The seed's batch mixing: Mixup (Zhang et al. 2018, Beta(0.2)) or CutMix (Yun et al. 2019,
    Beta(1.0)), one of the two chosen per batch (``switch_prob`` = probability of CutMix).

    Returns ``timm.data.Mixup(mode="batch")``: ``mixup(x, y)`` maps ``(N, 3, H, W)`` float images
    (N even) and ``(N,)`` int64 labels to mixed images and ``(N, C)`` float soft targets with
    ``label_smoothing`` folded in; feed those to :class:`CombinedClassificationLoss` (which then
    does not smooth again). ``mixup.mixup_enabled = False`` switches it off (e.g. per stage).

    Raises:
        ValueError: ``num_classes < 1``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    return timm.data.Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
        mode="batch",
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )

"""The seed's combined classification loss (cross-entropy + focal) and its mixup/cutmix.

Seed 002: ``0.7 x CrossEntropyLoss(label_smoothing=0.1) + 0.3 x FocalLoss(gamma=2)``: label smoothing is a
property of the cross-entropy term only; the focal term sees the unsmoothed target. With mixup/cutmix the
seed's loss is ``lam x L(pred, y1) + (1 - lam) x L(pred, y2)``; both terms are linear in the target row,
so feeding the unsmoothed mixed row ``lam onehot(y1) + (1 - lam) onehot(y2)`` (:func:`make_mixup` builds
``timm.data.Mixup`` with ``label_smoothing=0``) gives exactly that.
"""

from __future__ import annotations

import timm.data
import torch
import torch.nn.functional as F
from torch import nn


def _target_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` float target rows: hard ``(N,)`` int64 labels one-hot, soft rows as they are."""
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
        return F.one_hot(target, c).to(logits.dtype)
    if target.shape != logits.shape or not target.dtype.is_floating_point:
        raise ValueError(
            f"target: expected (N,) int64 class indices or (N, C)={tuple(logits.shape)} float rows, "
            f"got {tuple(target.shape)} {target.dtype}"
        )
    return target.to(logits.dtype)


class CombinedClassificationLoss(nn.Module):
    """``ce_weight`` x label-smoothed cross-entropy + ``focal_weight`` x focal loss, as in seed 002 (0.7 / 0.3).

    With target rows ``t`` (``(N, C)``, each summing to 1), ``e = label_smoothing`` and
    ``p = softmax(logits)``, per sample:

    - cross-entropy with label smoothing (Szegedy et al. 2016; torch's ``cross_entropy(label_smoothing=e)``):
      ``CE = -sum_c s_c log p_c`` with ``s = (1 - e) t + e / C``;
    - focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", extended to soft targets), on the
      **unsmoothed** target: ``FL = -sum_c t_c (1 - p_c)^gamma log p_c``; for a one-hot ``t`` it is the
      paper's ``-(1 - p_y)^gamma log p_y`` (without the alpha balancing, Food-101 is balanced).

    The loss is ``ce_weight * mean(CE) + focal_weight * mean(FL)`` over the batch. Both terms are linear in
    ``t``, so a mixed row ``lam onehot(y1) + (1 - lam) onehot(y2)`` gives the seed's
    ``lam L(y1) + (1 - lam) L(y2)``. Smoothing only the CE term puts the optimum of one sample at
    ``p(true) = 0.902`` for 101 classes (0.866 when the focal term is smoothed too).

    Targets: ``(N,)`` int64 class indices or ``(N, C)`` float probability rows, **unsmoothed** (e.g. from
    :func:`make_mixup`, which builds ``timm.data.Mixup`` with ``label_smoothing=0``).

    Args:
        ce_weight, focal_weight: non-negative term weights.
        label_smoothing: ``e`` in [0, 1), applied in the CE term only.
        gamma: focal focusing parameter (>= 0; 0 turns the focal term into cross-entropy).

    Forward: ``logits`` ``(N, C)`` float, ``target`` as above -> scalar float loss. :meth:`parts` returns the
    two weighted-before terms as well.

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

    def parts(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss", "ce", "focal"}``: the combined loss and the batch means of its two (unweighted) terms."""
        t = _target_rows(logits, target)
        log_p = F.log_softmax(logits, dim=1)
        c = logits.shape[1]
        smoothed = t * (1.0 - self.label_smoothing) + self.label_smoothing / c
        ce = -(smoothed * log_p).sum(dim=1).mean()
        focal = -(t * (1.0 - log_p.exp()).pow(self.gamma) * log_p).sum(dim=1).mean()
        return {"loss": self.ce_weight * ce + self.focal_weight * focal, "ce": ce, "focal": focal}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.parts(logits, target)["loss"]

    def extra_repr(self) -> str:
        return (f"ce_weight={self.ce_weight}, focal_weight={self.focal_weight}, "
                f"label_smoothing={self.label_smoothing}, gamma={self.gamma}")


def make_mixup(
    num_classes: int,
    mixup_alpha: float = 0.2,
    cutmix_alpha: float = 1.0,
    switch_prob: float = 0.5,
    prob: float = 1.0,
) -> timm.data.Mixup:
    """The seed's batch mixing: Mixup (Zhang et al. 2018, Beta(0.2)) or CutMix (Yun et al. 2019,
    Beta(1.0)), one of the two chosen per batch (``switch_prob`` = probability of CutMix).

    Returns ``timm.data.Mixup(mode="batch", label_smoothing=0)``: ``mixup(x, y)`` maps ``(N, 3, H, W)``
    float images (N even) and ``(N,)`` int64 labels to mixed images and ``(N, C)`` float unsmoothed
    mixed targets; :class:`CombinedClassificationLoss` smooths them inside its CE term only. timm
    mixes ``x`` **in place**: call it on a copy (:func:`foodrec.train.make_step` does).
    ``mixup.mixup_enabled = False`` switches it off (e.g. per stage).

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
        label_smoothing=0.0,
        num_classes=num_classes,
    )

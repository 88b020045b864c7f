"""Losses of the roof heads and their weighted, label-masked sum.

Choices (documented as the issue asks):

- class maps (superstructures, segments): cross-entropy (superstructures optionally class-weighted
  and/or focal: ``--sup-class-weights``, ``--sup-focal-gamma``) + soft Dice averaged over the
  classes present in the batch (:func:`soft_dice_present`), pixels with
  :data:`~roofseg.data.IGNORE_INDEX` excluded. CE learns every pixel; the weights and Dice keep
  the small superstructure classes from drowning in background.
- outline: BCE + binary soft Dice (``smp.losses.SoftBCEWithLogitsLoss`` + ``DiceLoss(mode="binary")``).
- lines (thin structures, a few % of the pixels): positive-weighted BCE on the three maps
  (``pos_weight`` default 10 for the inner/eave maps, the junction heatmap a soft target) plus soft
  Dice on the two line maps. Weighted BCE rather than focal loss: with 1-3 px wide targets the
  per-pixel positives are known to be rare, a fixed weight expresses exactly that, and Dice adds
  the overlap term that rewards continuous lines.
- ``--task multi``: ``sum_t w_t * L_t``, each L_t computed only over the samples of the batch that
  carry label t (``has_<head>``); a head whose label no sample of the batch has contributes 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from roofseg.data.dataset import IGNORE_INDEX


def soft_dice_present(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - mean soft Dice`` over the classes **present in the target** of the batch (ignored pixels
    left out), so absent classes neither dilute nor dominate the term (smp's ``DiceLoss`` averages
    over all classes with absent ones counted as 0).

    Shapes: ``(N, C, H, W)`` logits, ``(N, H, W)`` int64 targets. Returns a scalar float32.
    """
    c = logits.shape[1]
    valid = (target != IGNORE_INDEX).unsqueeze(1).float()
    prob = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp(0, c - 1) * (target != IGNORE_INDEX), c).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter, card = (prob * onehot).sum(dims), (prob + onehot).sum(dims)
    dice = (2 * inter + eps) / (card + eps)
    present = onehot.sum(dims) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    return 1.0 - dice[present].mean()


class ClassMapLoss(torch.nn.Module):
    """``ce_weight * CE + dice_weight * (1 - soft Dice)`` for ``(N, C, H, W)`` logits and
    ``(N, H, W)`` int64 targets (``IGNORE_INDEX`` ignored). Returns a scalar float32.

    Args:
        class_weights: ``(C,)`` per-class weights of the CE/focal term (None: all 1); the weighted
            mean divides by the summed weights of the labelled pixels, as ``F.cross_entropy`` does.
        focal_gamma: > 0 turns CE into the focal loss ``(1 - p_t)^gamma * CE`` (Lin et al. 2017).
        dice_present_only: Dice averaged over the classes present in the batch
            (:func:`soft_dice_present`) instead of smp's ``DiceLoss`` over all classes.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, class_weights=None,
                 focal_gamma: float = 0.0, dice_present_only: bool = True) -> None:
        super().__init__()
        self.ce_weight, self.dice_weight, self.gamma = ce_weight, dice_weight, float(focal_gamma)
        self.dice_present_only = dice_present_only
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", w)
        self.dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True, ignore_index=IGNORE_INDEX)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        valid = target != IGNORE_INDEX
        if not bool(valid.any()):
            ce = logits.sum() * 0.0
        elif self.gamma == 0 and self.class_weights is None:
            ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        else:
            nll = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
            loss = nll * (1 - torch.exp(-nll)) ** self.gamma if self.gamma > 0 else nll
            t = target.clamp(0, logits.shape[1] - 1)
            w = self.class_weights.to(logits.device)[t] if self.class_weights is not None else torch.ones_like(nll)
            w = w * valid
            ce = (loss * w).sum() / w.sum().clamp(min=1e-12)
        dice = soft_dice_present(logits, target) if self.dice_present_only else self.dice(logits, target)
        return self.ce_weight * ce + self.dice_weight * dice


class BinaryLoss(torch.nn.Module):
    """BCE + binary soft Dice for ``(N, 1, H, W)`` logits and {0, 1} float targets (scalar float32)."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        return (self.bce_weight * F.binary_cross_entropy_with_logits(logits, target)
                + self.dice_weight * self.dice(logits, target))


class ThinStructureLoss(torch.nn.Module):
    """Lines: positive-weighted BCE over the 3 maps + soft Dice over the 2 line maps.

    Args:
        pos_weight: BCE weight of positive pixels of the inner-line and eave maps.
        junction_pos_weight: the same for the junction heatmap.
        dice_weight: weight of the Dice term.

    Shapes: ``logits`` and ``target`` ``(N, 3, H, W)``; target in [0, 1]. Returns a scalar float32.
    """

    def __init__(self, pos_weight: float = 10.0, junction_pos_weight: float = 20.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        if pos_weight <= 0 or junction_pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight}, {junction_pos_weight}")
        self.register_buffer("pw", torch.tensor([pos_weight, pos_weight, junction_pos_weight]).view(1, 3, 1, 1))
        self.dice_weight = dice_weight
        self.dice = smp.losses.DiceLoss(mode="multilabel", from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pw.to(logits.device))
        return bce + self.dice_weight * self.dice(logits[:, :2], (target[:, :2] > 0.5).float())


class RoofLoss(torch.nn.Module):
    """Weighted sum of the head losses, each over the samples that carry its label.

    Args:
        weights: ``{head: weight}`` for the heads trained.
        line_pos_weight: :class:`ThinStructureLoss` ``pos_weight``.
        superstructure_class_weights, superstructure_focal_gamma: the superstructure
            :class:`ClassMapLoss`'s ``class_weights`` and ``focal_gamma``.

    ``forward(outputs, batch)`` returns ``(total, {head: loss})`` (scalars).
    """

    def __init__(self, weights: Mapping[str, float], line_pos_weight: float = 10.0,
                 superstructure_class_weights=None, superstructure_focal_gamma: float = 0.0) -> None:
        super().__init__()
        self.weights = dict(weights)
        self.losses = torch.nn.ModuleDict({
            "outline": BinaryLoss(),
            "superstructures": ClassMapLoss(class_weights=superstructure_class_weights,
                                            focal_gamma=superstructure_focal_gamma),
            "segments": ClassMapLoss(),
            "lines": ThinStructureLoss(pos_weight=line_pos_weight)})

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = sum(o.float().sum() * 0.0 for o in outputs.values())  # keeps the graph when nothing is labelled
        parts: dict[str, torch.Tensor] = {}
        for head, w in self.weights.items():
            if head not in outputs or w == 0:
                continue
            has = batch.get(f"has_{head}")
            sel = has.bool() if has is not None else torch.ones(outputs[head].shape[0], dtype=torch.bool,
                                                                 device=outputs[head].device)
            if not bool(sel.any()):
                continue
            loss = self.losses[head](outputs[head][sel], batch[head][sel])
            parts[head] = loss.detach()
            total = total + w * loss
        return total, parts

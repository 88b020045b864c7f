"""Losses of the roof heads and their weighted, label-masked sum.

Choices (documented as the issue asks):

- class maps (superstructures, segments): cross-entropy + multiclass soft Dice
  (``smp.losses.DiceLoss(mode="multiclass")``), pixels with :data:`~roofseg.data.IGNORE_INDEX`
  excluded. CE learns every pixel; Dice keeps the small superstructure classes from drowning in
  background.
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


class ClassMapLoss(torch.nn.Module):
    """``ce_weight * CE + dice_weight * (1 - soft Dice)`` for ``(N, C, H, W)`` logits and
    ``(N, H, W)`` int64 targets (``IGNORE_INDEX`` ignored). Returns a scalar float32."""

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True, ignore_index=IGNORE_INDEX)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        if not (target != IGNORE_INDEX).any():
            ce = logits.sum() * 0.0
        return self.ce_weight * ce + self.dice_weight * self.dice(logits, target)


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

    ``forward(outputs, batch)`` returns ``(total, {head: loss})`` (scalars).
    """

    def __init__(self, weights: Mapping[str, float], line_pos_weight: float = 10.0) -> None:
        super().__init__()
        self.weights = dict(weights)
        self.losses = torch.nn.ModuleDict({
            "outline": BinaryLoss(), "superstructures": ClassMapLoss(), "segments": ClassMapLoss(),
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

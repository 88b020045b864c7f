"""Training loss for binary hair segmentation: binary cross-entropy + Dice (the plan's "BCE + Dice")."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch


class BceDiceLoss(torch.nn.Module):
    """``bce_weight * BCE(logits, target) + dice_weight * (1 - Dice(sigmoid(logits), target))``.

    Built from ``smp.losses.SoftBCEWithLogitsLoss`` (mean over all pixels, optional
    ``pos_weight`` for the hair class: the plan's "class balancing (hair vs background ratio)",
    e.g. ``n_background / n_hair``) and ``smp.losses.DiceLoss(mode="binary", from_logits=True)``
    (soft Dice over the whole batch: ``2 * sum(p * t) / (sum(p) + sum(t))`` with the sums over all
    images and pixels, ``p = sigmoid(logits)``; a batch with no hair pixel at all contributes a Dice
    term of 0, smp's convention).

    Args:
        pos_weight: weight of the positive (hair) pixels in the BCE term; ``None`` = 1.
        bce_weight: weight of the BCE term.
        dice_weight: weight of the Dice term.

    Shapes:
        ``logits``: ``(N, 1, H, W)`` float; ``target``: ``(N, 1, H, W)`` float in ``{0, 1}``
        (1 = hair). Returns a scalar float tensor.

    Raises:
        ValueError: negative weights, or ``logits`` and ``target`` shapes differ / are not ``(N, 1, H, W)``.
    """

    def __init__(
        self, pos_weight: float | None = None, bce_weight: float = 1.0, dice_weight: float = 1.0
    ) -> None:
        super().__init__()
        if bce_weight < 0 or dice_weight < 0:
            raise ValueError(f"bce_weight and dice_weight must be >= 0, got {bce_weight}, {dice_weight}")
        if pos_weight is not None and pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight}")
        pw = torch.tensor([pos_weight], dtype=torch.float32) if pos_weight is not None else None
        # ignore_index=None: targets are strictly {0, 1}, no ignore label.
        self.bce = smp.losses.SoftBCEWithLogitsLoss(pos_weight=pw, ignore_index=None)
        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(N, 1, H, W)`` logits against the ``(N, 1, H, W)`` {0, 1} float target (scalar)."""
        if logits.ndim != 4 or logits.shape[1] != 1 or logits.shape != target.shape:
            raise ValueError(
                f"BceDiceLoss: expected logits and target of the same shape (N, 1, H, W), "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        # Loss in float32 even under fp16/bf16 autocast: the Dice sums run over N*H*W pixels.
        logits = logits.float()
        target = target.float()
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)

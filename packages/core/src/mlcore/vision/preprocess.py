"""Evaluation preprocessing from a model's pretrained data config (timm's convention) and test-time augmentation.

timm records how its weights were trained in ``model.pretrained_cfg`` and
``timm.data.resolve_data_config`` turns it into ``{"input_size", "interpolation", "mean", "std", "crop_pct",
"crop_mode"}`` (:func:`mlcore.pretrained.resolve_data_config`); ``timm.data.create_transform(**cfg)`` then resizes the shorter side to
``floor(S / crop_pct)`` (bicubic for most weights) and centre-crops ``S x S``. :func:`eval_transform`
is that pipeline with ``torchvision.transforms.v2`` on the decoded ``uint8`` tensors this toolkit's
datasets deliver (what timm does on PIL images, within resampling round-off).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from mlcore.pretrained import DEFAULT_DATA_CONFIG, find_pretrained_cfg, resolve_data_config

__all__ = ["DEFAULT_DATA_CONFIG", "TTA_MODES", "TTAClassifier", "eval_transform", "find_pretrained_cfg",
           "resolve_data_config", "with_tta"]

TTA_MODES = ("none", "flip", "five-crop")
"""``--tta`` choices: none; the image and its horizontal mirror; four corner crops and the centre crop."""

# resolve_data_config (the model's data config) lives in mlcore.pretrained, next to the weights whose
# configs it reads; re-exported here for the toolkit's callers.


def _interp(name: str) -> InterpolationMode:
    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BICUBIC)


def eval_transform(cfg: Mapping[str, Any], tta: str = "none", *, normalize: bool = True) -> v2.Compose:
    """``tv_tensors.Image (3, H, W) uint8`` -> ``(3, S, S)`` float32 normalised (``(5, 3, S, S)`` for
    ``tta="five-crop"``), following timm's ``transforms_imagenet_eval`` for a data config ``cfg``.

    ``crop_mode`` ``"center"``: shorter side resized to ``floor(S / crop_pct)`` then a centre crop (five crops
    with ``five-crop``: torchvision's ``FiveCrop``, the 4 corners and the centre); ``"squash"``: resized to
    ``floor(S / crop_pct)`` square, then cropped. ``normalize=False`` stops at ``uint8`` (for a model that
    normalises on the device).

    Raises:
        ValueError: unknown ``tta``.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta: expected one of {TTA_MODES}, got {tta!r}")
    size = int(cfg["input_size"][-1])
    scale = math.floor(size / float(cfg.get("crop_pct") or 1.0))
    resize = (scale, scale) if cfg.get("crop_mode") == "squash" else scale
    ops: list[Any] = [v2.Resize(resize, interpolation=_interp(cfg.get("interpolation", "bicubic")), antialias=True)]
    tail: list[Any] = []
    if normalize:
        tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg["mean"]), list(cfg["std"]))]
    if tta == "five-crop":
        ops += [v2.FiveCrop(size), _Stack(), *tail]
    else:
        ops += [v2.CenterCrop(size), *tail]
    return v2.Compose(ops)


class _Stack(nn.Module):
    """``FiveCrop``'s tuple of 5 ``(3, S, S)`` images -> one ``(5, 3, S, S)`` tensor."""

    def forward(self, crops: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.stack([c.as_subclass(torch.Tensor) for c in crops])


class TTAClassifier(nn.Module):
    """Averages a classifier's logits over test-time views.

    ``forward(x)``: ``x`` ``(N, 3, S, S)`` or ``(N, V, 3, S, S)`` (V views, e.g. the 5 crops of
    :func:`eval_transform` with ``five-crop``) -> ``(N, C)``, the mean of the logits of every view (and of
    its horizontal mirror when ``flip``). Averaging logits keeps the output a logit vector, so the loss
    and softmax probabilities are computed from it as from a single view.
    """

    def __init__(self, model: nn.Module, flip: bool = False) -> None:
        super().__init__()
        self.model = model
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = x if x.ndim == 5 else x.unsqueeze(1)
        if self.flip:
            views = torch.cat([views, views.flip(-1)], dim=1)
        n, v = views.shape[:2]
        logits = self.model(views.flatten(0, 1))
        return logits.view(n, v, -1).mean(dim=1)


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """``model`` wrapped for ``tta`` (:data:`TTA_MODES`): ``flip`` -> :class:`TTAClassifier` with mirroring,
    ``five-crop`` -> averaging the 5 views, ``none`` -> ``model`` itself."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta: expected one of {TTA_MODES}, got {tta!r}")
    return model if tta == "none" else TTAClassifier(model, flip=tta == "flip")

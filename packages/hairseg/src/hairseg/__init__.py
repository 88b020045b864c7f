"""hairseg: hair segmentation (Figaro-1k) from a MediaPipe zero-train baseline to finetuned U-Nets,
TorchScript/ONNX export with a model registry, and hair recolouring of photos.

Python API (imported lazily so ``import hairseg`` stays light)::

    from hairseg import segment_hair, recolor_hair, HAIR_COLORS
    mask = segment_hair(photo, "models/hair_segmenter_v1.0.onnx")   # (H, W) uint8 0..255
    out = recolor_hair(photo, mask, "auburn")                          # (H, W, 3) uint8
"""

from __future__ import annotations

import importlib
from typing import Any

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)

_LAZY = {
    "segment_hair": "hairseg.inference",
    "load_predictor": "hairseg.inference",
    "recolor_hair": "hairseg.recolor",
    "postprocess_mask": "hairseg.recolor",
    "HAIR_COLORS": "hairseg.recolor",
    "build_model": "hairseg.models",
    "find_samples": "hairseg.data",
    "HairSegDataset": "hairseg.data",
    "HairSegMetrics": "hairseg.metrics",
    "MediaPipeSegmenter": "hairseg.baseline",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hairseg' has no attribute {name!r}")

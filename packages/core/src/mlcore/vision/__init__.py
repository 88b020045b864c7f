"""The image-classification toolkit shared by foodrec and plantid (issue 15).

- :mod:`mlcore.vision.index`: Food-101, parquet, PlantNet-300K and ImageFolder indexes with train / val /
  test splits (``split.json``).
- :mod:`mlcore.vision.images`: decoding, :class:`ImageDataset` (unreadable photos recorded in a
  :class:`mlcore.data.BadSampleLog`), :func:`check_images`.
- :mod:`mlcore.vision.preprocess`: evaluation preprocessing from a model's pretrained data config (timm's
  ``resolve_data_config``), test-time augmentation.
- :mod:`mlcore.vision.training`: :class:`ClassifierTrainer` (checkpoints name their classes),
  :class:`EpochTrainStats` (training accuracy/F1, loss parts, samples/s, memory per epoch).
- :mod:`mlcore.vision.commands`: the bodies of ``<domain>-eval``, ``-predict`` and ``-export``.

Needs torchvision and timm (and onnx + onnxruntime for export), which the classification domains install;
``import mlcore`` does not import this package.
"""

from __future__ import annotations

from mlcore.vision.commands import (
    LoadedClassifier,
    class_names,
    eval_main,
    expand_images,
    export_main,
    predict_main,
)
from mlcore.vision.images import ImageDataset, check_images, load_image
from mlcore.vision.index import DataError, ImageIndex, Sample, load_index
from mlcore.vision.preprocess import TTA_MODES, TTAClassifier, eval_transform, resolve_data_config, with_tta
from mlcore.vision.training import (
    BAD_IMAGE_HINT,
    ClassificationConfig,
    ClassifierTrainer,
    EpochTrainStats,
    capped_workers,
)

__all__ = [
    "BAD_IMAGE_HINT", "TTA_MODES", "ClassificationConfig", "ClassifierTrainer", "DataError", "EpochTrainStats", "ImageDataset", "ImageIndex",
    "LoadedClassifier", "Sample", "TTAClassifier", "capped_workers", "check_images", "class_names", "eval_main",
    "eval_transform", "expand_images", "export_main", "load_image", "load_index", "predict_main", "resolve_data_config", "with_tta",
]

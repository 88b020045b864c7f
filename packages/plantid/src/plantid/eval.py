"""``plantid-eval --checkpoint PATH --data PATH [--split test] [--tta flip|five-crop]``: top-1/top-5/macro-F1 of
a checkpoint on a split (default: test, the reported figure; val selected the checkpoint).

The metrics are one JSON object on the last stdout line (DESIGN.md). ``--out DIR`` also writes
``confusion_matrix.png`` and ``per_class.csv``. The splits are rebuilt exactly as in training (from the
checkpoint's config) and images get the model's evaluation preprocessing (:func:`mlcore.vision.eval_main`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore.checkpoint import CheckpointError, check_architectures, load_checkpoint
from mlcore.vision import LoadedClassifier, class_names, eval_main, resolve_data_config
from plantid.models import PlantClassifier, build_model
from plantid.train import make_step


def model_from_checkpoint(path: str | Path, num_classes: int | None = None) -> tuple[PlantClassifier, dict[str, Any]]:
    """Rebuild the model of a ``plantid-train`` checkpoint (no download) and load its weights.

    Returns ``(model in eval mode, the run's config dict)``. ``num_classes`` defaults to the head's size.

    Raises:
        CheckpointError: not a plantid checkpoint, or weights that do not fit the architecture.
    """
    ckpt = load_checkpoint(path, expect_domain="plantid", flag="--checkpoint")
    cfg: dict[str, Any] = ckpt.get("config") or {}
    if "model_type" not in cfg or "model" not in ckpt:
        raise CheckpointError(f"{path}: no plantid config (expected a checkpoint written by plantid-train)")
    state = ckpt["model"]
    if num_classes is None:
        last = [k for k in state if k.startswith("head.") and k.endswith(".weight")][-1]
        num_classes = state[last].shape[0]
    model = build_model(cfg["model_type"], num_classes, pretrained=False, image_size=cfg.get("image_size", 448),
                        head=cfg.get("head", "linear"), dropout=cfg.get("dropout", 0.0))
    check_architectures(ckpt, model, name=f"--checkpoint {path}")  # e.g. efficientnet_lite0 vs tf_efficientnet_lite0
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match {cfg['model_type']} with {num_classes} classes "
                              f"({str(exc).splitlines()[0]})") from exc
    return model.eval(), cfg


def load_classifier(path: Path) -> LoadedClassifier:
    """A ``plantid-train`` checkpoint as a :class:`mlcore.vision.LoadedClassifier` (model, classes, preprocessing).

    Raises:
        CheckpointError: as :func:`model_from_checkpoint`, or a class list that does not fit the head.
    """
    ckpt = load_checkpoint(path, expect_domain="plantid", flag="--checkpoint")
    classes, labels = class_names(ckpt, path)
    model, cfg = model_from_checkpoint(path)
    if len(classes) != model.head[-1].out_features:
        raise CheckpointError(f"{path}: {model.head[-1].out_features} outputs but {len(classes)} class names")
    return LoadedClassifier(model, cfg, classes, labels, resolve_data_config(model, cfg.get("image_size", 448)),
                            make_step(cfg.get("label_smoothing", 0.0)))


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``plantid-eval``: exit 0 ok, 2 bad flags, 1 bad data or checkpoint."""
    return eval_main(argv, prog="plantid-eval", load=load_classifier)


if __name__ == "__main__":
    raise SystemExit(main())

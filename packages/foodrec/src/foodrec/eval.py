"""``foodrec-eval``: top-1/top-5/macro-F1 of a checkpoint on a split (default: test, the reported figure), with
a confusion-matrix PNG and a per-class report CSV (``--out DIR``), ``--tta flip|five-crop``. The metrics are
one JSON object on the last line (:func:`mlcore.vision.eval_main`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from foodrec.losses import CombinedClassificationLoss
from foodrec.models import build_model
from foodrec.train import make_step
from mlcore.checkpoint import CheckpointError, check_architectures, load_checkpoint
from mlcore.vision import LoadedClassifier, class_names, eval_main, resolve_data_config


def load_classifier(path: Path) -> LoadedClassifier:
    """Rebuild the model of a ``foodrec-train`` checkpoint (no download), with its classes and preprocessing.

    Raises:
        CheckpointError: not a foodrec checkpoint, or weights that do not fit the recorded architecture.
    """
    ckpt = load_checkpoint(path, expect_domain="foodrec", flag="--checkpoint")
    cfg: dict[str, Any] = ckpt.get("config") or {}
    if "backbone" not in cfg or "model" not in ckpt:
        raise CheckpointError(f"{path}: no foodrec config (expected a checkpoint written by foodrec-train)")
    classes, labels = class_names(ckpt, path)
    model = build_model(cfg["backbone"], num_classes=len(classes), pretrained=None)
    check_architectures(ckpt, model, name=f"--checkpoint {path}")  # e.g. efficientnet_lite0 vs tf_efficientnet_lite0
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match {cfg['backbone']} with {len(classes)} classes "
                              f"({str(exc).splitlines()[0]})") from exc
    loss = CombinedClassificationLoss(ce_weight=cfg.get("ce_weight", 0.7), focal_weight=cfg.get("focal_weight", 0.3),
                                      label_smoothing=cfg.get("label_smoothing", 0.1), gamma=cfg.get("focal_gamma", 2.0))
    return LoadedClassifier(model.eval(), cfg, classes, labels, resolve_data_config(model, cfg.get("image_size", 300)),
                            make_step(loss, None))


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``foodrec-eval``: exit 0 ok, 2 bad flags, 1 bad data or checkpoint."""
    return eval_main(argv, prog="foodrec-eval", load=load_classifier)


if __name__ == "__main__":
    raise SystemExit(main())

"""``plantid-eval --checkpoint PATH --data PATH [--split val]``: top-1/top-5/macro-F1 of a checkpoint.

The metrics are one JSON object on the last stdout line (DESIGN.md). ``--out DIR`` also writes
``confusion_matrix.png`` and ``per_class.csv``. The split is rebuilt exactly as in training (same
``--val-fraction`` and ``--seed`` from the checkpoint's config) and images go through the same
preprocessing the run validated with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore import make_loader
from mlcore.checkpoint import CheckpointError, load_checkpoint
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from mlcore.devices import build_strategy
from mlcore.reports import write_classification_report
from mlcore.trainer import evaluate_model
from plantid.data import DataError, PlantDataset, decode_transform, eval_transform, load_index
from plantid.metrics import ClassificationMetrics
from plantid.models import PlantClassifier, build_model
from plantid.train import make_step


def model_from_checkpoint(path: str | Path, num_classes: int | None = None) -> tuple[PlantClassifier, dict[str, Any]]:
    """Rebuild the model of a ``plantid-train`` checkpoint (no download) and load its weights.

    Returns ``(model in eval mode, the run's config dict)``. ``num_classes`` defaults to the head's size.

    Raises:
        CheckpointError: not a plantid checkpoint, or weights that do not fit the architecture.
    """
    ckpt = load_checkpoint(path, expect_domain="plantid")
    cfg: dict[str, Any] = ckpt.get("config") or {}
    if "model_type" not in cfg or "model" not in ckpt:
        raise CheckpointError(f"{path}: no plantid config (expected a checkpoint written by plantid-train)")
    state = ckpt["model"]
    if num_classes is None:
        last = [k for k in state if k.startswith("head.") and k.endswith(".weight")][-1]
        num_classes = state[last].shape[0]
    model = build_model(cfg["model_type"], num_classes, pretrained=False, image_size=cfg.get("image_size", 448),
                        head=cfg.get("head", "linear"), dropout=cfg.get("dropout", 0.0))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match {cfg['model_type']} with {num_classes} classes "
                              f"({str(exc).splitlines()[0]})") from exc
    return model.eval(), cfg


def preprocess(cfg: dict[str, Any]):
    """The evaluation transform the run validated with (uint8 resize with ``gpu_aug``, else float)."""
    size = cfg.get("image_size", 448)
    return decode_transform(size) if cfg.get("gpu_aug", True) else eval_transform(size)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``plantid-eval``: exit 0 ok, 2 bad flags, 1 bad data or checkpoint."""
    p = ArgumentParser(prog="plantid-eval", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="best_val_top1.pt / last.pt written by plantid-train")
    p.add_argument("--data", required=True, help="ImageFolder or PlantNet-300K root")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="val")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--out", default=None, help="write confusion_matrix.png and per_class.csv here")

    def run() -> int:
        args = p.parse_args(argv)
        if not Path(args.data).exists():
            raise ConfigError(f"--data {args.data}: folder not found")
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {args.batch_size})")
        model, cfg = model_from_checkpoint(args.checkpoint)
        index = load_index(args.data, val_fraction=cfg.get("val_fraction", 0.2), seed=cfg.get("seed", 0))
        if index.num_classes != model.head[-1].out_features:
            raise CheckpointError(f"{args.checkpoint}: the model has {model.head[-1].out_features} classes, "
                                  f"{args.data} has {index.num_classes}")
        strategy = build_strategy(args.device)
        model = strategy.prepare_model(model)
        ds = PlantDataset(index.samples(args.split), preprocess(cfg))
        metric = ClassificationMetrics(index.num_classes)
        loader = make_loader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
        result = evaluate_model(model, loader, make_step(cfg.get("label_smoothing", 0.0)), [metric], strategy,
                                desc=args.split)
        per_class = metric.per_class_f1(index.labels)
        if args.out:
            write_classification_report(metric, index.classes, index.labels, args.out)
        print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, "n_images": len(ds),
                          **result, "per_class_f1": per_class}))
        return 0

    return run_cli(run, prog="plantid-eval", user_errors=(DataError, CheckpointError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())

"""``foodrec-eval``: top-1/top-5/macro-F1 of a checkpoint on a split, with a confusion-matrix PNG
and a per-class report CSV (``--out DIR``). The metrics are one JSON object on the last line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from foodrec.data import DataError, FoodDataset, eval_transform, load_index
from foodrec.losses import CombinedClassificationLoss
from foodrec.metrics import ClassificationMetrics
from foodrec.models import build_model
from foodrec.train import make_step
from mlcore import make_loader
from mlcore.checkpoint import CheckpointError, load_checkpoint
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from mlcore.devices import build_strategy
from mlcore.reports import write_classification_report
from mlcore.trainer import evaluate_model


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``foodrec-eval``: exit 0 ok, 2 bad flags, 1 bad data or checkpoint."""
    p = ArgumentParser(prog="foodrec-eval", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="best_*.pt / last.pt written by foodrec-train")
    p.add_argument("--data", required=True, help="Food-101 root (food-101/ or its parent)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="test")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--out", default=None, help="write confusion_matrix.png and per_class.csv here")

    def run() -> int:
        args = p.parse_args(argv)
        if not Path(args.data).exists():
            raise ConfigError(f"--data {args.data}: folder not found")
        ckpt = load_checkpoint(args.checkpoint, expect_domain="foodrec", flag="--checkpoint")
        cfg: dict[str, Any] = ckpt.get("config") or {}
        if "backbone" not in cfg:
            raise CheckpointError(f"{args.checkpoint}: no foodrec config (expected a checkpoint from foodrec-train)")
        index = load_index(args.data, val_fraction=cfg.get("val_fraction", 0.15), seed=cfg.get("seed", 0))
        model = build_model(cfg["backbone"], num_classes=len(index.classes), pretrained=None)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{args.checkpoint}: weights do not match {cfg['backbone']} with "
                                  f"{len(index.classes)} classes ({str(exc).splitlines()[0]})") from exc
        strategy = build_strategy(args.device)
        model = strategy.prepare_model(model)
        ds = FoodDataset(index.samples(args.split), eval_transform(cfg.get("image_size", 300)))
        metric = ClassificationMetrics(len(index.classes))
        step = make_step(CombinedClassificationLoss(label_smoothing=cfg.get("label_smoothing", 0.1)), None)
        result = evaluate_model(model, make_loader(ds, batch_size=args.batch_size, shuffle=False), step, [metric],
                                strategy, desc=args.split)
        per_class = metric.per_class_f1(index.labels)
        if args.out:
            write_classification_report(metric, index.classes, index.labels, args.out)
        print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, "n_images": len(ds),
                          **result, "per_class_f1": per_class}))
        return 0

    return run_cli(run, prog="foodrec-eval", user_errors=(DataError, CheckpointError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())

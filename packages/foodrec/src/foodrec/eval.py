"""``foodrec-eval``: top-1/top-5/macro-F1 of a checkpoint on a split, with a confusion-matrix PNG
and a per-class report CSV (``--out DIR``). The metrics are one JSON object on the last line."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

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
from mlcore.trainer import evaluate_model


def confusion_png(confusion: np.ndarray, classes: Sequence[str], path: str | Path, *, cell: int = 28) -> Path:
    """Render a ``(C, C)`` confusion matrix (rows: true class, columns: predicted) as a PNG heatmap.

    Each row is normalised to recall (white 0 -> dark blue 1); the counts are written in the cells.
    """
    c = len(classes)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    margin = 8 + 7 * max(len(n) for n in classes)
    img = Image.new("RGB", (margin + c * cell + 8, margin + c * cell + 8), "white")
    draw = ImageDraw.Draw(img)
    for i in range(c):
        draw.text((4, margin + i * cell + cell // 3), classes[i], fill="black")
        draw.text((margin + i * cell + 2, 4 + (i % 2) * 12), classes[i][:4], fill="black")
        for j in range(c):
            v = float(rows[i, j])
            colour = (int(255 * (1 - v)), int(255 * (1 - 0.8 * v)), 255)
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(220, 220, 220))
            if confusion[i, j]:
                draw.text((x0 + 4, y0 + cell // 3), str(int(confusion[i, j])), fill="white" if v > 0.5 else "black")
    path = Path(path)
    img.save(path)
    return path


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
        ckpt = load_checkpoint(args.checkpoint)
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
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            confusion_png(metric.confusion.cpu().numpy(), index.labels, out / "confusion_matrix.png")
            with open(out / "per_class.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["class", "label", "f1", "support"])
                support = metric.confusion.sum(dim=1).tolist()
                for name, label, s in zip(index.classes, index.labels, support, strict=True):
                    w.writerow([name, label, round(per_class[label], 6), int(s)])
        print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, "n_images": len(ds),
                          **result, "per_class_f1": per_class}))
        return 0

    return run_cli(run, prog="foodrec-eval", user_errors=(DataError, CheckpointError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())

"""``hairseg-eval``: IoU/F1/precision/recall of a model on a split, at each photo's full resolution.

``--checkpoint`` takes an mlcore checkpoint, a TorchScript, an ONNX or a MediaPipe ``.tflite`` file; ``--model mediapipe
--mediapipe-model FILE.tflite [--hair-class K]`` evaluates the zero-train MediaPipe baseline
through the Tasks ``ImageSegmenter`` on the same photos, so the seed's decision (MediaPipe good
enough, IoU >= 0.85, or finetune) is one command. The metrics are printed as one JSON object on
the last line of stdout; ``--out DIR`` also writes ``eval_examples.png`` and ``per_image.csv``. Photos are
loaded upright (EXIF) and predicted at their own aspect ratio (letterboxed, cropped back), scored at full
resolution. The default split is ``test`` (reported only); ``val`` is the one used for selection.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

import mlcore  # noqa: F401  (allocator environment before torch initialises a device)
from hairseg.data import DataError, HairSample, find_samples, load_image, load_mask
from hairseg.metrics import HairSegMetrics, verdict
from hairseg.viz import overlay
from mlcore.checkpoint import CheckpointError, load_checkpoint
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError


def evaluate_predictor(predictor: Any, samples: Sequence[HairSample], *, out_dir: Path | None = None,
                       examples: int = 8) -> dict[str, Any]:
    """Metrics of ``predictor.predict_proba`` over ``samples`` at full photo resolution.

    Args:
        predictor: anything with ``predict_proba(image (H, W, 3) uint8) -> (H, W) float32 in [0, 1]``
            (:mod:`hairseg.inference` predictors, :class:`hairseg.baseline.MediaPipeSegmenter`).
        samples: photos with their ground-truth masks (1 = hair).
        out_dir: if given, write ``per_image.csv`` and ``eval_examples.png`` there.

    Returns:
        ``{"n_images", "iou", "f1", "precision", "recall", "*_per_image", "verdict"}``.
    """
    metric = HairSegMetrics()
    rows, grid = [], []
    pick = set(np.linspace(0, len(samples) - 1, num=min(examples, len(samples)), dtype=int).tolist())
    for i, s in enumerate(tqdm(samples, desc="eval", disable=None)):
        image, mask = load_image(s.image), load_mask(s.mask)
        prob = predictor.predict_proba(image)
        if prob.shape != mask.shape:
            raise DataError(f"{s.image}: prediction is {prob.shape}, mask {s.mask} is {mask.shape}")
        logits = torch.logit(torch.from_numpy(prob).clamp(1e-6, 1 - 1e-6)).view(1, 1, *prob.shape)
        one = HairSegMetrics()
        batch = {"mask": torch.from_numpy(mask).view(1, 1, *mask.shape)}
        for m in (metric, one):
            m.update({"logits": logits}, batch)
        rows.append({"name": s.name, **{k: round(v, 6) for k, v in one.compute().items()
                                        if not k.endswith("_per_image")}})
        if out_dir is not None and i in pick:
            pred = ((prob >= 0.5) * 255).astype(np.uint8)
            tile = np.concatenate([image, overlay(image, mask * 255, (0, 200, 0)), overlay(image, pred)], axis=1)
            grid.append(np.asarray(Image.fromarray(tile).resize((3 * 256, 256))))
    result: dict[str, Any] = {"n_images": len(samples), **metric.compute()}
    result["verdict"] = verdict(result["iou"]) if len(samples) else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "per_image.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["name"])
            w.writeheader()
            w.writerows(rows)
        if grid:
            Image.fromarray(np.concatenate(grid, axis=0)).save(out_dir / "eval_examples.png")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="hairseg-eval", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", help="mlcore checkpoint (.pt), TorchScript (.pt), ONNX (.onnx) or MediaPipe "
                   "Tasks (.tflite) file")
    p.add_argument("--model", choices=("checkpoint", "mediapipe"), default="checkpoint",
                   help="what to evaluate: --checkpoint, or the MediaPipe zero-train baseline")
    p.add_argument("--mediapipe-model", help="MediaPipe Tasks segmentation model (.tflite)")
    p.add_argument("--hair-class", type=int, default=None,
                   help="confidence-mask index of hair (e.g. 1 for selfie_multiclass); default: the class "
                        "labelled hair, else the last mask")
    p.add_argument("--data", required=True, help="Figaro-1k root (or its parent), or a folder with images/ + masks/")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                   help="test is the reported split (never used for selection); val selects checkpoints")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="validation fraction (default: the checkpoint's, else 0.15)")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the checkpoint's, else 0)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N photos of the split")
    p.add_argument("--device", default="cpu", help="device for PyTorch models")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="mlcore checkpoints: bf16 weights and inputs (fast on CPUs with AMX / AVX512_BF16; check "
                        "the IoU: bench/hairseg_latency.py)")
    p.add_argument("--out", default=None, help="also write per_image.csv and eval_examples.png here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``hairseg-eval``: exit 0 ok, 2 bad flags, 1 bad data or model file."""
    parser = build_parser()

    def run() -> int:
        args = parser.parse_args(argv)
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit must be >= 1 photo (got {args.limit}); leave it out to evaluate the whole split")
        if not Path(args.data).exists():
            raise ConfigError(f"--data {args.data}: folder not found")
        split_cfg: dict[str, Any] = {}
        if args.model == "mediapipe":
            if not args.mediapipe_model:
                raise ConfigError("--model mediapipe needs --mediapipe-model FILE.tflite")
            from hairseg.baseline import MediaPipeSegmenter

            predictor: Any = MediaPipeSegmenter(args.mediapipe_model, hair_class=args.hair_class)
            name = f"mediapipe:{Path(args.mediapipe_model).name}"
        else:
            if not args.checkpoint:
                raise ConfigError("--checkpoint PATH is required (or --model mediapipe)")
            from hairseg.inference import load_predictor

            predictor = load_predictor(args.checkpoint, device=args.device, hair_class=args.hair_class,
                                       precision=args.precision)
            name = str(args.checkpoint)
            if not str(args.checkpoint).endswith((".onnx", ".tflite")):
                try:
                    split_cfg = load_checkpoint(args.checkpoint, expect_domain="hairseg", flag="--checkpoint").get("config", {}) or {}
                except CheckpointError:
                    split_cfg = {}  # TorchScript archives hold no config
        samples = find_samples(args.data, args.split,
                               val_fraction=args.val_fraction or split_cfg.get("val_fraction", 0.15),
                               test_fraction=split_cfg.get("test_fraction", 0.15),
                               seed=args.seed if args.seed is not None else split_cfg.get("seed", 0))
        if args.limit is not None:
            samples = samples[: args.limit]
        try:
            result = evaluate_predictor(predictor, samples, out_dir=Path(args.out) if args.out else None)
        finally:
            getattr(predictor, "close", lambda: None)()
        print(json.dumps({"model": name, "split": args.split, **result}))
        return 0

    # ValueError: unknown model format (ModelFormatError), MediaPipe --hair-class out of range
    return run_cli(run, prog="hairseg-eval", user_errors=(DataError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())

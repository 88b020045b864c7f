"""Roof lines: the trained line model vs classical line detectors, line F1 at 3 px on roof_lines val.

Both are scored with the same code (``roofseg.metrics.line_counts``) in the same frame (tiles
resized to the checkpoint's image size, ground-truth lines drawn 1 px wide):

- model: the line head's inner/eave probabilities -> threshold 0.5 -> 1 px skeleton;
- LSD: OpenCV's line segment detector (``cv2.createLineSegmentDetector``) on the grey tile,
  segments drawn 1 px wide, kept only inside the model's predicted roof (outline head >= 0.5,
  dilated by the tolerance so that eaves on the roof edge survive);
- Hough: Canny edges (auto thresholds from the median) -> ``cv2.HoughLinesP``, restricted the same way;
- for context: LSD inside the true roof (an oracle mask) and LSD on the whole tile.

Usage:
    uv run python bench/roofseg_lines.py --checkpoint runs/roofseg-lines/checkpoints/best_val_line_f1.pt \
        --data ../shared/data/roof_lines [--limit N]
Prints one JSON object (F1s, precisions, recalls and the model/baseline F1 ratios).
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
import torch

from mlcore.pretrained import normalization
from roofseg.data import RoofDataset, find_samples, load_rgb
from roofseg.metrics import line_counts, prf, thin_lines
from roofseg.predict import load_model, predict_tile


def lsd_lines(grey: np.ndarray) -> np.ndarray:
    """1 px map of LSD segments (``(H, W)`` bool)."""
    lsd = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD)
    lines = lsd.detect(grey)[0]
    out = np.zeros(grey.shape, np.uint8)
    for x0, y0, x1, y1 in (lines.reshape(-1, 4) if lines is not None else []):
        cv2.line(out, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), 1, 1)
    return out > 0


def hough_lines(grey: np.ndarray) -> np.ndarray:
    """1 px map of probabilistic-Hough segments on Canny edges (``(H, W)`` bool)."""
    med = float(np.median(grey))
    edges = cv2.Canny(grey, int(max(0, 0.66 * med)), int(min(255, 1.33 * med)))
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=15, minLineLength=8, maxLineGap=3)
    out = np.zeros(grey.shape, np.uint8)
    for x0, y0, x1, y1 in (lines.reshape(-1, 4) if lines is not None else []):
        cv2.line(out, (int(x0), int(y0)), (int(x1), int(y1)), 1, 1)
    return out > 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--tolerance", type=int, default=3)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    model, cfg = load_model(args.checkpoint)
    size = int(cfg["image_size"])
    samples = find_samples(args.data, args.split, "lines")[: args.limit]
    mean, std = normalization(model)
    ds = RoofDataset(samples, ("outline", "lines"), size, train=False, mean=mean, std=std)
    tol = args.tolerance
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    keys = ("model", "lsd_pred_roof", "hough_pred_roof", "lsd_true_roof", "lsd_whole_tile")
    sums = {k: torch.zeros(4, dtype=torch.float64) for k in keys}
    t0 = time.perf_counter()
    for i, s in enumerate(samples):
        item = ds[i]
        gt = item["lines_thin"][0].numpy() > 0
        true_roof = cv2.dilate(item["outline"][0].numpy().astype(np.uint8), kernel) > 0
        tile = cv2.resize(load_rgb(s.image), (size, size), interpolation=cv2.INTER_AREA)
        probs = predict_tile(model, tile, size)
        pred = thin_lines(np.maximum(probs["lines"][0], probs["lines"][1]))
        roof = cv2.dilate((probs["outline"][0] >= 0.5).astype(np.uint8), kernel) > 0
        grey = cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY)
        lsd = lsd_lines(grey)
        maps = {"model": pred, "lsd_pred_roof": lsd & roof, "hough_pred_roof": hough_lines(grey) & roof,
                "lsd_true_roof": lsd & true_roof, "lsd_whole_tile": lsd}
        g = torch.from_numpy(gt)[None]
        for k, m in maps.items():
            sums[k] += line_counts(torch.from_numpy(m)[None], g, tol)
    result: dict[str, object] = {"split": args.split, "n_tiles": len(samples), "image_size": size, "tolerance_px": tol,
                                 "checkpoint": args.checkpoint, "seconds": round(time.perf_counter() - t0, 1)}
    for k, v in sums.items():
        prec, rec, f1 = prf(*v.tolist())
        result[k] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4)}
    for k in ("lsd_pred_roof", "hough_pred_roof"):
        b = result[k]["f1"]  # type: ignore[index]
        result[f"f1_ratio_model_vs_{k}"] = round(result["model"]["f1"] / b, 3) if b else None  # type: ignore[index]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Probe: hairseg inference size x horizontal-flip TTA on one split (issue 17 part 4; choose on val).

Usage: ``uv run --no-sync python bench/hairseg_tta_probe.py CKPT --data ../shared/data/figaro1k --sizes 224,320,384
[--split val]``. Pooled IoU at full photo resolution (:func:`hairseg.eval.evaluate_predictor`), bf16 eager
(``TorchPredictor(precision="bf16")``, IoU within rounding of fp32) to keep it short.
"""

from __future__ import annotations

import argparse

import numpy as np

from hairseg.data import find_samples
from hairseg.eval import evaluate_predictor
from hairseg.inference import TorchPredictor


class FlipTTA:
    """Mean of the hair probability of the photo and of its mirror (mirrored back)."""

    def __init__(self, predictor: TorchPredictor) -> None:
        self.predictor = predictor

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` -> ``(H, W) float32`` in [0, 1]."""
        flipped = self.predictor.predict_proba(np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
        return (self.predictor.predict_proba(image) + flipped) / 2


def main() -> None:
    """Print one pooled IoU per size x {plain, flip}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--sizes", default="224,320,384")
    parser.add_argument("--split", default="val", choices=("train", "val", "test", "all"))
    args = parser.parse_args()
    samples = find_samples(args.data, args.split)
    for size in (int(s) for s in args.sizes.split(",")):
        plain = TorchPredictor(args.checkpoint, image_size=size, precision="bf16")
        for name, predictor in (("plain", plain), ("flip", FlipTTA(plain))):
            iou = evaluate_predictor(predictor, samples)["iou"]
            print(f"{args.split} size {size} {name}: IoU {iou:.4f} (n={len(samples)})", flush=True)


if __name__ == "__main__":
    main()

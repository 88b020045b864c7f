"""foodrec-train's training throughput vs a plain PyTorch loop: same model, batch, augmentation, data.

Both train EfficientNet-Lite0 with the seed's head (15 classes) on the real Food-101 sample
(``$MLDATA_ROOT/food101_sample``) at 224 px, batch 16, the seed's CPU-side augmentation in 2 loader
workers, mixup/CutMix (timm ``Mixup``) and the CE + focal loss, AdamW, for the same number of epochs.

- ``foodrec-train``: the real command (``foodrec.train.main``: ``--config cpu --no-two-stage``), its
  ``summary.json`` ``samples_per_s``: training samples over the time spent waiting for batches plus
  optimizer steps (validation and checkpoint writes excluded).
- ``plain``: a hand-written loop over a ``torch.utils.data.DataLoader`` of the same dataset, timed the
  same way (batch wait + step, per step).

Runs alternate (plain, foodrec-train, plain, ...) in a shuffled order per repeat; the printed ratio
is the median of the per-repeat paired ratios (pairing cancels the shared VM's drift).

Usage: uv run python bench/foodrec_throughput.py [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from foodrec.data import FoodDataset, load_index, train_transform
from foodrec.losses import CombinedClassificationLoss, make_mixup
from foodrec.models import build_model
from mlcore.pretrained import normalization

IMAGE_SIZE, BATCH, WORKERS = 224, 16, 2


def data_root() -> Path:
    root = Path(os.environ.get("MLDATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root / "food101_sample"


def plain(epochs: int) -> float:
    """Images/s of a hand-written loop (batch wait + step time, as the Trainer counts it)."""
    torch.manual_seed(0)
    index = load_index(data_root(), val_fraction=0.15, seed=0)
    n_classes = len(index.classes)
    model = build_model("efficientnet_lite0", num_classes=n_classes, pretrained="offline")
    mean, std = normalization(model)  # as foodrec-train: the weights' data config, not ImageNet's
    ds = FoodDataset(index.samples("train"), train_transform(IMAGE_SIZE, mean, std))
    loss_fn = CombinedClassificationLoss()
    mixup = make_mixup(n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS, drop_last=True,
                                         persistent_workers=True, generator=torch.Generator().manual_seed(0))
    samples, busy = 0, 0.0
    model.train()
    for _ in range(epochs):
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            x, y = mixup(batch["image"], batch["label"])
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # foodrec-train clips at 1.0 too
            opt.step()
            busy += time.perf_counter() - t0
            samples += x.shape[0]
    return samples / busy


def ours(epochs: int) -> float:
    """Images/s that ``foodrec-train`` reports in its summary (same definition as :func:`plain`)."""
    from foodrec.train import main

    with tempfile.TemporaryDirectory() as out:
        code = main(["--config", "cpu", "--no-two-stage", "--epochs", str(epochs), "--data", str(data_root()),
                     "--out", out, "--image-size", str(IMAGE_SIZE), "--batch-size", str(BATCH),
                     "--num-workers", str(WORKERS), "--device", "cpu", "--warmup-epochs", "0"])
        assert code == 0, f"foodrec-train exited {code}"
        return json.loads((Path(out) / "summary.json").read_text())["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    runs = {"plain": lambda: plain(args.epochs), "foodrec-train": lambda: ours(args.epochs)}
    rates: dict[str, list[float]] = {k: [] for k in runs}
    order = random.Random(0)
    for _ in range(args.repeats):
        names = list(runs)
        order.shuffle(names)
        for name in names:
            rates[name].append(runs[name]())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, EfficientNet-Lite0 + seed head, "
          f"{IMAGE_SIZE} px, batch {BATCH}, {WORKERS} workers, {args.epochs} epochs, {args.repeats} repeats")
    for name, values in rates.items():
        print(f"{name:>14}: median {statistics.median(values):6.2f} images/s  ({', '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(o / p for o, p in zip(rates["foodrec-train"], rates["plain"], strict=True))
    print(f"throughput ratio foodrec-train/plain (median of paired ratios): {ratio:.3f}")


if __name__ == "__main__":
    main()

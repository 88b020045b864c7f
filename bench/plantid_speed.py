"""plantid training speed: the seed's baseline vs its optimised configuration, in one run.

Both variants train the same model on the same data through ``plantid.train.train`` (mlcore's Trainer),
full fine-tuning (no frozen stage), for ``--steps`` optimizer updates of 32 samples each:

- baseline (the seed's "before"): micro-batch 32, no accumulation, 518 px, 4 loader workers,
  torchvision augmentation in the workers (``--no-gpu-aug``);
- optimised (the seed's "after"): micro-batch 16 x 2 accumulation steps, 448 px, 8 loader workers,
  uint8 decode+resize in the workers and kornia augmentation on the training device (``--gpu-aug``).

Worker counts are capped at the CPU count, as ``plantid-train`` does. The variants alternate
(``--repeats``) and the printed ratio is the median of per-repeat ratios of samples/s. Epoch time is
projected from samples/s over the dataset's training split; the data-wait fraction is the share of
training time spent waiting for the loader (mlcore's summary).

On a CPU the default model is ``dinov2_tiny`` and both image sizes are scaled by ``--size-scale``
(default 0.25: 518 -> 126 px, 448 -> 112 px, the nearest multiples of the patch size 14) so a run
takes minutes; on a GPU use ``--model-type dinov2_small --size-scale 1``.

    uv run python bench/plantid_speed.py                        # CPU defaults
    uv run python bench/plantid_speed.py --device cuda --model-type dinov2_small --size-scale 1 --steps 20
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
from pathlib import Path

from plantid.config import PlantIdConfig
from plantid.data import load_index
from plantid.train import train

VARIANTS = {
    "baseline": dict(batch_size=32, accum_steps=1, image_size=518, num_workers=4, gpu_aug=False),
    "optimized": dict(batch_size=16, accum_steps=2, image_size=448, num_workers=8, gpu_aug=True),
}
ABLATIONS = {  # the optimised configuration with one change undone
    "optimized_518px": dict(batch_size=16, accum_steps=2, image_size=518, num_workers=8, gpu_aug=True),
    "optimized_cpu_aug": dict(batch_size=16, accum_steps=2, image_size=448, num_workers=8, gpu_aug=False),
}


def scaled(size: int, scale: float) -> int:
    """``size * scale`` rounded to a multiple of the DINOv2 patch size 14 (at least 14)."""
    return max(14, round(size * scale / 14) * 14)


def measure(name: str, variant: dict, args: argparse.Namespace, out_root: Path) -> dict:
    cfg = PlantIdConfig(
        data=args.data, out=str(out_root / name), model_type=args.model_type, pretrained=False,
        frozen_epochs=0, epochs=1, max_steps=args.steps, device=args.device, lr=1e-4, warmup_epochs=0.0,
        seed=0, log_every_steps=1000, **{**variant, "image_size": scaled(variant["image_size"], args.size_scale)})
    cfg.validate()
    summary = train(cfg)
    return {"samples_per_s": summary["samples_per_s"], "data_wait_fraction": summary["data_wait_fraction"],
            "train_time_s": summary["train_time_s"], "steps": summary["steps"],
            "image_size": cfg.image_size, "workers": cfg.workers(), "micro_batch": cfg.batch_size,
            "accum_steps": cfg.accum_steps, "gpu_aug": cfg.gpu_aug}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(os.environ.get("MLDATA_ROOT", "../shared/data"), "flowers"))
    p.add_argument("--model-type", default="dinov2_tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=8, help="optimizer updates (32 samples each) per variant")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--size-scale", type=float, default=0.25, help="scale of the 518/448 px image sizes")
    p.add_argument("--ablation", action="store_true", help="also run the optimised config with 518 px / CPU aug")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n_train = len(load_index(args.data).samples("train"))
    variants = {**VARIANTS, **(ABLATIONS if args.ablation else {})}
    results: dict[str, list[dict]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                results[name].append(measure(f"{name}_{r}", variants[name], args, Path(tmp)))
    print(f"plantid speed: {args.model_type} on {args.device}, {args.steps} updates x 32 samples, "
          f"{args.repeats} repeat(s), {n_train} training images, cpu_count {os.cpu_count()}")
    print(f"{'variant':<20}{'px':>5}{'micro x accum':>15}{'workers':>9}{'aug':>8}{'samples/s':>11}"
          f"{'epoch (proj.)':>15}{'data wait':>11}{'speed-up':>10}")
    base = [r["samples_per_s"] for r in results["baseline"]]
    table = {}
    for name, runs in results.items():
        sps = statistics.median(r["samples_per_s"] for r in runs)
        ratio = statistics.median(r["samples_per_s"] / b for r, b in zip(runs, base, strict=True))
        wait = statistics.median(r["data_wait_fraction"] for r in runs)
        r0 = runs[0]
        table[name] = {**r0, "samples_per_s": sps, "data_wait_fraction": wait, "speedup_vs_baseline": ratio,
                       "epoch_time_s_projected": n_train / sps}
        print(f"{name:<20}{r0['image_size']:>5}{r0['micro_batch']:>9} x {r0['accum_steps']:<3}{r0['workers']:>9}"
              f"{'device' if r0['gpu_aug'] else 'cpu':>8}{sps:>11.2f}{n_train / sps:>13.0f} s{wait:>11.3f}"
              f"{ratio:>9.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()

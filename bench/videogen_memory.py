"""videogen GPU memory: the measured peak of one training update per stage vs the printed estimate.

For each stage (``vae``, ``backbone``) at the given model size, batch, frames and frame size: build
the model on the device, run one optimizer update exactly as ``videogen-train`` does (autocast at
``--precision``, GradScaler for fp16, AdamW, gradient clipping; the backbone stage encodes the clips
with the frozen VAE inside the step), and print ``torch.cuda.max_memory_allocated`` and
``max_memory_reserved`` beside :func:`videogen.train.memory_estimate` (a lower bound). Random clips
(memory does not depend on the pixel values); nothing is trained or saved.

    uv run python bench/videogen_memory.py --device cuda                       # gtx1070 sizes, batch 4
    uv run python bench/videogen_memory.py --device cuda --batch-size 2 --no-grad-checkpointing

Without a CUDA device it prints one line saying so and exits with code 1 (nothing to measure).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="videogen_memory", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (the peak is a CUDA allocator figure)")
    p.add_argument("--model-size", default="gtx1070", choices=("tiny", "gtx1070"), help="model widths")
    p.add_argument("--stages", default="vae,backbone", help="comma-separated stages to measure")
    p.add_argument("--batch-size", type=int, default=4, help="micro-batch")
    p.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    p.add_argument("--image-size", type=int, default=256, help="frame size in px")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"), help="autocast dtype")
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute blocks in backward (as the gtx1070 presets)")
    p.add_argument("--ema-decay", type=float, default=None, help="also keep mlcore's EMA of the weights")
    args = p.parse_args(argv)
    if not args.device.startswith("cuda"):
        print(f"videogen_memory: --device {args.device}: only cuda devices report a peak allocation", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"videogen_memory: --device {args.device}: no CUDA device on this machine "
              f"(torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        return 1

    from mlcore.config import TrainConfig
    from mlcore.optim import build_optimizer
    from videogen.config import VideoGenConfig
    from videogen.models import build_text_to_video, build_vae, model_size
    from videogen.train import make_backbone_step, make_vae_step, memory_estimate

    dev = torch.device(args.device)
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    rows = []
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        cfg = VideoGenConfig(data=".", stage=stage, model_size=args.model_size, num_frames=args.num_frames,
                             image_size=args.image_size, grad_checkpointing=args.grad_checkpointing,
                             ema_decay=args.ema_decay)
        est = memory_estimate(cfg, args.batch_size)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        size = model_size(args.model_size)
        vae = build_vae(size, grad_checkpointing=args.grad_checkpointing)
        if stage == "vae":
            model, step = vae.to(dev).train(), make_vae_step(1e-6, "l1")
        else:
            model = build_text_to_video(size, vae, grad_checkpointing=args.grad_checkpointing).to(dev).train()
            step = make_backbone_step(0.1)
        opt = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.01))
        ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
            args.ema_decay), use_buffers=True) if args.ema_decay else None)
        scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16")
        batch = {"video": torch.rand(args.batch_size, 3, args.num_frames, args.image_size, args.image_size,
                                     device=dev),
                 "caption": ["a grey rabbit climbs out of a burrow on a grassy hill"] * args.batch_size,
                 "index": torch.arange(args.batch_size)}
        try:
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = step(model, batch)["loss"]
            scaler.scale(loss.float()).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) / 2**30
            reserved = torch.cuda.max_memory_reserved(dev) / 2**30
            row = {"stage": stage, "model_size": args.model_size, "batch": args.batch_size,
                   "frames": args.num_frames, "px": args.image_size, "precision": args.precision,
                   "grad_checkpointing": args.grad_checkpointing, "ema": bool(args.ema_decay),
                   "peak_allocated_gib": round(peak, 3), "peak_reserved_gib": round(reserved, 3),
                   "estimate_lower_bound_gib": est["total_gib"],
                   "ratio_measured_over_estimate": round(reserved / est["total_gib"], 3)}
        except torch.OutOfMemoryError:
            row = {"stage": stage, "error": "out of memory", "estimate_lower_bound_gib": est["total_gib"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model, opt, ema, batch
    print(f"device: {torch.cuda.get_device_name(dev)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

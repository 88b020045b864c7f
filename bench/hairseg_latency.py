"""Benchmark: CPU latency of one 384x384 photo and held-out IoU of each hairseg inference variant.

Usage: ``uv run --no-sync python bench/hairseg_latency.py [--checkpoint PATH | --encoder NAME] [--image-size 384]
[--warmup 3] [--runs 20] [--iou-limit 40] [--calibration-images 32] [--threads N]``.

The model is ``--checkpoint`` (an mlcore checkpoint) or an untrained U-Net of ``--encoder`` (latency does not
depend on the weights; the IoU then means nothing and is skipped). It is exported exactly as ``hairseg-export``
does, to TorchScript, ONNX and ONNX int8 (static QDQ, calibrated on ``--calibration-images`` photos of the
*train* split: :func:`hairseg.export.quantize_onnx`), in a temporary folder.

Variants, all on the same letterboxed ``(1, 3, S, S)`` float32 input of a real Figaro-1k photo, batch 1:

- eager PyTorch as ``TorchPredictor`` runs it (``inference_mode``, ``channels_last``);
- TorchScript frozen (``TorchScriptPredictor``);
- ONNX Runtime fp32 (``OnnxPredictor``: default threads; and 2 threads without spinning);
- ONNX Runtime int8 QDQ (the same two thread settings).

Timing is round-robin: each of ``--runs`` rounds calls every variant once, so background load on the shared
CPU hits all variants alike; the median per variant is reported with its ratio to eager. IoU: each variant's
predictor is scored with :func:`hairseg.eval.evaluate_predictor` (full photo resolution, pooled IoU) on the first
``--iou-limit`` photos of the **test** split (never used for selection) with the checkpoint's split seed and
fractions. The 1-minute load average is printed before and after (other processes share the cores). The last
line of stdout is JSON: ``{"variants": {name: {"ms", "iou"}}, "load": [before, after], ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from hairseg.data import find_samples, load_image
from hairseg.eval import evaluate_predictor
from hairseg.export import calibration_inputs, export_onnx, export_torchscript, metadata_for, quantize_onnx
from hairseg.inference import OnnxPredictor, TorchPredictor, TorchScriptPredictor, quiet_torchscript_warnings
from hairseg.models import ENCODERS, build_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$MLDATA_ROOT`` or ``../shared/data`` seen from the repository root."""
    env = os.environ.get("MLDATA_ROOT")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def round_robin(fns: dict[str, Callable[[], object]], warmup: int, runs: int) -> dict[str, float]:
    """Median ms per function; each round calls every function once (shared-CPU noise spreads evenly)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in tqdm(range(runs), desc="timing", disable=None, leave=False):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, export the model, time and score every variant, print the table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet-lite0", choices=ENCODERS, help="untrained U-Net encoder")
    parser.add_argument("--checkpoint", type=Path, default=None, help="mlcore checkpoint instead of --encoder")
    parser.add_argument("--image-size", type=int, default=384, help="model input side S, px")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant")
    parser.add_argument("--runs", type=int, default=20, help="timed rounds (median reported)")
    parser.add_argument("--iou-limit", type=int, default=40, help="test photos scored per variant (0: skip IoU)")
    parser.add_argument("--calibration-images", type=int, default=32, help="train photos calibrating int8")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.image_size
    load_before = os.getloadavg()[0]
    figaro = data_root() / "figaro1k"

    with tempfile.TemporaryDirectory(prefix="hairseg-latency-") as tmp:
        tmp_dir = Path(tmp)
        ckpt = args.checkpoint
        if ckpt is None:
            torch.manual_seed(0)
            ckpt = tmp_dir / "untrained.pt"
            torch.save({"model": build_model(args.encoder).state_dict(),
                        "config": {"encoder": args.encoder, "image_size": size}}, ckpt)
        eager = TorchPredictor(ckpt, image_size=size)
        encoder = eager.config["encoder"]
        split_kw = {k: eager.config[k] for k in ("seed", "val_fraction", "test_fraction") if k in eager.config}
        photo_path = find_samples(figaro, "test", **split_kw)[0].image
        x = eager.preprocess(load_image(photo_path))
        meta = metadata_for(encoder, size, "bench", eager.mean, eager.std)
        ts_path, onnx_path, int8_path = tmp_dir / "model.pt", tmp_dir / "model.onnx", tmp_dir / "model.int8.onnx"
        export_torchscript(eager.model, ts_path, meta, torch.from_numpy(x))
        export_onnx(eager.model, onnx_path, meta, torch.from_numpy(x))
        calib = calibration_inputs(figaro, size, n=args.calibration_images, mean=eager.mean, std=eager.std, **split_kw)
        start = time.perf_counter()
        quantize_onnx(onnx_path, int8_path, calib)
        quantize_s = time.perf_counter() - start

        with quiet_torchscript_warnings():
            predictors = {
                "eager (TorchPredictor)": eager,
                "torchscript frozen": TorchScriptPredictor(ts_path, image_size=size),
                "onnx fp32": OnnxPredictor(onnx_path),
                "onnx fp32, 2 threads, no spinning": OnnxPredictor(onnx_path, threads=2, spinning=False),
                "onnx int8 QDQ": OnnxPredictor(int8_path),
                "onnx int8 QDQ, 2 threads, no spinning": OnnxPredictor(int8_path, threads=2, spinning=False),
            }
            ref = eager.predict_logits(x)
            diffs = {k: float(np.abs(p.predict_logits(x) - ref).max()) for k, p in predictors.items()}
            medians = round_robin({k: (lambda p=p: p.predict_logits(x)) for k, p in predictors.items()},
                                  args.warmup, args.runs)
        load_mid = os.getloadavg()[0]
        ious: dict[str, float | None] = dict.fromkeys(predictors)
        n_test = 0
        if args.iou_limit and args.checkpoint is not None:
            samples = find_samples(figaro, "test", **split_kw)[: args.iou_limit]
            n_test = len(samples)
            for key, p in predictors.items():
                if "2 threads" in key:  # same model file as the default-thread variant: same predictions
                    continue
                ious[key] = evaluate_predictor(p, samples)["iou"]
            for key in predictors:
                if ious[key] is None and "2 threads" in key:
                    ious[key] = ious[key.split(",")[0]]
    load_after = os.getloadavg()[0]

    base = medians["eager (TorchPredictor)"]
    print(f"\nhairseg CPU latency: Unet({encoder}) {'from ' + str(args.checkpoint) if args.checkpoint else 'untrained'}"
          f", input 1x3x{size}x{size} (letterboxed {photo_path.name})")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, {os.cpu_count()} CPUs, load average "
          f"{load_before:.2f} -> {load_mid:.2f} (timing) -> {load_after:.2f}; median of {args.runs} round-robin runs "
          f"after {args.warmup} warm-up; int8 calibrated on {len(calib)} train photos in {quantize_s:.1f} s")
    iou_head = f"IoU test ({n_test})" if n_test else "IoU"
    print(f"\n| {'variant':<40} | {'median ms':>9} | {'vs eager':>8} | {'max abs logit diff':>18} | {iou_head:>14} |")
    print(f"|{'-' * 42}|{'-' * 11}:|{'-' * 9}:|{'-' * 19}:|{'-' * 15}:|")
    for key, ms in medians.items():
        iou = f"{ious[key]:.4f}" if ious[key] is not None else "-"
        print(f"| {key:<40} | {ms:>9.1f} | {base / ms:>7.2f}x | {diffs[key]:>18.2e} | {iou:>14} |")
    print(json.dumps({"model": f"Unet({encoder})", "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                      "image_size": size, "test_photos": n_test, "load": [load_before, load_mid, load_after],
                      "variants": {k: {"ms": round(medians[k], 2), "iou": ious[k], "max_abs_logit_diff": diffs[k]}
                                   for k in medians}}))


if __name__ == "__main__":
    main()

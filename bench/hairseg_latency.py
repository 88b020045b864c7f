"""Benchmark: CPU latency of one 384x384 photo through eager PyTorch, TorchScript and ONNX Runtime.

Usage: ``uv run --no-sync python bench/hairseg_latency.py [--encoder mobilenet_v2] [--checkpoint PATH]
[--image-size 384] [--warmup 3] [--runs 10] [--threads N]``.

The photo is the first Figaro-1k sample under ``$MLDATA_ROOT/figaro1k`` (default ``../shared/data`` next to the
repository) resized to ``S x S`` (noise when the data is absent). The model is ``--checkpoint`` (an mlcore
checkpoint) or an untrained U-Net of ``--encoder`` (latency does not depend on the weights). It is exported with
:mod:`hairseg.export` to a temporary folder, exactly as ``hairseg-export`` does.

Variants, all on the same ``(1, 3, S, S)`` float32 input, batch 1:

- eager: ``torch.no_grad`` (reference), ``torch.inference_mode``, ``inference_mode`` + ``channels_last``;
- TorchScript: the exported archive, ``torch.jit.freeze`` of it, ``freeze`` + ``torch.jit.optimize_for_inference``;
- ONNX Runtime (CPUExecutionProvider, default threads): graph optimisation ``ORT_ENABLE_BASIC``,
  ``ORT_ENABLE_EXTENDED``, ``ORT_ENABLE_ALL``, and ``ORT_ENABLE_ALL`` without busy-waiting
  (``session.intra_op.allow_spinning=0``).

On a CPU shared with other processes, set ``OMP_WAIT_POLICY=PASSIVE`` (read when torch starts): PyTorch's
OpenMP threads otherwise spin at barriers and, oversubscribed, eager/TorchScript get ~10x slower.

Timing is round-robin: each of ``--runs`` rounds calls every variant once, so background load on the shared
CPU hits all variants alike; the median per variant is reported with its ratio to eager ``no_grad``
(>1 = faster) and its max abs logit difference to it. Then ``segment_hair`` end to end (preprocess + model +
post-processing) is timed with the predictor class of the fastest backend (as shipped: ``TorchPredictor``,
``TorchScriptPredictor`` or ``OnnxPredictor``), with its stages broken down. The 1-minute load average is
printed before and after (other processes may share the cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from tqdm import tqdm

from hairseg.data import find_samples, load_image, preprocess_image
from hairseg.export import export_onnx, export_torchscript, metadata_for
from hairseg.inference import (
    OnnxPredictor,
    TorchPredictor,
    TorchScriptPredictor,
    quiet_torchscript_warnings,
    segment_hair,
    sigmoid,
)
from hairseg.models import ENCODERS, build_model
from hairseg.recolor import postprocess_mask

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$MLDATA_ROOT`` or ``../shared/data`` seen from the repository root."""
    env = os.environ.get("MLDATA_ROOT")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def load_photo(size: int) -> tuple[np.ndarray, str]:
    """The first Figaro-1k photo resized to ``(size, size, 3) uint8`` (bilinear), or seeded noise."""
    root = data_root() / "figaro1k"
    if root.is_dir():
        sample = find_samples(root, "all")[0]
        image = Image.fromarray(load_image(sample.image)).resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image), f"{sample.image.name} resized to {size}x{size}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8), f"uniform noise {size}x{size} (no Figaro data)"


def ort_session(path: Path, level: ort.GraphOptimizationLevel, spinning: bool = True) -> ort.InferenceSession:
    """A CPU session at graph optimisation ``level``, default thread count, optionally without busy-waiting."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


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
    """Parse arguments, export the model, time every variant and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="mobilenet_v2", choices=ENCODERS, help="untrained U-Net encoder")
    parser.add_argument("--checkpoint", type=Path, default=None, help="mlcore checkpoint instead of --encoder")
    parser.add_argument("--image-size", type=int, default=384, help="photo and model input side S, px")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant")
    parser.add_argument("--runs", type=int, default=10, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.image_size
    load_before = os.getloadavg()[0]

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
        photo, photo_source = load_photo(size)
        x = preprocess_image(photo, size)
        meta = metadata_for(encoder, size, "bench")
        ts_path, onnx_path = tmp_dir / "model.pt", tmp_dir / "model.onnx"
        export_torchscript(eager.model, ts_path, meta, x)
        export_onnx(eager.model, onnx_path, meta, x)

        model = eager.model
        model_cl = build_model(encoder).eval()
        model_cl.load_state_dict(model.state_dict())
        model_cl = model_cl.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        with quiet_torchscript_warnings():
            scripted = torch.jit.load(str(ts_path)).eval()
            frozen = torch.jit.freeze(torch.jit.load(str(ts_path)).eval())
            optimised = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.load(str(ts_path)).eval()))
        sessions = {level: ort_session(onnx_path, getattr(ort.GraphOptimizationLevel, level))
                    for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")}
        no_spin = ort_session(onnx_path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, spinning=False)
        x_np = x.numpy()

        def no_grad(m: Callable, inp: torch.Tensor) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                with torch.no_grad():
                    return m(inp)
            return run

        def inference(m: Callable, inp: torch.Tensor) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                with torch.inference_mode():
                    return m(inp)
            return run

        variants: dict[str, Callable[[], object]] = {
            "eager no_grad": no_grad(model, x),
            "eager inference_mode": inference(model, x),
            "eager inference_mode + channels_last": inference(model_cl, x_cl),
            "torchscript (exported)": inference(scripted, x),
            "torchscript frozen": inference(frozen, x),
            "torchscript frozen + optimize_for_inference": inference(optimised, x),
            **{f"onnxruntime {level}": (lambda s=s: s.run(None, {"image": x_np})[0]) for level, s in sessions.items()},
            "onnxruntime ORT_ENABLE_ALL, no spinning": lambda: no_spin.run(None, {"image": x_np})[0],
        }
        with torch.inference_mode():
            ref = model(x).numpy()
        diffs = {}
        for key, fn in variants.items():
            with quiet_torchscript_warnings():
                out = fn()
            out = out if isinstance(out, np.ndarray) else out.contiguous().numpy()
            diffs[key] = float(np.abs(out - ref).max())
        with quiet_torchscript_warnings():
            medians = round_robin(variants, args.warmup, args.runs)

        # The shipped predictor classes, timed on the model alone, then segment_hair end to end.
        predictors = {"eager": eager, "torchscript": TorchScriptPredictor(ts_path), "onnx": OnnxPredictor(onnx_path)}
        shipped = round_robin({k: (lambda p=p: p.predict_logits(x_np)) for k, p in predictors.items()},
                              args.warmup, args.runs)
        fastest = min(shipped, key=shipped.get)
        pred = predictors[fastest]
        stages = round_robin({
            "preprocess_image": lambda: preprocess_image(photo, size),
            "model (predict_logits)": lambda: pred.predict_logits(x_np),
            "sigmoid + resize + postprocess_mask": lambda: postprocess_mask(
                sigmoid(ref[0, 0]), photo.shape[:2]),
            "segment_hair end to end": lambda: segment_hair(photo, pred),
        }, args.warmup, args.runs)
    load_after = os.getloadavg()[0]

    base = medians["eager no_grad"]
    print(f"\nhairseg CPU latency: Unet({encoder}) {'from ' + str(args.checkpoint) if args.checkpoint else 'untrained'}"
          f", input 1x3x{size}x{size}, photo {photo_source}")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, {os.cpu_count()} CPUs, load average {load_before:.2f} -> {load_after:.2f}; "
          f"median of {args.runs} round-robin runs after {args.warmup} warm-up")
    print(f"\n| {'variant':<45} | {'median ms':>9} | {'vs eager':>8} | {'max abs diff':>12} |")
    print(f"|{'-' * 47}|{'-' * 11}:|{'-' * 9}:|{'-' * 13}:|")
    for key, ms in medians.items():
        print(f"| {key:<45} | {ms:>9.1f} | {base / ms:>7.2f}x | {diffs[key]:>12.2e} |")
    print("\nshipped predictors (predict_logits): "
          + ", ".join(f"{k} {v:.1f} ms ({shipped['eager'] / v:.2f}x)" for k, v in shipped.items())
          + f"; fastest: {fastest}")
    print(f"\n| {'segment_hair stage (' + fastest + ')':<45} | {'median ms':>9} |")
    print(f"|{'-' * 47}|{'-' * 11}:|")
    for key, ms in stages.items():
        print(f"| {key:<45} | {ms:>9.1f} |")


if __name__ == "__main__":
    main()

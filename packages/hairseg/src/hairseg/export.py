"""``hairseg-export``: checkpoint -> TorchScript + ONNX, parity check, CPU latency, registry entry.

The plan's "Integration Plan, Step 1" (TorchScript for the PyTorch backend, ONNX for cross-platform) and
"Step 3" (``model_registry.json``)::

    hairseg-export --checkpoint runs/hairseg-cpu/checkpoints/best_val_iou.pt --out models \\
        [--name hair_segmenter] [--version X.Y] [--opset 17] [--registry models/model_registry.json] \\
        [--sample-image PHOTO ... | --data FIGARO_ROOT]

writes ``models/hair_segmenter_vX.Y.pt`` (TorchScript, ``torch.jit.script``; ``torch.jit.trace`` only if
scripting fails) and ``models/hair_segmenter_vX.Y.onnx`` (``torch.onnx.export(dynamo=False)``, input
``image`` ``(N, 3, S, S)`` float32 ImageNet-normalised RGB, output ``logits`` ``(N, 1, S, S)``, dynamic batch
axis). Both carry ``image_size``/``mean``/``std``/``encoder``/``version`` metadata (see
:mod:`hairseg.inference`). Before anything is published, eager PyTorch, TorchScript and ONNX Runtime are run
on the same input at batch 1 and 2 and the max abs logit difference must be <= ``--tolerance`` (1e-3);
otherwise the command exits 1 and leaves no file behind. Then the median single-image CPU latency of each
backend is measured, an entry is appended to the registry (versions auto-increment 1.0, 1.1, ... when
``--version`` is not given; see :mod:`hairseg.registry`) and printed as JSON on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hairseg.data import IMAGENET_MEAN, IMAGENET_STD, DataError, find_samples, load_image, preprocess_image
from hairseg.inference import (
    TORCHSCRIPT_METADATA_FILE,
    ModelFormatError,
    OnnxPredictor,
    TorchPredictor,
    TorchScriptPredictor,
    quiet_torchscript_warnings,
)
from hairseg.registry import (
    REGISTRY_FILE,
    RegistryError,
    append_entry,
    list_entries,
    next_version,
    parse_version,
)
from mlcore.cli import ArgumentParser

log = logging.getLogger("hairseg.export")

PARITY_TOLERANCE = 1e-3
"""Largest accepted max abs difference of logits between eager PyTorch and an exported model."""


class ExportError(RuntimeError):
    """Export failed a check (parity above tolerance) or would overwrite an existing file."""


def metadata_for(encoder: str, image_size: int, version: str) -> dict[str, Any]:
    """The metadata stored in both exported files: S (px), ImageNet mean/std (RGB), encoder, version."""
    return {"image_size": int(image_size), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "encoder": encoder, "version": version}


def export_torchscript(model: torch.nn.Module, path: str | Path, metadata: dict[str, Any],
                       example: torch.Tensor) -> str:
    """Save ``model`` as a TorchScript archive at ``path`` with ``metadata`` in ``hairseg.json``.

    ``torch.jit.script`` is used (it keeps any control flow); if it fails, ``torch.jit.trace`` on
    ``example`` (``(N, 3, S, S)`` float32). Returns ``"script"`` or ``"trace"``.
    """
    model = model.eval()
    with quiet_torchscript_warnings():
        try:
            module, method = torch.jit.script(model), "script"
        except Exception as exc:  # noqa: BLE001 - TorchScript frontend errors have many types
            log.warning("torch.jit.script failed (%s: %s); falling back to torch.jit.trace", type(exc).__name__, exc)
            with torch.no_grad():
                module, method = torch.jit.trace(model, example), "trace"
        torch.jit.save(module, str(path), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
    return method


def export_onnx(model: torch.nn.Module, path: str | Path, metadata: dict[str, Any], example: torch.Tensor,
                opset: int = 17) -> None:
    """Export ``model`` to ONNX at ``path``: input ``image`` ``(N, 3, S, S)``, output ``logits``, dynamic ``N``.

    Uses the TorchScript-based exporter (``dynamo=False``; ``models.py`` checks it for every encoder) and
    writes ``metadata`` into ``metadata_props`` (values JSON-encoded).

    Raises:
        ValueError: ``opset`` < 13.
    """
    import onnx

    if opset < 13:
        raise ValueError(f"opset: expected >= 13, got {opset}")
    with quiet_torchscript_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            model.eval(), (example,), str(path), dynamo=False, opset_version=opset,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))


def parity_inputs(image_size: int, sample_images: Sequence[str | Path] = (), data: str | Path | None = None,
                  ) -> tuple[np.ndarray, str]:
    """Two ``(3, S, S) float32`` ImageNet-normalised inputs as ``(2, 3, S, S)`` and a description.

    From ``sample_images`` (the first two; one image is paired with its mirror), else the first two samples
    of the dataset at ``data`` (``find_samples(data, "all")``), else deterministic uniform noise in the
    photo value range (seed 0).

    Raises:
        DataError: an unreadable image or no dataset at ``data``.
    """
    images: list[np.ndarray] = []
    if sample_images:
        images = [load_image(p) for p in list(sample_images)[:2]]
        source = ", ".join(Path(p).name for p in list(sample_images)[:2])
    elif data is not None:
        samples = find_samples(data, "all")[:2]
        images = [load_image(s.image) for s in samples]
        source = ", ".join(s.image.name for s in samples)
    if images:
        if len(images) == 1:
            images.append(np.ascontiguousarray(images[0][:, ::-1]))
            source += " (+ mirrored)"
        return np.concatenate([preprocess_image(im, image_size).numpy() for im in images]), source
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    noise = (torch.rand(2, 3, image_size, image_size, generator=g) - mean) / std
    return noise.numpy(), "uniform noise (seed 0)"


def median_latency_ms(fn: Callable[[], Any], warmup: int = 3, runs: int = 10) -> float:
    """Median wall time of ``fn()`` in ms over ``runs`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _size_mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 2)  # MB = 10^6 bytes


def _checkpoint_metrics(info: dict[str, Any]) -> dict[str, Any]:
    from hairseg.metrics import verdict

    metrics = {k: v for k, v in (info.get("metrics") or {}).items() if isinstance(v, int | float)}
    iou = metrics.get("val_iou")
    metrics["verdict"] = verdict(float(iou)) if iou is not None and math.isfinite(iou) else None
    return metrics


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    name: str = "hair_segmenter",
    version: str | None = None,
    opset: int = 17,
    registry: str | Path | None = None,
    sample_images: Sequence[str | Path] = (),
    data: str | Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
    warmup: int = 3,
    runs: int = 10,
) -> dict[str, Any]:
    """Export ``checkpoint`` and register it; returns the registry entry (see the module docstring).

    Raises:
        FileNotFoundError: missing checkpoint or sample image.
        ModelFormatError: the checkpoint is not an mlcore hairseg checkpoint.
        RegistryError: malformed registry, bad or duplicate ``version``.
        ExportError: parity above ``tolerance``, or an output file already exists.
        DataError: unreadable sample image / dataset.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    registry = Path(registry) if registry is not None else out / REGISTRY_FILE
    eager = TorchPredictor(checkpoint)
    size, encoder = eager.image_size, eager.config["encoder"]
    version = version or next_version(list_entries(registry))
    parse_version(version)
    if any(e["version"] == version for e in list_entries(registry)):
        raise RegistryError(f"model registry {registry}: version {version} already exists; pick another --version")
    ts_path, onnx_path = out / f"{name}_v{version}.pt", out / f"{name}_v{version}.onnx"
    for path in (ts_path, onnx_path):
        if path.exists():
            raise ExportError(f"{path} already exists; pick another --version or remove it")
    out.mkdir(parents=True, exist_ok=True)

    inputs, source = parity_inputs(size, sample_images, data)
    meta = metadata_for(encoder, size, version)
    tmp_ts, tmp_onnx = out / f".{ts_path.name}.{os.getpid()}.tmp", out / f".{onnx_path.name}.{os.getpid()}.tmp"
    try:
        method = export_torchscript(eager.model, tmp_ts, meta, torch.from_numpy(inputs[:1]))
        export_onnx(eager.model, tmp_onnx, meta, torch.from_numpy(inputs[:1]), opset)
        scripted, onnx_model = TorchScriptPredictor(tmp_ts), OnnxPredictor(tmp_onnx)
        backends = {"eager": eager, "torchscript": scripted, "onnx": onnx_model}

        parity: dict[str, float] = {}
        for batch in (inputs[:1], inputs[:2]):
            ref = eager.predict_logits(batch)
            for key in ("torchscript", "onnx"):
                got = backends[key].predict_logits(batch)
                if got.shape != ref.shape:
                    raise ExportError(f"{key} output shape {got.shape} != eager {ref.shape} at batch {len(batch)}")
                parity[key] = max(parity.get(key, 0.0), float(np.abs(got - ref).max()))
        log.info("parity on %s, batch 1 and 2: max abs logit diff %s", source,
                 ", ".join(f"{k} {v:.2e}" for k, v in parity.items()))
        bad = {k: v for k, v in parity.items() if not v <= tolerance}
        if bad:
            raise ExportError("parity check failed: max abs logit difference vs eager PyTorch "
                              + ", ".join(f"{k} {v:.3g}" for k, v in bad.items()) + f" > tolerance {tolerance:g}")

        single = inputs[:1]
        latency = {k: round(median_latency_ms(lambda p=p: p.predict_logits(single), warmup, runs), 2)
                   for k, p in backends.items()}
        log.info("CPU latency at %d px, median of %d runs (ms): %s", size, runs, latency)
        os.replace(tmp_ts, ts_path)
        os.replace(tmp_onnx, onnx_path)
    finally:
        tmp_ts.unlink(missing_ok=True)
        tmp_onnx.unlink(missing_ok=True)

    data_path = eager.config.get("data")
    info = eager.checkpoint_info
    entry = {
        "version": version,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "base_model": f"Unet({encoder})",
        "dataset": Path(data_path).name.lower() if data_path else None,
        "metrics": _checkpoint_metrics(info),
        "file": os.path.relpath(ts_path.resolve(), registry.resolve().parent),
        "onnx_file": os.path.relpath(onnx_path.resolve(), registry.resolve().parent),
        "size_mb": _size_mb(ts_path),
        "onnx_size_mb": _size_mb(onnx_path),
        "cpu_latency_ms": latency,
        "image_size": size,
        "parity_max_abs_diff": parity,
        "parity_input": source,
        "torchscript_method": method,
        "opset": opset,
        "checkpoint": {"path": str(checkpoint.resolve()), "epoch": info.get("epoch"), "step": info.get("step", info.get("global_step")),
                       "monitor": {info["metric"]: info.get("value")} if "metric" in info else None},
        "cpu_threads": torch.get_num_threads(),
    }
    append_entry(registry, entry)
    log.info("wrote %s, %s and registry %s (version %s)", ts_path, onnx_path, registry, version)
    return entry


def build_parser() -> argparse.ArgumentParser:
    """The ``hairseg-export`` argument parser."""
    p = ArgumentParser(prog="hairseg-export", description=__doc__.splitlines()[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="mlcore checkpoint (best_val_iou.pt / last.pt)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--name", default="hair_segmenter", help="file name stem: NAME_vVERSION.{pt,onnx}")
    p.add_argument("--version", default=None, help="X.Y (default: next minor after the registry's newest, 1.0 first)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 13)")
    p.add_argument("--registry", type=Path, default=None, help="model_registry.json (default: OUT/model_registry.json)")
    p.add_argument("--sample-image", nargs="+", default=(), metavar="IMAGE", help="photo(s) for the parity check")
    p.add_argument("--data", default=None, help="dataset root whose first two photos are the parity input")
    p.add_argument("--tolerance", type=float, default=PARITY_TOLERANCE, help="max abs logit diff allowed")
    p.add_argument("--warmup", type=int, default=3, help="untimed latency runs")
    p.add_argument("--runs", type=int, default=10, help="timed latency runs (median reported)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``hairseg-export``: 0 ok, 1 bad checkpoint/data/registry or failed parity, 2 bad flags."""
    from mlcore.checkpoint import CheckpointError
    from mlcore.cli import run_cli
    from mlcore.config import ConfigError

    def run() -> int:
        args = build_parser().parse_args(argv)
        if args.opset < 13:
            raise ConfigError(f"--opset must be >= 13 (got {args.opset})")
        if args.version is not None:
            try:
                parse_version(args.version)
            except RegistryError as exc:
                raise ConfigError(f"--version: {exc}") from exc
        entry = export_model(args.checkpoint, args.out, name=args.name, version=args.version, opset=args.opset,
                             registry=args.registry, sample_images=args.sample_image, data=args.data,
                             tolerance=args.tolerance, warmup=args.warmup, runs=args.runs)
        print(json.dumps(entry))
        return 0

    return run_cli(run, prog="hairseg-export",
                   user_errors=(ExportError, ModelFormatError, RegistryError, DataError, CheckpointError))


if __name__ == "__main__":
    raise SystemExit(main())

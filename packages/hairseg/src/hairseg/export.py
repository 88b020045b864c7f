"""``hairseg-export``: checkpoint -> TorchScript + ONNX (+ int8 ONNX), parity, metrics on a split, latency, registry.

The plan's "Integration Plan, Step 1" (TorchScript for the PyTorch backend, ONNX for cross-platform) and
"Step 3" (``model_registry.json``)::

    hairseg-export --checkpoint runs/hairseg-cpu/checkpoints/best_val_iou.pt --out models \\
        [--name hair_segmenter] [--version X.Y] [--opset 17] [--registry models/model_registry.json] \\
        [--sample-image PHOTO ...] [--data FIGARO_ROOT] [--eval-split test] [--quantize [int8]] [--calib-data DIR]

writes ``models/hair_segmenter_vX.Y.pt`` (TorchScript, ``torch.jit.script``; ``torch.jit.trace`` only if
scripting fails) and ``models/hair_segmenter_vX.Y.onnx`` (``torch.onnx.export(dynamo=False)``, input
``image`` ``(N, 3, S, S)`` float32 normalised RGB, outputs ``logits`` and ``mask`` = ``sigmoid(logits)`` (the
seed's interface), ``(N, 1, S, S)``, dynamic batch axis); with ``--quantize`` also
``hair_segmenter_vX.Y.int8.onnx`` (ONNX Runtime static int8, QDQ, calibrated on training photos), served by
the registry (``serve``) when its IoU on the measured split is within 0.01 of ONNX fp32's. The files
carry ``image_size``/``mean``/``std``/``encoder``/``version`` metadata (see :mod:`hairseg.inference`). Before
anything is published, eager PyTorch, TorchScript and ONNX Runtime are run on the same input at batch 1 and
2 and the max abs logit difference must be <= ``--tolerance`` (1e-3); otherwise the command exits 1 and
leaves no file behind. Then the median single-image CPU latency of each backend is measured, the metrics
of each backend are measured at full resolution on ``--eval-split`` (default ``test``, never used for
selection) of ``--data`` (default the checkpoint's training data), an entry is appended to the registry
(versions auto-increment 1.0, 1.1, ... when ``--version`` is not given; see :mod:`hairseg.registry`) and
printed as JSON on the last line of stdout.
"""

from __future__ import annotations

import argparse
import copy
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
from hairseg.models import DECODER_CHANNELS, parse_decoder_channels
from hairseg.registry import (
    REGISTRY_FILE,
    VARIANT_FILES,
    RegistryError,
    append_entry,
    list_entries,
    next_version,
    parse_version,
)
from mlcore.cli import ArgumentParser
from mlcore.devices import cpu_native_bf16
from mlcore.export import copy_onnx_metadata
from mlcore.export import export_onnx as mlcore_export_onnx

log = logging.getLogger("hairseg.export")

PARITY_TOLERANCE = 1e-3
"""Largest accepted max abs difference of logits between eager PyTorch and an exported model."""

INT8_IOU_TOLERANCE = 0.01
"""Largest pooled-IoU drop of the int8 model against ONNX fp32 on the measured split for the registry to
serve it (``entry["serve"] = "onnx_int8"``); the issue's bar ("held-out IoU within 0.01")."""


class ExportError(RuntimeError):
    """Export failed a check (parity above tolerance) or would overwrite an existing file."""


def metadata_for(encoder: str, image_size: int, version: str, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, decoder_channels: Sequence[int] | None = None,
                 ) -> dict[str, Any]:
    """The metadata stored in the exported files: S (px), the model's mean/std (RGB on 0..1, what it was trained
    with: its checkpoint config's, else ImageNet's), encoder, version, the letterbox preprocessing, and the
    decoder widths when given."""
    meta = {"image_size": int(image_size), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "encoder": encoder, "version": version, "resize": "letterbox"}
    if decoder_channels is not None:
        meta["decoder_channels"] = [int(c) for c in decoder_channels]
    return meta


class ServingModule(torch.nn.Module):
    """What a TorchScript archive from :func:`export_torchscript` holds: the network with its weights in
    ``channels_last`` (and bfloat16 when ``bf16``), taking the float32 NCHW input of every hairseg predictor
    and returning float32 logits, so loaders need not know the archive's precision.

    Why: oneDNN runs the frozen graph's convolutions without layout reorders when weights and input are
    ``channels_last``, and in bf16 on CPUs with AMX / AVX512_BF16. For the ``cpu`` preset's U-Net at 384 px,
    alone on 2 cores (``bench/hairseg_latency.py``, bench/RESULTS.md): fp32 61 ms vs ONNX Runtime's 64 ms,
    bf16 37 ms.

    Shapes: ``(N, 3, S, S)`` float32 normalised RGB -> ``(N, 1, S, S)`` float32 logits.
    """

    def __init__(self, model: torch.nn.Module, bf16: bool = False) -> None:
        super().__init__()
        self.bf16 = bool(bf16)
        self.model = model.to(dtype=torch.bfloat16 if bf16 else torch.float32, memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bf16:
            x = x.to(torch.bfloat16)
        return self.model(x.contiguous(memory_format=torch.channels_last)).float()


def export_torchscript(model: torch.nn.Module, path: str | Path, metadata: dict[str, Any],
                       example: torch.Tensor, precision: str = "fp32") -> str:
    """Save a copy of ``model`` as a TorchScript archive at ``path`` with ``metadata`` (plus ``precision``) in
    ``hairseg.json``: a :class:`ServingModule` (``channels_last`` weights; bfloat16 weights for
    ``precision="bf16"``, float32 input and output either way). ``model`` itself is not changed.

    ``torch.jit.script`` is used (it keeps any control flow); if it fails, ``torch.jit.trace`` on
    ``example`` (``(N, 3, S, S)`` float32). Returns ``"script"`` or ``"trace"``.

    Raises:
        ValueError: ``precision`` other than ``"fp32"`` / ``"bf16"``.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision: expected 'fp32' or 'bf16', got {precision!r}")
    module = ServingModule(copy.deepcopy(model).eval(), bf16=precision == "bf16").eval()
    metadata = {**metadata, "precision": precision}
    with quiet_torchscript_warnings():
        try:
            scripted, method = torch.jit.script(module), "script"
        except Exception as exc:  # noqa: BLE001 - TorchScript frontend errors have many types
            log.warning("torch.jit.script failed (%s: %s); falling back to torch.jit.trace", type(exc).__name__, exc)
            with torch.no_grad():
                scripted, method = torch.jit.trace(module, example), "trace"
        torch.jit.save(scripted, str(path), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
    return method


class LogitsAndMask(torch.nn.Module):
    """``x -> (logits, sigmoid(logits))``: the seed's interface (output ``mask`` = hair probability) beside
    the logits that parity checks and the predictors use."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.sigmoid(logits)


def export_onnx(model: torch.nn.Module, path: str | Path, metadata: dict[str, Any], example: torch.Tensor,
                opset: int = 17) -> None:
    """Export ``model`` to ONNX at ``path``: input ``image`` ``(N, 3, S, S)``, outputs ``logits`` and ``mask``
    (``sigmoid(logits)``, the hair probability; both ``(N, 1, S, S)``), dynamic ``N``.

    Uses :func:`mlcore.export.export_onnx` (the TorchScript-based exporter, ``dynamo=False``; ``models.py``
    checks it for every encoder), which writes ``metadata`` into ``metadata_props`` (values JSON-encoded).

    Raises:
        ValueError: ``opset`` < 13.
    """
    mlcore_export_onnx(LogitsAndMask(model), path, example, metadata=metadata, opset=opset,
                       output_names=("logits", "mask"))


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


def calibration_inputs(data: str | Path, image_size: int, *, n: int = 32, seed: int = 0,
                       val_fraction: float = 0.15, test_fraction: float = 0.15,
                       mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """``(n, 3, S, S) float32``: ``n`` training photos (evenly spaced over the train split, never val/test),
    letterboxed and normalised as at inference; the calibration set of :func:`quantize_onnx`.

    Raises:
        DataError: no dataset at ``data``.
    """
    samples = find_samples(data, "train", val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if not samples:
        raise DataError(f"{data}: no training photos to calibrate the int8 model on")
    pick = np.linspace(0, len(samples) - 1, num=min(n, len(samples)), dtype=int)
    return np.concatenate([preprocess_image(load_image(samples[i].image), image_size, mean, std).numpy()
                           for i in pick])


def quantize_onnx(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray, *,
                  per_channel: bool = True) -> None:
    """Static int8 quantisation of an exported ONNX model with ONNX Runtime (QDQ format).

    ``onnxruntime.quantization.quant_pre_process`` (shape inference + graph optimisation), then
    ``quantize_static`` with ``QuantFormat.QDQ``, uint8 activations and int8 weights (per output channel
    when ``per_channel``), activation ranges calibrated by MinMax on ``calibration`` (``(N, 3, S, S)``,
    normalised training photos, fed one at a time). The ``mask`` output (``Sigmoid``) is left in float.
    The metadata props of ``fp32_path`` are copied over.

    Raises:
        ValueError: ``calibration`` is not a non-empty ``(N, 3, S, S)`` array.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or calibration.shape[1] != 3 or len(calibration) == 0:
        raise ValueError(f"calibration: expected (N, 3, S, S) float32, got {calibration.shape}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": calibration[i : i + 1].astype(np.float32)} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    pre = int8_path.with_name(f".{int8_path.stem}.{os.getpid()}.pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        sigmoid_nodes = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Sigmoid"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(pre), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            nodes_to_exclude=sigmoid_nodes)
    finally:
        pre.unlink(missing_ok=True)
    copy_onnx_metadata(fp32_path, int8_path)


def measure_split(predictors: dict[str, Any], data: str | Path, split: str, *, seed: int = 0,
                  val_fraction: float = 0.15, test_fraction: float = 0.15, limit: int | None = None,
                  ) -> dict[str, Any]:
    """Pooled IoU/F1/precision/recall of each predictor on one split at full photo resolution
    (:func:`hairseg.eval.evaluate_predictor`): the metrics a registry entry carries, measured at export.

    Returns:
        ``{"split", "data", "n_images", "seed", "<backend>": {"iou", "f1", "precision", "recall", "verdict"}}``.
    """
    from hairseg.eval import evaluate_predictor

    samples = find_samples(data, split, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if limit is not None:
        samples = samples[:limit]
    out: dict[str, Any] = {"split": split, "data": str(data), "n_images": len(samples), "seed": seed}
    for key, predictor in predictors.items():
        result = evaluate_predictor(predictor, samples)
        out[key] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()
                    if k in ("iou", "f1", "precision", "recall", "verdict")}
    return out


def serve_choice(metrics: dict[str, Any] | None, tolerance: float = INT8_IOU_TOLERANCE) -> tuple[str, str]:
    """Which ONNX file a registry entry serves: ``("onnx_int8", why)`` when ``metrics`` (from
    :func:`measure_split`) has an ``onnx_int8`` pooled IoU at most ``tolerance`` below ``onnx``'s, else
    ``("onnx", why)`` (no int8 model, or it lost more than ``tolerance``)."""
    if not metrics or "onnx_int8" not in metrics:
        return "onnx", "no int8 IoU measured"
    drop = metrics["onnx"]["iou"] - metrics["onnx_int8"]["iou"]
    where = f"{metrics['split']} split, {metrics['n_images']} photos"
    if drop <= tolerance:
        return "onnx_int8", f"int8 IoU {metrics['onnx_int8']['iou']:.4f} vs fp32 {metrics['onnx']['iou']:.4f} " \
                            f"({where}): drop {drop:.4f} <= {tolerance}"
    return "onnx", f"int8 IoU {metrics['onnx_int8']['iou']:.4f} vs fp32 {metrics['onnx']['iou']:.4f} ({where}): " \
                   f"drop {drop:.4f} > {tolerance}"


def shipped_choice(latency_ms: dict[str, float], metrics: dict[str, Any] | None,
                   tolerance: float = INT8_IOU_TOLERANCE) -> tuple[str, str]:
    """The variant a registry entry ships (``entry["shipped"]``): the fastest by median CPU latency among

    - ``onnx`` and ``torchscript`` (float32: their logits match eager PyTorch within the parity tolerance), and
    - ``onnx_int8`` and ``torchscript_bf16`` only when ``metrics`` (:func:`measure_split`) holds their pooled
      IoU at most ``tolerance`` below eager PyTorch's on the measured split (reduced precision is shipped only
      when its quality was measured).

    Args:
        latency_ms: median ms per variant (``eager`` is ignored: it is not an exported file).
        metrics: :func:`measure_split` output, or None.

    Returns:
        ``(variant, reason)``.

    Raises:
        ValueError: no float32 variant in ``latency_ms``.
    """
    eligible = {key: "float32, parity with eager checked" for key in ("onnx", "torchscript") if key in latency_ms}
    if not eligible:
        raise ValueError("shipped_choice: no float32 variant (onnx / torchscript) was measured")
    base = (metrics or {}).get("eager", {}).get("iou")
    for key in ("onnx_int8", "torchscript_bf16"):
        if key not in latency_ms:
            continue
        got = (metrics or {}).get(key, {}).get("iou")
        if base is None or got is None:
            continue
        drop = base - got
        if drop <= tolerance:
            eligible[key] = f"IoU {got:.4f} vs eager fp32 {base:.4f} ({metrics['split']} split, " \
                            f"{metrics['n_images']} photos): drop {drop:.4f} <= {tolerance}"
    best = min(eligible, key=lambda k: latency_ms[k])
    return best, f"fastest eligible ({latency_ms[best]:.1f} ms median; {eligible[best]}); measured: " + \
        ", ".join(f"{k} {latency_ms[k]:.1f} ms" for k in VARIANT_FILES if k in latency_ms)


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
    quantize: bool | str = False,
    calibration_images: int = 32,
    calib_data: str | Path | None = None,
    eval_split: str = "test",
    eval_limit: int | None = None,
    bf16: bool | str = "auto",
) -> dict[str, Any]:
    """Export ``checkpoint`` and register it; returns the registry entry (see the module docstring).

    Args:
        data: the dataset the metrics are measured on and the int8 model is calibrated on; default the
            checkpoint's training data (``config["data"]``) when that folder exists. Without a dataset the
            entry's ``metrics`` is ``None`` (nothing measured, nothing copied).
        quantize: ``True``/``"int8"``: also write ``NAME_vX.Y.int8.onnx`` (:func:`quantize_onnx`, calibrated on
            ``calibration_images`` training photos) and measure it beside the float models. The entry's
            ``serve`` is ``"onnx_int8"`` (what the registry hands out for ``fmt="onnx"``) when its pooled IoU
            on ``eval_split`` is within :data:`INT8_IOU_TOLERANCE` of ONNX fp32's, else ``"onnx"``.
        calib_data: dataset whose *train* split calibrates the int8 model (default ``data``).
        eval_split: the split the metrics are measured on (``test``: never used for selection).
        eval_limit: score only the first N photos of the split.
        bf16: also write ``NAME_vX.Y.bf16.pt`` (TorchScript, bfloat16 weights, :class:`ServingModule`) and measure
            it; ``"auto"``: when this CPU has native bf16 (:func:`mlcore.devices.cpu_native_bf16`; elsewhere
            bf16 is emulated and slower than fp32). The entry's ``shipped`` is the fastest variant whose
            quality holds (:func:`shipped_choice`).

    Raises:
        FileNotFoundError: missing checkpoint or sample image.
        ModelFormatError: the checkpoint is not an mlcore hairseg checkpoint.
        RegistryError: malformed registry, bad or duplicate ``version``.
        ExportError: parity above ``tolerance``, or an output file already exists.
        DataError: unreadable sample image / dataset, or ``quantize`` without a dataset.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    registry = Path(registry) if registry is not None else out / REGISTRY_FILE
    eager = TorchPredictor(checkpoint)
    size, encoder = eager.image_size, eager.config["encoder"]
    split_kw = {k: eager.config[k] for k in ("seed", "val_fraction", "test_fraction") if k in eager.config}
    if data is None and eager.config.get("data") and Path(eager.config["data"]).expanduser().is_dir():
        data = Path(eager.config["data"]).expanduser()
    if quantize not in (False, None, True, "int8"):
        raise ValueError(f"quantize: expected False, True or 'int8', got {quantize!r}")
    quantize = bool(quantize)
    if bf16 not in (True, False, "auto"):
        raise ValueError(f"bf16: expected True, False or 'auto', got {bf16!r}")
    bf16 = bool(cpu_native_bf16()) if bf16 == "auto" else bf16
    calib_data = Path(calib_data) if calib_data is not None else data
    if quantize and calib_data is None:
        raise DataError("--quantize needs training photos to calibrate on: pass --data or --calib-data DATASET")
    version = version or next_version(list_entries(registry))
    parse_version(version)
    if any(e["version"] == version for e in list_entries(registry)):
        raise RegistryError(f"model registry {registry}: version {version} already exists; pick another --version")
    ts_path, onnx_path = out / f"{name}_v{version}.pt", out / f"{name}_v{version}.onnx"
    int8_path = out / f"{name}_v{version}.int8.onnx"
    bf16_path = out / f"{name}_v{version}.bf16.pt"
    for path in (ts_path, onnx_path, *([int8_path] if quantize else []), *([bf16_path] if bf16 else [])):
        if path.exists():
            raise ExportError(f"{path} already exists; pick another --version or remove it")
    out.mkdir(parents=True, exist_ok=True)

    inputs, source = parity_inputs(size, sample_images, data)
    decoder = parse_decoder_channels(eager.config.get("decoder_channels"))
    meta = metadata_for(encoder, size, version, eager.mean, eager.std, decoder)
    tmp = {k: out / f".{p.name}.{os.getpid()}.tmp" for k, p in (("ts", ts_path), ("onnx", onnx_path),
                                                                  ("int8", int8_path), ("bf16", bf16_path))}
    try:
        method = export_torchscript(eager.model, tmp["ts"], meta, torch.from_numpy(inputs[:1]))
        export_onnx(eager.model, tmp["onnx"], meta, torch.from_numpy(inputs[:1]), opset)
        scripted, onnx_model = TorchScriptPredictor(tmp["ts"]), OnnxPredictor(tmp["onnx"])
        backends: dict[str, Any] = {"eager": eager, "torchscript": scripted, "onnx": onnx_model}

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
        if quantize:
            calib = calibration_inputs(calib_data, size, n=calibration_images, mean=eager.mean, std=eager.std,
                                       **split_kw)
            quantize_onnx(tmp["onnx"], tmp["int8"], calib)
            backends["onnx_int8"] = OnnxPredictor(tmp["int8"])
        if bf16:
            export_torchscript(eager.model, tmp["bf16"], meta, torch.from_numpy(inputs[:1]), precision="bf16")
            backends["torchscript_bf16"] = TorchScriptPredictor(tmp["bf16"])
            ref = eager.predict_logits(inputs[:1])
            parity["torchscript_bf16"] = float(  # reported, not gated: bf16 rounding; its IoU is measured
                np.abs(backends["torchscript_bf16"].predict_logits(inputs[:1]) - ref).max())

        single = inputs[:1]
        latency = {k: round(median_latency_ms(lambda p=p: p.predict_logits(single), warmup, runs), 2)
                   for k, p in backends.items()}
        log.info("CPU latency at %d px, median of %d runs (ms): %s", size, runs, latency)
        metrics = None
        if data is not None:
            # float32 files match eager within the parity tolerance; reduced-precision ones are measured
            measured = {k: p for k, p in backends.items() if k in ("eager", "onnx", "onnx_int8", "torchscript_bf16")}
            metrics = measure_split(measured, data, eval_split, limit=eval_limit, **split_kw)
            log.info("metrics on %s (%d photos): %s", eval_split, metrics["n_images"],
                     {k: v["iou"] for k, v in metrics.items() if isinstance(v, dict)})
        serve, serve_reason = serve_choice(metrics if quantize else None)
        shipped, shipped_reason = shipped_choice({k: v for k, v in latency.items() if k != "eager"}, metrics)
        log.info("shipped variant: %s (%s)", shipped, shipped_reason)
        os.replace(tmp["ts"], ts_path)
        os.replace(tmp["onnx"], onnx_path)
        if quantize:
            os.replace(tmp["int8"], int8_path)
        if bf16:
            os.replace(tmp["bf16"], bf16_path)
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)

    data_path = eager.config.get("data")
    info = eager.checkpoint_info
    rel = lambda path: os.path.relpath(path.resolve(), registry.resolve().parent)  # noqa: E731
    entry = {
        "version": version,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "base_model": f"Unet({encoder})" if decoder == DECODER_CHANNELS else
                      f"Unet({encoder}, decoder_channels={','.join(map(str, decoder))})",
        "decoder_channels": list(decoder),
        "dataset": Path(data_path).name.lower() if data_path else None,
        "metrics": metrics,
        "file": rel(ts_path),
        "onnx_file": rel(onnx_path),
        **({"onnx_int8_file": rel(int8_path), "onnx_int8_size_mb": _size_mb(int8_path),
            "int8": {"format": "QDQ", "activations": "uint8", "weights": "int8 per channel", "calibration":
                     f"{min(calibration_images, len(find_samples(calib_data, 'train', **split_kw)))} training photos "
                     f"(MinMax) of {calib_data}"}} if quantize else {}),
        **({"bf16_file": rel(bf16_path), "bf16_size_mb": _size_mb(bf16_path)} if bf16 else {}),
        "serve": serve,
        "serve_reason": serve_reason,
        "shipped": shipped,
        "shipped_reason": shipped_reason,
        "onnx_outputs": ["logits", "mask"],
        "size_mb": _size_mb(ts_path),
        "onnx_size_mb": _size_mb(onnx_path),
        "cpu_latency_ms": latency,
        "image_size": size,
        "preprocessing": {"resize": "long side to image_size (bilinear, antialiased), aspect ratio kept",
                          "pad": "bottom/right with black to image_size x image_size; crop the output back",
                          "mean": list(eager.mean), "std": list(eager.std), "input": "RGB in [0, 1]"},
        "parity_max_abs_diff": parity,
        "parity_input": source,
        "torchscript_method": method,
        "opset": opset,
        "checkpoint": {"path": str(checkpoint.resolve()), "epoch": info.get("epoch"),
                       "step": info.get("step", info.get("global_step")),
                       "monitor": {info["metric"]: info.get("value")} if "metric" in info else None,
                       "metrics": _checkpoint_metrics(info)},
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
    p.add_argument("--data", default=None,
                   help="dataset for the metrics measured at export (and int8 calibration; its first two photos are "
                        "the parity input); default: the checkpoint's training data when present")
    p.add_argument("--eval-split", default="test", choices=("train", "val", "test", "all"),
                   help="split the registry metrics are measured on")
    p.add_argument("--eval-limit", type=int, default=None, help="measure on the first N photos of the split only")
    p.add_argument("--quantize", nargs="?", const="int8", default=None, choices=("int8",),
                   help="also write NAME_vX.Y.int8.onnx: ONNX Runtime static int8 (QDQ) calibrated on training photos; "
                        "the registry serves it when its IoU is within 0.01 of ONNX fp32's on --eval-split")
    p.add_argument("--bf16", default="auto", choices=("auto", "on", "off"),
                   help="also write NAME_vX.Y.bf16.pt (TorchScript, bfloat16 weights) and measure it; auto: when this "
                        "CPU has native bf16 (AMX / AVX512_BF16)")
    p.add_argument("--calib-data", default=None,
                   help="dataset whose train split calibrates --quantize (default: --data)")
    p.add_argument("--calibration-images", type=int, default=32, help="training photos used to calibrate --quantize")
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
        if args.eval_limit is not None and args.eval_limit < 1:
            raise ConfigError(f"--eval-limit must be >= 1 (got {args.eval_limit})")
        if args.calibration_images < 1:
            raise ConfigError(f"--calibration-images must be >= 1 (got {args.calibration_images})")
        entry = export_model(args.checkpoint, args.out, name=args.name, version=args.version, opset=args.opset,
                             registry=args.registry, sample_images=args.sample_image, data=args.data,
                             tolerance=args.tolerance, warmup=args.warmup, runs=args.runs,
                             quantize=args.quantize or False, calibration_images=args.calibration_images,
                             calib_data=args.calib_data, eval_split=args.eval_split,
                             eval_limit=args.eval_limit,
                             bf16={"auto": "auto", "on": True, "off": False}[args.bf16])
        print(json.dumps(entry))
        return 0

    return run_cli(run, prog="hairseg-export",
                   user_errors=(ExportError, ModelFormatError, RegistryError, DataError, CheckpointError))


if __name__ == "__main__":
    raise SystemExit(main())

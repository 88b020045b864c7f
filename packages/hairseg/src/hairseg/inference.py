"""One predictor interface for every model format, and ``segment_hair`` (the plan's ``core/segmenter.py``).

Formats (:func:`load_predictor` tells them apart by content, not only by name):

- mlcore checkpoint (``checkpoints/best_val_iou.pt`` / ``last.pt``): ``{"model": state_dict, "config":
  {"encoder", "image_size", ...}}``; the U-Net is rebuilt with :func:`hairseg.models.build_model` and run
  eagerly under ``torch.inference_mode`` (:class:`TorchPredictor`).
- TorchScript archive (``hair_segmenter_vX.Y.pt``, a zip holding ``constants.pkl``) from ``hairseg-export``
  (:class:`TorchScriptPredictor`).
- ONNX (``*.onnx``) from ``hairseg-export``, run by ONNX Runtime's CPU execution provider
  (:class:`OnnxPredictor`).
- MediaPipe Tasks image-segmentation model (``*.tflite``), run by ``ImageSegmenter``; its confidence mask of
  the hair category is the probability (:class:`hairseg.baseline.MediaPipeSegmenter`).

Where the input size S comes from: every exported file carries its own metadata, so a file copied alone
still runs. The checkpoint has it in ``config["image_size"]``; the TorchScript archive in an extra file
``hairseg.json`` (``torch.jit.save(..., _extra_files=...)``); the ONNX model in ``metadata_props``. The
metadata keys (:data:`METADATA_KEYS`) are ``image_size`` (px), ``mean``/``std`` (ImageNet, RGB order),
``encoder`` and ``version``. ``image_size=`` overrides S for files without metadata.

Every predictor maps an ``(H, W, 3) uint8`` RGB photo to an ``(H, W) float32`` hair probability: the photo
is letterboxed to ``S x S`` (long side S, aspect ratio kept, padded) and normalised with the file's mean/std
exactly as in training (:func:`hairseg.data.preprocess_image`), the network gives ``(1, 1, S, S)`` logits, the
photo's block is cropped out, then ``sigmoid`` and a bilinear resize back to ``(H, W)``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from hairseg.data import IMAGENET_MEAN, IMAGENET_STD, letterbox_shape, preprocess_image
from hairseg.recolor import postprocess_mask
from mlcore.export import quiet_export_warnings as quiet_torchscript_warnings
from mlcore.export import read_onnx_metadata

log = logging.getLogger("hairseg.inference")

METADATA_KEYS: tuple[str, ...] = ("image_size", "mean", "std", "encoder", "version")
"""Keys of the metadata stored in exported files (TorchScript ``hairseg.json``, ONNX ``metadata_props``)."""

TORCHSCRIPT_METADATA_FILE = "hairseg.json"
"""Name of the extra file inside a TorchScript archive that holds the metadata as JSON."""

FORMATS_HELP = (
    "an ONNX file (*.onnx), a TorchScript archive from hairseg-export, an mlcore checkpoint "
    "({'model': state_dict, 'config': {'encoder', 'image_size'}}) or a MediaPipe Tasks image-segmentation "
    "model (*.tflite)"
)

ENV_MODEL = "HAIRSEG_MODEL"
"""Environment variable: a model file (any format of :func:`load_predictor`) for :func:`segment_hair`."""

ENV_REGISTRY = "HAIRSEG_REGISTRY"
"""Environment variable: a ``model_registry.json``; :func:`segment_hair` uses its newest entry."""


class ModelFormatError(ValueError):
    """A model file exists but is not one of the accepted formats, or lacks what is needed to run it."""


class ModelNotConfiguredError(LookupError):
    """:func:`segment_hair` got no model and found none through ``HAIRSEG_MODEL`` / ``HAIRSEG_REGISTRY``."""


@runtime_checkable
class Predictor(Protocol):
    """Anything that maps a photo to a hair probability at the photo's own size.

    ``hairseg.baseline.MediaPipeSegmenter`` fits this shape too (it has ``predict_proba``), so the
    zero-train baseline plugs into :func:`segment_hair` unchanged.
    """

    name: str

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB -> ``(H, W) float32`` hair probability in [0, 1]."""
        ...


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Elementwise logistic function of a float array, float32, without overflow warnings."""
    return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))).numpy()


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (torch/onnxruntime messages span many lines)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _read_stats(meta: Mapping[str, Any], path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean``/``std`` (RGB, on 0..1) from a model's metadata; ImageNet's for files that carry none."""
    out = []
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        value = meta.get(key)
        if value is None:
            out.append(tuple(default))
            continue
        arr = np.asarray(value, dtype=np.float64).ravel()
        if arr.shape != (3,) or not np.isfinite(arr).all() or (key == "std" and (arr <= 0).any()):
            raise ModelFormatError(f"{path}: metadata {key}={value!r} is not three finite numbers (RGB, on 0..1)")
        out.append(tuple(float(v) for v in arr))
    return out[0], out[1]


class _ModelPredictor:
    """Shared resize -> network -> sigmoid -> resize-back path. Subclasses implement :meth:`predict_logits`."""

    name: str
    path: Path
    image_size: int
    metadata: dict[str, Any]

    def _set_size(self, meta: Mapping[str, Any], image_size: int | None) -> None:
        size = image_size if image_size is not None else meta.get("image_size")
        if size is None:
            raise ModelFormatError(
                f"{self.path}: no image_size in its metadata; export it with hairseg-export or pass image_size="
            )
        size = int(size)
        if size <= 0 or size % 32:
            raise ModelFormatError(f"{self.path}: image_size must be a positive multiple of 32 px, got {size}")
        self.mean, self.std = _read_stats(meta, self.path)
        self.image_size = size
        self.metadata = {**meta, "image_size": size, "mean": list(self.mean), "std": list(self.std)}

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S) float32`` ImageNet-normalised -> ``(N, 1, S, S) float32`` logits."""
        raise NotImplementedError

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3) uint8`` RGB -> ``(1, 3, S, S) float32``: letterboxed (long side S, aspect kept, padded
        bottom/right) and normalised with the model's own mean/std (:func:`hairseg.data.preprocess_image`)."""
        return preprocess_image(image, self.image_size, self.mean, self.std).numpy()

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Hair probability of one photo, computed at the photo's aspect ratio.

        The photo is resized so its long side is S and padded to ``S x S`` (a multiple of the network's
        stride, 32), the network's logits are cropped back to the photo's ``letterbox_shape`` block, and
        ``sigmoid`` of that is resized bilinearly to ``(H, W)``: nothing is squashed.

        Args:
            image: ``(H, W, 3) uint8`` RGB photo, any size.

        Returns:
            ``(H, W) float32`` in [0, 1].

        Raises:
            ValueError: ``image`` is not an ``(H, W, 3) uint8`` array.
        """
        batch = self.preprocess(image)
        height, width = image.shape[:2]
        h, w = letterbox_shape(height, width, self.image_size)
        prob = sigmoid(self.predict_logits(batch)[0, 0, :h, :w])
        if (height, width) != prob.shape:
            prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(prob, 0.0, 1.0, out=prob)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, image_size={self.image_size})"


#: ``precision`` of :class:`TorchPredictor` -> the dtype of its weights and inputs.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


class TorchPredictor(_ModelPredictor):
    """Eager PyTorch U-Net from an mlcore checkpoint (``{"model": state_dict, "config": {...}}``).

    Runs under ``torch.inference_mode``; on CPU in ``channels_last`` memory format.

    ``precision="bf16"`` casts the weights and each input to bfloat16 (outputs are returned as float32):
    on CPUs with AMX or AVX512_BF16 oneDNN runs the convolutions in bf16, about 2x faster than eager fp32
    for this U-Net at 384 px (``bench/hairseg_latency.py``); logits differ from fp32 by bf16 rounding (8-bit
    mantissa), so check the IoU on held-out photos before serving it (the bench reports it).

    Args:
        path: the checkpoint file (``best_val_iou.pt`` or ``last.pt``; ``last.pt`` holds the raw, not the
            EMA, weights).
        device: torch device string (``"cpu"``, ``"cuda"``...).
        image_size: S in px; default ``config["image_size"]``.
        precision: ``"fp32"`` (default) or ``"bf16"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelFormatError: not a readable checkpoint dict, no ``config["encoder"]``/``image_size``,
            or weights that do not fit the encoder's U-Net.
        ValueError: ``precision`` is not one of :data:`PRECISIONS`.
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", image_size: int | None = None,
                 precision: str = "fp32") -> None:
        from hairseg.models import ENCODERS, build_model, normalization
        from mlcore.checkpoint import CheckpointError, load_checkpoint

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        try:
            ckpt = load_checkpoint(self.path, expect_domain="hairseg")
        except CheckpointError as exc:
            cause = exc.__cause__ or exc
            raise ModelFormatError(f"{self.path}: not a readable model file ({type(cause).__name__}: "
                                   f"{_first_line(cause)}); expected {FORMATS_HELP}") from exc
        config = ckpt.get("config")
        if not isinstance(ckpt.get("model"), Mapping) or not isinstance(config, Mapping):
            raise ModelFormatError(
                f"{self.path}: checkpoint has no 'model' state dict or no 'config' (keys: {sorted(ckpt)}); "
                f"expected {FORMATS_HELP}"
            )
        encoder = config.get("encoder")
        if encoder not in ENCODERS:
            raise ModelFormatError(f"{self.path}: config['encoder'] must be one of {list(ENCODERS)}, got {encoder!r}")
        mean, std = normalization(encoder)  # what training used: the encoder's own data config
        self._set_size({"image_size": config.get("image_size"), "encoder": encoder, "mean": config.get("mean", mean),
                        "std": config.get("std", std)}, image_size)
        self.config = dict(config)
        self.checkpoint_info = {k: ckpt[k] for k in ("metric", "value", "metrics", "epoch", "step", "global_step")
                                if k in ckpt}
        try:
            # build_model(weights=...) strips DDP/torch.compile prefixes and loads strictly.
            self.model = build_model(encoder, weights=self.path,
                                     decoder_channels=config.get("decoder_channels")).eval()
        except (RuntimeError, ValueError) as exc:
            raise ModelFormatError(_first_line(exc)) from exc
        self.device = torch.device(device)
        # channels_last on CPU: 1.02-1.05x on an idle CPU, 1.5-1.9x with the cores oversubscribed
        # (bench/hairseg_latency.py); same logits up to float rounding.
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.model.to(self.device, dtype=self.dtype, memory_format=self.memory_format)
        self.name = f"torch:{self.path.name}" + ("" if precision == "fp32" else f" ({precision})")

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S) float32`` normalised -> ``(N, 1, S, S) float32`` logits (eager, at ``precision``)."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            out = self.model(x.contiguous(memory_format=self.memory_format))
        return out.float().contiguous().cpu().numpy()


def read_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """The ``hairseg.json`` metadata inside a TorchScript archive, ``{}`` when it has none."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_METADATA_FILE}")]
        return json.loads(archive.read(names[0])) if names else {}


class TorchScriptPredictor(_ModelPredictor):
    """A TorchScript archive (``torch.jit.load``) from ``hairseg-export``.

    The loaded module is frozen with ``torch.jit.freeze``; ``frozen`` says whether that worked.

    Args:
        path: the ``.pt`` archive.
        device: torch device string; the archive is mapped onto it.
        image_size: S in px; default the archive's ``hairseg.json`` metadata.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelFormatError: not a loadable TorchScript archive, or no image size known.
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", image_size: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        self.device = torch.device(device)
        try:
            with quiet_torchscript_warnings():
                self.module = torch.jit.load(str(self.path), map_location=self.device).eval()
            meta = read_torchscript_metadata(self.path)
        except (RuntimeError, zipfile.BadZipFile, ValueError) as exc:
            raise ModelFormatError(f"{self.path}: not a loadable TorchScript archive ({_first_line(exc)}); "
                                   f"expected {FORMATS_HELP}") from exc
        self._set_size(meta, image_size)
        self.frozen = False
        try:
            # torch.jit.freeze (attributes inlined as constants, conv+BN folded): 1.07-1.46x faster on CPU in
            # bench/hairseg_latency.py, same logits up to float rounding. optimize_for_inference (MKLDNN) was
            # slower than freeze alone there, so it is not used. Done at load: the file stays unfrozen.
            with quiet_torchscript_warnings():
                self.module = torch.jit.freeze(self.module)
            self.frozen = True
        except RuntimeError:  # e.g. an archive that was saved frozen already
            pass
        self.name = f"torchscript:{self.path.name}"
        if meta.get("precision") == "bf16" and self.device.type == "cpu":
            from mlcore.devices import cpu_native_bf16

            if cpu_native_bf16() is None:
                log.warning("%s holds bfloat16 weights but this CPU has no native bf16 (AMX / AVX512_BF16): it runs "
                            "emulated, slower than the float32 archive", self.path)

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S) float32`` ImageNet-normalised -> ``(N, 1, S, S) float32`` logits."""
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
        return out.float().cpu().numpy()


def available_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where that is missing)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class OnnxPredictor(_ModelPredictor):
    """An ONNX model run by ONNX Runtime (``CPUExecutionProvider``; CUDA first when ``device`` is cuda and
    onnxruntime-gpu is installed).

    Threads: ``intra_op_num_threads`` is ``threads`` (default: the CPUs this process may run on,
    ``os.sched_getaffinity``, so a container or ``taskset`` limit is respected; ONNX Runtime's own default counts
    the host's physical cores);
    ``spinning=False`` turns off busy-waiting; graph optimisation at ``ORT_ENABLE_ALL`` (also its default).
    Int8 (QDQ) files from ``hairseg-export --quantize`` load the same way.

    Args:
        path: the ``.onnx`` file; input ``image`` ``(N, 3, S, S)``, output ``logits`` ``(N, 1, S, S)``.
        device: ``"cpu"`` or ``"cuda[:k]"``.
        image_size: S in px; default the ``image_size`` metadata prop, else a static input shape.
        threads: ONNX Runtime intra-op threads (default: :func:`available_cpus`).
        spinning: allow busy-waiting of the intra-op threads (ONNX Runtime's default).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelFormatError: ONNX Runtime cannot load it, or no image size known.
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", image_size: int | None = None,
                 threads: int | None = None, spinning: bool = True) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads) if threads is not None else available_cpus()
        if not spinning:  # no busy-waiting between ops: kinder to cores shared with other processes
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own (non-exported) exception types
            raise ModelFormatError(f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: {_first_line(exc)}); "
                                   f"expected {FORMATS_HELP}") from exc
        meta = read_onnx_metadata(self.session)
        inp = self.session.get_inputs()[0]
        outputs = [o.name for o in self.session.get_outputs()]
        # hairseg-export writes "logits" and "mask" (probabilities); other files: their first output
        self.input_name, self.output_name = inp.name, "logits" if "logits" in outputs else outputs[0]
        if "image_size" not in meta and len(inp.shape) == 4 and isinstance(inp.shape[2], int):
            meta["image_size"] = inp.shape[2]
        self._set_size(meta, image_size)
        self.name = f"onnx:{self.path.name}"

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S) float32`` ImageNet-normalised -> ``(N, 1, S, S) float32`` logits."""
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([self.output_name], feed)[0]


def detect_format(path: str | Path) -> str:
    """``"onnx"``, ``"torchscript"``, ``"mediapipe"`` or ``"checkpoint"`` for a model file, by content where it can.

    ``.onnx`` suffix -> ``"onnx"`` (an ONNX protobuf has no reliable magic bytes); a TFLite flatbuffer (file
    identifier ``TFL3`` at bytes 4-8, or a ``.tflite`` suffix) -> ``"mediapipe"``; a zip whose entries include
    ``<archive>/constants.pkl`` -> ``"torchscript"`` (a ``torch.save`` zip has ``data.pkl`` but no
    ``constants.pkl``); anything else -> ``"checkpoint"``.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it and the accepted formats).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path} (expected {FORMATS_HELP})")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix.lower() == ".tflite" or head[4:8] == b"TFL3":
        return "mediapipe"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist()):
                return "torchscript"
    return "checkpoint"


def _mediapipe(path: str | Path, *, device: str = "cpu", image_size: int | None = None,
               hair_class: int | None = None) -> Predictor:
    from hairseg.baseline import MediaPipeSegmenter

    del device, image_size  # MediaPipe runs on its own CPU delegate at the model's own input size
    return MediaPipeSegmenter(path, hair_class=hair_class)


_PREDICTORS: dict[str, Any] = {
    "onnx": OnnxPredictor,
    "torchscript": TorchScriptPredictor,
    "checkpoint": TorchPredictor,
    "mediapipe": _mediapipe,
}


def load_predictor(model: str | Path, *, device: str = "cpu", image_size: int | None = None,
                   hair_class: int | None = None, precision: str = "fp32") -> Predictor:
    """Load any supported model file as a :class:`Predictor` (see the module docstring for the formats).

    Args:
        model: path of an ONNX file, a TorchScript archive, an mlcore checkpoint or a MediaPipe Tasks
            image-segmentation model (``.tflite``, :class:`hairseg.baseline.MediaPipeSegmenter`).
        device: ``"cpu"`` (default) or a CUDA device.
        image_size: override of the input size S in px (for files without hairseg metadata).
        hair_class: MediaPipe only: the category whose confidence mask is hair (default: the class labelled
            hair in the model's metadata, else the last mask).
        precision: ``"fp32"`` or ``"bf16"`` (mlcore checkpoints only: :class:`TorchPredictor`).

    Raises:
        FileNotFoundError: the file does not exist.
        ModelFormatError: (a ``ValueError``) the file is none of the accepted formats; the message names
            the file and the formats.
    """
    kind = detect_format(model)
    if kind == "mediapipe":
        return _mediapipe(model, hair_class=hair_class)
    if hair_class is not None:
        raise ModelFormatError(f"{model}: hair_class applies to MediaPipe .tflite models only")
    if precision != "fp32":
        if kind != "checkpoint":
            raise ModelFormatError(f"{model}: precision {precision} applies to mlcore checkpoints (.pt) only; "
                                   f"this is a {kind} file (export an int8 ONNX with hairseg-export --quantize)")
        return TorchPredictor(model, device=device, image_size=image_size, precision=precision)
    return _PREDICTORS[kind](model, device=device, image_size=image_size)


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, size: int, device: str, hair_class: int | None = None) -> Predictor:
    return load_predictor(path, device=device, hair_class=hair_class)


def cached_predictor(model: str | Path, *, device: str = "cpu", hair_class: int | None = None) -> Predictor:
    """:func:`load_predictor` memoised per (resolved path, device, hair class) — the plan's ``ModelCache``.

    The key includes the file's modification time and size, so a re-exported file is reloaded. At most
    8 predictors are kept (least recently used evicted). ``cached_predictor.cache_clear()`` empties it.

    Raises:
        FileNotFoundError, ModelFormatError: as :func:`load_predictor`.
    """
    path = Path(model).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path} (expected {FORMATS_HELP})")
    stat = path.stat()
    return _cached(str(path), stat.st_mtime_ns, stat.st_size, device, hair_class)


cached_predictor.cache_clear = _cached.cache_clear  # type: ignore[attr-defined]


def default_model_path(fmt: str = "shipped") -> Path:
    """The model :func:`segment_hair` uses when none is given.

    ``$HAIRSEG_MODEL`` (a model file) wins; otherwise the newest entry (highest version) of the
    ``model_registry.json`` named by ``$HAIRSEG_REGISTRY``: by default the variant it ships
    (``fmt="shipped"``: the fastest one measured at export whose IoU held, e.g. the bf16 TorchScript archive;
    the ONNX file for entries written before that choice existed), or ``fmt`` as
    :func:`hairseg.registry.model_file` takes it (``"onnx"``, ``"torchscript"``, ...).

    Raises:
        ModelNotConfiguredError: neither variable is set, or the registry has no entry.
        RegistryError: the registry file is unreadable or malformed.
    """
    from hairseg.registry import latest_entry, model_file

    env_model = os.environ.get(ENV_MODEL)
    if env_model:
        return Path(env_model).expanduser()
    env_registry = os.environ.get(ENV_REGISTRY)
    if env_registry:
        registry = Path(env_registry).expanduser()
        entry = latest_entry(registry)
        if entry is None:
            raise ModelNotConfiguredError(f"${ENV_REGISTRY}={registry}: the registry has no hair_segmenter entry; "
                                          "add one with hairseg-export")
        return model_file(registry, entry, fmt)
    raise ModelNotConfiguredError(
        f"no hair-segmentation model given: pass predictor=PATH (or a Predictor), set ${ENV_MODEL} to a "
        f"model file ({FORMATS_HELP}), or set ${ENV_REGISTRY} to a model_registry.json written by hairseg-export"
    )


def segment_hair(
    image: np.ndarray,
    predictor: Predictor | str | Path | None = None,
    *,
    model: str | Path | None = None,
    hair_class: int | None = None,
    **postprocess: Any,
) -> np.ndarray:
    """Hair alpha mask of one photo (the plan's ``core/segmenter.segment_hair``).

    Args:
        image: ``(H, W, 3) uint8`` RGB photo.
        predictor: a :class:`Predictor` (anything with ``predict_proba``), a model file path (loaded once
            through :func:`cached_predictor`: ONNX, TorchScript, checkpoint or a MediaPipe ``.tflite``), or
            ``None`` for ``model`` / :func:`default_model_path` (``$HAIRSEG_MODEL`` or the newest
            ``$HAIRSEG_REGISTRY`` entry).
        model: a model file path (same as passing it as ``predictor``), e.g. ``model="hair_segmenter.tflite"``.
        hair_class: MediaPipe models only: the category that is hair (default: the one labelled hair).
        **postprocess: keyword arguments of :func:`hairseg.recolor.postprocess_mask` (``threshold=0.5``,
            ``feather_px`` / ``guard_px`` in px, default relative to the photo's size); the photo is the
            guided filter's guide.

    Returns:
        ``(H, W) uint8`` alpha 0..255: the soft probability refined at the hair boundary by a guided filter,
        0 beyond the anti-bleed guard band.

    Raises:
        ValueError: ``image`` is not ``(H, W, 3) uint8``; bad post-processing parameters; both ``predictor``
            and ``model`` given.
        ModelNotConfiguredError: no model given and none configured.
        FileNotFoundError, ModelFormatError: the model file is missing or of an unknown format.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"segment_hair expects an (H, W, 3) uint8 RGB array, got {got}")
    if predictor is not None and model is not None:
        raise ValueError("segment_hair: pass either predictor or model=, not both")
    predictor = predictor if predictor is not None else model
    if predictor is None:
        predictor = default_model_path()
    if isinstance(predictor, str | Path):
        predictor = cached_predictor(predictor, hair_class=hair_class)
    prob = np.asarray(predictor.predict_proba(image), dtype=np.float32)
    return postprocess_mask(prob, image.shape[:2], image=image, **postprocess)

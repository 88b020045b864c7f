"""Device strategies: everything that differs between CUDA, Apple MPS and CPU lives here.

The trainer loop asks its :class:`DeviceStrategy` for the autocast context, the gradient scaler,
batch placement, memory hygiene and out-of-memory handling; it never branches on the device.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from mlcore.distributed import local_rank

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceStrategy:
    """Base strategy (CPU behaviour). Subclasses override what differs.

    Args:
        precision: ``auto`` (the device's best safe choice), ``fp32``, ``bf16`` or ``fp16``.
        channels_last: convert 4-D model weights and image batches to channels-last memory format.

    Raises:
        ValueError: a precision the device (or installed torch) does not support.
    """

    kind = "cpu"
    supported: tuple[str, ...] = ("fp32", "bf16")
    auto_precision = "fp32"

    def __init__(self, precision: str = "auto", *, channels_last: bool = False, empty_cache_every: int = 0) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
        self.precision = self.auto_precision if precision == "auto" else precision
        if self.precision not in self.supported:
            raise ValueError(
                f"--precision {self.precision} is not supported on {self.kind} "
                f"(supported: {', '.join(self.supported)})"
            )
        self.channels_last = channels_last
        self.empty_cache_every = empty_cache_every
        self.device = torch.device(self.kind)

    # ---- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        """Process-wide backend settings (called once before the model is built on the device)."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device (channels-last if asked)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # ---- precision ---------------------------------------------------------------------------
    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """``torch.bfloat16`` / ``torch.float16`` for mixed precision, None for fp32."""
        return _DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes (a no-op in fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.kind, dtype=dtype)

    def make_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.kind, enabled=self.precision == "fp16")

    # ---- data --------------------------------------------------------------------------------
    def to_device(self, batch: Any) -> Any:
        """Move every tensor in a (nested) batch to the device; 4-D float tensors go channels-last if set."""
        return _map_tensors(batch, self._move)

    def _move(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        if self.channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    @property
    def metric_device(self) -> torch.device:
        """Where metric states live and step outputs are moved before ``Metric.update``."""
        return self.device

    @property
    def pin_memory(self) -> bool:
        """Whether loaders should pin host memory for faster host-to-device copies."""
        return False

    # ---- memory ------------------------------------------------------------------------------
    def after_step(self, optimizer_step: int) -> None:
        """Memory hygiene after an optimizer update (e.g. MPS cache release every N steps)."""

    def is_oom(self, exc: BaseException) -> bool:
        """True if ``exc`` is an out-of-memory error on this device."""
        if isinstance(exc, torch.OutOfMemoryError):
            return True
        return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()

    def free_memory(self) -> None:
        """Release cached allocator blocks after an OOM."""

    def peak_memory_mb(self) -> float | None:
        """Peak allocated device memory in MiB, if the device reports it."""
        return None

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""

    def describe(self) -> dict[str, Any]:
        """Device, precision and memory format, as recorded in ``summary.json``."""
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last}


CPU_AUTO_BF16 = False
"""Whether ``--precision auto`` on a CPU with native bf16 (:func:`cpu_native_bf16`) picks bf16 autocast +
channels-last for conv models. Off: measured alone with ``bench/cpu_precision.py``, bf16 trained only 1.20x
faster than fp32 (hairseg 1.32x, foodrec 1.09x), short of the 1.6x goal that would justify changing the default
numerics (issue 17, bench/RESULTS.md); the detection and the log line are on either way."""


def cpu_native_bf16() -> str | None:
    """The CPU's native bf16 matrix support, detected at run time: ``"AMX"`` (AMX-BF16 tiles),
    ``"AVX512_BF16"``, or None (bf16 would be emulated and slower than fp32).

    Read from ``/proc/cpuinfo`` flags (``amx_bf16``, ``avx512_bf16``; Linux), and only when torch's
    CPU kernels were built for AVX512 (``torch.backends.cpu.get_cpu_capability()``); other systems: None.
    """
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # pragma: no cover - old torch
        capability = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    if "AVX512" not in capability.upper():
        return None
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512_BF16"
    return None


class CPUStrategy(DeviceStrategy):
    """CPU: fp32 by default; bf16 autocast (fp32 master weights) with ``--precision bf16``.

    ``--precision auto`` logs what the CPU offers: with native bf16 (:func:`cpu_native_bf16`) and
    :data:`CPU_AUTO_BF16` on, it picks bf16 + channels-last for models with 2-D convolutions
    (measured 1.65x samples/s on hairseg's cpu preset, AVX512_BF16 CPU, issue 17); otherwise fp32.
    """

    kind = "cpu"
    supported = ("fp32", "bf16")

    def __init__(self, precision: str = "auto", *, channels_last: bool = False, empty_cache_every: int = 0) -> None:
        self.native_bf16 = cpu_native_bf16()
        self.auto_channels_last = False
        if precision == "auto":
            if self.native_bf16 and CPU_AUTO_BF16:
                self.auto_precision = "bf16"
                self.auto_channels_last = True
                log.info("--precision auto on cpu: bf16 autocast (native %s), fp32 master weights, "
                         "channels-last for conv models", self.native_bf16)
            elif self.native_bf16:
                log.info("--precision auto on cpu: fp32 (this CPU has native bf16 (%s): --precision bf16 "
                         "--channels-last trained 1.09-1.32x faster than fp32 in bench/cpu_precision.py, measured "
                         "alone: below the 1.6x that would make it the default)",
                         self.native_bf16)
            else:
                log.info("--precision auto on cpu: fp32 (no native bf16 on this CPU)")
        super().__init__(precision, channels_last=channels_last, empty_cache_every=empty_cache_every)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.auto_channels_last and not self.channels_last:
            self.channels_last = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        return super().prepare_model(model)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cpu_native_bf16": self.native_bf16}


class CUDAStrategy(DeviceStrategy):
    """CUDA: bf16 autocast by default where supported (else fp16 with a GradScaler), TF32 matmuls,
    cuDNN autotuner, expandable allocator segments, peak-memory reporting."""

    kind = "cuda"
    supported = ("fp32", "bf16", "fp16")

    def __init__(self, precision: str = "auto", *, channels_last: bool = False, empty_cache_every: int = 0) -> None:
        self.auto_precision = "bf16" if torch.cuda.is_available() and _cuda_bf16_native() else "fp16"
        super().__init__(precision, channels_last=channels_last, empty_cache_every=empty_cache_every)
        self.device = torch.device("cuda", local_rank())

    def setup(self) -> None:
        torch.cuda.set_device(self.device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True
        try:  # fewer fragmentation OOMs with variable shapes; must precede the first allocation
            torch.cuda.memory._set_allocator_settings("expandable_segments:True")
        except (AttributeError, RuntimeError) as exc:  # pragma: no cover - torch-version dependent
            log.debug("expandable_segments not set: %s", exc)
        torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def pin_memory(self) -> bool:
        return True

    def after_step(self, optimizer_step: int) -> None:
        if self.empty_cache_every and optimizer_step % self.empty_cache_every == 0:
            torch.cuda.empty_cache()

    def free_memory(self) -> None:
        torch.cuda.empty_cache()

    def peak_memory_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


class MPSStrategy(DeviceStrategy):
    """Apple MPS: fp16 autocast by default (bf16 where the installed torch and macOS support it),
    cache release every ``empty_cache_every`` updates (default 50), metrics kept on the CPU.

    The watermark/allocator environment variables must be set before torch is imported; the
    ``mlcore`` package does that on import (see :func:`mlcore.configure_environment`).
    """

    kind = "mps"
    auto_precision = "fp16"

    def __init__(self, precision: str = "auto", *, channels_last: bool = False, empty_cache_every: int = 50) -> None:
        self.supported = ("fp32", "fp16", "bf16") if _mps_bf16_ok() else ("fp32", "fp16")
        super().__init__(precision, channels_last=channels_last, empty_cache_every=empty_cache_every or 50)

    @property
    def metric_device(self) -> torch.device:
        return torch.device("cpu")

    def after_step(self, optimizer_step: int) -> None:
        if optimizer_step % self.empty_cache_every == 0:
            torch.mps.empty_cache()

    def free_memory(self) -> None:
        torch.mps.empty_cache()

    def peak_memory_mb(self) -> float | None:
        return torch.mps.driver_allocated_memory() / 2**20

    def synchronize(self) -> None:
        torch.mps.synchronize()


def _cuda_bf16_native() -> bool:
    """bf16 in hardware (compute capability >= 8.0, Ampere on). ``torch.cuda.is_bf16_supported()``
    defaults to ``including_emulation=True``, which says yes on T4/V100, where bf16 is emulated and
    slow; those cards get fp16 + GradScaler."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def _mps_bf16_ok() -> bool:
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
        return True
    except Exception:  # noqa: BLE001 - any failure means unsupported
        return False


class DeviceError(ValueError):
    """A ``--device`` value that is malformed or names a device this machine lacks; the message is one
    line naming the valid forms and the devices present."""


DEVICE_FORMS = "auto, cpu, cuda[:N], mps"
"""The accepted ``--device`` spellings, for messages and ``--help``."""


def available_devices() -> list[str]:
    """Devices present on this machine, e.g. ``["auto", "cpu", "cuda:0", "cuda:1"]``."""
    present = ["auto", "cpu"]
    if torch.cuda.is_available():
        present += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        present.append("mps")
    return present


def check_device(name: str, flag: str = "--device") -> str:
    """Validate a ``--device`` value without touching the device: ``auto``, ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``, and the device must be present.

    Returns:
        ``name`` normalised (lower case, stripped).

    Raises:
        DeviceError: ``--device gpu: expected one of auto, cpu, cuda[:N], mps (present here: auto, cpu)``.
    """
    text = str(name).strip().lower()
    present = available_devices()
    here = f"(present here: {', '.join(present)})"
    match = re.fullmatch(r"(auto|cpu|mps|cuda)(?::(\d+))?", text)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise DeviceError(f"{flag} {name}: expected one of {DEVICE_FORMS} {here}")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{flag} {name}: CUDA is not available on this machine {here}")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise DeviceError(f"{flag} {name}: no such CUDA device ({torch.cuda.device_count()} present) {here}")
    if kind == "mps" and "mps" not in present:
        raise DeviceError(f"{flag} {name}: Apple MPS is not available on this machine {here}")
    return text


def resolve_device(name: str) -> str:
    """``auto`` picks cuda > mps > cpu; an explicit device (``cpu``, ``cuda``, ``cuda:N``, ``mps``) must be
    available.

    Returns:
        ``"cpu"``, ``"mps"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        DeviceError: (a ``ValueError``) unknown device name, or the device is not available here.
    """
    name = check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if "mps" in available_devices() else "cpu"
    return name


def build_strategy(device: str = "auto", precision: str = "auto", *, channels_last: bool = False,
                   empty_cache_every: int = 0) -> DeviceStrategy:
    """The :class:`DeviceStrategy` for ``device`` (after :func:`resolve_device`)."""
    resolved = resolve_device(device)
    kind, _, index = resolved.partition(":")
    cls = {"cpu": CPUStrategy, "cuda": CUDAStrategy, "mps": MPSStrategy}[kind]
    strategy = cls(precision, channels_last=channels_last, empty_cache_every=empty_cache_every)
    if index:  # cuda:N outside torchrun picks device N (under torchrun the local rank decides)
        strategy.device = torch.device("cuda", int(index) + local_rank())
    return strategy


def _map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map_tensors(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def map_tensors(obj: Any, fn) -> Any:
    """Apply ``fn`` to every tensor inside nested dicts/lists/tuples, keeping the structure."""
    return _map_tensors(obj, fn)


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: dim 0 of its first tensor (dicts, lists, tuples searched).

    Raises:
        ValueError: the batch contains no tensor.
    """
    for t in _iter_tensors(batch):
        return int(t.shape[0]) if t.dim() > 0 else 1
    raise ValueError("cannot infer the batch size: the batch holds no tensor")


def _iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _iter_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _iter_tensors(v)


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Split a batch into ``parts`` micro-batches along dim 0 (tensors and per-sample lists).

    Used by the OOM back-off: a batch of B samples becomes ``parts`` chunks of about B / parts.
    Fewer chunks are returned when B < parts.
    """
    if parts <= 1:
        return [batch]
    n = batch_size_of(batch)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    spans = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return [_slice(batch, a, b, n) for a, b in spans]


def _slice(obj: Any, a: int, b: int, n: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[a:b] if obj.dim() > 0 and obj.shape[0] == n else obj
    if isinstance(obj, Mapping):
        return {k: _slice(v, a, b, n) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_slice(v, a, b, n) for v in obj))
    if isinstance(obj, list) and len(obj) == n and not any(isinstance(v, torch.Tensor) for v in obj):
        return obj[a:b]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_slice(v, a, b, n) for v in obj)
    return obj


__all__: Sequence[str] = (
    "DeviceStrategy", "CPUStrategy", "CUDAStrategy", "MPSStrategy", "build_strategy", "resolve_device",
    "check_device", "available_devices", "DeviceError", "DEVICE_FORMS", "cpu_native_bf16", "CPU_AUTO_BF16",
    "batch_size_of", "split_batch", "map_tensors", "PRECISIONS", "DEVICES",
)

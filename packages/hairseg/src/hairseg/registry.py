"""``model_registry.json``: the plan's "Step 3: Model Versioning", kept as a history.

Layout::

    {"hair_segmenter": [
        {"version": "1.0", "created_at": "2025-01-15T10:30:00Z", "base_model": "Unet(efficientnet-lite0)",
         "dataset": "figaro1k", "metrics": {"val_iou": 0.92, ..., "verdict": "production"},
         "file": "hair_segmenter_v1.0.pt", "onnx_file": "hair_segmenter_v1.0.onnx", "size_mb": 20.9,
         "cpu_latency_ms": {"eager": ..., "torchscript": ..., "onnx": ...}, "image_size": 384,
         "parity_max_abs_diff": {"torchscript": ..., "onnx": ...}, "onnx_int8_file": ...,
         "serve": "onnx_int8" | "onnx", ...},
        {"version": "1.1", ...}]}

A MediaPipe Tasks model is registered by an entry with ``"tflite_file"`` instead of ``file``/``onnx_file``;
its hair category is the one its labels name ``hair`` (else its last mask). The seed shows one object under
``"hair_segmenter"``; a list of every exported version is kept instead so
that the rollout/rollback of its "Step 4" can go back to any earlier entry. The newest entry is the one
with the highest version (compared as integer tuples: 1.10 > 1.9). Other top-level keys (other model
families) are preserved. File names in entries are relative to the registry's folder.

Writes go to a temporary file in the same folder and are moved over the registry with ``os.replace``
(atomic: readers never see a half-written file). Read-modify-write is not locked: run one writer at a time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mlcore.runlog import write_json_atomic

REGISTRY_KEY = "hair_segmenter"
"""Top-level key of the hair-segmentation entries."""

REGISTRY_FILE = "model_registry.json"
"""Default registry file name (next to the exported files)."""

_VERSION = re.compile(r"^\d+(\.\d+)+$")


class RegistryError(ValueError):
    """The registry file is malformed, or an entry/version is invalid."""


def parse_version(version: str) -> tuple[int, ...]:
    """``"1.10"`` -> ``(1, 10)``. Raises ``RegistryError`` unless it is dot-separated integers (``X.Y``)."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise RegistryError(f"version: expected dot-separated integers like '1.0', got {version!r}")
    return tuple(int(p) for p in version.split("."))


def read_registry(path: str | Path) -> dict[str, Any]:
    """The whole registry as a dict; ``{}`` when the file does not exist.

    Raises:
        RegistryError: not valid JSON, not an object, or ``hair_segmenter`` is not a list of objects.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read model registry {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"model registry {path}: expected a JSON object, got {type(data).__name__}")
    entries = data.get(REGISTRY_KEY, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "version" in e for e in entries):
        raise RegistryError(f"model registry {path}: '{REGISTRY_KEY}' must be a list of objects with a 'version'")
    return data


def list_entries(path: str | Path) -> list[dict[str, Any]]:
    """The ``hair_segmenter`` entries in file order (oldest first); ``[]`` without a registry."""
    return list(read_registry(path).get(REGISTRY_KEY, []))


def latest_entry(path: str | Path) -> dict[str, Any] | None:
    """The entry with the highest version, ``None`` when there is none. Raises ``RegistryError`` if malformed."""
    entries = list_entries(path)
    return max(entries, key=lambda e: parse_version(e["version"])) if entries else None


def next_version(entries: list[dict[str, Any]]) -> str:
    """``"1.0"`` for no entries, else the highest ``X.Y`` with ``Y + 1`` (``1.9`` -> ``1.10``)."""
    if not entries:
        return "1.0"
    top = max(parse_version(e["version"]) for e in entries)
    return f"{top[0]}.{(top[1] if len(top) > 1 else 0) + 1}"


def append_entry(path: str | Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` to the ``hair_segmenter`` list of the registry at ``path`` (created if missing).

    Returns:
        The whole registry as written.

    Raises:
        RegistryError: malformed registry, an invalid ``entry["version"]``, or a version already listed.
    """
    data = read_registry(path)
    entries = list(data.get(REGISTRY_KEY, []))
    version = entry.get("version")
    parse_version(version)
    if any(e["version"] == version for e in entries):
        raise RegistryError(f"model registry {path}: version {version} already exists; pick another --version")
    data[REGISTRY_KEY] = [*entries, entry]
    write_json_atomic(path, data)
    return data


VARIANT_FILES: dict[str, str] = {"onnx": "onnx_file", "onnx_int8": "onnx_int8_file", "torchscript": "file",
                                  "torchscript_bf16": "bf16_file"}
"""Registry-entry key of each exported variant's file (``entry["shipped"]`` names one of these variants)."""


def model_file(path: str | Path, entry: dict[str, Any], fmt: str = "onnx") -> Path:
    """Absolute path of an entry's model: ``fmt="onnx"`` -> the ONNX file the entry serves (``onnx_int8_file``
    when ``entry["serve"] == "onnx_int8"``, i.e. ``hairseg-export --quantize`` measured its IoU within 0.01 of
    fp32's; else ``onnx_file``), ``"onnx_fp32"`` -> ``onnx_file``, ``"onnx_int8"`` -> ``onnx_int8_file``,
    ``"torchscript"`` -> ``file``, ``"torchscript_bf16"`` -> ``bf16_file``, ``"tflite"`` -> ``tflite_file`` (a
    MediaPipe Tasks image-segmentation model), ``"shipped"`` -> the file of ``entry["shipped"]`` (the fastest
    variant whose IoU held at export, :func:`hairseg.export.shipped_choice`; the ``"onnx"`` file for entries
    without it).

    An entry that holds only a ``tflite_file`` (a registered MediaPipe model: the seed's zero-train route)
    returns it whatever ``fmt`` asks for, so it is served like any exported model.

    Raises:
        RegistryError: unknown ``fmt`` or the entry has no such file.
    """
    shipped = VARIANT_FILES.get(entry.get("shipped", ""))
    keys = {"onnx": "onnx_int8_file" if entry.get("serve") == "onnx_int8" else "onnx_file", "onnx_fp32": "onnx_file",
            "onnx_int8": "onnx_int8_file", "torchscript": "file", "torchscript_bf16": "bf16_file",
            "tflite": "tflite_file"}
    # "shipped": the fastest variant whose quality held at export; entries written before it existed: the ONNX one
    keys["shipped"] = shipped or keys["onnx"]
    if fmt not in keys:
        raise RegistryError(f"fmt: expected one of {list(keys)}, got {fmt!r}")
    name = entry.get(keys[fmt])
    if not name and entry.get("tflite_file") and not entry.get("onnx_file") and not entry.get("file"):
        name = entry["tflite_file"]
    if not name:
        raise RegistryError(f"model registry {path}: version {entry.get('version')} has no '{keys[fmt]}'")
    return (Path(path).expanduser().resolve().parent / name).resolve()

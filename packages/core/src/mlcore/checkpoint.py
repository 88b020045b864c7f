"""Atomic checkpoint files, loaded with ``torch.load(..., weights_only=True)``.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then moved
over the target with ``os.replace`` (atomic on POSIX and Windows), so a crash or a full disk
during a save never leaves a truncated ``last.pt``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or lacks a required entry."""


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], *, binary: bool = True) -> Path:
    """Create ``path`` atomically: ``write(f)`` fills a temp file in the same folder, which is
    flushed, fsynced and moved over ``path`` with ``os.replace``; on any error the temp file is removed
    and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def link_alias(target: str | Path, alias: str | Path) -> Path:
    """Make ``alias`` another name of the file ``target`` (a hard link, so no extra disk), atomically.

    The link is created under a temporary name and moved over ``alias`` with ``os.replace``, so a
    reader sees either the previous file or the new one. Where hard links are not supported (some
    network or FAT file systems) the file is copied with :func:`atomic_write` instead.
    """
    target, alias = Path(target), Path(alias)
    tmp = alias.with_name(f".{alias.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
        os.replace(tmp, alias)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(target, "rb") as src:
            data = src.read()
        atomic_write(alias, lambda f: f.write(data))
    return alias


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``.

    Raises:
        CheckpointError: missing file or a file that is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def resolve_resume_path(resume: str | Path) -> Path:
    """``--resume`` accepts a run directory (uses ``checkpoints/last.pt``) or a checkpoint file.

    Raises:
        CheckpointError: nothing to resume from at that path.
    """
    p = Path(resume)
    candidates = [p] if p.is_file() else [p / "checkpoints" / "last.pt", p / "last.pt"]
    for c in candidates:
        if c.is_file():
            return c
    raise CheckpointError(f"--resume {resume}: no checkpoint found (looked for {', '.join(map(str, candidates))})")


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the underlying module (unwrapping DDP and ``torch.compile``)."""
    return unwrap_model(model).state_dict()


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip ``DistributedDataParallel`` / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model

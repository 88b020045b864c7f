"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP), resumable on any world size.

Layout: a ``--strategy fsdp`` run under ``torchrun`` writes ``checkpoints/last.dcp/`` instead of
``checkpoints/last.pt``: DCP's ``.metadata`` and one ``__<rank>_0.distcp`` file per rank (each rank
writes its own shards; all ranks must see the same folder, so multi-node runs need it on shared
storage), plus ``trainer_state.pt``, the rest of ``last.pt`` (step, stage, scheduler, scaler, RNG,
callbacks, history, config) written by rank 0. Single-process and DDP runs keep the single-file
``last.pt``. Whichever of the two a save writes, the other (now stale) one is removed, so a run
directory resumes from its latest state.

Loading goes through DCP's own state-dict API (``get_state_dict`` / ``set_state_dict`` from
``torch.distributed.checkpoint.state_dict``, ``dcp.load``): keys are the plain module's names and
optimizer states are keyed by parameter name, so a checkpoint written by N ranks loads into M
ranks (FSDP or DDP) or into one process without a process group (DCP's ``no_dist`` mode).
``last.pt`` loads into an FSDP model as a full state dict (``full_state_dict=True``).

Safety: everything is read as ``torch.load(..., weights_only=True)`` would: tensor shards are read
by DCP with ``weights_only=True``; non-tensor entries (optimizer hyper-parameters) through
:class:`SafeLoadPlanner` with ``weights_only=True`` (DCP's default planner uses ``False``); the
``.metadata`` file (a plain pickle, which DCP reads with ``pickle.load``) through
:class:`SafeFileSystemReader`, an unpickler that admits only DCP's metadata classes, ``torch.Size``,
dtypes and paths.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mlcore.checkpoint import CheckpointError, atomic_save, check_architectures, load_checkpoint, unwrap_model
from mlcore.fsdp import is_fsdp

log = logging.getLogger(__name__)

SHARDED_DIR = "last.dcp"
"""Folder name of the sharded counterpart of ``last.pt`` under ``checkpoints/``."""
STATE_FILE = "trainer_state.pt"
"""Non-tensor trainer state inside a sharded checkpoint folder (a ``weights_only`` file)."""

_SAFE_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"DCP metadata refers to {module}.{name}, which a checkpoint must not contain")


class SafeFileSystemReader(FileSystemReader):
    """DCP's ``FileSystemReader`` whose ``.metadata`` unpickler admits only metadata classes."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as f:
            metadata = _MetadataUnpickler(io.BytesIO(f.read())).load()
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading non-tensor entries with ``weights_only=True``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def is_sharded_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a DCP checkpoint folder written by :func:`save_sharded`."""
    p = Path(path)
    return p.is_dir() and (p / ".metadata").is_file() and (p / STATE_FILE).is_file()


def _pg_kwargs() -> dict[str, Any]:
    return {} if dist.is_available() and dist.is_initialized() else {"no_dist": True}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence DCP's "assuming the intent is to save/load in a single process" (that is the intent)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to .* in a single process")
        yield


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_sharded(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 state: dict[str, Any]) -> Path:
    """Write a sharded checkpoint of ``model`` (and ``optimizer``) to ``directory``, atomically.

    A collective: every rank calls it. DCP writes to ``.<name>.tmp`` next to ``directory``; rank 0
    adds ``state`` (``weights_only``-loadable values only) as ``trainer_state.pt``, then swaps the
    folder in (the previous one is removed after the swap), so a crash mid-save leaves the previous
    checkpoint intact. Returns ``directory``.
    """
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    old = directory.with_name(f".{directory.name}.old")
    if _is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    sd: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        sd["optimizer"] = get_optimizer_state_dict(model, optimizer)
    with _quiet():
        dcp.save(sd, checkpoint_id=tmp, **_pg_kwargs())
    if _is_rank0():
        atomic_save({**state, "format": "dcp"}, tmp / STATE_FILE)
        _fsync_dir(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        _fsync_dir(directory.parent)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return directory


def _load(directory: Path, state_dict: dict[str, Any]) -> None:
    reader = SafeFileSystemReader(directory)
    try:
        reader.read_metadata()  # fail early, with a clear message, on a missing or unsafe .metadata
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
        raise CheckpointError(f"cannot read sharded checkpoint {directory}: {exc}") from exc
    try:
        with _quiet():
            dcp.load(state_dict, storage_reader=reader, planner=SafeLoadPlanner(), **_pg_kwargs())
    except Exception as exc:  # noqa: BLE001 - DCP wraps every rank's failure in a CheckpointException
        lines = [ln.strip() for ln in str(exc).splitlines() if "Error" in ln or "error" in ln]
        raise CheckpointError(f"cannot read sharded checkpoint {directory}: "
                              f"{lines[-1] if lines else type(exc).__name__}") from exc


def load_sharded_model(directory: str | Path, model: nn.Module) -> None:
    """Load the model weights of a sharded checkpoint into ``model`` (plain, DDP-wrapped or FSDP,
    any world size). A collective when a process group is up.

    Raises:
        CheckpointError: unreadable folder, unsafe metadata, or keys/shapes that do not match.
    """
    sd = {"model": get_model_state_dict(model)}
    _load(Path(directory), sd)
    set_model_state_dict(model, sd["model"])


def load_sharded_optimizer(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the optimizer state of a sharded checkpoint into ``optimizer`` (built over ``model``'s
    parameters), resharding to this run's world size. A collective when a process group is up."""
    sd = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    _load(Path(directory), sd)
    set_optimizer_state_dict(model, optimizer, sd["optimizer"])


def _clean_fqn(name: str) -> str:
    for part in ("_checkpoint_wrapped_module.", "_orig_mod.", "module."):
        name = name.replace(part, "")
    return name


def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer,
                            saved: dict[str, Any]) -> dict[str, Any]:
    """Re-key a native ``optimizer.state_dict()`` (parameters numbered in ``param_groups`` order) by
    parameter name, matching it to ``optimizer``'s groups: the layout ``set_optimizer_state_dict``
    expects with ``full_state_dict=True``.

    Raises:
        CheckpointError: the saved groups do not match this optimizer's groups.
    """
    names = {p: _clean_fqn(n) for n, p in model.named_parameters()}
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"the checkpoint's optimizer has {len(saved['param_groups'])} parameter groups, "
                              f"this run's has {len(optimizer.param_groups)}")
    state, groups = {}, []
    for g_saved, g_now in zip(saved["param_groups"], optimizer.param_groups, strict=True):
        if len(g_saved["params"]) != len(g_now["params"]):
            raise CheckpointError("the checkpoint's optimizer groups hold other parameters than this run's")
        fqns = [names[p] for p in g_now["params"]]
        for idx, fqn in zip(g_saved["params"], fqns, strict=True):
            if idx in saved["state"]:
                state[fqn] = saved["state"][idx]
        groups.append({**{k: v for k, v in g_saved.items() if k != "params"}, "params": fqns})
    return {"state": state, "param_groups": groups}


def load_resume_state(path: str | Path, model: nn.Module, *, expect_domain: str | None = None) -> dict[str, Any]:
    """Read a checkpoint for ``--resume`` and load its weights into ``model`` (after wrapping).

    ``path`` is a ``last.pt`` file or a ``last.dcp`` folder. Returns the checkpoint's trainer state
    (``last.pt``'s dict; for a folder its ``trainer_state.pt`` plus ``"sharded_checkpoint"``, the
    folder). Pass it to :func:`load_resume_optimizer` once the optimizer exists.

    ``expect_domain`` refuses a checkpoint of another domain package (see
    :func:`mlcore.checkpoint.load_checkpoint`).

    Raises:
        CheckpointError: unreadable checkpoint, another domain's, or weights that do not fit the model.
    """
    path = Path(path)
    if path.is_dir():
        if not is_sharded_checkpoint(path):
            raise CheckpointError(f"--resume {path}: not a sharded checkpoint (no .metadata and {STATE_FILE})")
        state = load_checkpoint(path / STATE_FILE, flag="--resume", expect_domain=expect_domain)
        check_architectures(state, model, name=f"--resume {path}")  # e.g. efficientnet_lite0 vs tf_efficientnet_lite0
        load_sharded_model(path, model)
        state["sharded_checkpoint"] = str(path)
        return state
    state = load_checkpoint(path, flag="--resume", expect_domain=expect_domain)
    check_architectures(state, model, name=f"--resume {path}")
    if is_fsdp(model):
        set_model_state_dict(model, state["model"], options=StateDictOptions(full_state_dict=True))
    else:
        unwrap_model(model).load_state_dict(state["model"])
    return state


def load_resume_optimizer(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the optimizer state of a checkpoint read by :func:`load_resume_state` into ``optimizer``."""
    if state.get("sharded_checkpoint"):
        load_sharded_optimizer(state["sharded_checkpoint"], model, optimizer)
    elif is_fsdp(model):
        set_optimizer_state_dict(model, optimizer, optimizer_state_by_name(model, optimizer, state["optimizer"]),
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state["optimizer"])


def remove_stale(ckpt_dir: str | Path, written: str) -> None:
    """After writing ``written`` (``"last.pt"`` or ``"last.dcp"``) remove the other format's
    ``last`` from ``ckpt_dir`` (rank 0 only), so the folder resumes from the newest state."""
    if not _is_rank0():
        return
    other = Path(ckpt_dir) / (SHARDED_DIR if written == "last.pt" else "last.pt")
    if other.is_dir():
        shutil.rmtree(other, ignore_errors=True)
    elif other.exists():
        other.unlink()


__all__ = ["SHARDED_DIR", "STATE_FILE", "SafeFileSystemReader", "SafeLoadPlanner", "is_sharded_checkpoint",
           "load_resume_optimizer", "load_resume_state", "load_sharded_model", "load_sharded_optimizer",
           "optimizer_state_by_name", "remove_stale", "save_sharded"]

"""Atomic checkpoint files, and the one safe loader every command reads checkpoints with.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then moved
over the target with ``os.replace`` (atomic on POSIX and Windows), so a crash or a full disk
during a save never leaves a truncated ``last.pt``.

Every command that reads a checkpoint or a ``--weights`` file goes through :func:`load_checkpoint`
(``torch.load(..., weights_only=True)``, never ``weights_only=False``): each way a file can be
wrong becomes one :class:`CheckpointError` line (empty, truncated, not a checkpoint, refused because
it pickles code, a checkpoint of another domain), which :func:`mlcore.cli.run_cli` prints without a
traceback. Checkpoints written by the trainer record the domain package that wrote them under the
key ``"domain"`` (see :func:`config_domain`) so a loader can pass ``expect_domain=``.
"""

from __future__ import annotations

import io
import logging
import os
import pickletools
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

log = logging.getLogger("mlcore.checkpoint")


class UserInputError(Exception):
    """Bad input from the user (a file, a flag value): the message is one line naming the file or
    flag and what was expected. :func:`mlcore.cli.run_cli` prints it as ``prog: error: ...`` and
    exits non-zero, without a traceback."""


class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint is missing, unreadable, unsafe, of another domain, or lacks a required entry."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (also a ``FileNotFoundError``)."""


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], *, binary: bool = True) -> Path:
    """Create ``path`` atomically: ``write(f)`` fills a temp file in the same folder, which is
    flushed, fsynced and moved over ``path`` with ``os.replace``, then the folder is fsynced (so the
    rename itself survives a power loss); on any error the temp file is removed and ``path`` is
    untouched. The file gets the mode a plain ``open`` would give (0666 minus the umask), not
    ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename in it is durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


STEP_CHECKPOINT = re.compile(r"^step_(\d+)\.(pt|dcp)$")
"""Name of a retained step checkpoint (``--keep-last``): ``step_000120.pt``, or ``step_000120.dcp/`` for a
sharded one."""


def step_checkpoint_name(step: int, sharded: bool = False) -> str:
    """``step_000120.pt`` (``.dcp`` for a sharded folder): the ``--keep-last`` copy of ``last`` at
    optimizer step ``step`` (the run's global step, across stages)."""
    return f"step_{step:06d}.{'dcp' if sharded else 'pt'}"


def link_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` a copy of the checkpoint ``src`` that costs no disk: a hard link for a file
    (:func:`link_alias`), a folder of hard links for a sharded checkpoint folder (copies where links
    are not supported). Atomic: the folder is built under a temporary name and renamed into place;
    an existing ``dst`` is replaced. Later saves of ``src`` replace its files (``os.replace``) rather
    than rewrite them, so ``dst`` keeps the contents it had when linked."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        return link_alias(src, dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    old = dst.with_name(f".{dst.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=_link_or_copy)
    _fsync_dir(tmp)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    _fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def step_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of the ``step_NNNNNN.pt`` / ``.dcp`` checkpoints in ``ckpt_dir``, by step."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_CHECKPOINT.match(p.name))]
    return sorted(found, key=lambda sp: (sp[0], sp[1].name))


def prune_step_checkpoints(ckpt_dir: str | Path, keep: int, step: int) -> list[Path]:
    """Delete all but the ``keep`` latest step checkpoints at or before optimizer step ``step``
    (``--keep-last``); returns the deleted paths. Step checkpoints after ``step`` are left alone: they
    belong to the run a ``--resume step_NNNNNN.pt`` rolled back from (this run overwrites them when
    it reaches those steps)."""
    older = [p for s, p in step_checkpoints(ckpt_dir) if s <= step]
    gone = older[:max(0, len(older) - keep)]
    for p in gone:
        remove_checkpoint(p)
    return gone


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint file or sharded folder (missing is fine)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


# Module prefixes whose pickled globals a plain tensor checkpoint may reference (what torch's
# weights-only unpickler allows by default); anything else named in the pickle is code.
_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set",
                         "builtins.frozenset", "builtins.bytearray", "builtins.slice", "builtins.complex",
                         "numpy.", "__builtin__.set")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
               "STRING"}


def config_domain(config: Any) -> str | None:
    """The domain package a config belongs to: the top-level package of its class
    (``hairseg.config.HairSegConfig`` -> ``"hairseg"``), ``None`` for mlcore's own :class:`TrainConfig`."""
    top = type(config).__module__.split(".")[0]
    return None if top in ("mlcore", "builtins", "__main__") else top


def checkpoint_domain(ckpt: Mapping[str, Any]) -> str | None:
    """The domain recorded in a loaded checkpoint (``ckpt["domain"]``, else ``ckpt["config"]["domain"]``),
    ``None`` when it does not say (older checkpoints, bare state dicts)."""
    domain = ckpt.get("domain")
    config = ckpt.get("config")
    if domain is None and isinstance(config, Mapping):
        domain = config.get("domain")
    return domain if isinstance(domain, str) else None


def _pickle_bytes(path: Path) -> list[bytes]:
    """The pickle streams of a checkpoint file: ``*/data.pkl`` of a torch zip, else the file itself."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                return [zf.read(n) for n in zf.namelist() if n.endswith(".pkl")]
        except (zipfile.BadZipFile, OSError, EOFError):
            return []
    return [path.read_bytes()]


def pickled_globals(path: str | Path) -> list[str]:
    """``module.name`` of every global a pickle references, read with :mod:`pickletools` (nothing is
    executed): ``GLOBAL`` operands and ``STACK_GLOBAL`` with the two strings pushed before it.
    Parsing stops at the first malformed opcode (a truncated file still reports what came before)."""
    found: list[str] = []
    for data in _pickle_bytes(Path(path)):
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(io.BytesIO(data)):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif op.name in _STRING_OPS:
                    strings.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
        except Exception:  # noqa: BLE001 - pickletools raises ValueError/EOFError/... on garbage
            pass
    return found


def _unsafe_global(path: Path, exc: BaseException) -> str | None:
    """The first global in ``path`` that is not a tensor-checkpoint type (e.g. ``posix.system``)."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if match and not match.group(1).startswith(_SAFE_GLOBAL_PREFIXES):
        return match.group(1)
    for name in pickled_globals(path):
        if not name.startswith(_SAFE_GLOBAL_PREFIXES):
            return name
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    expect_domain: str | None = None, flag: str | None = None, mmap: bool = False
                    ) -> dict[str, Any]:
    """Load a checkpoint dict safely (``torch.load(..., weights_only=True)``).

    Args:
        path: a ``torch.save`` file: a trainer checkpoint (``{"model": state_dict, "config": ...}``)
            or a bare state dict.
        map_location: where tensors are loaded (default CPU).
        expect_domain: the domain package reading it (``"hairseg"``); a checkpoint that records another
            domain is refused. Checkpoints that record none are accepted.
        flag: the flag the path came from (``"--weights"``), used to start the error message.
        mmap: memory-map the tensors instead of reading them (a cheap validity check of a large file;
            ignored for pre-zip torch files).

    Returns:
        The checkpoint mapping (tensors on ``map_location``).

    Raises:
        CheckpointError: one line: file not found; a folder; ``0 bytes: not a checkpoint``; truncated or
            corrupt; not a PyTorch checkpoint; ``refused: the file contains a pickled call to
            posix.system, not tensors``; not a dict; ``a foodrec checkpoint, expected hairseg``.
    """
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise CheckpointError(f"{name}: is a folder, expected a checkpoint file")
    if not path.is_file():
        raise CheckpointNotFoundError(f"{name}: file not found" if flag else f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{name}: 0 bytes: not a checkpoint")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not for the user
            warnings.simplefilter("ignore")
            with open(path, "rb") as f:
                zipped = f.read(4) == b"PK\x03\x04"
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipped)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        unsafe = _unsafe_global(path, exc)
        if unsafe is not None:  # never suggest weights_only=False, as torch's own message does
            raise CheckpointError(f"{name}: refused: the file contains a pickled call to {unsafe}, "
                                  "not tensors") from None
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"PK\x03\x04" or "zip archive" in str(exc) or isinstance(exc, EOFError):
            raise CheckpointError(f"{name}: truncated or corrupt checkpoint "
                                  f"({path.stat().st_size} bytes; re-save or re-download it)") from None
        raise CheckpointError(f"{name}: not a PyTorch checkpoint ({path.stat().st_size} bytes, "
                              "unreadable by torch.load)") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: holds a {type(obj).__name__}, expected a checkpoint dict")
    found = checkpoint_domain(obj)
    if expect_domain is not None and found is not None and found != expect_domain:
        raise CheckpointError(f"{name}: a {found} checkpoint, expected {expect_domain}")
    return obj


def state_dict_of(ckpt: Mapping[str, Any], *, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint: ``ckpt["model"]``, ``ckpt["state_dict"]`` or
    ``ckpt`` itself, with ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes removed.

    Raises:
        CheckpointError: no mapping of tensors found.
    """
    state: Any = ckpt
    for key in ("model", "state_dict"):
        if isinstance(ckpt.get(key), Mapping):
            state = ckpt[key]
            break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{name}: holds no model weights (expected a state dict, or a dict with "
                              "'model' or 'state_dict')")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def load_state_dict_checked(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *,
                            name: str = "checkpoint", strict: bool = True) -> None:
    """``model.load_state_dict(state)`` with a one-line error instead of torch's list of every key.

    Raises:
        CheckpointError: missing/unexpected keys (strict) or shape mismatches, with counts and the
            first example of each.
    """
    own = model.state_dict()
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if shapes:
        k, a, b = shapes[0]
        problems.append(f"{len(shapes)} shape mismatches (e.g. {k}: {a} in the file, {b} in the model)")
    if strict and missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if problems:
        raise CheckpointError(f"{name}: weights do not match the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=strict)


ARCHITECTURE_NOTES: dict[tuple[str, str], str] = {
    ("efficientnet_lite0", "tf_efficientnet_lite0"):
        "PyTorch padding and ImageNet mean/std vs TensorFlow 'same' padding and TF-Lite's (x - 127) / 128 "
        "input, issue 17: the same tensor names, so the weights would load and predict wrongly",
}
"""(architecture a checkpoint was trained with, architecture this version builds) -> what differs."""


def model_architectures(model: torch.nn.Module) -> list[str]:
    """The timm architectures inside ``model``: ``pretrained_cfg["architecture"]`` of every submodule that
    has one (a timm backbone, smp's ``tu-`` encoder), sorted, without repeats; ``[]`` for none. The trainer
    records it in every checkpoint as ``"architectures"``."""
    found = set()
    for module in model.modules():
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, Mapping) and isinstance(cfg.get("architecture"), str):
            found.add(cfg["architecture"])
    return sorted(found)


def check_architectures(ckpt: Mapping[str, Any], model: torch.nn.Module, *, name: str = "checkpoint") -> None:
    """Refuse (or warn about) a checkpoint trained with another timm architecture than ``model``'s.

    timm's ``efficientnet_lite0`` and ``tf_efficientnet_lite0`` have the same state-dict keys and shapes, so
    a checkpoint of the first loads into the second without an error and predicts wrongly (issue 17 moved
    every domain to the second). Checkpoints record ``"architectures"`` (:func:`model_architectures`) since
    then; older ones record none.

    Args:
        ckpt: a loaded checkpoint (:func:`load_checkpoint`).
        model: the model its weights are about to be loaded into.
        name: how the file is named in messages (``"--checkpoint runs/x/best.pt"``).

    Raises:
        CheckpointError: one line naming both architectures, when the recorded ones differ from the model's.

    A checkpoint with no record, whose model holds ``tf_efficientnet_lite0``, written before checkpoints
    said which weights they hold (no ``"weights"`` key: before the switch or within hours after it) gets
    one warning line naming both architectures instead: it cannot be told apart.
    """
    built = model_architectures(model)
    recorded = ckpt.get("architectures")
    if isinstance(recorded, (list, tuple)):
        recorded = sorted(str(a) for a in recorded)
        if recorded != built:
            extra = [a for a in recorded if a not in built]
            missing = [a for a in built if a not in recorded]
            notes = [ARCHITECTURE_NOTES[(a, b)] for a in extra for b in missing if (a, b) in ARCHITECTURE_NOTES]
            raise CheckpointError(
                f"{name}: trained with timm {', '.join(extra) or 'no timm architecture'}, but this version builds "
                f"{', '.join(missing) or 'no timm architecture'}" + (f" ({notes[0]})" if notes else "")
                + "; retrain it with this version")
        return
    if "tf_efficientnet_lite0" in built and "weights" not in ckpt:
        log.warning("%s: records no architecture; if it was trained with timm efficientnet_lite0 (before issue 17) "
                    "it does not fit this version's tf_efficientnet_lite0 (TensorFlow 'same' padding, TF-Lite input "
                    "scaling) and will predict wrongly: retrain it", name)


def load_model_weights(model: torch.nn.Module, path: str | Path, *, expect_domain: str | None = None,
                       flag: str | None = "--weights", strict: bool = True) -> dict[str, Any]:
    """Initialise ``model`` from a checkpoint or state-dict file through :func:`load_checkpoint`.

    Returns:
        The loaded checkpoint mapping (for its ``config`` or class names).

    Raises:
        CheckpointError: see :func:`load_checkpoint`, :func:`check_architectures` (trained with another timm
            architecture) and :func:`load_state_dict_checked`.
    """
    ckpt = load_checkpoint(path, expect_domain=expect_domain, flag=flag)
    name = f"{flag} {path}" if flag else str(path)
    check_architectures(ckpt, model, name=name)
    load_state_dict_checked(model, state_dict_of(ckpt, name=name), name=name, strict=strict)
    return ckpt


def resolve_resume_path(resume: str | Path) -> Path:
    """``--resume`` accepts a run directory, a ``last.pt``-style checkpoint file or a sharded
    checkpoint folder (``checkpoints/last.dcp``, see :mod:`mlcore.dcp`). A run directory resumes from
    ``checkpoints/last.pt`` or ``checkpoints/last.dcp``, whichever is newer (a save removes the other).

    Raises:
        CheckpointError: nothing to resume from at that path.
    """
    p = Path(resume)
    if p.is_file() or _is_dcp_dir(p):
        return p
    for folder in (p / "checkpoints", p):
        found = [c for c in (folder / "last.pt", folder / "last.dcp") if c.is_file() or _is_dcp_dir(c)]
        if found:
            return max(found, key=lambda c: c.stat().st_mtime_ns)
    raise CheckpointError(f"--resume {resume}: no checkpoint found (looked for {p / 'checkpoints' / 'last.pt'}, "
                          f"{p / 'checkpoints' / 'last.dcp'}, {p / 'last.pt'})")


def _is_dcp_dir(p: Path) -> bool:
    return p.is_dir() and (p / ".metadata").is_file() and (p / "trainer_state.pt").is_file()


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

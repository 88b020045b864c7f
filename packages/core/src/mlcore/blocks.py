"""A model's repeated blocks, and activation checkpointing of them (``--grad-checkpointing``).

A model marks its blocks, the units that activation checkpointing recomputes and that FSDP shards
one at a time (:mod:`mlcore.fsdp`), in one of two ways:

- ``model.block_classes``: a tuple of ``nn.Module`` subclasses, or a callable ``() -> iterable`` of
  classes (set it on the instance or the class; :func:`mark_blocks` does it);
- Hugging Face ``transformers`` models already carry ``_no_split_modules`` (class names such as
  ``"Dinov2Layer"``), the list ``accelerate`` uses for the same purpose; it is honoured as is.

The blocks are the outermost modules of those classes (a marked block nested in another marked
block is part of the outer one).

Activation checkpointing follows ``torch.utils.checkpoint`` (non-reentrant, Chen et al. 2016,
"Training Deep Nets with Sublinear Memory Cost") through PyTorch's ``checkpoint_wrapper``, the
wrapper FSDP's own documentation and torchtitan use: a block's activations are dropped after its
forward and recomputed in backward. The wrapper keeps ``state_dict`` keys unchanged. The recompute
restores the RNG state (dropout draws the same mask) and, unlike a bare ``checkpoint`` call, also
the block's buffers: BatchNorm's running statistics and ``num_batches_tracked`` are updated once
per forward, not twice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    checkpoint_wrapper,
)

log = logging.getLogger(__name__)

def mark_blocks(model: nn.Module, classes: Iterable[type[nn.Module]]) -> nn.Module:
    """Set ``model.block_classes`` (see the module docstring) and return ``model``."""
    model.block_classes = tuple(classes)  # type: ignore[assignment]
    return model


def block_classes(model: nn.Module) -> tuple[type[nn.Module] | str, ...]:
    """The block classes ``model`` declares: ``block_classes`` (classes, or a callable returning
    them), else Hugging Face's ``_no_split_modules`` (class names); ``()`` if it declares none.

    Raises:
        TypeError: ``block_classes`` holds something that is not an ``nn.Module`` subclass.
    """
    spec = getattr(model, "block_classes", None)
    if spec is not None:
        classes = tuple(spec() if callable(spec) and not isinstance(spec, type) else spec)
        for c in classes:
            if not (isinstance(c, type) and issubclass(c, nn.Module)):
                raise TypeError(f"{type(model).__name__}.block_classes: expected nn.Module subclasses, got {c!r}")
        return classes
    names = getattr(model, "_no_split_modules", None)
    return tuple(names) if names else ()


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The outermost submodules of ``model`` whose class is one of :func:`block_classes` (in
    ``model.modules()`` order); ``[]`` when the model marks no blocks. ``model`` itself never counts."""
    classes = block_classes(model)
    if not classes:
        return []
    types_ = tuple(c for c in classes if isinstance(c, type))
    names = {c for c in classes if isinstance(c, str)}

    def is_block(m: nn.Module) -> bool:
        return isinstance(m, types_) or type(m).__name__ in names

    found: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, CheckpointWrapper):
                found.append(child)
            elif is_block(child):
                found.append(child)
            else:
                walk(child)

    walk(model)
    return found


@contextlib.contextmanager
def _restore_buffers(module: nn.Module) -> Iterator[None]:
    """Run the body, then put every buffer of ``module`` back to its value at entry (in place)."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def _context_fn(module: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    # (forward context, recompute context): the recompute must not update buffers a second time
    return contextlib.nullcontext(), _restore_buffers(module)


def apply_grad_checkpointing(model: nn.Module, blocks: list[nn.Module] | None = None) -> int:
    """Wrap each block of ``model`` (default :func:`find_blocks`) in PyTorch's non-reentrant
    ``checkpoint_wrapper``, in place, and return how many blocks were wrapped.

    Parameters and ``state_dict`` keys are unchanged (the wrapper strips its own prefix). Apply it
    before :func:`mlcore.fsdp.shard_model` (checkpoint inside, FSDP unit outside) and before DDP.

    Raises:
        ValueError: the model marks no blocks (the message says how to mark them).
    """
    blocks = find_blocks(model) if blocks is None else blocks
    if not blocks:
        raise ValueError(f"--grad-checkpointing: {type(model).__name__} marks no blocks; set "
                         "model.block_classes = (BlockClass, ...) (see mlcore.blocks.mark_blocks)")
    targets = {id(b) for b in blocks if not isinstance(b, CheckpointWrapper)}
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in targets:
                wrapped = checkpoint_wrapper(child, checkpoint_impl=CheckpointImpl.NO_REENTRANT,
                                             context_fn=functools.partial(_context_fn, child),
                                             preserve_rng_state=True)
                setattr(parent, name, wrapped)
                count += 1
    log.info("activation checkpointing: %d blocks of %s", count, type(model).__name__)
    return count


__all__ = ["apply_grad_checkpointing", "block_classes", "find_blocks", "mark_blocks"]

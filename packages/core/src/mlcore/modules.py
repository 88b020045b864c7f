"""Helpers on ``nn.Module`` that every domain needs: parameter counts, and frozen parts that stay frozen.

Freezing part of a network (a backbone while the head warms up, the early stages during partial
fine-tuning) takes two things: its parameters get ``requires_grad=False``, and its modules stay in eval
mode, so BatchNorm running statistics, dropout and drop-path do not move although the trainer calls
``model.train()`` every epoch (what timm's and torchvision's fine-tuning recipes do; see e.g.
``timm.utils.model.freeze``). :class:`FrozenPartsModule` keeps the second, :func:`set_frozen_parts` does both.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model``; only ``requires_grad`` ones if ``trainable_only``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class FrozenPartsModule(nn.Module):
    """An ``nn.Module`` whose :attr:`frozen_parts` (submodules) stay in eval mode through :meth:`train`.

    Attributes:
        frozen_parts: the frozen submodules (a plain list, not registered: they are registered where
            they live in the model); set by :func:`set_frozen_parts`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frozen_parts: list[nn.Module] = []

    @property
    def backbone_frozen(self) -> bool:
        """True when the model's ``backbone`` attribute as a whole is frozen (e.g. a head-only warmup)."""
        backbone = getattr(self, "backbone", None)
        return backbone is not None and any(m is backbone for m in self.frozen_parts)

    def train(self, mode: bool = True) -> FrozenPartsModule:
        super().train(mode)
        for part in self.frozen_parts:
            part.eval()
        return self


def set_frozen_parts(model: FrozenPartsModule, parts: Sequence[nn.Module], scope: nn.Module | None = None) -> None:
    """Freeze exactly ``parts`` of ``model``: every parameter of ``scope`` (default ``model``) becomes
    trainable again, then those of ``parts`` get ``requires_grad=False``; ``parts`` become
    ``model.frozen_parts`` and ``model`` is put back in its current train/eval mode, so they are in eval
    mode now and after every ``model.train()``. ``parts=[]`` unfreezes ``scope``.

    Raises:
        TypeError: ``model`` is not a :class:`FrozenPartsModule` (e.g. still wrapped in DDP).
    """
    if not isinstance(model, FrozenPartsModule):
        raise TypeError(f"expected a model built on mlcore.modules.FrozenPartsModule, got {type(model).__name__}")
    for p in (scope if scope is not None else model).parameters():
        p.requires_grad_(True)
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(False)
    model.frozen_parts = list(parts)
    model.train(model.training)

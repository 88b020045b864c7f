"""Estimated training memory of a model on the ``meta`` device (no real allocation, no GPU needed).

Estimate = parameters + gradients + AdamW moments (of the trainable parameters) + the activations
autograd saves for the backward pass, counted with ``torch.autograd.graph.saved_tensors_hooks``
during one forward pass on meta tensors of the real shapes, + a fixed 10% allowance for the
allocator's fragmentation and workspace. It is an estimate, not a measurement: CUDA kernels'
workspaces and the caching allocator's behaviour are not modelled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def saved_activation_bytes(fn: Callable[[], torch.Tensor], params: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves while running ``fn`` (which returns the loss), leaving out
    ``params`` (weights saved for the backward pass are already counted as parameters) and views of
    them; a tensor saved twice is counted once."""
    seen: set[tuple[int, int]] = set()
    skip = {id(p) for p in params}
    total = 0

    def pack(t: torch.Tensor) -> Any:
        nonlocal total
        if id(t) in skip or (t._base is not None and id(t._base) in skip):
            return t
        key = (id(t.untyped_storage()) if t.device.type != "meta" else id(t), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def estimate_training_memory(model: nn.Module, forward_loss: Callable[[nn.Module], torch.Tensor], *,
                             activation_dtype_bytes: int = 2, param_bytes: int = 4) -> dict[str, float]:
    """Estimated training memory in GiB of ``model`` with one micro-batch.

    Args:
        model: built on the ``meta`` device (``with torch.device("meta"): ...``).
        forward_loss: ``f(model) -> loss`` running one training forward pass on meta inputs.
        activation_dtype_bytes: 2 under fp16/bf16 autocast (the GPU presets), 4 in fp32.
        param_bytes: bytes per weight (fp32 master weights: 4).

    Returns:
        ``{"params_gib", "grads_gib", "optimizer_gib", "activations_gib", "total_gib"}``.
    """
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    act = saved_activation_bytes(lambda: forward_loss(model), list(model.parameters()))
    act = act * activation_dtype_bytes / 4  # meta forward runs in fp32
    gib = 1024 ** 3
    out = {"params_gib": n_all * param_bytes / gib, "grads_gib": n_train * param_bytes / gib,
           "optimizer_gib": 2 * n_train * 4 / gib, "activations_gib": act / gib}
    out["total_gib"] = 1.1 * sum(out.values())
    return {k: round(v, 3) for k, v in out.items()}

"""Estimated training memory of a model on the ``meta`` device (no real allocation, no GPU needed).

Estimate = parameters + gradients + AdamW moments (of the trainable parameters) + AdamW's foreach
temporaries (one fp32 copy of the trainable parameters: ``torch._foreach_*`` ops allocate whole-list
results) + an EMA copy of the weights when on + the activations autograd saves for the backward
pass, counted with ``torch.autograd.graph.saved_tensors_hooks`` during one forward pass on meta
tensors of the real shapes + the CUDA context + a fixed 10% allowance for the allocator's
fragmentation and workspace.

It is a **lower bound**, not a measurement: transient tensors that are not saved for backward (the
frozen VAE's encode in the backbone stage, the block recomputed during backward under gradient
checkpointing, attention/conv workspaces) and the caching allocator's behaviour are not modelled.
``bench/videogen_memory.py --device cuda`` measures the real peak.
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


CUDA_CONTEXT_GIB = 0.4  # CUDA context + cuBLAS/cuDNN handles of a PyTorch process (typically 0.3-0.6 GiB)


def estimate_training_memory(model: nn.Module, forward_loss: Callable[[nn.Module], torch.Tensor], *,
                             activation_dtype_bytes: int = 2, param_bytes: int = 4, ema: bool = False,
                             cuda_context_gib: float = 0.0) -> dict[str, float]:
    """Estimated training memory in GiB of ``model`` with one micro-batch.

    Args:
        model: built on the ``meta`` device (``with torch.device("meta"): ...``).
        forward_loss: ``f(model) -> loss`` running one training forward pass on meta inputs.
        activation_dtype_bytes: 2 under fp16/bf16 autocast (the GPU presets), 4 in fp32.
        param_bytes: bytes per weight (fp32 master weights: 4).
        ema: add an EMA copy of every weight and buffer (mlcore's ``--ema-decay``).
        cuda_context_gib: fixed per-process CUDA overhead (:data:`CUDA_CONTEXT_GIB` on a GPU).

    Returns:
        ``{"params_gib", "grads_gib", "optimizer_gib", "optimizer_temporaries_gib", "ema_gib",
        "activations_gib", "cuda_context_gib", "total_gib"}`` (a lower bound, see the module doc).
    """
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    act = saved_activation_bytes(lambda: forward_loss(model), list(model.parameters()))
    act = act * activation_dtype_bytes / 4  # meta forward runs in fp32
    gib = 1024 ** 3
    n_buf = sum(b.numel() for b in model.buffers())
    out = {"params_gib": n_all * param_bytes / gib, "grads_gib": n_train * param_bytes / gib,
           "optimizer_gib": 2 * n_train * 4 / gib, "optimizer_temporaries_gib": n_train * 4 / gib,
           "ema_gib": (n_all + n_buf) * param_bytes / gib if ema else 0.0, "activations_gib": act / gib}
    out["total_gib"] = 1.1 * sum(out.values()) + cuda_context_gib
    out["cuda_context_gib"] = cuda_context_gib
    return {k: round(v, 3) for k, v in out.items()}

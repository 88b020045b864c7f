"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for ``--strategy fsdp``, and meta-device models.

Under ``torchrun`` with ``--strategy fsdp`` every parameter, gradient and optimizer state is split
across the ranks (Zhao et al. 2023, "PyTorch FSDP"; the FSDP2 per-parameter sharding of
``torch.distributed.fsdp.fully_shard`` as in torchtitan). Each block the model marks
(:mod:`mlcore.blocks`) is one FSDP unit, gathered just before its forward and freed after it; the
rest of the model is the root unit. One process (``WORLD_SIZE=1``) trains the plain model.

Backends: NCCL on CUDA; Gloo on CPU, where FSDP2's ``all_gather_into_tensor`` and
``reduce_scatter_tensor`` are available in torch >= 2.6 (checked with 2.15). One thing Gloo/CPU
lacks is DTensor's RNG tracker (``torch.distributed.tensor`` supports random ops on CUDA-like
meshes only), so sharded parameters initialised in place draw identical numbers on every rank.
:func:`materialize_meta` therefore never initialises a shard in place: it initialises each
module's full tensors, one module at a time, and keeps the local shard (``distribute_tensor`` with
``src_data_rank=None``: no communication), which gives the same weights as one process with the
same seed on any backend and world size.

Mixed precision comes from the :class:`~mlcore.devices.DeviceStrategy`: parameters are gathered
in its autocast dtype (bf16/fp16) and gradients reduced in fp32 (``MixedPrecisionPolicy``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from mlcore.blocks import find_blocks
from mlcore.distributed import get_rank, get_world_size, is_distributed

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
"""``--strategy`` values: data-parallel replicas (DDP) or fully sharded (FSDP2)."""


def prepare_model(model: nn.Module, strategy: Any, *, strategy_name: str = "ddp",
                  grad_checkpointing: bool = False) -> tuple[nn.Module, nn.Module | None]:
    """Everything between the domain's model and the training loop except the DDP wrapper.

    In order: activation checkpointing of the marked blocks (``--grad-checkpointing``); then under
    ``torchrun`` with ``--strategy fsdp``: the strategy's device placement (skipped for a ``meta``
    model), :func:`shard_model`, and :func:`materialize_meta` for a ``meta`` model; otherwise
    :func:`materialize_meta` for a ``meta`` model and the strategy's ``prepare_model``.

    Returns:
        ``(model, skeleton)``: the model to train, and under FSDP a :func:`meta_skeleton` to rebuild
        an unsharded copy from (None otherwise).

    Raises:
        ConfigError: ``--grad-checkpointing`` on a model that marks no blocks.
        ValueError: a ``meta`` model with a module that cannot initialise itself.
    """
    from mlcore.blocks import apply_grad_checkpointing
    from mlcore.config import ConfigError

    if grad_checkpointing:
        try:
            apply_grad_checkpointing(model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    meta = has_meta_tensors(model)
    if strategy_name == "fsdp" and is_distributed():
        skeleton = meta_skeleton(model)
        if not meta:
            model = strategy.prepare_model(model)
        shard_model(model, strategy)
        if meta:
            materialize_meta(model, strategy.device)
        return model, skeleton
    if meta:
        materialize_meta(model, strategy.device)
    return strategy.prepare_model(model), None


def _plain(model: nn.Module) -> nn.Module:
    """Strip ``torch.compile``'s wrapper (FSDP2 modules are the model itself)."""
    return getattr(model, "_orig_mod", model)


def is_fsdp(model: nn.Module) -> bool:
    """True when ``model`` (or the module ``torch.compile`` wraps) was sharded by ``fully_shard``."""
    return isinstance(_plain(model), FSDPModule)


def mixed_precision_policy(strategy: Any) -> MixedPrecisionPolicy:
    """FSDP2's policy from a :class:`~mlcore.devices.DeviceStrategy`: parameters gathered in the
    strategy's autocast dtype (None in fp32: no cast), gradients reduced in fp32."""
    dtype = strategy.autocast_dtype
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype is not None else None)


def make_grad_scaler(strategy: Any, model: nn.Module) -> torch.amp.GradScaler:
    """The strategy's scaler, or for fp16 under FSDP ``ShardedGradScaler`` (each rank sees only its
    gradient shard, so the inf/NaN check is all-reduced; disabled outside fp16)."""
    if is_fsdp(model) and strategy.precision == "fp16":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(strategy.kind, enabled=True)
    return strategy.make_scaler()


def has_meta_tensors(model: nn.Module) -> bool:
    """True if any parameter or buffer of ``model`` lives on the ``meta`` device (built under
    ``with torch.device("meta"):`` so that no memory was allocated)."""
    return any(t.is_meta for t in chain(model.parameters(), model.buffers()))


def shard_model(model: nn.Module, strategy: Any, *, blocks: Iterable[nn.Module] | None = None,
                reshard_after_forward: bool = True) -> nn.Module:
    """Apply ``fully_shard`` to each block (default :func:`mlcore.blocks.find_blocks`) and then to
    ``model`` (the root unit), in place, over all ranks of the default process group.

    Works on a model on the strategy's device or on the ``meta`` device (then call
    :func:`materialize_meta`). Returns ``model`` (its class is now also an ``FSDPModule``).

    Raises:
        RuntimeError: no process group is initialised (run under ``torchrun``).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("--strategy fsdp needs a process group: launch with torchrun")
    mesh = init_device_mesh(strategy.device.type, (dist.get_world_size(),))
    mp = mixed_precision_policy(strategy)
    units = list(find_blocks(model) if blocks is None else blocks)
    for block in units:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    log.info("FSDP2: %d block units + root over %d ranks (%s), mixed precision %s", len(units),
             dist.get_world_size(), dist.get_backend(), mp.param_dtype or "off")
    return model


@torch.no_grad()
def materialize_meta(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Allocate a ``meta``-device model on ``device`` and initialise it with each module's own
    ``reset_parameters()`` (PyTorch's default initialisation), modules in ``model.modules()`` order.

    Sharded (FSDP2) parameters are initialised as full tensors one module at a time and only the
    local shard is kept (see the module docstring), so the result equals the same model
    materialised in one process with the same torch seed, whatever the world size.

    Raises:
        ValueError: a module owns parameters or buffers but has no ``reset_parameters()`` (give it
            one, or build that model on a real device).
    """
    model.to_empty(device=device)
    for module in model.modules():
        own = [n for n, t in chain(module._parameters.items(), module._buffers.items()) if t is not None]
        if not own:
            continue
        reset = getattr(module, "reset_parameters", None)
        if not callable(reset):
            raise ValueError(f"meta-device init: {type(module).__name__} owns {', '.join(own)} but has no "
                             "reset_parameters(); add one or build the model on a real device")
        sharded: dict[str, DTensor] = {}
        for name, p in module._parameters.items():
            if isinstance(p, DTensor):
                full = torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device)
                module._parameters[name] = nn.Parameter(full, requires_grad=p.requires_grad)
                sharded[name] = p
        try:
            reset()
        finally:
            for name, p in sharded.items():
                full = module._parameters[name].detach()
                p.to_local().copy_(distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local())
                module._parameters[name] = p
    return model


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are on the ``meta`` device (no memory):
    the structure to rebuild an unsharded model from a gathered state dict. Call before sharding."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def gather_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict on CPU, on rank 0; ``{}`` on other ranks.

    A collective under FSDP: every rank must call it. Keys are the plain module's keys (no FSDP,
    DDP, ``torch.compile`` or activation-checkpoint prefixes).
    """
    if is_fsdp(model):
        return get_model_state_dict(_plain(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if get_rank() != 0:
        return {}
    m = _plain(model)
    m = m.module if isinstance(m, DistributedDataParallel) else m
    return m.state_dict()


def unsharded_copy(model: nn.Module, skeleton: nn.Module, device: torch.device | str = "cpu") -> nn.Module | None:
    """A plain module with ``model``'s full weights on rank 0 (None on other ranks), built from a
    :func:`meta_skeleton`. A collective under FSDP (see :func:`gather_full_state_dict`)."""
    state = gather_full_state_dict(model)
    if get_rank() != 0:
        return None
    plain = copy.deepcopy(skeleton).to_empty(device=device)
    plain.load_state_dict(state)
    return plain


def no_sync(model: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """While ``skip``: accumulate gradients locally without the DDP all-reduce / FSDP
    reduce-scatter (every micro-batch of an accumulation window but the last)."""
    if not skip:
        return contextlib.nullcontext()
    m = _plain(model)
    if isinstance(m, DistributedDataParallel):
        return m.no_sync()
    if isinstance(m, FSDPModule):
        return _fsdp_no_sync(m)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics ...) to every rank.

    FSDP2 does not synchronise buffers (DDP broadcasts rank 0's at every forward); calling this
    before evaluating and saving gives FSDP runs DDP's semantics. No-op outside a process group.
    """
    if not is_distributed():
        return
    for b in _plain(model).buffers():
        dist.broadcast(b, src=0)


def full_value(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` as a plain tensor: a DTensor (e.g. the gradient norm FSDP's clipping returns) is
    gathered with ``full_tensor()``; anything else is returned as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def all_finite(model: nn.Module) -> bool:
    """True if no floating-point parameter or buffer of ``model`` holds NaN/inf, on any rank.

    Checks each rank's local shards (no gathering); the verdict is all-reduced, so every rank gets
    the same answer (a collective inside a process group)."""
    local = [t.to_local() if isinstance(t, DTensor) else t for t in chain(model.parameters(), model.buffers())]
    bad = any(t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()) for t in local)
    if not is_distributed():
        return not bad
    flag = torch.tensor([float(bad)], device=next(iter(local)).device if local else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return not bool(flag.item())


def lockstep(batches: Iterable[Any], enabled: bool, device: torch.device | str = "cpu") -> Iterator[tuple[Any, bool]]:
    """``(batch, real)`` pairs; with ``enabled`` every rank yields the same number of pairs.

    FSDP gathers parameters inside each forward, so under FSDP every rank must run the same number
    of forwards; an evaluation split that does not divide by the world size leaves some ranks
    short. Those replay their last batch with ``real=False`` (the caller ignores its outputs).
    ``device`` holds the count for the all-reduce (the strategy's device: NCCL needs CUDA tensors).

    Raises:
        RuntimeError: a rank has no batch at all while others have some (fewer samples than ranks).
    """
    if not enabled or not is_distributed():
        for b in batches:
            yield b, True
        return
    n = torch.tensor([len(batches)], device=device)  # type: ignore[arg-type]
    most = n.clone()
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    last = None
    for b in batches:
        last = b
        yield b, True
    missing = int(most) - int(n)
    if missing and last is None:
        raise RuntimeError(f"rank {get_rank()} of {get_world_size()} has no evaluation batch while others have "
                           f"{int(most)}: use at least as many evaluation samples as processes")
    for _ in range(missing):
        yield last, False


__all__ = ["STRATEGIES", "all_finite", "full_value", "broadcast_buffers", "prepare_model", "gather_full_state_dict", "has_meta_tensors", "is_fsdp",
           "lockstep", "make_grad_scaler", "materialize_meta", "meta_skeleton", "mixed_precision_policy",
           "no_sync", "shard_model", "unsharded_copy"]

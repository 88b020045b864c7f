"""HybridBackbone: a latent denoiser of transformer blocks (3D RoPE, cross-attention to text)
interleaved with 3D-conv blocks (the seed's ``backbone.py``), trained by flow matching.

Latent ``(B, C, t, h, w)`` -> tokens ``(B, t*h*w, D)``; each transformer block is self-attention
with 3D rotary position embeddings (the head dimension split in three parts rotated by the
frame, row and column index), cross-attention to the text token embeddings, and an MLP, each
modulated by the flow time (adaLN-Zero scale/shift/gate, gates starting at 0); a conv block reshapes the tokens to the
latent grid and applies a residual depthwise 3x3x3 + pointwise conv (local spatio-temporal mixing).
The output is the velocity ``v = noise - x0`` of the rectified-flow path ``x_t = (1 - t) x0 + t noise``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def rope_3d(grid: tuple[int, int, int], head_dim: int, device: torch.device | None = None,
            base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` each ``(t*h*w, head_dim)`` float32 for 3D RoPE over a ``(t, h, w)`` grid.

    The head dimension is split into three even parts (frame, row, column); each part rotates
    pairs of channels by ``position * base^(-2i/part)``, as in RoFormer's 1D RoPE per axis.
    """
    t, h, w = grid
    parts = [head_dim // 3 // 2 * 2] * 3
    parts[0] += head_dim - sum(parts)
    coords = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"),
                         dim=-1).reshape(-1, 3).float().to(device)
    angles = []
    for axis, d in enumerate(parts):
        freqs = base ** (-torch.arange(0, d, 2, device=device).float() / max(d, 1))
        a = coords[:, axis:axis + 1] * freqs[None]
        angles.append(torch.repeat_interleave(a, 2, dim=-1))
    ang = torch.cat(angles, dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, heads, N, head_dim)`` by the per-position angles (pairs of channels)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rot = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return x * cos + rot * sin


class Attention(nn.Module):
    """Multi-head attention (self with RoPE, or cross to a context with a key padding mask)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, n, d = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        attn_mask = mask[:, None, None, :] if mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Self-attention (3D RoPE) + cross-attention to text + MLP, time-modulated.

    Modulation is adaLN-single (PixArt-alpha, Chen et al. 2023): one time projection ``(B, 6*dim)``
    shared by all blocks plus a learned per-block table, instead of a ``dim x 6 dim`` layer per block.
    The residual branches are gated adaLN-Zero style (DiT, Peebles & Xie 2023): ``x + g * f(x)`` with
    the gates ``g`` starting at exactly 0 (zero table, zero time projection) and the ungated
    cross-attention's output projection zero-initialised (as PixArt-alpha does), so every block
    starts as the identity.
    """

    def __init__(self, dim: int, heads: int, text_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.self_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, context_dim=text_dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.table = nn.Parameter(torch.zeros(6, dim))
        nn.init.zeros_(self.cross_attn.out.weight)
        nn.init.zeros_(self.cross_attn.out.bias)

    def forward(self, x, tmod, text, text_mask, rope):
        """``tmod`` ``(B, 6*dim)``: the shared time modulation."""
        s1, b1, g1, s2, b2, g2 = (tmod.view(-1, 6, x.shape[-1]) + self.table).unsqueeze(2).unbind(1)
        x = x + g1 * self.self_attn(self.norm1(x) * (1 + s1) + b1, rope=rope)
        x = x + self.cross_attn(self.norm2(x), context=text, mask=text_mask)
        x = x + g2 * self.mlp(self.norm3(x) * (1 + s2) + b2)
        return x


class ConvBlock(nn.Module):
    """Residual depthwise 3x3x3 + pointwise conv on the latent grid, time-shifted."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(32, dim // 4) or 1, dim)
        self.dw = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.pw1 = nn.Conv3d(dim, 2 * dim, 1)
        self.pw2 = nn.Conv3d(2 * dim, dim, 1)
        self.temb = nn.Linear(dim, dim)
        nn.init.zeros_(self.pw2.weight)  # starts as the identity (like the adaLN-Zero blocks)
        nn.init.zeros_(self.pw2.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        b, n, d = x.shape
        g = x.transpose(1, 2).reshape(b, d, *grid)
        h = self.norm(g) + self.temb(F.silu(temb))[:, :, None, None, None]
        h = self.pw2(F.gelu(self.pw1(self.dw(h))))
        return x + h.reshape(b, d, n).transpose(1, 2)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of flow times ``t`` ``(B,)`` in [0, 1] (scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device).float() / half)
    a = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([a.cos(), a.sin()], dim=-1)


class HybridBackbone(nn.Module):
    """Flow-matching latent denoiser: ``transformer_blocks`` transformer blocks with ``conv_blocks``
    3D-conv blocks spread evenly between them (seed: 30 + 18 at width 768).

    Args:
        latent_channels: VAE latent channels ``C``.
        dim, heads: token width and heads; text_dim: width of the text embeddings (768).
        patch: spatial patch size of the latent tokenizer (1 or 2).
        mlp_ratio: hidden width of the transformer MLPs relative to ``dim``.
        grad_checkpointing: recompute blocks in backward.

    ``forward(x (B, C, t, h, w), t (B,) in [0, 1], text (B, L, text_dim), text_mask (B, L) bool)``
    -> velocity ``(B, C, t, h, w)`` float32.
    """

    def __init__(self, latent_channels: int, dim: int = 768, heads: int = 12, transformer_blocks: int = 30,
                 conv_blocks: int = 18, text_dim: int = 768, patch: int = 1, mlp_ratio: float = 4.0,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.latent_channels, self.dim, self.heads, self.patch = latent_channels, dim, heads, patch
        self.grad_checkpointing = grad_checkpointing
        self.embed = nn.Conv3d(latent_channels, dim, kernel_size=(1, patch, patch), stride=(1, patch, patch))
        self.time_mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_mod = nn.Linear(dim, 6 * dim)  # adaLN-single, shared by every transformer block
        nn.init.zeros_(self.time_mod.weight)
        nn.init.zeros_(self.time_mod.bias)
        self.null_text = nn.Parameter(torch.zeros(1, 1, text_dim))
        self.pooled = nn.Linear(text_dim, dim)
        self.blocks = nn.ModuleList()
        self.kinds: list[str] = []
        # conv blocks placed after evenly spaced transformer blocks
        conv_after = {int(round((i + 1) * transformer_blocks / (conv_blocks + 1))) - 1 for i in range(conv_blocks)} \
            if conv_blocks else set()
        extra = conv_blocks - len(conv_after)
        for i in range(transformer_blocks):
            self.blocks.append(TransformerBlock(dim, heads, text_dim, mlp_ratio))
            self.kinds.append("attn")
            n_conv = (1 if i in conv_after else 0) + (1 if i < extra else 0)
            for _ in range(n_conv):
                self.blocks.append(ConvBlock(dim))
                self.kinds.append("conv")
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False)
        self.ada_out = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.ada_out.bias)
        self.out = nn.Linear(dim, latent_channels * patch * patch)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        b, c, T, H, W = x.shape
        p = self.patch
        if H % p or W % p:
            raise ValueError(f"latent height/width must be divisible by the patch size {p}, got {tuple(x.shape)}")
        grid = (T, H // p, W // p)
        tok = self.embed(x).flatten(2).transpose(1, 2)
        temb = self.time_mlp(timestep_embedding(t, 256))
        if pooled is not None:
            temb = temb + self.pooled(pooled)
        tmod = self.time_mod(F.silu(temb))
        rope = rope_3d(grid, self.dim // self.heads, device=x.device)
        for kind, block in zip(self.kinds, self.blocks, strict=True):
            if kind == "attn":
                args = (tok, tmod, text, text_mask, rope)
                fn = block
            else:
                args = (tok, temb)
                fn = lambda a, e, blk=block: blk(a, e, grid)  # noqa: E731
            if self.grad_checkpointing and self.training:
                tok = checkpoint(fn, *args, use_reentrant=False)
            else:
                tok = fn(*args)
        shift, scale = self.ada_out(F.silu(temb)).unsqueeze(1).chunk(2, dim=-1)
        out = self.out(self.norm_out(tok) * (1 + scale) + shift)
        out = out.view(b, *grid, c, p, p).permute(0, 4, 1, 2, 5, 3, 6)
        return out.reshape(b, c, T, H, W)

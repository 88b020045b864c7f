"""VideoVAE: a 3D-convolutional variational autoencoder for clips (the seed's ``vae.py``).

Encoder: a (1, 2, 2) space-to-depth patchify (lossless, cuts the cost of the full-resolution
stage 4x on CPU), then residual 3D-conv blocks with strided downsampling (spatial by 2 per level,
temporal by 2 on the first two levels: 4x temporal, 8x or 16x spatial overall), temporal
self-attention in the bottleneck (every spatial position attends over the latent frames: motion),
and a 1x1x1 projection to the posterior mean and log-variance of a ``latent_channels``-channel
Gaussian latent. The decoder mirrors it (nearest-neighbour upsampling + convs, depth-to-space).

Loss (:func:`videogen.losses.vae_loss`): reconstruction (L1 or MSE) + beta x KL(q(z|x) || N(0, I)),
plus an optional LPIPS term when LPIPS weights are given as a file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class VAESize:
    """Widths of a :class:`VideoVAE`: ``channels[i]`` is the width of encoder level ``i``."""

    channels: tuple[int, ...]
    blocks_per_level: int
    latent_channels: int
    attn_heads: int
    shortcuts: bool = True


def _groups(c: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


def match_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    """Non-parametric channel change (DC-AE): duplicate each channel (``c`` a multiple of the input's)
    or average consecutive groups (the input's a multiple of ``c``)."""
    cin = x.shape[1]
    if c == cin:
        return x
    if c % cin == 0:
        return x.repeat_interleave(c // cin, dim=1)
    if cin % c == 0:
        return x.unflatten(1, (c, cin // c)).mean(2)
    raise ValueError(f"cannot match {cin} channels to {c} without parameters")


class ResBlock3d(nn.Module):
    """GroupNorm-SiLU-Conv3d x2 with a residual connection; ``(B, C, T, H, W)`` -> ``(B, C_out, T, H, W)``.

    The residual branch's last conv starts at zero; the skip is non-parametric (:func:`match_channels`)
    when the widths divide each other, else a 1x1x1 conv.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cout = cout
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        divides = cin == cout or cout % cin == 0 or cin % cout == 0
        self.skip = None if divides else nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else match_channels(x, self.cout)) + h


class TemporalAttention(nn.Module):
    """Self-attention over the time axis at every spatial position (the bottleneck's motion model).

    ``(B, C, T, H, W)`` -> same shape; residual, pre-norm, learned sinusoid-free (attention is
    permutation invariant, so a learned per-frame position embedding up to ``max_frames`` is added).
    """

    def __init__(self, channels: int, heads: int, max_frames: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.pos = nn.Parameter(torch.zeros(1, max_frames, channels))
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        seq = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
        q = self.norm(seq) + self.pos[:, :t]
        out, _ = self.attn(q, q, q, need_weights=False)
        seq = seq + out
        return seq.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)


class Down(nn.Module):
    """Strided 3D conv: spatial /2 and temporal /2 when ``temporal``; with ``shortcut``, plus the
    non-parametric average-pool shortcut of DC-AE's residual autoencoding (Chen et al. 2024,
    "Deep Compression Autoencoder": space-to-channel then channel averaging = average pooling)."""

    def __init__(self, c: int, temporal: bool, shortcut: bool = True) -> None:
        super().__init__()
        self.stride = (2 if temporal else 1, 2, 2)
        self.conv = nn.Conv3d(c, c, kernel_size=(3, 3, 3), stride=self.stride, padding=1)
        self.shortcut = shortcut
        if shortcut:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + F.avg_pool3d(x, self.stride) if self.shortcut else y


class Up(nn.Module):
    """Nearest-neighbour upsampling (spatial x2, temporal x2 when ``temporal``) + 3D conv; with
    ``shortcut``, plus the upsampled input (DC-AE's channel-to-space shortcut)."""

    def __init__(self, c: int, temporal: bool, shortcut: bool = True) -> None:
        super().__init__()
        self.scale = (2 if temporal else 1, 2, 2)
        self.conv = nn.Conv3d(c, c, 3, padding=1)
        self.shortcut = shortcut
        if shortcut:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        y = self.conv(up)
        return y + up if self.shortcut else y


def _space_to_depth(x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // 2, 2, w // 2, 2).permute(0, 1, 4, 6, 2, 3, 5)
    return x.reshape(b, c * 4, t, h // 2, w // 2)


def _depth_to_space(x: torch.Tensor) -> torch.Tensor:
    b, c4, t, h, w = x.shape
    c = c4 // 4
    x = x.reshape(b, c, 2, 2, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, c, t, h * 2, w * 2)


class VideoVAE(nn.Module):
    """3D-conv VAE with 4x temporal and ``spatial_compression`` (8 or 16) spatial compression.

    Args:
        size: widths (:class:`VAESize`).
        spatial_compression: 8 or 16.
        grad_checkpointing: recompute residual blocks in the backward pass (saves activation memory).

    Shapes: video ``(B, 3, T, H, W)`` float32 in [0, 1] with ``T % 4 == 0`` and
    ``H, W % spatial_compression == 0`` -> latent ``(B, latent_channels, T/4, H/s, W/s)``.

    Raises:
        ValueError: a compression other than 8/16 or too few levels for it; bad input shapes.
    """

    temporal_compression = 4

    def __init__(self, size: VAESize, spatial_compression: int = 8, grad_checkpointing: bool = False) -> None:
        super().__init__()
        if spatial_compression not in (8, 16):
            raise ValueError(f"spatial_compression must be 8 or 16 (got {spatial_compression})")
        levels = {8: 2, 16: 3}[spatial_compression]  # downsamplings after the 2x patchify
        if len(size.channels) < levels + 1:
            raise ValueError(f"VAE size needs {levels + 1} channel levels for {spatial_compression}x")
        if size.shortcuts and size.channels[levels] % size.latent_channels:
            raise ValueError(f"with shortcuts the bottleneck width {size.channels[levels]} must be a multiple of "
                             f"latent_channels {size.latent_channels}")
        if size.shortcuts and size.channels[0] < 12:
            raise ValueError(f"with shortcuts the first width must be >= 12, the 2x2x3 patch channels it tiles "
                             f"(got {size.channels[0]})")
        ch = size.channels[: levels + 1]
        self.size, self.spatial_compression = size, spatial_compression
        self.latent_channels = size.latent_channels
        self.grad_checkpointing = grad_checkpointing
        temporal = [i < 2 for i in range(levels)]
        # encoder
        self.enc_in = nn.Conv3d(12, ch[0], 3, padding=1)
        enc: list[nn.Module] = []
        for i in range(levels + 1):
            cin = ch[max(i - 1, 0)]
            for j in range(size.blocks_per_level):
                enc.append(ResBlock3d(cin if j == 0 else ch[i], ch[i]))
            if i < levels:
                enc.append(Down(ch[i], temporal[i], size.shortcuts))
        self.encoder = nn.ModuleList(enc)
        self.enc_attn = TemporalAttention(ch[-1], size.attn_heads)
        self.enc_norm = nn.GroupNorm(_groups(ch[-1]), ch[-1])
        self.to_moments = nn.Conv3d(ch[-1], 2 * size.latent_channels, 1)
        # decoder
        self.from_latent = nn.Conv3d(size.latent_channels, ch[-1], 3, padding=1)
        self.dec_attn = TemporalAttention(ch[-1], size.attn_heads)
        dec: list[nn.Module] = []
        for i in reversed(range(levels + 1)):
            for j in range(size.blocks_per_level):
                dec.append(ResBlock3d(ch[min(i + 1, levels)] if j == 0 else ch[i], ch[i]))
            if i > 0:
                dec.append(Up(ch[i], temporal[i - 1], size.shortcuts))
        self.decoder = nn.ModuleList(dec)
        self.dec_norm = nn.GroupNorm(_groups(ch[0]), ch[0])
        self.dec_out = nn.Conv3d(ch[0], 12, 3, padding=1)
        if size.shortcuts:
            # start as "average-pool down, nearest up" (DC-AE shortcuts) with every learned branch at 0;
            # the posterior starts narrow (std e^-3) so early samples are not drowned in noise
            for conv in (self.enc_in, self.dec_out, self.from_latent):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            nn.init.zeros_(self.to_moments.weight)
            nn.init.zeros_(self.to_moments.bias)
            with torch.no_grad():
                self.to_moments.bias[size.latent_channels:] = -6.0

        # per-channel statistics of the posterior means over the training set (set by videogen-train
        # after each VAE phase; identity until then), saved in every checkpoint with the weights
        self.register_buffer("latent_mean", torch.zeros(size.latent_channels))
        self.register_buffer("latent_std", torch.ones(size.latent_channels))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # checkpoints written before the latent statistics existed: identity statistics
        for name, fill in (("latent_mean", 0.0), ("latent_std", 1.0)):
            state_dict.setdefault(prefix + name, torch.full((self.latent_channels,), fill))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def has_latent_stats(self) -> bool:
        """Whether :meth:`set_latent_stats` ran (statistics other than the identity 0 / 1)."""
        if self.latent_std.device.type == "meta":
            return False
        return bool((self.latent_mean != 0).any() or (self.latent_std != 1).any())

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store per-channel ``mean`` and ``std`` ``(C_lat,)`` of the posterior means (see
        :func:`videogen.train.latent_statistics`)."""
        with torch.no_grad():
            self.latent_mean.copy_(mean.reshape(-1))
            self.latent_std.copy_(std.reshape(-1).clamp(min=1e-6))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """``(z - mean) / std`` per channel: the unit-scale latents the backbone works on
        (``z`` ``(B, C_lat, t, h, w)``), as current latent video models do (e.g. Wan, HunyuanVideo)."""
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return (z - self.latent_mean.view(shape).to(z.dtype)) / self.latent_std.view(shape).to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return z * self.latent_std.view(shape).to(z.dtype) + self.latent_mean.view(shape).to(z.dtype)

    def _run(self, layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            if self.grad_checkpointing and self.training and isinstance(layer, ResBlock3d):
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x

    def check_input(self, video: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``video`` is ``(B, 3, T, H, W)`` with T % 4 == 0 and H, W
        divisible by the spatial compression."""
        s = self.spatial_compression
        if video.dim() != 5 or video.shape[1] != 3 or video.shape[2] % 4 or video.shape[3] % s or video.shape[4] % s:
            raise ValueError(f"VideoVAE expects (B, 3, T, H, W) with T % 4 == 0 and H, W % {s} == 0, "
                             f"got {tuple(video.shape)}")

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, logvar)``, each ``(B, C_lat, T/4, H/s, W/s)`` float32; ``video`` in [0, 1]."""
        self.check_input(video)
        x = _space_to_depth(video * 2 - 1)
        if self.size.shortcuts:  # tile the 12 patch channels up to the first width (non-parametric)
            c0 = self.enc_in.out_channels
            x = self.enc_in(x) + x.repeat(1, -(-c0 // 12), 1, 1, 1)[:, :c0]
        else:
            x = self.enc_in(x)
        x = self._run(self.encoder, x)
        x = self.enc_attn(x)
        mean, logvar = self.to_moments(F.silu(self.enc_norm(x))).chunk(2, dim=1)
        if self.size.shortcuts:  # DC-AE shortcut: channel averaging down to the latent channels
            mean = mean + match_channels(x, self.latent_channels)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, C_lat, t, h, w)`` -> video ``(B, 3, 4t, s*h, s*w)`` (unclamped, ~[0, 1])."""
        x = self.from_latent(z)
        if self.size.shortcuts:  # DC-AE shortcut: channel duplication up to the decoder width
            x = x + match_channels(z, x.shape[1])
        x = self.dec_attn(x)
        x = self._run(self.decoder, x)
        if self.size.shortcuts:  # inverse of the encoder's tiling: average the copies of each channel
            c0 = x.shape[1]
            k = c0 // 12
            x = self.dec_out(F.silu(self.dec_norm(x))) + x[:, : 12 * k].unflatten(1, (k, 12)).mean(1)
        else:
            x = self.dec_out(F.silu(self.dec_norm(x)))
        return (_depth_to_space(x) + 1) / 2

    def forward(self, video: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        """``{"recon": (B, 3, T, H, W), "mean", "logvar", "z"}``; ``z`` is sampled when ``sample`` and
        training, else the posterior mean."""
        mean, logvar = self.encode(video)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if (sample and self.training) else mean
        return {"recon": self.decode(z), "mean": mean, "logvar": logvar, "z": z}

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C_lat, T/4, H/s, W/s)`` for a clip of the given size."""
        s = self.spatial_compression
        return (self.latent_channels, num_frames // 4, height // s, width // s)

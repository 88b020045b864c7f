"""videogen models: :class:`VideoVAE`, :class:`MultilingualTextEncoder`, :class:`HybridBackbone`, and
:class:`TextToVideo` (frozen VAE + text encoder + backbone, the model of the backbone stage).

Two sizes (``--model-size``): ``tiny`` for CPU runs and tests, ``gtx1070`` with the seed's sizes
(VAE ~120M with a 256-channel latent at 16x spatial compression, text encoder ~85M with 768-d
embeddings, backbone ~280M with 30 transformer + 18 conv blocks at width 768).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlcore.modules import count_parameters
from videogen.models.backbone import HybridBackbone
from videogen.models.text_encoder import ByteTokenizer, MultilingualTextEncoder, PretrainedTextEncoder
from videogen.models.vae import VAESize, VideoVAE

MODEL_SIZES = ("tiny", "gtx1070")


@dataclass(frozen=True)
class ModelSize:
    """All widths of one ``--model-size``."""

    vae: VAESize
    spatial_compression: int
    text_width: int
    text_layers: int
    text_heads: int
    dim: int
    heads: int
    transformer_blocks: int
    conv_blocks: int
    patch: int
    mlp_ratio: float = 4.0


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(vae=VAESize(channels=(16, 32, 64, 128), blocks_per_level=1, latent_channels=4, attn_heads=4),
                      spatial_compression=8, text_width=128, text_layers=2, text_heads=4,
                      dim=128, heads=4, transformer_blocks=4, conv_blocks=2, patch=1),
    "gtx1070": ModelSize(vae=VAESize(channels=(96, 192, 384, 512), blocks_per_level=2, latent_channels=256,
                                     attn_heads=8),
                         spatial_compression=16, text_width=768, text_layers=12, text_heads=12,
                         dim=768, heads=12, transformer_blocks=30, conv_blocks=18, patch=1, mlp_ratio=3.0),
}


def model_size(name: str, latent_channels: int | None = None, spatial_compression: int | None = None) -> ModelSize:
    """The :class:`ModelSize` ``name`` with optional latent-channel / compression overrides.

    Raises:
        ValueError: unknown size name.
    """
    if name not in SIZES:
        raise ValueError(f"--model-size must be one of {', '.join(SIZES)} (got {name!r})")
    s = SIZES[name]
    vae = s.vae if latent_channels is None else VAESize(s.vae.channels, s.vae.blocks_per_level, latent_channels,
                                                        s.vae.attn_heads)
    from dataclasses import replace
    return replace(s, vae=vae, spatial_compression=spatial_compression or s.spatial_compression)


def build_vae(size: ModelSize, grad_checkpointing: bool = False) -> VideoVAE:
    """A :class:`VideoVAE` of ``size``."""
    return VideoVAE(size.vae, size.spatial_compression, grad_checkpointing=grad_checkpointing)


class TextToVideo(nn.Module):
    """Frozen VAE + trainable text encoder and backbone: the model of ``--stage backbone``.

    The VAE's parameters have ``requires_grad=False`` and it stays in eval mode, so the optimizer
    (which takes trainable parameters only) never updates it; it is kept inside the module so a
    checkpoint is self-contained for ``videogen-generate``. The backbone works on the VAE's
    per-channel normalised latents (:meth:`VideoVAE.normalize`, statistics stored with the VAE).
    ``text_encoder`` is the trainable byte-level :class:`MultilingualTextEncoder` or a frozen
    :class:`PretrainedTextEncoder`.
    """

    def __init__(self, vae: VideoVAE, text_encoder: MultilingualTextEncoder | PretrainedTextEncoder,
                 backbone: HybridBackbone) -> None:
        super().__init__()
        self.vae, self.text_encoder, self.backbone = vae, text_encoder, backbone
        self.vae.requires_grad_(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # backbone checkpoints from before the per-channel statistics kept one global 1/std scale
        scale = state_dict.pop(prefix + "latent_scale", None)
        if scale is not None and prefix + "vae.latent_std" not in state_dict:
            c = self.vae.latent_channels
            state_dict[prefix + "vae.latent_mean"] = torch.zeros(c)
            state_dict[prefix + "vae.latent_std"] = torch.full((c,), 1.0 / float(scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True) -> TextToVideo:
        super().train(mode)
        self.vae.eval()
        return self

    def encode_text(self, captions: Sequence[str], drop: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens (B, L, 768), mask (B, L) bool, pooled (B, 768))``; samples where ``drop`` is True
        get the learned null text (classifier-free guidance's unconditional branch)."""
        tokens, pooled, mask = self.text_encoder.encode_text(list(captions), self.backbone.null_text.device)
        if drop is not None:  # always in the graph (also when nothing is dropped), so DDP sees null_text used
            null = self.backbone.null_text.to(tokens.dtype)
            d = drop.to(tokens.device)
            tokens = torch.where(d[:, None, None], null.expand_as(tokens), tokens)
            first = torch.zeros_like(mask)
            first[:, 0] = True
            mask = torch.where(d[:, None], first, mask)
            pooled = torch.where(d[:, None], torch.zeros_like(pooled), pooled)
        return tokens, mask, pooled

    def null_text(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The unconditional text ``(tokens (B, 1, 768), mask (B, 1), pooled (B, 768) zeros)``."""
        dev = self.backbone.null_text.device
        return (self.backbone.null_text.expand(batch, 1, -1), torch.ones(batch, 1, dtype=torch.bool, device=dev),
                torch.zeros(batch, self.backbone.null_text.shape[-1], device=dev))

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised posterior-mean latents ``(B, C, T/4, H/s, W/s)`` of ``video`` ``(B, 3, T, H, W)`` in
        [0, 1] (per channel ``(z - mean) / std``, :meth:`VideoVAE.normalize`)."""
        mean, _ = self.vae.encode(video)
        return self.vae.normalize(mean)

    @torch.no_grad()
    def decode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Video ``(B, 3, T, H, W)`` (unclamped) of normalised latents ``x`` (inverse of :meth:`encode_video`)."""
        return self.vae.decode(self.vae.denormalize(x))

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None, *,
                captions: Sequence[str] | None = None, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity ``(B, C, t, h, w)`` of the backbone (see :class:`HybridBackbone`) for latents ``x`` at
        flow times ``t`` ``(B,)``, given encoded text (``text``, ``mask``, ``pooled``) or raw ``captions``
        (encoded here, with ``drop`` as in :meth:`encode_text`, so that under DDP the text encoder's
        gradients are synchronised with the backbone's).

        Raises:
            ValueError: neither ``text`` nor ``captions`` given.
        """
        if captions is not None:
            text, mask, pooled = self.encode_text(captions, drop)
        if text is None or mask is None:
            raise ValueError("TextToVideo.forward needs text embeddings or captions")
        return self.backbone(x, t, text, mask, pooled)


def build_text_to_video(size: ModelSize, vae: VideoVAE, grad_checkpointing: bool = False,
                        text_encoder: str | None = None) -> TextToVideo:
    """A :class:`TextToVideo` of ``size`` around an (already trained) ``vae``; ``text_encoder``: a
    ``transformers`` folder for a frozen :class:`PretrainedTextEncoder` (None: the byte-level one).

    Raises:
        ValueError: ``text_encoder`` cannot be loaded.
    """
    text: MultilingualTextEncoder | PretrainedTextEncoder
    if text_encoder:
        text = PretrainedTextEncoder(text_encoder)
    else:
        text = MultilingualTextEncoder(width=size.text_width, layers=size.text_layers, heads=size.text_heads)
    backbone = HybridBackbone(vae.latent_channels, dim=size.dim, heads=size.heads, text_dim=text.embed_dim,
                              transformer_blocks=size.transformer_blocks, conv_blocks=size.conv_blocks,
                              patch=size.patch, mlp_ratio=size.mlp_ratio, grad_checkpointing=grad_checkpointing)
    return TextToVideo(vae, text, backbone)




__all__ = ["MODEL_SIZES", "SIZES", "ByteTokenizer", "HybridBackbone", "ModelSize", "MultilingualTextEncoder",
           "PretrainedTextEncoder", "TextToVideo", "VAESize", "VideoVAE", "build_text_to_video", "build_vae", "count_parameters", "model_size"]

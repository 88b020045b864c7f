"""Training losses: the VAE's reconstruction + beta x KL (+ LPIPS), and rectified-flow matching."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over latent elements, averaged over the batch
    and divided by the number of latent elements per sample (nats per latent value), scalar float32.

    Closed form (Kingma & Welling 2014): ``0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)``.
    """
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float())
    return kl.mean()


def vae_loss(recon: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, *,
             kl_weight: float = 1e-6, kind: str = "l1",
             lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             lpips_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """``{"loss", "recon", "kl", "lpips"?}`` scalars for one batch.

    The weighting is SD-VAE's (Rombach et al. 2022, ``ldm/modules/losses/contperceptual.py``:
    ``sum_pixels(rec) / B + kl_weight * sum_latent(KL) / B``, ``kl_weight = 1e-6``) divided by the
    constant number of pixel values per clip ``P = 3 T H W``::

        loss = mean_pixels(rec) + kl_weight * sum_latent(KL) / (B * P)  [+ lpips_weight * mean(LPIPS)]

    so the same ``kl_weight`` means the same trade-off as in SD-VAE whatever the compression (a KL
    averaged per latent value instead would be ``P / L`` times stronger for ``L`` latent values
    per clip: 192x for the tiny VAE, 48x for SD's f8c4). LPIPS is added per pixel as in SD-VAE.

    Args:
        recon, target: ``(B, 3, T, H, W)`` float in [0, 1].
        mean, logvar: the posterior, ``(B, C, t, h, w)``.
        kl_weight: KL weight in SD-VAE's convention (above).
        kind: ``"l1"`` or ``"mse"``.
        lpips: optional ``f(a, b) -> (N,)`` perceptual distance on ``(N, 3, H, W)`` images in [-1, 1]
            (frames of the clips); used when ``lpips_weight > 0``.

    Returns:
        ``loss`` (what is optimised), ``recon`` (mean per pixel value), ``kl`` (nats per latent value,
        :func:`kl_divergence`), ``lpips`` (mean over frames) when used; all scalar float32.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "l1":
        rec = (recon.float() - target.float()).abs().mean()
    elif kind == "mse":
        rec = F.mse_loss(recon.float(), target.float())
    else:
        raise ValueError(f"--recon-loss must be l1 or mse (got {kind!r})")
    kl = kl_divergence(mean, logvar)  # per latent value
    latent_per_clip = mean[0].numel()
    pixels_per_clip = target[0].numel()
    out = {"recon": rec.detach(), "kl": kl.detach()}
    loss = rec + kl_weight * kl * (latent_per_clip / pixels_per_clip)
    if lpips is not None and lpips_weight > 0:
        frames_r = recon.transpose(1, 2).flatten(0, 1) * 2 - 1
        frames_t = target.transpose(1, 2).flatten(0, 1) * 2 - 1
        p = lpips(frames_r.float(), frames_t.float()).mean()
        loss = loss + lpips_weight * p
        out["lpips"] = p.detach()
    out["loss"] = loss
    return out


def sample_flow_times(batch: int, *, kind: str = "logit_normal", mean: float = 0.0, std: float = 1.0,
                      shift: float = 1.0, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Flow times ``t`` ``(batch,)`` float32 in (0, 1) for training (``t = 1`` is noise).

    ``kind="logit_normal"``: ``t = sigmoid(mean + std * n)``, ``n ~ N(0, 1)`` (Esser et al. 2024, SD3,
    "rectified flow with logit-normal sampling": more weight on the middle times); ``"uniform"``:
    ``t ~ U(0, 1)``. Then the SD3 resolution shift ``t' = shift * t / (1 + (shift - 1) * t)`` (``shift``
    > 1 moves mass towards noise, for latents with more values). Drawn on the CPU from ``generator``
    (or the global RNG) and moved to ``device``.

    Raises:
        ValueError: unknown ``kind`` or ``shift <= 0``.
    """
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0 (got {shift})")
    if kind == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(batch, generator=generator))
    elif kind == "uniform":
        t = torch.rand(batch, generator=generator)
    else:
        raise ValueError(f"--timestep-sampling must be logit_normal or uniform (got {kind!r})")
    t = shift * t / (1 + (shift - 1) * t)
    return t.to(device) if device is not None else t


def flow_matching_pair(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow (Liu et al. 2022; Lipman et al. 2022): ``x_t = (1 - t) x0 + t noise`` and its
    velocity target ``noise - x0``. ``x0`` ``(B, ...)``, ``t`` ``(B,)`` in [0, 1]."""
    noise = torch.randn_like(x0) if noise is None else noise
    tt = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - tt) * x0 + tt * noise, noise - x0


def flow_matching_loss(pred_velocity: torch.Tensor, target_velocity: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and target velocities, scalar float32."""
    return F.mse_loss(pred_velocity.float(), target_velocity.float())


def flow_matching_per_sample(pred_velocity: torch.Tensor, target_velocity: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample ``(B,)`` float32 (for the per-timestep-bucket losses)."""
    return (pred_velocity.float() - target_velocity.float()).pow(2).flatten(1).mean(1)

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
             beta: float = 1e-4, kind: str = "l1", lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             lpips_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """``{"loss", "recon", "kl", "lpips"?}`` scalars for one batch.

    Args:
        recon, target: ``(B, 3, T, H, W)`` float in [0, 1].
        mean, logvar: the posterior, ``(B, C, t, h, w)``.
        beta: KL weight (per latent value, relative to the per-pixel reconstruction mean).
        kind: ``"l1"`` or ``"mse"``.
        lpips: optional ``f(a, b) -> (N,)`` perceptual distance on ``(N, 3, H, W)`` images in [-1, 1]
            (frames of the clips); used when ``lpips_weight > 0``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "l1":
        rec = (recon.float() - target.float()).abs().mean()
    elif kind == "mse":
        rec = F.mse_loss(recon.float(), target.float())
    else:
        raise ValueError(f"--recon-loss must be l1 or mse (got {kind!r})")
    kl = kl_divergence(mean, logvar)
    out = {"recon": rec.detach(), "kl": kl.detach()}
    loss = rec + beta * kl
    if lpips is not None and lpips_weight > 0:
        frames_r = recon.transpose(1, 2).flatten(0, 1) * 2 - 1
        frames_t = target.transpose(1, 2).flatten(0, 1) * 2 - 1
        p = lpips(frames_r.float(), frames_t.float()).mean()
        loss = loss + lpips_weight * p
        out["lpips"] = p.detach()
    out["loss"] = loss
    return out


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

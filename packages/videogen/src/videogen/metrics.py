"""Reconstruction metrics (PSNR, SSIM, PSNR of trilinear resampling at the same number of latent
values) and the Frechet distance behind FVD.

PSNR and SSIM are torchmetrics' functional implementations, computed per frame on ``[0, 1]``
images; FVD follows Unterthiner et al. 2019 (Frechet distance between Gaussians fitted to I3D
features of real and generated 16-frame clips); the I3D network must be given as a TorchScript
file (no download here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from mlcore.metrics import Metric


def _frames(video: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)`` -> ``(B*T, 3, H, W)``."""
    return video.transpose(1, 2).flatten(0, 1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each clip, ``(B,)`` float64: ``10 log10(1 / MSE)`` over all of a clip's values
    (data range 1; ``pred`` clamped to [0, 1]). Clips ``(B, 3, T, H, W)``."""
    return torch.stack([peak_signal_noise_ratio(p.clamp(0, 1).double(), t.double(), data_range=1.0)
                        for p, t in zip(pred, target, strict=True)])


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the frames of each clip, ``(B,)`` float64 (torchmetrics, 11x11 Gaussian,
    data range 1). Clips ``(B, 3, T, H, W)`` in [0, 1]."""
    return torch.stack([structural_similarity_index_measure(_frames(p[None]).clamp(0, 1).double(),
                                                            _frames(t[None]).double(), data_range=1.0)
                        for p, t in zip(pred, target, strict=True)])


def trilinear_size(shape: tuple[int, int, int], latent_values: int, channels: int = 3,
                   temporal_factor: int = 4) -> tuple[int, int, int]:
    """The ``(t, h, w)`` grid whose ``channels * t * h * w`` is as close as possible to
    ``latent_values`` for a clip of ``shape = (T, H, W)``: time is divided by ``temporal_factor``
    (as in the VAE) and both spatial sides by the same factor chosen to match the count."""
    T, H, W = shape
    t = max(1, T // temporal_factor)
    per_frame = latent_values / (channels * t)
    s = math.sqrt(H * W / max(per_frame, 1e-9))
    best = None
    for h in range(max(1, int(H / s) - 1), int(H / s) + 3):
        w = max(1, round(h * W / H))
        err = abs(channels * t * h * w - latent_values)
        if best is None or err < best[0]:
            best = (err, (t, h, w))
    return best[1]  # type: ignore[index]


def trilinear_baseline(video: torch.Tensor, latent_values: int, temporal_factor: int = 4,
                       down: str = "trilinear") -> torch.Tensor:
    """Resample ``video`` ``(B, 3, T, H, W)`` down to :func:`trilinear_size` and back up with trilinear
    interpolation: the reference a learned VAE must beat at the same number of values.

    ``down="trilinear"`` samples the small grid trilinearly (the issue's definition);
    ``down="area"`` averages each cell instead (an antialiased, stronger baseline, reported beside it).
    """
    T, H, W = video.shape[2:]
    size = trilinear_size((T, H, W), latent_values, video.shape[1], temporal_factor)
    if down == "area":
        small = F.interpolate(video.float(), size=size, mode="area")
    else:
        small = F.interpolate(video.float(), size=size, mode="trilinear", align_corners=False)
    return F.interpolate(small, size=(T, H, W), mode="trilinear", align_corners=False).clamp(0, 1)


def psnr_trilinear(video: torch.Tensor, latent_values: int, temporal_factor: int = 4,
                   down: str = "trilinear") -> torch.Tensor:
    """PSNR (dB, ``(B,)``) of :func:`trilinear_baseline` against ``video``."""
    return psnr(trilinear_baseline(video, latent_values, temporal_factor, down), video)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (Dowson & Landau 1982; as in FID/FVD).

    Adds ``eps * I`` to both covariances when their product's square root is singular; drops the
    tiny imaginary part ``sqrtm`` may return.

    Raises:
        ValueError: shapes do not match, or the imaginary part is not negligible.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shapes differ (mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape})")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased) of ``features`` ``(N, D)``.

    Raises:
        ValueError: fewer than 2 samples.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def fvd(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """FVD from I3D features ``(N, D)`` of real and generated clips."""
    return frechet_distance(*gaussian_stats(real_features), *gaussian_stats(fake_features))


class ReconstructionMetrics(Metric):
    """Sums of per-clip PSNR, SSIM and trilinear-baseline PSNR over a split.

    ``update(outputs, batch)`` reads ``outputs["recon_video"]`` ``(B, 3, T, H, W)``, ``outputs["z"]`` (for the
    latent value count) and ``batch["video"]``. ``compute()`` -> ``{"psnr", "ssim", "psnr_trilinear",
    "psnr_area_trilinear", "psnr_gain"}`` (dB, mean over clips; gain = psnr - psnr_trilinear).
    """

    def __init__(self, with_ssim: bool = True) -> None:
        super().__init__()
        self.with_ssim = with_ssim
        for name in ("psnr_sum", "ssim_sum", "tri_sum", "area_sum", "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64))

    def update(self, outputs: Mapping[str, Any], batch: Any) -> None:
        video = batch["video"].float()
        recon = outputs["recon_video"].float()
        latent_values = int(outputs["z"][0].numel())
        self.psnr_sum += psnr(recon, video).sum().cpu().to(self.psnr_sum.device)
        if self.with_ssim:
            self.ssim_sum += ssim(recon, video).sum().cpu().to(self.ssim_sum.device)
        self.tri_sum += psnr_trilinear(video, latent_values).sum().cpu().to(self.tri_sum.device)
        self.area_sum += psnr_trilinear(video, latent_values, down="area").sum().cpu().to(self.area_sum.device)
        self.count += video.shape[0]

    def compute(self) -> dict[str, float]:
        n = max(float(self.count), 1.0)
        out = {"psnr": float(self.psnr_sum) / n, "psnr_trilinear": float(self.tri_sum) / n,
               "psnr_area_trilinear": float(self.area_sum) / n}
        out["psnr_gain"] = out["psnr"] - out["psnr_trilinear"]
        if self.with_ssim:
            out["ssim"] = float(self.ssim_sum) / n
        return out

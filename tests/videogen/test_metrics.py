"""Frechet distance against reference computations, PSNR/SSIM/trilinear baseline, losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from videogen.losses import flow_matching_pair, kl_divergence, sample_flow_times, vae_loss
from videogen.metrics import (
    ReconstructionMetrics,
    frechet_distance,
    fvd,
    gaussian_stats,
    psnr,
    psnr_trilinear,
    ssim,
    trilinear_baseline,
    trilinear_size,
)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 2, size=6), rng.uniform(0.1, 2, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_a_scipy_sqrtm_reference_on_random_gaussians():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    # reference: tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), the symmetric form of the same trace
    r1 = linalg.sqrtm(s1).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(r1 @ s2 @ r1).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-7)
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(mu1, s1, mu2[:4], s2[:4, :4])


def test_fvd_from_features_is_zero_for_identical_sets_and_grows_with_a_shift():
    feats = np.random.default_rng(2).normal(size=(64, 8))
    assert fvd(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert fvd(feats, feats + 1.0) == pytest.approx(8.0, rel=1e-6)  # |shift|^2 = 8 * 1^2
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(feats[:1])


def test_psnr_and_ssim_closed_forms():
    target = torch.full((2, 3, 4, 16, 16), 0.5)
    pred = target + 0.1  # MSE 0.01 -> 20 dB
    assert torch.allclose(psnr(pred, target), torch.tensor([20.0, 20.0], dtype=torch.float64), atol=1e-6)
    x = torch.rand(1, 3, 4, 32, 32)
    assert float(ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(1 - x, x)[0]) < 0.5


def test_trilinear_baseline_uses_the_latent_value_count():
    # tiny VAE: 4 channels x (16/4) x (64/8) x (64/8) = 1024 values; RGB at T/4 frames -> ~9x9 px
    t, h, w = trilinear_size((16, 64, 64), 4 * 4 * 8 * 8)
    assert t == 4 and abs(3 * t * h * w - 1024) <= 3 * t * (h + w)
    assert (h, w) == (9, 9)
    smooth = torch.linspace(0, 1, 64).view(1, 1, 1, 1, 64).expand(1, 3, 16, 64, 64).contiguous()
    assert float(psnr_trilinear(smooth, 1024)[0]) > 35  # a linear ramp survives (edges aside)
    noise = torch.rand(1, 3, 16, 64, 64)
    assert float(psnr_trilinear(noise, 1024)[0]) < 12
    assert trilinear_baseline(noise, 1024, down="area").shape == noise.shape


def test_reconstruction_metric_sums_over_clips_and_uses_the_latent_count_for_the_baselines():
    m = ReconstructionMetrics(with_ssim=False)
    video = torch.full((2, 3, 4, 16, 16), 0.5)
    m.update({"recon_video": video + 0.1, "z": torch.zeros(2, 4, 1, 2, 2)}, {"video": video})
    m.update({"recon_video": video + 0.01, "z": torch.zeros(2, 4, 1, 2, 2)}, {"video": video})
    out = m.compute()
    assert out["psnr"] == pytest.approx((20.0 + 40.0) / 2, abs=1e-5)
    # the baselines: 16 latent values -> a (1, h, w) RGB grid of ~16 values, resampled back up
    rng = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 3, 4, 16, 16, generator=rng)
    m = ReconstructionMetrics(with_ssim=False)
    m.update({"recon_video": clip * 0.9, "z": torch.zeros(1, 4, 1, 2, 2)}, {"video": clip})
    out = m.compute()
    interp = torch.nn.functional.interpolate
    t, h, w = trilinear_size((4, 16, 16), 16)
    for key, mode in (("psnr_trilinear", "trilinear"), ("psnr_area_trilinear", "area")):
        small = interp(clip, size=(t, h, w), mode=mode)
        up = interp(small, size=(4, 16, 16), mode="trilinear").clamp(0, 1)
        assert out[key] == pytest.approx(10 * math.log10(1 / float(((up - clip) ** 2).mean())), abs=1e-4), key
    assert out["psnr"] == pytest.approx(10 * math.log10(1 / float(((clip * 0.1) ** 2).mean())), abs=1e-4)


def test_kl_closed_form_and_vae_loss_is_sd_vae_s_objective_over_the_pixel_count():
    mean, logvar = torch.zeros(2, 4, 1, 2, 2), torch.zeros(2, 4, 1, 2, 2)
    assert float(kl_divergence(mean, logvar)) == pytest.approx(0.0)
    mean = torch.ones_like(mean)
    logvar = torch.full_like(logvar, math.log(4.0))
    expected = 0.5 * (1 + 4 - 1 - math.log(4.0))
    assert float(kl_divergence(mean, logvar)) == pytest.approx(expected, rel=1e-6)
    target = torch.rand(2, 3, 4, 8, 8)
    recon = target + 0.25
    out = vae_loss(recon, target, mean, logvar, kl_weight=1e-2, kind="l1")
    # SD-VAE (ldm/modules/losses/contperceptual.py): sum_pixels |x - x'| / B + w * sum_latent KL / B
    sd = (recon - target).abs().sum() / 2 + 1e-2 * (0.5 * (mean**2 + logvar.exp() - 1 - logvar)).sum() / 2
    pixels_per_clip = 3 * 4 * 8 * 8
    assert float(out["loss"]) * pixels_per_clip == pytest.approx(float(sd), rel=1e-5)
    assert float(out["recon"]) == pytest.approx(0.25, rel=1e-5) and float(out["kl"]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="--recon-loss"):
        vae_loss(target, target, mean, logvar, kind="huber")


def test_flow_times_logit_normal_with_shift():
    g = torch.Generator().manual_seed(0)
    t = sample_flow_times(200_000, kind="logit_normal", mean=0.5, std=0.8, generator=g)
    logit = torch.log(t / (1 - t))
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.01) and float(logit.std()) == pytest.approx(0.8, abs=0.01)
    # the SD3 shift maps the median 0.5 to s / (1 + s) and keeps (0, 1)
    ts = sample_flow_times(200_000, kind="logit_normal", shift=3.0, generator=g)
    assert float(ts.median()) == pytest.approx(3 / 4, abs=0.01) and 0 < float(ts.min()) and float(ts.max()) < 1
    u = sample_flow_times(200_000, kind="uniform", generator=g)
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01)
    assert float((u < 0.25).float().mean()) == pytest.approx(0.25, abs=0.01)
    with pytest.raises(ValueError, match="--timestep-sampling"):
        sample_flow_times(2, kind="cosine")


def test_flow_matching_path_endpoints_and_velocity():
    x0, noise = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    xt, v = flow_matching_pair(x0, torch.tensor([0.0, 1.0, 0.25]), noise)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[1], noise[1])
    assert torch.allclose(xt[2], 0.75 * x0[2] + 0.25 * noise[2])
    assert torch.allclose(v, noise - x0)


def test_vae_loss_adds_the_perceptual_term_when_given():
    target = torch.zeros(1, 3, 4, 8, 8)
    mean = logvar = torch.zeros(1, 4, 1, 1, 1)

    def fake_lpips(a, b):  # (N, 3, H, W) in [-1, 1] -> (N,)
        assert a.shape == (4, 3, 8, 8) and float(a.min()) >= -1
        return (a - b).abs().mean(dim=(1, 2, 3))

    out = vae_loss(target + 0.5, target, mean, logvar, kl_weight=0.0, lpips=fake_lpips, lpips_weight=2.0)
    assert float(out["lpips"]) == pytest.approx(1.0)  # |0.5 - 0| in [0, 1] is 1.0 in [-1, 1]
    assert float(out["loss"]) == pytest.approx(0.5 + 2.0 * 1.0)

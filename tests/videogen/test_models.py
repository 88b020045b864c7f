"""VideoVAE, tokenizer/text encoder, HybridBackbone (3D RoPE), memory estimate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from videogen.models import build_text_to_video, build_vae, count_parameters, model_size
from videogen.models.backbone import HybridBackbone, apply_rope, rope_3d
from videogen.models.memory import estimate_training_memory, saved_activation_bytes
from videogen.models.text_encoder import BOS, EOS, ByteTokenizer, MultilingualTextEncoder
from videogen.models.vae import VAESize, VideoVAE


@pytest.mark.parametrize("comp", [8, 16])
def test_vae_compresses_4x_in_time_and_8_or_16x_in_space(comp):
    vae = VideoVAE(VAESize((8, 16, 16, 16), 1, 4, 2), spatial_compression=comp).eval()
    x = torch.rand(2, 3, 8, 32, 48)
    out = vae(x)
    assert out["mean"].shape == (2, 4, 2, 32 // comp, 48 // comp)
    assert out["recon"].shape == x.shape
    assert vae.latent_shape(8, 32, 48) == (4, 2, 32 // comp, 48 // comp)
    with pytest.raises(ValueError, match="T % 4 == 0"):
        vae(torch.rand(1, 3, 6, 32, 32))


def test_vae_starts_as_average_pool_down_nearest_up():
    """With the DC-AE shortcuts and zero-initialised branches, the untrained VAE is exactly
    'average over 4x8x8 blocks, repeat back' (R, G, B latent channels; the 4th repeats R)."""
    vae = build_vae(model_size("tiny")).eval()
    x = torch.rand(1, 3, 8, 32, 32)
    with torch.no_grad():
        out = vae(x)
    pooled = torch.nn.functional.avg_pool3d(x * 2 - 1, (4, 8, 8))
    assert torch.allclose(out["mean"][:, :3], pooled, atol=1e-5)
    expected = torch.nn.functional.interpolate(pooled, scale_factor=(4, 8, 8), mode="nearest")
    assert torch.allclose(out["recon"], (expected + 1) / 2, atol=1e-5)


def test_vae_trains_kl_and_sampling():
    vae = build_vae(model_size("tiny")).train()
    x = torch.rand(2, 3, 4, 16, 16)
    out = vae(x)
    assert not torch.equal(out["z"], out["mean"])  # sampled in training
    out["recon"].mean().backward()
    assert vae.dec_out.weight.grad is not None and vae.dec_out.weight.grad.abs().sum() > 0


def test_tokenizer_covers_any_utf8_and_uses_the_video_vocabulary():
    tok = ByteTokenizer()
    for text in ["A camera pans across the sky", "Кошка прыгает", "猫在跳", "قطة تقفز", "🎬 zoom-in!", ""]:
        ids = tok.encode(text)
        assert ids[0] == BOS and ids[-1] == EOS
        assert tok.decode(ids) == text
    ids = tok.encode("camera pan")
    assert len(ids) == 2 + 3  # BOS, camera, space byte, pan, EOS
    assert tok.encode("x" * 500, max_length=16)[-1] == EOS and len(tok.encode("x" * 500, max_length=16)) == 16


def test_text_encoder_768d_tokens_and_pooled_ignore_padding():
    enc = MultilingualTextEncoder(width=32, layers=1, heads=4, embed_dim=768).eval()
    tokens, pooled, mask = enc.encode_text(["a dog runs", "ein Hund läuft über die Wiese"])
    assert tokens.shape[0] == 2 and tokens.shape[2] == 768 and pooled.shape == (2, 768)
    alone, pooled_alone, _ = enc.encode_text(["a dog runs"])
    assert torch.allclose(pooled[0], pooled_alone[0], atol=1e-5)  # padding does not change the result


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_3d((3, 4, 5), 12)
    q = torch.randn(12)
    k = torch.randn(12)
    grid = torch.arange(60).view(3, 4, 5)

    def score(i, j):
        qi = apply_rope(q.view(1, 1, 1, 12), cos[i], sin[i]).flatten()
        kj = apply_rope(k.view(1, 1, 1, 12), cos[j], sin[j]).flatten()
        return float(qi @ kj)

    # same offset (1 frame, 1 row, 2 cols) at two places -> same score; identity at offset 0
    a = score(int(grid[0, 0, 0]), int(grid[1, 1, 2]))
    b = score(int(grid[1, 2, 1]), int(grid[2, 3, 3]))
    assert a == pytest.approx(b, abs=1e-4)
    assert score(7, 7) == pytest.approx(float(q @ k), abs=1e-4)


def test_backbone_shapes_and_zero_initial_output():
    bb = HybridBackbone(4, dim=32, heads=4, transformer_blocks=3, conv_blocks=2, text_dim=768, patch=2)
    assert bb.kinds.count("conv") == 2 and bb.kinds.count("attn") == 3
    x = torch.randn(2, 4, 2, 4, 6)
    text, mask = torch.randn(2, 5, 768), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    v = bb(x, torch.rand(2), text, mask)
    assert v.shape == x.shape and torch.count_nonzero(v) == 0  # zero-initialised output layer
    with pytest.raises(ValueError, match="divisible by the patch size"):
        bb(torch.randn(1, 4, 2, 3, 4), torch.rand(1), text[:1], mask[:1])


def test_text_to_video_freezes_the_vae_and_drops_captions():
    size = model_size("tiny")
    model = build_text_to_video(size, build_vae(size)).train()
    assert not model.vae.training and count_parameters(model.vae, trainable_only=True) == 0
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - count_parameters(model.vae)
    tokens, mask, pooled = model.encode_text(["a", "b c"], drop=torch.tensor([True, False]))
    assert torch.equal(tokens[0, 0], model.backbone.null_text[0, 0]) and mask[0].sum() == 1
    assert torch.count_nonzero(pooled[0]) == 0 and mask[1].sum() > 1


def test_saved_activation_bytes_closed_form():
    lin = nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    # y = relu(x W^T + b): autograd saves x (for W's grad) and relu's output: 8*64 + 8*32 floats
    n = saved_activation_bytes(lambda: torch.relu(lin(x)).sum(), lin.parameters())
    assert n == (8 * 64 + 8 * 32) * 4
    # without excluding the parameters, the weight autograd saves for x's gradient is counted too
    assert saved_activation_bytes(lambda: torch.relu(lin(x)).sum()) == (8 * 64 + 8 * 32 + 64 * 32) * 4
    with torch.device("meta"):
        model = nn.Linear(1000, 1000)
        inp = torch.randn(4, 1000)
    est = estimate_training_memory(model, lambda m: m(inp).sum(), activation_dtype_bytes=4)
    params = 1000 * 1000 + 1000
    assert est["params_gib"] == pytest.approx(params * 4 / 2**30, abs=1e-3)
    assert est["optimizer_gib"] == pytest.approx(params * 8 / 2**30, abs=1e-3)


def test_gtx1070_sizes_follow_the_seed():
    size = model_size("gtx1070")
    with torch.device("meta"):
        vae = build_vae(size)
        t2v = build_text_to_video(size, vae)
    assert 100e6 < count_parameters(vae) < 140e6  # seed: ~120M
    assert 75e6 < count_parameters(t2v.text_encoder) < 95e6  # seed: ~85M
    assert 250e6 < count_parameters(t2v.backbone) < 320e6  # seed: ~280M
    assert t2v.backbone.kinds.count("attn") == 30 and t2v.backbone.kinds.count("conv") == 18
    assert vae.latent_channels == 256 and vae.spatial_compression == 16

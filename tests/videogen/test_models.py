"""VideoVAE, tokenizer/text encoder, HybridBackbone (3D RoPE), memory estimate."""

from __future__ import annotations

import math

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
    vae = VideoVAE(VAESize((12, 16, 16, 16), 1, 4, 2), spatial_compression=comp).eval()
    x = torch.rand(2, 3, 8, 32, 48)
    out = vae(x)
    assert out["mean"].shape == (2, 4, 2, 32 // comp, 48 // comp)
    assert out["recon"].shape == x.shape
    assert vae.latent_shape(8, 32, 48) == (4, 2, 32 // comp, 48 // comp)
    with pytest.raises(ValueError, match="T % 4 == 0"):
        vae(torch.rand(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="first width must be >= 12"):  # was NaN (an empty mean) in decode
        VideoVAE(VAESize((8, 16, 16), 1, 4, 2), spatial_compression=8)


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


def test_vae_samples_in_training_and_uses_the_mean_in_eval():
    torch.manual_seed(0)
    vae = build_vae(model_size("tiny")).train()
    x = torch.rand(2, 3, 8, 64, 64)
    out = vae(x)
    assert not torch.equal(out["z"], out["mean"])  # sampled in training, with the posterior's std (e^-3 at init)
    assert float((out["z"] - out["mean"]).detach().std()) == pytest.approx(float(torch.exp(0.5 * out["logvar"].detach()).mean()),
                                                                  rel=0.1)
    ev = vae.eval()(x)
    assert torch.equal(ev["z"], ev["mean"])


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


def test_backbone_shapes():
    bb = HybridBackbone(4, dim=32, heads=4, transformer_blocks=3, conv_blocks=2, text_dim=768, patch=2)
    assert bb.kinds.count("conv") == 2 and bb.kinds.count("attn") == 3
    x = torch.randn(2, 4, 2, 4, 6)
    text, mask = torch.randn(2, 5, 768), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    v = bb(x, torch.rand(2), text, mask)
    assert v.shape == x.shape
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


def test_adaln_zero_every_block_starts_as_the_identity_and_its_gates_learn():
    torch.manual_seed(0)
    bb = HybridBackbone(4, dim=32, heads=4, transformer_blocks=3, conv_blocks=2, text_dim=16, patch=1)
    x = torch.randn(2, 4, 2, 3, 3)
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    tok = torch.randn(2, 18, 32)
    temb = torch.randn(2, 32)
    tmod = bb.time_mod(torch.nn.functional.silu(temb))
    rope = rope_3d((2, 3, 3), 8)
    for kind, block in zip(bb.kinds, bb.blocks, strict=True):
        out = block(tok, tmod, text, mask, rope) if kind == "attn" else block(tok, temb, (2, 3, 3))
        assert torch.equal(out, tok), kind  # exactly the identity at initialisation
    # the gates receive gradient (they are not stuck at zero) once the output layer has moved
    with torch.no_grad():
        bb.out.weight.normal_(0, 0.1)
    bb(x, torch.rand(2), text, mask).pow(2).mean().backward()
    gate_grads = [float(b.table.grad[[2, 5]].abs().sum()) for k, b in zip(bb.kinds, bb.blocks, strict=True)
                  if k == "attn"]
    assert all(g > 0 for g in gate_grads)


def test_cross_attention_ignores_padding_tokens():
    torch.manual_seed(0)
    bb = HybridBackbone(4, dim=32, heads=4, transformer_blocks=2, conv_blocks=1, text_dim=16).eval()
    with torch.no_grad():  # move every zero-initialised layer so each path matters
        for p in bb.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(1, 4, 2, 2, 2), torch.rand(1)
    text = torch.randn(1, 3, 16)
    ref = bb(x, t, text, torch.ones(1, 3, dtype=torch.bool))
    padded = torch.cat([text, 100 * torch.randn(1, 4, 16)], dim=1)  # garbage in the padded slots
    mask = torch.tensor([[True] * 3 + [False] * 4])
    out = bb(x, t, padded, mask)
    assert torch.allclose(out, ref, atol=1e-5)
    unmasked = bb(x, t, padded, torch.ones(1, 7, dtype=torch.bool))
    assert not torch.allclose(unmasked, ref, atol=1e-3)  # the mask is what makes the difference


@pytest.mark.parametrize("sampler", ["heun", "euler"])
def test_sampler_reaches_the_known_latent_with_an_exact_velocity(sampler):
    """Data N(mu, s^2) per element: the exact rectified-flow velocity is E[noise - x0 | x_t], and the
    ODE carries noise n at t = 1 to exactly mu + s n at t = 0."""
    from videogen.predict import sample_flow

    g = torch.Generator().manual_seed(0)
    mu, s = torch.randn(1, 4, 2, 3, 3, generator=g), 0.5
    noise = torch.randn(1, 4, 2, 3, 3, generator=g)

    def velocity(x, t):
        tt = t.view(-1, 1, 1, 1, 1).double()
        var = (1 - tt) ** 2 * s**2 + tt**2
        centred = x.double() - (1 - tt) * mu
        e_x0 = mu + (1 - tt) * s**2 / var * centred
        e_n = tt / var * centred
        return (e_n - e_x0).float()

    target = mu + s * noise
    err = {n: float((sample_flow(velocity, noise, steps=n, sampler=sampler) - target).abs().max()) for n in (20, 40)}
    if sampler == "heun":  # second order: doubling the steps divides the error by ~4 (first order: ~2)
        assert err[40] < 2e-3 and err[40] < err[20] / 3
    else:
        assert err[40] < 6e-2 and err[20] / 2.2 < err[40] < err[20] / 1.7
    if sampler == "heun":
        euler = float((sample_flow(velocity, noise, steps=20, sampler="euler") - target).abs().max())
        assert err[20] < euler / 10  # second order
    # a single data point: the velocity (x - x0) / t is constant along the straight path: exact in 1 step
    x0 = torch.randn(1, 4, 1, 2, 2)
    n1 = torch.randn(1, 4, 1, 2, 2)
    out = sample_flow(lambda x, t: (x - x0) / t.view(-1, 1, 1, 1, 1), n1, steps=1, sampler=sampler)
    assert torch.allclose(out, x0, atol=1e-6)


def test_vae_kl_gradient_reaches_the_posterior_variance_in_closed_form():
    from videogen.losses import vae_loss

    vae = build_vae(model_size("tiny")).train()
    x = torch.rand(2, 3, 4, 16, 16)
    mean, logvar = vae.encode(x)
    w = 0.5
    out = vae_loss(vae.decode(mean), x, mean, logvar, kl_weight=w)
    out["loss"].backward()
    c = vae.latent_channels
    # d/d(logvar bias) of w * sum KL / (B * P) = w * 0.5 (e^lv - 1) * (positions per channel) / (B * P)
    lv = float(vae.to_moments.bias[c].detach())  # -6 at initialisation
    positions = mean[:, 0].numel()
    expected = w * 0.5 * (math.exp(lv) - 1) * positions / x.numel()
    assert torch.allclose(vae.to_moments.bias.grad[c:], torch.full((c,), expected), rtol=1e-4)


def test_latent_normalisation_round_trips_and_old_checkpoints_load():
    vae = build_vae(model_size("tiny"))
    assert not vae.has_latent_stats
    vae.set_latent_stats(torch.tensor([1.0, -2.0, 0.5, 0.0]), torch.tensor([2.0, 0.5, 1.0, 3.0]))
    z = torch.randn(2, 4, 1, 2, 2)
    n = vae.normalize(z)
    assert torch.allclose(n[:, 1], (z[:, 1] + 2.0) / 0.5) and torch.allclose(vae.denormalize(n), z, atol=1e-6)
    state = {k: v for k, v in vae.state_dict().items() if not k.startswith("latent_")}  # written before the stats
    fresh = build_vae(model_size("tiny"))
    fresh.load_state_dict(state)
    assert not fresh.has_latent_stats
    size = model_size("tiny")
    t2v = build_text_to_video(size, build_vae(size))
    old = {**{k: v for k, v in t2v.state_dict().items() if not k.startswith("vae.latent_")},
           "latent_scale": torch.tensor(0.25)}  # a backbone checkpoint of the global-scale era
    t2v.load_state_dict(old)
    assert torch.allclose(t2v.vae.latent_std, torch.full((4,), 4.0))


def test_one_batch_overfits_vae_and_backbone():
    torch.manual_seed(0)
    vae = VideoVAE(VAESize((12, 16, 16), 1, 4, 2), 8).train()  # the tiny preset's design, narrower
    x = torch.rand(1, 3, 4, 16, 16)
    x = torch.nn.functional.avg_pool3d(x, 3, 1, 1)  # some structure to learn
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    from videogen.losses import vae_loss

    losses = []
    for _ in range(60):
        out = vae(x)
        loss = vae_loss(out["recon"], x, out["mean"], out["logvar"], kl_weight=1e-6)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    bb = HybridBackbone(4, dim=32, heads=4, transformer_blocks=2, conv_blocks=1, text_dim=16)
    z0, noise = torch.randn(2, 4, 1, 2, 2), torch.randn(2, 4, 1, 2, 2)
    t = torch.tensor([0.3, 0.7])
    text, mask = torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool)
    from videogen.losses import flow_matching_loss, flow_matching_pair

    xt, target = flow_matching_pair(z0, t, noise)
    opt = torch.optim.Adam(bb.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = flow_matching_loss(bb(xt, t, text, mask), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0]


def test_pretrained_text_encoder_from_a_tiny_saved_model(tmp_path):
    """A tiny randomly initialised BERT + a word-level tokenizer saved with save_pretrained stand in for
    umT5 / XLM-R: frozen, out of the state dict, captions cached, padding ignored."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from videogen.models import PretrainedTextEncoder

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "runs", "cat", "the", "on", "grass"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "enc")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(tmp_path / "enc")
    enc = PretrainedTextEncoder(str(tmp_path / "enc"))
    assert enc.embed_dim == 24 and list(enc.parameters()) == [] and enc.state_dict() == {}
    tokens, pooled, mask = enc.encode_text(["a dog runs", "the cat runs on the grass"])
    assert tokens.shape == (2, 8, 24) and mask[0].sum() == 5 and pooled.shape == (2, 24)
    alone, pooled_alone, _ = enc.encode_text(["a dog runs"])
    assert torch.allclose(pooled[0], pooled_alone[0], atol=1e-5) and len(enc._cache) == 2
    size = model_size("tiny")
    t2v = build_text_to_video(size, build_vae(size), text_encoder=str(tmp_path / "enc"))
    assert t2v.backbone.null_text.shape[-1] == 24
    assert not any(k.startswith("text_encoder.") for k in t2v.state_dict())
    with pytest.raises(ValueError, match="--text-encoder"):
        PretrainedTextEncoder(str(tmp_path))


def test_memory_bench_without_a_gpu_says_so_in_one_line(capsys):
    import importlib.util
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the bench measures instead")
    spec = importlib.util.spec_from_file_location("videogen_memory",
                                                  Path(__file__).resolve().parents[2] / "bench" / "videogen_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err


def test_memory_estimate_counts_optimizer_temporaries_ema_and_context():
    with torch.device("meta"):
        model = nn.Linear(1000, 1000)
        inp = torch.randn(4, 1000)
    params = 1000 * 1000 + 1000
    base = estimate_training_memory(model, lambda m: m(inp).sum(), activation_dtype_bytes=4)
    full = estimate_training_memory(model, lambda m: m(inp).sum(), activation_dtype_bytes=4, ema=True,
                                    cuda_context_gib=0.4)
    assert base["optimizer_temporaries_gib"] == pytest.approx(params * 4 / 2**30, abs=1e-3)
    assert full["ema_gib"] == pytest.approx(params * 4 / 2**30, abs=1e-3) and base["ema_gib"] == 0
    assert full["total_gib"] == pytest.approx(base["total_gib"] + 1.1 * full["ema_gib"] + 0.4, abs=2e-3)

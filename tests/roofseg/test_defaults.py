"""roofseg-train's bare defaults need no model hub (issue 17)."""

from __future__ import annotations

import pytest
import torch

from mlcore.pretrained import efficientnet_lite0_weights_path
from roofseg.config import RoofSegConfig
from roofseg.train import build_model


def test_default_model_loads_the_offline_weights_with_the_network_blocked(no_network):
    cfg = RoofSegConfig(data=".")
    assert (cfg.encoder, cfg.encoder_weights, cfg.pretrained) == ("efficientnet-lite0", "offline", True)
    model = build_model(cfg)
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    enc = model.encoder.model
    assert torch.equal(enc.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(enc.blocks[6][0].bn3.running_mean, source["_blocks.15._bn2.running_mean"])


def test_lite0_roof_model_is_fed_the_weights_normalisation_not_imagenets(rid_root):
    """Issue 17: roofseg normalised every tile with ImageNet's mean/std although its default encoder's
    weights expect TF-Lite's (x - 127) / 128; the model's data config now decides, in training
    (RoofDataset), evaluation and prediction (predict_tile) alike."""
    import numpy as np

    from mlcore.data import IMAGENET_MEAN
    from mlcore.pretrained import normalization
    from roofseg.data import RoofDataset, find_samples
    from roofseg.models import RoofNet
    from roofseg.predict import predict_tile

    for weights in ("offline", None):  # trained from the offline weights, or rebuilt to load a checkpoint
        model = RoofNet(("outline",), "efficientnet-lite0", weights).eval()
        mean, std = normalization(model)
        assert mean == pytest.approx((127 / 255,) * 3) and std == pytest.approx((128 / 255,) * 3)
        assert mean != pytest.approx(IMAGENET_MEAN, abs=1e-3)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    predict_tile(model, np.full((64, 64, 3), 127, np.uint8), 64)  # mid-grey is 0 after (x - 127) / 128
    assert seen and float(seen[0].abs().max()) < 1e-6
    sample = find_samples(rid_root, "train", "outlines")[:1]
    mean, std = normalization(model)
    image = RoofDataset(sample, ("outline",), 64, train=False, mean=mean, std=std)[0]["image"]
    raw = RoofDataset(sample, ("outline",), 64, train=False, mean=(0, 0, 0), std=(1, 1, 1))[0]["image"]
    assert torch.allclose(image, (raw - 127 / 255) / (128 / 255), atol=1e-5)
    assert torch.allclose(RoofDataset(sample, ("outline",), 64, train=False)[0]["image"], image)  # the default
    # smp's torchvision encoders carry no pretrained config: ImageNet's, their weights' convention
    assert normalization(RoofNet(("outline",), "mobilenet_v2", None))[0] == IMAGENET_MEAN

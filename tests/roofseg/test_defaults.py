"""roofseg-train's bare defaults need no model hub (issue 17)."""

from __future__ import annotations

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

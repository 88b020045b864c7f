"""videogen-train's bare defaults need no model hub (issue 17): its models start from random weights."""

from __future__ import annotations

import torch

from videogen.config import VideoGenConfig
from videogen.train import build_model


def test_default_model_builds_with_the_network_blocked(no_network):
    cfg = VideoGenConfig(data=".")
    assert (cfg.stage, cfg.model_size, cfg.text_encoder) == ("vae", "gtx1070", None)
    with torch.device("meta"):  # the seed's 120M-parameter VAE: shapes only, no memory
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 100_000_000

"""Checkpoints record their timm architectures; one trained with timm's efficientnet_lite0 (PyTorch padding,
before issue 17) is refused by, or warned about in, a loader that builds tf_efficientnet_lite0."""

from __future__ import annotations

import logging

import pytest
import timm
import torch

from mlcore.checkpoint import (
    CheckpointError,
    check_architectures,
    load_model_weights,
    model_architectures,
)


def _lite0(arch: str) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False, num_classes=0)


def test_same_tensor_names_so_only_the_record_can_tell():
    old, new = _lite0("efficientnet_lite0"), _lite0("tf_efficientnet_lite0")
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}
    wrapped = torch.nn.Sequential(new, torch.nn.Linear(1280, 3))
    assert model_architectures(wrapped) == ["tf_efficientnet_lite0"]
    assert model_architectures(torch.nn.Linear(2, 2)) == []


def test_old_lite0_checkpoint_is_one_line_naming_both_architectures(tmp_path):
    model = torch.nn.Sequential(timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0))
    old = torch.nn.Sequential(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0))
    path = tmp_path / "old.pt"
    torch.save({"model": old.state_dict(), "architectures": model_architectures(old)}, path)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model, path, flag="--checkpoint")
    msg = str(err.value)
    assert "\n" not in msg and f"--checkpoint {path}" in msg
    assert "trained with timm efficientnet_lite0" in msg and "builds tf_efficientnet_lite0" in msg
    # the same record as the model: loads
    torch.save({"model": model.state_dict(), "architectures": ["tf_efficientnet_lite0"]}, path)
    load_model_weights(model, path)


def test_unrecorded_lite0_checkpoint_from_before_the_records_warns_naming_both(caplog):
    model = _lite0("tf_efficientnet_lite0")
    with caplog.at_level(logging.WARNING, logger="mlcore.checkpoint"):
        check_architectures({"model": {}}, model, name="--checkpoint old.pt")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "--checkpoint old.pt" in lines[0]
    assert "efficientnet_lite0 (before issue 17)" in lines[0] and "tf_efficientnet_lite0" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlcore.checkpoint"):  # written after the switch: "weights" key
        check_architectures({"model": {}, "weights": "raw"}, model, name="x")
        check_architectures({"model": {}}, torch.nn.Linear(2, 2), name="x")  # no timm model: nothing to tell
    assert not caplog.records


def test_resume_from_an_old_lite0_last_pt_is_refused(tmp_path):
    from mlcore.dcp import load_resume_state

    old = torch.nn.Sequential(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0))
    path = tmp_path / "last.pt"
    torch.save({"model": old.state_dict(), "architectures": ["efficientnet_lite0"]}, path)
    model = torch.nn.Sequential(timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0))
    with pytest.raises(CheckpointError, match=r"--resume .*trained with timm efficientnet_lite0.*builds tf_efficientnet_lite0"):
        load_resume_state(path, model)

"""hairseg.models: U-Net construction, offline EfficientNet-Lite0 weights, freezing, export parity."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hairseg.models import (
    ENCODERS,
    build_model,
    count_parameters,
    load_efficientnet_lite0_offline,
    map_state_dict_in_order,
    normalization,
    offline_efficientnet_lite0_path,
)

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _image_batch(n: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) float32, ImageNet-normalised uniform noise (a photo's value range)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) - _MEAN) / _STD


@pytest.fixture(autouse=True)
def _quiet_single_threaded():
    """Silence tracer warnings; run single-threaded: these tiny inputs gain nothing from intra-op
    threads, and on a busy 2-core machine OpenMP spin-waiting makes them ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy (dynamo=False) ONNX exporter
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script/trace are deprecated in torch 2.x
        yield
    torch.set_num_threads(threads)


def test_encoders_and_parameter_counts():
    assert ENCODERS == ("mobilenet_v2", "resnet34", "efficientnet-lite0")
    # The plan's table: MODNet (MobileNetV2) 6.5 M, U-Net (ResNet34) 24 M parameters.
    expected = {"mobilenet_v2": 6_628_945, "resnet34": 24_436_369, "efficientnet-lite0": 5_198_161}
    for name in ENCODERS:
        model = build_model(name).eval()
        assert count_parameters(model) == expected[name], name
        with torch.no_grad():
            out = model(torch.zeros(2, 3, 64, 96))
        assert out.shape == (2, 1, 64, 96) and out.dtype == torch.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="encoder"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="encoder_weights"):
        build_model("mobilenet_v2", encoder_weights="ssl")
    with pytest.raises(ValueError, match="only available for 'efficientnet-lite0'"):
        build_model("mobilenet_v2", encoder_weights="offline")


def test_imagenet_download_failure_is_a_clear_oserror(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("network unreachable")

    # smp fetches its own encoders' weights with hf_hub_download imported into smp.encoders.
    monkeypatch.setattr("segmentation_models_pytorch.encoders.hf_hub_download", offline)
    with pytest.raises(OSError, match="could not download ImageNet weights for encoder 'mobilenet_v2'"):
        build_model("mobilenet_v2", encoder_weights="imagenet")


def test_offline_efficientnet_lite0_weights_land_on_the_right_tensors():
    path = offline_efficientnet_lite0_path()
    assert path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    assert len(source) == 296
    model = build_model("efficientnet-lite0", encoder_weights="offline")
    enc = model.encoder.state_dict()
    # Correspondences written from the layer names (lukemelas -> timm), independent of the in-order mapping.
    pairs = {
        "_conv_stem.weight": "model.conv_stem.weight",
        "_bn0.running_var": "model.bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "model.blocks.0.0.conv_dw.weight",
        "_blocks.15._project_conv.weight": "model.blocks.6.0.conv_pwl.weight",
        "_blocks.15._bn2.running_mean": "model.blocks.6.0.bn3.running_mean",
    }
    for src_key, enc_key in pairs.items():
        assert torch.equal(enc[enc_key], source[src_key]), (src_key, enc_key)
    # Every encoder tensor came from the file (288 of its 296; the classifier head has no counterpart).
    file_tensors = {(tuple(v.shape), float(v.double().sum())) for v in source.values()}
    assert all((tuple(v.shape), float(v.double().sum())) in file_tensors for v in enc.values())


def test_in_order_mapping_rejects_mismatches():
    target = {"a": torch.Size([2, 3]), "b": torch.Size([4])}
    assert map_state_dict_in_order({"x": torch.ones(2, 3), "y": torch.zeros(4)}, target).keys() == {"a", "b"}
    with pytest.raises(ValueError, match="1 tensors, target architecture expects 2"):
        map_state_dict_in_order({"x": torch.ones(2, 3)}, target)
    with pytest.raises(ValueError, match="shape mismatch mapping 'y'"):
        map_state_dict_in_order({"x": torch.ones(2, 3), "y": torch.zeros(5)}, target)


def test_offline_loader_refuses_incomplete_or_wrong_files(tmp_path):
    source = torch.load(offline_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    truncated = dict(list(source.items())[:-1])
    bad = tmp_path / "truncated.pth"
    torch.save(truncated, bad)
    encoder = build_model("efficientnet-lite0").encoder
    with pytest.raises(ValueError, match="295 tensors"):
        load_efficientnet_lite0_offline(encoder, bad)
    with pytest.raises(RuntimeError, match="encoder tensors got no value"):
        load_efficientnet_lite0_offline(build_model("mobilenet_v2").encoder)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_efficientnet_lite0_offline(encoder, tmp_path / "missing.pth")


def test_freeze_encoder_keeps_encoder_fixed_in_train_mode():
    model = build_model("mobilenet_v2", freeze_encoder=True)
    model.train()
    assert not model.encoder.training and model.decoder.training
    assert all(not m.training for m in model.encoder.modules())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - count_parameters(
        model.encoder
    )
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    out = model(_image_batch(2, 64))
    out.mean().backward()
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_weights_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(1)
    src = build_model("mobilenet_v2").eval()
    ckpt = tmp_path / "best_iou.pt"
    # A checkpoint as DDP would write it: {"model": state_dict with "module." prefixes}.
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, ckpt)
    torch.manual_seed(2)
    loaded = build_model("mobilenet_v2", weights=ckpt).eval()
    x = _image_batch(1, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), src(x))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_model("mobilenet_v2", weights=tmp_path / "nope.pt")
    with pytest.raises(RuntimeError, match="weights do not match the model"):
        build_model("resnet34", weights=ckpt)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_torchscript_script_and_trace_match_eager(encoder):
    torch.manual_seed(0)
    model = build_model(encoder).eval()
    x = _image_batch(2, 64)
    other = _image_batch(1, 96, seed=1)  # a different batch size and resolution than the trace example
    with torch.no_grad():
        scripted = torch.jit.script(model)
        traced = torch.jit.trace(model, x)
        for inp in (x, other):
            ref = model(inp)
            assert torch.allclose(scripted(inp), ref, atol=1e-5, rtol=0)
            assert torch.allclose(traced(inp), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("encoder", "encoder_weights"), [("mobilenet_v2", None), ("efficientnet-lite0", "offline")]
)
def test_onnx_export_matches_eager(encoder, encoder_weights):
    torch.manual_seed(0)
    model = build_model(encoder, encoder_weights=encoder_weights).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (_image_batch(1),),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        x = _image_batch(batch, seed=batch)
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == (batch, 1, 128, 128)
        assert np.abs(got - ref).max() < 1e-4


def test_normalisation_is_the_encoders_own(tmp_path):
    """EfficientNet-Lite0 (TF-Lite weights) expects (x - 127) / 128 on 0-255 pixels, not ImageNet's mean/std
    (issue 17); training, predictors and exported metadata take it from the encoder."""
    from hairseg.inference import TorchPredictor
    from hairseg.models import normalization

    mean, std = normalization("efficientnet-lite0")
    assert mean == pytest.approx((127 / 255,) * 3) and std == pytest.approx((128 / 255,) * 3)
    assert normalization("mobilenet_v2") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    path = tmp_path / "lite0.pt"
    torch.save({"model": build_model("efficientnet-lite0").state_dict(),
                "config": {"encoder": "efficientnet-lite0", "image_size": 64}}, path)
    predictor = TorchPredictor(path)
    assert predictor.mean == pytest.approx(mean) and predictor.std == pytest.approx(std)
    x = predictor.preprocess(np.full((40, 64, 3), 127, np.uint8))
    assert np.abs(x[0, :, :25]).max() < 1e-6  # a 127 grey photo normalises to 0


def test_default_model_loads_the_offline_weights_with_the_network_blocked(no_network):
    """Issue 17: the bare hairseg-train's U-Net needs no hub; its encoder holds the installed file's tensors."""
    from hairseg.config import HairSegConfig

    cfg = HairSegConfig(data=".")
    model = build_model(cfg.encoder, encoder_weights=cfg.encoder_weights)
    source = torch.load(offline_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.encoder.model.conv_stem.weight, source["_conv_stem.weight"])
    with pytest.raises(OSError, match="could not download ImageNet weights"):  # the seed's preset needs the hub
        build_model("mobilenet_v2", encoder_weights="imagenet")


@pytest.mark.parametrize("encoder", ENCODERS)
def test_normalization_is_the_built_models_data_config(encoder):
    """Issue 17: hairseg's per-encoder mean/std is what mlcore's one data-config function reads off the model
    (TF-Lite's 127/128 for EfficientNet-Lite0, ImageNet's for the torchvision encoders)."""
    from mlcore.pretrained import normalization as model_normalization

    with torch.device("meta"):
        model = build_model(encoder)
    mean, std = model_normalization(model)
    assert normalization(encoder) == (pytest.approx(mean), pytest.approx(std))

"""hairseg.inference: format detection, agreement of eager / TorchScript / ONNX predictors, segment_hair."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hairseg.data import find_samples, letterbox_shape, load_image, preprocess_image
from hairseg.export import export_onnx, export_torchscript, metadata_for
from hairseg.inference import (
    ModelFormatError,
    ModelNotConfiguredError,
    OnnxPredictor,
    Predictor,
    TorchPredictor,
    TorchScriptPredictor,
    cached_predictor,
    default_model_path,
    detect_format,
    load_predictor,
    read_onnx_metadata,
    read_torchscript_metadata,
    segment_hair,
)
from hairseg.models import build_model
from hairseg.recolor import postprocess_mask
from hairseg.registry import append_entry

SIZE = 64


def write_tiny_models(folder: Path, photo: np.ndarray, encoder: str = "mobilenet_v2") -> dict[str, Path]:
    """An untrained 64 px U-Net as checkpoint, TorchScript and ONNX files.

    The head bias is shifted by the median logit on ``photo`` so that about half of the photo is "hair":
    masks then have both classes and the guard-band checks mean something.
    """
    torch.manual_seed(0)
    model = build_model(encoder).eval()
    x = preprocess_image(photo, SIZE)
    with torch.no_grad():
        model.segmentation_head[0].bias -= model(x).median()
    paths = {"checkpoint": folder / "tiny.pt", "torchscript": folder / "tiny_ts.pt", "onnx": folder / "tiny.onnx"}
    torch.save({"model": model.state_dict(), "config": {"encoder": encoder, "image_size": SIZE}}, paths["checkpoint"])
    meta = metadata_for(encoder, SIZE, "0.1")
    export_torchscript(model, paths["torchscript"], meta, x)
    export_onnx(model, paths["onnx"], meta, x)
    return paths


@pytest.fixture(scope="module")
def photo(figaro_root) -> np.ndarray:
    """A real Figaro-1k photo, (512, 385, 3) uint8: not square, not a multiple of 32."""
    return load_image(find_samples(figaro_root, "all")[0].image)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, photo) -> dict[str, Path]:
    return write_tiny_models(tmp_path_factory.mktemp("tiny"), photo)


def test_detects_all_three_formats_and_they_agree(tiny, photo):
    classes = {"checkpoint": TorchPredictor, "torchscript": TorchScriptPredictor, "onnx": OnnxPredictor}
    probs = {}
    for fmt, path in tiny.items():
        assert detect_format(path) == fmt
        predictor = load_predictor(path)
        assert type(predictor) is classes[fmt] and isinstance(predictor, Predictor)
        assert predictor.image_size == SIZE and path.name in predictor.name
        prob = predictor.predict_proba(photo)
        assert prob.shape == photo.shape[:2] and prob.dtype == np.float32
        assert 0.0 <= prob.min() and prob.max() <= 1.0
        probs[fmt] = prob
    for fmt in ("torchscript", "onnx"):
        assert np.abs(probs[fmt] - probs["checkpoint"]).max() < 1e-4, fmt

    # Reference written out: eager model on the 64 px letterbox, sigmoid, the photo's block cropped out and
    # resized bilinearly back to the photo's size.
    model = build_model("mobilenet_v2", weights=tiny["checkpoint"]).eval()
    h, w = letterbox_shape(*photo.shape[:2], SIZE)
    with torch.no_grad():
        small = torch.sigmoid(model(preprocess_image(photo, SIZE)))[0, 0, :h, :w].numpy()
    ref = cv2.resize(small, (photo.shape[1], photo.shape[0]), interpolation=cv2.INTER_LINEAR)
    assert np.abs(probs["checkpoint"] - ref).max() < 1e-6
    assert 0.2 < (ref >= 0.5).mean() < 0.8  # the median shift made both classes present


def test_bf16_predictor_stays_within_bf16_rounding_of_fp32(tiny, photo):
    """precision="bf16" (issue 12 latency: oneDNN bf16 convolutions) casts weights and inputs; its mask
    agrees with fp32's except where |logit| is within bf16's rounding, and bad uses fail clearly."""
    fp32 = load_predictor(tiny["checkpoint"])
    bf16 = load_predictor(tiny["checkpoint"], precision="bf16")
    assert isinstance(bf16, TorchPredictor) and "(bf16)" in bf16.name
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    x = fp32.preprocess(photo)
    ref, out = fp32.predict_logits(x), bf16.predict_logits(x)
    assert out.dtype == np.float32 and out.shape == ref.shape
    diff = np.abs(out - ref)
    # bf16 keeps 8 significant bits: relative error of one rounding 2^-8; through ~60 layers the logits
    # drift by a few percent of their scale, not more
    assert 0 < diff.max() < 0.1 * np.abs(ref).max() + 0.05
    assert np.mean((out >= 0) == (ref >= 0)) > 0.97
    with pytest.raises(ValueError, match="precision must be one of"):
        TorchPredictor(tiny["checkpoint"], precision="fp16")
    with pytest.raises(ModelFormatError, match=r"tiny\.onnx: precision bf16 applies to mlcore checkpoints"):
        load_predictor(tiny["onnx"], precision="bf16")


def test_exported_files_carry_their_metadata(tiny):
    import onnx

    for meta in (read_torchscript_metadata(tiny["torchscript"]), read_onnx_metadata(onnx.load(str(tiny["onnx"])))):
        assert meta["image_size"] == SIZE and meta["encoder"] == "mobilenet_v2"
        assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert read_torchscript_metadata(tiny["checkpoint"]) == {}  # a torch.save zip has no extra file


def test_batched_logits_match_across_backends(tiny):
    g = torch.Generator().manual_seed(3)
    batch = torch.randn(3, 3, SIZE, SIZE, generator=g).numpy()
    outs = {fmt: load_predictor(path).predict_logits(batch) for fmt, path in tiny.items()}
    for fmt in ("torchscript", "onnx"):
        assert outs[fmt].shape == (3, 1, SIZE, SIZE)
        assert np.abs(outs[fmt] - outs["checkpoint"]).max() < 1e-4


def test_bad_files_raise_clear_errors(tmp_path, tiny):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load_predictor(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a model")
    with pytest.raises(ModelFormatError, match=r"garbage\.pt.*ONNX file.*TorchScript.*mlcore checkpoint"):
        load_predictor(garbage)
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelFormatError, match=r"bad\.onnx.*ONNX Runtime cannot load it"):
        load_predictor(bad_onnx)
    state = torch.load(tiny["checkpoint"], weights_only=True)["model"]
    no_config = tmp_path / "no_config.pt"
    torch.save({"model": state}, no_config)
    with pytest.raises(ModelFormatError, match=r"no_config\.pt.*no 'model' state dict or no 'config'"):
        load_predictor(no_config)
    wrong_encoder = tmp_path / "wrong_encoder.pt"
    torch.save({"model": state, "config": {"encoder": "resnet50", "image_size": SIZE}}, wrong_encoder)
    with pytest.raises(ModelFormatError, match=r"wrong_encoder\.pt.*config\['encoder'\]"):
        load_predictor(wrong_encoder)
    mismatch = tmp_path / "mismatch.pt"
    torch.save({"model": state, "config": {"encoder": "efficientnet-lite0", "image_size": SIZE}}, mismatch)
    with pytest.raises(ModelFormatError, match=r"mismatch\.pt.*do not match"):
        load_predictor(mismatch)
    odd_size = tmp_path / "odd_size.pt"
    torch.save({"model": state, "config": {"encoder": "mobilenet_v2", "image_size": 50}}, odd_size)
    with pytest.raises(ModelFormatError, match="multiple of 32"):
        load_predictor(odd_size)
    assert issubclass(ModelFormatError, ValueError)


def test_segment_hair_soft_alpha_guard_band(tiny, photo):
    predictor = load_predictor(tiny["onnx"])
    mask = segment_hair(photo, predictor, feather_px=2.0, guard_px=2)
    assert mask.shape == photo.shape[:2] and mask.dtype == np.uint8
    prob = predictor.predict_proba(photo)
    np.testing.assert_array_equal(mask, postprocess_mask(prob, photo.shape[:2], image=photo, feather_px=2.0,
                                                         guard_px=2))
    binary = (prob >= 0.5).astype(np.uint8)
    guard = cv2.dilate(binary, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    assert (mask[guard == 0] == 0).all()  # anti-bleed: nothing beyond the 2 px guard band
    assert ((mask > 0) & (mask < 255)).any()
    raw = segment_hair(photo, predictor, feather_px=0.0, guard_px=0)  # the probability itself, not cut at 0.5
    np.testing.assert_array_equal(raw, np.rint(prob * 255).astype(np.uint8))


def test_segment_hair_accepts_any_predict_proba_object(photo):
    class Half:  # e.g. the MediaPipe baseline: only predict_proba
        def predict_proba(self, image: np.ndarray) -> np.ndarray:
            prob = np.zeros(image.shape[:2], np.float32)
            prob[: image.shape[0] // 2] = 0.9
            return prob

    mask = segment_hair(photo, Half(), feather_px=0.0, guard_px=0)
    assert (mask[: photo.shape[0] // 2] == 230).all() and (mask[photo.shape[0] // 2 :] == 0).all()
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        segment_hair(photo.astype(np.float32), Half())


def test_inference_keeps_the_aspect_ratio(tiny, photo):
    """The network sees the photo letterboxed (long side S, padded with black), not squashed, and the
    probability is the photo's block of the output cropped out and resized back."""
    predictor = load_predictor(tiny["onnx"])
    assert photo.shape[0] != photo.shape[1]
    h, w = letterbox_shape(*photo.shape[:2], SIZE)
    batch = predictor.preprocess(photo)
    assert batch.shape == (1, 3, SIZE, SIZE)
    pad = batch[0, :, h:, :] if h < SIZE else batch[0, :, :, w:]
    mean, std = np.asarray(predictor.mean), np.asarray(predictor.std)
    np.testing.assert_allclose(pad, np.broadcast_to((-mean / std)[:, None, None], pad.shape), rtol=1e-5)
    logits = predictor.predict_logits(batch)[0, 0, :h, :w]
    expected = cv2.resize(1 / (1 + np.exp(-logits)), photo.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(predictor.predict_proba(photo), expected, atol=1e-5)


def test_segment_hair_by_path_is_cached(tiny, photo):
    cached_predictor.cache_clear()
    first = segment_hair(photo, tiny["torchscript"])
    second = segment_hair(photo, str(tiny["torchscript"]))
    np.testing.assert_array_equal(first, second)
    assert cached_predictor(tiny["torchscript"]) is cached_predictor(tiny["torchscript"])
    from hairseg.inference import _cached

    info = _cached.cache_info()
    assert info.misses == 1 and info.hits >= 3


def test_default_model_from_env_and_registry(tiny, photo, tmp_path, monkeypatch):
    monkeypatch.delenv("HAIRSEG_MODEL", raising=False)
    monkeypatch.delenv("HAIRSEG_REGISTRY", raising=False)
    with pytest.raises(ModelNotConfiguredError, match="HAIRSEG_MODEL.*HAIRSEG_REGISTRY"):
        segment_hair(photo)

    registry = tmp_path / "model_registry.json"
    monkeypatch.setenv("HAIRSEG_REGISTRY", str(registry))
    with pytest.raises(ModelNotConfiguredError, match="no hair_segmenter entry"):
        default_model_path()
    onnx_rel = Path("..") / tiny["onnx"].parent.name / tiny["onnx"].name
    for version, name in (("1.10", str(onnx_rel)), ("1.9", "missing.onnx")):  # 1.10 is newer than 1.9
        append_entry(registry, {"version": version, "file": "unused.pt", "onnx_file": name})
    assert default_model_path() == tiny["onnx"].resolve()
    assert default_model_path("torchscript") == (tmp_path / "unused.pt").resolve()
    via_registry = segment_hair(photo)

    monkeypatch.setenv("HAIRSEG_MODEL", str(tiny["checkpoint"]))  # wins over the registry
    assert default_model_path() == tiny["checkpoint"]
    via_env = segment_hair(photo)
    assert via_registry.shape == via_env.shape == photo.shape[:2]
    assert (via_registry != via_env).mean() < 1e-3  # ONNX vs eager: equal up to rounding at the threshold


def test_mediapipe_tflite_is_served_like_any_model(photo, mldata_root, tmp_path, monkeypatch):
    """A MediaPipe Tasks model through load_predictor, segment_hair(model=...), $HAIRSEG_MODEL and a registry."""
    tflite = mldata_root.parent / "models" / "selfie_segmentation.tflite"
    if not tflite.is_file():
        pytest.skip(f"{tflite} missing")
    from hairseg.baseline import MediaPipeSegmenter

    assert detect_format(tflite) == "mediapipe"
    predictor = load_predictor(tflite)
    assert isinstance(predictor, MediaPipeSegmenter) and isinstance(predictor, Predictor)
    assert predictor.labels == ["selfie"] and predictor.hair_class is None  # no class labelled hair: the last
    prob = predictor.predict_proba(photo)
    assert prob.shape == photo.shape[:2] and 0.05 < (prob > 0.5).mean() < 0.95
    by_model = segment_hair(photo, model=tflite)
    np.testing.assert_array_equal(by_model, postprocess_mask(prob, photo.shape[:2], image=photo))
    monkeypatch.delenv("HAIRSEG_REGISTRY", raising=False)
    monkeypatch.setenv("HAIRSEG_MODEL", str(tflite))
    np.testing.assert_array_equal(segment_hair(photo), by_model)
    monkeypatch.delenv("HAIRSEG_MODEL")
    registry = tmp_path / "model_registry.json"
    append_entry(registry, {"version": "1.0", "base_model": "MediaPipe selfie_segmentation",
                            "tflite_file": str(tflite)})
    monkeypatch.setenv("HAIRSEG_REGISTRY", str(registry))
    assert default_model_path() == tflite.resolve()
    np.testing.assert_array_equal(segment_hair(photo), by_model)
    with pytest.raises(ValueError, match="hair_class=1 is out of range.*1 class"):
        load_predictor(tflite, hair_class=1)


def test_legacy_four_channel_tflite_is_refused_in_one_line(mldata_root, tmp_path):
    """MediaPipe's legacy hair_segmentation.tflite takes RGB + the previous mask (4 channels): refused."""
    tflite = mldata_root.parent / "models" / "selfie_segmentation.tflite"
    if not tflite.is_file():
        pytest.skip(f"{tflite} missing")
    import flatbuffers
    from mediapipe.tasks.metadata import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite.read_bytes(), 0))
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].shape = [1, 512, 512, 4]  # the legacy model's input
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    legacy = tmp_path / "hair_segmentation.tflite"
    legacy.write_bytes(bytes(builder.Output()))
    with pytest.raises(ValueError) as info:
        load_predictor(legacy)
    message = str(info.value)
    assert "\n" not in message and "hair_segmentation.tflite" in message and "4" in message
    assert "supported" in message and "hair_segmenter.tflite" in message

"""hairseg-export --quantize int8 on a briefly trained model, lighter decoders, what the registry serves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hairseg.data import HairSegDataset, find_samples, load_image
from hairseg.export import INT8_IOU_TOLERANCE, serve_choice, shipped_choice
from hairseg.export import main as export_main
from hairseg.inference import OnnxPredictor, TorchPredictor, TorchScriptPredictor, read_onnx_metadata
from hairseg.models import DECODER_CHANNELS, LIGHT_DECODER_CHANNELS, build_model, parse_decoder_channels
from hairseg.registry import VARIANT_FILES, RegistryError, latest_entry, model_file

SIZE = 64
LIGHT = (32, 16, 16, 8, 8)
INT8_VS_FP32_IOU = 0.05
"""The stated tolerance of this test: |pooled IoU int8 - pooled IoU fp32| on the sample's test photos, for a
64 px model trained 30 steps on 8 photos (the issue's 0.01 is for the shipped 384 px model; bench/hairseg_latency.py)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, figaro_root) -> Path:
    """A 64 px MobileNetV2 U-Net with a light decoder, fitted 30 Adam steps on 8 training photos (a few
    seconds): predictions that mean something, so int8 vs fp32 IoU is a real comparison."""
    torch.manual_seed(0)
    cache = tmp_path_factory.mktemp("cache")
    samples = find_samples(figaro_root, "train")[:8]
    ds = HairSegDataset(samples, SIZE, train=False, cache_dir=cache)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.stack([ds[i]["mask"] for i in range(len(ds))])
    model = build_model("mobilenet_v2", decoder_channels=LIGHT)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    torch.save({"model": model.eval().state_dict(), "epoch": 0, "step": 30,
                "config": {"encoder": "mobilenet_v2", "image_size": SIZE, "data": str(figaro_root),
                           "decoder_channels": ",".join(map(str, LIGHT))}}, path)
    return path


def test_int8_export_matches_fp32_and_is_served(tmp_path, trained, figaro_root, capsys):
    out = tmp_path / "models"
    argv = ["--checkpoint", str(trained), "--out", str(out), "--quantize", "int8", "--calibration-images", "4",
            "--eval-limit", "8", "--runs", "1", "--warmup", "0", "--bf16", "on"]
    assert export_main(argv) == 0
    entry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # metrics measured at export on the named split (defaults: the checkpoint's data, test split)
    metrics = entry["metrics"]
    assert metrics["split"] == "test" and metrics["n_images"] == 8 and metrics["data"] == str(figaro_root)
    assert metrics["onnx"]["iou"] > 0.2  # the model learned something: the comparison is not between noise
    assert abs(metrics["onnx_int8"]["iou"] - metrics["onnx"]["iou"]) <= INT8_VS_FP32_IOU
    assert abs(metrics["onnx"]["iou"] - metrics["eager"]["iou"]) < 1e-3
    assert entry["serve"] == serve_choice(metrics)[0] and entry["serve_reason"] == serve_choice(metrics)[1]
    assert "training photos" in entry["int8"]["calibration"]

    # preprocessing and decoder in the entry and in the file
    assert entry["decoder_channels"] == list(LIGHT)
    assert entry["base_model"] == "Unet(mobilenet_v2, decoder_channels=32,16,16,8,8)"
    assert entry["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert entry["preprocessing"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    int8_file = out / entry["onnx_int8_file"]
    session = ort.InferenceSession(str(int8_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "mask"]
    assert read_onnx_metadata(session)["decoder_channels"] == list(LIGHT)

    # int8 outputs: mask = sigmoid(logits); per-pixel agreement with fp32 on held-out photos
    test = find_samples(figaro_root, "test")[:4]
    fp32, int8 = OnnxPredictor(out / entry["onnx_file"]), OnnxPredictor(int8_file)
    batch = np.concatenate([fp32.preprocess(load_image(s.image)) for s in test])
    logits, prob = session.run(None, {"image": batch})
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logits)), atol=1e-5)
    # intra-op threads default to the CPUs this process may use (affinity), graph optimisation to ORT_ENABLE_ALL
    options = fp32.session.get_session_options()
    assert options.intra_op_num_threads == len(os.sched_getaffinity(0))
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    a, b = fp32.predict_logits(batch) > 0, int8.predict_logits(batch) > 0
    assert (a & b).sum() / max(1, (a | b).sum()) > 0.9  # IoU of the two masks

    # the registry hands out the served file
    registry = out / "model_registry.json"
    served = model_file(registry, latest_entry(registry))
    assert served == (int8_file if entry["serve"] == "onnx_int8" else out / entry["onnx_file"]).resolve()
    assert model_file(registry, entry, "onnx_fp32") == (out / entry["onnx_file"]).resolve()
    assert model_file(registry, entry, "onnx_int8") == int8_file.resolve()

    # the bf16 TorchScript archive: float32 in and out, IoU measured, and the shipped variant is the fastest
    # one whose quality held (a float32 file, or a reduced-precision one within 0.01 of eager)
    bf16 = TorchScriptPredictor(out / entry["bf16_file"])
    assert bf16.metadata["precision"] == "bf16" and bf16.predict_logits(batch).dtype == np.float32
    c = bf16.predict_logits(batch) > 0
    assert (a & c).sum() / max(1, (a | c).sum()) > 0.9
    assert abs(metrics["torchscript_bf16"]["iou"] - metrics["eager"]["iou"]) <= INT8_VS_FP32_IOU
    latency = {k: v for k, v in entry["cpu_latency_ms"].items() if k != "eager"}
    assert set(latency) == set(VARIANT_FILES)
    assert (entry["shipped"], entry["shipped_reason"]) == shipped_choice(latency, metrics)
    assert model_file(registry, entry, "shipped") == (out / entry[VARIANT_FILES[entry["shipped"]]]).resolve()


def test_serve_choice_closed_form():
    def m(fp32: float, int8: float) -> dict:
        return {"split": "test", "n_images": 5, "onnx": {"iou": fp32}, "onnx_int8": {"iou": int8}}

    assert serve_choice(m(0.90, 0.90 - INT8_IOU_TOLERANCE + 1e-6))[0] == "onnx_int8"
    assert serve_choice(m(0.90, 0.95))[0] == "onnx_int8"
    choice, why = serve_choice(m(0.90, 0.88))
    assert choice == "onnx" and "drop 0.0200 > 0.01" in why and "test split, 5 photos" in why
    assert serve_choice(None)[0] == "onnx" and serve_choice({"onnx": {"iou": 1.0}})[0] == "onnx"
    with pytest.raises(RegistryError, match="onnx_int8_file"):
        model_file("r.json", {"version": "1.0", "onnx_file": "a.onnx"}, "onnx_int8")
    assert model_file("r.json", {"version": "1.0", "onnx_file": "a.onnx", "serve": "onnx"}).name == "a.onnx"


def test_shipped_choice_closed_form():
    """Fastest eligible variant: float32 files always, int8 / bf16 only with a measured IoU within 0.01 of eager's."""
    ms = {"onnx": 50.0, "torchscript": 40.0, "onnx_int8": 30.0, "torchscript_bf16": 20.0}

    def m(int8: float, bf16: float) -> dict:
        return {"split": "test", "n_images": 5, "eager": {"iou": 0.90}, "onnx_int8": {"iou": int8},
                "torchscript_bf16": {"iou": bf16}}

    assert shipped_choice(ms, m(0.90, 0.90 - INT8_IOU_TOLERANCE + 1e-6))[0] == "torchscript_bf16"
    assert shipped_choice(ms, m(0.90, 0.85))[0] == "onnx_int8"
    choice, why = shipped_choice(ms, m(0.85, 0.85))
    assert choice == "torchscript" and "40.0 ms" in why
    assert shipped_choice(ms, None)[0] == "torchscript"  # nothing measured: no reduced precision
    assert shipped_choice({"onnx": 5.0, "torchscript_bf16": 1.0}, {"eager": {"iou": 0.9}})[0] == "onnx"
    with pytest.raises(ValueError, match="no float32 variant"):
        shipped_choice({"onnx_int8": 1.0}, m(0.9, 0.9))
    # entries written before "shipped" existed are served their ONNX file
    assert model_file("r.json", {"version": "1.0", "onnx_file": "a.onnx", "serve": "onnx"}, "shipped").name == "a.onnx"
    assert model_file("r.json", {"version": "1.0", "onnx_file": "a.onnx", "file": "a.pt", "bf16_file": "a.bf16.pt",
                                 "shipped": "torchscript_bf16"}, "shipped").name == "a.bf16.pt"


def test_bf16_torchscript_archive_matches_eager_within_bf16_rounding(tmp_path):
    """``export_torchscript(precision="bf16")`` (new in issue 12: the old function took no precision) writes a
    channels-last bf16 network behind a float32 interface; logits agree with fp32 up to bf16 rounding."""
    from hairseg.export import export_torchscript

    torch.manual_seed(0)
    model = build_model("mobilenet_v2", decoder_channels=LIGHT).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    for precision, atol in (("fp32", 1e-4), ("bf16", 0.25)):
        path = tmp_path / f"m.{precision}.pt"
        export_torchscript(model, path, {"image_size": SIZE}, x[:1], precision=precision)
        got = TorchScriptPredictor(path).predict_logits(x.numpy())
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=atol * max(1.0, float(np.abs(ref).max())))
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not cast
    with pytest.raises(ValueError, match="precision"):
        export_torchscript(model, tmp_path / "x.pt", {}, x[:1], precision="fp16")


def test_decoder_channels_parse_build_and_reload(tmp_path):
    assert parse_decoder_channels(None) == parse_decoder_channels("default") == DECODER_CHANNELS
    assert parse_decoder_channels("light") == LIGHT_DECODER_CHANNELS
    assert parse_decoder_channels("64, 32,16,16,8") == parse_decoder_channels([64, 32, 16, 16, 8]) == (64, 32, 16, 16, 8)
    for bad in ("64,32", "64,32,16,16,0", "a,b,c,d,e", [1, 2, 3]):
        with pytest.raises(ValueError, match="5 positive integers"):
            parse_decoder_channels(bad)
    model = build_model("mobilenet_v2", decoder_channels=LIGHT).eval()
    assert model.decoder.blocks[0].conv2[0].out_channels == LIGHT[0]
    assert model.segmentation_head[0].in_channels == LIGHT[-1]
    x = torch.randn(1, 3, SIZE, SIZE)
    path = tmp_path / "light.pt"
    torch.save({"model": model.state_dict(), "config": {"encoder": "mobilenet_v2", "image_size": SIZE,
                                                        "decoder_channels": "32,16,16,8,8"}}, path)
    with torch.no_grad():
        np.testing.assert_allclose(TorchPredictor(path).predict_logits(x.numpy()), model(x).numpy(), atol=1e-5)


def test_bad_quantize_and_decoder_flags_are_one_line(tmp_path, capsys):
    from hairseg.train import main as train_main

    assert export_main(["--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path), "--quantize", "fp16"]) == 2
    assert "--quantize" in capsys.readouterr().err
    assert train_main(["--decoder-channels", "64,32", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--decoder-channels" in err and "Traceback" not in err

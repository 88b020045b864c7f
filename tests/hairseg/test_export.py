"""hairseg-export (TorchScript + ONNX, parity, registry) and hairseg.registry."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hairseg.data import find_samples
from hairseg.export import main as export_main
from hairseg.inference import OnnxPredictor, read_onnx_metadata
from hairseg.models import build_model
from hairseg.registry import (
    RegistryError,
    append_entry,
    latest_entry,
    list_entries,
    model_file,
    next_version,
    parse_version,
    read_registry,
)

SIZE = 64
FAST = ["--runs", "1", "--warmup", "0", "--bf16", "off"]  # the bf16 archive: test_export_int8.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An mlcore-style best_val_iou.pt of an untrained 64 px mobilenet_v2 U-Net, with validation metrics."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v2").eval()
    path = tmp_path_factory.mktemp("ckpt") / "best_val_iou.pt"
    metrics = {"val_loss": 0.21, "val_iou": 0.91, "val_f1": 0.95, "val_precision": 0.94, "val_recall": 0.96}
    torch.save({"model": model.state_dict(), "metric": "val_iou", "value": 0.91, "metrics": metrics, "epoch": 4,
                "step": 120, "stage": "main",
                "config": {"encoder": "mobilenet_v2", "image_size": SIZE, "data": "/somewhere/figaro1k"}}, path)
    return path


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_two_exports_make_two_registry_entries(tmp_path, checkpoint, figaro_root, capsys):
    out = tmp_path / "models"
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(out), *FAST]) == 0
    first = _last_json(capsys)
    photo = find_samples(figaro_root, "all")[0].image
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(out), "--sample-image", str(photo), *FAST]) == 0
    second = _last_json(capsys)

    assert (first["version"], second["version"]) == ("1.0", "1.1")
    for entry in (first, second):
        v = entry["version"]
        assert entry["file"] == f"hair_segmenter_v{v}.pt" and entry["onnx_file"] == f"hair_segmenter_v{v}.onnx"
        assert (out / entry["file"]).is_file() and (out / entry["onnx_file"]).is_file()
        assert entry["size_mb"] == round((out / entry["file"]).stat().st_size / 1e6, 2) > 1.0
        assert entry["base_model"] == "Unet(mobilenet_v2)" and entry["dataset"] == "figaro1k"
        assert entry["image_size"] == SIZE and entry["torchscript_method"] == "script" and entry["opset"] == 17
        # metrics are measured at export (none here: the checkpoint's data folder does not exist), never
        # copied from the checkpoint; the checkpoint's own val figures stay under "checkpoint"
        assert entry["metrics"] is None
        assert entry["checkpoint"]["metrics"]["val_iou"] == 0.91
        assert entry["onnx_outputs"] == ["logits", "mask"]
        assert entry["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
        assert set(entry["cpu_latency_ms"]) == {"eager", "torchscript", "onnx"}
        assert all(ms > 0 for ms in entry["cpu_latency_ms"].values())
        assert set(entry["parity_max_abs_diff"]) == {"torchscript", "onnx"}
        assert all(0 <= d < 1e-4 for d in entry["parity_max_abs_diff"].values())
        assert datetime.strptime(entry["created_at"], "%Y-%m-%dT%H:%M:%SZ")
        assert entry["checkpoint"]["monitor"] == {"val_iou": 0.91} and entry["checkpoint"]["epoch"] == 4
    assert first["parity_input"] == "uniform noise (seed 0)"
    assert second["parity_input"] == f"{photo.name} (+ mirrored)"

    registry = out / "model_registry.json"
    assert [e["version"] for e in list_entries(registry)] == ["1.0", "1.1"]
    assert list_entries(registry)[1] == second
    assert latest_entry(registry)["version"] == "1.1"
    assert sorted(p.name for p in out.iterdir()) == [  # no temporary files left behind
        "hair_segmenter_v1.0.onnx", "hair_segmenter_v1.0.pt", "hair_segmenter_v1.1.onnx", "hair_segmenter_v1.1.pt",
        "model_registry.json"]

    # The ONNX file has a dynamic batch axis and its metadata; batch 3 matches eager PyTorch.
    session = ort.InferenceSession(str(out / second["onnx_file"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits", "mask"]
    meta = read_onnx_metadata(session)
    assert meta["image_size"] == SIZE and meta["version"] == "1.1" and meta["encoder"] == "mobilenet_v2"
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    got, prob = session.run(None, {"image": x.numpy()})
    model = build_model("mobilenet_v2", weights=checkpoint).eval()
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (3, 1, SIZE, SIZE) and np.abs(got - ref).max() < 1e-4
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-got)), atol=1e-6)


def test_int8_export_and_metrics_measured_on_the_test_split(tmp_path, checkpoint, figaro_root, capsys):
    out = tmp_path / "models"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--data", str(figaro_root), "--quantize",
            "--calibration-images", "2", "--eval-limit", "2", *FAST]
    assert export_main(argv) == 0
    entry = _last_json(capsys)
    assert (out / entry["onnx_int8_file"]).is_file() and entry["onnx_int8_file"].endswith(".int8.onnx")
    assert set(entry["cpu_latency_ms"]) == {"eager", "torchscript", "onnx", "onnx_int8"}
    metrics = entry["metrics"]
    assert metrics["split"] == "test" and metrics["n_images"] == 2 and metrics["data"] == str(figaro_root)
    test_names = {s.image for s in find_samples(figaro_root, "test")}
    assert test_names.isdisjoint(s.image for s in find_samples(figaro_root, "train"))
    for key in ("eager", "onnx", "onnx_int8"):  # TorchScript fp32: parity with eager checked, not re-scored
        assert 0 <= metrics[key]["iou"] <= 1
    assert abs(metrics["onnx"]["iou"] - metrics["eager"]["iou"]) < 1e-3
    session = ort.InferenceSession(str(out / entry["onnx_int8_file"]), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(out / entry["onnx_int8_file"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert [o.name for o in session.get_outputs()] == ["logits", "mask"]
    assert read_onnx_metadata(session)["image_size"] == SIZE
    assert export_main([*argv[:4], "--eval-limit", "0"]) == 2
    assert "--eval-limit" in _one_error_line(capsys, "hairseg-export")


def test_explicit_version_custom_registry_and_duplicates(tmp_path, checkpoint, capsys):
    out, registry = tmp_path / "models", tmp_path / "reg" / "model_registry.json"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--registry", str(registry), "--name", "hs", *FAST]
    assert export_main([*argv, "--version", "2.3"]) == 0
    entry = _last_json(capsys)
    assert entry["version"] == "2.3" and entry["file"] == "../models/hs_v2.3.pt"
    assert model_file(registry, entry, "torchscript") == (out / "hs_v2.3.pt").resolve()
    assert export_main([*argv, "--version", "2.3"]) == 1
    assert "version 2.3 already exists" in _one_error_line(capsys, "hairseg-export")
    assert export_main([*argv, "--version", "two"]) == 2
    assert "--version" in _one_error_line(capsys, "hairseg-export")
    assert export_main([*argv, "--opset", "11"]) == 2
    assert "--opset must be >= 13" in _one_error_line(capsys, "hairseg-export")


def test_failed_parity_exits_1_and_publishes_nothing(tmp_path, checkpoint, capsys, monkeypatch):
    original = OnnxPredictor.predict_logits
    monkeypatch.setattr(OnnxPredictor, "predict_logits", lambda self, batch: original(self, batch) + 0.01)
    out = tmp_path / "models"
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(out), *FAST]) == 1
    line = _one_error_line(capsys, "hairseg-export")
    assert "parity check failed" in line and "onnx 0.01" in line and "torchscript" not in line
    assert list(out.iterdir()) == []


def test_bad_checkpoint_errors(tmp_path, capsys):
    assert export_main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 1
    assert "missing.pt" in _one_error_line(capsys, "hairseg-export")
    bare = tmp_path / "bare.pt"
    torch.save({"model": build_model("mobilenet_v2").state_dict()}, bare)
    assert export_main(["--checkpoint", str(bare), "--out", str(tmp_path)]) == 1
    assert "bare.pt" in _one_error_line(capsys, "hairseg-export")
    assert export_main(["--out", str(tmp_path)]) == 2
    assert "--checkpoint" in _one_error_line(capsys, "hairseg-export")


def test_registry_helpers(tmp_path):
    registry = tmp_path / "model_registry.json"
    assert read_registry(registry) == {} and latest_entry(registry) is None and next_version([]) == "1.0"
    assert parse_version("1.10") == (1, 10) > parse_version("1.9")
    assert next_version([{"version": "1.9"}, {"version": "1.10"}, {"version": "0.4"}]) == "1.11"
    with pytest.raises(RegistryError, match="'v1'"):
        parse_version("v1")
    registry.write_text(json.dumps({"other_model": {"version": "3.0"}}))
    append_entry(registry, {"version": "1.0", "file": "a.pt"})
    append_entry(registry, {"version": "1.1", "file": "b.pt"})
    data = json.loads(registry.read_text())
    assert data["other_model"] == {"version": "3.0"}  # other families are kept
    assert [e["file"] for e in data["hair_segmenter"]] == ["a.pt", "b.pt"]
    with pytest.raises(RegistryError, match="1.1 already exists"):
        append_entry(registry, {"version": "1.1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_registry.json"]  # atomic: no temp files left
    registry.write_text("{not json")
    with pytest.raises(RegistryError, match="model_registry.json"):
        list_entries(registry)
    registry.write_text(json.dumps({"hair_segmenter": {"version": "1.0"}}))
    with pytest.raises(RegistryError, match="must be a list"):
        latest_entry(registry)

"""hairseg-predict on real Figaro-1k photos with each model format; its error exits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hairseg.data import find_samples, load_image, preprocess_image
from hairseg.export import export_onnx, export_torchscript, metadata_for
from hairseg.inference import load_predictor, segment_hair
from hairseg.models import build_model
from hairseg.predict import main as predict_main
from hairseg.recolor import HAIR_COLORS, recolor_hair
from hairseg.viz import overlay

SIZE = 64


@pytest.fixture(scope="module")
def photos(figaro_root) -> list[Path]:
    """Two real Figaro-1k photos (385x512 and 385x512 px)."""
    return [s.image for s in find_samples(figaro_root, "all")[:2]]


@pytest.fixture(scope="module")
def models(tmp_path_factory, photos) -> dict[str, Path]:
    """An untrained 64 px U-Net as checkpoint, TorchScript and ONNX; head bias set so ~half is "hair"."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = build_model("mobilenet_v2").eval()
    x = preprocess_image(load_image(photos[0]), SIZE)
    with torch.no_grad():
        model.segmentation_head[0].bias -= model(x).median()
    paths = {"checkpoint": folder / "tiny.pt", "torchscript": folder / "tiny_ts.pt", "onnx": folder / "tiny.onnx"}
    torch.save({"model": model.state_dict(), "config": {"encoder": "mobilenet_v2", "image_size": SIZE}},
               paths["checkpoint"])
    meta = metadata_for("mobilenet_v2", SIZE, "0.1")
    export_torchscript(model, paths["torchscript"], meta, x)
    export_onnx(model, paths["onnx"], meta, x)
    return paths


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("hairseg-predict: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("fmt", ["checkpoint", "torchscript", "onnx"])
def test_writes_mask_overlay_and_recolour(fmt, models, photos, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*map(str, photos), "--out", str(out), "--model", str(models[fmt]), "--color", "blonde", "--strength", "0.8"]
    assert predict_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 2 and summary["color"] == "blonde" and summary["predictor"].startswith(
        {"checkpoint": "torch:", "torchscript": "torchscript:", "onnx": "onnx:"}[fmt])
    predictor = load_predictor(models[fmt])
    for photo_path in photos:
        stem = photo_path.stem
        assert sorted(p.name for p in out.glob(f"{stem}_*")) == sorted(
            [f"{stem}_mask.png", f"{stem}_overlay.png", f"{stem}_blonde.png"])
        photo = load_image(photo_path)
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == photo.shape[:2] and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, segment_hair(photo, predictor))
        # soft alpha: the untrained model's probability (about 0.5 where "hair") is kept, not cut at 0.5
        assert 0.05 < (mask >= 100).mean() < 0.95 and (mask == 0).any()
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{stem}_overlay.png")), overlay(photo, mask))
        recoloured = np.asarray(Image.open(out / f"{stem}_blonde.png"))
        np.testing.assert_array_equal(recoloured, recolor_hair(photo, mask, "blonde", 0.8))
        assert (recoloured[mask == 0] == photo[mask == 0]).all()
        assert (recoloured[mask >= 100] != photo[mask >= 100]).any()


def test_unknown_colour_exits_2_listing_the_palette(models, photos, tmp_path, capsys):
    code = predict_main([str(photos[0]), "--out", str(tmp_path), "--model", str(models["onnx"]), "--color", "green"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "'green'" in line and all(name in line for name in HAIR_COLORS) and len(HAIR_COLORS) == 10
    assert "--color" in line and "#b08d57" in line
    assert list(tmp_path.iterdir()) == []


def test_missing_or_unreadable_image_exits_1_naming_it(models, photos, tmp_path, capsys):
    missing = tmp_path / "nope.jpg"
    assert predict_main([str(photos[0]), str(missing), "--out", str(tmp_path / "o"),
                         "--model", str(models["onnx"])]) == 1
    assert "nope.jpg" in _one_error_line(capsys)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert predict_main([str(broken), "--out", str(tmp_path / "o"), "--model", str(models["onnx"])]) == 1
    line = _one_error_line(capsys)
    assert "cannot read image" in line and "broken.jpg" in line


def test_model_errors_exit_1(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HAIRSEG_MODEL", raising=False)
    monkeypatch.delenv("HAIRSEG_REGISTRY", raising=False)
    assert predict_main([str(photos[0]), "--out", str(tmp_path)]) == 1
    assert "HAIRSEG_MODEL" in _one_error_line(capsys)
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("no model here")
    assert predict_main([str(photos[0]), "--out", str(tmp_path), "--model", str(bogus)]) == 1
    assert "bogus.pt" in _one_error_line(capsys)
    assert predict_main(["--out", str(tmp_path)]) == 2
    assert "IMAGE" in _one_error_line(capsys)


def test_given_mask_any_case_name_or_hex_colour(photos, figaro_root, tmp_path, capsys):
    """--mask MASK: the user's mask (here Figaro-1k's own) instead of a model; --color by hex or any case."""
    photo = photos[0]
    gt = figaro_root / "Figaro1k" / "GT" / "Training" / (photo.stem.replace("-org", "") + "-gt.pbm")
    out = tmp_path / "out"
    assert predict_main([str(photo), "--mask", str(gt), "--color", "#B08D57", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["predictor"] == "mask files" and summary["color"] == "b08d57"
    image = load_image(photo)
    recoloured = np.asarray(Image.open(out / f"{photo.stem}_b08d57.png"))
    mask = np.asarray(Image.open(out / f"{photo.stem}_mask.png"))
    hair = np.asarray(Image.open(gt)) > 0
    assert (mask[hair] > 128).mean() > 0.95 and (mask[~hair] > 128).mean() < 0.01
    np.testing.assert_array_equal(recoloured, recolor_hair(image, mask, "#b08d57"))
    assert predict_main([str(photo), "--mask", str(gt), "--color", "BLONDE", "--out", str(out)]) == 0
    assert (out / f"{photo.stem}_blonde.png").is_file()
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    assert predict_main([str(photo), "--mask", str(small), "--out", str(out)]) == 1
    line = _one_error_line(capsys)
    assert "small.png" in line and "10x10" in line


def test_palette_sheet(photos, figaro_root, tmp_path, capsys):
    photo = photos[0]
    gt = figaro_root / "Figaro1k" / "GT" / "Training" / (photo.stem.replace("-org", "") + "-gt.pbm")
    sheet = tmp_path / "sheet.png"
    assert predict_main([str(photo), "--mask", str(gt), "--palette-sheet", str(sheet)]) == 0
    image = np.asarray(Image.open(sheet))
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # 5 tiles wide, 2 high
    assert predict_main([str(photo), str(photos[1]), "--palette-sheet", str(sheet)]) == 2
    assert "exactly one IMAGE" in _one_error_line(capsys)


def test_sideways_exif_photo_comes_out_upright(models, photos, tmp_path):
    """A photo stored sideways with EXIF orientation 6: every output has the displayed (upright) size."""
    upright = load_image(photos[0])  # 385 wide x 512 high
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what a phone writes: rotated, tagged 6
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as im:
        assert im.size == (512, 385)  # stored sideways
    out = tmp_path / "out"
    assert predict_main([str(path), "--model", str(models["onnx"]), "--color", "red", "--out", str(out)]) == 0
    for name in ("phone_mask.png", "phone_overlay.png", "phone_red.png"):
        with Image.open(out / name) as im:
            assert im.size == (385, 512)
    written = np.asarray(Image.open(out / "phone_overlay.png")).astype(int)
    assert np.abs(written - overlay(upright, np.asarray(Image.open(out / "phone_mask.png")))).mean() < 3


def test_video_is_recoloured_frame_by_frame(mldata_root, tmp_path, capsys):
    import av

    clip = mldata_root / "videos" / "clips" / "chaplin.mp4"
    model = mldata_root.parent / "models" / "selfie_segmentation.tflite"
    if not clip.is_file() or not model.is_file():
        pytest.skip("sample clip or selfie_segmentation.tflite missing")
    out = tmp_path / "out.mp4"
    argv = [str(clip), "--model", str(model), "--color", "blue", "--out", str(out), "--max-frames", "6"]
    assert predict_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 6 and summary["frames_per_s"] > 0
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (360, 640, 3)
    assert predict_main([str(clip), "--model", str(model), "--out", str(tmp_path / "dir")]) == 2
    assert "video file" in _one_error_line(capsys)


def test_mediapipe_tflite_writes_mask_overlay_and_recolour(mldata_root, photos, tmp_path, capsys):
    """The issue's bar: hairseg-predict --model FILE.tflite (a MediaPipe Tasks model) writes all three PNGs."""
    model = mldata_root.parent / "models" / "selfie_segmentation.tflite"
    if not model.is_file():
        pytest.skip(f"{model} missing")
    out = tmp_path / "out"
    assert predict_main([str(photos[0]), "--model", str(model), "--color", "Platinum", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["predictor"] == "mediapipe:selfie_segmentation.tflite" and summary["color"] == "platinum"
    photo = load_image(photos[0])
    for name in ("mask", "overlay", "platinum"):
        with Image.open(out / f"{photos[0].stem}_{name}.png") as im:
            assert im.size == (photo.shape[1], photo.shape[0])
    mask = np.asarray(Image.open(out / f"{photos[0].stem}_mask.png"))
    assert 0.05 < (mask > 128).mean() < 0.95
    assert predict_main([str(photos[0]), "--model", str(model), "--hair-class", "3", "--out", str(out)]) == 1
    line = _one_error_line(capsys)
    assert "hair_class=3 is out of range" in line and "selfie_segmentation.tflite" in line

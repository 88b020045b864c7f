"""roofseg commands end to end on tiny settings: train (outlines, multi), eval, predict, agreement,
data, SageMaker environment, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from PIL import Image

from roofseg import agreement as agreement_mod
from roofseg.data.rid import load_footprints
from roofseg.datasets import REGISTRY
from roofseg.datasets import main as data_main
from roofseg.eval import main as eval_main
from roofseg.predict import main as predict_main
from roofseg.predict import to_geojson, vectorize_lines
from roofseg.sagemaker import sagemaker_args
from roofseg.train import main as train_main

TINY = ["--image-size", "64", "--batch-size", "8", "--epochs", "1", "--num-workers", "0",
        "--no-pretrained", "--examples", "1", "--warmup-steps", "0"]


@pytest.fixture(scope="module")
def outline_run(tmp_path_factory, rid_root):
    out = tmp_path_factory.mktemp("run") / "outlines"
    assert train_main(["--data", str(rid_root), "--task", "outlines", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_the_run_directory(outline_run, capsys):
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "split.json", "checkpoints/last.pt",
                 "checkpoints/best_val_outline_iou.pt", "val_examples.png"):
        assert (outline_run / name).is_file(), name
    summary = json.loads((outline_run / "summary.json").read_text())
    # 20 sample tiles in 18 groups of overlapping footprints: 12 train, 4 val (selects), 4 test (reported)
    assert summary["task"] == "outlines" and summary["data"]["train"] == 12 and summary["data"]["val"] == 4
    assert summary["data"]["test"] == 4 and 0.0 <= summary["test"]["outline_iou"] <= 1.0
    assert 0.0 <= summary["best"]["val_outline_iou"]["value"] <= 1.0
    # val selects, test reports: the test figure is the val-selected checkpoint's, and the test split
    # is never evaluated during training (no max over epochs of the reported set)
    assert summary["test"]["checkpoint"] == "best_val_outline_iou.pt"
    splits = {json.loads(r)["split"] for r in (outline_run / "metrics.jsonl").read_text().splitlines()}
    assert "test" not in splits and "val" in splits


def test_eval_prints_json_with_agreement(outline_run, rid_root, capsys, tmp_path):
    assert eval_main(["--checkpoint", str(outline_run / "checkpoints/last.pt"), "--data", str(rid_root),
                      "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_samples"] == 4 and "outline_iou" in result and "outline_boundary_f1" in result
    assert 0.9 < result["agreement"]["outline_iou"]["labelers"] <= 1.0
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "eval_examples.png").is_file()


def test_predict_writes_pngs_and_lonlat_geojson(outline_run, rid_root, tmp_path, capsys):
    tile = rid_root / "images" / "1011.png"
    assert predict_main([str(tile), "--checkpoint", str(outline_run / "checkpoints/last.pt"), "--out",
                         str(tmp_path)]) == 0
    assert (tmp_path / "1011_outline.png").is_file() and (tmp_path / "1011_outline_mask.png").is_file()
    raw = np.asarray(Image.open(tmp_path / "1011_outline_mask.png"))
    assert raw.shape == (512, 512) and set(np.unique(raw).tolist()) <= {0, 1}  # RID convention: 0 = roof
    gj = json.loads((tmp_path / "1011.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["properties"]["coordinates"] == "lonlat"
    lon0, lat0, lon1, lat1 = load_footprints(rid_root / "vector_labels" / "image_boundaries.csv")["1011"]
    assert gj["features"]
    for f in gj["features"]:  # the bar: every geometry valid, lon/lat inside the tile's footprint
        g = shapely.geometry.shape(f["geometry"])
        assert g.is_valid and not g.is_empty
        x0, y0, x1, y1 = g.bounds
        assert lon0 - 1e-9 <= x0 <= x1 <= lon1 + 1e-9 and lat0 - 1e-9 <= y0 <= y1 <= lat1 + 1e-9
    assert (tmp_path / "1011.gpkg").is_file() and (tmp_path / "1011_outline_mask.tif").is_file()
    import rasterio

    with rasterio.open(tmp_path / "1011_outline_mask.tif") as src:
        assert src.crs.to_epsg() == 4326 and src.bounds.left == pytest.approx(lon0)
        assert (src.read(1) == raw).all()
    # without a footprint: pixel coordinates in NAME.pixels.json, no GeoJSON pretending to be WGS84
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "x.png").write_bytes(tile.read_bytes())
    assert predict_main([str(lone / "x.png"), "--checkpoint", str(outline_run / "checkpoints/last.pt"), "--out",
                         str(tmp_path / "o2")]) == 0
    assert not (tmp_path / "o2" / "x.geojson").exists()
    px = json.loads((tmp_path / "o2" / "x.pixels.json").read_text())
    assert px["properties"]["coordinates"] == "pixel"


def test_geojson_segments_carry_azimuth_and_lines_are_vectorized():
    h = w = 64
    seg = np.zeros((6, h, w), np.float32)
    seg[5] = 1
    seg[5, 10:30, 10:30], seg[1, 10:30, 10:30] = 0, 1  # an east-facing segment (4-sector scheme)
    lines = np.zeros((3, h, w), np.float32)
    lines[0, 40, 5:60] = 1
    gj = to_geojson({"segments": seg, "lines": lines}, 4)
    kinds = [f["properties"] for f in gj["features"]]
    assert {"kind": "roof_segment", "azimuth_class": "E", "class_index": 1} in kinds
    segs = vectorize_lines(lines[0])
    assert len(segs) >= 1 and abs(segs[0, 0, 1] - 40) <= 1 and abs(segs[0, 1, 1] - 40) <= 1
    assert any(p["kind"] == "roof_line" and p["line_type"] == "inner" for p in kinds)
    assert gj["properties"]["coordinates"] == "pixel"


def test_multi_task_trains_on_mixed_sources(mldata_root, tmp_path):
    out = tmp_path / "multi"
    assert train_main(["--data", str(mldata_root), "--task", "multi", "--sectors", "4", "--lines-limit", "4",
                       "--sources", "rid,solarnet,roof_lines", "--out", str(out), *TINY]) == 0
    row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "val"][-1]
    for key in ("outline_iou", "superstructures_miou", "segments_miou", "line_f1", "junction_f1"):
        assert key in row, key


def test_sagemaker_environment(rid_root, tmp_path, monkeypatch, capsys):
    cfg_dir, model_dir, out_dir = tmp_path / "config", tmp_path / "model", tmp_path / "output"
    cfg_dir.mkdir()
    (cfg_dir / "hyperparameters.json").write_text(json.dumps({
        "task": '"outlines"', "image-size": "64", "batch_size": "4", "epochs": "1", "max_steps": "1",
        "num_workers": "0", "pretrained": "false", "examples": "0", "sagemaker_program": '"train.py"'}))
    env = {"SM_CHANNEL_TRAIN": str(rid_root), "SM_MODEL_DIR": str(model_dir), "SM_OUTPUT_DATA_DIR": str(out_dir),
           "SM_NUM_GPUS": "0", "SM_INPUT_CONFIG_DIR": str(cfg_dir)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = sagemaker_args()
    assert args[:2] == ["--data", str(rid_root)] and "--no-pretrained" in args and "--device" in args
    assert "--sagemaker-program" not in args
    assert train_main([]) == 0
    assert (out_dir / "run" / "summary.json").is_file()
    assert (model_dir / "model.pt").is_file() and (model_dir / "config.yaml").is_file()
    (cfg_dir / "hyperparameters.json").write_text("[1, 2]")
    assert train_main([]) == 2
    assert "hyperparameters.json" in capsys.readouterr().err


def test_bad_input_is_one_line(tmp_path, rid_root, capsys):
    assert train_main(["--data", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert train_main(["--data", str(rid_root), "--image-size", "65"]) == 2
    assert "--image-size" in capsys.readouterr().err
    assert train_main(["--data", str(tmp_path), "--out", str(tmp_path / "r"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "roofseg-train: error:" in err and err.strip().count("\n") == 0
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert predict_main([str(bad), "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 1


def test_agreement_closed_form(tmp_path, capsys):
    root = tmp_path / "rid"
    (root / "images").mkdir(parents=True)
    (root / "masks_superstructures_reviewed").mkdir()
    (root / "annotation_experiment" / "masks_superstructures").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "7.png")
    base = np.full((4, 4), 8, np.uint8)
    a, b = base.copy(), base.copy()
    a[0, :2] = 1            # labeler 1: 2 dormer pixels
    b[0, :4] = 1            # labeler 2: 4 dormer pixels, 2 shared
    Image.fromarray(b).save(root / "masks_superstructures_reviewed" / "7.png")
    Image.fromarray(a).save(root / "annotation_experiment" / "masks_superstructures" / "7_labeler1.png")
    Image.fromarray(b).save(root / "annotation_experiment" / "masks_superstructures" / "7_labeler2.png")
    res = agreement_mod.agreement(root)
    assert res["pairwise"]["dormer"]["mean"] == pytest.approx(0.5)
    assert res["vs_reviewed"]["dormer"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert res["pairwise"]["background"]["mean"] == pytest.approx(12 / 14)
    assert agreement_mod.main(["--data", str(root)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["labelers"] == [1, 2]


def test_data_cli_lists_rid_and_rejects_unknown(capsys):
    assert "rid" in REGISTRY
    assert data_main(["list"]) == 0
    assert "rid" in capsys.readouterr().out
    assert data_main(["download", "nope", "--to", "/tmp/x"]) == 2


@pytest.mark.parametrize("preset,size,batch", [("minimal", 512, 2), ("full", 1024, 16), ("cpu", 256, 4)])
def test_presets_parse(preset, size, batch, rid_root):
    from mlcore.cli import parse_config
    from roofseg.config import RoofSegConfig

    cfg = parse_config(RoofSegConfig, ["--config", preset, "--data", str(rid_root)], prog="roofseg-train",
                       presets_package="roofseg")
    assert (cfg.image_size, cfg.batch_size) == (size, batch)
    assert cfg.monitor == "val_outline_iou" and cfg.monitor_mode == "max"
    if preset == "minimal":
        assert cfg.max_samples == 10 and cfg.num_workers == 2


def test_cpu_superstructures_preset_trains_superstructures_at_native_resolution(rid_root):
    """The preset behind the superstructure figure in bench/RESULTS.md: native-resolution crops (crop = image
    size), class-balanced crops and class weights, selected on val mIoU."""
    from mlcore.cli import parse_config
    from roofseg.config import RoofSegConfig

    cfg = parse_config(RoofSegConfig, ["--config", "cpu_superstructures", "--data", str(rid_root)],
                       prog="roofseg-train", presets_package="roofseg")
    assert cfg.task == "superstructures" and cfg.crop_size == cfg.image_size == 256
    assert cfg.superstructure_crops == 0.8 and cfg.sup_class_weights == "auto"
    assert cfg.monitor == "val_superstructures_miou" and cfg.monitor_mode == "max"


def test_corrupt_tile_stops_with_one_line_naming_it(tmp_path, capsys):
    root = tmp_path / "airs"
    for d in ("image", "label"):
        (root / d).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "image" / f"t{i}.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "label" / f"t{i}.png")
    (root / "image" / "t1.png").write_bytes(b"garbage")
    code = train_main(["--data", str(root), "--out", str(tmp_path / "r"), "--val-fraction", "0.25",
                       *TINY[:7], "1", *TINY[8:]])  # one loader worker: the error crosses a process
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "t1.png" in err[-1] and err[-1].startswith("roofseg-train: error:")


def test_weights_loads_matching_tensors_across_tasks(outline_run, rid_root, tmp_path, capsys):
    """--weights from an outline run into a superstructure model: encoder and decoder load, the
    outline head is listed as skipped; a file with nothing matching or zero bytes is one line."""
    out = tmp_path / "sup"
    assert train_main(["--data", str(rid_root), "--task", "superstructures", "--out", str(out), "--weights",
                       str(outline_run / "checkpoints/last.pt"), "--max-steps", "1", *TINY]) == 0
    rep = json.loads((out / "summary.json").read_text())["weights"]
    assert rep["loaded"] > 100 and any(s.startswith("heads.outline.") for s in rep["skipped"])
    assert all(k.startswith("heads.superstructures.") for k in rep["not_initialised"])
    test = json.loads((out / "summary.json").read_text())["test"]  # per-class IoU beside the annotators, on test
    assert test["agreement"]["tiles"] and test["agreement"]["classes"]["pvmodule"]["labelers"] is not None
    import torch

    torch.save({"model": {"foo.weight": torch.zeros(3)}}, tmp_path / "other.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    for bad in ("other.pt", "empty.pt"):
        capsys.readouterr()
        assert train_main(["--data", str(rid_root), "--out", str(tmp_path / "r"), "--weights", str(tmp_path / bad),
                           *TINY]) == 1
        err = capsys.readouterr().err
        lines = [ln for ln in err.strip().splitlines() if " INFO " not in ln and " WARNING " not in ln]
        assert len(lines) == 1 and bad in lines[0] and "Traceback" not in err


def test_untrained_heads_are_not_emitted(rid_root, tmp_path):
    """A multi-task model trained on RID alone has no roof-line labels: predict writes no lines."""
    out = tmp_path / "multi"
    assert train_main(["--data", str(rid_root), "--task", "multi", "--sectors", "4", "--out", str(out),
                       "--max-steps", "1", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "lines" not in summary["trained_heads"] and "outline" in summary["trained_heads"]
    assert predict_main([str(rid_root / "images" / "1011.png"), "--checkpoint", str(out / "checkpoints/last.pt"),
                         "--out", str(tmp_path / "p")]) == 0
    assert not (tmp_path / "p" / "1011_lines.png").exists() and (tmp_path / "p" / "1011_segments.png").exists()
    kinds = {f["properties"]["kind"] for f in json.loads((tmp_path / "p" / "1011.geojson").read_text())["features"]}
    assert not kinds & {"roof_line", "junction"}


def test_predict_reads_a_geotiff_and_writes_its_crs(outline_run, rid_root, tmp_path):
    """A GeoTIFF tile in EPSG:25832 (0.14 m pixels): masks come back as GeoTIFF with the same transform
    and CRS, the GeoJSON in lon/lat inside the tile, the GeoPackage next to it."""
    import rasterio
    from affine import Affine

    from roofseg.geo import GeoRef, write_geotiff

    rgb = np.asarray(Image.open(rid_root / "images" / "1011.png").convert("RGB"))
    ref = GeoRef(Affine(0.14, 0, 705000.0, 0, -0.14, 5365000.0), "EPSG:25832")
    write_geotiff(tmp_path / "ortho.tif", rgb.transpose(2, 0, 1), ref)
    assert predict_main([str(tmp_path / "ortho.tif"), "--checkpoint", str(outline_run / "checkpoints/last.pt"),
                         "--out", str(tmp_path / "p")]) == 0
    with rasterio.open(tmp_path / "p" / "ortho_outline_mask.tif") as src:
        assert src.crs.to_epsg() == 25832 and src.transform == ref.transform
    lon0, lat0, lon1, lat1 = ref.lonlat_bounds((512, 512))
    gj = json.loads((tmp_path / "p" / "ortho.geojson").read_text())
    for f in gj["features"]:
        g = shapely.geometry.shape(f["geometry"])
        assert g.is_valid and lon0 - 1e-7 <= g.bounds[0] and g.bounds[2] <= lon1 + 1e-7
        assert lat0 - 1e-7 <= g.bounds[1] and g.bounds[3] <= lat1 + 1e-7
    import pyogrio

    layers = {name for name, _ in pyogrio.list_layers(tmp_path / "p" / "ortho.gpkg")}
    assert "roof_outline" in layers
    assert pyogrio.read_info(tmp_path / "p" / "ortho.gpkg", layer="roof_outline")["crs"] == "EPSG:4326"


def test_predict_large_geotiff_by_windows_keeps_transform_and_crs(outline_run, rid_root, tmp_path):
    """A 1,500 px GeoTIFF (tile 1011 mirrored 3 x 3, 0.1 m pixels in EPSG:25832) is predicted with
    512 px windows: the mask GeoTIFF has the source's transform, CRS and size, equals the PNG mask,
    (the figure is drawn at full size below FIGURE_MAX_SIDE; downscaling: test_geo)."""
    import rasterio
    from affine import Affine

    from roofseg.geo import GeoRef, write_geotiff
    from roofseg.predict import FIGURE_MAX_SIDE

    rgb = np.asarray(Image.open(rid_root / "images" / "1011.png").convert("RGB"))
    row = np.concatenate([rgb, rgb[:, ::-1], rgb], 1)
    big = np.ascontiguousarray(np.concatenate([row, row[::-1], row], 0)[:1500, :1500])
    ref = GeoRef(Affine(0.1, 0, 690000.0, 0, -0.1, 5340000.0), "EPSG:25832")
    write_geotiff(tmp_path / "big.tif", big.transpose(2, 0, 1), ref)
    assert predict_main([str(tmp_path / "big.tif"), "--checkpoint", str(outline_run / "checkpoints/last.pt"),
                         "--out", str(tmp_path / "p"), "--window", "512", "--overlap", "0.25"]) == 0
    with rasterio.open(tmp_path / "p" / "big_outline_mask.tif") as src:
        assert src.crs.to_epsg() == 25832 and src.transform == ref.transform
        assert (src.height, src.width) == (1500, 1500) and src.dtypes[0] == "uint8"
        mask = src.read(1)
    assert (mask == np.asarray(Image.open(tmp_path / "p" / "big_outline_mask.png"))).all()
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert FIGURE_MAX_SIDE >= 1500 and Image.open(tmp_path / "p" / "big_outline.png").size == (3000, 1500)

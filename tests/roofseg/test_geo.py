"""Geodata: pixel-edge vectorization, valid RFC 7946 output, GeoTIFF in/out, metric properties,
sliding-window inference."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from affine import Affine

from roofseg.data.rid import SegmentRasterizer, _segments_cached, load_footprints, segment_classes
from roofseg.geo import (
    GeoRef,
    mask_polygons,
    rasterize_polygons,
    read_geotiff,
    segment_azimuth,
    valid_polygons,
    write_geotiff,
)
from roofseg.predict import (
    compact_maps,
    figures,
    junction_points,
    predict_maps,
    predict_tile,
    to_geojson,
    vector_features,
)


def test_mask_polygons_trace_pixel_edges_and_round_trip():
    m = np.zeros((40, 50), bool)
    m[5:15, 20:30] = True  # 10 x 10 px
    (poly,) = mask_polygons(m)
    assert poly.bounds == (20.0, 5.0, 30.0, 15.0) and poly.area == 100.0 and poly.is_valid
    rng = np.random.default_rng(0)
    blob = np.zeros((64, 64), bool)
    for _ in range(6):
        y, x, r = rng.integers(10, 54), rng.integers(10, 54), rng.integers(3, 9)
        yy, xx = np.mgrid[:64, :64]
        blob |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    back = rasterize_polygons(((p, 1) for p in mask_polygons(blob, min_area=0)), blob.shape, 0)
    assert (back.astype(bool) == blob).all()


def test_valid_polygons_repairs_a_bowtie_and_orients_ccw():
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    assert not bowtie.is_valid
    parts = valid_polygons(bowtie)
    assert parts and all(p.is_valid and p.exterior.is_ccw for p in parts)
    assert sum(p.area for p in parts) == pytest.approx(2.0)


def test_geotiff_round_trip_keeps_transform_and_crs(tmp_path):
    ref = GeoRef(Affine(0.1, 0, 690000.0, 0, -0.1, 5365000.0), "EPSG:25832")
    rgb = np.random.default_rng(1).integers(0, 255, (3, 30, 40), dtype=np.uint8)
    write_geotiff(tmp_path / "t.tif", rgb, ref)
    img, back = read_geotiff(tmp_path / "t.tif")
    assert img.shape == (30, 40, 3) and (img == rgb.transpose(1, 2, 0)).all()
    assert back.transform == ref.transform and back.crs == "EPSG:25832"
    # 10 x 10 px at 0.1 m = 1 m2
    assert ref.to_metric(shapely.box(0, 0, 10, 10)).area == pytest.approx(1.0)


@pytest.mark.parametrize("prior,expected", [(0.0, 0.0), (180.0, 180.0)])
def test_segment_azimuth_is_normal_to_the_eave(prior, expected):
    eave_east_west = shapely.box(0, 0, 10, 3)  # metres, x east, y north
    az = segment_azimuth(eave_east_west, prior)
    assert abs((az - expected + 180) % 360 - 180) < 1e-6


class _PointwiseModel(torch.nn.Module):
    """Outline logit = a fixed function of each pixel: sliding windows must reproduce it exactly."""

    def forward(self, x):
        return {"outline": (x[:, :1] * 2.0 - x[:, 1:2])}


def test_sliding_window_blends_without_seams():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (1100, 1500, 3), dtype=np.uint8)
    model = _PointwiseModel()
    # window == model input size: no resampling, so every pixel must equal the pointwise value
    slid = predict_tile(model, image, 256, window=256, overlap=0.25)["outline"][0]
    whole = predict_tile(model, image, 1100, window=None)  # reference without windows
    ref = torch.sigmoid(model(torch.from_numpy(
        ((image.astype(np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32))
         / np.array([0.229, 0.224, 0.225], np.float32)).transpose(2, 0, 1)[None]))["outline"])[0, 0].numpy()
    assert slid.shape == (1100, 1500)
    np.testing.assert_allclose(slid, ref, atol=1e-5)
    assert whole["outline"].shape == (1, 1100, 1500)


class _PointwiseHeads(torch.nn.Module):
    """Every head of RoofNet (16 sectors) as a 1x1 convolution: windows do not matter."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 1 + 9 + 18 + 3, 1)

    def forward(self, x):
        y = self.conv(x) * 3.0
        return {"outline": y[:, :1], "superstructures": y[:, 1:10], "segments": y[:, 10:28], "lines": y[:, 28:]}


def test_sixteen_bit_geotiff_is_scaled_by_its_percentile(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(0, 4000, (3, 600, 40), dtype=np.uint16)
    ref = GeoRef(Affine(0.2, 0, 500000.0, 0, -0.2, 5300000.0), "EPSG:25832")
    write_geotiff(tmp_path / "u16.tif", data, ref)
    rgb, got = read_geotiff(tmp_path / "u16.tif")
    hi = float(np.percentile(data, 99.5))
    expected = np.clip(data.transpose(1, 2, 0).astype(np.float64) / hi * 255, 0, 255).astype(np.uint8)
    assert rgb.dtype == np.uint8 and (rgb == expected).all() and got == ref


def test_windowed_maps_equal_the_whole_tile_and_hold_no_full_float():
    """predict_maps on a 1500 px tile, window 256: the compact maps equal those of the whole tile
    predicted at once (a pointwise model, no resampling), and the numpy memory it allocates stays
    below half of one full-resolution float32 map per class (the old accumulator held all of them)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
    model = _PointwiseHeads().eval()
    whole = compact_maps(predict_tile(model, image, 1500, window=None))
    tracemalloc.start()
    try:
        maps = predict_maps(model, image, 256, window=256, overlap=0.25)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert set(maps) == set(whole) == {"outline", "superstructures", "segments", "lines"}
    for head in maps:
        assert maps[head].dtype == np.uint8 and maps[head].shape == whole[head].shape, head
        diff = np.abs(maps[head].astype(int) - whole[head].astype(int))
        # the blend divides a weighted sum of equal values: float rounding may move a value by one
        # uint8 step or flip a near-tie argmax on a handful of the 2.25 M pixels
        assert (diff != 0).mean() < 1e-5 and (head in ("superstructures", "segments") or diff.max() <= 1), head
    assert maps["superstructures"].shape == (1500, 1500) and maps["lines"].shape == (3, 1500, 1500)
    full_float = 4 * 31 * 1500 * 1500  # all 31 channels as float32 at full resolution: 279 MB
    band = 4 * 31 * 256 * 1500  # the stated bound: one band of window rows
    outputs = 1500 * 1500 * (1 + 1 + 1 + 3)
    assert peak < 2 * band + outputs < full_float / 2, (peak, band, outputs)
    # the probabilities of predict_tile's windowed path agree with the maps (same windows and blend)
    probs = predict_tile(model, image[:700, :900], 256, window=256, overlap=0.25)
    small = predict_maps(model, image[:700, :900], 256, window=256, overlap=0.25)
    for head, m in compact_maps(probs).items():
        np.testing.assert_array_equal(m, small[head])


def test_compact_maps_thresholds_and_figures_downscale():
    p = np.array([[[0.0, 0.4999, 0.5, 1.0]]], np.float32)
    q = compact_maps({"outline": p})["outline"]
    assert q.tolist() == [[[0, 127, 128, 255]]]
    feats_p = vector_features({"outline": np.repeat(np.repeat(p, 8, 1), 8, 2)}, 16, simplify=0)
    feats_q = vector_features({"outline": np.repeat(np.repeat(q, 8, 1), 8, 2)}, 16, simplify=0)
    assert [g.bounds for _, g, _ in feats_p] == [g.bounds for _, g, _ in feats_q] == [(16.0, 0.0, 32.0, 8.0)]
    # a plateau of equal quantized maxima is one junction, not many
    j = np.zeros((20, 20), np.uint8)
    j[5:7, 5:7] = 200
    j[15, 12] = 130
    assert sorted(junction_points(j)) == [(5, 5), (12, 15)]
    image = np.zeros((300, 200, 3), np.uint8)
    cls = np.zeros((300, 200), np.uint8)
    cls[:150] = 3
    figs = figures(image, {"superstructures": cls, "outline": np.full((1, 300, 200), 255, np.uint8)}, 16, max_side=60)
    fig, raw = figs["superstructures"]
    assert fig.height == 60 and raw.shape == (300, 200) and (raw == cls).all()
    assert (figs["outline"][1] == 0).all() and figs["outline"][0].size == (80, 60)  # 0 = roof, full res


def test_segment_properties_from_rid_labels_on_tile_1011(rid_root):
    """RID's own segments of tile 1011 as a 'prediction': slopes come back from RID's slope column,
    areas and azimuths from EPSG:25832 agree with the labels, superstructures are subtracted."""
    fp = load_footprints(rid_root / "vector_labels" / "image_boundaries.csv")["1011"]
    ref = GeoRef.from_lonlat_bounds(fp, (512, 512))
    seg = SegmentRasterizer(rid_root).mask("1011", (512, 512), 4)
    probs = {"segments": np.eye(6, dtype=np.float32)[seg].transpose(2, 0, 1)}
    sup = np.zeros((9, 512, 512), np.float32)
    sup[8] = 1
    sup[8, 240:250, 200:210], sup[0, 240:250, 200:210] = 0, 1  # a 10 x 10 px "pvmodule" on the west slope
    probs["superstructures"] = sup
    segments, _ = _segments_cached(str(rid_root))
    near = [s for s in segments if s.polygon.intersects(shapely.box(*fp))]
    feats = vector_features(probs, 4, simplify=0.0, georef=ref, rid_segments=near)
    segs = [f for f in feats if f[0] == "roof_segment"]
    assert segs and all(f[2]["slope_deg"] is not None for f in segs)
    west = max((f for f in segs if f[2]["azimuth_class"] == "W"), key=lambda f: f[2]["area_m2"])
    assert 60 < west[2]["azimuth_deg"] < 120  # RID: west = +90
    px_m2 = ref.to_metric(shapely.box(0, 0, 1, 1)).area
    assert west[2]["area_m2"] - west[2]["usable_pv_area_m2"] == pytest.approx(100 * px_m2, rel=0.05)
    gj = to_geojson(probs, 4, georef=ref, features=feats)
    lon0, lat0, lon1, lat1 = fp
    for f in gj["features"]:
        g = shapely.geometry.shape(f["geometry"])
        assert g.is_valid
        x0, y0, x1, y1 = g.bounds
        assert lon0 - 1e-9 <= x0 and x1 <= lon1 + 1e-9 and lat0 - 1e-9 <= y0 and y1 <= lat1 + 1e-9
    names = segment_classes(4)
    assert {f["properties"]["azimuth_class"] for f in gj["features"] if f["properties"]["kind"] == "roof_segment"} \
        <= set(names)

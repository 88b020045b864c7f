"""roofseg data: RID azimuth classes and rasterizer, outline convention, roof graphs, sources."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from roofseg.data import (
    DataError,
    RoofDataset,
    azimuth_lut,
    azimuth_to_class,
    find_samples,
    lonlat_to_pixel,
    parse_graph,
    pixel_to_lonlat,
    render_targets,
    segment_classes,
    solarnet_channels,
)
from roofseg.data.dataset import IGNORE_INDEX, load_index_mask, outline_to_roof
from roofseg.data.rid import SegmentRasterizer


@pytest.mark.parametrize("sectors", [4, 8, 16])
def test_azimuth_classes_follow_rid_convention(sectors):
    names = segment_classes(sectors)
    # RID: south = 0, west = +90, east = -90, north = +-180; missing azimuth = flat
    assert names[azimuth_to_class(0.0, sectors)] == "S"
    assert names[azimuth_to_class(90.0, sectors)] == "W"
    assert names[azimuth_to_class(-90.0, sectors)] == "E"
    assert names[azimuth_to_class(180.0, sectors)] == "N"
    assert names[azimuth_to_class(-179.0, sectors)] == "N"
    assert names[azimuth_to_class(float("nan"), sectors)] == "flat"
    assert names[azimuth_to_class(None, sectors)] == "flat"
    assert names[-1] == "background" and len(names) == sectors + 2


def test_azimuth_sector_edges_16():
    names = segment_classes(16)
    assert names[azimuth_to_class(-180 + 11.0, 16)] == "N"
    assert names[azimuth_to_class(-180 + 12.0, 16)] == "NNE"
    with pytest.raises(ValueError, match="4, 8 or 16"):
        azimuth_to_class(0.0, 6)


def test_lonlat_pixel_roundtrip_and_orientation():
    bounds = (11.0, 48.0, 11.01, 48.01)
    x, y = lonlat_to_pixel(np.array([11.0, 11.01]), np.array([48.01, 48.0]), bounds, (512, 512))
    np.testing.assert_allclose(x, [0, 512])  # west edge -> x 0
    np.testing.assert_allclose(y, [0, 512])  # north edge -> row 0
    lon, lat = pixel_to_lonlat(np.array([128.0]), np.array([384.0]), bounds, (512, 512))
    np.testing.assert_allclose([lon[0], lat[0]], [11.0025, 48.0025])


@pytest.mark.parametrize("op,src,dst", [("hflip", "E", "W"), ("vflip", "N", "S"), ("vflip", "E", "E"),
                                        ("rot90", "N", "W"), ("rot90", "E", "N")])
def test_azimuth_lut_remaps_directions(op, src, dst):
    for sectors in (4, 8, 16):
        names = segment_classes(sectors)
        lut = azimuth_lut(sectors, op)
        assert names[lut[names.index(src)]] == dst
        assert lut[sectors] == sectors and lut[sectors + 1] == sectors + 1 and lut[IGNORE_INDEX] == IGNORE_INDEX


def test_rasterized_segments_on_tile_1011(rid_root):
    """Tile 1011 (checked by eye, see README): the central gable roof has its west slope (with the
    dormers) left of the ridge at x ~ 255 and its east slope right of it. Without the lat/lon swap
    no segment would fall in the footprint."""
    mask = SegmentRasterizer(rid_root).mask("1011", (512, 512), 4)
    names = segment_classes(4)
    assert mask.dtype == np.uint8 and mask.shape == (512, 512)
    assert names[mask[250, 220]] == "W"
    assert names[mask[250, 300]] == "E"
    assert names[mask[250, 20]] == "background"  # the street
    assert (mask != 5).mean() > 0.1


def test_rid_outline_masks_are_zero_for_roof(rid_root):
    raw = load_index_mask(rid_root / "roof_outlines_reviewed" / "1011.png")
    roof = outline_to_roof(raw, "rid")
    assert roof[250, 260] == 1  # the central roof
    assert roof[250, 20] == 0  # the street


def test_parse_graph_eaves_inner_and_targets(roof_lines_root):
    g = parse_graph(roof_lines_root / "train" / "000000.txt")
    assert g.junctions.shape == (6, 2) and g.segments.shape == (7, 2, 2)
    # the diagonal (520,377)-(43,53) is the only inner line; the other six form the outer ring
    inner = g.segments[~g.eave]
    assert len(inner) == 1
    np.testing.assert_allclose(sorted(map(tuple, inner[0])), [(43, 53), (520, 377)])
    ring = np.array([[520, 377], [488, 430], [10, 100], [43, 53], [78, 10], [550, 332]], float)
    shoelace = 0.5 * abs(np.dot(ring[:, 0], np.roll(ring[:, 1], 1)) - np.dot(ring[:, 1], np.roll(ring[:, 0], 1)))
    assert g.outline.area == pytest.approx(shoelace)
    t = render_targets(g.scaled(0.5, 0.5), (220, 280))
    assert t["outline"].sum() == pytest.approx(shoelace / 4, rel=0.03)
    assert t["lines"].shape == (3, 220, 280) and t["lines"][2].max() == pytest.approx(1.0, abs=0.05)
    assert t["lines_thin"][1].sum() == 6


def test_bad_graph_file_is_a_one_line_data_error(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("#2#\n[[1 2]\n [3 4]]\n")
    with pytest.raises(DataError, match="x.txt"):
        parse_graph(p)


def test_solarnet_channel_mapping():
    m = np.zeros((2, 3, 3), np.uint8)
    m[0, 0] = (1, 1, 0)  # roof, north, no superstructure
    m[0, 1] = (1, 5, 1)  # roof, flat, pvmodule
    m[0, 2] = (0, 0, 7)  # off roof, tree
    roof, seg, sup = solarnet_channels(m.reshape(2, 3, 3) if m.ndim == 3 else m, Path("m.png"))
    assert roof[0].tolist() == [1, 1, 0]
    assert seg[0].tolist() == [0, 4, 5]  # N, flat, background (4-sector scheme)
    assert sup[0].tolist() == [8, 0, 6]  # background, pvmodule, tree
    with pytest.raises(DataError, match="3-channel"):
        solarnet_channels(np.zeros((3, 3), np.uint8), Path("m.png"))


def test_find_samples_rid_split_is_disjoint_and_seeded(rid_root):
    tr = find_samples(rid_root, "train", "outlines")
    va = find_samples(rid_root, "val", "outlines")
    assert len(tr) == 16 and len(va) == 4
    assert not {s.name for s in tr} & {s.name for s in va}
    assert [s.name for s in va] == [s.name for s in find_samples(rid_root, "val", "outlines")]
    assert [s.name for s in va] != [s.name for s in find_samples(rid_root, "val", "outlines", seed=1)]


def test_find_samples_errors(tmp_path, rid_root):
    with pytest.raises(DataError, match="no RID"):
        find_samples(tmp_path, "train", "outlines")
    with pytest.raises(DataError, match="--task lines"):
        find_samples(rid_root, "train", "lines")


def _airs(tmp_path: Path) -> Path:
    root = tmp_path / "airs"
    for d in ("image", "label"):
        (root / d).mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((40, 48, 3), 30 * i, np.uint8)).save(root / "image" / f"t{i}.tif")
        lab = np.zeros((40, 48), np.uint8)
        lab[10:30, 10:20] = 255
        Image.fromarray(lab).save(root / "label" / f"t{i}.tif")
    return root


def test_airs_folder_gives_outline_samples(tmp_path):
    root = _airs(tmp_path)
    samples = find_samples(tmp_path, "all", "outlines")
    assert len(samples) == 5 and {s.source for s in samples} == {"airs"}
    item = RoofDataset(samples, ("outline",), 64, train=False)[0]
    assert item["outline"].shape == (1, 64, 64)
    assert item["outline"].sum().item() == pytest.approx(20 * 10 * (64 / 40) * (64 / 48), rel=0.1)
    assert root.exists()


def test_multi_dataset_masks_missing_labels(mldata_root):
    samples = find_samples(mldata_root, "val", "multi", sectors=4, lines_limit=1)
    sources = {s.source: s for s in samples}
    assert {"rid", "solarnet", "roof_lines"} <= set(sources)
    ds = RoofDataset([sources["roof_lines"], sources["solarnet"], sources["rid"]],
                     ("outline", "superstructures", "segments", "lines"), 64, train=True, sectors=4)
    lines_item, sn_item, rid_item = ds[0], ds[1], ds[2]
    assert lines_item["has_lines"] and lines_item["has_outline"] and not lines_item["has_superstructures"]
    assert (lines_item["superstructures"] == IGNORE_INDEX).all()
    assert sn_item["has_segments"] and sn_item["has_superstructures"] and not sn_item["has_lines"]
    assert rid_item["has_segments"] and not rid_item["has_lines"]
    assert rid_item["image"].shape == (3, 64, 64) and rid_item["segments"].max() <= 5
    assert math.isfinite(float(rid_item["image"].mean()))

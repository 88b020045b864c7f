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
    """SolarNet+'s own PV code (pvcode/cal_pv.py): after background 0, ['flat', 'W', 'S', 'E', 'N']."""
    m = np.zeros((1, 6, 3), np.uint8)
    m[0, :, 0] = (1, 1, 1, 1, 1, 0)
    m[0, :, 1] = (5, 1, 2, 4, 3, 0)
    roof, seg, sup = solarnet_channels(m, Path("m.png"))
    names = segment_classes(4)
    assert roof[0].tolist() == [1, 1, 1, 1, 1, 0]
    assert [names[v] for v in seg[0]] == ["N", "flat", "W", "E", "S", "background"]
    assert sup is None  # order not published: not decoded unless asked for
    with pytest.raises(DataError, match="3-channel"):
        solarnet_channels(np.zeros((3, 3), np.uint8), Path("m.png"))


def test_solarnet_orientation_on_real_tiles(mldata_root):
    """On the sample tiles, value 5 (north per SolarNet+'s code) decodes as N and is the darkest
    of the four sectors (shaded north faces); value 3 (south) is brighter than north."""
    names = segment_classes(4)
    sums = {n: [0.0, 0] for n in ("N", "E", "S", "W", "flat")}
    for f in sorted((mldata_root / "rid_solarnet").glob("*/masks/*.png")):
        raw = load_index_mask(f)
        _, seg, _ = solarnet_channels(raw, f)
        assert (seg[raw[..., 1] == 5] == names.index("N")).all()
        assert (seg[raw[..., 1] == 1] == names.index("flat")).all()
        assert (seg[raw[..., 1] == 2] == names.index("W")).all()
        assert (seg[raw[..., 1] == 4] == names.index("E")).all()
        grey = np.asarray(Image.open(f.parent.parent / "images" / f.name).convert("L"), np.float64)
        for k, n in enumerate(names[:5]):
            sums[n][0] += grey[seg == k].sum()
            sums[n][1] += int((seg == k).sum())
    mean = {n: a / b for n, (a, b) in sums.items()}
    assert mean["N"] == min(mean[n] for n in ("N", "E", "S", "W"))
    assert mean["S"] > mean["N"] + 20


def test_solarnet_superstructures_not_trained_unless_inferred(mldata_root):
    from roofseg.data.dataset import SOLARNET_SUPERSTRUCTURES_INFERRED
    from roofseg.data.rid import SUPERSTRUCTURE_CLASSES

    root = mldata_root / "rid_solarnet"
    assert find_samples(root, "all", "outlines")
    with pytest.raises(DataError, match="--task superstructures"):
        find_samples(root, "all", "superstructures")
    samples = find_samples(root, "all", "superstructures", solarnet_superstructures="inferred")
    assert len(samples) == 8
    m = np.zeros((1, 9, 3), np.uint8)
    m[0, :, 2] = np.arange(9)
    _, _, sup = solarnet_channels(m, Path("m.png"), "inferred")
    assert [SUPERSTRUCTURE_CLASSES[v] for v in sup[0]] == ["background", *SOLARNET_SUPERSTRUCTURES_INFERRED]
    assert SUPERSTRUCTURE_CLASSES[sup[0, 8]] == "pvmodule" and SUPERSTRUCTURE_CLASSES[sup[0, 4]] == "chimney"


@pytest.mark.parametrize("sectors", [4, 8])
def test_coarsening_table_is_symmetric(sectors):
    from roofseg.data.dataset import COARSEN_16, coarsen_segments

    table = COARSEN_16[sectors]
    assert np.bincount(table, minlength=sectors).tolist() == [16 // sectors] * sectors
    f = 16 // sectors
    for i in range(16):  # a quarter turn of the fine sectors is a quarter turn of the coarse ones
        assert table[(i + 4) % 16] == (table[i] + sectors // 4) % sectors
        # the fine sector's centre azimuth (RID convention: N = 180, clockwise = decreasing) falls in it
        centre = (180.0 + 22.5 * i + 180.0) % 360.0 - 180.0
        assert table[i] == azimuth_to_class(centre, sectors)
    names4, names16 = segment_classes(sectors), segment_classes(16)
    for n in ("N", "E", "S", "W"):
        assert names4[table[names16.index(n)]] == n
    m = np.array([[0, 15, 16, 17, 200]], np.uint8)
    assert coarsen_segments(m, sectors).tolist() == [[0, table[15], sectors, sectors + 1, IGNORE_INDEX]]
    assert f * sectors == 16


def test_rid_roof_label_segments_covers_neighbouring_roofs(rid_root):
    """Tile 1011: roof_outlines_reviewed marks only the centred building; the union of RID's segment
    polygons also covers the roof at the top edge of the tile and the neighbours."""
    outl = find_samples(rid_root, "all", "outlines", roof_label="outlines")
    segs = find_samples(rid_root, "all", "outlines", roof_label="segments")
    a = RoofDataset([s for s in outl if s.name == "1011"], ("outline",), 512, train=False)[0]["outline"][0]
    b = RoofDataset([s for s in segs if s.name == "1011"], ("outline",), 512, train=False)[0]["outline"][0]
    assert b[250, 220] == 1 and b[250, 20] == 0  # the centred roof; the street
    assert b.sum() > 1.3 * a.sum()
    assert ((a == 1) & (b == 0)).float().mean() < 0.02  # the centred roof is in both
    with pytest.raises(DataError, match="--roof-label"):
        find_samples(rid_root, "all", "outlines", roof_label="walls")


def test_mask_size_differing_from_tile_is_one_line(tmp_path, rid_root, capsys):
    """Issue 16: a 300x200 mask next to a 512x512 tile stops the run, naming both files and sizes."""
    from roofseg.train import main as train_main

    root = tmp_path / "rid"
    for d in ("images", "roof_outlines_reviewed"):
        (root / d).mkdir(parents=True)
    for name in ("1011", "1063", "1145", "1186"):
        Image.open(rid_root / "images" / f"{name}.png").save(root / "images" / f"{name}.png")
        Image.open(rid_root / "roof_outlines_reviewed" / f"{name}.png").save(root / "roof_outlines_reviewed" / f"{name}.png")
    bad = root / "roof_outlines_reviewed" / "1063.png"
    Image.open(bad).resize((300, 200), Image.NEAREST).save(bad)
    code = train_main(["--data", str(root), "--roof-label", "outlines", "--out", str(tmp_path / "run"),
                       "--image-size", "64", "--batch-size", "4", "--epochs", "1", "--num-workers", "0",
                       "--no-pretrained", "--examples", "0", "--val-fraction", "0.25"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if " INFO " not in ln]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("roofseg-train: error: mask ")
    assert "1063.png is 300x200" in lines[0] and "images/1063.png is 512x512" in lines[0]


def test_find_samples_rid_split_is_disjoint_and_seeded(rid_root):
    tr = find_samples(rid_root, "train", "outlines")
    va = find_samples(rid_root, "val", "outlines")
    assert len(tr) == 12 and len(va) == 4
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
    # SolarNet+'s superstructure order is not published: that channel is not trained by default
    assert sn_item["has_segments"] and not sn_item["has_superstructures"] and not sn_item["has_lines"]
    assert rid_item["has_segments"] and not rid_item["has_lines"]
    assert rid_item["image"].shape == (3, 64, 64) and rid_item["segments"].max() <= 5
    assert math.isfinite(float(rid_item["image"].mean()))


def test_superstructure_crops_are_class_balanced(rid_root):
    """With --superstructure-crops 1, every training crop holds a superstructure pixel."""
    import random

    samples = [s for s in find_samples(rid_root, "all", "superstructures") if s.name in ("1011", "1063", "1145")]
    ds = RoofDataset(samples, ("superstructures",), 64, train=True, crop_size=96, superstructure_crops=1.0)
    random.seed(0)
    for i in range(9):
        item = ds[i % 3]
        assert item["image"].shape == (3, 64, 64) and item["superstructures"].shape == (64, 64)
        assert (item["superstructures"] < 8).any()


def test_auto_class_weights_favour_rare_classes(rid_root):
    from roofseg.config import eval_image_size
    from roofseg.train import superstructure_class_weights

    w = superstructure_class_weights(find_samples(rid_root, "train", "superstructures"))
    assert len(w) == 9 and w[8] == min(w) and w[8] < 1 < max(w) <= 10
    assert eval_image_size(256, 256) == 512 and eval_image_size(256, None) == 256


def test_data_error_is_the_shared_mlcore_class():
    """One DataError for every domain (it was a separate roofseg class that mlcore-level handlers missed)."""
    import mlcore.data
    import roofseg.data

    assert roofseg.data.DataError is mlcore.data.DataError

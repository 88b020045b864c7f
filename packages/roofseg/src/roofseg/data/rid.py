"""RID, the Roof Information Dataset (Krapf et al., Remote Sensing 2022, 14(10):2299).

Layouts understood (the sample's and the dataset's own download):

- images: ``images/ID.png`` or ``images_roof_centered_png/ID.png`` or ``images_roof_centered_geotiff/ID.tif``;
- superstructure masks: ``masks_superstructures_reviewed/ID.png`` (or ``..._initial``), uint8 class per
  pixel, :data:`SUPERSTRUCTURE_CLASSES` order, 8 = background;
- roof outlines: ``roof_outlines_reviewed/ID.png`` (RID mask convention: 0 = roof, 1 = background);
- roof segments: rasterized on the fly from ``vector_labels/segments_reviewed.csv`` (or
  ``segments_reviewed.csv`` at the root) onto each tile's footprint from ``image_boundaries.csv``;
  or ``masks_segments_reviewed/ID.png`` when that folder exists (RID's 16 + flat + background masks);
- the annotation experiment: ``annotation_experiment/{masks_superstructures,roof_outlines}/ID_labelerK.png``.

Coordinate orders: the label WKT is written **latitude first** (``"48.39 11.99"``), the tile footprints
**longitude first**; :func:`load_segment_polygons` swaps the labels to (lon, lat) before anything else.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
import shapely.wkt
from shapely.geometry import MultiPolygon, Polygon
from shapely.strtree import STRtree

from mlcore.data import DataError  # the one shared by every domain (re-exported by roofseg.data)

SUPERSTRUCTURE_CLASSES: tuple[str, ...] = (
    "pvmodule", "dormer", "window", "ladder", "chimney", "shadow", "tree", "unknown", "background")
"""RID's superstructure classes in mask order (index 8 = background)."""

SECTOR_NAMES: dict[int, tuple[str, ...]] = {
    4: ("N", "E", "S", "W"),
    8: ("N", "NE", "E", "SE", "S", "SW", "W", "NW"),
    16: ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW"),
}
"""Azimuth sector names of RID's three segment schemes (RID ``definitions.py``), clockwise from north."""


def segment_classes(sectors: int) -> tuple[str, ...]:
    """Class names of a roof-segment scheme: ``sectors`` azimuth sectors, ``flat``, ``background``.

    Raises:
        ValueError: ``sectors`` is not 4, 8 or 16.
    """
    if sectors not in SECTOR_NAMES:
        raise ValueError(f"segment sectors: expected 4, 8 or 16, got {sectors}")
    return (*SECTOR_NAMES[sectors], "flat", "background")


def azimuth_to_class(azimuth: float | None, sectors: int) -> int:
    """RID's azimuth -> sector index (``utils.azimuth_to_label_class`` of the RID code).

    RID measures azimuth in degrees with **south = 0, west = +90, east = -90, north = +-180**
    (the direction the roof faces). Sector 0 is north, counted clockwise (N, NNE, ... for 16). A
    missing azimuth (None/NaN, RID's flat roofs) returns the flat index ``sectors``.

    Raises:
        ValueError: ``sectors`` is not 4, 8 or 16.
    """
    if sectors not in SECTOR_NAMES:
        raise ValueError(f"segment sectors: expected 4, 8 or 16, got {sectors}")
    if azimuth is None or (isinstance(azimuth, float) and math.isnan(azimuth)):
        return sectors
    width = 360.0 / sectors
    az = azimuth + 180.0 + width / 2  # north (+-180) -> ~width/2, i.e. the middle of sector 0
    az %= 360.0
    return int(az // width) % sectors


@dataclass(frozen=True)
class RidTile:
    """One RID tile: its image and whichever reviewed labels exist (None when absent)."""

    name: str
    image: Path
    superstructures: Path | None
    outline: Path | None
    segments_mask: Path | None


_IMAGE_DIRS = ("images", "images_roof_centered_png", "images_roof_centered_geotiff")
_SUPER_DIRS = ("masks_superstructures_reviewed", "masks_superstructures_initial")
_OUTLINE_DIRS = ("roof_outlines_reviewed", "masks_roof_outlines_reviewed")
_SEGMENT_DIRS = ("masks_segments_reviewed",)


def find_rid_root(path: str | Path) -> Path | None:
    """The RID root under ``path`` (``path`` itself or ``path/rid``), or None when neither has tiles."""
    path = Path(path)
    for cand in (path, path / "rid"):
        if any((cand / d).is_dir() for d in _IMAGE_DIRS) and any(
                (cand / d).is_dir() for d in (*_SUPER_DIRS, *_OUTLINE_DIRS, *_SEGMENT_DIRS, "vector_labels")):
            return cand
    return None


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def find_rid_tiles(root: str | Path) -> list[RidTile]:
    """Every tile of a RID root, sorted by name.

    Raises:
        DataError: no RID image folder under ``root``.
    """
    root = Path(root)
    img_dir = _first_dir(root, _IMAGE_DIRS)
    if img_dir is None:
        raise DataError(f"{root}: no RID image folder (expected one of {', '.join(_IMAGE_DIRS)})")
    sup, out, seg = (_first_dir(root, d) for d in (_SUPER_DIRS, _OUTLINE_DIRS, _SEGMENT_DIRS))
    tiles = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff", ".jpg")):
        def find(d: Path | None, stem: str = img.stem) -> Path | None:
            if d is None:
                return None
            p = d / f"{stem}.png"
            return p if p.is_file() else None
        tiles.append(RidTile(img.stem, img, find(sup), find(out), find(seg)))
    return tiles


def vector_label_file(root: Path, name: str) -> Path | None:
    """``root/vector_labels/NAME`` or ``root/NAME`` or ``root/data/NAME`` (RID's repository layout)."""
    for cand in (root / "vector_labels" / name, root / name, root / "data" / name):
        if cand.is_file():
            return cand
    return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(2**31 - 1)
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_footprints(path: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """``image_boundaries.csv`` -> ``{tile id: (lon_min, lat_min, lon_max, lat_max)}`` (EPSG:4326).

    The footprint WKT is longitude first (column ``geometry_wkt_lon_lat``, or ``geometry``).

    Raises:
        DataError: the file lacks an ``id`` or geometry column, or a row is not a polygon.
    """
    path = Path(path)
    rows = _read_csv(path)
    out = {}
    for i, row in enumerate(rows):
        geom_text = row.get("geometry_wkt_lon_lat") or row.get("geometry")
        if "id" not in row or geom_text is None:
            raise DataError(f"{path}: expected columns id and geometry_wkt_lon_lat")
        try:
            geom = shapely.wkt.loads(geom_text)
        except shapely.errors.ShapelyError as exc:
            raise DataError(f"{path}: row {i + 2}: invalid WKT ({exc})") from None
        out[str(row["id"]).strip()] = tuple(geom.bounds)  # type: ignore[assignment]
    return out


@dataclass(frozen=True)
class SegmentLabel:
    """One RID roof segment in (lon, lat): its polygon, azimuth (RID convention) and slope in degrees."""

    polygon: Polygon | MultiPolygon
    azimuth: float | None
    slope: float | None
    tile: str


def _swap(geom):
    """(lat, lon) -> (lon, lat): swap the two coordinates of every vertex."""
    return shapely.transform(geom, lambda c: c[:, ::-1].copy())


def load_segment_polygons(path: str | Path) -> list[SegmentLabel]:
    """``segments_reviewed.csv`` -> segments with polygons in (lon, lat) order.

    The CSV's ``segment`` WKT is **latitude first**; it is swapped here. Rows with an empty or
    invalid geometry are skipped (RID has a few); an empty ``azimuth`` means flat.

    Raises:
        DataError: the file lacks the ``segment`` or ``azimuth`` column.
    """
    path = Path(path)
    rows = _read_csv(path)
    if rows and ("segment" not in rows[0] or "azimuth" not in rows[0]):
        raise DataError(f"{path}: expected columns segment and azimuth (RID segments_reviewed.csv)")
    out = []
    for row in rows:
        try:
            geom = shapely.wkt.loads(row["segment"])
        except (shapely.errors.ShapelyError, TypeError):
            continue
        if geom.is_empty:
            continue
        az = float(row["azimuth"]) if row.get("azimuth", "").strip() else None
        slope = float(row["slope"]) if row.get("slope", "").strip() else None
        out.append(SegmentLabel(_swap(geom), az, slope, str(row.get("pv_area_id", "")).strip()))
    return out


def lonlat_to_pixel(lon: np.ndarray, lat: np.ndarray, bounds: tuple[float, float, float, float],
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) -> (x, y) pixel coordinates of a north-up tile with footprint ``bounds``.

    ``bounds`` = (lon_min, lat_min, lon_max, lat_max); ``size`` = (height, width). x grows east,
    y grows south (row 0 is the northern edge), a linear map as in RID's
    ``convert_between_latlon_and_pixel`` (the tiles are ~70 m wide, so the plate carree error is
    far below a pixel).
    """
    lon_min, lat_min, lon_max, lat_max = bounds
    h, w = size
    x = (np.asarray(lon) - lon_min) / (lon_max - lon_min) * w
    y = (lat_max - np.asarray(lat)) / (lat_max - lat_min) * h
    return x, y


def pixel_to_lonlat(x: np.ndarray, y: np.ndarray, bounds: tuple[float, float, float, float],
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`lonlat_to_pixel`."""
    lon_min, lat_min, lon_max, lat_max = bounds
    h, w = size
    lon = lon_min + np.asarray(x, dtype=np.float64) / w * (lon_max - lon_min)
    lat = lat_max - np.asarray(y, dtype=np.float64) / h * (lat_max - lat_min)
    return lon, lat


def rasterize_segments(segments: Sequence[SegmentLabel], bounds: tuple[float, float, float, float],
                       size: tuple[int, int], sectors: int, tree: STRtree | None = None) -> np.ndarray:
    """Roof-segment class mask of one tile.

    Every segment intersecting the footprint is burnt with its azimuth class
    (:func:`azimuth_to_class`) by ``rasterio.features.rasterize`` on the footprint's pixel-edge grid
    (a pixel takes a polygon's class when its centre is inside; holes stay background); the rest is
    background. Larger segments are drawn first so small ones lying on top stay visible.

    Args:
        segments: labels in (lon, lat), from :func:`load_segment_polygons`.
        bounds: the tile footprint (lon_min, lat_min, lon_max, lat_max).
        size: (height, width) of the mask in px.
        sectors: 4, 8 or 16.
        tree: optional ``STRtree`` over ``[s.polygon for s in segments]`` (speeds up many tiles).

    Returns:
        ``(H, W)`` uint8: 0..sectors-1 azimuth sectors, ``sectors`` flat, ``sectors + 1`` background.
    """
    from roofseg.geo import GeoRef, rasterize_polygons

    box = shapely.box(*bounds)
    if tree is not None:
        idx = tree.query(box, predicate="intersects")
        chosen = [segments[i] for i in sorted(idx)]
    else:
        chosen = [s for s in segments if s.polygon.intersects(box)]
    chosen.sort(key=lambda s: -s.polygon.area)
    transform = GeoRef.from_lonlat_bounds(bounds, size).transform
    return rasterize_polygons(((s.polygon, azimuth_to_class(s.azimuth, sectors)) for s in chosen), size,
                              sectors + 1, transform)


class SegmentRasterizer:
    """Rasterizes RID's vector segments for any tile of a RID root (labels parsed once, lazily).

    Args:
        root: the RID root with ``vector_labels/segments_reviewed.csv`` and ``image_boundaries.csv``.

    Raises:
        DataError: one of the two files is missing (on first use).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def available(self) -> bool:
        """Both CSV files exist."""
        return (vector_label_file(self.root, "segments_reviewed.csv") is not None
                and vector_label_file(self.root, "image_boundaries.csv") is not None)

    @property
    def footprints(self) -> dict[str, tuple[float, float, float, float]]:
        return _footprints_cached(str(self.root))

    def mask(self, tile: str, size: tuple[int, int], sectors: int) -> np.ndarray | None:
        """``(H, W)`` uint8 segment mask of ``tile`` (see :func:`rasterize_segments`), None if the
        tile has no footprint."""
        bounds = self.footprints.get(str(tile))
        if bounds is None:
            return None
        segments, tree = _segments_cached(str(self.root))
        return rasterize_segments(segments, bounds, size, sectors, tree)


@lru_cache(maxsize=4)
def _footprints_cached(root: str) -> dict[str, tuple[float, float, float, float]]:
    path = vector_label_file(Path(root), "image_boundaries.csv")
    if path is None:
        raise DataError(f"{root}: image_boundaries.csv not found (vector_labels/)")
    return load_footprints(path)


@lru_cache(maxsize=4)
def _segments_cached(root: str) -> tuple[list[SegmentLabel], STRtree]:
    path = vector_label_file(Path(root), "segments_reviewed.csv")
    if path is None:
        raise DataError(f"{root}: segments_reviewed.csv not found (vector_labels/)")
    segments = load_segment_polygons(path)
    return segments, STRtree([s.polygon for s in segments])


_LABELER = re.compile(r"^(?P<tile>.+)_labeler(?P<k>\d+)$")


def annotation_experiment(root: str | Path, kind: str = "masks_superstructures") -> dict[str, dict[int, Path]]:
    """``{tile: {labeler k: mask path}}`` of RID's annotation experiment (``kind`` =
    ``masks_superstructures`` or ``roof_outlines``); empty when the folder is absent."""
    folder = Path(root) / "annotation_experiment" / kind
    out: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.png")):
        m = _LABELER.match(p.stem)
        if m:
            out.setdefault(m["tile"], {})[int(m["k"])] = p
    return out

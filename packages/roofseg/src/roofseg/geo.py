"""Georeferencing, vectorization and metric properties of roof predictions.

Pixel convention: **pixel edges**. Pixel (col, row) covers ``[col, col + 1] x [row, row + 1]``;
its centre is ``(col + 0.5, row + 0.5)``. Masks are vectorized with ``rasterio.features.shapes``,
which traces the pixel edges exactly (a 10 x 10 px square becomes a 10 x 10 polygon), and
rasterized with ``rasterio.features.rasterize`` (a pixel is inside when its centre is), so the two
are inverse on pixel-aligned shapes. A :class:`GeoRef` maps edge coordinates to a CRS with an
affine transform (GDAL/rasterio's), as a GeoTIFF or a RID footprint defines it.

Outputs follow RFC 7946 when the tile is georeferenced: longitude/latitude (EPSG:4326), no
``crs`` member, exteriors counter-clockwise, every geometry valid (``shapely.make_valid``).
Areas (m²) and azimuths (degrees) are computed in a metric CRS via pyproj (RID uses
EPSG:25832, ETRS89 / UTM 32N; RID ``definitions.py``: ``EPSG_METRIC = 25832``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.polygon import orient

WGS84 = "EPSG:4326"
RID_METRIC_CRS = "EPSG:25832"


@dataclass(frozen=True)
class GeoRef:
    """Pixel-edge coordinates -> ``crs``: ``transform * (col, row) = (x, y)``."""

    transform: Affine
    crs: str

    @classmethod
    def from_lonlat_bounds(cls, bounds: tuple[float, float, float, float], size: tuple[int, int]) -> GeoRef:
        """A north-up tile whose footprint is ``bounds`` = (lon_min, lat_min, lon_max, lat_max) and whose
        ``size`` is (height, width): RID's ``image_boundaries.csv`` (the same linear map as RID's
        ``convert_between_latlon_and_pixel``)."""
        from rasterio.transform import from_bounds

        h, w = size
        return cls(from_bounds(*bounds, w, h), WGS84)

    def pixel_to_crs(self, geom):
        """Shapely geometry in pixel-edge coordinates -> the same in ``crs``."""
        t = self.transform
        return shapely.affinity.affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])

    def to_lonlat(self, geom):
        """Pixel-edge geometry -> (lon, lat) EPSG:4326."""
        return reproject(self.pixel_to_crs(geom), self.crs, WGS84)

    def to_metric(self, geom, metric_crs: str = RID_METRIC_CRS):
        """Pixel-edge geometry -> ``metric_crs`` (metres)."""
        return reproject(self.pixel_to_crs(geom), self.crs, metric_crs)

    def lonlat_bounds(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """(lon_min, lat_min, lon_max, lat_max) of the whole tile of ``size`` = (height, width)."""
        h, w = size
        return self.to_lonlat(shapely.box(0, 0, w, h)).bounds


@lru_cache(maxsize=16)
def _transformer(src: str, dst: str):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def reproject(geom, src: str, dst: str):
    """Shapely geometry from CRS ``src`` to ``dst`` (pyproj, x = easting/longitude first)."""
    if str(src) == str(dst):
        return geom
    tr = _transformer(str(src), str(dst))

    def fn(c: np.ndarray) -> np.ndarray:
        x, y = tr.transform(c[:, 0], c[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, fn)


def read_geotiff(path: str | Path) -> tuple[np.ndarray, GeoRef | None]:
    """``(H, W, 3)`` uint8 RGB of a (Geo)TIFF and its georeference (None when it has no CRS).

    Other sample types (16-bit, float orthophotos) are scaled to 0..255 by their 99.5th percentile
    (``clip(x / p99.5 * 255, 0, 255)``), converted 256 rows at a time so that a large tile is never
    held as floats.

    Raises:
        OSError: unreadable file (``rasterio.errors.RasterioIOError``).
    """
    import rasterio

    with rasterio.open(path) as src:
        data = src.read()
        ref = GeoRef(src.transform, src.crs.to_string()) if src.crs is not None else None
    if data.shape[0] == 1:
        data = np.repeat(data, 3, 0)
    rgb = data[:3].transpose(1, 2, 0)
    if rgb.dtype != np.uint8:
        hi = float(np.percentile(data[:3], 99.5)) or 1.0
        out = np.empty(rgb.shape, np.uint8)
        for y in range(0, rgb.shape[0], 256):
            out[y:y + 256] = np.clip(rgb[y:y + 256].astype(np.float64) / hi * 255, 0, 255)
        return out, ref
    return np.ascontiguousarray(rgb), ref


def write_geotiff(path: str | Path, array: np.ndarray, georef: GeoRef) -> Path:
    """Write ``(H, W)`` or ``(C, H, W)`` uint8 as a GeoTIFF with ``georef``'s transform and CRS."""
    import rasterio

    arr = array[None] if array.ndim == 2 else array
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0],
                       dtype=arr.dtype, crs=georef.crs, transform=georef.transform, compress="deflate") as dst:
        dst.write(arr)
    return Path(path)


def polygons(geom) -> list[Polygon]:
    """The non-empty polygons of any geometry (collections and multipolygons exploded)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in polygons(g)]
    return []


def valid_polygons(geom, min_area: float = 0.0) -> list[Polygon]:
    """``make_valid`` then the polygon parts with area > ``min_area``, each oriented counter-clockwise
    (RFC 7946 right-hand rule for lon/lat)."""
    geom = shapely.make_valid(geom) if not geom.is_valid else geom
    return [orient(p, 1.0) for p in polygons(geom) if p.area > min_area]


def mask_polygons(mask: np.ndarray, simplify: float = 0.0, min_area: float = 4.0) -> list[Polygon]:
    """Polygons (pixel-edge coordinates) of the True pixels of an ``(H, W)`` bool mask.

    Traced with ``rasterio.features.shapes`` (4-connected regions, holes kept), simplified with
    Douglas-Peucker (``simplify`` px, topology preserved) and made valid. Regions of at most
    ``min_area`` px² are dropped.
    """
    from rasterio.features import shapes

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    out: list[Polygon] = []
    if not mask.any():
        return out
    for g, v in shapes(mask, mask=mask.astype(bool), connectivity=4):
        if v != 1:
            continue
        poly = shape(g)
        if poly.area <= min_area:
            continue
        if simplify > 0:
            poly = poly.simplify(simplify, preserve_topology=True)
        out += valid_polygons(poly, min_area)
    return out


def rasterize_polygons(shapes_values: Iterable[tuple[object, int]], size: tuple[int, int], fill: int,
                       transform: Affine | None = None) -> np.ndarray:
    """``(H, W)`` uint8 with each (geometry, value) burnt in order (later on top), pixel centres
    inside a polygon taking its value (``rasterio.features.rasterize``)."""
    from rasterio.features import rasterize

    items = [(g, int(v)) for g, v in shapes_values if g is not None and not g.is_empty]
    if not items:
        return np.full(size, fill, np.uint8)
    return rasterize(items, out_shape=size, fill=fill, transform=transform or Affine.identity(), dtype=np.uint8)


def sector_centre_azimuth(k: int, sectors: int) -> float:
    """Centre of azimuth sector ``k`` (0 = N, clockwise) in RID's convention (south 0, west +90,
    east -90, north 180)."""
    bearing = k * 360.0 / sectors
    return rid_azimuth(bearing)


def rid_azimuth(bearing: float) -> float:
    """Compass bearing (clockwise from north, degrees) -> RID azimuth in (-180, 180]."""
    a = (bearing - 180.0) % 360.0
    return a - 360.0 if a > 180.0 else a


def segment_azimuth(poly_metric: Polygon, prior: float) -> float:
    """Azimuth (RID convention, degrees) of a roof segment polygon in a metric CRS (x east, y north).

    The roof faces perpendicular to its eave, taken as the longest side of the minimum rotated
    rectangle; of the two normals the one closer to ``prior`` (the class centre) is returned (as
    SolarNet+'s ``select_azimuth`` does). A square-ish segment thus keeps the class direction.
    """
    rect = poly_metric.minimum_rotated_rectangle
    if not isinstance(rect, Polygon):
        return prior
    c = np.asarray(rect.exterior.coords)[:4]
    edges = np.roll(c, -1, 0) - c
    e = edges[int(np.argmax(np.hypot(edges[:, 0], edges[:, 1])))]
    best, best_d = prior, 1e9
    for n in ((e[1], -e[0]), (-e[1], e[0])):
        bearing = np.degrees(np.arctan2(n[0], n[1])) % 360.0
        az = rid_azimuth(bearing)
        d = abs((az - prior + 180.0) % 360.0 - 180.0)
        if d < best_d:
            best, best_d = az, d
    return float(best)


def best_overlap(geom, candidates: Sequence, tree=None) -> int | None:
    """Index of the candidate geometry with the largest intersection area with ``geom`` (None if none)."""
    idx = tree.query(geom, predicate="intersects") if tree is not None else range(len(candidates))
    best, best_a = None, 0.0
    for i in idx:
        a = geom.intersection(candidates[int(i)]).area
        if a > best_a:
            best, best_a = int(i), a
    return best


__all__ = ["RID_METRIC_CRS", "WGS84", "GeoRef", "MultiPolygon", "best_overlap", "mask_polygons", "polygons",
           "rasterize_polygons", "read_geotiff", "reproject", "rid_azimuth", "sector_centre_azimuth",
           "segment_azimuth", "valid_polygons", "write_geotiff"]

"""Roof line graphs (Hensel et al. 2021, roof vectorization dataset) and their training targets.

A graph file ``NNNNNN.txt`` next to ``NNNNNN.jpg`` has three sections: ``#1#`` the junctions as
``[x y]`` pixels, ``#2#`` the line segments as pairs of junction coordinates, ``#3#`` the junction
adjacency matrix. The outer ring of the graph is the roof outline (the eaves); the other
segments are ridge/hip/valley lines (untyped in the dataset).

Targets (:func:`render_targets`): the roof outline mask (the union of the graph's faces), an
inner-line map, an eave map and a junction heatmap, all at any output size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.ops import polygonize, unary_union

from roofseg.data.rid import DataError

_NUM = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class RoofGraph:
    """A roof line graph in pixel coordinates of its image.

    Attributes:
        junctions: ``(J, 2)`` float64 ``(x, y)`` px.
        segments: ``(S, 2, 2)`` float64, each ``[[x0, y0], [x1, y1]]`` px.
        eave: ``(S,)`` bool, True for segments on the roof outline (outer ring).
        outline: the roof polygon (union of the graph's faces; convex hull when the graph has no
            closed face), pixel coordinates.
    """

    junctions: np.ndarray
    segments: np.ndarray
    eave: np.ndarray
    outline: shapely.Geometry

    def scaled(self, sx: float, sy: float) -> RoofGraph:
        """The graph with x multiplied by ``sx`` and y by ``sy`` (resizing its image)."""
        s = np.array([sx, sy])
        return RoofGraph(self.junctions * s, self.segments * s, self.eave,
                         shapely.affinity.scale(self.outline, sx, sy, origin=(0, 0)))


def parse_graph(path: str | Path) -> RoofGraph:
    """Read a ``#1#/#2#/#3#`` roof graph file.

    Raises:
        DataError: missing sections, an odd number of segment coordinates, or no junction.
    """
    import shapely.affinity  # noqa: F401  (RoofGraph.scaled)

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read roof graph ({exc})") from None
    parts = re.split(r"#(\d)#", text)
    sections = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    if "1" not in sections or "2" not in sections:
        raise DataError(f"{path}: expected sections #1# (junctions) and #2# (segments)")
    j = np.array([float(v) for v in _NUM.findall(sections["1"])], dtype=np.float64)
    s = np.array([float(v) for v in _NUM.findall(sections["2"])], dtype=np.float64)
    if j.size == 0 or j.size % 2 or s.size % 4:
        raise DataError(f"{path}: expected [x y] junctions and segments as pairs of [x y] points "
                        f"(got {j.size} and {s.size} numbers)")
    junctions = j.reshape(-1, 2)
    segments = s.reshape(-1, 2, 2)
    return _build_graph(junctions, segments)


def _build_graph(junctions: np.ndarray, segments: np.ndarray) -> RoofGraph:
    lines = [shapely.LineString(seg) for seg in segments if np.linalg.norm(seg[1] - seg[0]) > 0]
    faces = list(polygonize(unary_union(lines))) if lines else []
    if faces:
        outline = unary_union(faces)
    else:
        outline = shapely.MultiPoint(junctions).convex_hull
    boundary = outline.boundary
    eave = np.zeros(len(segments), dtype=bool)
    for i, seg in enumerate(segments):
        mid = shapely.Point((seg[0] + seg[1]) / 2)
        eave[i] = boundary.distance(mid) < 0.5 and boundary.distance(shapely.Point(seg[0])) < 0.5 \
            and boundary.distance(shapely.Point(seg[1])) < 0.5
    return RoofGraph(junctions, segments, eave, outline)


def _fill(mask: np.ndarray, geom: shapely.Geometry) -> None:
    polys = getattr(geom, "geoms", [geom])
    for poly in polys:
        if not isinstance(poly, shapely.Polygon) or poly.is_empty:
            continue
        cv2.fillPoly(mask, [np.round(np.asarray(poly.exterior.coords)[:, :2]).astype(np.int32)], 1)
        for hole in poly.interiors:
            cv2.fillPoly(mask, [np.round(np.asarray(hole.coords)[:, :2]).astype(np.int32)], 0)


def draw_segments(segments: np.ndarray, size: tuple[int, int], width: int = 1) -> np.ndarray:
    """``(H, W)`` uint8 {0, 1} map with ``segments`` (``(S, 2, 2)`` x/y px) drawn ``width`` px wide
    (8-connected for width 1)."""
    out = np.zeros(size, dtype=np.uint8)
    for (x0, y0), (x1, y1) in segments:
        cv2.line(out, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), 1, int(width))
    return out


def render_targets(graph: RoofGraph, size: tuple[int, int], *, line_width: int = 3,
                   junction_sigma: float = 2.0) -> dict[str, np.ndarray]:
    """Training and evaluation targets of one graph, already in the output pixel frame.

    Args:
        graph: the graph scaled to the output size (:meth:`RoofGraph.scaled`).
        size: (height, width) px.
        line_width: width of the training line maps in px (thin structures drawn thicker so that
            the positives are not a vanishing fraction; metrics use the 1 px maps).
        junction_sigma: Gaussian sigma of the junction heatmap in px.

    Returns:
        ``outline`` (H, W) uint8 {0, 1}; ``lines`` (3, H, W) float32: inner-line map, eave map,
        junction heatmap in [0, 1]; ``lines_thin`` (2, H, W) uint8: all lines 1 px wide, junction points.
    """
    h, w = size
    outline = np.zeros(size, np.uint8)
    _fill(outline, graph.outline)
    inner = draw_segments(graph.segments[~graph.eave], size, line_width).astype(np.float32)
    eave = draw_segments(graph.segments[graph.eave], size, line_width).astype(np.float32)
    points = np.zeros(size, np.uint8)
    for x, y in graph.junctions:
        xi, yi = int(round(x)), int(round(y))
        if 0 <= xi < w and 0 <= yi < h:
            points[yi, xi] = 1
    heat = np.zeros(size, np.float32)
    if points.any():
        k = int(3 * junction_sigma) * 2 + 1
        heat = cv2.GaussianBlur(points.astype(np.float32), (k, k), junction_sigma)
        # normalise each blob to a peak of 1 (a single point's blurred peak is 1 / (2 pi sigma^2))
        heat = np.clip(heat * (2 * np.pi * junction_sigma ** 2), 0, 1)
    thin = draw_segments(graph.segments, size, 1)
    return {"outline": outline, "lines": np.stack([inner, eave, heat]),
            "lines_thin": np.stack([thin, points])}

"""``roofseg-predict TILE... --checkpoint CKPT --out DIR``: class maps, outlines and lines of tiles.

Per tile ``NAME`` it writes, for the heads the checkpoint has (a head whose label no training
sample carried is not emitted):

- ``NAME_<head>.png``: the tile beside the coloured class map, with a legend (superstructures,
  segments), or the roof overlay (outline), or the drawn roof lines (lines);
- ``NAME_<head>_mask.png``: the class map at the tile's resolution in **RID's mask convention**
  (RID ``mask_generation.py``: class ids 0..n-1, background = n): outline 0 = roof, 1 = not roof
  (as ``roof_outlines_reviewed``); superstructures 0..7 RID classes, 8 background; segments 0..K-1
  azimuth sectors, K flat, K+1 background. The lines head writes its three probability maps as an
  RGB image (inner, eave, junction; 0..255); plus ``NAME_<head>_mask.tif`` (GeoTIFF, same values,
  the tile's transform and CRS) when the tile is georeferenced;
- vectors (:mod:`roofseg.geo`: pixel-edge polygons traced with ``rasterio.features.shapes``,
  simplified with Douglas-Peucker ``--simplify`` px, made valid): roof outlines, roof segments
  (azimuth class; with a georeference: ``area_m2``, ``azimuth_deg`` in RID's convention measured
  in ``--metric-crs``, ``slope_deg`` from RID's ``segments_reviewed.csv`` where a labelled segment
  overlaps, ``usable_pv_area_m2`` = area minus the predicted superstructures), superstructures,
  roof lines (thinning + probabilistic Hough, ``inner``/``eave``) and junctions.
  Georeferenced (a GeoTIFF with a CRS, ``--footprints image_boundaries.csv``, or a RID root next to
  the tile): ``NAME.geojson`` (RFC 7946, lon/lat) and ``NAME.gpkg`` (GeoPackage, one layer per
  kind, EPSG:4326). Otherwise ``NAME.pixels.json``: the same features in pixel-edge coordinates
  (x right, y down), not a GeoJSON file.

Tiles larger than ``--window`` px are predicted by a sliding window (``--overlap``) whose
probabilities are blended with a separable linear ramp, not by resizing the whole tile. Memory
stays bounded on large orthophotos (AIRS' 10,000 px tiles): windows are run one row of windows at a
time and each finished band of rows is turned into compact maps (:func:`predict_maps`: uint8 class
maps and uint8 probabilities) at once, so full-resolution float probabilities never exist; the
float state is about one band, ``4 * (sum of head channels + largest head) * window * W`` bytes
(:func:`predict_maps`; measured by ``bench/roofseg_memory.py``).
Figures (``NAME_<head>.png``) of tiles larger than ``FIGURE_MAX_SIDE`` px are drawn downscaled to
that side; masks, GeoTIFFs and vectors are always at the tile's resolution.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.morphology import skeletonize

import mlcore  # noqa: F401
from mlcore.checkpoint import check_architectures, load_checkpoint
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from mlcore.pretrained import normalization
from roofseg.data import DataError, load_rgb
from roofseg.data.rid import SUPERSTRUCTURE_CLASSES, load_footprints, segment_classes
from roofseg.data.sources import TASK_HEADS
from roofseg.geo import (
    RID_METRIC_CRS,
    WGS84,
    GeoRef,
    best_overlap,
    mask_polygons,
    read_geotiff,
    sector_centre_azimuth,
    segment_azimuth,
    valid_polygons,
    write_geotiff,
)
from roofseg.metrics import junction_peaks
from roofseg.models import RoofNet
from roofseg.viz import class_map_figure, overlay


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[RoofNet, dict[str, Any]]:
    """Model and config of an mlcore checkpoint written by ``roofseg-train``.

    Raises:
        CheckpointError: unreadable checkpoint; DataError: it holds no roofseg config.
    """
    ckpt = load_checkpoint(checkpoint, expect_domain="roofseg")
    cfg = ckpt.get("config") or {}
    if "task" not in cfg:
        raise DataError(f"{checkpoint}: not a roofseg checkpoint (no task in its config)")
    model = RoofNet(TASK_HEADS[cfg["task"]], cfg.get("encoder", "efficientnet-lite0"), None, cfg.get("sectors", 16))
    check_architectures(ckpt, model, name=f"--checkpoint {checkpoint}")  # efficientnet_lite0 vs tf_efficientnet_lite0
    model.load_state_dict(ckpt["model"])
    if cfg.get("trained_heads") is not None:  # heads no training sample was labelled for are not emitted
        keep = [h for h in cfg["trained_heads"].split(",") if h]
        model.heads = torch.nn.ModuleDict({h: m for h, m in model.heads.items() if h in keep})
    return model.to(device).eval(), cfg


CLASS_HEADS = ("superstructures", "segments")
"""Heads whose compact map is an ``(H, W)`` uint8 class index (argmax of the softmax)."""
FIGURE_MAX_SIDE = 4096
"""``roofseg-predict`` draws the figures of larger tiles downscaled to this side (px)."""


def compact_maps(probs: dict[str, np.ndarray], *, inplace: bool = False) -> dict[str, np.ndarray]:
    """Probabilities of :func:`predict_tile` -> the compact maps of :func:`predict_maps`.

    Class heads (superstructures, segments): ``(C, H, W)`` float -> ``(H, W)`` uint8 argmax;
    sigmoid heads (outline, lines): ``(C, H, W)`` float in [0, 1] -> uint8 ``rint(255 p)``, for which
    ``q >= 255 t`` holds exactly when ``p >= t`` for the thresholds used here (0.5 -> 127.5). Arrays
    that are uint8 already are returned unchanged, so the function is idempotent. ``inplace``
    lets it overwrite float inputs instead of allocating temporaries.
    """
    out = {}
    for head, p in probs.items():
        if p.dtype == np.uint8:
            out[head] = p
        elif head in CLASS_HEADS:
            out[head] = _argmax_u8(p)
        else:
            q = p if inplace and p.dtype == np.float32 else p.astype(np.float32)
            np.clip(q, 0.0, 1.0, out=q)
            q *= 255.0
            np.rint(q, out=q)
            out[head] = q.astype(np.uint8)
    return out


def _argmax_u8(p: np.ndarray) -> np.ndarray:
    """``p.argmax(0)`` of a ``(C, H, W)`` array as uint8 (first maximum on ties, as numpy), one
    channel at a time: ``np.argmax`` over axis 0 would copy the whole array transposed."""
    best = p[0].copy()
    idx = np.zeros(p.shape[1:], np.uint8)
    for c in range(1, p.shape[0]):
        better = p[c] > best
        idx[better] = c
        np.maximum(best, p[c], out=best)
    return idx


def _at_least(p: np.ndarray, threshold: float) -> np.ndarray:
    """``p >= threshold`` for a float probability or its uint8 ``rint(255 p)``."""
    return p >= (threshold * 255.0 if p.dtype == np.uint8 else threshold)


def _ramp(n: int, ramp: int) -> np.ndarray:
    """1-D blending weight: rises linearly over ``ramp`` px at both ends, 1 in between (> 0 everywhere)."""
    i = np.arange(n, dtype=np.float32)
    r = max(1, ramp)
    return np.clip(np.minimum(i + 0.5, n - i - 0.5) / r, 1.0 / (2 * r), 1.0)


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


@torch.inference_mode()
def _forward(model: torch.nn.Module, image: np.ndarray, image_size: int, out_hw: tuple[int, int],
             device) -> dict[str, torch.Tensor]:
    x = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    mean, std = normalization(model)  # the encoder's data config, as in training
    x = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
    t = torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0).to(device)
    out = {}
    for head, logits in model(t).items():
        logits = F.interpolate(logits.float(), size=out_hw, mode="bilinear", align_corners=False)[0]
        out[head] = logits.softmax(0) if head in ("superstructures", "segments") else logits.sigmoid()
    return out


def _blended_bands(model: torch.nn.Module, image: np.ndarray, image_size: int, device, window: int,
                   overlap: float):
    """Yield ``(y0, y1, {head: (C, y1 - y0, W) float32 view}, (y1 - y0, W) weight-sum view)`` for
    consecutive row bands of the tile, top to bottom: each band's weighted probability sums are
    final when yielded (divide by the weight sum; the views are overwritten afterwards).

    Windows are run one row of windows at a time into a float32 accumulator of ``window`` rows
    (and a weight sum); after a row of windows the rows no later window reaches are yielded and
    shifted away. Float memory: the accumulator, ``4 * sum(C) * window * W`` bytes, a copy of its
    overlap rows while shifting, and one window's forward pass.
    """
    h, w = image.shape[:2]
    ph, pw = max(h, window), max(w, window)
    padded = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect") if (ph, pw) != (h, w) else image
    stride = max(1, int(round(window * (1 - overlap))))
    ramp = max(1, int(round(window * overlap / 2))) if overlap > 0 else window
    wgt = np.outer(_ramp(window, ramp), _ramp(window, ramp)).astype(np.float32)
    acc: dict[str, np.ndarray] = {}
    wsum = np.zeros((window, pw), np.float32)
    ys = _window_starts(ph, window, stride)
    for i, y in enumerate(ys):
        for x in _window_starts(pw, window, stride):
            crop = np.ascontiguousarray(padded[y:y + window, x:x + window])
            for head, prob in _forward(model, crop, image_size, (window, window), device).items():
                if head not in acc:
                    acc[head] = np.zeros((prob.shape[0], window, pw), np.float32)
                acc[head][:, :, x:x + window] += prob.cpu().numpy() * wgt
            wsum[:, x:x + window] += wgt
        done = (ys[i + 1] if i + 1 < len(ys) else ph) - y  # rows that no later window reaches
        y1 = min(y + done, h)
        if y1 > y:
            yield y, y1, {k: v[:, :y1 - y, :w] for k, v in acc.items()}, wsum[:y1 - y, :w]
        for v in (*acc.values(), wsum[None]):
            v[:, :window - done] = v[:, done:].copy()
            v[:, window - done:] = 0.0


def _check_window(window: int, overlap: float) -> None:
    if not 0 <= overlap <= 0.9 or window < 32:
        raise ValueError(f"sliding window: expected --window >= 32 and --overlap in [0, 0.9], got {window}, {overlap}")


@torch.inference_mode()
def predict_tile(model: torch.nn.Module, image: np.ndarray, image_size: int, device: str | torch.device = "cpu",
                 *, window: int | None = None, overlap: float = 0.25) -> dict[str, np.ndarray]:
    """Probabilities of every head at the tile's resolution (full-resolution float32: for tiles of
    RID's size; ``roofseg-predict`` uses :func:`predict_maps`, which never holds them).

    A tile no larger than ``window`` px (or any tile when ``window`` is None) is resized to the
    model's ``image_size`` and the outputs resized back. A larger tile (an orthophoto) is cut into
    ``window`` x ``window`` crops with ``overlap`` (fraction of the window), each crop resized to
    ``image_size`` (the same scale as training when ``window`` is the training tiles' side), and
    the crops' probabilities are blended with a separable linear ramp over the overlap (weights
    summed and divided out, so no seam and no edge is darker than another).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        image_size: the model's input side in px.
        window: crop side in input px (None: whole tile).
        overlap: in [0, 0.9].

    Returns:
        ``{head: (C, H, W) float32}``: softmax for class heads, sigmoid for outline and lines.

    Raises:
        ValueError: ``overlap`` outside [0, 0.9] or ``window`` < 32.
    """
    h, w = image.shape[:2]
    if window is None or max(h, w) <= window:
        return {k: v.cpu().numpy() for k, v in _forward(model, image, image_size, (h, w), device).items()}
    _check_window(window, overlap)
    out: dict[str, np.ndarray] = {}
    for y0, y1, band, wsum in _blended_bands(model, image, image_size, device, window, overlap):
        for head, v in band.items():
            if head not in out:
                out[head] = np.empty((v.shape[0], h, w), np.float32)
            np.divide(v, wsum, out=out[head][:, y0:y1])
    return out


@torch.inference_mode()
def predict_maps(model: torch.nn.Module, image: np.ndarray, image_size: int, device: str | torch.device = "cpu",
                 *, window: int | None = None, overlap: float = 0.25) -> dict[str, np.ndarray]:
    """:func:`predict_tile` as compact maps (:func:`compact_maps`), with bounded memory on large tiles.

    Same windows, blending and values as :func:`predict_tile` followed by :func:`compact_maps`, but
    a windowed tile is converted band by band (:func:`_blended_bands`): the outputs take 1 byte
    per pixel per class head and per sigmoid channel, and the float state is bounded by the tile's
    width, not its height: ``4 * window * W * (sum(C) + max(C) + 3) + 4 * max(C) * window**2``
    bytes (the band accumulator for every head's ``C`` channels, one head's band being
    converted, the weight sum and argmax rows, one window's probabilities). A 10,000 px tile,
    window 512: 20 MB of band for an outline model, ~0.6 GB + 0.35 GB for a 31-channel ``--task
    multi`` model (16 sectors), where full-resolution float32 probabilities take 0.4 GB per channel
    (12.4 GB for 31). ``bench/roofseg_memory.py`` measures it.

    Returns:
        ``{"outline": (1, H, W) uint8 rint(255 p), "lines": (3, H, W) uint8 rint(255 p),
        "superstructures" / "segments": (H, W) uint8 class index}`` for the model's heads.

    Raises:
        ValueError: ``overlap`` outside [0, 0.9] or ``window`` < 32.
    """
    h, w = image.shape[:2]
    if window is None or max(h, w) <= window:
        return compact_maps(predict_tile(model, image, image_size, device))
    _check_window(window, overlap)
    out: dict[str, np.ndarray] = {}
    for y0, y1, band, wsum in _blended_bands(model, image, image_size, device, window, overlap):
        for head, v in band.items():  # one head's band of probabilities at a time
            m = compact_maps({head: np.divide(v, wsum)}, inplace=True)[head]
            if head not in out:
                out[head] = np.empty((h, w) if m.ndim == 2 else (m.shape[0], h, w), np.uint8)
            out[head][..., y0:y1, :] = m
    return out


def vectorize_lines(line_prob: np.ndarray, threshold: float = 0.5, min_length: int = 6) -> np.ndarray:
    """Line segments from a line probability map: threshold, thin to 1 px, fit segments with
    the probabilistic Hough transform (``cv2.HoughLinesP``, 1 px / 1 degree bins).

    Args:
        line_prob: ``(H, W)`` float in [0, 1], or its uint8 ``rint(255 p)`` (:func:`compact_maps`).

    Returns:
        ``(S, 2, 2)`` float64 ``[[x0, y0], [x1, y1]]`` segments in pixel-edge coordinates
        (the centres of the skeleton pixels, ``index + 0.5``).
    """
    skel = skeletonize(_at_least(line_prob, threshold)).astype(np.uint8) * 255
    lines = cv2.HoughLinesP(skel, 1, np.pi / 180, threshold=max(3, min_length // 2), minLineLength=min_length,
                            maxLineGap=3)
    if lines is None:
        return np.zeros((0, 2, 2))
    return lines.reshape(-1, 2, 2).astype(np.float64) + 0.5


def vector_features(probs: dict[str, np.ndarray], sectors: int, *, simplify: float = 1.5,
                    georef: GeoRef | None = None, metric_crs: str = RID_METRIC_CRS,
                    rid_segments: list | None = None) -> list[tuple[str, Any, dict[str, Any]]]:
    """``[(kind, pixel-edge geometry, properties)]`` of every head in ``probs`` (see the module doc).

    ``probs``: :func:`predict_tile`'s probabilities or :func:`predict_maps`' compact maps.

    With ``georef``, roof segments get ``area_m2``, ``azimuth_deg`` (RID convention: south 0, west
    +90, east -90, north 180; :func:`roofseg.geo.segment_azimuth` in ``metric_crs``),
    ``usable_pv_area_m2`` (segment minus the predicted superstructure polygons; None without a
    superstructure head) and ``slope_deg`` from the best-overlapping RID label in ``rid_segments``
    (``SegmentLabel`` list, lon/lat), else None.
    """
    probs = compact_maps(probs)
    h, w = next(iter(probs.values())).shape[-2:]
    feats: list[tuple[str, Any, dict[str, Any]]] = []
    if "outline" in probs:
        for poly in mask_polygons(_at_least(probs["outline"][0], 0.5), simplify):
            feats.append(("roof_outline", poly, {"kind": "roof_outline"}))
    sup_union = None
    if "superstructures" in probs:
        cmap = probs["superstructures"]
        sup_polys = []
        for k, name in enumerate(SUPERSTRUCTURE_CLASSES[:-1]):
            for poly in mask_polygons(cmap == k, simplify, min_area=1.0):
                feats.append(("superstructure", poly, {"kind": "superstructure", "class": name}))
                sup_polys.append(poly)
        sup_union = shapely.union_all(sup_polys) if sup_polys else shapely.Polygon()
    if "segments" in probs:
        names = segment_classes(sectors)
        cmap = probs["segments"]
        tree = None
        if rid_segments:
            from shapely.strtree import STRtree
            tree = STRtree([s.polygon for s in rid_segments])
        for k, name in enumerate(names[:-1]):
            for poly in mask_polygons(cmap == k, simplify):
                props: dict[str, Any] = {"kind": "roof_segment", "azimuth_class": name, "class_index": k}
                if georef is not None:
                    metric = georef.to_metric(poly, metric_crs)
                    props["area_m2"] = round(float(metric.area), 3)
                    props["azimuth_deg"] = (None if name == "flat" else
                                            round(segment_azimuth(metric, sector_centre_azimuth(k, sectors)), 2))
                    usable = None
                    if sup_union is not None:
                        usable = round(float(georef.to_metric(poly.difference(sup_union), metric_crs).area), 3)
                    props["usable_pv_area_m2"] = usable
                    slope = None
                    if rid_segments:
                        i = best_overlap(georef.to_lonlat(poly), [s.polygon for s in rid_segments], tree)
                        slope = rid_segments[i].slope if i is not None else None
                    props["slope_deg"] = slope
                    props["slope_source"] = "rid segments_reviewed.csv" if slope is not None else None
                feats.append(("roof_segment", poly, props))
    if "lines" in probs:
        inner, eave, junc = probs["lines"]
        for seg in vectorize_lines(np.maximum(inner, eave)):
            n = max(2, int(np.hypot(*(seg[1] - seg[0]))))
            xs = np.clip(np.linspace(seg[0, 0], seg[1, 0], n).astype(int), 0, w - 1)
            ys = np.clip(np.linspace(seg[0, 1], seg[1, 1], n).astype(int), 0, h - 1)
            kind = "eave" if eave[ys, xs].mean() > inner[ys, xs].mean() else "inner"
            feats.append(("roof_line", shapely.LineString(seg), {"kind": "roof_line", "line_type": kind}))
        for x, y in junction_points(junc):
            feats.append(("junction", shapely.Point(x + 0.5, y + 0.5), {"kind": "junction"}))
    return feats


def junction_points(junc: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int]]:
    """``[(col, row)]`` junctions of a junction probability map: 5x5 local maxima ``>= threshold``
    (as :func:`roofseg.metrics.junction_peaks`), one per 8-connected plateau of equal maxima (its
    pixel nearest the plateau's centroid), so a quantized (uint8) map gives no duplicates.

    Args:
        junc: ``(H, W)`` float in [0, 1], or its uint8 ``rint(255 p)``.
    """
    if junc.dtype == np.uint8:
        peaks = _at_least(junc, threshold) & (junc >= cv2.dilate(junc, np.ones((5, 5), np.uint8)))
    else:
        peaks = junction_peaks(torch.from_numpy(np.ascontiguousarray(junc, np.float32))[None], threshold)[0].numpy()
    n, labels = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    out = []
    for k in range(1, n):
        ys, xs = np.nonzero(labels == k)
        i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        out.append((int(xs[i]), int(ys[i])))
    return out


def to_geojson(probs: dict[str, np.ndarray], sectors: int, *, simplify: float = 1.5, georef: GeoRef | None = None,
               metric_crs: str = RID_METRIC_CRS, rid_segments: list | None = None,
               features: list | None = None) -> dict[str, Any]:
    """A FeatureCollection of :func:`vector_features`: RFC 7946 lon/lat with ``georef`` (valid
    geometries, counter-clockwise exteriors), else pixel-edge coordinates (``properties.coordinates``
    = ``pixel``; written as ``NAME.pixels.json``, not as GeoJSON). ``probs``: probabilities or
    compact maps (:func:`compact_maps`)."""
    h, w = next(iter(probs.values())).shape[-2:]
    if features is None:
        features = vector_features(probs, sectors, simplify=simplify, georef=georef, metric_crs=metric_crs,
                                   rid_segments=rid_segments)
    out = []
    for _, geom, props in features:
        if georef is not None:
            geom = georef.to_lonlat(geom)
            if geom.geom_type in ("Polygon", "MultiPolygon"):
                parts = valid_polygons(geom)
                if not parts:
                    continue
                geom = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
        out.append({"type": "Feature", "geometry": shapely.geometry.mapping(geom), "properties": props})
    meta: dict[str, Any] = {"coordinates": "lonlat" if georef is not None else "pixel", "height": h, "width": w}
    if georef is not None:
        meta["metric_crs"] = metric_crs
    else:
        meta["pixel_convention"] = "pixel edges: pixel (col, row) spans [col, col+1] x [row, row+1]; y down"
    return {"type": "FeatureCollection", "features": out, "properties": meta}


def write_geopackage(path: Path, features: list[tuple[str, Any, dict[str, Any]]], georef: GeoRef) -> Path:
    """One GeoPackage layer per feature kind (EPSG:4326, valid geometries), via pyogrio."""
    from pyogrio.raw import write

    path.unlink(missing_ok=True)
    by_kind: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for kind, geom, props in features:
        g = georef.to_lonlat(geom)
        if g.geom_type in ("Polygon", "MultiPolygon"):
            parts = valid_polygons(g)
            if not parts:
                continue
            g = shapely.MultiPolygon(parts)
        by_kind.setdefault(kind, []).append((g, props))
    gtypes = {"roof_outline": "MultiPolygon", "roof_segment": "MultiPolygon", "superstructure": "MultiPolygon",
              "roof_line": "LineString", "junction": "Point"}
    for kind, rows in by_kind.items():
        keys = [k for k in rows[0][1] if k != "kind"]
        fields, data = [], []
        for k in keys:
            vals = [r[1].get(k) for r in rows]
            if all(isinstance(v, (int, float)) or v is None for v in vals) and any(v is not None for v in vals):
                data.append(np.array([np.nan if v is None else float(v) for v in vals]))
            else:
                data.append(np.array(["" if v is None else str(v) for v in vals], dtype=object))
            fields.append(k)
        write(str(path), np.array([shapely.to_wkb(r[0]) for r in rows], dtype=object), data, fields, layer=kind,
              driver="GPKG", geometry_type=gtypes[kind], crs=WGS84, append=path.exists())
    return path


def _georef(tile: Path, image_hw: tuple[int, int], tiff_ref: GeoRef | None, footprints: dict | None,
            footprints_path: Path | None) -> tuple[GeoRef | None, Path | None]:
    """The tile's georeference (its GeoTIFF's, else its RID footprint) and the folder that holds
    RID's ``segments_reviewed.csv`` (for slopes), if any."""
    if footprints is not None:
        bounds = footprints.get(tile.stem)
        seg_dir = footprints_path.parent if footprints_path is not None else None
        ref = GeoRef.from_lonlat_bounds(bounds, image_hw) if bounds is not None else None
        return (tiff_ref or ref), seg_dir
    for root in (tile.parent.parent, tile.parent):
        f = root / "vector_labels" / "image_boundaries.csv"
        if f.is_file():
            bounds = load_footprints(f).get(tile.stem)
            ref = GeoRef.from_lonlat_bounds(bounds, image_hw) if bounds is not None else None
            return (tiff_ref or ref), f.parent
    return tiff_ref, None


def figures(image: np.ndarray, probs: dict[str, np.ndarray], sectors: int,
            max_side: int | None = None) -> dict[str, tuple[Image.Image, np.ndarray]]:
    """``{head: (figure, raw uint8 map at the tile's resolution)}`` for the heads in ``probs``
    (probabilities or :func:`compact_maps`). With ``max_side``, a larger tile's figure is drawn
    downscaled to that side (tile: area interpolation; class maps: nearest); ``raw`` never is."""
    maps = compact_maps(probs)
    raws = {}
    for head, m in maps.items():
        if head == "outline":
            raws[head] = (~_at_least(m[0], 0.5)).astype(np.uint8)  # RID convention: 0 = roof, 1 = not roof
        elif head == "lines":
            raws[head] = np.ascontiguousarray(m.transpose(1, 2, 0))  # inner, eave, junction as RGB
        else:
            raws[head] = m
    h, w = image.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        maps = {k: (cv2.resize(v, size, interpolation=cv2.INTER_NEAREST) if k in CLASS_HEADS else
                    np.stack([cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in v]))
                for k, v in maps.items()}
    out = {}
    for head, m in maps.items():
        if head == "superstructures":
            out[head] = (class_map_figure(image, m, list(SUPERSTRUCTURE_CLASSES)), raws[head])
        elif head == "segments":
            out[head] = (class_map_figure(image, m, list(segment_classes(sectors))), raws[head])
        elif head == "outline":
            col = np.zeros_like(image)
            col[..., 1] = 255
            roof = _at_least(m[0], 0.5)
            out[head] = (Image.fromarray(np.concatenate([image, overlay(image, col, roof)], 1)), raws[head])
        elif head == "lines":
            drawn = image.copy()
            drawn[skeletonize(_at_least(np.maximum(m[0], m[1]), 0.5))] = (255, 0, 0)
            for x, y in junction_points(m[2]):
                drawn[y, x] = (255, 255, 0)
            out[head] = (Image.fromarray(np.concatenate([image, drawn], 1)), raws[head])
    return out


def save_val_examples(model: torch.nn.Module, dataset, path: Path, *, n: int = 4, device="cpu", sectors: int = 16) -> None:
    """A grid of ``n`` validation tiles: each row the tile and every head's prediction."""
    was = model.training
    model.eval()
    rows = []
    idx = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset)), dtype=int)
    for i in idx:
        image = load_rgb(dataset.samples[i].image)
        image = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
        probs = predict_tile(model, image, dataset.size, device)
        panels = [np.asarray(f.convert("RGB").resize((f.width * 256 // f.height, 256)))
                  for f, _ in figures(image, probs, sectors).values()]
        rows.append(np.concatenate(panels, 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(path)
    model.train(was)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``roofseg-predict`` (0 ok, 2 bad flags, 1 unreadable tile or checkpoint)."""
    p = ArgumentParser(prog="roofseg-predict", description=__doc__.splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("tiles", nargs="+", metavar="TILE", help="aerial tiles: PNG/JPEG, or GeoTIFF (its transform "
                   "and CRS georeference the outputs)")
    p.add_argument("--checkpoint", required=True, help="roofseg-train checkpoint (best_*.pt or last.pt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--footprints", default=None, help="image_boundaries.csv (id, lon-first WKT polygon) for lon/lat "
                   "output; default: a RID root's vector_labels/ next to the tile")
    p.add_argument("--simplify", type=float, default=1.5, help="polygon simplification tolerance in px")
    p.add_argument("--window", type=int, default=None, help="sliding-window side in input px for tiles larger than "
                   "this; smaller tiles are predicted whole (default: the checkpoint's --crop-size, else 512, "
                   "RID's tile side: the scale the model was trained at)")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap, fraction of --window")
    p.add_argument("--metric-crs", default=RID_METRIC_CRS, help="metric CRS for areas (m2) and azimuths")
    p.add_argument("--device", default="cpu")

    def run() -> int:
        args = p.parse_args(argv)
        if args.simplify < 0:
            raise ConfigError(f"--simplify must be >= 0 (got {args.simplify})")
        if (args.window is not None and args.window < 32) or not 0 <= args.overlap <= 0.9:
            raise ConfigError(f"--window must be >= 32 and --overlap in [0, 0.9] (got {args.window}, {args.overlap})")
        try:
            from pyproj import CRS

            CRS.from_user_input(args.metric_crs)
        except Exception:  # pyproj.exceptions.CRSError
            raise ConfigError(f"--metric-crs {args.metric_crs}: not a CRS pyproj knows (e.g. EPSG:25832)") from None
        for t in args.tiles:
            if not Path(t).is_file():
                raise ConfigError(f"TILE {t}: file not found")
        model, cfg = load_model(args.checkpoint, args.device)
        sectors, size = int(cfg.get("sectors", 16)), int(cfg.get("image_size", 512))
        window = args.window or int(cfg.get("crop_size") or 512)
        fp_path = Path(args.footprints) if args.footprints else None
        footprints = load_footprints(fp_path) if fp_path else None
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for t in args.tiles:
            tile = Path(t)
            tiff_ref = None
            if tile.suffix.lower() in (".tif", ".tiff"):
                try:
                    image, tiff_ref = read_geotiff(tile)
                except OSError as exc:
                    raise DataError(f"{tile}: cannot read GeoTIFF ({exc})") from None
            else:
                image = load_rgb(tile)
            probs = predict_maps(model, image, size, args.device, window=window, overlap=args.overlap)
            georef, seg_dir = _georef(tile, image.shape[:2], tiff_ref, footprints, fp_path)
            for head, (fig, raw) in figures(image, probs, sectors, FIGURE_MAX_SIDE).items():
                fig.save(out / f"{tile.stem}_{head}.png")
                Image.fromarray(raw).save(out / f"{tile.stem}_{head}_mask.png")
                if georef is not None:
                    write_geotiff(out / f"{tile.stem}_{head}_mask.tif",
                                  raw.transpose(2, 0, 1) if raw.ndim == 3 else raw, georef)
            rid_segments = None
            if georef is not None and seg_dir is not None and (seg_dir / "segments_reviewed.csv").is_file():
                rid_segments = _rid_segments_near(seg_dir / "segments_reviewed.csv", georef, image.shape[:2])
            feats = vector_features(probs, sectors, simplify=args.simplify, georef=georef,
                                    metric_crs=args.metric_crs, rid_segments=rid_segments)
            gj = to_geojson(probs, sectors, georef=georef, metric_crs=args.metric_crs, features=feats)
            entry: dict[str, Any] = {"tile": str(tile), "features": len(gj["features"]),
                                     "coordinates": gj["properties"]["coordinates"]}
            if georef is not None:
                (out / f"{tile.stem}.geojson").write_text(json.dumps(gj))
                entry["geojson"] = str(out / f"{tile.stem}.geojson")
                if feats:
                    entry["gpkg"] = str(write_geopackage(out / f"{tile.stem}.gpkg", feats, georef))
            else:
                (out / f"{tile.stem}.pixels.json").write_text(json.dumps(gj))
                entry["pixels_json"] = str(out / f"{tile.stem}.pixels.json")
            written.append(entry)
        print(json.dumps({"checkpoint": str(args.checkpoint), "task": cfg["task"], "tiles": written}))
        return 0

    return run_cli(run, prog="roofseg-predict", user_errors=(DataError, ValueError))


def _rid_segments_near(csv_path: Path, georef: GeoRef, hw: tuple[int, int]) -> list:
    """RID's labelled segments (lon/lat) that intersect the tile."""
    from roofseg.data.rid import _segments_cached

    segments, tree = _segments_cached(str(csv_path.parent.parent if csv_path.parent.name == "vector_labels"
                                          else csv_path.parent))
    box = shapely.box(*georef.lonlat_bounds(hw))
    return [segments[i] for i in sorted(tree.query(box, predicate="intersects"))]


if __name__ == "__main__":
    raise SystemExit(main())

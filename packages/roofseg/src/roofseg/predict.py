"""``roofseg-predict TILE... --checkpoint CKPT --out DIR``: class maps, outlines and lines of tiles.

Per tile ``NAME`` it writes, for the heads the checkpoint has:

- ``NAME_<head>.png``: the tile beside the coloured class map, with a legend (superstructures,
  segments), or the roof overlay (outline), or the drawn roof lines (lines);
- ``NAME_<head>_mask.png``: the class map at the tile's resolution in **RID's mask convention**
  (RID ``mask_generation.py``: class ids 0..n-1, background = n): outline 0 = roof, 1 = not roof
  (as ``roof_outlines_reviewed``); superstructures 0..7 RID classes, 8 background; segments 0..K-1
  azimuth sectors, K flat, K+1 background. The lines head writes its three probability maps as an
  RGB image (inner, eave, junction; 0..255);
- ``NAME.geojson``: a FeatureCollection with roof-outline polygons (contours simplified with
  Douglas-Peucker, ``--simplify`` px), segment polygons carrying their azimuth class, roof lines
  vectorized from the line map (thinning, then probabilistic Hough segment fitting) typed
  ``inner``/``eave``, and junction points. Coordinates are pixels ``[x, y]`` (y down) or, when
  the tile's footprint is known (``--footprints image_boundaries.csv``, or a RID root next to
  the tile), ``[longitude, latitude]`` (EPSG:4326).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import mlcore  # noqa: F401
from mlcore.checkpoint import load_checkpoint
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from mlcore.data import IMAGENET_MEAN, IMAGENET_STD
from roofseg.data import DataError, load_rgb
from roofseg.data.rid import SUPERSTRUCTURE_CLASSES, load_footprints, pixel_to_lonlat, segment_classes
from roofseg.data.sources import TASK_HEADS
from roofseg.metrics import junction_peaks, thin_lines
from roofseg.models import RoofNet
from roofseg.viz import class_map_figure, overlay


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[RoofNet, dict[str, Any]]:
    """Model and config of an mlcore checkpoint written by ``roofseg-train``.

    Raises:
        CheckpointError: unreadable checkpoint; DataError: it holds no roofseg config.
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.get("config") or {}
    if "task" not in cfg:
        raise DataError(f"{checkpoint}: not a roofseg checkpoint (no task in its config)")
    model = RoofNet(TASK_HEADS[cfg["task"]], cfg.get("encoder", "efficientnet-lite0"), None, cfg.get("sectors", 16))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


@torch.inference_mode()
def predict_tile(model: RoofNet, image: np.ndarray, image_size: int, device: str | torch.device = "cpu",
                 ) -> dict[str, np.ndarray]:
    """Probabilities of every head at the tile's resolution.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        image_size: the model's input side in px.

    Returns:
        ``{head: (C, H, W) float32}``: softmax for class heads, sigmoid for outline and lines.
    """
    x = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    t = torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0).to(device)
    out = {}
    for head, logits in model(t).items():
        logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        act = logits.softmax(0) if head in ("superstructures", "segments") else logits.sigmoid()
        out[head] = act.cpu().numpy()
    return out


def _contours(mask: np.ndarray, simplify: float) -> list[np.ndarray]:
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = []
    for c in cs:
        if cv2.contourArea(c) < 4:
            continue
        a = cv2.approxPolyDP(c, simplify, True)[:, 0, :].astype(np.float64)
        if len(a) >= 3:
            out.append(a)
    return out


def vectorize_lines(line_prob: np.ndarray, threshold: float = 0.5, min_length: int = 6) -> np.ndarray:
    """Line segments from a line probability map: threshold, thin to 1 px, fit segments with
    the probabilistic Hough transform (``cv2.HoughLinesP``, 1 px / 1 degree bins).

    Args:
        line_prob: ``(H, W)`` float in [0, 1].

    Returns:
        ``(S, 2, 2)`` float64 ``[[x0, y0], [x1, y1]]`` pixel segments.
    """
    skel = thin_lines(line_prob, threshold).astype(np.uint8) * 255
    lines = cv2.HoughLinesP(skel, 1, np.pi / 180, threshold=max(3, min_length // 2), minLineLength=min_length,
                            maxLineGap=3)
    if lines is None:
        return np.zeros((0, 2, 2))
    return lines.reshape(-1, 2, 2).astype(np.float64)


def to_geojson(probs: dict[str, np.ndarray], sectors: int, *, simplify: float = 1.5,
               footprint: tuple[float, float, float, float] | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of outlines, segments, lines and junctions (see the module doc)."""
    h, w = next(iter(probs.values())).shape[1:]

    def coords(xy: np.ndarray) -> list[list[float]]:
        xy = np.asarray(xy, dtype=np.float64)
        if footprint is not None:
            lon, lat = pixel_to_lonlat(xy[:, 0], xy[:, 1], footprint, (h, w))
            xy = np.stack([lon, lat], 1)
        return [[float(a), float(b)] for a, b in xy]

    def ring(a: np.ndarray) -> list[list[float]]:
        c = coords(a)
        return c + [c[0]]

    feats: list[dict[str, Any]] = []
    if "outline" in probs:
        for a in _contours(probs["outline"][0] >= 0.5, simplify):
            feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring(a)]},
                          "properties": {"kind": "roof_outline"}})
    if "segments" in probs:
        names = segment_classes(sectors)
        cmap = probs["segments"].argmax(0)
        for k, name in enumerate(names[:-1]):
            for a in _contours(cmap == k, simplify):
                feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring(a)]},
                              "properties": {"kind": "roof_segment", "azimuth_class": name, "class_index": k}})
    if "superstructures" in probs:
        cmap = probs["superstructures"].argmax(0)
        for k, name in enumerate(SUPERSTRUCTURE_CLASSES[:-1]):
            for a in _contours(cmap == k, simplify):
                feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring(a)]},
                              "properties": {"kind": "superstructure", "class": name}})
    if "lines" in probs:
        inner, eave, junc = probs["lines"]
        for seg in vectorize_lines(np.maximum(inner, eave)):
            n = max(2, int(np.hypot(*(seg[1] - seg[0]))))
            xs = np.clip(np.linspace(seg[0, 0], seg[1, 0], n).round().astype(int), 0, w - 1)
            ys = np.clip(np.linspace(seg[0, 1], seg[1, 1], n).round().astype(int), 0, h - 1)
            kind = "eave" if eave[ys, xs].mean() > inner[ys, xs].mean() else "inner"
            feats.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": coords(seg)},
                          "properties": {"kind": "roof_line", "line_type": kind}})
        peaks = junction_peaks(torch.from_numpy(junc)[None])[0].numpy()
        ys, xs = np.nonzero(peaks)
        for x, y in zip(xs, ys, strict=True):
            feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": coords(np.array([[x, y]]))[0]},
                          "properties": {"kind": "junction"}})
    return {"type": "FeatureCollection", "features": feats,
            "properties": {"coordinates": "lonlat" if footprint is not None else "pixel", "height": h, "width": w}}


def _find_footprint(tile: Path, footprints: dict[str, tuple] | None) -> tuple | None:
    if footprints is not None:
        return footprints.get(tile.stem)
    for root in (tile.parent.parent, tile.parent):
        f = root / "vector_labels" / "image_boundaries.csv"
        if f.is_file():
            return load_footprints(f).get(tile.stem)
    return None


def figures(image: np.ndarray, probs: dict[str, np.ndarray], sectors: int) -> dict[str, tuple[Image.Image, np.ndarray]]:
    """``{head: (figure, raw uint8 map)}`` for the heads in ``probs``."""
    out = {}
    for head, p in probs.items():
        if head == "superstructures":
            cm = p.argmax(0).astype(np.uint8)
            out[head] = (class_map_figure(image, cm, list(SUPERSTRUCTURE_CLASSES)), cm)
        elif head == "segments":
            cm = p.argmax(0).astype(np.uint8)
            out[head] = (class_map_figure(image, cm, list(segment_classes(sectors))), cm)
        elif head == "outline":
            m = p[0] >= 0.5
            col = np.zeros_like(image)
            col[..., 1] = 255
            # RID convention: 0 = roof, 1 = not roof
            out[head] = (Image.fromarray(np.concatenate([image, overlay(image, col, m)], 1)), (~m).astype(np.uint8))
        elif head == "lines":
            line = thin_lines(np.maximum(p[0], p[1]))
            drawn = image.copy()
            drawn[line] = (255, 0, 0)
            drawn[junction_peaks(torch.from_numpy(p[2])[None])[0].numpy()] = (255, 255, 0)
            raw = (np.stack([p[0], p[1], p[2]], -1) * 255).astype(np.uint8)
            out[head] = (Image.fromarray(np.concatenate([image, drawn], 1)), raw)
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
    p.add_argument("tiles", nargs="+", metavar="TILE", help="aerial tile images")
    p.add_argument("--checkpoint", required=True, help="roofseg-train checkpoint (best_*.pt or last.pt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--footprints", default=None, help="image_boundaries.csv (id, lon-first WKT polygon) for lon/lat output")
    p.add_argument("--simplify", type=float, default=1.5, help="polygon simplification tolerance in px")
    p.add_argument("--device", default="cpu")

    def run() -> int:
        args = p.parse_args(argv)
        if args.simplify < 0:
            raise ConfigError(f"--simplify must be >= 0 (got {args.simplify})")
        for t in args.tiles:
            if not Path(t).is_file():
                raise ConfigError(f"TILE {t}: file not found")
        model, cfg = load_model(args.checkpoint, args.device)
        sectors, size = int(cfg.get("sectors", 16)), int(cfg.get("image_size", 512))
        footprints = load_footprints(args.footprints) if args.footprints else None
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for t in args.tiles:
            tile = Path(t)
            image = load_rgb(tile)
            probs = predict_tile(model, image, size, args.device)
            for head, (fig, raw) in figures(image, probs, sectors).items():
                fig.save(out / f"{tile.stem}_{head}.png")
                Image.fromarray(raw).save(out / f"{tile.stem}_{head}_mask.png")
            gj = to_geojson(probs, sectors, simplify=args.simplify, footprint=_find_footprint(tile, footprints))
            (out / f"{tile.stem}.geojson").write_text(json.dumps(gj))
            written.append({"tile": str(tile), "geojson": str(out / f"{tile.stem}.geojson"),
                            "features": len(gj["features"]), "coordinates": gj["properties"]["coordinates"]})
        print(json.dumps({"checkpoint": str(args.checkpoint), "task": cfg["task"], "tiles": written}))
        return 0

    return run_cli(run, prog="roofseg-predict", user_errors=(DataError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())

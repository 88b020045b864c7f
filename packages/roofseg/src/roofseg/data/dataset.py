"""``RoofDataset``: tiles resized to a square, with the targets of every head and a has-label flag.

Augmentation (training only) is done on the CPU with numpy: flips and 90-degree rotations applied
jointly to the image and every target, and a brightness/contrast jitter. A geometric transform
changes which way a roof faces, so segment azimuth classes are remapped with it
(:func:`azimuth_lut`); torchvision's v2 transforms know nothing about azimuth classes, which is
why this is written here.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mlcore.pretrained import EFFICIENTNET_LITE0_CFG
from roofseg.data.lines import parse_graph, render_targets
from roofseg.data.rid import SUPERSTRUCTURE_CLASSES, DataError, SegmentRasterizer
from roofseg.data.sources import RoofSample

log = logging.getLogger("roofseg.data")

IGNORE_INDEX = 255
"""Class-map value excluded from losses and metrics (e.g. a SolarNet+ orientation the scheme lacks)."""

N_SUPERSTRUCTURE_CLASSES = 9


def load_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an image file.

    Raises:
        DataError: the file is missing or not a readable image (names the file).
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None


def load_index_mask(path: Path) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` uint8 array of a mask file (palette indices kept).

    Raises:
        DataError: unreadable file.
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read mask ({exc.__class__.__name__}: {exc})") from None


def outline_to_roof(mask: np.ndarray, source: str) -> np.ndarray:
    """``(H, W)`` uint8 {0, 1} roof mask (1 = roof) from an outline label file's values.

    RID writes its masks with class ids 0..n-1 and background = n (RID ``mask_generation.py``);
    its roof-outline (PV-area) masks have one class, so **0 = roof, 1 = background**: checked on
    the sample, where value 1 covers streets, gardens and trees and 0 the labelled roofs. AIRS
    and other binary folders use non-zero = building.
    """
    if source == "rid":
        return (mask == 0).astype(np.uint8)
    return (mask > 0).astype(np.uint8)


SOLARNET_ORIENTATION: tuple[str, ...] = ("flat", "W", "S", "E", "N")
"""SolarNet+ orientation channel values 1..5 (0 = background), from SolarNet+'s own PV code:
``pvcode/cal_pv.py`` sets ``segment_classes = ['flat', 'W', 'S', 'E', 'N']`` with ``bg_is_0 = True``
and ``pvcode/spatial_operations.py::raster_to_vector`` reads class ``i`` from mask value ``i + 1``
(github.com/lqycrystal/SolarNet_plus). The sample agrees: value 5 lies on the shaded (darkest)
faces, 1 on small flat annexes."""

SOLARNET_SUPERSTRUCTURES_INFERRED: tuple[str, ...] = (
    "unknown", "tree", "shadow", "chimney", "ladder", "window", "dormer", "pvmodule")
"""SolarNet+ superstructure channel values 1..8 (0 = background) **as inferred from the sample
masks only**: SolarNet+'s code (``dlcode/trainsolarnet.py``: ``--num_class 9``, no names) and README
name no order. Drawn over the 8 sample tiles, value 8 covers PV modules, 7 dormers, 6 skylights,
5 ladder-like rows, 4 chimneys, 3 cast shadows, 2 overhanging trees, 1 thin eave strips and small
unidentified objects: RID's order reversed (value = 8 - RID index). Not established by the authors,
so this channel is not trained unless ``--solarnet-superstructures inferred`` asks for it."""

_SN_ORIENTATION_LUT = np.full(256, IGNORE_INDEX, np.uint8)
_SN_ORIENTATION_LUT[0] = 5  # background
for _v, _name in enumerate(SOLARNET_ORIENTATION, start=1):
    _SN_ORIENTATION_LUT[_v] = ("N", "E", "S", "W", "flat").index(_name)

_SN_SUPER_LUT = np.full(256, IGNORE_INDEX, np.uint8)
_SN_SUPER_LUT[0] = 8  # background
for _v, _name in enumerate(SOLARNET_SUPERSTRUCTURES_INFERRED, start=1):
    _SN_SUPER_LUT[_v] = SUPERSTRUCTURE_CLASSES.index(_name)


def solarnet_channels(mask: np.ndarray, path: Path, superstructures: str = "off",
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Split a SolarNet+ 3-channel mask into RID-style label maps.

    SolarNet+ (RID re-labelled, github.com/lqycrystal/SolarNet_plus): channel 0 roof (0/1),
    channel 1 roof-segment orientation (:data:`SOLARNET_ORIENTATION`: 0 background, 1 flat, 2 W,
    3 S, 4 E, 5 N, from the authors' ``pvcode/cal_pv.py``), channel 2 superstructures (order not
    published; see :data:`SOLARNET_SUPERSTRUCTURES_INFERRED`).

    Args:
        mask: ``(H, W, 3)`` uint8.
        path: the mask file (for error messages).
        superstructures: ``off`` (return None for channel 2) or ``inferred`` (decode it with the
            order inferred from the samples).

    Returns:
        outline (H, W) uint8 {0, 1}; segments (H, W) uint8 in the 4-sector scheme (sectors N, E,
        S, W = 0..3, 4 flat, 5 background, 255 unknown values); superstructures (H, W) uint8 in RID
        order (8 = background) or None.

    Raises:
        DataError: not a 3-channel mask.
    """
    if mask.ndim != 3 or mask.shape[2] < 3:
        raise DataError(f"{path}: expected a 3-channel SolarNet+ mask (roof, orientation, superstructure), "
                        f"got shape {mask.shape}")
    roof = (mask[..., 0] > 0).astype(np.uint8)
    seg = _SN_ORIENTATION_LUT[mask[..., 1]]
    sup = _SN_SUPER_LUT[mask[..., 2]] if superstructures == "inferred" else None
    return roof, seg, sup


COARSEN_16: dict[int, tuple[int, ...]] = {
    # fine sector:  N  NNE NE ENE E  ESE SE SSE S  SSW SW WSW W  WNW NW NNW
    4: (0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 0, 0),
    8: (0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 0),
}
"""RID's 16 azimuth sectors -> 4 or 8 (explicit table, used for ``masks_segments_reviewed`` files).

Every coarse sector receives the same number of fine sectors (4 of 16, or 2 of 16): the table is
invariant under a quarter turn. A fine sector that straddles a coarse boundary (NE, SE, SW, NW for
4; NNE, ENE, ... for 8) goes to the coarse sector **clockwise** of the boundary, which is what
:func:`~roofseg.data.rid.azimuth_to_class` gives for the fine sector's centre azimuth. Where RID's
vector labels exist the coarse mask is rasterised from the true azimuths instead."""


def coarsen_segments(mask: np.ndarray, sectors: int) -> np.ndarray:
    """``(H, W)`` uint8 16-sector mask (0..15, 16 flat, 17 background) -> ``sectors`` scheme
    (:data:`COARSEN_16`; flat -> ``sectors``, background -> ``sectors + 1``, anything else 255)."""
    if sectors == 16:
        return np.where(mask > 17, IGNORE_INDEX, mask).astype(np.uint8)
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[:16] = COARSEN_16[sectors]
    lut[16], lut[17] = sectors, sectors + 1
    return lut[mask]


def _check_size(mask: np.ndarray, mask_path: Path, image_path: Path, shape: tuple[int, int]) -> None:
    """Raise a one-line DataError when a label file's size differs from its tile's."""
    if tuple(mask.shape[:2]) != tuple(shape[:2]):
        raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                        f"{shape[1]}x{shape[0]}")


def azimuth_lut(sectors: int, op: str) -> np.ndarray:
    """Lookup table remapping segment classes under a geometric transform of the tile.

    ``op``: ``hflip`` (mirror left-right: azimuth a -> -a), ``vflip`` (top-bottom: a -> 180 - a),
    ``rot90`` (``np.rot90`` k=1, counter-clockwise: a -> a - 90). Sector 0 is north, clockwise;
    flat (``sectors``), background (``sectors + 1``) and :data:`IGNORE_INDEX` map to themselves.

    Returns:
        ``(256,)`` uint8 table.
    """
    lut = np.arange(256, dtype=np.uint8)
    i = np.arange(sectors)
    if op == "hflip":
        lut[:sectors] = (-i) % sectors
    elif op == "vflip":
        lut[:sectors] = (sectors // 2 - i) % sectors
    elif op == "rot90":
        lut[:sectors] = (i - sectors // 4) % sectors
    else:
        raise ValueError(f"azimuth_lut: unknown op {op!r}")
    return lut


def _resize_nearest(a: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(H, W)`` or ``(C, H, W)`` to ``size`` (side, or (height, width))."""
    h, w = (size, size) if isinstance(size, int) else size
    if a.shape[-2:] == (h, w):
        return a
    if a.ndim == 3:
        return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_NEAREST) for c in a])
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_NEAREST)


class RoofDataset(Dataset):
    """Map-style dataset of roof tiles for the heads in ``heads``.

    Each item is a dict of tensors (S = ``image_size``):

    - ``image``: ``(3, S, S)`` float32 RGB, ``(x / 255 - mean) / std`` with the model's ``mean``/``std``;
    - ``outline``: ``(1, S, S)`` float32 {0, 1} (roof);
    - ``superstructures``: ``(S, S)`` int64, RID classes 0..8 (8 background), 255 ignored;
    - ``segments``: ``(S, S)`` int64, 0..K-1 azimuth sectors, K flat, K+1 background, 255 ignored;
    - ``lines``: ``(3, S, S)`` float32: inner-line map, eave map, junction heatmap;
    - ``lines_thin``: ``(2, S, S)`` uint8: 1 px line map and junction points (metrics);
    - ``has_<head>``: () bool, whether the sample carries that label (else its target is filler).

    Only keys of heads in ``heads`` are present (``lines_thin`` with ``lines``).

    Args:
        samples: from :func:`roofseg.data.find_samples`.
        heads: subset of ``outline``, ``superstructures``, ``segments``, ``lines``.
        image_size: output side in px.
        train: apply augmentation.
        sectors: segment scheme (4, 8 or 16).
        line_width: training line-map width in px at ``image_size``.
        crop_size: training only: a random ``crop_size`` x ``crop_size`` crop of the tile at its
            native resolution (targets computed at native resolution first) is resized to
            ``image_size``. None: the whole tile is resized.
        superstructure_crops: probability that a training crop is centred (+- a quarter crop) on a
            pixel of a superstructure class drawn uniformly from the classes present in the tile
            (class-balanced sampling of the rare classes).
        mean, std: per-channel normalisation on 0-1 pixels: the model's data config
            (``mlcore.pretrained.normalization(model)``); None: the default encoder's (EfficientNet-Lite0's
            offline weights, :data:`mlcore.pretrained.EFFICIENTNET_LITE0_CFG`).
    """

    def __init__(self, samples: Sequence[RoofSample], heads: Sequence[str], image_size: int, *, train: bool,
                 sectors: int = 16, line_width: int = 3, junction_sigma: float = 2.0, crop_size: int | None = None,
                 superstructure_crops: float = 0.0, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        self.mean = np.asarray(EFFICIENTNET_LITE0_CFG["mean"] if mean is None else mean, np.float32)
        self.std = np.asarray(EFFICIENTNET_LITE0_CFG["std"] if std is None else std, np.float32)
        self.crop_size = crop_size if train else None
        self.superstructure_crops = superstructure_crops
        self.samples = list(samples)
        self.heads = tuple(heads)
        self.size = int(image_size)
        self.train = train
        self.sectors = sectors
        self.line_width = line_width
        self.junction_sigma = junction_sigma
        self._luts = {op: azimuth_lut(sectors, op) for op in ("hflip", "vflip", "rot90")}

    def __len__(self) -> int:
        return len(self.samples)

    # --------------------------------------------------------------------------------------
    def targets(self, s: RoofSample, shape: tuple[int, int], out_hw: tuple[int, int] | None = None,
                ) -> dict[str, np.ndarray]:
        """Targets of ``s`` at ``out_hw`` (default S x S; numpy, before augmentation); absent labels
        are missing keys."""
        S = out_hw or (self.size, self.size)
        out: dict[str, np.ndarray] = {}
        if s.source == "solarnet":
            raw = load_index_mask(s.outline)  # type: ignore[arg-type]
            _check_size(raw, s.outline, s.image, shape)  # type: ignore[arg-type]
            roof, seg, sup = solarnet_channels(raw, s.outline, "inferred" if s.superstructures else "off")  # type: ignore[arg-type]
            out["outline"] = _resize_nearest(roof, S)
            if sup is not None:
                out["superstructures"] = _resize_nearest(sup, S)
            if self.sectors == 4:
                out["segments"] = _resize_nearest(seg, S)
            return out
        if s.graph is not None:
            graph = parse_graph(s.graph).scaled(S[1] / shape[1], S[0] / shape[0])
            t = render_targets(graph, S, line_width=self.line_width, junction_sigma=self.junction_sigma)
            out.update(t)
        if "outline" in self.heads and s.source == "rid" and s.roof_label == "segments":
            # roof = the union of RID's segment polygons (every labelled roof, not only the centred one)
            seg16 = self._rid_segments(s, shape, 16)
            if seg16 is not None:
                out["outline"] = _resize_nearest(((seg16 != 17) & (seg16 != IGNORE_INDEX)).astype(np.uint8), S)
        elif s.outline is not None and "outline" in self.heads:
            m = load_index_mask(s.outline)
            _check_size(m, s.outline, s.image, shape)
            m = m[..., 0] if m.ndim == 3 else m
            out["outline"] = _resize_nearest(outline_to_roof(m, s.source), S)
        if s.superstructures is not None and "superstructures" in self.heads:
            m = load_index_mask(s.superstructures)
            _check_size(m, s.superstructures, s.image, shape)
            if m.ndim != 2:
                raise DataError(f"{s.superstructures}: expected a one-channel class mask, got shape {m.shape}")
            m = np.where(m > 8, IGNORE_INDEX, m).astype(np.uint8)
            out["superstructures"] = _resize_nearest(m, S)
        if "segments" in self.heads:
            seg = None
            if s.segments is not None:
                seg = self._segment_mask_file(s.segments, s.image, shape)
            else:
                seg = self._rid_segments(s, shape, self.sectors)
            if seg is not None:
                out["segments"] = _resize_nearest(seg, S)
        return out

    @staticmethod
    def _rid_segments(s: RoofSample, shape: tuple[int, int], sectors: int) -> np.ndarray | None:
        """RID's vector segments rasterised on the tile's grid (None without vector labels/footprint)."""
        if s.segments is not None:
            m = load_index_mask(s.segments)
            _check_size(m, s.segments, s.image, shape)
            return coarsen_segments(m, sectors) if m.ndim == 2 else None
        if s.rid_root is None or s.tile is None:
            return None
        return SegmentRasterizer(s.rid_root).mask(s.tile, shape, sectors)

    def _segment_mask_file(self, path: Path, image: Path, shape: tuple[int, int]) -> np.ndarray:
        """RID's ``masks_segments_reviewed`` masks are in the 16-sector scheme (0..15, 16 flat, 17 bg)."""
        m = load_index_mask(path)
        if m.ndim != 2:
            raise DataError(f"{path}: expected a one-channel segment mask, got shape {m.shape}")
        _check_size(m, path, image, shape)
        return coarsen_segments(m, self.sectors)

    # --------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        rgb = load_rgb(s.image)
        if self.crop_size:
            rgb, t = self._crop(rgb, self.targets(s, rgb.shape[:2], rgb.shape[:2]))
            t = {k: _resize_nearest(v, self.size) for k, v in t.items()}
        else:
            t = self.targets(s, rgb.shape[:2])
        image = cv2.resize(rgb, (self.size, self.size), interpolation=cv2.INTER_AREA)
        if self.train:
            image, t = self._augment(image, t)
        x = image.astype(np.float32) / 255.0
        x = (x - self.mean) / self.std
        item: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))}
        S = self.size
        for head in self.heads:
            has = head in t
            item[f"has_{head}"] = torch.tensor(has)
            if head == "outline":
                v = t.get("outline", np.zeros((S, S), np.uint8))
                item["outline"] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None]
            elif head == "superstructures":
                v = t.get("superstructures", np.full((S, S), IGNORE_INDEX, np.uint8))
                item["superstructures"] = torch.from_numpy(np.ascontiguousarray(v)).long()
            elif head == "segments":
                v = t.get("segments", np.full((S, S), IGNORE_INDEX, np.uint8))
                item["segments"] = torch.from_numpy(np.ascontiguousarray(v)).long()
            elif head == "lines":
                v = t.get("lines", np.zeros((3, S, S), np.float32))
                item["lines"] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                v = t.get("lines_thin", np.zeros((2, S, S), np.uint8))
                item["lines_thin"] = torch.from_numpy(np.ascontiguousarray(v))
        return item

    def _crop(self, rgb: np.ndarray, t: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A ``crop_size`` crop of the native-resolution tile and its targets (padded when smaller)."""
        c = int(self.crop_size)  # type: ignore[arg-type]
        h, w = rgb.shape[:2]
        if h < c or w < c:
            ph, pw = max(0, c - h), max(0, c - w)
            rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect")
            fill = {"superstructures": IGNORE_INDEX, "segments": IGNORE_INDEX}
            t = {k: np.pad(v, ((0, 0),) * (v.ndim - 2) + ((0, ph), (0, pw)), constant_values=fill.get(k, 0))
                 for k, v in t.items()}
            h, w = rgb.shape[:2]
        cy = cx = None
        sup = t.get("superstructures")
        if sup is not None and self.superstructure_crops > 0 and random.random() < self.superstructure_crops:
            present = [int(k) for k in np.unique(sup) if k < N_SUPERSTRUCTURE_CLASSES - 1]
            if present:
                ys, xs = np.nonzero(sup == random.choice(present))
                i = random.randrange(len(ys))
                j = c // 4
                cy, cx = ys[i] + random.randint(-j, j), xs[i] + random.randint(-j, j)
        if cy is None:
            y0, x0 = random.randint(0, h - c), random.randint(0, w - c)
        else:
            y0, x0 = int(np.clip(cy - c // 2, 0, h - c)), int(np.clip(cx - c // 2, 0, w - c))
        return (np.ascontiguousarray(rgb[y0:y0 + c, x0:x0 + c]),
                {k: np.ascontiguousarray(v[..., y0:y0 + c, x0:x0 + c]) for k, v in t.items()})

    def _augment(self, image: np.ndarray, t: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ops = []
        if random.random() < 0.5:
            ops.append("hflip")
        if random.random() < 0.5:
            ops.append("vflip")
        if random.random() < 0.5:
            ops.append("rot90")

        def apply(a: np.ndarray, op: str, chw: bool) -> np.ndarray:
            axes = (1, 2) if chw else (0, 1)
            if op == "hflip":
                return np.flip(a, axis=axes[1])
            if op == "vflip":
                return np.flip(a, axis=axes[0])
            return np.rot90(a, 1, axes=axes)

        for op in ops:
            image = apply(image, op, False)
            for k in list(t):
                t[k] = apply(t[k], op, t[k].ndim == 3)
            if "segments" in t:
                t["segments"] = self._luts[op][t["segments"]]
        # photometric jitter: contrast x [0.8, 1.2], brightness +-20 grey levels
        c, b = random.uniform(0.8, 1.2), random.uniform(-20, 20)
        image = np.clip(image.astype(np.float32) * c + b + (1 - c) * 128, 0, 255).astype(np.uint8)
        return image, t

"""Finding samples: RID, SolarNet+ (RID re-labelled), roof line graphs and AIRS-style folders.

``--data`` may be one dataset's root or a folder holding several of them (``rid/``,
``rid_solarnet/``, ``roof_lines/``, ``airs/``); :func:`discover_sources` finds each. Every sample
records which labels it has; a task keeps the samples that carry its label (``--task multi``
keeps all, masking missing labels out of the loss).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from roofseg.data.rid import DataError, SegmentRasterizer, find_rid_root, find_rid_tiles
from roofseg.data.splits import rid_split

SPLITS = ("train", "val", "test", "all")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

HEADS: tuple[str, ...] = ("outline", "superstructures", "segments", "lines")
"""Model heads; ``lines`` predicts the inner-line map, the eave map and the junction heatmap."""

TASK_HEADS: dict[str, tuple[str, ...]] = {
    "outlines": ("outline",),
    "superstructures": ("superstructures",),
    "segments": ("segments",),
    "lines": ("outline", "lines"),  # the roof mask also restricts line detection at predict time
    "multi": HEADS,
}
"""Heads trained by each ``--task``."""

ROOF_LABELS: tuple[str, ...] = ("segments", "outlines")
"""RID roof labels (``--roof-label``): ``segments`` = union of the rasterised segment polygons (every
labelled roof on the tile; the default, it answers "is this pixel a roof"), ``outlines`` =
``roof_outlines_reviewed`` (only the centred building: neighbouring roofs count as background)."""

TASK_LABEL: dict[str, str] = {"outlines": "outline", "superstructures": "superstructures",
                              "segments": "segments", "lines": "lines"}


@dataclass(frozen=True)
class RoofSample:
    """One tile and where each of its labels comes from (None: the tile has no such label).

    ``segments`` is a ready mask file (RID's ``masks_segments_reviewed`` or a SolarNet+ mask);
    ``rid_root`` + ``tile`` let RID's vector labels be rasterized instead. ``roof_label`` (RID):
    ``outlines`` = ``roof_outlines_reviewed`` (the centred building only), ``segments`` = the union
    of the rasterised segment polygons (every labelled roof on the tile).
    """

    name: str
    source: str
    image: Path
    outline: Path | None = None
    superstructures: Path | None = None
    segments: Path | None = None
    graph: Path | None = None
    rid_root: Path | None = None
    tile: str | None = None
    roof_label: str = "outlines"

    def has(self, head: str, sectors: int = 16) -> bool:
        """Whether this sample carries the label of ``head`` (SolarNet+ segments only for 4 sectors)."""
        if head == "outline":
            if self.source == "rid" and self.roof_label == "segments":
                return self.segments is not None or self._in_vector_labels()
            return self.outline is not None or self.graph is not None
        if head == "superstructures":
            return self.superstructures is not None
        if head == "segments":
            if self.source == "solarnet":
                return sectors == 4
            if self.segments is not None:
                return True
            return self._in_vector_labels()
        if head == "lines":
            return self.graph is not None
        raise ValueError(f"unknown head {head!r}")

    def _in_vector_labels(self) -> bool:
        return self.rid_root is not None and self.tile is not None and \
            self.tile in SegmentRasterizer(self.rid_root).footprints


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS) if folder.is_dir() else []


def _solarnet_root(path: Path) -> Path | None:
    for cand in (path, path / "rid_solarnet"):
        if any((cand / s / "images").is_dir() and (cand / s / "masks").is_dir() for s in ("train", "val", "test")):
            return cand
    return None


def _lines_root(path: Path) -> Path | None:
    for cand in (path, path / "roof_lines"):
        for s in ("train", "val", "test"):
            d = cand / s
            if d.is_dir() and any(d.glob("*.txt")) and any(d.glob("*.jpg")):
                return cand
    return None


def _airs_root(path: Path) -> Path | None:
    for cand in (path, path / "airs", path / "AIRS"):
        if (cand / "image").is_dir() and (cand / "label").is_dir():
            return cand
        if any((cand / s / "image").is_dir() for s in ("train", "val", "test")):
            return cand
    return None


def discover_sources(path: str | Path) -> dict[str, Path]:
    """``{source: root}`` for every dataset layout found at ``path`` or in its direct children.

    Sources: ``rid``, ``solarnet``, ``roof_lines``, ``airs``.

    Raises:
        DataError: ``path`` does not exist or holds none of them.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"--data {path}: folder not found")
    found = {}
    for name, fn in (("rid", find_rid_root), ("solarnet", _solarnet_root), ("roof_lines", _lines_root),
                     ("airs", _airs_root)):
        root = fn(path)
        if root is not None:
            found[name] = root
    if not found:
        raise DataError(f"--data {path}: no RID (images/ + masks_superstructures_reviewed/), SolarNet+ "
                        f"(SPLIT/images + SPLIT/masks), roof_lines (SPLIT/N.jpg + N.txt) or AIRS "
                        f"(image/ + label/) layout found")
    return found


def _hash_split(names: list[str], split: str, val_fraction: float, test_fraction: float, seed: int) -> list[int]:
    """Indices of ``split`` in a seeded, order-independent split by name hash."""
    keyed = sorted(range(len(names)), key=lambda i: hashlib.sha1(f"{seed}:{names[i]}".encode()).hexdigest())
    n = len(names)
    n_test = int(round(n * test_fraction))
    n_val = max(1, int(round(n * val_fraction))) if n > 1 and val_fraction > 0 else 0
    parts = {"test": keyed[:n_test], "val": keyed[n_test:n_test + n_val], "train": keyed[n_test + n_val:]}
    return sorted(parts[split]) if split != "all" else list(range(n))


def rid_samples(root: Path, split: str, val_fraction: float, test_fraction: float, seed: int,
                roof_label: str = "segments", fold: int = 1) -> list[RoofSample]:
    """RID tiles of ``split``: RID's own split files (``fold``) where present, else whole groups of
    overlapping footprints (:func:`roofseg.data.splits.rid_split`).

    Raises:
        DataError: ``roof_label="segments"`` without RID's vector labels or segment masks.
    """
    if roof_label not in ROOF_LABELS:
        raise DataError(f"--roof-label: expected one of {', '.join(ROOF_LABELS)}, got {roof_label!r}")
    tiles = find_rid_tiles(root)
    rast = SegmentRasterizer(root)
    vector = rast.available()
    if roof_label == "segments" and not vector and not any(t.segments_mask for t in tiles):
        raise DataError(f"--roof-label segments: {root} has neither vector_labels/segments_reviewed.csv + "
                        f"image_boundaries.csv nor masks_segments_reviewed/; use --roof-label outlines")
    if split == "all":
        keep = {t.name for t in tiles}
    else:
        keep = set(rid_split(root, val_fraction, test_fraction, seed, fold)[split])  # type: ignore[arg-type]
    return [RoofSample(t.name, "rid", t.image, outline=t.outline, superstructures=t.superstructures,
                       segments=t.segments_mask, rid_root=root if vector else None, tile=t.name,
                       roof_label=roof_label)
            for t in tiles if t.name in keep]


def _split_folders(root: Path, split: str) -> list[Path]:
    return [root / s for s in ("train", "val", "test")] if split == "all" else [root / split]


def solarnet_samples(root: Path, split: str, superstructures: str = "off") -> list[RoofSample]:
    """SolarNet+ ``SPLIT/images/X.png`` + ``SPLIT/masks/X.png`` (3-channel masks).

    The superstructure channel counts as a label only with ``superstructures="inferred"`` (its
    class order is not published: :data:`roofseg.data.dataset.SOLARNET_SUPERSTRUCTURES_INFERRED`).
    """
    if superstructures not in ("off", "inferred"):
        raise DataError(f"--solarnet-superstructures: expected off or inferred, got {superstructures!r}")
    out = []
    for folder in _split_folders(root, split):
        for img in _images(folder / "images"):
            mask = folder / "masks" / f"{img.stem}.png"
            if mask.is_file():
                out.append(RoofSample(img.stem, "solarnet", img, outline=mask, segments=mask,
                                      superstructures=mask if superstructures == "inferred" else None))
    return out


def lines_samples(root: Path, split: str, limit: int | None = None) -> list[RoofSample]:
    """Roof line graph crops ``SPLIT/N.jpg`` + ``SPLIT/N.txt`` (first ``limit`` per split if given)."""
    out = []
    for folder in _split_folders(root, split):
        imgs = [p for p in _images(folder) if (folder / f"{p.stem}.txt").is_file()]
        for img in imgs[:limit] if limit else imgs:
            out.append(RoofSample(img.stem, "roof_lines", img, graph=folder / f"{img.stem}.txt"))
    return out


def airs_samples(root: Path, split: str, val_fraction: float, test_fraction: float, seed: int) -> list[RoofSample]:
    """AIRS-style ``image/*.tif|png`` + ``label/*`` (building mask, any non-zero = building).

    With ``train/ val/ test/`` sub-folders those are the splits; a flat ``image/`` folder is split
    by name hash like RID.
    """
    def pairs(folder: Path) -> list[RoofSample]:
        labels = {p.stem: p for p in _images(folder / "label")}
        return [RoofSample(img.stem, "airs", img, outline=labels[img.stem])
                for img in _images(folder / "image") if img.stem in labels]

    if (root / "image").is_dir():
        items = pairs(root)
        idx = _hash_split([s.name for s in items], split, val_fraction, test_fraction, seed)
        return [items[i] for i in idx]
    return [s for folder in _split_folders(root, split) for s in pairs(folder)]


def find_samples(data: str | Path, split: str, task: str, *, sectors: int = 16, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, seed: int = 0, lines_limit: int | None = None,
                 sources: tuple[str, ...] | None = None, roof_label: str = "segments",
                 solarnet_superstructures: str = "off", rid_split_fold: int = 1) -> list[RoofSample]:
    """Samples of ``split`` under ``data`` that carry the label ``task`` needs (all for ``multi``).

    Args:
        data: a dataset root or a folder of dataset roots (:func:`discover_sources`).
        split: ``train``, ``val``, ``test`` or ``all``.
        task: ``outlines``, ``superstructures``, ``segments``, ``lines`` or ``multi``.
        sectors: segment scheme (SolarNet+ segment labels exist for 4 only).
        val_fraction, test_fraction, seed: the seeded split of RID (by groups of overlapping
            footprints, :mod:`roofseg.data.splits`) and flat AIRS folders (by name).
        lines_limit: at most this many roof-line crops per split folder.
        sources: restrict to these sources (default: all found).
        roof_label: RID roof label, see :data:`ROOF_LABELS`.
        solarnet_superstructures: ``off`` or ``inferred`` (see :func:`solarnet_samples`).
        rid_split_fold: which of RID's split files to use when they are present (1..5).

    Raises:
        DataError: nothing found, or no sample of ``split`` carries the task's label.
    """
    if split not in SPLITS:
        raise DataError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    found = discover_sources(data)
    if sources:
        found = {k: v for k, v in found.items() if k in sources}
    samples: list[RoofSample] = []
    for name, root in found.items():
        if name == "rid":
            samples += rid_samples(root, split, val_fraction, test_fraction, seed, roof_label, rid_split_fold)
        elif name == "solarnet":
            samples += solarnet_samples(root, split, solarnet_superstructures)
        elif name == "roof_lines":
            samples += lines_samples(root, split, lines_limit)
        elif name == "airs":
            samples += airs_samples(root, split, val_fraction, test_fraction, seed)
    if task != "multi":
        samples = [s for s in samples if s.has(TASK_LABEL[task], sectors)]
    if not samples:
        raise DataError(f"--data {data}: no {split} sample with a label for --task {task} "
                        f"(sources found: {', '.join(found) or 'none'})")
    return samples

"""RID splits that do not leak.

RID's tiles are roof-centred crops around neighbouring buildings, so their footprints overlap
(1,876 of 1,880 overlap another tile, median 68 % of the area): a split by tile name puts the same
roofs in training and in the reported set. In order of preference:

1. **RID's own split files** (``filenames_train_val_test_split/{train,val,test}_filenames_K_rev.txt``
   of the mediaTUM download, K = ``fold``, one file name per line; the split of the RID paper), when
   that folder is in the RID root (or in ``segmentation_model_data/``). Tiles the files do not list
   are left out.
2. Otherwise **groups of overlapping footprints**: the connected components of the graph whose nodes
   are the tiles present and whose edges join two tiles whose ``image_boundaries.csv`` footprints
   share a positive area. Whole groups are assigned, in a seeded hash order, to test, then val, then
   train; a group larger than the val/test quota stays in training (on the full dataset, a single
   component holds ~1,825 tiles: use RID's split files there). Tiles without a footprint form
   their own group.
3. Without footprints, a seeded split by tile-name hash (no overlap information exists).

``val`` selects (early stopping, best checkpoint); ``test`` is what is reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import shapely
from shapely.strtree import STRtree

from roofseg.data.rid import DataError, find_rid_tiles, load_footprints, vector_label_file

SPLIT_DIRS = ("filenames_train_val_test_split", "segmentation_model_data/filenames_train_val_test_split")


def find_split_files(root: Path, fold: int = 1) -> dict[str, Path] | None:
    """``{split: path}`` of RID's split files for ``fold`` under ``root``, or None when absent.

    Raises:
        DataError: the folder exists but lacks one of the three files of ``fold``.
    """
    for d in SPLIT_DIRS:
        folder = Path(root) / d
        if not folder.is_dir():
            continue
        out = {}
        for split in ("train", "val", "test"):
            cands = [folder / f"{split}_filenames_{fold}_rev.txt", folder / f"{split}_filenames_{fold}.txt"]
            path = next((c for c in cands if c.is_file()), None)
            if path is None:
                raise DataError(f"{folder}: no {split}_filenames_{fold}_rev.txt (--rid-split-fold {fold})")
            out[split] = path
        return out
    return None


def read_split_file(path: Path) -> list[str]:
    """Tile ids listed in one RID split file (file names; extension and folders dropped)."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            names.append(Path(line.replace("\\", "/")).stem)
    return names


def overlap_groups(names: Sequence[str], footprints: Mapping[str, tuple[float, float, float, float]],
                   ) -> list[list[str]]:
    """Connected components of the footprint-overlap graph of ``names`` (positive-area overlaps).

    Tiles without a footprint are singleton groups. Groups are sorted lists, returned sorted.
    """
    named = [n for n in names if n in footprints]
    parent = {n: n for n in names}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if named:
        boxes = [shapely.box(*footprints[n]) for n in named]
        left, right = STRtree(boxes).query(boxes, predicate="intersects")
        for i, j in zip(left.tolist(), right.tolist(), strict=True):
            if i < j and boxes[i].intersection(boxes[j]).area > 0:
                parent[find(named[i])] = find(named[j])
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return sorted(sorted(g) for g in groups.values())


def _key(seed: int, name: str) -> str:
    return hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()


def group_split(groups: Sequence[Sequence[str]], val_fraction: float, test_fraction: float, seed: int,
                ) -> dict[str, list[str]]:
    """Assign whole groups to test, val and train (seeded hash order, quotas by tile count)."""
    n = sum(len(g) for g in groups)
    n_test = int(round(n * test_fraction))
    n_val = max(1, int(round(n * val_fraction))) if n > 1 and val_fraction > 0 else 0
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for g in sorted(groups, key=lambda g: _key(seed, g[0])):
        if len(out["test"]) + len(g) <= n_test:
            out["test"] += g
        elif len(out["val"]) + len(g) <= n_val:
            out["val"] += g
        else:
            out["train"] += g
    return {k: sorted(v) for k, v in out.items()}


def rid_split(root: str | Path, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
              fold: int = 1) -> dict[str, object]:
    """The split of the RID tiles under ``root`` (see the module docstring).

    Returns:
        ``{"train": [ids], "val": [ids], "test": [ids], "method": "rid_split_files" |
        "footprint_overlap_groups" | "name_hash", "excluded": [ids not listed by RID's files]}``.

    Raises:
        DataError: no RID image folder, or an incomplete split-file folder.
    """
    return _rid_split_cached(str(root), float(val_fraction), float(test_fraction), int(seed), int(fold))


@lru_cache(maxsize=8)
def _rid_split_cached(root: str, val_fraction: float, test_fraction: float, seed: int, fold: int) -> dict:
    names = [t.name for t in find_rid_tiles(root)]
    files = find_split_files(Path(root), fold)
    if files is not None:
        present = set(names)
        out: dict[str, object] = {s: sorted(n for n in read_split_file(p) if n in present) for s, p in files.items()}
        listed = set().union(*(set(v) for v in out.values()))  # type: ignore[arg-type]
        out["method"] = "rid_split_files"
        out["excluded"] = sorted(present - listed)
        return out
    fp_file = vector_label_file(Path(root), "image_boundaries.csv")
    if fp_file is not None:
        groups = overlap_groups(names, load_footprints(fp_file))
        method = "footprint_overlap_groups"
    else:
        groups = [[n] for n in names]
        method = "name_hash"
    out = dict(group_split(groups, val_fraction, test_fraction, seed))
    out["method"] = method
    out["excluded"] = []
    return out

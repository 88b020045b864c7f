"""RID splits that do not leak: RID's own split files, else groups of overlapping footprints."""

from __future__ import annotations

import json

import shapely

from roofseg.data import find_samples
from roofseg.data.rid import load_footprints
from roofseg.data.splits import group_split, overlap_groups, rid_split


def _overlaps(a: str, b: str, fp) -> bool:
    return shapely.box(*fp[a]).intersection(shapely.box(*fp[b])).area > 0


def test_sample_split_has_no_footprint_overlap_across_sets(rid_root):
    """In the sample, tile 1186 overlaps 1011 by 42 % and 811 overlaps 880: each pair stays together."""
    fp = load_footprints(rid_root / "vector_labels" / "image_boundaries.csv")
    assert _overlaps("1186", "1011", fp) and _overlaps("811", "880", fp)
    for seed in range(6):
        split = rid_split(rid_root, 0.2, 0.2, seed)
        assert split["method"] == "footprint_overlap_groups"
        train, val, test = (set(split[k]) for k in ("train", "val", "test"))
        assert len(train) + len(val) + len(test) == 20 and val and test
        assert not (train & val or train & test or val & test)
        for held in val | test:
            assert not any(_overlaps(held, t, fp) for t in train), (seed, held)
        assert ({"1186", "1011"} <= train) or not ({"1186", "1011"} & train)
    names = {s.name for s in find_samples(rid_root, "test", "outlines", val_fraction=0.2, test_fraction=0.2)}
    assert names == set(rid_split(rid_root, 0.2, 0.2, 0)["test"])


def test_overlap_groups_and_group_split_closed_form():
    fp = {"a": (0, 0, 2, 2), "b": (1, 1, 3, 3), "c": (2.5, 2.5, 4, 4), "d": (10, 10, 11, 11),
          "e": (2, 0, 3, 1)}  # e only touches a (zero-area contact): not an overlap
    assert overlap_groups(["a", "b", "c", "d", "e", "x"], fp) == [["a", "b", "c"], ["d"], ["e"], ["x"]]
    s = group_split([["a", "b", "c"], ["d"], ["e"], ["x"]], 0.25, 0.25, 0)
    assert sorted(s["train"] + s["val"] + s["test"]) == ["a", "b", "c", "d", "e", "x"]
    assert {"a", "b", "c"} <= set(s["train"])  # a group larger than a quota stays in training


def test_rid_split_files_are_used_when_present(tmp_path, rid_root):
    root = tmp_path / "rid"
    (root / "images").mkdir(parents=True)
    (root / "roof_outlines_reviewed").mkdir()
    for name in ("1011", "1063", "1145", "1186", "1246"):
        for d in ("images", "roof_outlines_reviewed"):
            (root / d / f"{name}.png").symlink_to(rid_root / d / f"{name}.png")
    (root / "vector_labels").symlink_to(rid_root / "vector_labels")
    d = root / "filenames_train_val_test_split"
    d.mkdir()
    (d / "train_filenames_1_rev.txt").write_text("1011.png\n1186.png\n9999.png\n")
    (d / "val_filenames_1_rev.txt").write_text("1063.png\n")
    (d / "test_filenames_1_rev.txt").write_text("1145.png\n")
    split = rid_split(root)
    assert split["method"] == "rid_split_files"
    assert (split["train"], split["val"], split["test"], split["excluded"]) == (
        ["1011", "1186"], ["1063"], ["1145"], ["1246"])
    assert [s.name for s in find_samples(root, "val", "outlines")] == ["1063"]


def test_train_writes_split_json_without_leaks(tmp_path, rid_root):
    from roofseg.train import main as train_main

    out = tmp_path / "run"
    assert train_main(["--data", str(rid_root), "--task", "outlines", "--out", str(out), "--image-size", "64",
                       "--batch-size", "8", "--max-steps", "1", "--num-workers", "0", "--no-pretrained",
                       "--examples", "0"]) == 0
    split = json.loads((out / "split.json").read_text())
    fp = load_footprints(rid_root / "vector_labels" / "image_boundaries.csv")
    assert split["train"] and split["val"] and split["test"]
    for held in split["val"] + split["test"]:
        assert not any(_overlaps(held, t, fp) for t in split["train"])
    summary = json.loads((out / "summary.json").read_text())
    assert "outline_iou" in summary["test"] and summary["test"]["n_samples"] == len(split["test"])

"""mlcore.vision: three-way splits and split.json, timm data config preprocessing, TTA, worker error lines,
per-epoch training statistics."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image
from torchvision import tv_tensors

from mlcore.cli import one_line
from mlcore.vision import (
    DataError,
    ImageDataset,
    TTAClassifier,
    capped_workers,
    eval_transform,
    expand_images,
    load_index,
    resolve_data_config,
)


def _folder(root: Path, per_class: dict[str, int]) -> Path:
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 10), (i * 10 % 255, 50, 90)).save(root / cls / f"{i:03d}.jpg")
    return root


def test_imagefolder_gets_a_test_split_carved_once_by_its_own_seed(tmp_path):
    root = _folder(tmp_path / "data", {"a": 20, "b": 10, "c": 1})
    index = load_index(root, val_fraction=0.2, test_fraction=0.15, seed=0, test_seed=0)
    test, val, train = (index.samples(s) for s in ("test", "val", "train"))
    assert Counter(s.label for s in test) == {0: 3, 1: 2}  # round(0.15 n); a 1-photo class stays in train
    assert Counter(s.label for s in val) == {0: 3, 1: 2}  # round(0.2 * 17) = 3, round(0.2 * 8) = 2
    paths = [s.path for s in train + val + test]
    assert len(paths) == len(set(paths)) == 31
    for seed in (1, 2, 3):  # --seed moves val, never test
        other = load_index(root, val_fraction=0.2, test_fraction=0.15, seed=seed, test_seed=0)
        assert other.samples("test") == test
    assert any(load_index(root, val_fraction=0.2, test_fraction=0.15, seed=s).samples("val") != val for s in (1, 2))
    assert load_index(root, test_fraction=0.15, test_seed=1).samples("test") != test
    written = json.loads(Path(index.write_split_json(tmp_path / "split.json")).read_text())
    assert written["counts"] == {"train": 21, "test": 5, "val": 5}
    assert written["carved"]["test"] == {"fraction": 0.15, "seed": 0, "from": "all labelled images"}
    assert sorted(p for p, _ in written["splits"]["test"]) == sorted(str(s.path.relative_to(root)) for s in test)
    with pytest.raises(DataError, match="no test split"):
        load_index(root).samples("test")  # test_fraction 0: none carved


def test_data_config_follows_the_weights_and_matches_timms_transform():
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    wrapper = torch.nn.Sequential(model)
    cfg = resolve_data_config(wrapper, 64)
    assert cfg["input_size"] == (3, 64, 64) and cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == model.pretrained_cfg["crop_pct"] and tuple(cfg["mean"]) == tuple(model.pretrained_cfg["mean"])
    # another pretrained config (e.g. TF-Lite's 0.5 / 0.5) is followed, not ImageNet constants
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 1.0}
    assert resolve_data_config(wrapper, 64)["mean"] == (0.5, 0.5, 0.5)
    # our tensor pipeline = timm.data.create_transform on the PIL image, within resampling round-off
    rng = np.random.default_rng(0)
    array = (rng.random((90, 120, 3)) * 40 + np.linspace(0, 200, 120)[None, :, None]).astype(np.uint8)
    ours = eval_transform(cfg)(tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1).contiguous()))
    theirs = timm.data.create_transform(**cfg)(Image.fromarray(array))
    assert ours.shape == theirs.shape == (3, 64, 64)
    assert float((ours - theirs).abs().mean()) < 0.02 and float((ours - theirs).abs().max()) < 0.25
    five = eval_transform(cfg, "five-crop")(tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1).contiguous()))
    assert five.shape == (5, 3, 64, 64)
    torch.testing.assert_close(five[4], ours)  # FiveCrop's last crop is the centre crop


def test_tta_averages_logits_over_views_and_mirrors():
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    x = torch.randn(2, 3, 4, 4)
    flip = TTAClassifier(lin, flip=True)(x)
    torch.testing.assert_close(flip, (lin(x) + lin(x.flip(-1))) / 2)
    views = torch.randn(2, 5, 3, 4, 4)
    torch.testing.assert_close(TTAClassifier(lin)(views), lin(views.flatten(0, 1)).view(2, 5, 2).mean(1))


def test_expand_images_files_folders_globs(tmp_path):
    root = _folder(tmp_path / "d", {"a": 2, "b": 1})
    (root / "notes.txt").write_text("x")
    assert expand_images([str(root)]) == sorted(root.rglob("*.jpg"))
    assert expand_images([str(root / "a" / "*.jpg"), str(root / "a" / "000.jpg")]) == sorted((root / "a").glob("*.jpg"))
    from mlcore.config import ConfigError

    with pytest.raises(ConfigError, match="no image file"):
        expand_images([str(root / "missing" / "*.png")])


def test_worker_error_becomes_its_own_line_with_the_hint(tmp_path):
    from mlcore.data import make_loader

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    from mlcore.vision import Sample

    ds = ImageDataset([Sample(bad, 0)], None, hint="pass --skip-bad-images to skip")
    with pytest.raises(DataError) as err:
        next(iter(make_loader(ds, batch_size=1, shuffle=False, num_workers=1)))
    assert "Traceback" in str(err.value)  # what PyTorch re-raises from a worker
    line = one_line(err.value)
    assert "\n" not in line and line.startswith(f"cannot read image {bad}") and line.endswith("--skip-bad-images to skip")


def test_capped_workers():
    assert capped_workers(10_000) == len(__import__("os").sched_getaffinity(0)) and capped_workers(1) == 1


def test_write_split_json_relative_paths_pairs_counts_and_info(tmp_path):
    from mlcore.data import write_split_json

    root = tmp_path / "data"
    out = write_split_json(tmp_path / "split.json", {"train": [(root / "a" / "1.jpg", 0), (root / "b" / "2.jpg", 1)],
                                                    "val": [Path("/elsewhere/3.jpg")], "test": []},
                           root=root, seed=3, layout="imagefolder")
    assert json.loads(Path(out).read_text()) == {
        "root": str(root), "seed": 3, "layout": "imagefolder", "counts": {"train": 2, "val": 1, "test": 0},
        "splits": {"train": [["a/1.jpg", 0], ["b/2.jpg", 1]], "val": ["/elsewhere/3.jpg"], "test": []}}

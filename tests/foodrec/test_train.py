"""foodrec-train, -eval, -predict and -export end to end on the real Food-101 sample."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from foodrec.config import FoodRecConfig
from foodrec.eval import main as eval_main
from foodrec.export import main as export_main
from foodrec.losses import CombinedClassificationLoss, make_mixup
from foodrec.models import build_model
from foodrec.predict import main as predict_main
from foodrec.train import main as train_main
from foodrec.train import make_step
from mlcore.checkpoint import load_checkpoint


def _argv(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--backbone", "efficientnet_lite0", "--no-pretrained",
            "--image-size", "64", "--batch-size", "16", "--num-workers", "0", "--warmup-epochs", "0",
            "--lr", "1e-3", *extra]


@pytest.fixture(scope="module")
def food_data(food101_root):
    return food101_root


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory, food_data):
    """A two-stage run stopped inside stage 2 (--max-steps counts per stage: stage 1 has 8 updates), then
    resumed to the end."""
    out = tmp_path_factory.mktemp("food") / "run"
    first = train_main(_argv(food_data, out, "--two-stage", "--stage1-epochs", "1", "--epochs", "2",
                             "--max-steps", "10"))
    stopped = json.loads((out / "summary.json").read_text())
    second = train_main(["--resume", str(out)])
    return out, first, stopped, second


def test_two_stage_run_and_resume(two_stage_run):
    out, first, stopped, second = two_stage_run
    assert first == 0 and second == 0
    assert stopped["completed_stages"] == ["stage1"]  # stage 2 stopped at --max-steps 10
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed_stages"] == ["stage1", "stage2"] and summary["bad_images"] == []
    mapping = json.loads((out / "label_mapping.json").read_text())
    assert len(mapping["classes"]) == 15 == len(mapping["labels"])
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["stage"] for r in val] == ["stage1", "stage2", "stage2"]
    assert {"top1", "top5", "f1", "precision", "recall"} <= set(val[-1])
    assert len([k for k in val[-1] if k.startswith("f1/")]) == 15  # per-class F1 every epoch
    ckpt = out / "checkpoints"
    for name in ("best_val_top1.pt", "best_val_f1.pt", "last.pt", "final_model.pt"):
        assert (ckpt / name).is_file(), name
    # the seed's names are the same files as mlcore's
    assert (ckpt / "best_accuracy.pt").samefile(ckpt / "best_val_top1.pt")
    assert (ckpt / "best_f1.pt").samefile(ckpt / "best_val_f1.pt")
    assert (ckpt / "last_checkpoint.pt").samefile(ckpt / "last.pt")
    final = load_checkpoint(ckpt / "final_model.pt")
    assert final["stage"] == "stage2" and final["step"] == summary["steps"] and len(final["classes"]) == 15
    assert [r["split"] for r in final["history"]].count("val") == 3


def test_checkpoint_flag_continues_a_run(tmp_path, food_data):
    """``--checkpoint last_checkpoint.pt`` (the seed's flag and name) resumes like ``--resume``."""
    out = tmp_path / "run"
    assert train_main(_argv(food_data, out, "--epochs", "2", "--max-steps", "3", "--no-mixup")) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    assert train_main(["--checkpoint", str(out / "checkpoints" / "last_checkpoint.pt"), "--max-steps", "5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 5


def test_eval_writes_confusion_matrix_and_report(two_stage_run, food_data, tmp_path, capsys):
    out = two_stage_run[0]
    code = eval_main(["--checkpoint", str(out / "checkpoints" / "best_val_top1.pt"), "--data", str(food_data),
                      "--split", "test", "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_images"] == 45 and 0 <= result["top1"] <= result["top5"] <= 1
    assert len(result["per_class_f1"]) == 15
    png = Image.open(tmp_path / "ev" / "confusion_matrix.png")
    assert png.width > 15 * 20 and png.height > 15 * 20
    lines = (tmp_path / "ev" / "per_class.csv").read_text().splitlines()
    assert len(lines) == 16 and lines[0] == "class,label,f1,support"
    assert sum(int(line.split(",")[-1]) for line in lines[1:]) == 45


def test_predict_top_k(two_stage_run, food_data, capsys):
    out = two_stage_run[0]
    photos = sorted((food_data / "food-101" / "images").glob("*/*.jpg"))[:2]
    code = predict_main([str(p) for p in photos] + ["--checkpoint", str(out / "checkpoints" / "last.pt"),
                                                    "--top-k", "3"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    labels = json.loads((out / "label_mapping.json").read_text())["labels"]
    for row in rows:
        probs = [t["probability"] for t in row["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(t["label"] in labels for t in row["top"])
    assert predict_main(["/no/such.jpg", "--checkpoint", str(out / "checkpoints" / "last.pt")]) == 2
    assert "/no/such.jpg: no image file" in capsys.readouterr().err


def test_checkpoints_record_the_architecture_and_an_old_lite0_one_is_refused(two_stage_run, food_data, tmp_path,
                                                                            capsys):
    """Issue 17: a checkpoint trained with timm efficientnet_lite0 (before the switch) has the same tensor names
    as today's tf_efficientnet_lite0: foodrec-eval/-predict/-export refuse it in one line naming both."""
    ckpt_path = two_stage_run[0] / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["architectures"] == ["tf_efficientnet_lite0"]
    old = tmp_path / "old_lite0.pt"
    torch.save({**ckpt, "architectures": ["efficientnet_lite0"]}, old)
    photo = str(sorted((food_data / "food-101" / "images").glob("*/*.jpg"))[0])
    assert predict_main([photo, "--checkpoint", str(old)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(old) in err[0], err
    assert "trained with timm efficientnet_lite0" in err[0] and "builds tf_efficientnet_lite0" in err[0]
    assert export_main(["--checkpoint", str(old), "--out", str(tmp_path / "x")]) == 1
    assert "efficientnet_lite0" in capsys.readouterr().err


def test_predict_device_cpu(two_stage_run, food_data, capsys, monkeypatch):
    """Issue 17: foodrec-predict --device, as foodrec-train's: checked by mlcore's helpers, the model and
    batches on that device's strategy; on cpu the rows equal --device auto's on this CPU-only machine."""
    import mlcore.vision.commands as commands

    asked = []
    real = commands.build_strategy
    monkeypatch.setattr(commands, "build_strategy", lambda device, *a, **k: asked.append(device) or real(device, *a, **k))
    photos = [str(p) for p in sorted((food_data / "food-101" / "images").glob("*/*.jpg"))[:2]]
    ckpt = str(two_stage_run[0] / "checkpoints" / "last.pt")
    rows = {}
    for device in ("cpu", "auto"):
        assert predict_main([*photos, "--checkpoint", ckpt, "--device", device]) == 0
        rows[device] = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert asked == ["cpu", "auto"] and rows["cpu"] == rows["auto"]
    assert predict_main([*photos, "--checkpoint", ckpt, "--device", "gpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_predict_folder_to_csv_and_json_with_classes_from_the_checkpoint(two_stage_run, food_data, tmp_path,
                                                                            capsys):
    """The issue's bar: ``foodrec-predict DIR --out preds.csv`` writes one row per photo, top-5 labels and
    probabilities; the classes come from the checkpoint even with no label_mapping.json beside it."""
    out = two_stage_run[0]
    ckpt = tmp_path / "moved.pt"
    shutil.copy(out / "checkpoints" / "best_val_top1.pt", ckpt)  # no run directory around it
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    originals = sorted((food_data / "food-101" / "images").glob("*/*.jpg"))[:5]
    for i, p in enumerate(originals):
        shutil.copy(p, (photos / "sub" if i % 2 else photos) / f"{i}.jpg")
    assert predict_main([str(photos), "--checkpoint", str(ckpt), "--out", str(tmp_path / "preds.csv"),
                         "--batch-size", "2"]) == 0
    with open(tmp_path / "preds.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and {r["image"] for r in table} == {str(p) for p in sorted(photos.rglob("*.jpg"))}
    names = load_checkpoint(ckpt)["labels"]
    for r in table:
        probs = [float(r[f"probability_{i}"]) for i in range(1, 6)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
        assert all(r[f"label_{i}"] in names for i in range(1, 6))
    # a glob, JSON output, flip TTA
    assert predict_main([str(photos / "*.jpg"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.json"),
                         "--tta", "flip", "--top-k", "2"]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 3 and all(len(r["top"]) == 2 and r["top"][0]["class"] for r in rows)
    assert predict_main([str(photos), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.txt")]) == 2
    assert "expected a .csv or .json" in capsys.readouterr().err


def test_export_onnx_parity_and_preprocessing(two_stage_run, tmp_path, capsys):
    import onnxruntime as ort

    ckpt = two_stage_run[0] / "checkpoints" / "best_val_top1.pt"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m")]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["parity_max_abs_diff"] <= 1e-3 and info["num_classes"] == 15
    pre = info["preprocessing"]
    assert pre["input_size"] == [3, 64, 64] and pre["interpolation"] == "bicubic" and len(pre["mean"]) == 3
    side = json.loads((tmp_path / "m" / "foodrec.json").read_text())
    assert side["classes"] == load_checkpoint(ckpt)["classes"]
    # dynamic batch: 3 images through ONNX Runtime agree with PyTorch
    from foodrec.eval import load_classifier

    loaded = load_classifier(ckpt)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(tmp_path / "m" / "foodrec.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = loaded.model(x).numpy()
    assert got.shape == (3, 15) and np.abs(got - ref).max() <= 1e-3
    meta = {p.key: json.loads(p.value) for p in __import__("onnx").load(str(tmp_path / "m" / "foodrec.onnx")).metadata_props}
    assert meta["preprocessing"]["mean"] == pre["mean"] and meta["labels"][0] == "Apple pie"


def test_run_writes_three_splits_class_list_and_per_epoch_training_stats(two_stage_run):
    out = two_stage_run[0]
    split = json.loads((out / "split.json").read_text())
    assert split["counts"]["test"] == 45 and split["counts"]["train"] + split["counts"]["val"] == 163
    assert split["layout"] == "food101" and split["carved"]["val"]["fraction"] == 0.15
    assert not {p for p, _ in split["splits"]["val"]} & {p for p, _ in split["splits"]["test"]}
    for name in ("last.pt", "best_val_top1.pt", "final_model.pt"):
        ckpt = load_checkpoint(out / "checkpoints" / name)
        assert ckpt["num_classes"] == 15 == len(ckpt["classes"]) and ckpt["classes"][0] == "apple_pie", name
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 3
    for r in train_rows:
        assert {"top1", "f1", "ce", "focal", "samples_per_s", "memory_mb", "loss", "lr"} <= set(r)
        assert 0 <= r["top1"] <= 1 and r["ce"] > 0 and r["focal"] > 0 and r["memory_mb"] > 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["config"]["clip_grad_norm"] is None  # the seed clips not


def test_mixup_mixes_a_copy_of_the_batch():
    """timm's Mixup mixes in place; the step must not, so a second call on the same batch (the trainer's
    out-of-memory retry) mixes the original images again."""
    seen = []

    class Record(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x.mean(dim=(2, 3))  # (N, 3) logits for 3 classes

    step = make_step(CombinedClassificationLoss(), make_mixup(3))
    batch = {"image": torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
             "label": torch.tensor([0, 1, 2, 0])}
    original = batch["image"].clone()
    model = Record().train()
    for _ in range(2):
        np.random.seed(7)
        torch.manual_seed(7)
        out = step(model, batch)
    assert torch.equal(batch["image"], original)
    assert not torch.equal(seen[0], original) and torch.equal(seen[0], seen[1])
    assert {"loss", "ce", "focal", "logits"} <= set(out)


def test_eval_tta_and_one_line_errors(two_stage_run, food_data, capsys):
    ckpt = str(two_stage_run[0] / "checkpoints" / "best_val_top1.pt")
    base = ["--checkpoint", ckpt, "--data", str(food_data), "--split", "val"]
    results = {}
    for tta in ("none", "flip", "five-crop"):
        assert eval_main([*base, "--tta", tta]) == 0
        results[tta] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert results[tta]["tta"] == tta and 0 <= results[tta]["top1"] <= 1
    assert results["none"]["loss"] != results["flip"]["loss"] != results["five-crop"]["loss"]
    assert eval_main([*base, "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("foodrec-eval: error: ") and "--batch-size" in err[0]
    assert "must be >= 1 (got 0)" in err[0]
    for main in (eval_main, predict_main):
        argv = [*base, "--device", "gpu"] if main is eval_main else [str(food_data), "--checkpoint", ckpt, "--device", "gpu"]
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(err) == 1 and "--device" in err[0] and "expected one of" in err[0]


def test_checkpoint_flag_error_names_the_flag_typed(tmp_path, capsys):
    assert train_main(["--checkpoint", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("foodrec-train: error: --checkpoint ") and "--resume" not in err[0]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_unreadable_photo_stops_with_one_line_naming_skip_bad_images(food_data, tmp_path, capsys, workers):
    data = tmp_path / "data"
    shutil.copytree(food_data, data, symlinks=True)
    bad = sorted(p for c in ("apple_pie", "hot_dog", "pizza") for p in (data / "food-101" / "images" / c).glob("*.jpg"))
    for photo in bad:  # a third of the photos, so the first batches hit some (the order is seeded)
        photo.unlink()
        photo.write_bytes(b"not a jpeg")
    argv = _argv(data, tmp_path / "run", "--epochs", "1", "--max-steps", "2", "--no-mixup", "--num-workers", workers)
    assert train_main(argv) == 1
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("foodrec-train: error:")]
    assert "Traceback" not in text and len(err) == 1, text
    assert "cannot read image" in err[0] and "--skip-bad-images" in err[0], err
    assert any(str(p) in err[0] for p in bad)
    assert train_main([*argv, "--skip-bad-images", "--out", str(tmp_path / "run2")]) == 0
    skipped = json.loads((tmp_path / "run2" / "summary.json").read_text())["bad_images"]
    assert skipped and set(skipped) <= {str(p) for p in bad}


def test_seed_defaults_and_presets():
    from mlcore.cli import list_presets

    cfg = FoodRecConfig(data=".")
    assert (cfg.image_size, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_epochs,
            cfg.warmup_start_factor, cfg.min_lr, cfg.epochs) == (300, 16, 1e-3, 0.01, 5.0, 0.1, 1e-6, 150)
    # the one backbone whose ImageNet weights install with the workspace: a bare foodrec-train runs offline
    assert (cfg.backbone, cfg.backbone_weights, cfg.pretrained) == ("efficientnet_lite0", "offline", True)
    assert {"default", "seed", "high_quality", "two_stage", "cpu"} <= set(list_presets("foodrec"))


def test_default_preset_equals_dataclass_defaults():
    from mlcore.cli import load_preset

    preset = load_preset("default", "foodrec")
    defaults = FoodRecConfig(data=".")
    assert {k: getattr(defaults, k) for k in preset} == preset


def test_seed_preset_is_efficientnet_b3_with_hub_weights():
    """Issue 17: the seed's configuration stays one flag away; it differs from the default only in the backbone."""
    from mlcore.cli import load_preset

    preset = load_preset("seed", "foodrec")
    assert preset == {**load_preset("high_quality", "foodrec"), "out": "runs/foodrec"}
    defaults = FoodRecConfig(data=".")
    assert {k: v for k, v in preset.items() if getattr(defaults, k) != v} == {
        "backbone": "efficientnet_b3", "backbone_weights": "imagenet"}


def test_default_model_loads_the_offline_weights_with_the_network_blocked(no_network):
    """Issue 17: the bare command's model needs no hub: its backbone holds the installed file's tensors."""
    from mlcore.pretrained import efficientnet_lite0_weights_path

    cfg = FoodRecConfig(data=".")
    model = build_model(cfg.backbone, num_classes=3, pretrained=cfg.backbone_init())
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.blocks[6][0].bn3.running_mean, source["_blocks.15._bn2.running_mean"])
    with pytest.raises(OSError, match="could not download ImageNet weights"):  # the fixture does block the hub
        build_model("efficientnet_b0", num_classes=3, pretrained="imagenet")


@pytest.mark.parametrize("argv,needle", [
    (["--backbone-weights", "offline", "--backbone", "resnet50"], "only available for --backbone efficientnet_lite0"),
    (["--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
])
def test_bad_flags(argv, needle, capsys, food_data):
    assert train_main(["--data", str(food_data)] + argv) == 2
    assert needle in capsys.readouterr().err


def test_stopped_inside_stage1_waits_and_resumes_with_the_base_config(tmp_path, food_data):
    """Issue 11 defect 2: stage 2 used to start although stage 1 stopped at --max-steps, and config.yaml
    held stage 1's lr/epochs, which --resume then used as the base config."""
    import yaml

    out = tmp_path / "run"
    argv = _argv(food_data, out, "--two-stage", "--stage1-epochs", "1", "--stage1-lr", "3e-3", "--epochs", "1",
                 "--no-mixup", "--max-steps", "2")
    assert train_main(argv) == 0
    stopped = json.loads((out / "summary.json").read_text())
    assert stopped["steps"] == 2 and stopped["completed_stages"] == []
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 1e-3 and saved["epochs"] == 1 and saved["stage1_lr"] == 3e-3
    assert train_main(["--resume", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed_stages"] == ["stage1", "stage2"]
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["stage"] == "stage2" and last["stage_config"]["lr"] == 1e-3 and last["config"]["stage1_lr"] == 3e-3

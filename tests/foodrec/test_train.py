"""foodrec-train, -eval and -predict end to end on the real Food-101 sample."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from foodrec.config import FoodRecConfig
from foodrec.eval import main as eval_main
from foodrec.predict import main as predict_main
from foodrec.train import main as train_main
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
    assert predict_main(["/no/such.jpg", "--checkpoint", str(out / "checkpoints" / "last.pt")]) == 1


def test_seed_defaults_and_presets():
    from mlcore.cli import list_presets

    cfg = FoodRecConfig(data=".")
    assert (cfg.backbone, cfg.image_size, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.warmup_epochs,
            cfg.warmup_start_factor, cfg.min_lr, cfg.epochs) == ("efficientnet_b3", 300, 16, 1e-3, 0.01, 5.0,
                                                                0.1, 1e-6, 150)
    assert {"high_quality", "two_stage", "cpu"} <= set(list_presets("foodrec"))


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

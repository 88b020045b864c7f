from __future__ import annotations

import json
import os

import pytest
import torch

from mlcore.checkpoint import load_checkpoint
from mlcore.seed import seed_everything
from plantid import datasets
from plantid import eval as plantid_eval
from plantid import predict as plantid_predict
from plantid.config import PlantIdConfig
from plantid.models import build_model
from plantid.train import main as train_main
from plantid.train import train

TINY = ["--model-type", "dinov2_tiny", "--no-pretrained", "--image-size", "28", "--batch-size", "4",
        "--accum-steps", "2", "--num-workers", "0", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def run(small_flowers, tmp_path_factory):
    """One two-stage run (1 frozen + 1 fine-tuning epoch) of a tiny DINOv2 on 40 real photos."""
    out = tmp_path_factory.mktemp("plantid") / "run"
    code = train_main(["--data", str(small_flowers), "--out", str(out), "--epochs", "2", "--frozen-epochs", "1",
                       "--profile", "--profile-steps", "1", *TINY])
    assert code == 0
    return out


def test_run_directory_and_training_config(run, capsys):
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "training_config.json", "label_mapping.json",
                 "checkpoints/last.pt", "checkpoints/best_val_top1.pt", "profile/top_ops.txt", "val_confusion_matrix.png"):
        assert (run / name).is_file(), name
    tc = json.loads((run / "training_config.json").read_text())
    assert tc["effective_batch"] == 8 and tc["micro_batch"] == 4 and tc["accum_steps"] == 2
    assert tc["parameters"]["model_type"] == "dinov2_tiny" and tc["parameters"]["gpu_aug"] is True
    # 8 photos per class: 1 carved for test (15%), 1 of the other 7 for val (20%), 6 train
    assert tc["dataset"] == {"root": tc["dataset"]["root"], "layout": "imagefolder", "classes": 5,
                             "train": 30, "val": 5, "test": 5}
    split = json.loads((run / "split.json").read_text())
    assert split["counts"] == {"train": 30, "val": 5, "test": 5} and split["carved"]["test"]["seed"] == 0
    assert set(tc["timings"]["stages"]) == {"frozen", "finetune"} and tc["device"] == "cpu"
    # 30 train photos, batch 4 (drop_last) = 7 micro-batches = 4 updates per epoch
    assert [s["steps"] for s in tc["timings"]["stages"].values()] == [4, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed_stages"] == ["frozen", "finetune"] and summary["bad_images"] == []
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows if r["split"] == "val"] == ["frozen", "finetune"]


def test_eval_reproduces_the_run_validation(run, small_flowers, capsys, tmp_path):
    final = json.loads((run / "summary.json").read_text())["final"]
    code = plantid_eval.main(["--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(small_flowers),
                              "--split", "val", "--num-workers", "0", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_images"] == 5
    assert result["top1"] == pytest.approx(final["top1"]) and result["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "per_class.csv").is_file()


def test_predict_top_k(run, small_flowers, capsys):
    img = sorted((small_flowers / "rose").iterdir())[0]
    code = plantid_predict.main([str(img), "--checkpoint", str(run / "checkpoints" / "last.pt"), "--top-k", "3"])
    assert code == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    probs = [t["probability"] for t in row["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert {t["label"] for t in row["top"]} <= {"daisy", "dandelion", "rose", "sunflower", "tulip"}
    # --device as plantid-train's (mlcore's helpers): on cpu the same row as auto on this CPU-only machine
    assert plantid_predict.main([str(img), "--checkpoint", str(run / "checkpoints" / "last.pt"), "--top-k", "3",
                                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == row


def test_frozen_stage_trains_only_the_head(small_flowers, tmp_path):
    cfg = PlantIdConfig(data=str(small_flowers), out=str(tmp_path / "r"), model_type="dinov2_tiny", pretrained=False,
                        image_size=28, batch_size=8, accum_steps=1, num_workers=0, epochs=1, frozen_epochs=1,
                        gpu_aug=False, max_steps=2)
    cfg.validate()
    train(cfg)
    seed_everything(cfg.seed)  # train() builds the model right after seeding the same way
    init = build_model("dinov2_tiny", 5, pretrained=False, image_size=28).state_dict()
    trained = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["model"]
    for k, v in init.items():
        if k.startswith("backbone."):
            assert torch.equal(trained[k], v), k
    assert not torch.equal(trained["head.1.weight"], init["head.1.weight"])


def test_bad_flags_are_one_line_errors(small_flowers, tmp_path, capsys):
    cases = [(["--image-size", "100", "--model-type", "dinov2_tiny", "--no-pretrained"], "multiple of 14"),
             (["--model-type", "dinov2_tiny"], "--no-pretrained"),
             (["--frozen-epochs", "9", "--epochs", "3"], "--frozen-epochs"),
             (["--weights", str(tmp_path)], "--weights"),
             (["--data", str(tmp_path / "missing")], "--data")]
    for args, message in cases:
        argv = ["--data", str(small_flowers), "--out", str(tmp_path / "x"), *args]
        assert train_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_workers_capped_at_cpu_count():
    assert PlantIdConfig(num_workers=10_000).workers() == len(os.sched_getaffinity(0))
    assert PlantIdConfig(num_workers=1).workers() == 1
    assert PlantIdConfig().num_workers == 8 and PlantIdConfig().accum_steps == 2 and PlantIdConfig().batch_size == 16


def test_default_is_the_offline_lite0_and_seed_preset_is_dinov2():
    """Issue 17: a bare plantid-train needs no hub (no DINOv2 weights install with the workspace);
    the seed's DINOv2 is --config seed, which differs from the defaults only in the backbone."""
    from mlcore.cli import load_preset

    defaults = PlantIdConfig()
    assert (defaults.model_type, defaults.pretrained, defaults.image_size, defaults.epochs,
            defaults.frozen_epochs, defaults.lr) == ("efficientnet_lite0", True, 448, 60, 5, 2e-5)
    preset = load_preset("default", "plantid")
    assert {k: getattr(defaults, k) for k in preset} == preset
    seed = load_preset("seed", "plantid")
    assert {k: v for k, v in seed.items() if getattr(defaults, k) != v} == {"model_type": "dinov2_small"}


def test_default_model_loads_the_offline_weights_with_the_network_blocked(no_network):
    from mlcore.pretrained import efficientnet_lite0_weights_path

    cfg = PlantIdConfig()
    model = build_model(cfg.model_type, 3, pretrained=cfg.pretrained, image_size=cfg.image_size, head=cfg.head)
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.blocks[6][0].bn3.running_mean, source["_blocks.15._bn2.running_mean"])


def test_data_command_lists_plantnet(capsys):
    assert datasets.main(["list"]) == 0
    assert "plantnet300k" in capsys.readouterr().out
    assert datasets.main(["download", "nope", "--to", "x"]) == 2


def test_cpu_preset_parses(flowers_root):
    from mlcore.cli import parse_config

    cfg = parse_config(PlantIdConfig, ["--config", "cpu", "--data", str(flowers_root)], prog="plantid-train",
                       presets_package="plantid")
    assert cfg.model_type == "efficientnet_lite0" and cfg.pretrained and 0 < cfg.frozen_epochs < cfg.epochs


def test_predict_folder_and_export_onnx(run, small_flowers, tmp_path, capsys):
    from plantid import export as plantid_export

    ckpt = run / "checkpoints" / "best_val_top1.pt"
    assert load_checkpoint(ckpt)["classes"] == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    assert plantid_predict.main([str(small_flowers / "rose"), "--checkpoint", str(ckpt), "--out",
                                 str(tmp_path / "p.json"), "--tta", "five-crop"]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 8 and all(len(r["top"]) == 5 for r in rows)
    assert plantid_export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "onnx"),
                                "--sample-image", str(sorted((small_flowers / "rose").iterdir())[0])]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["parity_max_abs_diff"] <= 1e-3 and (tmp_path / "onnx" / "plantid.onnx").is_file()
    assert info["preprocessing"]["input_size"] == [3, 28, 28] and info["preprocessing"]["crop_pct"] == 224 / 256

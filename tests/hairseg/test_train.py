"""hairseg-train and hairseg-eval end to end on a small folder of real Figaro-1k photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hairseg.config import HairSegConfig
from hairseg.eval import main as eval_main
from hairseg.train import main as train_main


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory, figaro_root) -> Path:
    """16 real Figaro photos converted to the images/ + masks/ layout (masks 0/255 PNG)."""
    root = tmp_path_factory.mktemp("hair16")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    photos = sorted((figaro_root / "Figaro1k" / "Original" / "Training").glob("*-org.jpg"))[:16]
    for p in photos:
        stem = p.name.replace("-org.jpg", "")
        Image.open(p).convert("RGB").save(root / "images" / f"{stem}.jpg", quality=95)
        gt = np.asarray(Image.open(figaro_root / "Figaro1k" / "GT" / "Training" / f"{stem}-gt.pbm").convert("L"))
        Image.fromarray(((gt > 0) * 255).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
    return root


def _train(tmp_path, data, *extra):
    out = tmp_path / "run"
    argv = ["--data", str(data), "--out", str(out), "--encoder", "mobilenet_v2", "--no-pretrained",
            "--image-size", "64", "--batch-size", "4", "--accum-steps", "1", "--epochs", "2",
            "--warmup-steps", "2", "--lr", "1e-3", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache"),
            "--examples", "2", *extra]
    return out, train_main(argv)


def test_train_then_eval(tmp_path, small_folder, capsys):
    out, code = _train(tmp_path, small_folder)
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == 2 * 3  # 16 photos: 12 train (val 15% -> 2, test 15% -> 2) / 4 per step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] in ("reject", "acceptable", "production")
    assert 0 <= summary["best"]["val_iou"]["value"] <= 1
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best_val_iou.pt",
                 "val_examples.png", "split.json"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())  # mlcore.data.write_split_json's layout
    assert split["counts"] == {"train": 12, "val": 2, "test": 2} and split["seed"] == 0
    train, val, test = (set(split["splits"][k]) for k in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (12, 2, 2) and all(p.startswith("images/") for p in train)
    assert not test & (train | val)
    assert not train & val
    assert summary["test"]["n_images"] == 2 and 0 <= summary["test"]["iou"] <= 1  # reported, never selected on
    assert summary["data"]["test"] == 2 and printed["test"]["checkpoint"] == "best_val_iou.pt"
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert {"iou", "f1", "precision", "recall", "iou_per_image"} <= set(val_rows[0])

    code = eval_main(["--checkpoint", str(out / "checkpoints" / "best_val_iou.pt"), "--data", str(small_folder),
                      "--split", "val", "--out", str(tmp_path / "eval")])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_images"] == 2 and 0 <= result["iou"] <= 1 and result["split"] == "val"
    assert (tmp_path / "eval" / "eval_examples.png").is_file()
    assert len((tmp_path / "eval" / "per_image.csv").read_text().splitlines()) == 3


def test_resume_continues_the_run(tmp_path, small_folder):
    out, code = _train(tmp_path, small_folder, "--max-steps", "4")
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    code = train_main(["--resume", str(out)])
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_defaults_are_the_seed_finetune():
    cfg = HairSegConfig(data=".")
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.accum_steps, cfg.warmup_steps, cfg.scheduler,
            cfg.epochs, cfg.early_stopping_patience, cfg.monitor, cfg.clip_grad_norm, cfg.image_size,
            cfg.optimizer, cfg.precision) == (1e-4, 1e-5, 4, 4, 100, "cosine", 5, 3, "val_iou", 1.0, 384,
                                              "adamw", "auto")
    # the one encoder whose ImageNet weights install with the workspace: a bare hairseg-train runs offline
    assert (cfg.encoder, cfg.encoder_weights, cfg.pretrained) == ("efficientnet-lite0", "offline", True)


def test_seed_preset_is_mobilenet_v2_with_hub_weights():
    from mlcore.cli import load_preset

    preset = load_preset("seed", "hairseg")
    assert preset["encoder"] == "mobilenet_v2" and preset["encoder_weights"] == "imagenet"
    defaults = HairSegConfig(data=".")
    assert {k: v for k, v in preset.items() if getattr(defaults, k) != v} == {
        "encoder": "mobilenet_v2", "encoder_weights": "imagenet"}


def test_bare_command_trains_offline(tmp_path, small_folder):
    """`hairseg-train` with no model flags needs no hub: the default preset's weights are installed."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "hairseg.train", "--data", str(small_folder), "--out",
                          str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"), "--image-size", "64",
                          "--max-steps", "1", "--accum-steps", "1", "--num-workers", "0", "--examples", "0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    config = (tmp_path / "r" / "config.yaml").read_text()
    assert "encoder: efficientnet-lite0" in config and "encoder_weights: offline" in config


@pytest.mark.parametrize("argv,needle", [
    (["--lr", "-1"], "--lr must be > 0"),
    (["--data", "/nope"], "--data /nope: folder not found"),
    (["--config", "gpu-huge"], "unknown preset 'gpu-huge'"),
    (["--image-size", "100"], "--image-size must be a multiple of 32"),
    (["--encoder-weights", "offline", "--encoder", "resnet34"], "only available for --encoder efficientnet-lite0"),
])
def test_bad_flags_exit_2_one_line(argv, needle, capsys, small_folder):
    base = ["--data", str(small_folder)] if "--data" not in argv else []
    assert train_main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_bad_data_exits_1_naming_files(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.jpg")
    Image.new("L", (20, 30)).save(tmp_path / "masks" / "a.png")
    for i in range(4):
        Image.new("RGB", (40, 30)).save(tmp_path / "images" / f"b{i}.jpg")
        Image.new("L", (40, 30)).save(tmp_path / "masks" / f"b{i}.png")
    code = train_main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c"),
                       "--no-pretrained", "--image-size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "a.png" in err[0] and "a.jpg" in err[0]


def test_cpu_preset_is_shipped():
    from hairseg.models import parse_decoder_channels
    from mlcore.cli import list_presets, load_preset

    assert "cpu" in list_presets("hairseg")
    preset = load_preset("cpu", "hairseg")
    assert preset["encoder"] == "efficientnet-lite0" and preset["encoder_weights"] == "offline"
    # the decoder whose bf16 export meets issue 12's 40 ms at 384 px (bench/RESULTS.md)
    assert parse_decoder_channels(preset["decoder_channels"]) == (128, 64, 32, 16, 8)
    # chosen on val in issue 17 (bench/RESULTS.md): bf16 + channels-last buys 5 epochs inside the 20 minutes
    assert (preset["precision"], preset["channels_last"], preset["epochs"], preset["image_size"]) == ("bf16", True, 5, 320)


def test_eval_mediapipe_baseline(figaro_root, shared_models, capsys):
    code = eval_main(["--model", "mediapipe", "--mediapipe-model", str(shared_models / "selfie_segmentation.tflite"),
                      "--data", str(figaro_root), "--split", "val", "--limit", "12"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_images"] == 12
    # a person model: it covers the hair (high recall) but also face and body (low precision)
    assert result["recall"] > 0.8 and result["precision"] < 0.8 and result["verdict"] == "reject"


def test_eval_errors(tmp_path, capsys):
    assert eval_main(["--data", str(tmp_path), "--model", "mediapipe"]) == 2
    assert "--mediapipe-model" in capsys.readouterr().err
    assert eval_main(["--data", "/nope", "--checkpoint", "x.pt"]) == 2
    capsys.readouterr()
    for bad in ("0", "-3"):  # issue 16: --limit 0 used to mean "no limit"
        assert eval_main(["--data", str(tmp_path), "--checkpoint", "x.pt", "--limit", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--limit must be >= 1" in err[0] and "Traceback" not in err[0]


def test_default_preset_equals_dataclass_defaults():
    from mlcore.cli import load_preset

    preset = load_preset("default", "hairseg")
    defaults = HairSegConfig(data=".")
    assert {k: getattr(defaults, k) for k in preset} == preset


def test_offline_imagenet_download_is_one_line(tmp_path, small_folder):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # fail fast instead of retrying the hub
    out = subprocess.run([sys.executable, "-m", "hairseg.train", "--data", str(small_folder), "--out",
                          str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"), "--image-size", "32",
                          "--encoder", "mobilenet_v2", "--encoder-weights", "imagenet", "--num-workers", "0"],
                         capture_output=True, text=True, env=env, timeout=300)
    err = [line for line in out.stderr.splitlines() if line.startswith("hairseg-train: error:")]
    assert out.returncode == 1 and len(err) == 1 and "Traceback" not in out.stderr
    assert "--encoder-weights offline" in err[0]


def test_ctrl_c_saves_last_pt_exits_130_and_resumes(tmp_path, small_folder):
    """Issue 16 bar: SIGINT to a running hairseg-train writes last.pt, prints one line and no traceback,
    exits 130, and --resume continues."""
    import os
    import signal
    import subprocess
    import sys

    from mlcore.checkpoint import load_checkpoint

    out = tmp_path / "run"
    argv = ["--data", str(small_folder), "--out", str(out), "--encoder", "mobilenet_v2", "--no-pretrained",
            "--image-size", "64", "--batch-size", "4", "--epochs", "50", "--num-workers", "1",
            "--cache-dir", str(tmp_path / "cache"), "--examples", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "hairseg.train", *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in p.stderr:  # the trainer handles signals from its "stage ..." line on
        seen.append(line)
        if "mlcore.trainer: stage main:" in line:
            p.send_signal(signal.SIGINT)
            break
    _, rest = p.communicate(timeout=300)
    err = "".join(seen) + rest
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    ours = [ln for ln in err.splitlines() if ln.startswith("hairseg-train:")]
    assert len(ours) == 1 and "stopped by SIGINT" in ours[0] and f"--resume {out}" in ours[0], ours
    step = load_checkpoint(out / "checkpoints" / "last.pt")["global_step"]
    assert step >= 1
    assert train_main(["--resume", str(out), "--max-steps", str(step + 1)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == step + 1

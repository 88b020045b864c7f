"""End to end on the real sample clips with tiny models: curriculum phases through mlcore,
--start-phase, training_summary.json, eval JSON, reconstruct and generate mp4s PyAV decodes."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import yaml

from videogen.config import VideoGenConfig, load_curriculum
from videogen.eval import main as eval_main
from videogen.predict import generate_main, reconstruct_main
from videogen.train import main as train_main

COMMON = ["--model-size", "tiny", "--image-size", "32", "--num-frames", "8", "--fps", "8",
          "--num-workers", "0", "--torch-threads", "1", "--val-windows", "1", "--precision", "fp32"]


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def vae_run(videos_root, tiny_curriculum, tmp_path_factory, probe_cache):
    run = tmp_path_factory.mktemp("vae") / "run"
    args = ["--data", str(videos_root), "--out", str(run), "--curriculum", str(tiny_curriculum), *COMMON]
    assert train_main([*args, "--end-phase", "1"]) == 0
    return run, args


def test_phase_one_writes_the_run_directory_contract(vae_run):
    run, _ = vae_run
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "training_summary.json",
              "checkpoints/last.pt", "checkpoints/phase1/best.pt", "checkpoints/phase1/last.pt",
              "checkpoints/best_val_loss.pt"):
        assert (run / f).is_file(), f
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["val_clips"] == ["clips/fire2.mp4"] and len(summary["train_clips"]) == 4
    (p1,) = summary["phases"]
    assert p1["phase"] == 1 and p1["clips"] == ["clips/bigbuckbunny.mp4"]  # the calmest clip first
    assert p1["completed"] and p1["updates"] == 1 and p1["train_loss"] and p1["val_loss"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert val and {"psnr", "psnr_trilinear", "psnr_gain"} <= set(val[-1])


def test_start_phase_two_continues_from_phase_one_best(vae_run, capsys, caplog):
    run, args = vae_run
    assert train_main([*args, "--start-phase", "2", "--end-phase", "2"]) == 0
    assert "phase 2 starts from" in caplog.text and "phase1/best.pt" in caplog.text
    assert (run / "checkpoints/phase2/best.pt").is_file()
    summary = json.loads((run / "training_summary.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == [1, 2]  # phase 1's record kept


def test_start_phase_without_the_previous_phase_is_a_clear_error(vae_run, capsys):
    run, args = vae_run
    assert train_main([*args, "--start-phase", "4", "--end-phase", "4"]) == 1
    err = capsys.readouterr().err
    assert "--start-phase 4" in err and "phase3/best.pt not found" in err


def test_eval_prints_metrics_beside_the_trilinear_baseline(vae_run, videos_root, capsys, tmp_path):
    run, _ = vae_run
    assert eval_main(["--checkpoint", str(run), "--data", str(videos_root), "--split", "val",
                      "--out", str(tmp_path)]) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["clips"] == ["clips/fire2.mp4"]
    assert {"psnr", "ssim", "psnr_trilinear", "psnr_area_trilinear"} <= set(res)
    assert res["lpips"] == "unavailable" and res["fvd"] == "unavailable"
    assert list(tmp_path.glob("recon_fire2_*.png"))


def test_eval_uses_lpips_and_i3d_when_given_as_files(vae_run, videos_root, capsys, tmp_path):
    """Stand-in TorchScript networks (no real weights here) exercise the LPIPS and FVD paths."""
    import torch

    class FakeLPIPS(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a - b).abs().mean(dim=(1, 2, 3))

    class FakeI3D(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(3, 4)).flatten(1)  # (B, 3 * T) features

    torch.jit.script(FakeLPIPS()).save(str(tmp_path / "lpips.pt"))
    torch.jit.script(FakeI3D()).save(str(tmp_path / "i3d.pt"))
    run, _ = vae_run
    assert eval_main(["--checkpoint", str(run), "--data", str(videos_root), "--split", "val", "--windows", "3",
                      "--lpips-weights", str(tmp_path / "lpips.pt"), "--i3d-weights", str(tmp_path / "i3d.pt")]) == 0
    res = _last_json(capsys.readouterr().out)
    assert isinstance(res["lpips"], float) and res["lpips"] > 0
    assert isinstance(res["fvd"], float) and res["fvd"] >= 0
    assert eval_main(["--checkpoint", str(run), "--data", str(videos_root), "--lpips-weights", "nope.pt"]) == 2


def test_reconstruct_writes_a_decodable_side_by_side_mp4(vae_run, videos_root, tmp_path, capsys):
    run, _ = vae_run
    out = tmp_path / "rec.mp4"
    assert reconstruct_main([str(videos_root / "clips" / "chaplin.mp4"), "--checkpoint", str(run),
                             "--out", str(out)]) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["psnr"] > 0 and res["psnr_trilinear"] > 0
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (32, 32 * 2 + 2, 3)
    assert out.with_suffix(".png").is_file()


def test_backbone_stage_and_generate(vae_run, videos_root, tiny_curriculum, tmp_path, capsys):
    run, _ = vae_run
    bb = tmp_path / "bb"
    args = ["--data", str(videos_root), "--out", str(bb), "--curriculum", str(tiny_curriculum), *COMMON,
            "--stage", "backbone", "--vae", str(run), "--end-phase", "1"]
    assert train_main(args) == 0
    cfg = yaml.safe_load((bb / "config.yaml").read_text())
    assert cfg["vae_model_size"] == "tiny" and cfg["latent_channels"] == 4
    out = tmp_path / "gen.mp4"
    assert generate_main(["--checkpoint", str(bb), "--prompt", "Ein Flugzeug fliegt über ein Feld 飞机",
                          "--out", str(out), "--steps", "2"]) == 0
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
    # a VAE checkpoint cannot generate
    assert generate_main(["--checkpoint", str(run), "--prompt", "x", "--out", str(tmp_path / "x.mp4")]) == 1


def test_bad_flags_exit_2_with_one_line(videos_root, capsys):
    assert train_main(["--data", str(videos_root), "--num-frames", "6"]) == 2
    assert "--num-frames must be a positive multiple of 4" in capsys.readouterr().err
    assert train_main(["--data", str(videos_root), "--stage", "backbone"]) == 2
    assert "--stage backbone needs --vae" in capsys.readouterr().err
    assert train_main(["--data", str(videos_root), "--curriculum", "nope"]) == 2
    assert "unknown curriculum" in capsys.readouterr().err


def test_seed_curriculum_and_default_preset():
    phases = load_curriculum("seed")
    assert [p["epochs"] for p in phases] == [20, 25, 30, 20, 15]
    assert [p["batch_size"] for p in phases] == [4, 4, 2, 2, 2]
    assert [p["lr"] for p in phases] == [1e-4, 5e-5, 2e-5, 1e-5, 5e-6]
    assert [p["samples"] for p in phases] == [1000, 1500, 2000, 1200, 4000]
    assert all(p["warmup_fraction"] == 0.1 and p["clip_grad_norm"] == 1.0 for p in phases)
    preset = yaml.safe_load((Path(__file__).parents[2] / "packages/videogen/src/videogen/configs/default.yaml")
                            .read_text())
    defaults = VideoGenConfig()
    for key, value in preset.items():
        assert getattr(defaults, key) == value, key


def test_time_budget_stops_at_the_next_evaluation():
    import time
    from types import SimpleNamespace

    from videogen.train import TimeBudget

    trainer = SimpleNamespace(should_stop=False)
    TimeBudget(None, time.perf_counter() - 1e6).on_evaluate(trainer, {})
    assert not trainer.should_stop  # no budget
    TimeBudget(10.0, time.perf_counter()).on_evaluate(trainer, {})
    assert not trainer.should_stop  # within budget
    over = TimeBudget(1.0, time.perf_counter() - 61.0)
    over.on_evaluate(trainer, {})
    assert trainer.should_stop and over.exceeded


def test_resume_skips_done_phases_and_keeps_each_phase_s_curriculum_values(videos_root, tiny_curriculum, tmp_path,
                                                                           probe_cache):
    run = tmp_path / "run"
    args = ["--data", str(videos_root), "--out", str(run), "--curriculum", str(tiny_curriculum), *COMMON]
    assert train_main([*args, "--end-phase", "1"]) == 0
    # --resume reloads config.yaml, which holds phase 1's lr; phase 2 must still get its own (5e-4)
    assert train_main(["--resume", str(run), "--end-phase", "2"]) == 0
    phases = json.loads((run / "training_summary.json").read_text())["phases"]
    assert [p["phase"] for p in phases] == [1, 2]
    assert phases[1]["lr"] == 5e-4 and phases[1]["completed"]


@pytest.mark.parametrize("preset", ["cpu", "cpu_backbone", "default", "gtx1070", "gtx1070_backbone"])
def test_every_shipped_preset_parses(preset, videos_root, tmp_path):
    from mlcore.cli import parse_config

    extra = ["--vae", str(tmp_path)] if "backbone" in preset else []
    cfg = parse_config(VideoGenConfig, ["--config", preset, "--data", str(videos_root), *extra],
                       prog="videogen-train", presets_package="videogen")
    assert len(load_curriculum(cfg.curriculum)) == 5
    if preset.startswith("gtx1070"):
        assert cfg.model_size == "gtx1070" and cfg.grad_checkpointing and cfg.precision == "fp16"

"""``videogen-reconstruct`` (a clip through the VAE, original | reconstruction side by side) and
``videogen-generate`` (prompt -> text encoder -> flow-matching sampling in latent space -> VAE decoder
-> H.264 mp4), plus the Python API behind them."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore.checkpoint import CheckpointError, load_checkpoint
from mlcore.cli import ArgumentParser, run_cli
from mlcore.config import ConfigError
from mlcore.devices import build_strategy
from videogen.data import DataError, probe_clip, read_clip
from videogen.metrics import psnr, psnr_trilinear
from videogen.models import TextToVideo, VideoVAE, build_text_to_video, build_vae, model_size
from videogen.video_io import frames_grid_png, side_by_side, write_mp4

log = logging.getLogger("videogen.predict")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file or a run directory (latest ``phaseN/best.pt``, else
    ``best_val_loss.pt``, else ``last.pt``).

    Raises:
        CheckpointError: nothing usable there.
    """
    from videogen.train import resolve_vae_checkpoint

    try:
        return resolve_vae_checkpoint(path)
    except CheckpointError:
        raise CheckpointError(f"--checkpoint {path}: no checkpoint file found (a .pt file or a videogen-train "
                              f"run directory)") from None


def load_model(path: str | Path) -> tuple[VideoVAE | TextToVideo, dict[str, Any]]:
    """The model of a ``videogen-train`` checkpoint (VAE or text-to-video) in eval mode, and its config.

    Raises:
        CheckpointError: not a videogen checkpoint, or weights that do not fit the model it names.
    """
    file = resolve_checkpoint(path)
    ckpt = load_checkpoint(file, expect_domain="videogen")
    cfg = ckpt.get("config") or {}
    if cfg.get("stage") not in ("vae", "backbone") or "model_size" not in cfg:
        raise CheckpointError(f"{file}: not a videogen-train checkpoint (no stage/model_size in its config)")
    if cfg["stage"] == "vae":
        model: torch.nn.Module = build_vae(model_size(cfg["model_size"], cfg.get("latent_channels"),
                                                      cfg.get("spatial_compression")))
    else:
        vae_size = model_size(cfg.get("vae_model_size") or cfg["model_size"], cfg.get("latent_channels"),
                              cfg.get("spatial_compression"))
        model = build_text_to_video(model_size(cfg["model_size"]), build_vae(vae_size))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: weights do not match a {cfg['model_size']} {cfg['stage']} model "
                              f"({str(exc).splitlines()[0]})") from exc
    return model.eval(), cfg


@torch.inference_mode()
def reconstruct(vae: VideoVAE, video: torch.Tensor) -> torch.Tensor:
    """Posterior-mean reconstruction of ``video`` ``(B, 3, T, H, W)`` in [0, 1] -> same shape, clamped."""
    return vae(video, sample=False)["recon"].clamp(0, 1)


@torch.inference_mode()
def generate(model: TextToVideo, prompt: str, *, num_frames: int = 16, height: int = 64, width: int = 64,
             steps: int = 30, guidance: float = 4.0, seed: int = 0) -> torch.Tensor:
    """Text -> video by Euler integration of the learned velocity field from noise (t = 1) to data (t = 0),
    with classifier-free guidance ``v = v_uncond + guidance * (v_cond - v_uncond)``.

    Returns:
        ``(3, T, H, W)`` float32 in [0, 1] (``T``, ``H``, ``W`` rounded to the VAE's compression).
    """
    vae = model.vae
    c, t, h, w = vae.latent_shape(num_frames, height, width)
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, t, h, w, generator=g).to(dev)
    text, mask, pooled = model.encode_text([prompt])
    ntext, nmask, npooled = model.null_text(1)
    times = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        tt = torch.full((1,), float(times[i]), device=dev)
        v = model(x, tt, text, mask, pooled)
        if guidance != 1.0:
            vu = model(x, tt, ntext, nmask, npooled)
            v = vu + guidance * (v - vu)
        x = x + (float(times[i + 1]) - float(times[i])) * v
    return vae.decode(x / model.latent_scale)[0].clamp(0, 1).float().cpu()


def reconstruct_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``videogen-reconstruct CLIP --out FILE.mp4`` (exit 0 ok, 1 bad clip/checkpoint, 2 flags).

    Prints one JSON line: PSNR of the reconstruction and of trilinear resampling to the same
    number of latent values. Also writes ``FILE.png`` (frames: original | reconstruction).
    """
    p = ArgumentParser(prog="videogen-reconstruct", description="Reconstruct a clip with a trained VideoVAE.")
    p.add_argument("clip", help="video file")
    p.add_argument("--checkpoint", required=True, help="VAE checkpoint or videogen-train --stage vae run directory")
    p.add_argument("--out", required=True, help="output mp4 (original | reconstruction)")
    p.add_argument("--start", type=float, default=0.0, help="start time in seconds")
    p.add_argument("--num-frames", type=int, default=None, help="frames (default: the training T)")
    p.add_argument("--image-size", type=int, default=None, help="frame size in px (default: the training size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

    def run() -> int:
        args = p.parse_args(argv)
        if not Path(args.clip).is_file():
            raise ConfigError(f"CLIP {args.clip}: file not found")
        model, cfg = load_model(args.checkpoint)
        vae = model if isinstance(model, VideoVAE) else model.vae
        t = args.num_frames or int(cfg.get("num_frames", 16))
        size = args.image_size or int(cfg.get("image_size", 64))
        s = vae.spatial_compression
        if t % 4 or size % s:
            raise ConfigError(f"--num-frames must be a multiple of 4 and --image-size of {s} (got {t}, {size})")
        info = probe_clip(args.clip)
        video = read_clip(args.clip, t, fps=cfg.get("fps"), stride=int(cfg.get("frame_stride", 1)), start=args.start,
                          size=size, info=info).permute(1, 0, 2, 3)[None]
        strategy = build_strategy(args.device)
        vae = strategy.prepare_model(vae)
        recon = reconstruct(vae, strategy.to_device(video)).cpu()
        out = write_mp4(side_by_side(video[0], recon[0]), args.out, fps=float(cfg.get("fps") or info["fps"]))
        frames_grid_png(side_by_side(video[0], recon[0]), out.with_suffix(".png"))
        n_lat = int(torch.tensor(vae.latent_shape(t, size, size)).prod())
        print(json.dumps({"clip": args.clip, "out": str(out), "psnr": float(psnr(recon, video)[0]),
                          "psnr_trilinear": float(psnr_trilinear(video, n_lat)[0]), "frames": t, "size": size}))
        return 0

    return run_cli(run, prog="videogen-reconstruct", user_errors=(DataError, CheckpointError, OSError, ValueError))


def generate_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``videogen-generate --checkpoint RUN_DIR_OR_FILE --prompt TEXT --out FILE.mp4``
    (exit 0 ok, 1 bad checkpoint, 2 flags). Prints one JSON line; also writes ``FILE.png`` (frames)."""
    p = ArgumentParser(prog="videogen-generate", description="Generate a clip from a text prompt.")
    p.add_argument("--checkpoint", required=True, help="videogen-train --stage backbone run directory or checkpoint")
    p.add_argument("--prompt", required=True, help="text in any language")
    p.add_argument("--out", required=True, help="output mp4 (H.264)")
    p.add_argument("--num-frames", type=int, default=None, help="frames (default: the training T)")
    p.add_argument("--image-size", type=int, default=None, help="frame size in px (default: the training size)")
    p.add_argument("--steps", type=int, default=30, help="Euler steps of the flow ODE")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1: off)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the mp4 (default: the training fps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

    def run() -> int:
        args = p.parse_args(argv)
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1 (got {args.steps})")
        model, cfg = load_model(args.checkpoint)
        if not isinstance(model, TextToVideo):
            raise CheckpointError(f"--checkpoint {args.checkpoint}: a VAE checkpoint; generation needs a "
                                  f"videogen-train --stage backbone run")
        t = args.num_frames or int(cfg.get("num_frames", 16))
        size = args.image_size or int(cfg.get("image_size", 64))
        s = model.vae.spatial_compression
        if t % 4 or size % s:
            raise ConfigError(f"--num-frames must be a multiple of 4 and --image-size of {s} (got {t}, {size})")
        strategy = build_strategy(args.device)
        model = strategy.prepare_model(model)
        with torch.inference_mode():
            video = generate(model, args.prompt, num_frames=t, height=size, width=size, steps=args.steps,
                             guidance=args.guidance, seed=args.seed)
        fps = args.fps or float(cfg.get("fps") or 8.0)
        out = write_mp4(video, args.out, fps=fps)
        frames_grid_png(video, out.with_suffix(".png"))
        print(json.dumps({"prompt": args.prompt, "out": str(out), "frames": t, "size": size, "fps": fps,
                          "steps": args.steps, "guidance": args.guidance, "seed": args.seed}))
        return 0

    return run_cli(run, prog="videogen-generate", user_errors=(CheckpointError, OSError))


if __name__ == "__main__":
    raise SystemExit(generate_main())

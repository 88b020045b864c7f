"""``videogen-reconstruct`` (a clip through the VAE, original | reconstruction side by side) and
``videogen-generate`` (prompt -> text encoder -> flow-matching sampling in latent space -> VAE decoder
-> H.264 mp4), plus the Python API behind them."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore.checkpoint import CheckpointError, load_checkpoint
from mlcore.cli import ArgumentParser, device_arg, run_cli
from mlcore.config import ConfigError
from mlcore.devices import DEVICE_FORMS, build_strategy
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
        try:
            model = build_text_to_video(model_size(cfg["model_size"]), build_vae(vae_size),
                                        text_encoder=cfg.get("text_encoder"))
        except ValueError as exc:
            raise CheckpointError(f"{file}: {exc}") from exc
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


SAMPLERS = ("heun", "euler")


@torch.inference_mode()
def sample_flow(velocity, x: torch.Tensor, *, steps: int = 30, sampler: str = "heun", shift: float = 1.0
                ) -> torch.Tensor:
    """Integrate the flow ODE ``dx/dt = velocity(x, t)`` from noise ``x`` at ``t = 1`` to data at ``t = 0``.

    Times: ``steps + 1`` points ``linspace(1, 0)`` passed through the SD3 shift
    ``s t / (1 + (s - 1) t)`` (use the training ``--timestep-shift``). ``sampler="euler"``: first
    order; ``"heun"``: Heun's second-order method (Karras et al. 2022, EDM Algorithm 1: an Euler
    predictor, then the average of the slopes at both ends; the last step to ``t = 0`` is plain Euler),
    2 velocity evaluations per step but far fewer steps for the same error.

    Args:
        velocity: ``f(x, t (B,)) -> v`` (e.g. the guided backbone).
        x: ``(B, ...)`` noise at ``t = 1``.

    Raises:
        ValueError: unknown ``sampler`` or ``steps < 1``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {', '.join(SAMPLERS)} (got {sampler!r})")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1 (got {steps})")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    ts = shift * ts / (1 + (shift - 1) * ts)
    b = x.shape[0]
    for i in range(steps):
        t0, t1 = float(ts[i]), float(ts[i + 1])
        v0 = velocity(x, torch.full((b,), t0, device=x.device))
        x_euler = x + (t1 - t0) * v0
        if sampler == "heun" and t1 > 0:
            v1 = velocity(x_euler, torch.full((b,), t1, device=x.device))
            x = x + (t1 - t0) * 0.5 * (v0 + v1)
        else:
            x = x_euler
    return x


@torch.inference_mode()
def generate(model: TextToVideo, prompt: str, *, num_frames: int = 16, height: int = 64, width: int = 64,
             steps: int = 30, guidance: float = 4.0, seed: int = 0, sampler: str = "heun",
             shift: float = 1.0) -> torch.Tensor:
    """Text -> video: :func:`sample_flow` of the learned velocity field from noise (t = 1) to normalised
    latents (t = 0) with classifier-free guidance ``v = v_uncond + guidance * (v_cond - v_uncond)``,
    then the VAE decoder (after undoing the per-channel latent normalisation).

    Returns:
        ``(3, T, H, W)`` float32 in [0, 1] (``T``, ``H``, ``W`` rounded to the VAE's compression).
    """
    vae = model.vae
    c, t, h, w = vae.latent_shape(num_frames, height, width)
    dev = next(model.backbone.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c, t, h, w, generator=g).to(dev)
    text, mask, pooled = model.encode_text([prompt])
    ntext, nmask, npooled = model.null_text(1)

    def velocity(xx: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        v = model(xx, tt, text, mask, pooled)
        if guidance != 1.0:
            vu = model(xx, tt, ntext, nmask, npooled)
            v = vu + guidance * (v - vu)
        return v

    x = sample_flow(velocity, x, steps=steps, sampler=sampler, shift=shift)
    return model.decode_latents(x)[0].clamp(0, 1).float().cpu()


def output_file(out: str, default_name: str) -> Path:
    """The mp4 to write for ``--out``: ``out`` itself, or ``out/default_name`` when ``out`` is an
    existing folder or ends with a path separator (the folder is created)."""
    if out.endswith(("/", "\\")) or Path(out).is_dir():
        return Path(out) / default_name
    return Path(out)


def _parser(prog: str, description: str) -> ArgumentParser:
    return ArgumentParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def _frames_and_size(args: argparse.Namespace, cfg: dict[str, Any], s: int) -> tuple[int, int]:
    """``--num-frames`` / ``--image-size`` (or the training values), checked.

    Raises:
        ConfigError: not a positive multiple of 4 / of the spatial compression ``s``.
    """
    t = args.num_frames if args.num_frames is not None else int(cfg.get("num_frames", 16))
    size = args.image_size if args.image_size is not None else int(cfg.get("image_size", 64))
    if t < 4 or t % 4:
        raise ConfigError(f"--num-frames must be a positive multiple of 4 (got {t})")
    if size < s or size % s:
        raise ConfigError(f"--image-size must be a positive multiple of the VAE's spatial compression {s} (got {size})")
    return t, size


def reconstruct_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``videogen-reconstruct CLIP --out FILE.mp4`` (exit 0 ok, 1 bad clip/checkpoint, 2 flags).

    Prints one JSON line: PSNR of the reconstruction and of trilinear resampling to the same
    number of latent values. Also writes ``FILE.png`` (frames: original | reconstruction). A clip
    that is unreadable or truncated (see :func:`videogen.data.probe_clip`) is refused in one line.
    """
    p = _parser("videogen-reconstruct", "Reconstruct a clip with a trained VideoVAE.")
    p.add_argument("clip", help="video file")
    p.add_argument("--checkpoint", required=True, help="VAE checkpoint or videogen-train --stage vae run directory")
    p.add_argument("--out", required=True, help="output mp4 (original | reconstruction), or a folder (ending in /) "
                                                "to write CLIP_reconstruction.mp4 into")
    p.add_argument("--start", type=float, default=0.0, help="start time in seconds (inside the clip)")
    p.add_argument("--num-frames", type=int, default=None, help="frames, a multiple of 4 (none: the training T)")
    p.add_argument("--image-size", type=int, default=None, help="frame size in px (none: the training size)")
    p.add_argument("--device", type=device_arg, default="auto", help=f"device: {DEVICE_FORMS}")

    def run() -> int:
        args = p.parse_args(argv)
        if not Path(args.clip).is_file():
            raise ConfigError(f"CLIP {args.clip}: file not found")
        model, cfg = load_model(args.checkpoint)
        vae = model if isinstance(model, VideoVAE) else model.vae
        t, size = _frames_and_size(args, cfg, vae.spatial_compression)
        info = probe_clip(args.clip)
        if not 0 <= args.start < info["duration"]:
            raise ConfigError(f"--start {args.start:g}: outside {args.clip} (0 to {info['duration']:.2f} s)")
        video = read_clip(args.clip, t, fps=cfg.get("fps"), stride=int(cfg.get("frame_stride", 1)), start=args.start,
                          size=size, info=info).permute(1, 0, 2, 3)[None]
        strategy = build_strategy(args.device)
        vae = strategy.prepare_model(vae)
        recon = reconstruct(vae, strategy.to_device(video)).cpu()
        target = output_file(args.out, f"{Path(args.clip).stem}_reconstruction.mp4")
        out = write_mp4(side_by_side(video[0], recon[0]), target, fps=float(cfg.get("fps") or info["fps"]))
        frames_grid_png(side_by_side(video[0], recon[0]), out.with_suffix(".png"))
        n_lat = int(torch.tensor(vae.latent_shape(t, size, size)).prod())
        print(json.dumps({"clip": args.clip, "out": str(out), "psnr": float(psnr(recon, video)[0]),
                          "psnr_trilinear": float(psnr_trilinear(video, n_lat)[0]), "frames": t, "size": size}))
        return 0

    return run_cli(run, prog="videogen-reconstruct", user_errors=(DataError, CheckpointError, OSError, ValueError))


def generate_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``videogen-generate --checkpoint RUN_DIR_OR_FILE --prompt TEXT --out FILE.mp4``
    (exit 0 ok, 1 bad checkpoint, 2 flags). Prints one JSON line; also writes ``FILE.png`` (frames)."""
    p = _parser("videogen-generate", "Generate a clip from a text prompt.")
    p.add_argument("--checkpoint", required=True, help="videogen-train --stage backbone run directory or checkpoint")
    p.add_argument("--prompt", required=True, help="text in any language")
    p.add_argument("--out", required=True, help="output mp4 (H.264), or a folder (ending in /) to write "
                                                "generated.mp4 into")
    p.add_argument("--num-frames", type=int, default=None, help="frames, a multiple of 4 (none: the training T)")
    p.add_argument("--image-size", type=int, default=None, help="frame size in px (none: the training size)")
    p.add_argument("--sampler", choices=SAMPLERS, default="heun", help="flow ODE solver")
    p.add_argument("--steps", type=int, default=30, help="solver steps (Heun: 2 backbone calls per step but the last)")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1: off)")
    p.add_argument("--shift", type=float, default=None, help="time shift of the solver's grid (none: the training "
                                                              "--timestep-shift)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the mp4 (none: the training fps)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--device", type=device_arg, default="auto", help=f"device: {DEVICE_FORMS}")

    def run() -> int:
        args = p.parse_args(argv)
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1 (got {args.steps})")
        if args.shift is not None and not args.shift > 0:
            raise ConfigError(f"--shift must be > 0 (got {args.shift})")
        model, cfg = load_model(args.checkpoint)
        if not isinstance(model, TextToVideo):
            raise CheckpointError(f"--checkpoint {args.checkpoint}: a VAE checkpoint; generation needs a "
                                  f"videogen-train --stage backbone run")
        t, size = _frames_and_size(args, cfg, model.vae.spatial_compression)
        shift = args.shift if args.shift is not None else float(cfg.get("timestep_shift") or 1.0)
        strategy = build_strategy(args.device)
        model = strategy.prepare_model(model)
        with torch.inference_mode():
            video = generate(model, args.prompt, num_frames=t, height=size, width=size, steps=args.steps,
                             guidance=args.guidance, seed=args.seed, sampler=args.sampler, shift=shift)
        fps = args.fps or float(cfg.get("fps") or 8.0)
        out = write_mp4(video, output_file(args.out, "generated.mp4"), fps=fps)
        frames_grid_png(video, out.with_suffix(".png"))
        print(json.dumps({"prompt": args.prompt, "out": str(out), "frames": t, "size": size, "fps": fps,
                          "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance, "shift": shift,
                          "seed": args.seed}))
        return 0

    return run_cli(run, prog="videogen-generate", user_errors=(CheckpointError, OSError))


if __name__ == "__main__":
    raise SystemExit(generate_main())

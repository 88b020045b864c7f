"""``videogen-eval``: metrics of a ``videogen-train`` checkpoint on a split of a clip folder; one JSON
object on the last stdout line.

VAE checkpoints: PSNR and SSIM of the posterior-mean reconstructions, beside ``psnr_trilinear``
(the same clips resampled trilinearly down to the latent's number of values and back) and
``psnr_area_trilinear`` (area-averaged down, trilinear up: a stronger baseline), and the loss terms
``recon`` / ``kl``; LPIPS when ``--lpips-weights FILE`` is given, and with ``--i3d-weights FILE``
(both TorchScript files; ``"unavailable"`` otherwise: nothing is downloaded) ``fvd_reconstruction``:
the reconstruction FVD between originals and VAE reconstructions (rFVD, a VAE quality measure, not
the seed's generation FVD target). Backbone checkpoints: the flow-matching validation loss (fixed
noise) and its per-timestep-bucket terms, and with ``--i3d-weights`` ``fvd``, the generation FVD of
clips generated from the split's captions against the split's clips.

FVD needs at least ``--fvd-min-clips`` clip windows (default 256, and never fewer than the feature
dimension + 1, below which the feature covariance is singular); with fewer it is reported as
``"unavailable: need >= N clips (got n)"``, never as a number.

Every clip of ``captions.csv`` must be readable: an unreadable, truncated or partly downloaded clip
stops the evaluation with one line naming it (exit 1); nothing is scored on it.

Splits: ``val`` (= ``test``; there is no separate test split) is the clips held out by the run's
``--val-clips``, ``train`` the others, ``all`` every clip found.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore import make_loader
from mlcore.checkpoint import CheckpointError
from mlcore.cli import ArgumentParser, device_arg, run_cli
from mlcore.config import ConfigError
from mlcore.devices import DEVICE_FORMS, build_strategy
from mlcore.trainer import evaluate_model
from videogen.data import DataError, VideoClipDataset, build_index, collate
from videogen.metrics import ReconstructionMetrics, fvd
from videogen.models import TextToVideo, VideoVAE
from videogen.predict import generate, load_model
from videogen.train import LossTerms, make_backbone_step, make_vae_step
from videogen.video_io import frames_grid_png, side_by_side

UNAVAILABLE = "unavailable"


def i3d_features(i3d: torch.nn.Module, video: torch.Tensor) -> np.ndarray:
    """Features ``(B, D)`` of clips ``(B, 3, T, H, W)`` in [0, 1] from a TorchScript I3D: frames resized
    to 224x224, values scaled to [-1, 1] (the Kinetics-400 I3D convention used by FVD); a tuple output
    gives its first element; outputs with more than 2 dims are averaged over the extra ones."""
    b, c, t, h, w = video.shape
    x = F.interpolate(video.transpose(1, 2).flatten(0, 1), size=(224, 224), mode="bilinear", align_corners=False)
    x = x.unflatten(0, (b, t)).transpose(1, 2) * 2 - 1
    with torch.inference_mode():
        out = i3d(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.dim() > 2:
        out = out.flatten(2).mean(-1)
    return out.float().cpu().numpy()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``videogen-eval`` (exit 0 ok, 1 bad data/checkpoint/weights, 2 bad flags)."""
    p = ArgumentParser(prog="videogen-eval", description=__doc__.splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or videogen-train run directory")
    p.add_argument("--data", required=True, help="clip folder with captions.csv (or its parent)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="val", help="clips to evaluate")
    p.add_argument("--batch-size", type=int, default=2, help="clip windows per batch")
    p.add_argument("--windows", type=int, default=None, help="windows per clip (none: the run's --val-windows)")
    p.add_argument("--lpips-weights", default=None, help="LPIPS as a TorchScript file: f(a, b) on [-1, 1] frames")
    p.add_argument("--i3d-weights", default=None, help="I3D as a TorchScript file (FVD features)")
    p.add_argument("--fvd-min-clips", type=int, default=FVD_MIN_CLIPS,
                   help="fewest clip windows FVD is computed from (also >= feature dimension + 1)")
    p.add_argument("--steps", type=int, default=30, help="backbone: sampler steps of the generated clips")
    p.add_argument("--device", type=device_arg, default="auto", help=f"device: {DEVICE_FORMS}")
    p.add_argument("--out", default=None, help="write reconstruction/generation PNGs here")

    def run() -> int:
        args = p.parse_args(argv)
        for name in ("batch_size", "windows", "fvd_min_clips", "steps"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
        if not Path(args.data).exists():
            raise ConfigError(f"--data {args.data}: folder not found")
        for flag_name, value in (("--lpips-weights", args.lpips_weights), ("--i3d-weights", args.i3d_weights)):
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"{flag_name} {value}: file not found")
        model, cfg = load_model(args.checkpoint)
        index = build_index(args.data, cache_dir=cfg.get("cache_dir"), warn=False)
        if index.skipped:  # never score around a bad clip (and never shift the run's val split)
            path, reason = next(iter(index.skipped.items()))
            more = f" (and {len(index.skipped) - 1} more)" if len(index.skipped) > 1 else ""
            raise DataError(f"unreadable clip {path}{more}: {reason}; fix or remove it from captions.csv")
        train_clips, val_clips, test_clips = index.split(cfg.get("val_clips", "auto"), cfg.get("test_clips", "none"))
        # test is never the val clips (until issue 14 it was: a figure from the clip that tuned the run)
        clips = {"train": train_clips, "val": val_clips, "test": test_clips, "all": index.clips}[args.split]
        if not clips:
            hint = " (the run held none out: train with --test-clips auto or NAMES)" if args.split == "test" else ""
            raise DataError(f"--split {args.split}: no clips in {index.root} for this split{hint}")
        windows = args.windows or int(cfg.get("val_windows", 2))
        ds = VideoClipDataset(index.root, clips, num_frames=int(cfg["num_frames"]), size=int(cfg["image_size"]),
                              fps=cfg.get("fps"), stride=int(cfg.get("frame_stride", 1)), train=False,
                              windows_per_clip=windows)
        strategy = build_strategy(args.device)
        model = strategy.prepare_model(model)
        loader = make_loader(ds, batch_size=args.batch_size, shuffle=False, collate_fn=collate)
        i3d = torch.jit.load(args.i3d_weights, map_location=strategy.device).eval() if args.i3d_weights else None
        result: dict[str, Any] = {"checkpoint": str(args.checkpoint), "split": args.split,
                                  "clips": [c.path for c in clips], "n_windows": len(ds)}
        out_dir = Path(args.out) if args.out else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(model, VideoVAE):
            lpips = torch.jit.load(args.lpips_weights, map_location=strategy.device).eval() if args.lpips_weights else None
            step = make_vae_step(float(cfg.get("kl_weight", 1e-6)), cfg.get("recon_loss", "l1"))
            result.update(evaluate_model(model, loader, step, [ReconstructionMetrics(), LossTerms()], strategy,
                                         desc=args.split))
            lp, real_f, fake_f = [], [], []
            if lpips is not None or i3d is not None or out_dir is not None:
                with torch.inference_mode():
                    for batch in loader:
                        video = strategy.to_device(batch["video"])
                        recon = model(video, sample=False)["recon"].clamp(0, 1)
                        if lpips is not None:
                            a = recon.transpose(1, 2).flatten(0, 1) * 2 - 1
                            b = video.transpose(1, 2).flatten(0, 1) * 2 - 1
                            lp.append(lpips(a, b).flatten().float().cpu())
                        if i3d is not None:
                            real_f.append(i3d_features(i3d, video))
                            fake_f.append(i3d_features(i3d, recon))
                        if out_dir is not None:
                            for v, r, i in zip(video, recon, batch["index"].tolist(), strict=True):
                                name = Path(ds.clip_of(i).path).stem
                                frames_grid_png(side_by_side(v.cpu(), r.cpu()), out_dir / f"recon_{name}_{i}.png")
            result["lpips"] = float(torch.cat(lp).mean()) if lp else UNAVAILABLE
            result["fvd_reconstruction"] = _fvd(real_f, fake_f, args.fvd_min_clips) if i3d is not None else UNAVAILABLE
        else:
            assert isinstance(model, TextToVideo)
            step = make_backbone_step(0.0, sampling=cfg.get("timestep_sampling", "uniform"),
                                      logit_mean=float(cfg.get("logit_mean", 0.0)),
                                      logit_std=float(cfg.get("logit_std", 1.0)),
                                      shift=float(cfg.get("timestep_shift", 1.0)))
            result.update(evaluate_model(model, loader, step, [LossTerms()], strategy, desc=args.split))
            result["lpips"] = UNAVAILABLE
            real_f, fake_f = [], []
            if i3d is not None or out_dir is not None:
                with torch.inference_mode():
                    for batch in loader:
                        for cap, v, i in zip(batch["caption"], batch["video"], batch["index"].tolist(), strict=True):
                            g = generate(model, cap, num_frames=v.shape[1], height=v.shape[2], width=v.shape[3],
                                         seed=i, steps=args.steps, shift=float(cfg.get("timestep_shift", 1.0)))
                            if i3d is not None:
                                real_f.append(i3d_features(i3d, strategy.to_device(v[None])))
                                fake_f.append(i3d_features(i3d, strategy.to_device(g[None])))
                            if out_dir is not None:
                                frames_grid_png(side_by_side(v, g), out_dir / f"generated_{i}.png")
            result["fvd"] = _fvd(real_f, fake_f, args.fvd_min_clips) if i3d is not None else UNAVAILABLE
        print(json.dumps(result))
        return 0

    return run_cli(run, prog="videogen-eval", user_errors=(DataError, CheckpointError, OSError, RuntimeError))


FVD_MIN_CLIPS = 256  # below this FVD is not reported (common practice: 256 to 2048 clips)


def _fvd(real: list[np.ndarray], fake: list[np.ndarray], min_clips: int = FVD_MIN_CLIPS) -> float | str:
    """FVD of the features, or ``"unavailable: need >= N clips (got n)"`` with fewer than
    ``N = max(min_clips, D + 1)`` clips of ``D``-dimensional features (a singular covariance)."""
    r, f = np.concatenate(real), np.concatenate(fake)
    need = max(min_clips, r.shape[1] + 1)
    if min(len(r), len(f)) < need:
        return f"{UNAVAILABLE}: need >= {need} clips (got {min(len(r), len(f))})"
    return fvd(r, f)


if __name__ == "__main__":
    raise SystemExit(main())

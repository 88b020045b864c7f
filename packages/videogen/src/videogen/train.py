"""``videogen-train``: the VideoVAE (``--stage vae``) or the text encoder + HybridBackbone on a frozen
VAE (``--stage backbone``), trained through the 5-phase curriculum on mlcore.

Every phase is one ``Trainer.fit`` stage (``vae_phase1`` ... ``backbone_phase5``) on the same
trainer and run directory, with that phase's clips, sample count, batch size, LR, warmup (10% of
its updates) + cosine and clipping. After each phase, ``checkpoints/phaseN/last.pt`` (full state)
and ``checkpoints/phaseN/best.pt`` (best validation loss within the phase; the last weights when
there is no validation clip) are written; ``training_summary.json`` lists every phase's loss curve,
time and best checkpoint. ``--start-phase N`` starts from ``checkpoints/phase{N-1}/best.pt`` of the
run directory; ``--resume RUN_DIR`` continues an interrupted phase exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore import BadSampleLog, Callback, Trainer, make_loader
from mlcore.checkpoint import CheckpointError, load_checkpoint
from mlcore.cli import train_main
from mlcore.runlog import write_json_atomic
from mlcore.seed import seed_everything
from mlcore.trainer import with_overrides
from videogen.config import VideoGenConfig, load_curriculum
from videogen.data import DataError, VideoClipDataset, assign_phases, build_index, collate
from videogen.losses import flow_matching_loss, flow_matching_pair, vae_loss
from videogen.metrics import ReconstructionMetrics
from videogen.models import (
    TextToVideo,
    VideoVAE,
    build_text_to_video,
    build_vae,
    count_parameters,
    model_size,
)
from videogen.models.memory import estimate_training_memory

log = logging.getLogger("videogen.train")


# ----------------------------------------------------------------------------------------------
# steps
def make_vae_step(beta: float, kind: str, lpips: Any | None = None, lpips_weight: float = 0.0):
    """``step(model, batch) -> {"loss", "recon", "z", ...}`` for a :class:`VideoVAE`.

    Evaluation (model in eval mode) uses the posterior mean, so the reconstruction metrics are
    deterministic."""

    def step(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        video = batch["video"]
        out = model(video)
        losses = vae_loss(out["recon"], video, out["mean"], out["logvar"], beta=beta, kind=kind,
                          lpips=lpips, lpips_weight=lpips_weight)
        return {**losses, "recon": out["recon"].detach(), "z": out["z"].detach()}

    return step


def _unwrap(model: torch.nn.Module) -> Any:
    return getattr(model, "module", model)


def make_backbone_step(text_dropout: float):
    """``step(model, batch) -> {"loss"}`` for :class:`TextToVideo`: rectified-flow matching on the
    frozen VAE's scaled latents; captions dropped with probability ``text_dropout`` in training.

    In evaluation the flow times and noise are drawn from a generator seeded by the batch's sample
    indices, so the validation loss of two evaluations is comparable."""

    def step(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        m: TextToVideo = _unwrap(model)
        x0 = m.encode_video(batch["video"])
        b = x0.shape[0]
        if model.training:
            t = torch.rand(b, device=x0.device)
            noise = torch.randn_like(x0)
            drop = torch.rand(b, device=x0.device) < text_dropout
        else:
            g = torch.Generator().manual_seed(int(batch["index"].sum()) + 12345)
            t = torch.rand(b, generator=g).to(x0.device)
            noise = torch.randn(x0.shape, generator=g).to(x0.device, x0.dtype)
            drop = torch.zeros(b, dtype=torch.bool, device=x0.device)
        xt, target = flow_matching_pair(x0, t, noise)
        v = model(xt, t, captions=batch["caption"], drop=drop)  # text encoded inside forward (DDP)
        return {"loss": flow_matching_loss(v, target)}

    return step


# ----------------------------------------------------------------------------------------------
class PhaseCheckpoints(Callback):
    """Writes ``checkpoints/phaseN/best.pt`` whenever ``monitor`` improves within phase N."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best: dict[str, dict[str, float]] = {}
        self.phase: int | None = None

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.phase is None or self.monitor not in metrics:
            return
        value, key = metrics[self.monitor], str(self.phase)
        prev = self.best.get(key, {}).get("value")
        if math.isfinite(value) and (prev is None or value < prev):
            self.best[key] = {"value": value, "epoch": trainer.epoch, "step": trainer.global_step}
            trainer.save_weights(f"phase{self.phase}/best.pt", extra={"phase": self.phase, "metric": self.monitor,
                                                                      "value": value})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best", {}))


class TimeBudget(Callback):
    """Stops the running phase at the first evaluation after ``minutes`` since ``start``
    (``time.perf_counter()`` seconds); :attr:`exceeded` tells the phase loop to skip the rest."""

    def __init__(self, minutes: float | None, start: float) -> None:
        self.minutes, self.start, self.exceeded = minutes, start, False

    def check(self) -> bool:
        if self.minutes is not None and time.perf_counter() - self.start > 60 * self.minutes:
            self.exceeded = True
        return self.exceeded

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.check():
            log.info("--time-budget-min %.1f reached: stopping after this evaluation", self.minutes)
            trainer.should_stop = True


def phase_config(cfg: VideoGenConfig, phase: Mapping[str, Any], updates: int) -> VideoGenConfig:
    """The per-phase config: the curriculum's epochs / batch / LR (unless set away from the defaults),
    warmup of ``warmup_fraction`` of the phase's updates, cosine, its gradient clipping."""
    defaults = VideoGenConfig.__dataclass_fields__
    pick = {k: (getattr(cfg, k) if getattr(cfg, k) != defaults[k].default else phase[k])
            for k in ("epochs", "batch_size", "lr")}
    return with_overrides(cfg, **pick, warmup_steps=max(1, round(phase["warmup_fraction"] * updates)),
                          warmup_epochs=0.0, scheduler="cosine", clip_grad_norm=phase["clip_grad_norm"])


def resolve_vae_checkpoint(path: str | Path) -> Path:
    """A VAE checkpoint file from a file or a ``--stage vae`` run directory (latest phase's best,
    else ``best_val_loss.pt``, else ``last.pt``).

    Raises:
        CheckpointError: nothing usable there.
    """
    p = Path(path)
    if p.is_file():
        return p
    ck = p / "checkpoints"
    for n in range(5, 0, -1):
        if (ck / f"phase{n}" / "best.pt").is_file():
            return ck / f"phase{n}" / "best.pt"
    for name in ("best_val_loss.pt", "last.pt"):
        if (ck / name).is_file():
            return ck / name
    raise CheckpointError(f"--vae {path}: no checkpoint found (expected a file or a run dir with checkpoints/)")


def load_vae(path: str | Path) -> tuple[VideoVAE, dict[str, Any]]:
    """The VideoVAE of a ``--stage vae`` checkpoint (and its config), in eval mode.

    Raises:
        CheckpointError: not a videogen VAE checkpoint or weights that do not fit.
    """
    file = resolve_vae_checkpoint(path)
    ckpt = load_checkpoint(file, expect_domain="videogen")
    c = ckpt.get("config") or {}
    if c.get("stage") != "vae" or "model_size" not in c:
        raise CheckpointError(f"{file}: not a videogen-train --stage vae checkpoint")
    vae = build_vae(model_size(c["model_size"], c.get("latent_channels"), c.get("spatial_compression")))
    try:
        vae.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: weights do not match the VAE ({str(exc).splitlines()[0]})") from exc
    return vae.eval(), c


def build_model(cfg: VideoGenConfig, grad_checkpointing: bool | None = None) -> torch.nn.Module:
    """The model of ``cfg.stage`` (the backbone stage loads ``cfg.vae``)."""
    gc = cfg.grad_checkpointing if grad_checkpointing is None else grad_checkpointing
    size = model_size(cfg.model_size, cfg.latent_channels, cfg.spatial_compression)
    if cfg.stage == "vae":
        return build_vae(size, grad_checkpointing=gc)
    if cfg.vae is None:
        raise CheckpointError("--stage backbone needs --vae")
    vae, _ = load_vae(cfg.vae)
    size = model_size(cfg.model_size)
    return build_text_to_video(size, vae, grad_checkpointing=gc)


def with_vae_settings(cfg: VideoGenConfig) -> VideoGenConfig:
    """``--stage backbone``: copy the VAE checkpoint's size, latent channels and compression into the
    config (saved with every checkpoint, so ``videogen-generate`` can rebuild the frozen VAE)."""
    if cfg.stage != "backbone" or cfg.vae is None:
        return cfg
    c = load_checkpoint(resolve_vae_checkpoint(cfg.vae), expect_domain="videogen").get("config") or {}
    if c.get("stage") != "vae":
        raise CheckpointError(f"--vae {cfg.vae}: not a videogen-train --stage vae checkpoint")
    lat = c.get("latent_channels") or model_size(c["model_size"]).vae.latent_channels
    comp = c.get("spatial_compression") or model_size(c["model_size"]).spatial_compression
    return dataclasses.replace(cfg, vae_model_size=c["model_size"], latent_channels=lat, spatial_compression=comp)


def memory_estimate(cfg: VideoGenConfig, batch_size: int) -> dict[str, float]:
    """Estimated training memory (GiB) of ``cfg``'s model and stage at ``batch_size`` on a GPU
    (bf16/fp16 activations, fp32 weights and AdamW states); see :mod:`videogen.models.memory`."""
    size = model_size(cfg.model_size, cfg.latent_channels, cfg.spatial_compression)
    vae_size = model_size(cfg.vae_model_size or cfg.model_size, cfg.latent_channels, cfg.spatial_compression)
    t, s = cfg.num_frames, cfg.image_size
    with torch.device("meta"):
        vae = build_vae(vae_size, grad_checkpointing=cfg.grad_checkpointing)
        if cfg.stage == "vae":
            model: torch.nn.Module = vae.train()
            video = torch.rand(batch_size, 3, t, s, s)

            def fwd(m):
                return m(video)["recon"].mean()
        else:
            model = build_text_to_video(size, vae, grad_checkpointing=cfg.grad_checkpointing).train()
            lat = torch.rand(batch_size, *vae.latent_shape(t, s, s))
            ids = torch.ones(batch_size, 77, dtype=torch.long)
            mask = torch.ones(batch_size, 77, dtype=torch.bool)
            tt = torch.rand(batch_size)

            def fwd(m):
                tokens, pooled = m.text_encoder(ids, mask)
                return m(lat, tt, tokens, mask, pooled).mean()
    return estimate_training_memory(model, fwd)


def _latent_scale(model: TextToVideo, loader, batches: int = 4) -> float:
    """1 / std of the VAE's posterior means over a few training batches (unit-variance latents)."""
    vals = []
    model.latent_scale.fill_(1.0)
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        vals.append(model.encode_video(batch["video"]).flatten())
    std = float(torch.cat(vals).std()) if vals else 1.0
    return 1.0 / max(std, 1e-6)


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _phase_rows(history: Sequence[Mapping[str, Any]], stage_name: str) -> dict[str, list[Any]]:
    rows = [r for r in history if r.get("stage") == stage_name]
    return {"train_loss": [[r["epoch"], r["step"], r["loss"]] for r in rows if r["split"] == "train"],
            "val_loss": [[r["epoch"], r["step"], r["loss"]] for r in rows if r["split"] == "val"],
            "val_metrics": [{k: v for k, v in r.items() if k not in ("stage", "split", "time")}
                            for r in rows if r["split"] == "val"]}


def train(cfg: VideoGenConfig) -> dict[str, Any]:
    """Run the curriculum phases ``cfg.start_phase..cfg.end_phase`` of ``cfg.stage``; returns the
    last phase's summary plus ``phases`` (also written to ``training_summary.json``).

    Raises:
        DataError: no usable clip. CheckpointError: ``--start-phase N`` without phase N-1's best
        checkpoint in the run directory, or a bad ``--vae``.
    """
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    cfg = with_vae_settings(cfg)
    run_dir = Path(cfg.out)
    phases = load_curriculum(cfg.curriculum)
    start_ckpt = None
    if cfg.start_phase > 1 and not cfg.resume:
        start_ckpt = run_dir / "checkpoints" / f"phase{cfg.start_phase - 1}" / "best.pt"
        if not start_ckpt.is_file():
            raise CheckpointError(f"--start-phase {cfg.start_phase}: {start_ckpt} not found; run phase "
                                  f"{cfg.start_phase - 1} into {run_dir} first (--end-phase {cfg.start_phase - 1})")
    # config.yaml is rewritten with each phase's values, and --resume reloads it: keep the values the
    # user gave for every phase (epochs / batch_size / lr) in a file of their own and restore them
    base_file = run_dir / "videogen_phase_base.json"
    if cfg.resume and base_file.is_file():
        cfg = dataclasses.replace(cfg, **json.loads(base_file.read_text()))
    elif not cfg.resume:
        write_json_atomic(base_file, {k: getattr(cfg, k) for k in ("epochs", "batch_size", "lr")})
    index = build_index(cfg.data, cache_dir=cfg.cache_dir)
    train_clips, val_clips = index.split(cfg.val_clips)
    if not train_clips:
        raise DataError(f"--val-clips {cfg.val_clips}: no clip left for training")
    by_phase = assign_phases(train_clips)
    log.info("clips: %d train (%s), %d held out for validation (%s), %d skipped", len(train_clips),
             ", ".join(c.name for c in train_clips), len(val_clips), ", ".join(c.name for c in val_clips) or "none",
             len(index.skipped))

    model = build_model(cfg)
    if cfg.weights and not cfg.resume and start_ckpt is None:
        state = load_checkpoint(cfg.weights, expect_domain="videogen", flag="--weights")["model"]
        model.load_state_dict(state)
    if start_ckpt is not None:
        ck = load_checkpoint(start_ckpt, expect_domain="videogen")
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{start_ckpt}: weights do not match this model ({str(exc).splitlines()[0]})") from exc
        log.info("phase %d starts from %s (phase %d best, %s=%.5f)", cfg.start_phase, start_ckpt,
                 cfg.start_phase - 1, ck.get("metric"), ck.get("value", float("nan")))
    n_params = count_parameters(model)
    n_train = count_parameters(model, trainable_only=True)
    mem = memory_estimate(cfg, phases[cfg.start_phase - 1]["batch_size"])
    msg = (f"videogen {cfg.stage} model ({cfg.model_size}): {n_params / 1e6:.2f}M parameters "
           f"({n_train / 1e6:.2f}M trainable); estimated GPU training memory at batch "
           f"{phases[cfg.start_phase - 1]['batch_size']}, {cfg.num_frames}x{cfg.image_size}px: "
           f"{mem['total_gib']:.2f} GiB (estimate on the meta device, not measured)")
    print(msg, flush=True)
    log.info(msg)

    lpips = None
    if cfg.stage == "vae" and cfg.lpips_weights:
        lpips = torch.jit.load(cfg.lpips_weights, map_location="cpu").eval()
        lpips.requires_grad_(False)
    if cfg.stage == "vae":
        step = make_vae_step(cfg.beta_kl, cfg.recon_loss, lpips, cfg.lpips_weight)
        metrics = [ReconstructionMetrics(with_ssim=False)]
    else:
        step = make_backbone_step(cfg.text_dropout)
        metrics = []
    phase_cb = PhaseCheckpoints(cfg.monitor)
    budget = TimeBudget(cfg.time_budget_min, t_start)
    trainer = Trainer(model, cfg, step, metrics=metrics, callbacks=[phase_cb, budget])
    if lpips is not None:
        lpips.to(trainer.strategy.device)

    bad_log = BadSampleLog()  # clips that fail to decode mid-run, counted across loader workers and phases
    ds_kw = dict(num_frames=cfg.num_frames, size=cfg.image_size, fps=cfg.fps, stride=cfg.frame_stride,
                 cache_frames=cfg.cache_frames, bad_log=bad_log)
    val_loader = None
    if val_clips:
        val_ds = VideoClipDataset(index.root, val_clips, train=False, windows_per_clip=cfg.val_windows, **ds_kw)
        val_loader = make_loader(val_ds, batch_size=2, shuffle=False, num_workers=0, collate_fn=collate)

    summary_file = run_dir / "training_summary.json"
    try:
        previous = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        previous = {}
    phase_rows = {int(p["phase"]): p for p in previous.get("phases", []) if previous.get("stage") == cfg.stage}
    summary: dict[str, Any] = {}
    for ph in phases[cfg.start_phase - 1: cfg.end_phase]:
        n = ph["phase"]
        name = f"{cfg.stage}_phase{n}"
        if budget.check():
            log.info("--time-budget-min %.1f reached: phase %d and later are not run", cfg.time_budget_min, n)
            break
        clips = by_phase[n]
        samples = ph["samples"]
        train_ds = VideoClipDataset(index.root, clips, train=True, samples=samples, **ds_kw)
        pcfg_probe = phase_config(cfg, ph, 1)
        loader = make_loader(train_ds, batch_size=pcfg_probe.batch_size, shuffle=True, seed=cfg.seed,
                             num_workers=cfg.num_workers, collate_fn=collate, drop_last=False)
        updates = math.ceil(len(loader) / cfg.accum_steps) * pcfg_probe.epochs
        pcfg = phase_config(cfg, ph, updates)
        if isinstance(model, TextToVideo) and name not in trainer.completed_stages and not cfg.resume \
                and n == cfg.start_phase and start_ckpt is None and not cfg.weights:
            model.latent_scale.fill_(_latent_scale(model, make_loader(train_ds, batch_size=2, shuffle=False,
                                                                      collate_fn=collate)))
            log.info("latent scale 1/std = %.4f", float(model.latent_scale))
        phase_cb.phase = n
        log.info("phase %d (%s): %d clips (%s), %d samples/epoch, %d epochs, batch %d, lr %.2e, %d updates, "
                 "warmup %d", n, ph["name"], len(clips), ", ".join(c.name for c in clips), samples, pcfg.epochs,
                 pcfg.batch_size, pcfg.lr, updates, pcfg.warmup_steps)
        t0 = time.perf_counter()
        already = name in trainer.completed_stages
        summary = trainer.fit(loader, val_loader, stage=name, config=pcfg)
        ck = trainer.run_dir / "checkpoints"
        if trainer.logger.enabled and not already:
            if not summary.get("completed", True):
                log.info("phase %d stopped early (--max-steps or SIGTERM); resume with --resume %s", n, run_dir)
            if val_loader is None or not (ck / f"phase{n}" / "best.pt").is_file():
                trainer.save_weights(f"phase{n}/best.pt", extra={"phase": n, "metric": "last", "value": None})
            _copy_atomic(ck / "last.pt", ck / f"phase{n}" / "last.pt")
        row = phase_rows.get(n, {}) if already else {}
        row.update({"phase": n, "name": ph["name"], "stage": name, "clips": [c.path for c in clips],
                    "samples_per_epoch": samples, "epochs": pcfg.epochs, "batch_size": pcfg.batch_size,
                    "lr": pcfg.lr, "updates": updates, "warmup_steps": pcfg.warmup_steps,
                    "completed": name in trainer.completed_stages, "stopped_by_time_budget": budget.exceeded,
                    "best_checkpoint": str(ck / f"phase{n}" / "best.pt"),
                    "best": phase_cb.best.get(str(n)), "last_checkpoint": str(ck / f"phase{n}" / "last.pt"),
                    **_phase_rows(trainer.history, name)})
        if not already:
            row["time_s"] = round(time.perf_counter() - t0, 2) + (row.get("time_s", 0) if cfg.resume else 0)
        phase_rows[n] = row
        if trainer.logger.enabled:
            write_json_atomic(summary_file, {
                "stage": cfg.stage, "model_size": cfg.model_size, "parameters": n_params,
                "trainable_parameters": n_train, "estimated_memory_gib": mem,
                "train_clips": [c.path for c in train_clips], "val_clips": [c.path for c in val_clips],
                "skipped_clips": {**index.skipped, **bad_log.entries()}, "phases": [phase_rows[k] for k in sorted(phase_rows)]})
        if not summary.get("completed", True):
            break
    trainer.close()
    summary["phases"] = [phase_rows[k] for k in sorted(phase_rows)]
    summary["parameters"] = n_params
    summary["estimated_memory_gib"] = mem["total_gib"]
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``videogen-train`` (exit 0 ok, 2 bad flags, 1 bad data or checkpoint)."""
    return train_main(VideoGenConfig, train, argv, prog="videogen-train", presets_package="videogen",
                      description="Train the videogen VAE or latent backbone through the 5-phase curriculum.",
                      summary_keys=("best", "steps", "completed_stages", "parameters", "estimated_memory_gib",
                                    "samples_per_s", "wall_time_s"),
                      user_errors=(DataError, CheckpointError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())

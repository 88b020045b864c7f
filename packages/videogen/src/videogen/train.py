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
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import mlcore  # noqa: F401  (allocator environment variables before torch initialises a device)
from mlcore import BadSampleLog, Callback, Trainer, make_loader
from mlcore.checkpoint import CheckpointError, atomic_save, load_checkpoint
from mlcore.cli import train_main
from mlcore.data import write_split_json
from mlcore.metrics import Metric
from mlcore.runlog import write_json_atomic
from mlcore.seed import seed_everything
from mlcore.trainer import UPDATE_SPLIT, with_overrides
from videogen.config import VideoGenConfig, load_curriculum
from videogen.data import DataError, VideoClipDataset, assign_phases, build_index, collate
from videogen.losses import flow_matching_pair, flow_matching_per_sample, sample_flow_times, vae_loss
from videogen.metrics import ReconstructionMetrics
from videogen.models import (
    TextToVideo,
    VideoVAE,
    build_text_to_video,
    build_vae,
    count_parameters,
    model_size,
)
from videogen.models.memory import CUDA_CONTEXT_GIB, estimate_training_memory

log = logging.getLogger("videogen.train")


# ----------------------------------------------------------------------------------------------
# steps
def make_vae_step(kl_weight: float, kind: str, lpips: Any | None = None, lpips_weight: float = 0.0):
    """``step(model, batch) -> {"loss", "recon", "kl", ("lpips"), "recon_video", "z"}`` for a :class:`VideoVAE`:
    ``loss`` is what is optimised (:func:`videogen.losses.vae_loss`, SD-VAE's weighting), ``recon``
    / ``kl`` / ``lpips`` its terms as scalars (logged every update and averaged on validation),
    ``recon_video`` ``(B, 3, T, H, W)`` and ``z`` for the reconstruction metrics.

    Evaluation (model in eval mode) uses the posterior mean, so the reconstruction metrics are
    deterministic."""

    def step(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        video = batch["video"]
        out = model(video)
        losses = vae_loss(out["recon"], video, out["mean"], out["logvar"], kl_weight=kl_weight, kind=kind,
                          lpips=lpips, lpips_weight=lpips_weight)
        return {**losses, "recon_video": out["recon"].detach(), "z": out["z"].detach()}

    return step


def _unwrap(model: torch.nn.Module) -> Any:
    return getattr(getattr(model, "_orig_mod", model), "module", getattr(model, "_orig_mod", model))


def make_backbone_step(text_dropout: float, *, sampling: str = "logit_normal", logit_mean: float = 0.0,
                       logit_std: float = 1.0, shift: float = 1.0):
    """``step(model, batch) -> {"loss", "flow_mse" (B,), "t" (B,)}`` for :class:`TextToVideo`: rectified-flow
    matching on the frozen VAE's normalised latents (``batch["latent"]`` when cached, else the VAE
    encodes ``batch["video"]``); flow times from :func:`videogen.losses.sample_flow_times`; captions
    dropped with probability ``text_dropout`` in training. ``flow_mse`` and ``t`` give the loss per
    timestep bucket (:class:`LossTerms`).

    In evaluation the flow times and noise are drawn from a generator seeded by the batch's sample
    indices, so the validation loss of two evaluations is comparable."""

    def step(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        m: TextToVideo = _unwrap(model)
        x0 = batch["latent"] if "latent" in batch else m.encode_video(batch["video"])
        b, dev = x0.shape[0], x0.device
        g = None if model.training else torch.Generator().manual_seed(int(batch["index"].sum()) + 12345)
        t = sample_flow_times(b, kind=sampling, mean=logit_mean, std=logit_std, shift=shift, generator=g,
                              device=dev)
        if model.training:
            noise = torch.randn_like(x0)
            drop = (torch.rand(b) < text_dropout).to(dev)
        else:
            noise = torch.randn(x0.shape, generator=g).to(dev, x0.dtype)
            drop = torch.zeros(b, dtype=torch.bool, device=dev)
        xt, target = flow_matching_pair(x0, t, noise)
        v = model(xt, t, captions=batch["caption"], drop=drop)  # text encoded inside forward (DDP)
        per_sample = flow_matching_per_sample(v, target)
        return {"loss": per_sample.mean(), "flow_mse": per_sample.detach(), "t": t.detach()}

    return step


FLOW_BUCKETS = 4  # flow-time buckets [0, .25), [.25, .5), [.5, .75), [.75, 1] of the per-bucket losses


def bucket_name(k: int, buckets: int = FLOW_BUCKETS) -> str:
    """``flow_loss_t000_025`` for bucket 0 of 4 (times in hundredths)."""
    return f"flow_loss_t{round(100 * k / buckets):03d}_{round(100 * (k + 1) / buckets):03d}"


def loss_term_sums(outputs: Mapping[str, Any], batch_size: int) -> dict[str, tuple[torch.Tensor, float]]:
    """``{name: (sum, count)}`` of a step's loss terms: the scalar ``recon``/``kl``/``lpips`` weighted by
    ``batch_size``, and the flow loss per timestep bucket from ``flow_mse`` and ``t``."""
    out: dict[str, tuple[torch.Tensor, float]] = {}
    for name in ("recon", "kl", "lpips"):
        v = outputs.get(name)
        if isinstance(v, torch.Tensor) and v.dim() == 0:
            out[name] = (v.detach().double() * batch_size, float(batch_size))
    if "flow_mse" in outputs and "t" in outputs:
        mse, t = outputs["flow_mse"].detach().double(), outputs["t"].detach()
        k = (t * FLOW_BUCKETS).long().clamp(0, FLOW_BUCKETS - 1)
        for i in range(FLOW_BUCKETS):
            sel = k == i
            n = int(sel.sum()) if sel.device.type != "meta" else 0
            if n:
                out[bucket_name(i)] = (mse[sel].sum(), float(n))
    return out


class LossTerms(Metric):
    """Means of the loss terms over a split (``recon``, ``kl``, ``lpips`` for the VAE; the flow loss
    per timestep bucket ``flow_loss_tAAA_BBB`` for the backbone), so every validation row of
    ``metrics.jsonl`` carries them; terms a split never produced are left out."""

    NAMES = ("recon", "kl", "lpips", *(bucket_name(i) for i in range(FLOW_BUCKETS)))

    def __init__(self) -> None:
        super().__init__()
        for name in self.NAMES:
            self.add_state(f"{name}_sum", torch.zeros((), dtype=torch.float64))
            self.add_state(f"{name}_n", torch.zeros((), dtype=torch.float64))

    def update(self, outputs: Mapping[str, Any], batch: Any) -> None:
        n = len(batch["index"]) if "index" in batch else 1
        for name, (total, count) in loss_term_sums(outputs, n).items():
            setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + total.to(self._states_device()))
            setattr(self, f"{name}_n", getattr(self, f"{name}_n") + count)

    def _states_device(self) -> torch.device:
        return self.recon_sum.device

    def compute(self) -> dict[str, float]:
        return {name: float(getattr(self, f"{name}_sum")) / float(getattr(self, f"{name}_n"))
                for name in self.NAMES if float(getattr(self, f"{name}_n")) > 0}


class UpdateLog(Callback):
    """Writes the loss terms of every optimizer update (averaged over its micro-batches) to
    ``metrics.jsonl`` (rows with ``"split": "train_update"``) and TensorBoard (``train_update/<term>``).

    :meth:`wrap` returns a training step that records its outputs; the row is written by
    :meth:`on_update_end` (the trainer calls it after each update, before that step's evaluation and
    ``last.pt``) through :meth:`mlcore.trainer.Trainer.log_row`, so it is part of the checkpoint's history:
    a resumed run keeps every row up to the step it resumes from and drops only rows of updates it redoes.
    A window retried after an out-of-memory back-off (:meth:`on_window_retry`) counts only the retry.
    """

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.key: tuple[str, int] | None = None
        self.acc: dict[str, list[Any]] = {}

    def wrap(self, step):
        def logged(model: torch.nn.Module, batch: Mapping[str, Any]) -> Any:
            out = step(model, batch)
            if model.training and self.trainer is not None:
                key = (self.trainer.stage, self.trainer.global_step)
                if key != self.key:
                    self.flush()
                    self.key = key
                n = len(batch["index"]) if "index" in batch else 1
                for name, (total, count) in loss_term_sums(out, n).items():
                    a = self.acc.setdefault(name, [0.0, 0.0])
                    a[0], a[1] = a[0] + total, a[1] + count
            return out

        return logged

    def flush(self) -> None:
        if self.trainer is None or self.key is None or not self.acc:
            self.acc, self.key = {}, None
            return
        row = {"epoch": self.trainer.epoch, "step": self.key[1] + 1, "stage": self.key[0], "split": UPDATE_SPLIT,
               **{k: float(v[0]) / v[1] for k, v in self.acc.items() if v[1]}}
        self.trainer.log_row(row)
        self.acc, self.key = {}, None

    def on_window_retry(self, trainer: Trainer, state: Any) -> None:
        self.acc = {}  # the failed attempt's micro-batches are redone: count each sample once

    def on_update_end(self, trainer: Trainer, state: Any, loss: float) -> None:
        self.flush()


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
    """The per-phase config: the curriculum's epochs / batch / LR (unless given: not none),
    warmup of ``warmup_fraction`` of the phase's updates, cosine, its gradient clipping."""
    pick = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else phase[k]) for k in ("epochs", "batch_size", "lr")}
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
    try:
        return build_text_to_video(size, vae, grad_checkpointing=gc, text_encoder=cfg.text_encoder)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc


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
    """Estimated training memory (GiB, a lower bound) of ``cfg``'s model and stage at ``batch_size`` on a
    GPU (bf16/fp16 activations, fp32 weights, AdamW states and temporaries, EMA when ``--ema-decay``,
    CUDA context); see :mod:`videogen.models.memory`."""
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
    return estimate_training_memory(model, fwd, ema=bool(cfg.ema_decay), cuda_context_gib=CUDA_CONTEXT_GIB)


@torch.no_grad()
def latent_statistics(vae: VideoVAE, loader, strategy) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``(C_lat,)`` float32 of the VAE's posterior means over every clip
    window of ``loader`` (batches moved to ``strategy.device``, where the VAE is): the normalisation
    :meth:`VideoVAE.normalize` applies for the backbone.

    Sums are float64 on the device (one pass); ``std = sqrt(E[z^2] - E[z]^2)``. On the ``meta``
    device the result is meta tensors (shapes only)."""
    was = vae.training
    vae.eval()
    s1 = s2 = None
    n = 0
    for batch in loader:
        mean, _ = vae.encode(strategy.to_device(batch["video"]).float())
        z = mean.double().transpose(0, 1).flatten(1)  # (C, N)
        s1 = z.sum(1) if s1 is None else s1 + z.sum(1)
        s2 = z.pow(2).sum(1) if s2 is None else s2 + z.pow(2).sum(1)
        n += z.shape[1]
    vae.train(was)
    if s1 is None:
        raise DataError("latent statistics: no clip window to encode")
    mu = s1 / n
    std = (s2 / n - mu.pow(2)).clamp(min=1e-12).sqrt()
    return mu.float(), std.float()


STATS_MAX_WINDOWS = 512  # clip windows the latent statistics are computed over (evenly spread)


def stats_loader(root: Path, clips: Sequence[Any], cfg: VideoGenConfig, bad_log: BadSampleLog | None = None):
    """A loader of evenly spaced centre-cropped windows of every training clip (``--stats-windows`` in
    all, at least one per clip, at most :data:`STATS_MAX_WINDOWS`) for :func:`latent_statistics`."""
    per_clip = max(1, min(STATS_MAX_WINDOWS, cfg.stats_windows) // max(1, len(clips)))
    ds = VideoClipDataset(root, clips, train=False, windows_per_clip=per_clip, num_frames=cfg.num_frames,
                          size=cfg.image_size, fps=cfg.fps, stride=cfg.frame_stride, cache_frames=cfg.cache_frames,
                          bad_log=bad_log)
    return make_loader(ds, batch_size=2, shuffle=False, num_workers=0, collate_fn=collate)


def prepare_backbone(model: TextToVideo, loader, strategy) -> None:
    """Before the first backbone update: when the frozen VAE carries no latent statistics (a VAE
    checkpoint from before they were stored), compute them over ``loader`` on the model's device.
    Every batch goes through ``strategy.to_device`` (the model may be on any device, ``meta`` included)."""
    if not model.vae.has_latent_stats:
        mean, std = latent_statistics(model.vae, loader, strategy)
        model.vae.set_latent_stats(mean, std)
        if mean.device.type != "meta":
            log.info("latent statistics (not in the VAE checkpoint; computed over the training clips): "
                     "mean %s, std %s", [round(float(x), 3) for x in mean], [round(float(x), 3) for x in std])


def store_latent_stats(files: Sequence[Path], cfg: VideoGenConfig, loader, strategy) -> dict[str, list[float]] | None:
    """``--stage vae``: compute the per-channel latent statistics of each checkpoint in ``files``
    (its own weights, on ``strategy``'s device) over ``loader`` and write them into the checkpoint
    (buffers ``latent_mean`` / ``latent_std`` of its model state), so the backbone stage reads them
    with the VAE. Returns the statistics of the first file."""
    first = None
    for file in files:
        if not file.is_file():
            continue
        ck = load_checkpoint(file)
        vae = build_vae(model_size(cfg.model_size, cfg.latent_channels, cfg.spatial_compression))
        vae.load_state_dict(ck["model"])
        vae = strategy.prepare_model(vae)
        mean, std = latent_statistics(vae, loader, strategy)
        ck["model"]["latent_mean"], ck["model"]["latent_std"] = mean.cpu(), std.clamp(min=1e-6).cpu()
        atomic_save(ck, file)
        if first is None:
            first = {"mean": [round(float(x), 4) for x in mean], "std": [round(float(x), 4) for x in std]}
    return first


class LatentCache:
    """``--cache-latents``: the frozen VAE's normalised latents of evenly spaced, centre-cropped windows
    of every training clip, encoded once (on the trainer's device, stored on the CPU); training then
    draws random cached windows instead of decoding and encoding clips at every step.

    Windows per clip: one every ``num_frames / 2`` sampled frames (half-overlapping), at most 64.
    Clips that fail to decode are recorded in ``bad_log`` and left out.
    """

    def __init__(self, latents: dict[str, torch.Tensor], captions: dict[str, str]) -> None:
        self.latents, self.captions = latents, captions

    @property
    def windows(self) -> int:
        return sum(v.shape[0] for v in self.latents.values())

    @classmethod
    @torch.no_grad()
    def build(cls, model: TextToVideo, root: Path, clips: Sequence[Any], cfg: VideoGenConfig, strategy,
              bad_log: BadSampleLog) -> LatentCache:
        latents, captions = {}, {}
        for clip in clips:
            rate = cfg.fps or clip.fps / cfg.frame_stride
            w = int(min(64, max(1, round(clip.duration * rate / max(1, cfg.num_frames // 2)) - 1)))
            ds = VideoClipDataset(root, [clip], train=False, windows_per_clip=w, num_frames=cfg.num_frames,
                                  size=cfg.image_size, fps=cfg.fps, stride=cfg.frame_stride,
                                  cache_frames=cfg.cache_frames, bad_log=bad_log)
            parts = []
            try:
                for batch in make_loader(ds, batch_size=2, shuffle=False, num_workers=0, collate_fn=collate):
                    parts.append(model.encode_video(strategy.to_device(batch["video"])).float().cpu())
            except DataError:
                continue  # recorded in bad_log
            latents[clip.path], captions[clip.path] = torch.cat(parts), clip.caption
        if not latents:
            raise DataError("--cache-latents: no training clip could be decoded")
        return cls(latents, captions)

    def dataset(self, clips: Sequence[Any], samples: int) -> Dataset:
        """``samples`` items drawn round-robin from the cached ``clips``: a random cached window each."""
        names = [c.path for c in clips if c.path in self.latents] or list(self.latents)
        return _CachedWindows(self, names, samples)


class _CachedWindows(Dataset):
    def __init__(self, cache: LatentCache, names: list[str], samples: int) -> None:
        self.cache, self.names, self.samples = cache, names, samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index % len(self.names)]
        lat = self.cache.latents[name]
        return {"latent": lat[random.randrange(lat.shape[0])], "caption": self.cache.captions[name], "index": index}


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
    train_clips, val_clips, test_clips = index.split(cfg.val_clips, cfg.test_clips)
    if not train_clips:
        raise DataError(f"--val-clips {cfg.val_clips} --test-clips {cfg.test_clips}: no clip left for training")
    by_phase = assign_phases(train_clips)
    log.info("clips: %d train (%s), %d held out for validation (%s), %d for test (%s), %d skipped", len(train_clips),
             ", ".join(c.name for c in train_clips), len(val_clips), ", ".join(c.name for c in val_clips) or "none",
             len(test_clips), ", ".join(c.name for c in test_clips) or "none", len(index.skipped))

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
    first_batch = cfg.batch_size or phases[cfg.start_phase - 1]["batch_size"]
    mem = memory_estimate(cfg, first_batch)
    msg = (f"videogen {cfg.stage} model ({cfg.model_size}): {n_params / 1e6:.2f}M parameters "
           f"({n_train / 1e6:.2f}M trainable); estimated GPU training memory at batch "
           f"{first_batch}, {cfg.num_frames}x{cfg.image_size}px: >= {mem['total_gib']:.2f} GiB "
           f"(a lower bound computed on the meta device, not measured; EMA "
           f"{'on: ' + format(mem['ema_gib'], '.2f') + ' GiB of it' if cfg.ema_decay else 'off'}; "
           f"bench/videogen_memory.py --device cuda measures the real peak)")
    print(msg, flush=True)
    log.info(msg)

    lpips = None
    if cfg.stage == "vae" and cfg.lpips_weights:
        lpips = torch.jit.load(cfg.lpips_weights, map_location="cpu").eval()
        lpips.requires_grad_(False)
    if cfg.stage == "vae":
        step = make_vae_step(cfg.kl_weight, cfg.recon_loss, lpips, cfg.lpips_weight)
        metrics: list[Metric] = [ReconstructionMetrics(with_ssim=False), LossTerms()]
    else:
        step = make_backbone_step(cfg.text_dropout, sampling=cfg.timestep_sampling, logit_mean=cfg.logit_mean,
                                  logit_std=cfg.logit_std, shift=cfg.timestep_shift)
        metrics = [LossTerms()]
    phase_cb = PhaseCheckpoints(cfg.monitor)
    budget = TimeBudget(cfg.time_budget_min, t_start)
    updates_log = UpdateLog()
    trainer = Trainer(model, cfg, updates_log.wrap(step), eval_step=step, metrics=metrics,
                      callbacks=[phase_cb, budget, updates_log])
    updates_log.trainer = trainer
    if lpips is not None:
        lpips.to(trainer.strategy.device)

    bad_log = BadSampleLog()  # clips that fail to decode mid-run, counted across loader workers and phases
    for path, reason in index.skipped.items():  # unreadable/truncated at probe time: skipped from the start
        bad_log.record(path, reason)
    ds_kw = dict(num_frames=cfg.num_frames, size=cfg.image_size, fps=cfg.fps, stride=cfg.frame_stride,
                 cache_frames=cfg.cache_frames, bad_log=bad_log)
    val_loader = None
    if val_clips:
        val_ds = VideoClipDataset(index.root, val_clips, train=False, windows_per_clip=cfg.val_windows, **ds_kw)
        val_loader = make_loader(val_ds, batch_size=2, shuffle=False, num_workers=0, collate_fn=collate)

    latent_cache = None
    if isinstance(model, TextToVideo):
        # the model is on the trainer's device now: batches go there through the strategy
        prepare_backbone(model, stats_loader(index.root, train_clips, cfg, bad_log), trainer.strategy)
        if cfg.cache_latents:
            latent_cache = LatentCache.build(model, index.root, train_clips, cfg, trainer.strategy, bad_log)
            log.info("--cache-latents: %d windows of %d clips encoded once", latent_cache.windows,
                     len(latent_cache.latents))
    stats_dl = stats_loader(index.root, train_clips, cfg, bad_log) if cfg.stage == "vae" else None

    if trainer.logger.enabled:  # the clips of each split, as every domain writes them
        write_split_json(run_dir / "split.json", {k: [c.path for c in v] for k, v in
                                                   (("train", train_clips), ("val", val_clips), ("test", test_clips))},
                         root=index.root, val_clips=cfg.val_clips, test_clips=cfg.test_clips)
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
        if latent_cache is not None:
            train_ds = latent_cache.dataset(clips, samples)
        else:
            train_ds = VideoClipDataset(index.root, clips, train=True, samples=samples, hflip=cfg.hflip,
                                        time_reverse=cfg.time_reverse, crop_scale=cfg.crop_scale, **ds_kw)
        pcfg_probe = phase_config(cfg, ph, 1)
        loader = make_loader(train_ds, batch_size=pcfg_probe.batch_size, shuffle=True, seed=cfg.seed,
                             num_workers=cfg.num_workers if latent_cache is None else 0, collate_fn=collate,
                             drop_last=False)
        updates = math.ceil(len(loader) / cfg.accum_steps) * pcfg_probe.epochs
        pcfg = phase_config(cfg, ph, updates)
        phase_cb.phase = n
        log.info("phase %d (%s): %d clips (%s), %d samples/epoch, %d epochs, batch %d, lr %.2e, %d updates, "
                 "warmup %d", n, ph["name"], len(clips), ", ".join(c.name for c in clips), samples, pcfg.epochs,
                 pcfg.batch_size, pcfg.lr, updates, pcfg.warmup_steps)
        t0 = time.perf_counter()
        already = name in trainer.completed_stages
        summary = trainer.fit(loader, val_loader, stage=name, config=pcfg)
        updates_log.flush()
        ck = trainer.run_dir / "checkpoints"
        stats = None
        if trainer.logger.enabled and not already:
            if not summary.get("completed", True):
                log.info("phase %d stopped early (--max-steps or SIGTERM); resume with --resume %s", n, run_dir)
            if val_loader is None or not (ck / f"phase{n}" / "best.pt").is_file():
                trainer.save_weights(f"phase{n}/best.pt", extra={"phase": n, "metric": "last", "value": None})
            _copy_atomic(ck / "last.pt", ck / f"phase{n}" / "last.pt")
            if stats_dl is not None:  # the backbone stage normalises latents with these
                stats = store_latent_stats([ck / f"phase{n}" / "best.pt", ck / "best_val_loss.pt"], cfg, stats_dl,
                                           trainer.strategy)
                log.info("latent statistics of phase %d best.pt (per channel): %s", n, stats)
        row = phase_rows.get(n, {}) if already else {}
        row.update({"phase": n, "name": ph["name"], "stage": name, "clips": [c.path for c in clips],
                    "samples_per_epoch": samples, "epochs": pcfg.epochs, "batch_size": pcfg.batch_size,
                    "lr": pcfg.lr, "updates": updates, "warmup_steps": pcfg.warmup_steps,
                    "completed": name in trainer.completed_stages, "stopped_by_time_budget": budget.exceeded,
                    "best_checkpoint": str(ck / f"phase{n}" / "best.pt"),
                    "best": phase_cb.best.get(str(n)), "last_checkpoint": str(ck / f"phase{n}" / "last.pt"),
                    **({"latent_stats": stats} if stats is not None else {}),
                    **_phase_rows(trainer.history, name)})
        if not already:
            row["time_s"] = round(time.perf_counter() - t0, 2) + (row.get("time_s", 0) if cfg.resume else 0)
        phase_rows[n] = row
        if trainer.logger.enabled:
            write_json_atomic(summary_file, {
                "stage": cfg.stage, "model_size": cfg.model_size, "parameters": n_params,
                "trainable_parameters": n_train, "estimated_memory_gib": mem,
                "train_clips": [c.path for c in train_clips], "val_clips": [c.path for c in val_clips],
                "test_clips": [c.path for c in test_clips],
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

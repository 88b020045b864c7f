"""``videogen-train`` configuration: mlcore's flags plus the video ones.

The defaults are the seed's (``../shared/seeds/003``): the ``gtx1070`` model sizes, 16 frames at
256 px, and the 5-phase curriculum of ``configs/curricula/seed.yaml`` (epochs 20/25/30/20/15, batch
4/4/2/2/2, lr 1e-4/5e-5/2e-5/1e-5/5e-6, samples 1000/1500/2000/1200/4000, warmup 10% + cosine,
clipping at 1.0). Each phase takes its epochs, batch size and learning rate from the curriculum
unless ``--epochs``, ``--batch-size`` or ``--lr`` is given (on the command line or in a ``--config``
preset): a given value replaces that value for every phase, even when it equals a curriculum value
(their default is ``none``: "the curriculum's").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mlcore.config import ConfigError, TrainConfig, opt, sample_data_dir
from videogen.data import NUM_PHASES
from videogen.models import MODEL_SIZES


@dataclass
class VideoGenConfig(TrainConfig):
    """All ``videogen-train`` options (see ``videogen-train --help``)."""

    data: str | None = opt(sample_data_dir("videos"), "clip folder with captions.csv (or its parent)")
    out: str = opt("runs/videogen", "run directory (every phase writes into it)")
    epochs: int | None = opt(None, "epochs of every phase (none: each phase's curriculum value)")
    batch_size: int | None = opt(None, "micro-batch of every phase (none: each phase's curriculum value)")
    lr: float | None = opt(None, "peak LR of every phase (none: each phase's curriculum value)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    image_size: int = opt(256, "frame size in px (square crop)")
    monitor: str = opt("val_loss", "metric for the best checkpoints (global and per phase)")
    stage: str = opt("vae", "what to train: the VideoVAE, or the text encoder + HybridBackbone on a frozen VAE",
                     choices=("vae", "backbone"))
    model_size: str = opt("gtx1070", "model widths: tiny (CPU, tests) or gtx1070 (the seed's sizes)",
                          choices=MODEL_SIZES)
    latent_channels: int | None = opt(None, "VAE latent channels (default: 4 tiny, 256 gtx1070)")
    spatial_compression: int | None = opt(None, "VAE spatial compression 8 or 16 (default: 8 tiny, 16 gtx1070)")
    num_frames: int = opt(16, "frames per clip (T, a multiple of 4)")
    fps: float | None = opt(8.0, "sample frames at this rate (none: every --frame-stride-th source frame)")
    frame_stride: int = opt(1, "source-frame stride when --fps is none")
    cache_frames: bool = opt(False, "decode each clip once into memory at the training scale (small datasets)")
    hflip: float = opt(0.0, "training augmentation: probability of mirroring a window left-right")
    time_reverse: float = opt(0.0, "training augmentation: probability of playing a window backwards")
    crop_scale: float = opt(1.0, "training augmentation: smallest area fraction of a random square crop, resized to "
                                 "--image-size (timm's --scale at aspect 1; 1: crops of the full short side)")
    val_clips: str = opt("auto", "held-out clips: auto (every 5th clip by path), none, or comma-separated names")
    test_clips: str = opt("none", "clips reported only (never trained on, never used to select): none, auto (every "
                          "5th clip by path, starting with the 4th) or comma-separated names; "
                          "videogen-eval --split test scores them")
    val_windows: int = opt(2, "evenly spaced windows evaluated per held-out clip")
    curriculum: str = opt("seed", "curriculum YAML: a name in videogen/configs/curricula or a file")
    start_phase: int = opt(1, "first curriculum phase to run (N > 1 starts from checkpoints/phase{N-1}/best.pt)")
    end_phase: int = opt(NUM_PHASES, "last curriculum phase to run")
    kl_weight: float = opt(1e-6, "KL weight in SD-VAE's convention: loss = (sum of per-pixel-value recon + "
                                 "kl_weight x KL summed over latent values) / pixel values per clip (SD-VAE: 1e-6)")
    recon_loss: str = opt("l1", "reconstruction loss", choices=("l1", "mse"))
    lpips_weights: str | None = opt(None, "LPIPS network as a TorchScript file (f(a, b) on [-1, 1] frames)")
    lpips_weight: float = opt(0.1, "weight of the LPIPS term when --lpips-weights is given")
    vae: str | None = opt(None, "--stage backbone: the trained VAE (run directory or checkpoint file)")
    vae_model_size: str | None = opt(None, "model size of the --vae checkpoint (set from it automatically)")
    text_dropout: float = opt(0.1, "probability of dropping a caption (classifier-free guidance)")
    timestep_sampling: str = opt("logit_normal", "backbone: flow times t ~ logit-normal (SD3) or uniform",
                                 choices=("logit_normal", "uniform"))
    logit_mean: float = opt(0.0, "backbone: mean of the logit-normal flow-time distribution")
    logit_std: float = opt(1.0, "backbone: std of the logit-normal flow-time distribution")
    timestep_shift: float = opt(1.0, "backbone: shift s of sampled times, t' = s t / (1 + (s - 1) t) (SD3; > 1 "
                                     "for more latent values: larger frames or longer clips)")
    stats_windows: int = opt(256, "clip windows (evenly spread over the training clips, >= 1 per clip) the "
                                  "per-channel latent mean/std are computed over")
    cache_latents: bool = opt(False, "backbone: encode each training window once with the frozen VAE and train "
                                     "on the cached latents (windows evenly spaced, centre crop)")
    text_encoder: str | None = opt(None, "backbone: a pretrained transformers text encoder folder (save_pretrained "
                                         "of e.g. umT5/mT5/XLM-R), frozen, embeddings cached; none: the byte-level "
                                         "encoder trained with the backbone")
    grad_checkpointing: bool = opt(False, "recompute blocks in the backward pass (less activation memory)")
    time_budget_min: float | None = opt(None, "stop training after this many minutes of this command (at the "
                                        "next evaluation; later phases are skipped); none: no limit")
    torch_threads: int | None = opt(None, "torch intra-op CPU threads (none: torch's default; 1 is much faster "
                                    "than 2 on a CPU shared with other jobs)")
    cache_dir: str | None = opt(None, "clip-probe cache folder (none: $VIDEOGEN_CACHE or ~/.cache/videogen)")

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 or none (got {v})")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr must be > 0 or none (got {self.lr})")
        # mlcore's checks expect numbers: none (= the curriculum's) passes them as 1
        checked = dataclasses.replace(self, epochs=self.epochs or 1, batch_size=self.batch_size or 1, lr=self.lr or 1.0)
        TrainConfig.validate(checked)
        self.device = checked.device  # mlcore normalises it (e.g. "CUDA:0" -> "cuda:0")
        if self.data is None:
            raise ConfigError("--data is required: a folder with captions.csv and the clips it names")
        if self.num_frames < 4 or self.num_frames % 4:
            raise ConfigError(f"--num-frames must be a positive multiple of 4 (got {self.num_frames})")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"--fps must be > 0 or none (got {self.fps})")
        for flag, p in (("--hflip", self.hflip), ("--time-reverse", self.time_reverse)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{flag} must be a probability in [0, 1] (got {p})")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"--crop-scale must be in (0, 1] (got {self.crop_scale})")
        if self.frame_stride < 1 or self.val_windows < 1:
            raise ConfigError("--frame-stride and --val-windows must be >= 1")
        comp = self.spatial_compression
        if comp is not None and comp not in (8, 16):
            raise ConfigError(f"--spatial-compression must be 8 or 16 (got {comp})")
        if self.latent_channels is not None and self.latent_channels < 1:
            raise ConfigError(f"--latent-channels must be >= 1 (got {self.latent_channels})")
        size = comp or (8 if self.model_size == "tiny" else 16)
        if self.image_size % size:
            raise ConfigError(f"--image-size must be a multiple of the spatial compression {size} (got {self.image_size})")
        if not 1 <= self.start_phase <= self.end_phase <= NUM_PHASES:
            raise ConfigError(f"--start-phase/--end-phase must satisfy 1 <= start <= end <= {NUM_PHASES} "
                              f"(got {self.start_phase}, {self.end_phase})")
        if self.kl_weight < 0 or self.lpips_weight < 0:
            raise ConfigError("--kl-weight and --lpips-weight must be >= 0")
        if self.stats_windows < 1:
            raise ConfigError(f"--stats-windows must be >= 1 (got {self.stats_windows})")
        if self.logit_std <= 0 or self.timestep_shift <= 0:
            raise ConfigError(f"--logit-std and --timestep-shift must be > 0 (got {self.logit_std}, "
                              f"{self.timestep_shift})")
        if self.text_encoder is not None and not Path(self.text_encoder, "config.json").is_file():
            raise ConfigError(f"--text-encoder {self.text_encoder}: expected a folder written by transformers' "
                              f"save_pretrained (config.json and tokenizer files)")
        if not 0 <= self.text_dropout < 1:
            raise ConfigError(f"--text-dropout must be in [0, 1) (got {self.text_dropout})")
        if self.lpips_weights is not None and not Path(self.lpips_weights).is_file():
            raise ConfigError(f"--lpips-weights {self.lpips_weights}: file not found")
        if self.stage == "backbone" and self.vae is None and self.resume is None:
            raise ConfigError("--stage backbone needs --vae RUN_DIR_OR_CHECKPOINT (a videogen-train --stage vae run)")
        if self.vae is not None and not Path(self.vae).exists():
            raise ConfigError(f"--vae {self.vae}: not found")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise ConfigError(f"--time-budget-min must be > 0 or none (got {self.time_budget_min})")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"--torch-threads must be >= 1 or none (got {self.torch_threads})")
        load_curriculum(self.curriculum)


PHASE_KEYS = ("epochs", "batch_size", "lr", "samples")


def load_curriculum(name_or_path: str) -> list[dict[str, Any]]:
    """The 5 phases of a curriculum YAML (``phases:`` list of mappings with ``name``, ``epochs``,
    ``batch_size``, ``lr``, ``samples`` and optional ``warmup_fraction`` (0.1), ``clip_grad_norm`` (1.0)).

    Raises:
        ConfigError: unknown name, unreadable file, or a phase missing a key or with a bad value
            (message names the file and the phase).
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"--curriculum {name_or_path}: file not found")
        text, source = path.read_text(), str(path)
    else:
        folder = resources.files("videogen").joinpath("configs", "curricula")
        names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        if name_or_path not in names:
            raise ConfigError(f"--curriculum: unknown curriculum {name_or_path!r} (shipped: {', '.join(names)})")
        text, source = folder.joinpath(f"{name_or_path}.yaml").read_text(), f"curriculum {name_or_path}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML ({exc.__class__.__name__})") from exc
    phases = data.get("phases") if isinstance(data, dict) else None
    if not isinstance(phases, list) or len(phases) != NUM_PHASES:
        raise ConfigError(f"{source}: expected 'phases:' with {NUM_PHASES} entries")
    out = []
    for i, ph in enumerate(phases, start=1):
        if not isinstance(ph, dict):
            raise ConfigError(f"{source}: phase {i} is not a mapping")
        for key in PHASE_KEYS:
            if key not in ph:
                raise ConfigError(f"{source}: phase {i} has no {key!r}")
        try:
            item = {"phase": i, "name": str(ph.get("name", f"phase{i}")), "epochs": int(ph["epochs"]),
                    "batch_size": int(ph["batch_size"]), "lr": float(ph["lr"]), "samples": int(ph["samples"]),
                    "warmup_fraction": float(ph.get("warmup_fraction", 0.1)),
                    "clip_grad_norm": float(ph.get("clip_grad_norm", 1.0))}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: phase {i}: {exc}") from exc
        if min(item["epochs"], item["batch_size"], item["samples"]) < 1 or item["lr"] <= 0 \
                or not 0 <= item["warmup_fraction"] < 1:
            raise ConfigError(f"{source}: phase {i}: epochs, batch_size, samples must be >= 1, lr > 0, "
                              f"warmup_fraction in [0, 1)")
        out.append(item)
    return out

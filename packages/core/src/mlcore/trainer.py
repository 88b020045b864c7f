"""The one training loop every domain package rides on.

A domain supplies a model, loaders, a ``training_step(model, batch) -> loss | {"loss": ..., ...}``
callable, metric objects and (optionally) an optimizer factory; :class:`Trainer` does the rest:
gradient accumulation with window-normalised losses, autocast and gradient scaling via the
:class:`~mlcore.devices.DeviceStrategy`, OOM back-off, clipping, EMA, warmup + cosine schedules,
evaluation under ``torch.inference_mode``, callbacks, atomic checkpoints with exact resume,
profiling, TensorBoard/JSONL logging and DDP under ``torchrun``.

Multi-stage training (freeze then finetune, curriculum phases) is a sequence of :meth:`Trainer.fit`
calls with different ``stage`` names on one trainer and run directory.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mlcore.callbacks import BestCheckpoint, Callback, EarlyStopping
from mlcore.checkpoint import (
    atomic_save,
    config_domain,
    link_alias,
    link_checkpoint,
    model_architectures,
    model_state_dict,
    prune_step_checkpoints,
    remove_checkpoint,
    resolve_resume_path,
    step_checkpoint_name,
    step_checkpoints,
    unwrap_model,
)
from mlcore.config import ConfigError, TrainConfig
from mlcore.data import find_resumable_sampler
from mlcore.dcp import SHARDED_DIR, load_resume_optimizer, load_resume_state, remove_stale, save_sharded
from mlcore.devices import DeviceStrategy, batch_size_of, build_strategy, map_tensors, split_batch
from mlcore.distributed import (
    all_reduce_sum,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)
from mlcore.fsdp import (
    all_finite,
    broadcast_buffers,
    full_value,
    gather_full_state_dict,
    is_fsdp,
    lockstep,
    make_grad_scaler,
    no_sync,
    prepare_model,
    unsharded_copy,
)
from mlcore.metrics import Metric
from mlcore.optim import build_optimizer
from mlcore.profiling import StepProfiler
from mlcore.runlog import RunLogger
from mlcore.schedulers import build_scheduler, total_optimizer_steps
from mlcore.seed import get_rng_state, seed_everything, set_deterministic, set_rng_state

log = logging.getLogger("mlcore.trainer")

UPDATE_SPLIT = "train_update"
"""The ``split`` of per-update rows a domain logs with :meth:`Trainer.log_row` (videogen's loss terms);
the trainer's own rows are ``train`` (per epoch or evaluation interval) and the evaluated splits."""

StepFn = Callable[[torch.nn.Module, Any], "torch.Tensor | Mapping[str, Any]"]


class NonFiniteLossError(FloatingPointError):
    """The training loss or the gradients became NaN or infinite (more often than ``--max-bad-steps``
    allows).

    The weights are never updated with such gradients and a checkpoint holding a non-finite weight is
    never written, so every file under ``checkpoints/`` is finite; the message names the step and the
    latest checkpoint on disk.
    """


_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")  # Ctrl-C, schedulers' kill, SLURM's pre-timeout signal


class TrainingInterrupted(Exception):
    """:meth:`Trainer.fit` stopped on SIGINT, SIGTERM or SIGUSR1 after finishing the current update
    and writing ``last.pt`` (rank 0). ``exit_code`` is 128 + the signal number (130 SIGINT, 143
    SIGTERM); :func:`mlcore.cli.run_cli` prints the message as one line and exits with it.
    """

    def __init__(self, signum: int, checkpoint: Path, step: int, run_dir: Path) -> None:
        self.signum, self.checkpoint, self.step, self.run_dir = signum, checkpoint, step, run_dir
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {_signal_name(signum)} after optimizer step {step}: saved {checkpoint}; "
                         f"continue with --resume {run_dir}")


class TrainingAborted(KeyboardInterrupt):
    """A second stop signal arrived while the first was being honoured: stop at once, without
    finishing the update (``last.pt`` keeps its previous contents). ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int) -> None:
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(f"aborted by a second {_signal_name(signum)}: the current update was not saved "
                         "(last.pt, if any, holds an earlier step)")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _as_outputs(out: torch.Tensor | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(out, torch.Tensor):
        return {"loss": out}
    if "loss" not in out:
        raise KeyError("the step function must return a loss tensor or a mapping with a 'loss' entry")
    return dict(out)


@dataclass(eq=False)
class TrainState:
    """Where one :meth:`Trainer.fit` call (one stage) stands: what the loop reads and updates, what
    callbacks receive and what ``last.pt`` saves. Run-wide counters live on the trainer:
    ``Trainer.global_step`` (optimizer updates across all stages), ``completed_stages``, ``history``.

    Attributes:
        stage: the stage's name (``fit(stage=...)``).
        cfg: the stage's config (the run's config with ``fit(config=...)`` overrides).
        epochs: epochs of this stage.
        optimizer, scheduler, scaler: built for this stage (the scheduler steps once per update; the
            scaler is a disabled GradScaler unless fp16).
        batches_per_epoch: loaded batches per epoch and rank; ``total_steps``: the stage's optimizer
            updates, ``ceil(batches_per_epoch / cfg.accum_steps) * epochs`` (the schedule's length).
        stage_step: optimizer updates done in this stage (skipped non-finite updates included).
        epoch: the epoch in progress (0-based); after an epoch's last update it is the epochs done.
        batch_in_epoch: loaded batches of the epoch consumed on this rank: where a resumed run continues.
        train_loss_sum, train_loss_n: sum and count of update losses since the last ``train`` row of
            ``metrics.jsonl`` (written at each evaluation and epoch end, then reset).
    """

    stage: str
    cfg: TrainConfig
    epochs: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    batches_per_epoch: int
    total_steps: int
    stage_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_loss_sum: float = 0.0
    train_loss_n: int = 0


_HOOKS = ("on_fit_start", "on_stage_start", "on_train_batch_end", "on_window_retry", "on_update_end", "on_epoch_end",
          "on_exception", "on_fit_end")


def _hook_lists(callbacks: Sequence[Callback]) -> dict[str, list[Callback]]:
    """Per hook, the callbacks that override it: the loop calls only those (a hook no callback
    overrides costs one empty-list check)."""
    return {name: [cb for cb in callbacks if getattr(type(cb), name) is not getattr(Callback, name)]
            for name in _HOOKS}


class Trainer:
    """Runs training and evaluation for any domain.

    Args:
        model: the ``nn.Module`` (moved to the device by the strategy).
        config: a :class:`~mlcore.config.TrainConfig` (or a domain subclass).
        training_step: ``f(model, batch) -> loss`` or ``{"loss": scalar, ...outputs}``; ``loss`` is
            the mean over the micro-batch (the trainer rescales it to the accumulation window).
        eval_step: like ``training_step`` for evaluation (default: ``training_step``). Its outputs
            and the batch are passed to every metric's ``update``.
        metrics: :class:`~mlcore.metrics.Metric` objects evaluated on every split.
        optimizer_factory: ``f(model) -> Optimizer`` (default: AdamW/SGD from the config with no
            weight decay on biases and norm layers).
        callbacks: extra callbacks; early stopping and best checkpoints come from the config.
        strategy: a :class:`~mlcore.devices.DeviceStrategy` (default: from ``--device/--precision``).
        run_dir: where to write (default: ``config.out``).
        checkpoint_aliases: extra names for checkpoint files, e.g. ``{"last.pt": "last_checkpoint.pt",
            "best_val_top1.pt": "best_accuracy.pt"}`` for a domain whose plan names its files; each alias
            is a hard link to the file (see :func:`~mlcore.checkpoint.link_alias`), renewed on every save.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        training_step: StepFn,
        *,
        eval_step: StepFn | None = None,
        metrics: Sequence[Metric] = (),
        optimizer_factory: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
        callbacks: Sequence[Callback] = (),
        strategy: DeviceStrategy | None = None,
        run_dir: str | Path | None = None,
        checkpoint_aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.checkpoint_aliases = dict(checkpoint_aliases or {})
        self.strategy = strategy or build_strategy(config.device, config.precision,
                                                   channels_last=config.channels_last,
                                                   empty_cache_every=config.empty_cache_every)
        self.distributed = init_distributed(self.strategy.kind)
        self.world_size = get_world_size()
        if config.deterministic:
            set_deterministic(True)
        self.strategy.setup()
        self.training_step = training_step
        self.eval_step = eval_step or training_step
        self.metrics = list(metrics)
        self.optimizer_factory = optimizer_factory
        self.run_dir = Path(run_dir or config.out)
        self.logger = RunLogger(self.run_dir, enabled=is_main_process())
        self.logger.write_config(config.to_dict())

        # activation checkpointing, meta-device init, FSDP2 sharding (mlcore.fsdp); DDP in _wrap_model
        self.raw_model, self._skeleton = prepare_model(model, self.strategy, strategy_name=config.strategy,
                                                       grad_checkpointing=config.grad_checkpointing)
        self.sharded = is_fsdp(self.raw_model)
        if self.sharded and config.ema_decay:
            raise ConfigError("--ema-decay is not supported with --strategy fsdp yet; use --strategy ddp")
        self._wrapped_for: tuple[bool, ...] = ()
        self.model: torch.nn.Module = self._wrap_model()
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        self._ema_steps = 0  # EMA updates so far (= ema.n_averaged, kept on the host: no device sync)
        self._ema_cfg = (0.0, False)

        self.callbacks: list[Callback] = list(callbacks)
        if config.early_stopping_patience:
            self.callbacks.append(EarlyStopping(config.monitor, config.monitor_mode,
                                                config.early_stopping_patience, config.early_stopping_min_delta))
        self.best_checkpoint = BestCheckpoint(config.best_monitor_list(), top_k=config.save_top_k)
        self.callbacks.append(self.best_checkpoint)

        self.state: TrainState | None = None  # the current (or last) stage's state, from fit()
        self._bar: Any = None  # the stage's tqdm bar and --profile profiler (set by _train_stage)
        self._profiler: StepProfiler | None = None
        self._hooks = _hook_lists(self.callbacks)
        self.global_step = 0  # optimizer updates across all stages
        self.stage = "main"
        self.completed_stages: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.should_stop = False
        self.micro_split = 1  # OOM back-off: each loaded batch runs as this many micro-batches
        self.oom_backoffs = 0
        self._stop_signal = 0  # signal number received by this process (0: none)
        self._agreed_stop = 0  # the stop signal all ranks agreed on at the last update (DDP)
        self.bad_steps = 0  # updates skipped for a non-finite loss or gradient (--max-bad-steps)
        self._last_saved: tuple[Path, int] | None = None  # (file, global step) of the latest last.pt
        self._resume: dict[str, Any] | None = None
        self._stats = {"samples": 0, "train_time": 0.0, "data_time": 0.0}
        self._t0 = time.perf_counter()
        if config.resume:
            # last.pt or a sharded last.dcp, written by any world size (mlcore.dcp)
            self._resume = load_resume_state(resolve_resume_path(config.resume), self.raw_model,
                                             expect_domain=config_domain(config))
            self.global_step = self._resume["global_step"]
            self.completed_stages = list(self._resume["completed_stages"])
            self.history = list(self._resume["history"])
            self._load_callback_states(self._resume.get("callbacks", {}))
            self.bad_steps = int(self._resume.get("bad_steps", 0))
            self._last_saved = (resolve_resume_path(config.resume), self.global_step)
            self.logger.rewrite_metrics(self.history)  # drop rows logged after the checkpoint
            later = [p.name for s, p in step_checkpoints(self.logger.ckpt_dir) if s > self.global_step]
            if later and is_main_process():  # --resume step_NNNNNN.pt: rolled back
                log.info("rolled back to step %d: %s (saved after it) left in place; a save of the same step "
                         "replaces one", self.global_step, ", ".join(later))
            log.info("resuming from %s (stage %s, epoch %d, step %d)", config.resume,
                     self._resume["stage"], self._resume["epoch"], self.global_step)

    @property
    def epoch(self) -> int:
        """The epoch in progress of the current stage (0-based), the epochs done after its last update
        (what ``metrics.jsonl`` rows and checkpoints record); 0 before :meth:`fit`."""
        return self.state.epoch if self.state is not None else 0

    # ------------------------------------------------------------------------------------------
    def _trainable_signature(self) -> tuple[bool, ...]:
        return tuple(p.requires_grad for p in self.raw_model.parameters())

    def _wrap_model(self) -> torch.nn.Module:
        """The module the loop runs: ``raw_model`` wrapped for data parallelism (DDP under
        ``torchrun``) and ``torch.compile``d with ``--compile``.

        Called once by the constructor and again by :meth:`fit` at the start of a stage whose set of
        trainable parameters differs from the one of the last wrap (DDP only reduces the parameters
        that required grad when it was built). This is the one place a model is wrapped: another
        parallel strategy (FSDP) plugs in here: ``--strategy fsdp`` sharded ``raw_model`` in place.
        """
        self._wrapped_for = self._trainable_signature()
        model = self.raw_model
        if self.distributed and not self.sharded:  # FSDP2 shards in place (prepare_model): no wrapper
            ids = [self.strategy.device.index] if self.strategy.kind == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        if self.config.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        return model

    # ------------------------------------------------------------------------------------------
    def fit(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        *,
        stage: str = "main",
        epochs: int | None = None,
        config: TrainConfig | None = None,
        optimizer_factory: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
    ) -> dict[str, Any]:
        """Train one stage for ``epochs`` (default ``config.epochs``) and return the summary dict.

        Reads as stages -> epochs -> updates: :meth:`_start_stage` builds the stage's
        :class:`TrainState` (optimizer, scheduler, scaler, a resumed run's position),
        :meth:`_train_stage` runs its epochs (:meth:`_train_epoch`, :meth:`_end_epoch`) of updates
        (:meth:`_update` = :meth:`_accumulate` + :meth:`_apply_update`), and the summary is written
        here (for a stop signal, by :meth:`_train_stage` before it raises). Callbacks (:class:`~mlcore.callbacks.Callback`): ``on_fit_start`` first,
        ``on_fit_end`` with the summary, or ``on_exception`` when an exception leaves (re-raised).

        Args:
            stage: name of this training stage; a resumed run skips stages already completed
                and continues the interrupted one exactly where it stopped.
            epochs: epochs of this stage (default ``config.epochs``).
            config: per-stage overrides (lr, epochs, warmup, ...) for multi-stage training.
            optimizer_factory: this stage's optimizer (default: the trainer's).

        Raises:
            NonFiniteLossError: the loss or the gradients became NaN/inf (message names the optimizer step).
            TrainingInterrupted: a stop signal (``last.pt`` saved).
        """
        self._hooks = _hook_lists(self.callbacks)
        for cb in self._hooks["on_fit_start"]:
            cb.on_fit_start(self)
        try:
            cfg = config or self.config
            started = self._start_stage(train_loader, stage, epochs if epochs is not None else cfg.epochs, cfg,
                                        optimizer_factory)
            if started is None:  # completed in the run this one resumes
                summary = self._summary(cfg)
            else:
                state, pending_eval = started
                summary = self._finish(cfg, completed=self._train_stage(state, train_loader, val_loader,
                                                                        pending_eval))
        except BaseException as exc:
            for cb in self._hooks["on_exception"]:
                try:
                    cb.on_exception(self, exc)
                except Exception:  # noqa: BLE001 - never hide the exception that stopped training
                    log.exception("callback %s failed in on_exception", type(cb).__name__)
            raise
        for cb in self._hooks["on_fit_end"]:
            cb.on_fit_end(self, summary)
        return summary

    def _start_stage(self, train_loader: DataLoader, stage: str, epochs: int, cfg: TrainConfig,
                     optimizer_factory: Callable[[torch.nn.Module], torch.optim.Optimizer] | None,
                     ) -> tuple[TrainState, str | None] | None:
        """Set up a stage: wrap the model again if its trainable set changed, build optimizer, scheduler
        and scaler, restore a resumed run's position (or seed). Returns the stage's state and the kind
        of evaluation a stop signal cut short (``"step"``/``"epoch"``, to repeat), or None when the
        resumed run already completed this stage."""
        self.stage, self.should_stop = stage, False
        if stage in self.completed_stages:
            log.info("stage %s already completed in the resumed run; skipping", stage)
            return None
        resume = self._resume if self._resume is not None and self._resume["stage"] == stage else None
        self._resume = None
        if self.model is not self.raw_model and self._trainable_signature() != self._wrapped_for:
            # DDP registers hooks and buckets for the parameters that require grad when it is built:
            # after freezing/unfreezing it would wait for gradients that never come (or miss new ones)
            self.model = self._wrap_model()
            log.info("stage %s: the set of trainable parameters changed; model wrapped again (%s)",
                     stage, type(self.model).__name__)
        sampler = find_resumable_sampler(train_loader)
        if sampler is not None and sampler.num_replicas != self.world_size:
            raise RuntimeError(f"the train loader is sharded for {sampler.num_replicas} process(es) but the run "
                               f"has {self.world_size}: build it with mlcore.make_loader under the same torchrun")
        batches_per_epoch = self._batches_per_epoch(train_loader)
        if batches_per_epoch < 1:  # e.g. a small folder with drop_last: a ValueError deep in the scheduler before
            n = len(train_loader.dataset) if hasattr(train_loader.dataset, "__len__") else "too few"
            raise ConfigError(f"--batch-size {train_loader.batch_size}: the train split has {n} sample(s) per "
                              f"process, not one full batch (the last partial batch is dropped); lower "
                              f"--batch-size or add data")
        updates_per_epoch = math.ceil(batches_per_epoch / cfg.accum_steps)
        total_steps = total_optimizer_steps(batches_per_epoch, cfg.accum_steps, epochs)
        warmup = cfg.warmup_steps or round(cfg.warmup_epochs * updates_per_epoch)
        factory = optimizer_factory or self.optimizer_factory or (lambda m: build_optimizer(m, cfg))
        optimizer = factory(self.raw_model)  # per stage: only the parameters trainable now
        scheduler = build_scheduler(optimizer, name=cfg.scheduler, total_steps=total_steps, warmup_steps=warmup,
                                    warmup_start_factor=cfg.warmup_start_factor, min_lr=cfg.min_lr,
                                    step_size=cfg.step_size, gamma=cfg.gamma)
        scaler = make_grad_scaler(self.strategy, self.raw_model)
        if cfg.ema_decay and self.ema is None:  # one EMA for the whole run: kept across stages
            self.ema = torch.optim.swa_utils.AveragedModel(unwrap_model(self.raw_model),
                                                           multi_avg_fn=self._ema_update, use_buffers=True)
        self._ema_cfg = (cfg.ema_decay or 0.0, cfg.ema_warmup)
        state = TrainState(stage=stage, cfg=cfg, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
                           scaler=scaler, batches_per_epoch=batches_per_epoch, total_steps=total_steps)
        pending_eval = None
        if resume is not None:
            load_resume_optimizer(resume, self.raw_model, optimizer)
            scheduler.load_state_dict(resume["scheduler"])
            scaler.load_state_dict(resume["scaler"])
            if self.ema is not None and resume.get("ema") is not None:
                self.ema.load_state_dict(resume["ema"])
                self._ema_steps = int(self.ema.n_averaged)
            state.batch_in_epoch = self._check_resume_shape(resume, cfg, stage)
            state.stage_step, state.epoch = resume["stage_step"], resume["epoch"]
            state.train_loss_sum, state.train_loss_n = resume.get("train_loss", (0.0, 0))
            pending_eval = resume.get("pending_eval")  # an evaluation a stop signal cut short
            self.micro_split = resume.get("micro_split", 1)
            set_rng_state(resume["rng"])
            _log_stage_config_changes(resume.get("stage_config"), cfg, stage)
        else:
            seed_everything(cfg.seed + self.global_step)
        self.state = state
        # config.yaml stays the run's base configuration (what --resume rebuilds the stages from); this
        # stage's overrides are saved in last.pt as "stage_config"
        return state, pending_eval

    def _train_stage(self, state: TrainState, train_loader: DataLoader, val_loader: DataLoader | None,
                     pending_eval: str | None) -> bool:
        """The stage's epochs, until they run out or a stop: early stopping (the stage is done),
        ``--max-steps`` (not done, resumable) or a stop signal (:class:`TrainingInterrupted`, after
        ``last.pt``). Returns whether the stage completed."""
        cfg = state.cfg
        prev_handlers = self._install_signal_handlers()  # before the "stage" line: a signal after it is handled
        updates_per_epoch = math.ceil(state.batches_per_epoch / cfg.accum_steps)
        log.info("stage %s: %d epochs x %d updates (accum %d, micro-batch %d, world %d), warmup %d, device %s",
                 state.stage, state.epochs, updates_per_epoch, cfg.accum_steps, cfg.batch_size, self.world_size,
                 cfg.warmup_steps or round(cfg.warmup_epochs * updates_per_epoch), self.strategy.describe())
        self._profiler = (StepProfiler(self.run_dir / "profile", active=cfg.profile_steps)
                          if cfg.profile and is_main_process() else None)
        self._bar = tqdm(total=state.total_steps, initial=state.stage_step, desc=state.stage,
                         disable=None if is_main_process() else True, dynamic_ncols=True, leave=False)
        try:
            for cb in self._hooks["on_stage_start"]:
                cb.on_stage_start(self, state)
            stop = None
            if pending_eval and val_loader is not None:  # repeat the evaluation a stop signal cut short
                stop = self._redo_evaluation(state, val_loader, pending_eval)
            if stop is None and cfg.max_steps is not None and state.stage_step >= cfg.max_steps:
                log.info("--max-steps %d already reached; nothing to do", cfg.max_steps)
                stop = "max_steps"
            while stop is None and state.epoch < state.epochs:
                stop = self._train_epoch(state, train_loader, val_loader) or self._end_epoch(state, val_loader)
            if stop == "signal":  # last.pt is saved; raised while the handlers still catch a second signal
                self._finish(cfg, completed=state.stage in self.completed_stages)
                raise self._interrupted(self._agreed_stop or self._stop_signal)
        finally:
            self._bar.close()
            if self._profiler is not None:
                self._profiler.close()
            self._restore_signal_handlers(prev_handlers)
        if stop == "max_steps":
            return False
        if state.stage not in self.completed_stages:
            self.completed_stages.append(state.stage)
        return True

    def _train_epoch(self, state: TrainState, train_loader: DataLoader, val_loader: DataLoader | None) -> str | None:
        """The rest of the epoch ``state.epoch`` from batch ``state.batch_in_epoch``, one update per
        accumulation window (+ step evaluations and ``last.pt`` saves). Returns why it stopped early
        (``"early_stop"``, ``"signal"``, ``"max_steps"``; ``last.pt`` saved) or None at the epoch's end."""
        cfg = state.cfg
        sampler = find_resumable_sampler(train_loader)
        if sampler is not None:
            sampler.set_epoch(state.epoch)
            sampler.skip(state.batch_in_epoch * (train_loader.batch_size or cfg.batch_size))
        batches = iter(train_loader)
        if sampler is None and state.batch_in_epoch:  # plain loader: fast-forward (not exact)
            for _ in range(state.batch_in_epoch):
                next(batches)
        self.model.train()
        for window, data_time in self._windows(batches, cfg.accum_steps, state.batches_per_epoch - state.batch_in_epoch):
            self._update(state, window, data_time)
            if cfg.eval_every_steps and state.stage_step % cfg.eval_every_steps == 0 and val_loader is not None:
                self._log_train(state)
                self._evaluate_or_interrupt(val_loader, state, "step")
                self.model.train()
            stop = self._stop_reason(state)
            if stop == "early_stop":  # from a step evaluation: the stage is done
                self.completed_stages.append(state.stage)
            if stop or (cfg.checkpoint_every_steps and state.stage_step % cfg.checkpoint_every_steps == 0):
                self._save_last(state)
            if stop == "max_steps":
                log.info("stopping at optimizer step %d (--max-steps %d); resume with --resume %s",
                         self.global_step, cfg.max_steps, self.run_dir)
            if stop:
                return stop
        return None

    def _update(self, state: TrainState, window: list[Any], data_time: float) -> float:
        """One optimizer update from a window of loaded batches (:meth:`_optimizer_step`), then the
        scheduler, the EMA, the counters, ``on_update_end``, logging. Returns the window's mean loss."""
        t_step = time.perf_counter()
        cfg = state.cfg
        loss = self._optimizer_step(window, state.optimizer, state.scaler, cfg)
        state.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(unwrap_model(self.raw_model))
            self._ema_steps += 1
        state.stage_step += 1
        self.global_step += 1
        state.batch_in_epoch += len(window)
        self.strategy.after_step(self.global_step)
        self._stats["samples"] += sum(batch_size_of(b) for b in window) * self.world_size
        self._stats["data_time"] += data_time
        self._stats["train_time"] += data_time + time.perf_counter() - t_step
        if math.isfinite(loss):  # a skipped bad update (--max-bad-steps) has no loss to log
            state.train_loss_sum += loss
            state.train_loss_n += 1
        for cb in self._hooks["on_update_end"]:  # before this step's evaluation and last.pt
            cb.on_update_end(self, state, loss)
        self._bar.update(1)
        if state.stage_step % cfg.log_every_steps == 0:
            lr = state.scheduler.get_last_lr()[0]
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            self.logger.scalar("train/loss_step", loss, self.global_step)
            self.logger.scalar("train/lr", lr, self.global_step)
        if self._profiler is not None and self._profiler.step():
            self._profiler = None
        return loss

    def _stop_reason(self, state: TrainState) -> str | None:
        """Why to stop after this update: ``"early_stop"`` (a callback set ``should_stop``), ``"signal"``
        (agreed across ranks on the update's all-reduce), ``"max_steps"``, or None."""
        if self.should_stop:
            return "early_stop"
        if self._agreed_stop if self.distributed else self._stop_signal:
            return "signal"
        if state.cfg.max_steps is not None and state.stage_step >= state.cfg.max_steps:
            return "max_steps"
        return None

    def _end_epoch(self, state: TrainState, val_loader: DataLoader | None) -> str | None:
        """After an epoch's last update: the train row, the epoch's evaluation, ``on_epoch_end``,
        ``last.pt``. Returns ``"early_stop"``, ``"signal"`` (one that arrived after the last update,
        agreed across ranks) or None."""
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if state.train_loss_n:
            self._log_train(state)
        last = next((row for row in reversed(self.history) if row["split"] != UPDATE_SPLIT), None)
        evaluated_now = last is not None and last["split"] != "train" and last["step"] == self.global_step
        if val_loader is not None and state.epoch % state.cfg.eval_every_epochs == 0 and not evaluated_now:
            self._evaluate_or_interrupt(val_loader, state, "epoch")
        for cb in self._hooks["on_epoch_end"]:
            cb.on_epoch_end(self, state)
        if self.should_stop or state.epoch == state.epochs:
            self.completed_stages.append(state.stage)
        self._save_last(state)
        if self.should_stop:
            return "early_stop"
        return "signal" if self._agree_stop() else None

    def _redo_evaluation(self, state: TrainState, val_loader: DataLoader, kind: str) -> str | None:
        """A resumed run repeats the evaluation a stop signal cut short (``kind``: ``"step"`` or
        ``"epoch"``, with its ``on_epoch_end``), then saves ``last.pt``. Returns ``"done"`` when that
        completes the stage (its last epoch, or early stopping), else None."""
        self._evaluate_or_interrupt(val_loader, state, kind)
        if kind == "epoch":
            for cb in self._hooks["on_epoch_end"]:
                cb.on_epoch_end(self, state)
        if self.should_stop or (kind == "epoch" and state.epoch == state.epochs):
            self.completed_stages.append(state.stage)
        self._save_last(state)
        return "done" if state.stage in self.completed_stages else None

    # ------------------------------------------------------------------------------------------
    def _windows(self, batches: Iterator[Any], accum: int, remaining: int) -> Iterator[tuple[list[Any], float]]:
        """Group the epoch's remaining batches into accumulation windows (the last may be short).

        Window boundaries are counted from the start of the epoch, so a run resumed after a full
        window continues with the same windows as an uninterrupted run.
        """
        while remaining > 0:
            size = min(accum, remaining)
            t0 = time.perf_counter()
            window = []
            for _ in range(size):
                try:
                    window.append(next(batches))
                except StopIteration:
                    break
            if not window:
                return
            remaining -= len(window)
            yield window, time.perf_counter() - t0

    def _optimizer_step(self, window: list[Any], optimizer, scaler, cfg: TrainConfig) -> float:
        """One optimizer update from a window of loaded batches: :meth:`_accumulate` the gradients,
        then :meth:`_apply_update`. Returns the window's mean loss (NaN for a skipped bad update)."""
        loss_sum = self._accumulate(window, optimizer, scaler, cfg)
        return self._apply_update(loss_sum, optimizer, scaler, cfg)

    def _accumulate(self, window: list[Any], optimizer, scaler, cfg: TrainConfig) -> torch.Tensor:
        """Forward/backward every micro-batch of the window; returns the summed weighted loss (0-dim).

        Each micro-batch loss (a mean over its n_i samples) is weighted by n_i / N with N the
        window's sample count, so the accumulated gradient equals that of one batch of N samples.
        Micro-batches are moved to the device one at a time.

        On an out-of-memory error (``strategy.is_oom``) the failed attempt is dropped (its graph freed,
        gradients cleared, module buffers such as BatchNorm statistics and every RNG restored to the
        window's start) and the window is retried with each batch split in two (half the micro-batch,
        twice the accumulation: same effective batch), so the retried update equals a run started
        with the smaller micro-batch. Under DDP the ranks agree on the OOM and back off together (see
        :meth:`_run_window` for where they agree and what is not covered).

        Raises:
            torch.OutOfMemoryError: out of memory with single-sample micro-batches.
        """
        total = sum(batch_size_of(b) for b in window)
        largest = max(batch_size_of(b) for b in window)
        snapshot = self._snapshot() if largest > self.micro_split else None  # a back-off is still possible
        while True:
            loss_sum = self._run_window(window, optimizer, scaler, total)  # None on every rank, or on none
            if loss_sum is not None:
                return loss_sum
            optimizer.zero_grad(set_to_none=True)
            loss_sum = None
            if self.distributed and not self.sharded:
                # the ranks' DDP state differs now (a forward that raised skipped DDP's post-forward; one
                # that did not prepared a backward that will not run): a fresh wrapper on every rank
                self.model = self._wrap_model()
            self.strategy.free_memory()
            if snapshot is None or self.micro_split >= largest:
                raise torch.OutOfMemoryError(
                    f"out of memory at optimizer step {self.global_step + 1} with micro-batches of "
                    f"{math.ceil(largest / self.micro_split)} sample(s): nothing left to halve; lower "
                    "--batch-size or --image-size")
            self._restore(snapshot)
            self.micro_split *= 2
            self.oom_backoffs += 1
            for cb in self._hooks["on_window_retry"]:  # what they collected of the failed attempt is void
                cb.on_window_retry(self, self.state)
            log.warning("out of memory at optimizer step %d: micro-batch halved to ~%d, accumulation x%d "
                        "(effective batch unchanged); retrying the step", self.global_step + 1,
                        math.ceil(largest / self.micro_split), self.micro_split * cfg.accum_steps)

    def _run_window(self, window: list[Any], optimizer, scaler, total: int) -> torch.Tensor | None:
        """One attempt at the window's forward/backward passes; None on out-of-memory (this frame, and
        with it every tensor of the failed attempt, is released on return).

        Under DDP the ranks agree on an OOM (a one-element all-reduce, so None is returned on every
        rank or on none) at points where no rank has a collective of the model pending: after each
        micro-batch but the last (run under ``no_sync``: no gradient all-reduce) and after the last
        micro-batch's forward, before the backward that all-reduces the gradients. A rank that ran out
        of memory therefore never waits in the flag all-reduce while another waits in the gradient
        all-reduce of the final backward; after an agreed OOM :meth:`_accumulate` wraps the model in a
        fresh DDP on every rank (the ranks' DDP states differ after a forward that raised). Not covered:
        an OOM inside that final backward (the other ranks are already reducing: it is raised on that
        rank and torchrun stops the job), while copying a micro-batch to the device (before the
        forward's buffer broadcast), and inside an FSDP forward (its all-gathers).
        """
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.strategy.device)
        micro = [m for b in window for m in split_batch(b, self.micro_split)]
        batch_hooks = self._hooks["on_train_batch_end"]
        agree = self.distributed
        for i, mb in enumerate(micro):
            sync = i == len(micro) - 1
            oom = False
            with no_sync(self.model, skip=self.distributed and not sync):
                try:
                    mb = self.strategy.to_device(mb)
                    with self.strategy.autocast():
                        out = _as_outputs(self.training_step(self.model, mb))
                    weighted = out["loss"].float() * (batch_size_of(mb) / total)
                    if not (agree and sync):
                        scaler.scale(weighted).backward()
                except Exception as exc:
                    if not self.strategy.is_oom(exc):
                        raise
                    oom = True
                if agree:  # every rank reaches this point once per micro-batch: agree on the OOM
                    oom = bool(all_reduce_sum(torch.tensor([float(oom)], device=self.strategy.device)) > 0)
                if oom:
                    return None
                if agree and sync:
                    scaler.scale(weighted).backward()  # all-reduces the gradients (DDP) on every rank
            loss_sum += weighted.detach()
            if batch_hooks:
                out = map_tensors(out, torch.Tensor.detach)
                for cb in batch_hooks:
                    cb.on_train_batch_end(self, self.state, out)
            out = None  # no tensor of this micro-batch outlives its backward
        return loss_sum

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Module buffers (BatchNorm statistics, counters) and every RNG state at a window's start."""
        return [b.detach().clone() for b in self.raw_model.buffers()], get_rng_state()

    def _restore(self, snapshot: tuple[list[torch.Tensor], dict[str, Any]]) -> None:
        buffers, rng = snapshot
        with torch.no_grad():
            for b, saved in zip(self.raw_model.buffers(), buffers, strict=True):
                b.copy_(saved)
        set_rng_state(rng)

    def _apply_update(self, loss_sum: torch.Tensor, optimizer, scaler, cfg: TrainConfig) -> float:
        """Reduce the loss across ranks, check loss and gradients are finite, clip, step the optimizer.

        Returns the window's mean loss, NaN when the update was skipped (``--max-bad-steps``).
        """
        if self.distributed:  # one all-reduce: the window's loss and whether any rank got a stop signal
            flags = loss_sum.new_tensor([float(self._stop_signal > 0), float(self._stop_signal)])
            reduced = all_reduce_sum(torch.cat([loss_sum.detach().float().reshape(1), flags]))
            loss_value = float(reduced[0]) / self.world_size
            n = int(reduced[1])
            self._agreed_stop = int(reduced[2]) // n if n else 0
        else:
            loss_value = float(loss_sum)
        if not math.isfinite(loss_value):
            self._skip_bad_update(optimizer, "training loss", loss_value, cfg)
            return float("nan")
        # gradient finiteness before the update: the clipping norm when clipping, else a foreach norm.
        # Under DDP the gradients are already all-reduced, so every rank sees the same norm. With an
        # fp16 GradScaler, inf/NaN gradients are the scaler's business (it skips the step, lowers the scale).
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        norm = None
        if cfg.clip_grad_norm:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
        elif not scaler.is_enabled() and params:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        norm = full_value(norm)  # FSDP: a DTensor over the ranks' shards
        if norm is not None and not scaler.is_enabled() and not bool(torch.isfinite(norm)):
            self._skip_bad_update(optimizer, "gradient norm", float(norm), cfg)
            return loss_value
        scaler.step(optimizer)
        scaler.update()
        return loss_value

    def _skip_bad_update(self, optimizer, what: str, value: float, cfg: TrainConfig) -> None:
        """Drop the window's gradients; stop (raise) once more than ``--max-bad-steps`` were skipped.

        Raises:
            NonFiniteLossError: the ``max_bad_steps + 1``-th bad update.
        """
        optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        step = self.global_step + 1
        if self.bad_steps > cfg.max_bad_steps:
            saved = (f"the latest checkpoint is {self._last_saved[0]} (optimizer step {self._last_saved[1]}, "
                     "finite weights)" if self._last_saved is not None else "no checkpoint was written yet")
            limit = f"; {self.bad_steps} bad updates exceed --max-bad-steps {cfg.max_bad_steps}" \
                if cfg.max_bad_steps else "; --max-bad-steps N skips up to N such updates"
            raise NonFiniteLossError(
                f"non-finite {what} ({value}) at optimizer step {step} (epoch {self.epoch + 1}); the weights "
                f"were not updated with it; {saved}{limit}")
        log.warning("skipping optimizer step %d: non-finite %s (%s); %d of --max-bad-steps %d skipped so far",
                    step, what, value, self.bad_steps, cfg.max_bad_steps)

    # ------------------------------------------------------------------------------------------
    def evaluate(self, loader: DataLoader, split: str = "val") -> dict[str, float]:
        """Loss and every metric over the whole split (summed across ranks), as ``{name: float}``.

        Uses the EMA weights when EMA is on. See :func:`evaluate_model`.
        """
        model = self.ema.module if self.ema is not None else self.model
        if self.sharded:
            broadcast_buffers(self.raw_model)  # FSDP keeps per-rank buffers: evaluate rank 0's, as DDP does
        return evaluate_model(model, loader, self.eval_step, self.metrics, self.strategy, desc=split)

    def _evaluate_and_callbacks(self, loader: DataLoader, split: str = "val") -> dict[str, float] | None:
        """Evaluate, log a row, run the callbacks; None (nothing logged) if a stop signal cut it short."""
        model = self.ema.module if self.ema is not None else self.model
        result = evaluate_model(model, loader, self.eval_step, self.metrics, self.strategy, desc=split,
                                should_stop=self._agree_stop)
        if result is None:
            return None
        row = {"epoch": self.epoch, "step": self.global_step, "stage": self.stage, "split": split, **result,
               "time": round(time.perf_counter() - self._t0, 3)}
        self.history.append(row)
        self.logger.log_metrics(row)
        log.info("eval %s epoch %d step %d: %s", split, self.epoch, self.global_step,
                 ", ".join(f"{k}={v:.4f}" for k, v in result.items() if "/" not in k))  # no per-class detail
        flat = {f"{split}_{k}": v for k, v in result.items()}
        for cb in self.callbacks:
            cb.on_evaluate(self, flat)
        return result

    def log_row(self, row: dict[str, Any]) -> None:
        """Append ``row`` (``epoch``, ``step``, ``stage``, ``split`` and numbers) to ``metrics.jsonl`` and
        :attr:`history`. Rows logged this way are saved in ``last.pt`` with the history, so a resumed run
        keeps them (``metrics.jsonl`` is rewritten from the checkpoint's history on resume; a row written
        only to the file would be lost). Per-update rows use ``split`` :data:`UPDATE_SPLIT`; log them from
        :meth:`mlcore.callbacks.Callback.on_update_end` so the update's row is in the checkpoint saved at
        that step."""
        self.history.append(row)
        self.logger.log_metrics(row)

    def _log_train(self, state: TrainState) -> None:
        """Log the mean update loss since the last train row (a ``train`` row) and reset the sums."""
        row = {"epoch": self.epoch, "step": self.global_step, "stage": self.stage, "split": "train",
               "loss": state.train_loss_sum / max(1, state.train_loss_n), "lr": state.scheduler.get_last_lr()[0],
               "time": round(time.perf_counter() - self._t0, 3)}
        state.train_loss_sum, state.train_loss_n = 0.0, 0
        self.history.append(row)
        self.logger.log_metrics(row)

    # ------------------------------------------------------------------------------------------
    def ema_decay_now(self) -> float:
        """The EMA decay of the next update: ``--ema-decay``, or with ``--ema-warmup`` timm's
        ``ModelEmaV3`` warmup ``min(decay, 1 - (1 + n) ** (-2/3))`` after n updates (0 at the first:
        the EMA starts as a copy of the weights)."""
        decay, warmup = self._ema_cfg
        n = self._ema_steps
        if not warmup:
            return decay
        return 0.0 if n <= 0 else min(decay, 1.0 - (1.0 + n) ** (-2.0 / 3.0))

    @torch.no_grad()
    def _ema_update(self, ema_params: list[torch.Tensor], params: list[torch.Tensor], _n: torch.Tensor) -> None:
        """``AveragedModel``'s multi_avg_fn: ``ema = decay * ema + (1 - decay) * param`` (foreach lerp)."""
        decay = self.ema_decay_now()
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        else:
            for e, p in zip(ema_params, params, strict=True):
                e.copy_(e * decay + p * (1.0 - decay))

    def _check_resume_shape(self, resume: Mapping[str, Any], cfg: TrainConfig, stage: str) -> int:
        """The per-rank batch to continue the epoch from; one line when the checkpoint's shape cannot continue.

        A different world size (alone, or with batch size / accumulation changed so that the effective
        batch ``B * accum * W`` stays the same) continues exactly when the samples already seen this
        epoch split evenly over the new ranks: :class:`~mlcore.data.ResumableSampler` strides ``rank::world`` over one
        seeded permutation, so after ``k`` per-rank batches of ``B`` on ``W`` ranks the epoch has
        consumed exactly its first ``k*B*W`` positions, which ``W'`` ranks resume at ``k*B*W / (B*W')``.
        The LR schedule continues from the saved update count over the new run's length.

        Returns:
            ``batch_in_epoch`` for this run's world size.

        Raises:
            ConfigError: batch size or accumulation change the effective batch, or the epoch position
                does not split evenly over the new batches (the message names both values).
        """
        saved = {"world size": resume.get("world_size"), "--batch-size": resume.get("batch_size"),
                 "--accum-steps": resume.get("accum_steps")}
        now = {"world size": self.world_size, "--batch-size": cfg.batch_size, "--accum-steps": cfg.accum_steps}
        diff = [k for k in saved if saved[k] is not None and saved[k] != now[k]]
        batch_in_epoch = int(resume["batch_in_epoch"])
        if diff and saved["world size"] is not None and saved["--batch-size"] is not None:
            old_b, old_w = int(saved["--batch-size"]), int(saved["world size"])
            old_accum = int(saved["--accum-steps"] or cfg.accum_steps)
            seen = batch_in_epoch * old_b * old_w  # samples of the epoch consumed (strided sampler)
            per_batch = cfg.batch_size * self.world_size
            same_effective = old_b * old_accum * old_w == cfg.batch_size * cfg.accum_steps * self.world_size
            if seen % per_batch == 0 and (same_effective or diff == ["world size"]):
                log.info("resuming stage %s with %s from a checkpoint of %s: %d samples of the epoch already "
                         "seen -> batch %d of each rank; effective batch %d -> %d", stage,
                         ", ".join(f"{k} {now[k]}" for k in diff), ", ".join(f"{k} {saved[k]}" for k in diff),
                         seen, seen // per_batch, old_b * old_accum * old_w,
                         cfg.batch_size * cfg.accum_steps * self.world_size)
                return seen // per_batch
        if diff:
            raise ConfigError(
                f"--resume {self.config.resume}: stage {stage} was checkpointed with "
                + ", ".join(f"{k} {saved[k]}" for k in diff) + "; this run has "
                + ", ".join(f"{k} {now[k]}" for k in diff)
                + ": resume with the same values (the position in the epoch and the schedule depend on them; "
                  "a world size change continues only where the epoch's samples seen split evenly over the ranks)")
        return batch_in_epoch

    def _eval_weights(self) -> dict[str, torch.Tensor]:
        if self.ema is not None:
            return self.ema.module.state_dict()
        if self.sharded:  # a collective: every rank gathers, rank 0 gets the full weights
            broadcast_buffers(self.raw_model)
            return gather_full_state_dict(self.raw_model)
        return model_state_dict(self.raw_model)

    def eval_module(self) -> torch.nn.Module | None:
        """The evaluated model (EMA if on) as a plain module, for examples and exports after training.

        Under FSDP a collective (every rank must call it) returning an unsharded CPU copy on rank 0
        and None elsewhere; otherwise the module itself on every rank.
        """
        if self.ema is not None:
            return self.ema.module
        if self.sharded:
            broadcast_buffers(self.raw_model)
            return unsharded_copy(self.raw_model, self._skeleton)
        return unwrap_model(self.raw_model)

    def save_weights(self, name: str, extra: Mapping[str, Any] | None = None) -> Path | None:
        """Write ``checkpoints/<name>`` with the evaluated weights (EMA if on) and the config only.
        Called on every rank (under FSDP the weights are gathered collectively); rank 0 writes."""
        weights = self._eval_weights() if self.sharded else None
        if not is_main_process():
            return None
        obj = {"model": weights if weights is not None else self._eval_weights(), "weights": "ema" if self.ema is not None else "raw",
               "config": self.config.to_dict(), "domain": config_domain(self.config),
               "architectures": model_architectures(self.raw_model),  # timm archs (mlcore.checkpoint.check_architectures)
               "epoch": self.epoch,
               "step": self.global_step, "stage": self.stage, **(extra or {})}
        return self._write_checkpoint(obj, name)

    def _write_checkpoint(self, obj: dict[str, Any], name: str) -> Path:
        """Write ``checkpoints/<name>`` atomically (+ its alias).

        Raises:
            NonFiniteLossError: a weight tensor is NaN/inf; nothing is written (never a poisoned file).
        """
        for key in ("model", "ema"):
            bad = _first_non_finite(obj.get(key))
            if bad is not None:
                raise NonFiniteLossError(f"not writing {self.logger.ckpt_dir / name}: {key} tensor {bad!r} holds "
                                         f"NaN/inf at optimizer step {self.global_step}")
        path = atomic_save(obj, self.logger.ckpt_dir / name)
        if name in self.checkpoint_aliases:
            link_alias(path, path.with_name(self.checkpoint_aliases[name]))
        return path

    def _save_last(self, ts: TrainState, *, rng: dict[str, Any] | None = None,
                   pending_eval: str | None = None) -> None:
        """Write ``checkpoints/last.pt`` (``last.dcp/`` under FSDP) at the position ``ts`` says (+ the
        ``--keep-last`` step copy)."""
        if not is_main_process() and not self.sharded:
            return
        state = {
            "scheduler": ts.scheduler.state_dict(),
            "scaler": ts.scaler.state_dict(),
            "weights": "raw",  # "model" holds the raw weights; "ema" the EMA (AveragedModel state) if on
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "world_size": self.world_size,
            "batch_size": ts.cfg.batch_size,
            "accum_steps": ts.cfg.accum_steps,
            "stage": self.stage,
            "completed_stages": list(self.completed_stages),
            "epoch": ts.epoch,
            "batch_in_epoch": ts.batch_in_epoch,
            "stage_step": ts.stage_step,
            "global_step": self.global_step,
            "micro_split": self.micro_split,
            "rng": rng if rng is not None else get_rng_state(),
            "pending_eval": pending_eval,  # "step"/"epoch": the evaluation here was cut short by a signal
            "sampler": {"epoch": ts.epoch, "start_batch": ts.batch_in_epoch},
            "callbacks": self._callback_states(),
            "bad_steps": self.bad_steps,
            "best": self.best_checkpoint.best,
            "history": self.history,
            "train_loss": (ts.train_loss_sum, ts.train_loss_n),
            "config": self.config.to_dict(),  # the run's base config (= config.yaml)
            "stage_config": ts.cfg.to_dict(),  # this stage's overrides applied
            "domain": config_domain(self.config),
            "architectures": model_architectures(self.raw_model),
        }
        if self.sharded:  # every rank writes its shards: checkpoints/last.dcp (mlcore.dcp)
            broadcast_buffers(self.raw_model)
            if not all_finite(self.raw_model):  # never a poisoned checkpoint (all ranks raise together)
                raise NonFiniteLossError(f"not writing {self.logger.ckpt_dir / SHARDED_DIR}: the weights hold "
                                         f"NaN/inf at optimizer step {self.global_step}")
            path = save_sharded(self.logger.ckpt_dir / SHARDED_DIR, self.raw_model, ts.optimizer, state)
            remove_stale(self.logger.ckpt_dir, SHARDED_DIR)
        else:
            state.update(model=model_state_dict(self.raw_model), optimizer=ts.optimizer.state_dict())
            path = self._write_checkpoint(state, "last.pt")
            remove_stale(self.logger.ckpt_dir, "last.pt")
        self._last_saved = (path, self.global_step)
        self._keep_step_checkpoint(path)

    def _keep_step_checkpoint(self, last: Path) -> None:
        """``--keep-last N``: keep this save of ``last`` as ``checkpoints/step_NNNNNN.pt`` (``.dcp/``), a hard
        link (no extra disk, same content), and delete the older ones beyond N (global rank 0 only)."""
        keep = self.config.keep_last
        if not keep or not is_main_process():
            return
        kept = link_checkpoint(last, last.with_name(step_checkpoint_name(self.global_step, last.is_dir())))
        for gone in prune_step_checkpoints(last.parent, keep, self.global_step):
            log.info("--keep-last %d: removed %s", keep, gone.name)
        log.debug("kept %s", kept)

    def link_checkpoint(self, src: str, name: str) -> Path | None:
        """Make ``checkpoints/<name>`` the same file as ``checkpoints/<src>`` (a hard link, see
        :func:`~mlcore.checkpoint.link_checkpoint`) and renew ``name``'s alias; global rank 0 only."""
        if not is_main_process():
            return None
        path = link_checkpoint(self.logger.ckpt_dir / src, self.logger.ckpt_dir / name)
        if name in self.checkpoint_aliases:
            link_alias(path, path.with_name(self.checkpoint_aliases[name]))
        return path

    def remove_checkpoint(self, name: str) -> None:
        """Delete ``checkpoints/<name>`` (a retention callback dropping a file); global rank 0 only."""
        if is_main_process():
            remove_checkpoint(self.logger.ckpt_dir / name)

    # ------------------------------------------------------------------------------------------
    def _callback_keys(self) -> list[str]:
        keys: list[str] = []
        for cb in self.callbacks:
            key, n = cb.state_key, 1
            while key in keys:
                n += 1
                key = f"{cb.state_key}#{n}"
            keys.append(key)
        return keys

    def _callback_states(self) -> dict[str, Any]:
        """``{state_key: state}`` of every callback (matched by key on resume, not by position)."""
        return {k: cb.state_dict() for k, cb in zip(self._callback_keys(), self.callbacks, strict=True)}

    def _load_callback_states(self, saved: Mapping[str, Any] | Sequence[Any]) -> None:
        if not isinstance(saved, Mapping):  # checkpoints written before states were keyed: no safe match
            saved = {}
        for key, cb in zip(self._callback_keys(), self.callbacks, strict=True):
            if key in saved:
                cb.load_state_dict(saved[key])
            else:
                log.info("callback %s has no state in the checkpoint (new on this resume): it starts fresh", key)

    # ------------------------------------------------------------------------------------------
    def _batches_per_epoch(self, loader: DataLoader) -> int:
        sampler = find_resumable_sampler(loader)
        if sampler is None:
            return len(loader)
        n = sampler.per_replica
        return n // loader.batch_size if loader.drop_last else math.ceil(n / loader.batch_size)

    def _summary(self, cfg: TrainConfig, completed: bool = True) -> dict[str, Any]:
        train_time = self._stats["train_time"]
        evals = [r for r in self.history if r["split"] != "train"]
        return {
            "completed": completed,
            "stage": self.stage,
            "completed_stages": self.completed_stages,
            "epochs": self.epoch,
            "steps": self.global_step,
            "best": self.best_checkpoint.best,
            "final": evals[-1] if evals else None,
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
            "train_time_s": round(train_time, 3),
            "samples_per_s": round(self._stats["samples"] / train_time, 3) if train_time else None,
            "data_wait_fraction": round(self._stats["data_time"] / train_time, 4) if train_time else None,
            "effective_batch": cfg.batch_size * cfg.accum_steps * self.world_size,
            "micro_batch": math.ceil(cfg.batch_size / self.micro_split),
            "accum_steps": cfg.accum_steps * self.micro_split,
            "oom_backoffs": self.oom_backoffs,
            "world_size": self.world_size,
            **self.strategy.describe(),
            "peak_memory_mb": self.strategy.peak_memory_mb(),
        }

    def _finish(self, cfg: TrainConfig, completed: bool) -> dict[str, Any]:
        summary = self._summary(cfg, completed)
        self.logger.write_summary(summary)
        return summary

    def close(self) -> None:
        """Flush and close TensorBoard (the process group stays up: see ``destroy_distributed``)."""
        self.logger.close()

    # ---- stop signals -------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        """Handle SIGINT, SIGTERM and SIGUSR1 during :meth:`fit`: the first one finishes the current
        update, saves ``last.pt`` and raises :class:`TrainingInterrupted`; a second one raises
        :class:`TrainingAborted` at once. Only the main thread can install handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        prev = {}
        for name in _STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                prev[sig] = signal.signal(sig, self._on_stop_signal)
        return prev

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal:
            raise TrainingAborted(signum)
        self._stop_signal = signum
        log.warning("%s received: finishing the current update, then saving last.pt and stopping "
                    "(send it again to stop at once)", _signal_name(signum))

    @staticmethod
    def _restore_signal_handlers(prev: Mapping[int, Any]) -> None:
        for sig, handler in prev.items():
            signal.signal(sig, handler)

    def _agree_stop(self) -> int:
        """The stop signal to honour now: this process's, or under DDP any rank's (an all-reduce, so
        every rank must call it at the same point)."""
        if not self.distributed:
            return self._stop_signal
        t = torch.tensor([float(self._stop_signal > 0), float(self._stop_signal)], device=self.strategy.device)
        t = all_reduce_sum(t)
        n = int(t[0])
        self._agreed_stop = int(t[1]) // n if n else 0
        return self._agreed_stop

    def _interrupted(self, signum: int) -> TrainingInterrupted:
        self._stop_signal = self._agreed_stop = 0  # honoured: a later fit() (library use) starts afresh
        return TrainingInterrupted(signum, self.logger.ckpt_dir / "last.pt", self.global_step, self.run_dir)

    def _evaluate_or_interrupt(self, loader: DataLoader, state: TrainState, kind: str) -> None:
        """Evaluate (+ callbacks); a stop signal during it abandons it, saves ``last.pt`` marked
        ``pending_eval`` with the RNG state from before it (so the resumed run repeats it exactly)
        and raises :class:`TrainingInterrupted`."""
        rng = get_rng_state()
        if self._evaluate_and_callbacks(loader) is None:
            self._save_last(state, rng=rng, pending_eval=kind)
            self._finish(state.cfg, completed=False)
            raise self._interrupted(self._agreed_stop or self._stop_signal)


@torch.inference_mode()
def evaluate_model(model: torch.nn.Module, loader: DataLoader, step: StepFn, metrics: Sequence[Metric] = (),
                   strategy: DeviceStrategy | None = None, *, desc: str = "eval",
                   should_stop: Callable[[], int | bool] | None = None) -> dict[str, float] | None:
    """Mean loss (weighted by batch size) and every metric over ``loader``, as ``{name: float}``.

    Runs ``step(model, batch)`` under ``torch.inference_mode`` and the strategy's autocast, with
    the model in eval mode (restored afterwards). Metric states live on the strategy's metric
    device and are summed across ranks before ``compute`` under DDP. Used by
    :meth:`Trainer.evaluate` and by the domains' ``<domain>-eval`` commands.

    ``should_stop`` (the trainer's stop-signal check) is called before every batch; when it is true
    the evaluation is abandoned and None returned. Under DDP it must agree across ranks (it is an
    all-reduce), so it is only called for the batches every rank has (the minimum over ranks).
    """
    strategy = strategy or build_strategy("cpu")
    was_training = model.training
    model.eval()
    mdev = strategy.metric_device
    for m in metrics:
        m.reset()
        m.to(mdev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=strategy.device)
    count = torch.zeros((), dtype=torch.float64, device=strategy.device)
    checked = len(loader) if should_stop is not None else 0
    if checked and is_distributed():  # evaluation shards are not padded: ranks may have a batch less
        n = torch.tensor([checked], device=strategy.device)
        torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
        checked = int(n)
    batches = tqdm(loader, desc=desc, disable=None if is_main_process() else True, leave=False)
    # FSDP: every rank runs the same number of forwards (a short rank replays its last batch, not counted)
    for i, (batch, real) in enumerate(lockstep(batches, is_fsdp(model), strategy.device)):
        if i < checked and should_stop():
            model.train(was_training)
            return None
        batch = strategy.to_device(batch)
        with strategy.autocast():
            out = _as_outputs(step(model, batch))
        if not real:
            continue
        n = batch_size_of(batch)
        loss_sum += out["loss"].double() * n
        count += n
        if metrics:
            out_m = map_tensors(out, lambda t: t.detach().to(mdev))
            batch_m = map_tensors(batch, lambda t: t.to(mdev)) if mdev != strategy.device else batch
            for m in metrics:
                m.update(out_m, batch_m)
    loss_sum, count = all_reduce_sum(loss_sum), all_reduce_sum(count)
    result = {"loss": float(loss_sum / count.clamp(min=1))}
    for m in metrics:
        if is_distributed():
            m.sync(lambda t: all_reduce_sum(t.to(strategy.device)).to(mdev))
        result.update(m.compute())
    model.train(was_training)
    return result


def _first_non_finite(state: Any) -> str | None:
    """Name of the first floating-point tensor of a state dict holding NaN/inf (None if all finite)."""
    if not isinstance(state, Mapping):
        return None
    for k, v in state.items():
        if isinstance(v, Mapping):
            inner = _first_non_finite(v)
            if inner is not None:
                return f"{k}.{inner}"
        elif isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return str(k)
    return None


def _log_stage_config_changes(saved: Mapping[str, Any] | None, cfg: TrainConfig, stage: str) -> None:
    """On resume, name the options of the interrupted stage that differ from its saved config."""
    if not saved:
        return
    now = cfg.to_dict()
    changed = sorted(k for k in now if k in saved and k not in ("resume", "max_steps") and saved[k] != now[k])
    if changed:
        log.warning("resuming stage %s with options changed since the checkpoint: %s", stage,
                    ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in changed))


def with_overrides(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``config`` with some fields changed (per-stage configs for multi-stage runs)."""
    return replace(config, **changes)

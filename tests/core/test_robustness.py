"""Regression tests of issue 11: stage configs and resume, callback states, non-finite gradients."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import yaml

from mlcore import EarlyStopping, NonFiniteLossError, Trainer
from mlcore.checkpoint import load_checkpoint
from mlcore.testing import Accuracy, TinyCNN, classification_step
from mlcore.trainer import with_overrides


def _all_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _all_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _all_tensors(v)


def _assert_every_checkpoint_finite(run_dir):
    files = sorted((run_dir / "checkpoints").rglob("*.pt"))
    assert files
    for f in files:
        for t in _all_tensors(load_checkpoint(f)):
            if t.is_floating_point():
                assert torch.isfinite(t).all(), f


def test_config_yaml_stays_the_base_config(toy):
    """Defect 2: a per-stage config used to overwrite config.yaml, which --resume reads as the base."""
    trainer, train, val = toy(epochs=3, lr=0.05, max_steps=3)
    stage1 = with_overrides(trainer.config, epochs=1, lr=0.2)
    summary = trainer.fit(train, val, stage="frozen", config=stage1)
    assert not summary["completed"]
    saved = yaml.safe_load((trainer.run_dir / "config.yaml").read_text())
    assert saved["epochs"] == 3 and saved["lr"] == 0.05
    last = load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")
    assert last["config"]["lr"] == 0.05 and last["stage_config"]["lr"] == 0.2
    assert last["stage_config"]["epochs"] == 1


def test_resume_with_a_new_callback_starts_it_fresh(toy, caplog):
    """Defect 5: states were matched by position (adding early stopping raised KeyError 'bad_evals')."""
    trainer, train, val = toy(epochs=2, max_steps=12)
    trainer.fit(train, val)
    cfg = dataclasses.replace(trainer.config, resume=str(trainer.run_dir), max_steps=None,
                              early_stopping_patience=5, monitor="val_top1", monitor_mode="max")
    with caplog.at_level(logging.INFO, logger="mlcore.trainer"):
        resumed = Trainer(TinyCNN(), cfg, classification_step, metrics=[Accuracy()], run_dir=trainer.run_dir)
    assert "EarlyStopping[val_top1] has no state in the checkpoint" in caplog.text
    early = next(cb for cb in resumed.callbacks if isinstance(cb, EarlyStopping))
    assert early.bad_evals == 0 and early.best is None
    assert resumed.best_checkpoint.best == trainer.best_checkpoint.best  # matched by key, not position
    resumed.fit(train, val)
    assert resumed.global_step == 20
    last = load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")
    assert set(last["callbacks"]) == {"EarlyStopping[val_top1]", "BestCheckpoint"}


def _nan_grad_step(at_call):
    """A classification step whose gradient (not loss) is NaN at one call."""
    calls = {"n": 0, "hook": None}

    def step(model, batch):
        if not model.training:  # evaluation
            return classification_step(model, batch)
        calls["n"] += 1
        if calls["hook"] is not None:
            calls["hook"].remove()
            calls["hook"] = None
        if calls["n"] == at_call:
            calls["hook"] = model.head.weight.register_hook(lambda g: torch.full_like(g, float("nan")))
        return classification_step(model, batch)

    return step


@pytest.mark.parametrize("clip", [1.0, None])
def test_nan_gradients_never_reach_a_checkpoint(toy, clip):
    """Defect 3 bar: a finite loss with NaN gradients used to update the weights and save them."""
    trainer, train, val = toy(epochs=1, step=_nan_grad_step(3), clip_grad_norm=clip, checkpoint_every_steps=1,
                              eval_every_steps=1)
    with pytest.raises(NonFiniteLossError, match="gradient norm.*optimizer step 3") as err:
        trainer.fit(train, val)
    assert "last good" not in str(err.value) and "optimizer step 2, finite weights" in str(err.value)
    assert load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")["global_step"] == 2
    _assert_every_checkpoint_finite(trainer.run_dir)
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())


def test_max_bad_steps_skips_the_update_with_a_log_line(toy, caplog):
    trainer, train, val = toy(epochs=1, step=_nan_grad_step(3), max_bad_steps=1, checkpoint_every_steps=1)
    ref, _, _ = toy(epochs=1, out=str(trainer.run_dir.parent / "ref"))
    with caplog.at_level(logging.WARNING, logger="mlcore.trainer"):
        summary = trainer.fit(train, val)
    assert summary["completed"] and trainer.global_step == 10 and trainer.bad_steps == 1
    lines = [r.getMessage() for r in caplog.records if "skipping optimizer step" in r.getMessage()]
    assert lines == ["skipping optimizer step 3: non-finite gradient norm (nan); 1 of --max-bad-steps 1 "
                     "skipped so far"]
    _assert_every_checkpoint_finite(trainer.run_dir)
    assert load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")["bad_steps"] == 1


def test_a_checkpoint_with_non_finite_weights_is_never_written(toy):
    trainer, train, val = toy(epochs=1, max_steps=1)
    trainer.fit(train, val)
    before = (trainer.run_dir / "checkpoints" / "last.pt").read_bytes()
    with torch.no_grad():
        trainer.raw_model.head.bias[0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="head.bias"):
        trainer.save_weights("last.pt")
    assert (trainer.run_dir / "checkpoints" / "last.pt").read_bytes() == before


def _two_stage(trainer, train, val):
    """Freeze-then-finetune as foodrec/plantid do it: stage 2 only once stage 1 completed."""
    features = list(trainer.raw_model.features.parameters())
    for p in features:
        p.requires_grad_(False)
    trainer.fit(train, val, stage="frozen", config=with_overrides(trainer.config, epochs=1, lr=0.1))
    for p in features:
        p.requires_grad_(True)
    if "frozen" in trainer.completed_stages:
        trainer.fit(train, val, stage="finetune")
    return trainer


@pytest.mark.parametrize("stop", ["max_steps", "SIGTERM"])
def test_two_stage_run_stopped_in_stage1_resumes_bitwise(toy, tmp_path, params_of, stop):
    """Issue 11 bar: stopped inside stage 1 (--max-steps or SIGTERM) and resumed == uninterrupted (CPU, workers)."""
    import os
    import signal

    from mlcore.trainer import TrainingInterrupted

    common = dict(n_train=40, epochs=2, batch_size=4, lr=0.05, optimizer="adamw", ema_decay=0.9,
                  num_workers=2, warmup_steps=2, clip_grad_norm=1.0)
    full = _two_stage(*toy(out=str(tmp_path / "full"), **common))
    assert full.completed_stages == ["frozen", "finetune"] and full.global_step == 30

    calls = {"n": 0}

    def step(model, batch):
        if model.training:
            calls["n"] += 1
            if calls["n"] == 6:
                os.kill(os.getpid(), signal.SIGTERM)
        return classification_step(model, batch)

    if stop == "max_steps":
        part = _two_stage(*toy(out=str(tmp_path / "part"), max_steps=4, **common))
        assert part.global_step == 4 and part.completed_stages == []
    else:
        with pytest.raises(TrainingInterrupted) as err:
            _two_stage(*toy(out=str(tmp_path / "part"), step=step, **common))
        assert err.value.signum == signal.SIGTERM and err.value.step == 6
    trainer, train, val = toy(out=str(tmp_path / "part"), model_seed=123, **common)
    cfg = dataclasses.replace(trainer.config, resume=str(tmp_path / "part"))
    resumed = _two_stage(Trainer(TinyCNN(), cfg, classification_step, metrics=[Accuracy()]), train, val)
    assert resumed.completed_stages == ["frozen", "finetune"] and resumed.global_step == 30
    a, b = params_of(full), params_of(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for x, y in zip(full.ema.module.state_dict().values(), resumed.ema.module.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


class FakeOOM(RuntimeError):
    """Stands in for torch.OutOfMemoryError through the strategy's is_oom."""


def test_oom_retry_equals_a_run_started_with_the_smaller_micro_batch(toy, tmp_path, monkeypatch):
    """Issue 11 defect 4: the failed attempt's forward updated BatchNorm statistics and consumed dropout RNG."""
    def step(model, batch):
        out = classification_step(model, batch)  # the forward runs first, as a real OOM in backward would
        if model.training and batch["image"].shape[0] > 2:
            raise FakeOOM("CUDA out of memory (simulated)")
        return out

    oom, train, _ = toy(epochs=1, step=step, out=str(tmp_path / "oom"))
    monkeypatch.setattr(oom.strategy, "is_oom", lambda exc: isinstance(exc, FakeOOM))
    oom.fit(train)
    assert oom.micro_split == 2 and oom.oom_backoffs == 1
    clean, train2, _ = toy(epochs=1, out=str(tmp_path / "clean"))
    clean.micro_split = 2
    clean.fit(train2)
    a, b = oom.raw_model.state_dict(), clean.raw_model.state_dict()
    for k in a:  # parameters and buffers (BN running stats, num_batches_tracked)
        assert torch.equal(a[k], b[k]), k


def test_cuda_auto_precision_ignores_emulated_bf16(monkeypatch):
    """Issue 11 defect 6: is_bf16_supported() defaults to including_emulation=True (yes on T4/V100)."""
    from mlcore.devices import CUDAStrategy

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert CUDAStrategy("auto").precision == "fp16"  # emulated only: fp16 + GradScaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert CUDAStrategy("auto").precision == "bf16"


def test_resume_with_another_batch_size_stops_naming_both_values(toy):
    """Issue 11 defect 8: the position in the epoch is in per-rank batches; another batch size resumed silently."""
    from mlcore.config import ConfigError

    trainer, train, val = toy(epochs=2, max_steps=3)
    trainer.fit(train, val)
    last = load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")
    assert (last["world_size"], last["batch_size"], last["accum_steps"]) == (1, 4, 1)
    cfg = dataclasses.replace(trainer.config, resume=str(trainer.run_dir), max_steps=None, batch_size=8)
    resumed = Trainer(TinyCNN(), cfg, classification_step, metrics=[Accuracy()], run_dir=trainer.run_dir)
    with pytest.raises(ConfigError, match=r"checkpointed with --batch-size 4; this run has --batch-size 8"):
        resumed.fit(train, val)


def test_checkpoints_get_the_umask_mode_and_say_which_weights(toy, tmp_path):
    """Issue 11 item 9: mkstemp made every checkpoint 0600; last.pt/best_*.pt did not say raw or EMA."""
    import os

    old = os.umask(0o022)
    try:
        trainer, train, val = toy(epochs=1, ema_decay=0.9)
        trainer.fit(train, val)
    finally:
        os.umask(old)
    ckpt = trainer.run_dir / "checkpoints"
    for name in ("last.pt", "best_val_loss.pt"):
        assert (ckpt / name).stat().st_mode & 0o777 == 0o644, name
    assert (trainer.run_dir / "summary.json").stat().st_mode & 0o777 == 0o644
    assert load_checkpoint(ckpt / "last.pt")["weights"] == "raw"
    best = load_checkpoint(ckpt / "best_val_loss.pt")
    assert best["weights"] == "ema"


def test_ema_is_kept_across_stages(toy):
    """Issue 11 item 9: the EMA was rebuilt (restarted from the current weights) at every stage."""
    trainer, train, val = toy(epochs=1, ema_decay=0.9)
    trainer.fit(train, val, stage="a")
    ema = trainer.ema
    trainer.fit(train, val, stage="b")
    assert trainer.ema is ema and int(ema.n_averaged) == trainer.global_step == 20


def test_ema_warmup_follows_timm_model_ema_v3(toy):
    trainer, train, _ = toy(epochs=1, ema_decay=0.99, ema_warmup=True, max_steps=1)
    trainer.fit(train)  # sets the stage's EMA config
    trainer._ema_steps = 0
    assert trainer.ema_decay_now() == 0.0  # the first update copies the weights
    trainer._ema_steps = 1
    assert trainer.ema_decay_now() == pytest.approx(1 - 2 ** (-2 / 3))  # timm: 1 - (1 + step) ** -power
    trainer._ema_steps = 10**6
    assert trainer.ema_decay_now() == 0.99


def test_resume_on_another_world_size_converts_the_epoch_position_or_stops(toy):
    """Issue 11 item 8 + FSDP bar: a 2-process checkpoint resumes in 1 process at the same sample of the
    epoch (strided sampler: k batches x B x W samples seen); an uneven split stops with one line."""
    from mlcore.config import ConfigError

    trainer, train, val = toy(epochs=1)
    resume = {"world_size": 2, "batch_size": 4, "accum_steps": 1, "batch_in_epoch": 3}
    trainer.world_size = 1
    cfg = trainer.config
    assert trainer._check_resume_shape(resume, cfg, "main") == 6  # 3 x 4 x 2 samples = 6 batches of 4
    trainer.world_size = 4  # 24 samples over 4 ranks of 4: 1.5 batches each -> refused
    with pytest.raises(ConfigError, match=r"world size 2; this run has world size 4"):
        trainer._check_resume_shape(resume, cfg, "main")
    trainer.world_size = 3  # 24 samples = 2 batches on each of 3 ranks
    assert trainer._check_resume_shape(resume, cfg, "main") == 2
    # 2 x 4 -> 1 x 8: the same effective batch, 24 samples = 3 batches of 8
    cfg8 = dataclasses.replace(cfg, batch_size=8)
    trainer.world_size = 1
    assert trainer._check_resume_shape(resume, cfg8, "main") == 3


def test_train_split_smaller_than_one_batch_is_one_config_error(toy):
    """A small folder with drop_last gave 0 batches per epoch and a scheduler ValueError traceback
    (foodrec-train on a 9-photo folder at --batch-size 16); now one line naming the flag."""
    from mlcore.config import ConfigError
    from mlcore.data import make_loader
    from mlcore.testing import NoisyBlobs

    trainer, _, val = toy(epochs=1)
    tiny = make_loader(NoisyBlobs(3), batch_size=4, shuffle=True, seed=0, drop_last=True)
    with pytest.raises(ConfigError, match=r"--batch-size 4: the train split has 3 sample\(s\)"):
        trainer.fit(tiny, val)

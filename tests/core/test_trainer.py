"""Trainer loop: accumulation, evaluation, stability, callbacks, run directory."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from mlcore import NonFiniteLossError, TrainConfig, Trainer, make_loader
from mlcore.checkpoint import load_checkpoint
from mlcore.metrics import Metric
from mlcore.schedulers import lr_factor


class Regression(TensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return {"x": x, "y": y}


def _linear_run(tmp_path, name, *, n, batch_size, accum, epochs=2, step=None):
    """SGD on a linear model (no BN, no dropout): gradients depend only on the samples in a window."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 5, generator=g), torch.randn(n, 1, generator=g)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    cfg = TrainConfig(out=str(tmp_path / name), epochs=epochs, batch_size=batch_size, accum_steps=accum,
                      lr=0.1, optimizer="sgd", momentum=0.0, clip_grad_norm=None, num_workers=0)

    def mse(model, batch):
        return F.mse_loss(model(batch["x"]), batch["y"])

    trainer = Trainer(model, cfg, step or mse)
    loader = make_loader(Regression(x, y), batch_size=batch_size, shuffle=False)
    trainer.fit(loader)
    return trainer


def test_accumulation_matches_one_big_batch_with_short_last_window(tmp_path):
    # 22 samples, micro-batch 3, accum 2: windows of 6 samples, last window 4 samples (3 + 1)
    acc = _linear_run(tmp_path, "acc", n=22, batch_size=3, accum=2)
    big = _linear_run(tmp_path, "big", n=22, batch_size=6, accum=1)
    assert acc.global_step == big.global_step == 4 * 2
    for (k, a), b in zip(acc.raw_model.state_dict().items(), big.raw_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


def test_unnormalised_accumulation_would_differ(tmp_path):
    """Guard that the comparison above can fail: summing micro losses without the 1/window factor differs."""

    def summed(model, batch):  # mean loss * n_micro_batches: what skipping normalisation does
        return F.mse_loss(model(batch["x"]), batch["y"]) * 2

    acc = _linear_run(tmp_path, "acc2", n=22, batch_size=3, accum=2, step=summed)
    big = _linear_run(tmp_path, "big2", n=22, batch_size=6, accum=1)
    diff = max((a - b).abs().max() for a, b in zip(acc.raw_model.state_dict().values(),
                                                    big.raw_model.state_dict().values(), strict=True))
    assert diff > 1e-3


def test_scheduler_steps_once_per_optimizer_update(toy):
    trainer, train, val = toy(n_train=40, batch_size=4, accum_steps=3, epochs=2, warmup_steps=2,
                              scheduler="cosine", min_lr=0.0)
    trainer.fit(train)
    # 10 batches/epoch -> ceil(10/3) = 4 updates/epoch -> 8 updates
    assert trainer.global_step == 8
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    want = 0.05 * lr_factor(4, name="cosine", total_steps=8, warmup_steps=2)
    assert train_rows[0]["lr"] == pytest.approx(want)


class MeanOfValues(Metric):
    """Mean of the first feature over all samples: a split-level value, not a mean of batch means."""

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64))
        self.add_state("count", torch.zeros((), dtype=torch.float64))

    def update(self, outputs, batch):
        self.total += batch["x"][:, 0].double().sum()
        self.count += batch["x"].shape[0]

    def compute(self):
        return {"mean_x0": float(self.total / self.count)}


def test_evaluate_runs_in_inference_mode_over_whole_split(tmp_path):
    x = torch.arange(7, dtype=torch.float32).reshape(7, 1).repeat(1, 5)
    y = torch.zeros(7, 1)
    seen = []

    def step(model, batch):
        seen.append(torch.is_inference_mode_enabled())
        return F.mse_loss(model(batch["x"]), batch["y"])

    model = nn.Linear(5, 1)
    trainer = Trainer(model, TrainConfig(out=str(tmp_path / "r"), num_workers=0), step, metrics=[MeanOfValues()])
    loader = make_loader(Regression(x, y), batch_size=3, shuffle=False)  # batches of 3, 3, 1
    result = trainer.evaluate(loader)
    assert all(seen)
    assert result["mean_x0"] == pytest.approx(3.0)  # mean of batch means would be (1 + 4 + 6) / 3
    with torch.no_grad():
        want = F.mse_loss(model(x), y).item()
    assert result["loss"] == pytest.approx(want, rel=1e-5)


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(toy):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        loss = F.cross_entropy(model(batch["image"]), batch["label"])
        return loss * float("nan") if calls["n"] == 3 else loss

    trainer, train, _ = toy(step=step, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError, match="optimizer step 3"):
        trainer.fit(train)
    last = load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_gradient_clipping_bounds_the_update(tmp_path):
    x, y = torch.randn(8, 5), 1e4 * torch.ones(8, 1)
    model = nn.Linear(5, 1)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(out=str(tmp_path / "c"), epochs=1, batch_size=8, lr=1.0, optimizer="sgd", momentum=0.0,
                      clip_grad_norm=0.5, num_workers=0)
    trainer = Trainer(model, cfg, lambda m, b: F.mse_loss(m(b["x"]), b["y"]))
    trainer.fit(make_loader(Regression(x, y), batch_size=8, shuffle=False))
    delta = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert delta.item() == pytest.approx(0.5, rel=1e-4)  # lr 1 x clipped grad norm 0.5


def test_ema_follows_closed_form(tmp_path):
    x, y = torch.randn(12, 5), torch.randn(12, 1)
    model = nn.Linear(5, 1)
    cfg = TrainConfig(out=str(tmp_path / "e"), epochs=1, batch_size=4, lr=0.1, optimizer="sgd", momentum=0.0,
                      clip_grad_norm=None, ema_decay=0.5, num_workers=0)
    weights = []
    trainer = Trainer(model, cfg, lambda m, b: F.mse_loss(m(b["x"]), b["y"]))
    orig = trainer._optimizer_step

    def spy(*a, **k):
        out = orig(*a, **k)
        weights.append(model.weight.detach().clone())
        return out

    trainer._optimizer_step = spy
    trainer.fit(make_loader(Regression(x, y), batch_size=4, shuffle=False))
    # torch's AveragedModel takes the weights after the first update as-is, then
    # ema = d * ema + (1 - d) * w after each later update
    ema = weights[0]
    for w in weights[1:]:
        ema = 0.5 * ema + 0.5 * w
    torch.testing.assert_close(trainer.ema.module.weight, ema)
    assert not torch.allclose(ema, model.weight)


class Scripted(Metric):
    """Returns a scripted sequence of values, one per evaluation."""

    def __init__(self, values):
        super().__init__()
        self.values, self.calls = list(values), 0

    def update(self, outputs, batch):
        pass

    def compute(self):
        self.calls += 1
        return {"score": self.values[self.calls - 1]}


def test_early_stopping_and_best_checkpoints(toy, tmp_path):
    trainer, train, val = toy(epochs=10, monitor="val_score", monitor_mode="max", early_stopping_patience=2,
                              early_stopping_min_delta=0.01)
    trainer.metrics = [Scripted([0.5, 0.7, 0.705, 0.69, 0.9, 0.95])]
    summary = trainer.fit(train, val)
    # 0.705 is not an improvement beyond min_delta; 0.69 makes two bad evaluations -> stop after epoch 4
    assert summary["epochs"] == 4
    best = load_checkpoint(trainer.run_dir / "checkpoints" / "best_val_score.pt")
    assert best["value"] == pytest.approx(0.705) and set(best) >= {"model", "config"}
    assert "optimizer" not in best
    assert summary["best"]["val_score"]["value"] == pytest.approx(0.705)


def test_several_best_checkpoints(toy):
    from mlcore.callbacks import BestCheckpoint

    trainer, train, val = toy(epochs=3)
    trainer.callbacks.append(BestCheckpoint([("val_top1", "max"), ("val_loss", "min")]))
    trainer.fit(train, val)
    ckpts = trainer.run_dir / "checkpoints"
    assert (ckpts / "best_val_top1.pt").is_file() and (ckpts / "best_val_loss.pt").is_file()


def test_run_directory_contract(toy):
    trainer, train, val = toy(epochs=2, eval_every_epochs=1)
    summary = trainer.fit(train, val)
    trainer.close()
    run = trainer.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "train.log"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train", "val", "train", "val"]
    assert all({"epoch", "step", "loss", "time"} <= set(r) for r in rows)
    saved = json.loads((run / "summary.json").read_text())
    assert saved["samples_per_s"] > 0 and 0 <= saved["data_wait_fraction"] < 1
    assert saved["steps"] == summary["steps"] == 20
    assert {"wall_time_s", "device", "peak_memory_mb", "best", "final"} <= set(saved)


def test_eval_every_steps(toy):
    trainer, train, val = toy(epochs=1, eval_every_steps=4, eval_every_epochs=5)
    trainer.fit(train, val)
    evals = [r for r in trainer.history if r["split"] == "val"]
    assert [r["step"] for r in evals] == [4, 8]


def test_simulated_oom_halves_micro_batch_keeps_effective_batch(tmp_path, caplog):
    def run(name, limit):
        def mse(model, batch):
            if batch["x"].shape[0] > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return F.mse_loss(model(batch["x"]), batch["y"])

        return _linear_run(tmp_path, name, n=24, batch_size=8, accum=1, step=mse)

    ref = run("ref", limit=100)
    with caplog.at_level(logging.WARNING, logger="mlcore.trainer"):
        oom = run("oom", limit=2)
    assert oom.micro_split == 4 and oom.oom_backoffs == 2
    assert "micro-batch halved" in caplog.text
    summary = oom._summary(oom.config)
    assert summary["micro_batch"] == 2 and summary["accum_steps"] == 4 and summary["effective_batch"] == 8
    for a, b in zip(oom.raw_model.state_dict().values(), ref.raw_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_oom_at_micro_batch_one_is_reraised(tmp_path):
    def always(model, batch):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError):
        _linear_run(tmp_path, "x", n=4, batch_size=2, accum=1, step=always)


def test_multi_stage_fit_on_one_run(toy):
    trainer, train, val = toy(epochs=1)
    trainer.fit(train, val, stage="frozen")
    summary = trainer.fit(train, val, stage="finetune", epochs=2)
    assert summary["completed_stages"] == ["frozen", "finetune"]
    assert trainer.global_step == 10 + 20


def test_early_stopping_from_step_evaluations_stops_mid_epoch(toy):
    # 40 samples / batch 4 = 10 updates per epoch; evaluations at steps 3, 6, 9 and (epoch end) 10
    trainer, train, val = toy(epochs=3, eval_every_steps=3, monitor="val_score", monitor_mode="max",
                              early_stopping_patience=1)
    trainer.metrics = [Scripted([0.5, 0.4, 0.9, 0.9])]
    summary = trainer.fit(train, val)
    assert trainer.global_step == 6 and summary["completed"]  # second evaluation did not improve
    last = load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")
    assert last["global_step"] == 6 and last["completed_stages"] == ["main"]


def test_no_second_evaluation_at_the_same_step(toy):
    trainer, train, val = toy(epochs=1, eval_every_steps=5)  # step 10 is both a step and the epoch end
    trainer.fit(train, val)
    assert [r["step"] for r in trainer.history if r["split"] == "val"] == [5, 10]


def test_each_stage_uses_its_own_config(toy):
    from mlcore.trainer import with_overrides

    trainer, train, _ = toy(epochs=1, lr=0.05, scheduler="constant")
    seen = []
    orig = trainer._optimizer_step

    def spy(window, optimizer, scaler, cfg):
        seen.append(optimizer.param_groups[0]["lr"])
        return orig(window, optimizer, scaler, cfg)

    trainer._optimizer_step = spy
    for p in trainer.raw_model.features.parameters():
        p.requires_grad_(False)  # stage 1: head only
    trainer.fit(train, stage="head", config=with_overrides(trainer.config, lr=0.2))
    for p in trainer.raw_model.features.parameters():
        p.requires_grad_(True)
    trainer.fit(train, stage="all")
    assert seen[:10] == [0.2] * 10 and seen[10:] == [0.05] * 10

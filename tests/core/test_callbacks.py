"""The callback API (issue 11): every hook, in order, from the one loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlcore import Callback, NonFiniteLossError
from mlcore.callbacks import BestCheckpoint, EarlyStopping
from mlcore.trainer import _hook_lists


class Recorder(Callback):
    """Records (hook, what the trainer and state say at that moment)."""

    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append(("fit_start", trainer.stage, trainer.global_step))

    def on_stage_start(self, trainer, state):
        self.calls.append(("stage_start", state.stage, state.epochs, state.stage_step))

    def on_train_batch_end(self, trainer, state, outputs):
        assert not outputs["loss"].requires_grad and outputs["logits"].shape[-1] == 4
        self.calls.append(("batch", state.epoch, state.stage_step))

    def on_window_retry(self, trainer, state):
        self.calls.append(("retry", state.stage_step, trainer.micro_split))

    def on_update_end(self, trainer, state, loss):
        assert loss == loss and state.optimizer is not None  # finite, the stage's optimizer
        self.calls.append(("update", state.epoch, state.stage_step, state.batch_in_epoch, trainer.global_step))

    def on_evaluate(self, trainer, metrics):
        self.calls.append(("evaluate", trainer.epoch, trainer.global_step, sorted(metrics)))

    def on_epoch_end(self, trainer, state):
        self.calls.append(("epoch_end", state.epoch, state.stage_step))

    def on_exception(self, trainer, exc):
        self.calls.append(("exception", type(exc).__name__))

    def on_fit_end(self, trainer, summary):
        self.calls.append(("fit_end", summary["completed"], summary["steps"]))


def test_hooks_are_called_in_order_with_accumulation_and_evaluation(toy):
    # 12 samples, micro-batch 4, accum 2: 3 batches per epoch -> windows of 2 and 1 batches, 2 updates
    trainer, train, val = toy(n_train=12, epochs=2, accum_steps=2)
    rec = Recorder()
    trainer.callbacks.append(rec)
    trainer.fit(train, val)
    ev = ["val_loss", "val_top1"]
    assert rec.calls == [
        ("fit_start", "main", 0),
        ("stage_start", "main", 2, 0),
        ("batch", 0, 0), ("batch", 0, 0), ("update", 0, 1, 2, 1),
        ("batch", 0, 1), ("update", 0, 2, 3, 2),
        ("evaluate", 1, 2, ev), ("epoch_end", 1, 2),
        ("batch", 1, 2), ("batch", 1, 2), ("update", 1, 3, 2, 3),
        ("batch", 1, 3), ("update", 1, 4, 3, 4),
        ("evaluate", 2, 4, ev), ("epoch_end", 2, 4),
        ("fit_end", True, 4),
    ]


def test_on_exception_on_a_non_finite_loss(toy):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        logits = model(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        return {"loss": loss * float("nan") if calls["n"] == 3 else loss, "logits": logits}

    trainer, train, val = toy(step=step)
    rec = Recorder()
    trainer.callbacks.append(rec)
    with pytest.raises(NonFiniteLossError):
        trainer.fit(train, val)
    # the third micro-batch's loss is NaN: two updates, its backward, then on_exception and no on_fit_end
    assert rec.calls[2:] == [("batch", 0, 0), ("update", 0, 1, 1, 1), ("batch", 0, 1), ("update", 0, 2, 2, 2),
                             ("batch", 0, 2), ("exception", "NonFiniteLossError")]


def test_window_retry_hook_comes_between_the_failed_attempt_and_the_retry(toy):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if calls["n"] == 1:  # the first micro-batch runs out of memory once
            raise torch.OutOfMemoryError("out of memory (simulated)")
        logits = model(batch["image"])
        return {"loss": F.cross_entropy(logits, batch["label"]), "logits": logits}

    trainer, train, val = toy(step=step)
    rec = Recorder()
    trainer.callbacks.append(rec)
    trainer.fit(train, val)
    # the retry (micro-batch halved: micro_split 2) runs the window as two micro-batches, then the update
    assert rec.calls[2:6] == [("retry", 0, 2), ("batch", 0, 0), ("batch", 0, 0), ("update", 0, 1, 1, 1)]
    assert [c for c in rec.calls if c[0] == "retry"] == [("retry", 0, 2)]


def test_only_overridden_hooks_are_called():
    hooks = _hook_lists([Callback(), EarlyStopping("val_loss"), BestCheckpoint([("val_loss", "min")]), Recorder()])
    assert all(len(v) == 1 and isinstance(v[0], Recorder) for v in hooks.values())

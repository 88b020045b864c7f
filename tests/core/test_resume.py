"""Exact resume: stopping at any optimizer step and resuming gives bitwise-identical parameters."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mlcore import Trainer, make_loader
from mlcore.checkpoint import load_checkpoint
from mlcore.testing import Accuracy, NoisyBlobs, TinyCNN, classification_step


def _run(toy, stop_at=None, resume_from=None, **kw):
    trainer, train, val = toy(**kw, max_steps=stop_at)
    if resume_from is not None:
        cfg = dataclasses.replace(trainer.config, resume=str(resume_from), max_steps=None)
        torch.manual_seed(123)  # a different init: everything must come from the checkpoint
        trainer = Trainer(TinyCNN(), cfg, classification_step, metrics=[Accuracy()],
                          run_dir=trainer.run_dir)
    trainer.fit(train, val)
    return trainer


@pytest.mark.parametrize("num_workers,stop_at", [(0, 7), (2, 5), (0, 10)])
def test_resume_is_bitwise_identical(toy, tmp_path, num_workers, stop_at, params_of):
    common = dict(n_train=42, epochs=3, batch_size=4, accum_steps=2, lr=0.05, optimizer="adamw",
                  weight_decay=0.01, warmup_steps=3, clip_grad_norm=1.0, ema_decay=0.9,
                  num_workers=num_workers, eval_every_epochs=1)
    full = _run(toy, out=str(tmp_path / "full"), **common)
    # 11 batches/epoch, accum 2 -> 6 updates/epoch: step 7 and 5 stop mid-epoch, 10 too
    part = _run(toy, stop_at=stop_at, out=str(tmp_path / "part"), **common)
    assert part.global_step == stop_at
    last = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert last["batch_in_epoch"] > 0 and last["global_step"] == stop_at
    resumed = _run(toy, resume_from=tmp_path / "part", out=str(tmp_path / "part"), **common)
    assert resumed.global_step == full.global_step == 18
    a, b = params_of(full), params_of(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(full.ema.module.head.weight, resumed.ema.module.head.weight)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_resume_a_different_seed_would_differ(toy, tmp_path, params_of):
    """Guard: the bitwise comparison detects a changed data order."""
    common = dict(n_train=42, epochs=1, batch_size=4, num_workers=0)
    a = _run(toy, out=str(tmp_path / "a"), seed=0, **common)
    b = _run(toy, out=str(tmp_path / "b"), seed=1, **common)
    pa, pb = params_of(a), params_of(b)
    assert any(not torch.equal(pa[k], pb[k]) for k in pa)


def test_checkpoint_contents(toy, tmp_path):
    trainer, train, val = toy(epochs=1, max_steps=3)
    trainer.fit(train, val)
    last = load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "global_step", "batch_in_epoch",
            "rng", "sampler", "best", "history", "config", "callbacks"} <= set(last)
    assert {"python", "numpy", "torch"} <= set(last["rng"])
    assert last["batch_in_epoch"] == 3 * 4 // 4  # 3 updates x accum 1


def test_sampler_shards_match_global_order():
    from mlcore.data import ResumableSampler

    single = [i for i, _ in ResumableSampler(10, shuffle=True, seed=3, num_replicas=1, rank=0)]
    r0 = [i for i, _ in ResumableSampler(10, shuffle=True, seed=3, num_replicas=2, rank=0)]
    r1 = [i for i, _ in ResumableSampler(10, shuffle=True, seed=3, num_replicas=2, rank=1)]
    assert sorted(single) == list(range(10))
    assert r0 == single[0::2] and r1 == single[1::2]
    s = ResumableSampler(10, shuffle=True, seed=3, num_replicas=1, rank=0)
    s.skip(4)
    assert [i for i, _ in s] == single[4:] and len(s) == 6
    s.set_epoch(1)
    assert [i for i, _ in s] != single


def test_sample_randomness_is_independent_of_workers():
    ds = NoisyBlobs(12)
    a = [b["image"] for b in make_loader(ds, batch_size=3, shuffle=True, seed=5, num_workers=0)]
    b = [b["image"] for b in make_loader(ds, batch_size=3, shuffle=True, seed=5, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    before = torch.get_rng_state()
    list(make_loader(ds, batch_size=3, shuffle=True, seed=5, num_workers=0))
    assert torch.equal(before, torch.get_rng_state())  # loading does not disturb the model's RNG


def test_checkpoint_aliases_are_the_same_file_and_resume(toy, tmp_path, params_of):
    """A domain's own checkpoint names (``last_checkpoint.pt`` ...) are hard links renewed on every save."""
    trainer, train, val = toy(epochs=2, monitor="val_top1", monitor_mode="max")
    trainer.checkpoint_aliases = {"last.pt": "last_checkpoint.pt", "best_val_top1.pt": "best_accuracy.pt"}
    trainer.fit(train, val)
    ckpt = trainer.run_dir / "checkpoints"
    for name, alias in trainer.checkpoint_aliases.items():
        assert (ckpt / alias).samefile(ckpt / name), alias
    assert not list(ckpt.glob(".*"))  # no temporary link left behind
    assert load_checkpoint(ckpt / "last_checkpoint.pt")["global_step"] == trainer.global_step
    # resuming from the alias continues the same run (nothing left to do: same parameters)
    cfg = dataclasses.replace(trainer.config, resume=str(ckpt / "last_checkpoint.pt"))
    resumed = Trainer(TinyCNN(), cfg, classification_step, metrics=[Accuracy()], run_dir=trainer.run_dir)
    assert resumed.global_step == trainer.global_step
    for k, v in params_of(trainer).items():
        torch.testing.assert_close(resumed.raw_model.state_dict()[k], v, rtol=0, atol=0)


def test_link_alias_falls_back_to_a_copy(tmp_path, monkeypatch):
    import os

    from mlcore.checkpoint import link_alias

    src = tmp_path / "a.pt"
    src.write_bytes(b"abc")

    def no_links(*args, **kwargs):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    link_alias(src, tmp_path / "b.pt")
    assert (tmp_path / "b.pt").read_bytes() == b"abc" and not (tmp_path / "b.pt").samefile(src)

"""Checkpoint retention (issue 11): --keep-last step checkpoints, rolling back to one, --save-top-k."""

from __future__ import annotations

import dataclasses
import os

import torch

from mlcore import TrainConfig, Trainer
from mlcore.checkpoint import (
    link_checkpoint,
    load_checkpoint,
    prune_step_checkpoints,
    step_checkpoint_name,
)
from mlcore.cli import parse_config
from mlcore.testing import Accuracy, TinyCNN, classification_step


def _steps(ckpts):
    return sorted(p.name for p in ckpts.glob("step_*"))


def test_keep_last_keeps_n_step_checkpoints_and_resume_rolls_back_to_one(toy, params_of):
    # 40 samples / batch 4 = 10 updates per epoch, 2 epochs; last.pt at steps 3, 6, 9, 10 (epoch end),
    # 12, 15, 18, 20: --keep-last 2 leaves step 18 and step 20
    trainer, train, val = toy(epochs=2, checkpoint_every_steps=3, keep_last=2)
    trainer.fit(train, val)
    full, history = params_of(trainer), [r["loss"] for r in trainer.history]
    ckpts = trainer.run_dir / "checkpoints"
    assert _steps(ckpts) == ["step_000018.pt", "step_000020.pt"]
    assert os.path.samefile(ckpts / "step_000020.pt", ckpts / "last.pt")  # same content, no extra disk
    s18 = load_checkpoint(ckpts / "step_000018.pt")
    assert (s18["global_step"], s18["epoch"], s18["batch_in_epoch"]) == (18, 1, 8)
    assert {"model", "optimizer", "scheduler", "rng", "callbacks"} <= set(s18)

    # --resume RUN/checkpoints/step_000018.pt (the CLI reads the run's config.yaml beside checkpoints/)
    cfg = parse_config(TrainConfig, ["--resume", str(ckpts / "step_000018.pt")], prog="x-train")
    assert (cfg.out, cfg.keep_last, cfg.epochs) == (str(trainer.run_dir), 2, 2)
    torch.manual_seed(123)  # another init: everything comes from the step checkpoint
    resumed = Trainer(TinyCNN(), dataclasses.replace(trainer.config, resume=str(ckpts / "step_000018.pt")),
                      classification_step, metrics=[Accuracy()])
    assert resumed.global_step == 18
    resumed.fit(train, val)
    assert resumed.global_step == 20  # two more updates, not another 20
    again = params_of(resumed)
    for k in full:
        assert torch.equal(full[k], again[k]), k
    assert [r["loss"] for r in resumed.history] == history
    assert _steps(ckpts) == ["step_000018.pt", "step_000020.pt"]


def test_link_checkpoint_of_a_folder_and_pruning(tmp_path):
    ckpts = tmp_path / "checkpoints"
    last = ckpts / "last.dcp"
    last.mkdir(parents=True)
    (last / "__0_0.distcp").write_bytes(b"a")
    (last / ".metadata").write_bytes(b"m")
    kept = link_checkpoint(last, ckpts / step_checkpoint_name(5, sharded=True))
    assert kept.name == "step_000005.dcp"
    assert os.path.samefile(kept / "__0_0.distcp", last / "__0_0.distcp")
    # a later save replaces the files (as save_sharded and atomic_save do): the kept copy keeps its content
    (last / "new").write_bytes(b"b")
    os.replace(last / "new", last / "__0_0.distcp")
    assert (kept / "__0_0.distcp").read_bytes() == b"a"
    for step in (1, 3, 7, 9):
        (ckpts / step_checkpoint_name(step)).write_bytes(b"x")
    # at step 5 (rolled back from 9): keep the 2 latest at or before 5; 7 and 9 are left alone
    gone = prune_step_checkpoints(ckpts, keep=2, step=5)
    assert sorted(p.name for p in gone) == ["step_000001.pt"]
    assert _steps(ckpts) == ["step_000003.pt", "step_000005.dcp", "step_000007.pt", "step_000009.pt"]
    prune_step_checkpoints(ckpts, keep=1, step=9)
    assert _steps(ckpts) == ["step_000009.pt"]


def test_save_top_k_keeps_the_k_best_evaluations(toy):
    # 5 updates, an evaluation after each: the 2 lowest val_loss evaluations stay on disk
    trainer, train, val = toy(n_train=20, epochs=1, eval_every_steps=1, save_top_k=2, lr=0.2)
    trainer.fit(train, val)
    ckpts = trainer.run_dir / "checkpoints"
    evals = [r for r in trainer.history if r["split"] == "val"]
    assert len(evals) == 5
    best2 = sorted(evals, key=lambda r: r["loss"])[:2]
    files = sorted(p.name for p in ckpts.glob("best_val_loss-step_*.pt"))
    assert files == sorted(f"best_val_loss-step_{r['step']:06d}.pt" for r in best2)
    best = ckpts / f"best_val_loss-step_{best2[0]['step']:06d}.pt"
    assert os.path.samefile(ckpts / "best_val_loss.pt", best)
    ck = load_checkpoint(ckpts / "best_val_loss.pt")
    assert (ck["value"], ck["step"]) == (best2[0]["loss"], best2[0]["step"])
    kept = trainer.best_checkpoint.state_dict()["kept"]["val_loss"]
    assert [e["step"] for e in kept] == [r["step"] for r in best2]


def test_save_top_k_1_writes_only_best_metric_pt(toy):
    trainer, train, val = toy(n_train=20, epochs=1, eval_every_steps=1)
    trainer.fit(train, val)
    names = sorted(p.name for p in (trainer.run_dir / "checkpoints").iterdir())
    assert names == ["best_val_loss.pt", "last.pt"]

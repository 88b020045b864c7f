"""The issue-11 bar: hairseg-train under torchrun with --strategy fsdp (2 processes, gloo) writes a
sharded checkpoint, and --resume of it in one process continues from its step count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hairseg.train import main as train_main


@pytest.mark.slow
def test_fsdp_two_processes_then_resume_in_one(tmp_path, figaro_root):
    data = tmp_path / "hair16"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for p in sorted((figaro_root / "Figaro1k" / "Original" / "Training").glob("*-org.jpg"))[:16]:
        stem = p.name.replace("-org.jpg", "")
        Image.open(p).convert("RGB").resize((64, 64)).save(data / "images" / f"{stem}.jpg", quality=95)
        gt = Image.open(figaro_root / "Figaro1k" / "GT" / "Training" / f"{stem}-gt.pbm").convert("L").resize((64, 64))
        Image.fromarray(((np.asarray(gt) > 0) * 255).astype(np.uint8)).save(data / "masks" / f"{stem}.png")
    out = tmp_path / "run"
    args = ["--data", data, "--out", out, "--encoder", "mobilenet_v2", "--no-pretrained", "--image-size", "32",
            "--batch-size", "2", "--accum-steps", "1", "--epochs", "1", "--warmup-steps", "1",
            "--num-workers", "0", "--cache-dir", tmp_path / "cache", "--examples", "1",
            "--strategy", "fsdp", "--grad-checkpointing", "--max-steps", "2", "--eval-every-steps", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "hairseg.train", *map(str, args)], env=env, timeout=600, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "FSDP2: " in run.stderr and "over 2 ranks (gloo)" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"]) == (2, 2)
    ck = out / "checkpoints"
    assert {p.name for p in (ck / "last.dcp").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp",
                                                            "trainer_state.pt"}
    assert not (ck / "last.pt").exists()
    best = torch.load(ck / "best_val_iou.pt", weights_only=True)  # gathered from both ranks' shards
    assert best["step"] == 2 and "decoder.blocks.0.conv1.0.weight" in best["model"]
    assert (out / "val_examples.png").is_file()  # drawn by rank 0 from an unsharded copy

    # one process, no process group: reads the shards of both ranks and continues from step 2
    assert train_main(["--resume", str(out), "--max-steps", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"]) == (3, 1)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [2]  # the 2-process evaluation kept
    assert (ck / "last.pt").is_file() and not (ck / "last.dcp").exists()

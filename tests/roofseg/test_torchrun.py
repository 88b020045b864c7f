"""roofseg-train under torchrun (2 processes, gloo): the test-split evaluation at the end of
training runs on every rank. Before, only rank 0 evaluated, so it blocked in evaluate_model's
all-reduce while rank 1 had already left (a hang, or "Connection closed by peer" once rank 1
exited)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from roofseg.eval import evaluate_checkpoint


@pytest.mark.slow
def test_torchrun_two_processes_finish_with_the_test_evaluation(tmp_path, rid_root):
    out = tmp_path / "run"
    args = ["--data", rid_root, "--task", "outlines", "--out", out, "--image-size", "32", "--batch-size", "2",
            "--epochs", "1", "--num-workers", "0", "--no-pretrained", "--examples", "1", "--warmup-steps", "0",
            "--max-steps", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    try:
        run = subprocess.run(["timeout", "-k", "10", "240", sys.executable, "-m", "torch.distributed.run",
                              "--standalone", "--nproc_per_node=2", "-m", "roofseg.train", *map(str, args)],
                             env=env, timeout=300, capture_output=True, text=True)
    except subprocess.TimeoutExpired:  # pragma: no cover - the old hang
        pytest.fail("torchrun roofseg-train did not finish (a rank blocked in a collective)")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "world 2" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"]) == (2, 2)
    test = summary["test"]
    assert test["n_samples"] == 4 and test["checkpoint"] == "last.pt"
    # the two ranks' shards were summed: the same figures as one process scoring all 4 test tiles
    ref = evaluate_checkpoint(out / "checkpoints" / "last.pt", rid_root, "test")
    assert ref["n_samples"] == 4
    for k in ("outline_iou", "outline_boundary_f1"):  # pixel counts: exact sums
        assert test[k] == pytest.approx(ref[k], rel=1e-9), k
    assert test["loss"] == pytest.approx(ref["loss"], rel=1e-2)  # the Dice term depends on the batches
    assert (out / "val_examples.png").is_file() and (out / "split.json").is_file()

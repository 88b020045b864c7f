"""Stop signals (issue 11 item 7, issue 16): SIGINT/SIGTERM/SIGUSR1 finish the update, save last.pt,
print one line and exit 128 + signal; a second signal aborts; DDP ranks agree on the step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlcore.checkpoint import load_checkpoint

SCRIPT = Path(__file__).with_name("signal_script.py")
FLAGS = ["--epochs", "2", "--batch-size", "4", "--lr", "0.05", "--device", "cpu", "--num-workers", "0"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TOY_SIGNALS")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _run(out, *flags, signals="", timeout=240, torchrun=False, **env):
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    return subprocess.run([*prefix, str(SCRIPT), "--out", str(out), *flags], capture_output=True, text=True,
                          env=_env(TOY_SIGNALS=signals, **env), timeout=timeout)


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGUSR1", 138)])
def test_signal_saves_last_prints_one_line_and_resumes(tmp_path, sig, code):
    out = tmp_path / "run"
    workers = ["--num-workers", "2"] if sig == "SIGINT" else []
    p = _run(out, *FLAGS, *workers, signals=f"{sig}@5")
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("toy-train:")]
    assert lines == [f"toy-train: stopped by {sig} after optimizer step 5: saved {out / 'checkpoints' / 'last.pt'}; "
                     f"continue with --resume {out}"]
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["global_step"] == 5 and last["batch_in_epoch"] == 5
    assert json.loads((out / "summary.json").read_text())["completed"] is False
    p = _run(out, "--resume", str(out))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["steps"] == 20


def test_second_signal_aborts_at_once(tmp_path):
    out = tmp_path / "run"
    p = _run(out, *FLAGS, "--checkpoint-every-steps", "2", signals="SIGINT@5,SIGINT@5")
    assert p.returncode == 130, p.stderr
    assert "Traceback" not in p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("toy-train:")] == [
        "toy-train: aborted by a second SIGINT: the current update was not saved (last.pt, if any, holds an "
        "earlier step)"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["global_step"] == 4


def test_signal_during_evaluation_stops_it(tmp_path):
    out = tmp_path / "run"
    p = _run(out, *FLAGS, "--eval-every-steps", "3", signals="SIGTERM@eval2")  # 2nd batch of the 1st evaluation
    assert p.returncode == 143, p.stderr
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["global_step"] == 3 and last["pending_eval"] == "step"
    assert [r for r in last["history"] if r["split"] == "val"] == []
    p = _run(out, "--resume", str(out))
    assert p.returncode == 0, p.stderr
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert [r["step"] for r in last["history"] if r["split"] == "val"] == [3, 6, 9, 10, 12, 15, 18, 20]


@pytest.mark.slow
def test_ddp_sigterm_to_one_rank_stops_both_at_the_same_step(tmp_path):
    out = tmp_path / "run"
    p = _run(out, *FLAGS, signals="SIGTERM@3@rank1", torchrun=True, timeout=300)
    assert p.returncode != 0
    steps = {json.loads((out / f"stopped_rank{r}.json").read_text())["step"] for r in (0, 1)}
    assert steps == {3}, p.stderr[-3000:]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["global_step"] == 3
    assert p.stderr.count("toy-train: stopped by SIGTERM") == 1
    assert sorted(f.name for f in (out / "checkpoints").iterdir()) == ["last.pt"]  # no evaluation yet

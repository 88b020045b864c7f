"""FSDP2 (--strategy fsdp), meta-device init, activation checkpointing and sharded DCP checkpoints."""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mlcore.blocks import apply_grad_checkpointing, find_blocks, mark_blocks
from mlcore.checkpoint import CheckpointError, resolve_resume_path
from mlcore.cli import parse_config
from mlcore.config import ConfigError, TrainConfig
from mlcore.dcp import (
    load_resume_optimizer,
    load_resume_state,
    remove_stale,
    save_sharded,
)
from mlcore.devices import build_strategy
from mlcore.fsdp import materialize_meta, meta_skeleton, mixed_precision_policy, prepare_model

SCRIPT = Path(__file__).with_name("fsdp_script.py")


def _script():
    spec = importlib.util.spec_from_file_location("fsdp_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Block(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.bn = nn.BatchNorm1d(d)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return x + self.drop(torch.relu(self.bn(self.fc(x))))


def _net() -> nn.Module:
    return mark_blocks(nn.Sequential(nn.Linear(4, 8), Block(), nn.Sequential(Block(), Block()), nn.Linear(8, 1)),
                       [Block])


# ---- blocks and activation checkpointing ---------------------------------------------------------
def test_find_blocks_outermost_and_hf_names():
    net = _net()
    assert [type(b) for b in find_blocks(net)] == [Block, Block, Block]
    outer = mark_blocks(nn.Sequential(Block(), nn.Linear(8, 8)), [Block, nn.Linear])
    assert len(find_blocks(outer)) == 2  # Block's own Linear is inside a block: not a second unit
    hf = nn.Sequential(Block(), Block())
    hf._no_split_modules = ["Block"]  # transformers' convention (class names)
    assert len(find_blocks(hf)) == 2
    assert find_blocks(nn.Sequential(nn.Linear(2, 2))) == []


def test_grad_checkpointing_matches_plain_grads_buffers_and_keys():
    torch.manual_seed(0)
    plain = _net()
    ckpt = _net()
    ckpt.load_state_dict(plain.state_dict())
    assert apply_grad_checkpointing(ckpt) == 3
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # same keys: checkpoints interchangeable
    x = torch.randn(16, 4)
    outs = []
    for m in (plain, ckpt):
        torch.manual_seed(5)  # same dropout masks; the recompute must replay them
        loss = m(x).square().mean()
        loss.backward()
        outs.append(loss.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7, msg=name)
    # BatchNorm running stats and num_batches_tracked counted once, not again by the recompute
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert ckpt[1]._checkpoint_wrapped_module.bn.num_batches_tracked.item() == 1


def test_grad_checkpointing_needs_marked_blocks():
    with pytest.raises(ConfigError, match="marks no blocks"):
        prepare_model(nn.Sequential(nn.Linear(2, 2)), build_strategy("cpu"), grad_checkpointing=True)


# ---- meta-device init and mixed precision --------------------------------------------------------
def test_meta_init_equals_eager_init_with_the_same_seed():
    torch.manual_seed(3)
    eager = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    torch.manual_seed(3)
    model, skeleton = prepare_model(meta, build_strategy("cpu"))
    assert skeleton is None and all(p.device.type == "cpu" for p in model.parameters())
    for (name, a), b in zip(eager.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_meta_init_names_a_module_that_cannot_initialise_itself():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(3))

    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(3, 3), Scale())
    with pytest.raises(ValueError, match="Scale owns s but has no reset_parameters"):
        materialize_meta(m, "cpu")


def test_meta_skeleton_costs_no_memory_and_keeps_structure():
    net = _net()
    sk = meta_skeleton(net)
    assert all(p.is_meta for p in sk.parameters()) and all(not p.is_meta for p in net.parameters())
    assert list(sk.state_dict()) == list(net.state_dict())


def test_mixed_precision_policy_follows_the_device_strategy():
    bf16 = mixed_precision_policy(build_strategy("cpu", "bf16"))
    assert (bf16.param_dtype, bf16.reduce_dtype) == (torch.bfloat16, torch.float32)
    fp32 = mixed_precision_policy(build_strategy("cpu", "fp32"))
    assert (fp32.param_dtype, fp32.reduce_dtype) == (None, None)


# ---- flags ---------------------------------------------------------------------------------------
def test_strategy_and_grad_checkpointing_flags(monkeypatch):
    cfg = parse_config(TrainConfig, ["--strategy", "fsdp", "--grad-checkpointing"], prog="t")
    assert (cfg.strategy, cfg.grad_checkpointing) == ("fsdp", True)
    assert parse_config(TrainConfig, [], prog="t").strategy == "ddp"
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--strategy", "zero3"], prog="t")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--ema-decay is not supported with --strategy fsdp"):
        parse_config(TrainConfig, ["--strategy", "fsdp", "--ema-decay", "0.99"], prog="t")


# ---- sharded checkpoints in one process ----------------------------------------------------------
def _trained():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    return m, opt


def test_sharded_checkpoint_roundtrip_without_process_group(tmp_path):
    m, opt = _trained()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    (ckpt_dir).mkdir(parents=True)
    (ckpt_dir / "last.pt").write_bytes(b"stale")
    d = save_sharded(ckpt_dir / "last.dcp", m, opt, {"global_step": 3})
    remove_stale(ckpt_dir, "last.dcp")
    assert not (ckpt_dir / "last.pt").exists() and {".metadata", "trainer_state.pt"} <= {p.name for p in d.iterdir()}
    assert resolve_resume_path(tmp_path / "run") == d
    torch.manual_seed(1)
    m2 = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.5)
    state = load_resume_state(d, m2)
    load_resume_optimizer(state, m2, opt2)
    assert state["global_step"] == 3
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert opt2.param_groups[0]["lr"] == 0.1
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_sharded_checkpoint_is_read_with_weights_only_safety(tmp_path):
    m, opt = _trained()
    d = save_sharded(tmp_path / "last.dcp", m, opt, {"global_step": 1})
    meta = d / ".metadata"
    obj = pickle.loads(meta.read_bytes())
    obj.storage_meta = _Evil()  # a metadata file that would run code when unpickled
    meta.write_bytes(pickle.dumps(obj))
    with pytest.raises(CheckpointError, match="posix.system|os.system|must not contain"):
        load_resume_state(d, nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))


def test_resume_prefers_the_newer_of_last_pt_and_last_dcp(tmp_path):
    m, opt = _trained()
    ck = tmp_path / "checkpoints"
    d = save_sharded(ck / "last.dcp", m, opt, {})
    torch.save({}, ck / "last.pt")
    os.utime(d, ns=(1, 1))
    assert resolve_resume_path(tmp_path) == ck / "last.pt"
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        resolve_resume_path(tmp_path / "nothing")


# ---- torchrun: FSDP on two processes (gloo), resumed on other world sizes and strategies ----------
def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(*args):
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(SCRIPT), *map(str, args)], check=True, env=_env(), timeout=400)


def _assert_same(a, b, atol):
    assert sorted(a["model"]) == sorted(b["model"])
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=atol, msg=k)
    assert sorted(a["optimizer"]["state"]) == sorted(b["optimizer"]["state"])
    for k, st in a["optimizer"]["state"].items():
        for name, v in st.items():
            torch.testing.assert_close(v, b["optimizer"]["state"][k][name], rtol=0, atol=atol, msg=f"{k}.{name}")


@pytest.mark.slow
def test_fsdp_two_processes_sharded_checkpoint_resumes_on_other_world_sizes(tmp_path):
    script = _script()
    load = lambda p: torch.load(p, weights_only=True)  # noqa: E731
    # one process: micro-batch 8 (global batch 8 x accum 2), built on the meta device
    script.main([tmp_path / "a.pt", tmp_path / "runA", "fsdp", 8, 3, "--meta"])
    # two FSDP ranks with 4 each, meta init, activation checkpointing; evaluation at step 3 has
    # 4 batches on rank 0 and 3 on rank 1 (25 samples): the short rank replays one
    _torchrun(tmp_path / "b.pt", tmp_path / "runB", "fsdp", 4, 3, "--meta", "--gc", "--keep")
    a, b = load(tmp_path / "a.pt"), load(tmp_path / "b.pt")
    assert (a["world"], b["world"], b["sharded"], b["steps"]) == (1, 2, True, 3)
    _assert_same(a, b, atol=1e-6)  # same init whatever the world size, same updates
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-6)
    ck = tmp_path / "runB" / "checkpoints"
    assert not (ck / "last.pt").exists()
    assert {p.name for p in (ck / "last.dcp").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp",
                                                            "trainer_state.pt"}
    # --keep-last 1: the sharded folder kept as step_000003.dcp (hard links to the same shards)
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_000003.dcp"]
    for f in (ck / "last.dcp").iterdir():
        assert os.path.samefile(f, ck / "step_000003.dcp" / f.name)

    # 2 -> 1: the sharded checkpoint in one process (no process group) holds exactly B's state
    script.main([tmp_path / "c.pt", tmp_path / "runB", "fsdp", 8, 3, "--resume"])
    c = load(tmp_path / "c.pt")
    assert (c["world"], c["steps"]) == (1, 3)
    _assert_same(b, c, atol=0)
    # 1 -> 2: one process's last.pt into two FSDP ranks
    _torchrun(tmp_path / "d.pt", tmp_path / "runA", "fsdp", 4, 3, "--resume")
    d = load(tmp_path / "d.pt")
    assert (d["world"], d["sharded"], d["steps"]) == (2, True, 3)
    _assert_same(a, d, atol=0)
    # FSDP's sharded checkpoint into two DDP ranks
    _torchrun(tmp_path / "e.pt", tmp_path / "runB", "ddp", 4, 3, "--resume")
    e = load(tmp_path / "e.pt")
    assert (e["world"], e["sharded"], e["steps"]) == (2, False, 3)
    _assert_same(b, e, atol=0)
    # and the one-process run continues: one more update, written as last.pt (last.dcp is now stale)
    script.main([tmp_path / "f.pt", tmp_path / "runB", "fsdp", 8, 4, "--resume"])
    assert load(tmp_path / "f.pt")["steps"] == 4
    assert (ck / "last.pt").is_file() and not (ck / "last.dcp").exists()


@pytest.mark.slow
def test_two_nodes_write_the_run_directory_from_global_rank_0_only(tmp_path):
    """README's multi-node command, two "nodes" of one process each on this machine: the second
    node's process has LOCAL_RANK 0 but global rank 1, and must not write the run directory."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "mlcore-test",
           str(SCRIPT), str(tmp_path / "dump.pt"), str(run), "fsdp", "4", "3"]
    nodes = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        logs = [n.communicate(timeout=400)[0] for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    assert [n.returncode for n in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert len(list((run / "tensorboard").glob("events*"))) == 1
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # the train row and the evaluation at step 3, written once
    shards = {p.name for p in (run / "checkpoints" / "last.dcp").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", "trainer_state.pt"} <= shards  # every rank its shard
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "summary.json",
                                                     "tensorboard", "train.log"]

"""mlcore's one checkpoint loader and the shared CLI checks: one line per bad file or flag (issue 16)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from mlcore.checkpoint import (
    CheckpointError,
    UserInputError,
    config_domain,
    load_checkpoint,
    load_model_weights,
    pickled_globals,
)
from mlcore.cli import ArgumentParser, load_preset, run_cli
from mlcore.config import ConfigError, TrainConfig


class _Evil:
    """Pickles as a call to ``os.system`` (what a malicious checkpoint contains)."""

    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


def _write_bad_files(folder):
    files = {"empty": folder / "empty.pt", "evil_pickle": folder / "evil.pkl", "evil_zip": folder / "evil.pt",
             "truncated": folder / "trunc.pt", "garbage": folder / "garbage.pt", "food": folder / "food.pt"}
    files["empty"].write_bytes(b"")
    with open(files["evil_pickle"], "wb") as f:
        pickle.dump(_Evil(), f, protocol=4)
    torch.save({"model": _Evil()}, files["evil_zip"])
    torch.save({"model": {"w": torch.ones(4096)}}, folder / "good.pt")
    data = (folder / "good.pt").read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["garbage"].write_bytes(b"this is not a checkpoint at all")
    torch.save({"model": {"weight": torch.ones(2, 3), "bias": torch.ones(2)}, "domain": "foodrec"}, files["food"])
    return files


@pytest.mark.parametrize("kind, needle", [
    ("empty", "--weights {path}: 0 bytes: not a checkpoint"),
    ("evil_pickle", "--weights {path}: refused: the file contains a pickled call to posix.system, not tensors"),
    ("evil_zip", "--weights {path}: refused: the file contains a pickled call to posix.system, not tensors"),
    ("truncated", "--weights {path}: truncated or corrupt checkpoint"),
    ("garbage", "--weights {path}: not a PyTorch checkpoint"),
    ("food", "--weights {path}: a foodrec checkpoint, expected hairseg"),
])
def test_bad_files_are_one_line_checkpoint_errors(tmp_path, monkeypatch, kind, needle):
    monkeypatch.chdir(tmp_path)
    path = _write_bad_files(tmp_path)[kind]
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, expect_domain="hairseg", flag="--weights")
    msg = str(exc.value)
    assert msg.startswith(needle.format(path=path)), msg
    assert "\n" not in msg and "weights_only=False" not in msg and "weights_only" not in msg
    assert not (tmp_path / "pwned.txt").exists()  # the pickled call never ran
    assert isinstance(exc.value, UserInputError)


def test_missing_file_is_also_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="--weights .*nope.pt: file not found"):
        load_checkpoint(tmp_path / "nope.pt", flag="--weights")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_pickled_globals_reads_without_executing(tmp_path):
    files = _write_bad_files(tmp_path)
    assert "posix.system" in pickled_globals(files["evil_pickle"])
    assert "posix.system" in pickled_globals(files["evil_zip"])
    assert all(g.startswith(("torch.", "collections.")) for g in pickled_globals(tmp_path / "good.pt"))


def test_same_domain_and_undeclared_domain_load(tmp_path):
    files = _write_bad_files(tmp_path)
    assert load_checkpoint(files["food"], expect_domain="foodrec")["domain"] == "foodrec"
    assert "model" in load_checkpoint(tmp_path / "good.pt", expect_domain="hairseg")  # no domain recorded


def test_load_model_weights_one_line_mismatch(tmp_path):
    files = _write_bad_files(tmp_path)
    model = torch.nn.Linear(3, 2)
    load_model_weights(model, files["food"], expect_domain="foodrec")
    assert torch.equal(model.weight, torch.ones(2, 3))
    torch.save({"model": {"module.weight": torch.ones(5, 3), "module.bias": torch.ones(5), "extra": torch.ones(1)}},
               tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as exc:
        load_model_weights(model, tmp_path / "other.pt")
    msg = str(exc.value)
    assert "\n" not in msg and "weights do not match the model" in msg
    assert "2 shape mismatches" in msg and "1 unexpected keys" in msg


def test_config_domain_from_the_config_class():
    assert config_domain(TrainConfig()) is None
    Fake = type("FakeConfig", (TrainConfig,), {"__module__": "hairseg.config"})
    assert config_domain(Fake()) == "hairseg"


def test_trainer_checkpoints_record_their_domain(tmp_path):
    from mlcore.trainer import Trainer

    class HairCfg(TrainConfig):
        pass
    HairCfg.__module__ = "hairseg.config"
    cfg = HairCfg(out=str(tmp_path / "run"), epochs=1, batch_size=4, num_workers=0, device="cpu")
    x = torch.randn(8, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    model = torch.nn.Linear(3, 1)
    trainer = Trainer(model, cfg, lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]))
    trainer.fit(loader, loader)
    trainer.close()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["domain"] == "hairseg"
    with pytest.raises(CheckpointError, match="a hairseg checkpoint, expected foodrec"):
        load_checkpoint(last, expect_domain="foodrec")


# ---- shared CLI checks ---------------------------------------------------------------------------

def _parser():
    p = ArgumentParser(prog="demo-eval")
    p.add_argument("--device", default="auto", help="device")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2, help="loader workers")
    p.add_argument("--split", choices=("val", "test"), default="test")
    return p


@pytest.mark.parametrize("argv, needle", [
    (["--device", "gpu"], "argument --device: expected one of auto, cpu, cuda[:N], mps (present here: auto, cpu"),
    (["--device", "cuda:x"], "expected one of auto, cpu, cuda[:N], mps"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1 (got 0)"),
    (["--num-workers", "-1"], "argument --num-workers: must be >= 0 (got -1)"),
    (["--batch-size", "two"], "argument --batch-size: expected an int, got 'two'"),
])
def test_shared_parser_rejects_in_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("demo-eval: error: ") and needle in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--device", "cuda"])
    assert "--device: CUDA is not available on this machine (present here: auto, cpu" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        TrainConfig(device="cuda").validate()


def test_help_shows_every_default_once(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for default in ("(default: auto)", "(default: 32)", "(default: 2)", "(default: test)"):
        assert out.count(default) == 1, (default, out)


def test_train_help_one_default_per_flag(capsys):
    import dataclasses

    from mlcore.cli import parse_config
    from mlcore.config import opt

    @dataclasses.dataclass
    class PhaseConfig(TrainConfig):
        epochs: int = opt(20, "epochs of every phase (default: each phase's curriculum value)")
    with pytest.raises(SystemExit):
        parse_config(PhaseConfig, ["--help"], prog="demo-train")
    out = " ".join(capsys.readouterr().out.split())
    start = out.index("--epochs INT epochs")
    section = out[start:out.index("--max-steps", start)]
    assert section.count("default") == 1, section


def test_malformed_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("epochs: 3\nlr: [0.1\nbatch_size: 4\n")
    with pytest.raises(ConfigError) as exc:
        load_preset(str(f), None)
    msg = str(exc.value)
    assert msg.startswith(f"--config {f}: invalid YAML at line ") and "\n" not in msg, msg


def test_run_cli_prints_user_errors_in_one_line(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")

    def main():
        load_checkpoint(tmp_path / "empty.pt", flag="--checkpoint")
    assert run_cli(main, prog="demo-eval") == 1
    err = capsys.readouterr().err
    assert err == f"demo-eval: error: --checkpoint {tmp_path / 'empty.pt'}: 0 bytes: not a checkpoint\n"

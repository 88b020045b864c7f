"""Every console command against what users actually type (issue 16): one table, tested.

Each row is (command, arguments, expected exit code, words the error line must contain). For every
row the command runs in-process (``main(argv)``, no subprocess) in an empty working directory and must:

- exit with the expected code;
- print exactly one line on stderr, ``<command>: error: ...``, containing the words (the flag or file);
- print no traceback;
- write nothing outside ``--out`` (the working directory stays empty apart from ``out/``).

The commands come from every ``packages/*/pyproject.toml`` ``[project.scripts]``, so a new command is
covered by the generic rows (unknown flag, ``--device``, ``--batch-size``) without editing this file.

Domain rows (truncated mp4, mismatched mask, CSV missing a column, SIGINT/SIGTERM mid-run...) go in
:data:`DOMAIN_ROWS` at the bottom: ``(command, argv, code, needles)`` with ``{bad}`` (this module's bad
files, see :func:`bad`), ``{data}`` (``MLDATA_ROOT``) and ``{out}`` placeholders.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import tomllib
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, str]:
    found = {}
    for pyproject in sorted(REPO.glob("packages/*/pyproject.toml")):
        found.update(tomllib.loads(pyproject.read_text())["project"].get("scripts", {}))
    return found


COMMANDS = _commands()
# required arguments that let parsing reach the flag under test (files need not be valid)
BASE: dict[str, list[str]] = {
    "foodrec-eval": ["--checkpoint", "{bad}/food.pt", "--data", "{bad}/empty_dir"],
    "foodrec-predict": ["{bad}/photo.jpg", "--checkpoint", "{bad}/food.pt"],
    "foodrec-export": ["--checkpoint", "{bad}/food.pt", "--out", "{out}"],
    "hairseg-eval": ["--data", "{bad}/empty_dir"],
    "hairseg-export": ["--checkpoint", "{bad}/hair.pt", "--out", "{out}"],
    "hairseg-predict": ["{bad}/photo.jpg", "--out", "{out}"],
    "plantid-eval": ["--checkpoint", "{bad}/plant.pt", "--data", "{bad}/empty_dir"],
    "plantid-predict": ["{bad}/photo.jpg", "--checkpoint", "{bad}/plant.pt"],
    "plantid-export": ["--checkpoint", "{bad}/plant.pt", "--out", "{out}"],
    "roofseg-eval": ["--checkpoint", "{bad}/roof.pt", "--data", "{bad}/empty_dir"],
    "roofseg-predict": ["{bad}/photo.jpg", "--checkpoint", "{bad}/roof.pt", "--out", "{out}"],
    "roofseg-agreement": ["--data", "{bad}/empty_dir"],
    "videogen-eval": ["--checkpoint", "{bad}/video.pt", "--data", "{bad}/empty_dir"],
    "videogen-reconstruct": ["{bad}/clip.mp4", "--checkpoint", "{bad}/video.pt", "--out", "{out}/r.mp4"],
    "videogen-generate": ["--checkpoint", "{bad}/video.pt", "--prompt", "a cat", "--out", "{out}/g.mp4"],
}
DOMAIN_OF = {name: name.split("-")[0] for name in COMMANDS}
TRAIN = sorted(n for n in COMMANDS if n.endswith("-train"))
# commands that read a model file through --checkpoint (hairseg-eval/predict take --model too)
CHECKPOINT_FLAG = {n: "--checkpoint" for n in COMMANDS
                   if n.split("-", 1)[1] in ("eval", "predict", "export", "reconstruct", "generate")}
CHECKPOINT_FLAG.update({"hairseg-eval": "--checkpoint", "hairseg-predict": "--model"})
HAS_DEVICE = {n for n in COMMANDS if not n.endswith(("-data", "-agreement", "-export"))}
HAS_BATCH_SIZE = set(TRAIN) | {"foodrec-eval", "plantid-eval", "roofseg-eval", "videogen-eval"}
DATA_FOLDER = {"hairseg": "figaro1k", "foodrec": "food101_sample", "plantid": "flowers", "roofseg": "rid",
               "videogen": "videos"}
OTHER_DOMAIN = {"foodrec": "hair.pt", "hairseg": "food.pt", "plantid": "food.pt", "roofseg": "food.pt",
                "videogen": "food.pt"}
OWN_FILE = {"foodrec": "food.pt", "hairseg": "hair.pt", "plantid": "plant.pt", "roofseg": "roof.pt",
            "videogen": "video.pt"}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """Bad inputs, outside the working directory: zero-byte, malicious (pickled ``os.system``, as a torch
    zip and as a plain pickle), truncated and other-domain checkpoints, an empty folder, a photo, a clip."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.pt").write_bytes(b"")
    torch.save({"model": _Evil()}, d / "evil.pt")
    with open(d / "evil.pkl", "wb") as f:
        pickle.dump(_Evil(), f, protocol=4)
    torch.save({"model": {"w": torch.ones(20000)}}, d / "whole.pt")
    data = (d / "whole.pt").read_bytes()
    (d / "trunc.pt").write_bytes(data[: len(data) // 2])
    for domain, name in OWN_FILE.items():  # checkpoints that say which domain wrote them
        torch.save({"model": {"w": torch.ones(3)}, "config": {}, "domain": domain}, d / name)
    (d / "empty_dir").mkdir()
    from PIL import Image
    Image.new("RGB", (32, 32), (90, 120, 30)).save(d / "photo.jpg")
    (d / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    _videogen_files(d)
    _hairseg_files(d)
    _predict_files(d)
    return d


def _predict_files(d: Path) -> None:
    """The truncated-JPEG rows: ``cut.jpg`` (the first half of a JPEG, as a partly copied photo) and
    small untrained models the predict commands load before they read it: ``hair_tiny.pt`` (hairseg U-Net,
    MobileNetV2, 64 px) and ``food_tiny.pt`` (foodrec EfficientNet-Lite0, 2 classes, 64 px)."""
    import numpy as np
    from PIL import Image

    from foodrec.models import build_model as build_food
    from hairseg.models import build_model as build_hair

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "whole.jpg", quality=90)
    data = (d / "whole.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 2])
    torch.save({"model": build_hair("mobilenet_v2", None).state_dict(), "domain": "hairseg",
                "config": {"encoder": "mobilenet_v2", "image_size": 64}}, d / "hair_tiny.pt")
    torch.save({"model": build_food("efficientnet_lite0", num_classes=2, pretrained=None).state_dict(),
                "domain": "foodrec", "classes": ["a", "b"], "config": {"backbone": "efficientnet_lite0", "image_size": 64},
                "architectures": ["tf_efficientnet_lite0"]},  # as the trainer records it (else: a warning line)
               d / "food_tiny.pt")


def _hairseg_files(d: Path) -> None:
    """hairseg's rows: Figaro-1k layouts of 6 sample pairs with one bad pair each: a mask of another size
    (``hair_mismatch``) and a ``.jpg`` that is not an image (``hair_notimage``). Needs the sample data."""
    import shutil

    data = Path(os.environ.get("MLDATA_ROOT") or REPO.parent / "shared" / "data") / "figaro1k" / "Figaro1k"
    photos = sorted((data / "Original" / "Training").glob("*-org.jpg"))[:6]
    if len(photos) < 6:
        return  # the rows call require_data(), which skips or fails (MLDATA_REQUIRED=1)
    from PIL import Image

    for name in ("hair_mismatch", "hair_notimage"):
        (d / name / "Figaro1k" / "Original" / "Training").mkdir(parents=True)
        (d / name / "Figaro1k" / "GT" / "Training").mkdir(parents=True)
        for photo in photos:
            mask = data / "GT" / "Training" / photo.name.replace("-org.jpg", "-gt.pbm")
            shutil.copy(photo, d / name / "Figaro1k" / "Original" / "Training" / photo.name)
            shutil.copy(mask, d / name / "Figaro1k" / "GT" / "Training" / mask.name)
    first = photos[0].name
    mask = d / "hair_mismatch" / "Figaro1k" / "GT" / "Training" / first.replace("-org.jpg", "-gt.pbm")
    Image.open(mask).resize((30, 20)).save(mask)
    (d / "hair_notimage" / "Figaro1k" / "Original" / "Training" / first).write_text("not a photo\n")


def _videogen_files(d: Path) -> None:
    """videogen's rows: a 3 s clip cut in half with its index at the front ("faststart", a partly
    downloaded file) and at the end, a zero-byte mp4, a folder whose captions.csv lists the cut clip,
    and a tiny VAE checkpoint (untrained) to run them against."""
    from fractions import Fraction

    import av
    import numpy as np

    from videogen.models import build_vae, model_size

    rng = np.random.default_rng(0)
    for name, options in (("cut_front.mp4", {"movflags": "faststart"}), ("cut_end.mp4", {})):
        full = d / f"full_{name}"
        with av.open(str(full), "w", format="mp4", options=options) as c:
            s = c.add_stream("libx264", rate=Fraction(10))
            s.width = s.height = 32
            s.pix_fmt = "yuv420p"
            for _ in range(30):
                frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), format="rgb24")
                for p in s.encode(frame):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        data = full.read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
    (d / "zero.mp4").write_bytes(b"")
    (d / "cut_videos" / "clips").mkdir(parents=True)
    (d / "cut_videos" / "clips" / "cut.mp4").write_bytes((d / "cut_front.mp4").read_bytes())
    (d / "cut_videos" / "clips" / "ok.mp4").write_bytes((d / "full_cut_front.mp4").read_bytes())
    (d / "cut_videos" / "captions.csv").write_text("path,caption\nclips/ok.mp4,noise\nclips/cut.mp4,noise\n")
    (d / "nocaption_videos" / "clips").mkdir(parents=True)  # a captions.csv missing its caption column
    (d / "nocaption_videos" / "clips" / "ok.mp4").write_bytes((d / "full_cut_front.mp4").read_bytes())
    (d / "nocaption_videos" / "captions.csv").write_text("path,text\nclips/ok.mp4,noise\n")
    torch.save({"model": build_vae(model_size("tiny")).state_dict(), "domain": "videogen",
                "config": {"stage": "vae", "model_size": "tiny", "num_frames": 8, "image_size": 32, "fps": 8.0,
                           "val_clips": "none", "cache_dir": str(d / "probe_cache")}}, d / "vae_tiny.pt")


def _rows() -> list:
    rows = []

    def add(cmd, argv, code, needles, marks=()):
        rows.append(pytest.param(cmd, argv, code, needles, marks=marks, id=f"{cmd}:{' '.join(argv)[:60]}"))

    for cmd in sorted(COMMANDS):
        base = BASE.get(cmd, [])
        if cmd.endswith("-data"):
            add(cmd, ["download", "x", "--to", "{out}", "--bogus-flag"], 2, ["--bogus-flag"])
            add(cmd, ["download", "no_such_dataset", "--to", "{out}"], 2, ["no_such_dataset"])
            continue
        add(cmd, [*base, "--bogus-flag"], 2, ["--bogus-flag"])
        if cmd in HAS_DEVICE:
            add(cmd, [*base, "--device", "gpu"], 2, ["--device", "cuda[:N]", "present here"])
            if not torch.cuda.is_available():
                add(cmd, [*base, "--device", "cuda"], 2, ["--device", "CUDA is not available"])
        if cmd in HAS_BATCH_SIZE:
            add(cmd, [*base, "--batch-size", "0"], 2, ["--batch-size", "0"])
            add(cmd, [*base, "--batch-size", "two"], 2, ["--batch-size", "two"])
    for cmd, flag in sorted(CHECKPOINT_FLAG.items()):
        domain = DOMAIN_OF[cmd]
        base = [a for a in BASE.get(cmd, [])]
        if flag in base:  # replace the file after the flag
            i = base.index(flag)
            base = base[:i] + base[i + 2:]
        for name, code, needles in (("missing.pt", 1, ["missing.pt"]),
                                    ("empty.pt", 1, ["empty.pt", "0 bytes: not a checkpoint"]),
                                    ("evil.pt", 1, ["evil.pt", "refused", "posix.system", "not tensors"]),
                                    ("evil.pkl", 1, ["evil.pkl", "refused", "posix.system"]),
                                    ("trunc.pt", 1, ["trunc.pt", "truncated or corrupt"]),
                                    (OTHER_DOMAIN[domain], 1, [f"checkpoint, expected {domain}"])):
            add(cmd, [*base, flag, f"{{bad}}/{name}"], code, needles)
    for cmd in TRAIN:
        domain = DOMAIN_OF[cmd]
        data = ["--data", f"{{data}}/{DATA_FOLDER[domain]}", "--out", "{out}", "--max-steps", "1", "--num-workers", "0"]
        add(cmd, [*data, "--weights", "{bad}/missing.pt"], 2, ["--weights", "missing.pt"])
        add(cmd, [*data, "--weights", "{bad}/empty.pt"], 1, ["--weights", "empty.pt", "0 bytes: not a checkpoint"])
        add(cmd, [*data, "--weights", "{bad}/evil.pt"], 1, ["--weights", "refused", "posix.system"])
        add(cmd, [*data, "--weights", "{bad}/trunc.pt"], 1, ["--weights", "truncated or corrupt"])
        add(cmd, [*data, "--weights", f"{{bad}}/{OTHER_DOMAIN[domain]}"], 1,
            ["--weights", f"checkpoint, expected {domain}"])
        add(cmd, ["--data", "{bad}/no_such_folder", "--out", "{out}"], 2, ["--data", "no_such_folder"])
        add(cmd, ["--resume", "{bad}/empty.pt", "--data", f"{{data}}/{DATA_FOLDER[domain]}", "--out", "{out}"],
            1, ["empty.pt"])
    return rows + [pytest.param(*row, id=f"domain:{row[0]}:{' '.join(row[1])[:50]}") for row in DOMAIN_ROWS]


# ---- domain rows: (command, argv, exit code, needles) ----------------------------------------
# Domain helpers add their own cases here (truncated mp4 at either index position, mismatched mask,
# truncated JPEG, non-image .jpg, CSV missing a column, empty data folders of each layout...).
DOMAIN_ROWS: list[tuple[str, list[str], int, list[str]]] = [
    # hairseg: a mask whose size differs from its photo, a .jpg that is not an image (sample data)
    ("hairseg-train", ["--data", "{bad}/hair_mismatch", "--out", "{out}", "--max-steps", "1", "--num-workers", "0"],
     1, ["-gt.pbm is 30x20 but image", "-org.jpg is "]),
    ("hairseg-train", ["--data", "{bad}/hair_notimage", "--out", "{out}", "--max-steps", "1", "--num-workers", "0"],
     1, ["cannot read image", "-org.jpg"]),
    ("foodrec-train", ["--data", "{bad}/empty_dir", "--out", "{out}", "--max-steps", "1"], 1, ["empty_dir"]),
    # a truncated JPEG given to predict: the model loads, the photo does not decode (PIL: "image file is truncated")
    ("hairseg-predict", ["{bad}/cut.jpg", "--model", "{bad}/hair_tiny.pt", "--out", "{out}"], 1,
     ["cannot read image", "cut.jpg", "truncated"]),
    ("foodrec-predict", ["{bad}/cut.jpg", "--checkpoint", "{bad}/food_tiny.pt"], 1,
     ["cannot read image", "cut.jpg", "truncated", "--skip-bad-images"]),
    ("videogen-train", ["--data", "{bad}/nocaption_videos", "--out", "{out}", "--max-steps", "1"], 1,
     ["captions.csv", "expected columns path,caption", "got path,text"]),
    # videogen: truncated mp4s (index at the front / at the end) and a zero-byte file are unreadable, never scored
    ("videogen-reconstruct", ["{bad}/cut_front.mp4", "--checkpoint", "{bad}/vae_tiny.pt", "--out", "{out}/r.mp4"], 1,
     ["cut_front.mp4", "truncated", "3.00 s"]),
    ("videogen-reconstruct", ["{bad}/cut_end.mp4", "--checkpoint", "{bad}/vae_tiny.pt", "--out", "{out}/r.mp4"], 1,
     ["cut_end.mp4", "cannot open video"]),
    ("videogen-reconstruct", ["{bad}/zero.mp4", "--checkpoint", "{bad}/vae_tiny.pt", "--out", "{out}/r.mp4"], 1,
     ["zero.mp4", "0 bytes"]),
    ("videogen-eval", ["--checkpoint", "{bad}/vae_tiny.pt", "--data", "{bad}/cut_videos", "--split", "all"], 1,
     ["clips/cut.mp4", "truncated"]),
    ("videogen-reconstruct", ["{bad}/full_cut_front.mp4", "--checkpoint", "{bad}/vae_tiny.pt", "--out", "{out}/r.mp4",
                              "--num-frames", "0"], 2, ["--num-frames", "(got 0)"]),
    ("videogen-reconstruct", ["{bad}/full_cut_front.mp4", "--checkpoint", "{bad}/vae_tiny.pt", "--out", "{out}/r.mp4",
                              "--start", "99"], 2, ["--start 99", "outside"]),
]


@pytest.fixture(autouse=True)
def _quiet_root_logger():
    """Commands add an mlcore stderr handler to the root logger once per process; reset it per row so
    each row sees its own stderr (capsys)."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for h in list(root.handlers):
        if h not in before:
            root.removeHandler(h)


def _fill(argv: list[str], bad: Path, out: Path) -> list[str]:
    data = os.environ.get("MLDATA_ROOT") or str(REPO.parent / "shared" / "data")
    return [a.replace("{bad}", str(bad)).replace("{out}", str(out)).replace("{data}", data) for a in argv]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("command, argv, code, needles", _rows())
def test_bad_input_is_one_line(command, argv, code, needles, bad, tmp_path, monkeypatch, capsys):
    work = tmp_path / "cwd"
    work.mkdir()
    out = work / "out"
    monkeypatch.chdir(work)
    argv = _fill(argv, bad, out)
    if "{data}" in " ".join(argv) or any("/shared/data/" in a or "/hair_" in a for a in argv):
        from tests.conftest import require_data
        require_data()
    module, func = COMMANDS[command].split(":")
    main = getattr(importlib.import_module(module), func)
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse inside main, outside run_cli
        rc = exc.code
    captured = capsys.readouterr()
    err_lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    error_lines = [ln for ln in err_lines if ln.startswith(f"{command}: error: ")]
    assert "Traceback" not in captured.err, captured.err[-2000:]
    assert len(error_lines) == 1 and err_lines == error_lines, captured.err[-2000:]
    for needle in needles:
        assert needle in error_lines[0], (needle, error_lines[0])
    assert rc == code, (rc, error_lines[0])
    assert _tree(work) <= {"out"} | {p for p in _tree(work) if p.startswith("out")}, _tree(work)
    assert not (work / "pwned.txt").exists()

"""The run directory: config.yaml, metrics.jsonl, summary.json, TensorBoard events, train.log.

Only the main process (rank 0) writes; other ranks get a logger whose writes are no-ops.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from mlcore.checkpoint import atomic_write

log = logging.getLogger("mlcore")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (pytest and notebooks swap it between calls)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO, log_file: Path | None = None) -> None:
    """Configure the ``mlcore`` and root loggers once: stderr plus an optional file.

    Under ``torchrun`` only rank 0 logs at ``level``; other ranks log warnings and errors only.
    """
    if os.environ.get("RANK", "0") != "0":
        level = max(level, logging.WARNING)
    root = logging.getLogger()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_mlcore", False) for h in root.handlers):
        h = _StderrHandler()
        h.setFormatter(fmt)
        h._mlcore = True  # type: ignore[attr-defined]
        root.addHandler(h)
        root.setLevel(level)
    if log_file is not None and not any(getattr(h, "baseFilename", None) == str(log_file) for h in root.handlers):
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        root.addHandler(fh)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file + fsync + ``os.replace``).

    Non-finite floats are written as strings (``"nan"``), since JSON has no NaN.
    """
    return atomic_write(path, lambda f: f.write(json.dumps(_jsonable(obj), indent=2) + "\n"), binary=False)


class RunLogger:
    """Writes the run directory contract of DESIGN.md (main process only when ``enabled``)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._tb = None
        if enabled:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            setup_logging(log_file=self.run_dir / "train.log")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the resolved configuration to ``config.yaml``."""
        if self.enabled:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(_jsonable(config), sort_keys=False))

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl and the numbers to TensorBoard."""
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")
        if self._tb is not None:
            split = row.get("split", "train")
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step", "time"):
                    self._tb.add_scalar(f"{split}/{k}", v, row.get("step", 0))

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl with ``rows`` (on resume: the history saved in the checkpoint)."""
        if not self.enabled:
            return
        atomic_write(self.run_dir / "metrics.jsonl",
                     lambda f: f.writelines(json.dumps(_jsonable(r)) + "\n" for r in rows), binary=False)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar (e.g. ``train/lr`` at an optimizer step)."""
        if self._tb is not None:
            self._tb.add_scalar(tag, value, step)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` atomically."""
        if self.enabled:
            write_json_atomic(self.run_dir / "summary.json", summary)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None

"""``--profile``: a few optimizer steps under ``torch.profiler`` on a wait/warmup/active schedule.

The trace is written with ``tensorboard_trace_handler`` (open it with TensorBoard's profiler
plugin or Perfetto/chrome://tracing) and the top operators table is printed and saved as
``<out>/profile/top_ops.txt``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

log = logging.getLogger(__name__)


class StepProfiler:
    """Profiles optimizer steps ``wait+1 .. wait+warmup+active`` then stops itself.

    Args:
        out_dir: folder for the trace files (``*.pt.trace.json``) and ``top_ops.txt``.
        wait, warmup, active: the ``torch.profiler.schedule`` phases, in optimizer steps.
        row_limit: rows of the printed top-operators table.
    """

    def __init__(self, out_dir: str | Path, *, wait: int = 1, warmup: int = 1, active: int = 3,
                 row_limit: int = 15) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.total = wait + warmup + active
        self.row_limit = row_limit
        self.steps = 0
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self.table = ""
        self._prof = profile(
            activities=activities,
            schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=self._on_ready,
            record_shapes=True,
        )
        self._prof.__enter__()
        self._trace_handler = tensorboard_trace_handler(str(self.out_dir))

    def _on_ready(self, prof: profile) -> None:
        self._trace_handler(prof)
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        self.table = prof.key_averages().table(sort_by=sort, row_limit=self.row_limit)
        (self.out_dir / "top_ops.txt").write_text(self.table)
        print(self.table, flush=True)
        log.info("profiler trace written to %s", self.out_dir)

    def step(self) -> bool:
        """Mark the end of an optimizer step; returns True once profiling is finished."""
        self._prof.step()
        self.steps += 1
        if self.steps >= self.total:
            self.close()
            return True
        return False

    def close(self) -> None:
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self._prof = None

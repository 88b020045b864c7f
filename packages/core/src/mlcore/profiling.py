"""``--profile``: a few optimizer steps under ``torch.profiler`` on a wait/warmup/active schedule.

The trace is written with ``tensorboard_trace_handler`` (open it with TensorBoard's profiler
plugin or Perfetto/chrome://tracing) and the top operators table is printed and saved as
``<out>/profile/top_ops.txt``; every operator, grouped by name and input shapes, is also saved as
``<out>/profile/top_ops.json`` (see :func:`op_rows`) for scripts that compare profiles.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

log = logging.getLogger(__name__)


def op_rows(events: Any) -> list[dict[str, Any]]:
    """``prof.key_averages(group_by_input_shape=True)`` as JSON-able rows, most self CPU time first.

    Each row: ``name`` (operator or ``record_function`` label, e.g. ``aten::addmm``,
    ``Optimizer.step#AdamW.step``, ``enumerate(DataLoader)#...__next__``, ``ProfilerStep*``),
    ``input_shapes`` (str of the recorded shapes; ``""`` without ``record_shapes``), ``count`` (calls),
    ``self_cpu_us`` / ``cpu_total_us`` (microseconds summed over the recorded steps, self = excluding
    child operators) and ``self_device_us`` (CUDA/XPU kernel time, 0 on a CPU).
    """
    rows = [{"name": e.key, "input_shapes": str(e.input_shapes) if e.input_shapes else "", "count": int(e.count),
             "self_cpu_us": float(e.self_cpu_time_total), "cpu_total_us": float(e.cpu_time_total),
             "self_device_us": float(getattr(e, "self_device_time_total", 0.0) or 0.0)} for e in events]
    return sorted(rows, key=lambda r: -r["self_cpu_us"])


class StepProfiler:
    """Profiles optimizer steps ``wait+1 .. wait+warmup+active`` then stops itself.

    Args:
        out_dir: folder for the trace files (``*.pt.trace.json``), ``top_ops.txt`` and ``top_ops.json``
            (``{"profiled_steps": active, "ops": op_rows(...)}``).
        wait, warmup, active: the ``torch.profiler.schedule`` phases, in optimizer steps.
        row_limit: rows of the printed top-operators table.
    """

    def __init__(self, out_dir: str | Path, *, wait: int = 1, warmup: int = 1, active: int = 3,
                 row_limit: int = 15) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.total = wait + warmup + active
        self.active = active
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
        ops = op_rows(prof.key_averages(group_by_input_shape=True))
        (self.out_dir / "top_ops.json").write_text(json.dumps({"profiled_steps": self.active, "ops": ops}) + "\n")
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

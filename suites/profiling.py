"""Profiling: one case under ``torch.profiler``, in a pass separate from the timing.

Traces go through ``tensorboard_trace_handler`` (TensorBoard's torch-tb-profiler reads them; they
are Chrome-trace JSON, so Perfetto and chrome://tracing open them too), and the key averages
become rows of ``ops.csv``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

if TYPE_CHECKING:
    from suites.cases import Case

TOP_OPS = 30  # rows kept per case, by self time


def trace_name(case: Case) -> str:
    """A file-system-safe name for the case's trace directory (one TensorBoard run per case)."""
    raw = "-".join((case.layer, case.impl, case.compile, case.device, case.dtype, case.mode,
                    case.label))
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", raw)


def profile_case(step: Callable[[], Any], case: Case, profiled_label: str,
                 trace_dir: Path) -> list[dict[str, Any]]:
    """Profile ``step`` (wait 1, warm-up 1, active 1 call); return the top operators as rows."""
    activities = [ProfilerActivity.CPU]
    if case.device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    trace_dir.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=1, repeat=1),
                 on_trace_ready=tensorboard_trace_handler(str(trace_dir),
                                                          worker_name=trace_name(case)),
                 record_shapes=True, profile_memory=True) as prof:
        for _ in range(3):
            step()
            prof.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total
                    + _device_time(e, "self"), reverse=True)
    return [{
        "layer": case.layer, "impl": case.impl, "compile": case.compile, "device": case.device,
        "dtype": case.dtype, "mode": case.mode, "case": case.label,
        "profiled_case": profiled_label, "op": e.key, "calls": e.count,
        "self_cpu_us": e.self_cpu_time_total, "cpu_total_us": e.cpu_time_total,
        "self_device_us": _device_time(e, "self"), "device_total_us": _device_time(e, "total"),
        "self_cpu_mem_bytes": e.self_cpu_memory_usage,
    } for e in events[:TOP_OPS]]


def _device_time(event: Any, kind: str) -> float:
    # torch >= 2.4 names it device time; older releases cuda time
    names = (("self_device_time_total", "self_cuda_time_total") if kind == "self"
             else ("device_time_total", "cuda_time_total"))
    for name in names:
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0

"""Profiling: one case under ``torch.profiler``, in a pass separate from the timing.

The profiler runs a schedule of ``wait`` calls (not recorded), ``warmup`` calls (recorded, then
dropped: the profiler's own start-up cost lands there) and ``active`` calls, with shapes and
memory recorded (and Python stacks on request). What comes out, per case:

- a trace in the layout of ``tensorboard_trace_handler`` (``<dir>/<worker>.<ns>.pt.trace.json``;
  TensorBoard's torch-tb-profiler reads it), copied to a plain Chrome-trace JSON that Perfetto
  (https://ui.perfetto.dev) and chrome://tracing open;
- every operator with its calls and self/total times **per call of the case** (averaged over the
  active calls): the rows of ``ops.csv``; on a GPU, every kernel too, each row marked with
  its ``device_type`` (``op_row``);
- ``op_calls``: operators launched directly by the implementation per call (top-level operators:
  the five-loop conv launches hundreds of thousands, ``F.conv2d`` one);
- ``peak_mem_bytes``: the most memory the call held at once beyond what existed before it
  (the running sum of the profiler's allocation events on the case's device), and the
  allocation timeline of one call;
- ``step_ms``: the wall time of each recorded call (its ``ProfilerStep`` span), and the spans of
  the first one (``reports.timeline``): what the case's offline page
  (``reports.profile_page``) draws, saved next to the trace by ``CaseProfile.write``.

Kineto, the profiler's C++ core, writes a ``USDT:... profiler_start`` and a ``profiler_stop``
line to stderr (fd 2, past Python) every time it starts and stops, whatever ``logging`` says:
into a progress bar, once per case. ``quietly`` sends fd 2 to a file while the profiler starts,
steps and stops, then writes everything it caught except those lines to the real stderr; the
implementation's own calls run with stderr untouched.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
from torch.autograd import DeviceType
from torch.profiler import profile, schedule

from reports import schema
from reports.profile_page import write_case_files
from reports.record import Case
from reports.timeline import SPAN_COLUMNS, STEP_PREFIX, first_step, step_ms
from suites.devices import device

#: kineto's trace markers: ``USDT:2026-12-07 22:02:51 18892:18892 SyncActivityProfilerHandler
#: .cpp:52] profiler_start`` (its severity 5 passes the default level, ERROR = 4; the
#: KINETO_LOG_LEVEL=6 that would hide them hides kineto's errors too)
KINETO_MARKER = re.compile(rb"^USDT:[^\n]*\] [^\n]*(\n|$)", re.MULTILINE)


@dataclass(frozen=True)
class ProfileSettings:
    """The profiler's schedule and options (``active`` calls are recorded and averaged)."""

    wait: int = 1
    warmup: int = 1
    active: int = 3
    with_stack: bool = False

    def __post_init__(self) -> None:
        if self.wait < 0 or self.warmup < 0 or self.active < 1:
            raise ValueError(f"profiler schedule needs wait >= 0, warmup >= 0 and active >= 1 "
                             f"(got {self.wait}, {self.warmup}, {self.active})")

    @property
    def calls(self) -> int:
        return self.wait + self.warmup + self.active


# Naive loops: one call can take seconds, and the profiler multiplies that. Record one call,
# after one unrecorded warm-up call.
NAIVE_SETTINGS = ProfileSettings(wait=0, warmup=1, active=1)


@dataclass
class CaseProfile:
    """What one profiled case gives (see the module docstring)."""

    ops: list[dict[str, Any]]
    op_calls: float
    peak_mem_bytes: float
    memory: list[tuple[float, float]] = field(repr=False)  # (ms into the call, bytes held)
    step_ms: list[float] = field(default_factory=list)  # wall time of each recorded call
    spans: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(SPAN_COLUMNS)),
                                repr=False)  # the first recorded call's operators
    settings: ProfileSettings = ProfileSettings()

    def write(self, case_dir: Path) -> None:
        """Save what the case's page needs besides the trace and ops.csv into ``case_dir``."""
        plan = {k: v for k, v in dataclasses.asdict(self.settings).items() if k != "with_stack"}
        write_case_files(case_dir, self.step_ms, self.memory, self.spans,
                         {"op_calls": self.op_calls, "peak_mem_bytes": self.peak_mem_bytes,
                          "schedule": plan})


def trace_name(case: Case) -> str:
    """The case's profile directory name (``reports.schema.trace_name`` of its key)."""
    return schema.trace_name(case.key)


def ops_key(case: Case, profiled_label: str) -> dict[str, str]:
    """The case's key columns of an ``ops.csv`` row."""
    return {"layer": case.layer, "impl": case.impl, "compile": case.compile,
            "device": case.device, "dtype": case.dtype, "mode": case.mode, "case": case.label,
            "profiled_case": profiled_label}


def profile_case(step: Callable[[], Any], case: Case, profiled_label: str, trace_dir: Path,
                 settings: ProfileSettings = ProfileSettings(),
                 chrome_trace: Path | None = None) -> CaseProfile:
    """Profile ``step`` (``settings.calls`` calls) and write its trace under ``trace_dir``.

    ``profiled_label`` names the size actually profiled (the ``profiled_case`` column);
    ``chrome_trace``, when given, receives a copy of the trace under that name.
    """
    where = device(case.device)
    trace_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(prof: Any) -> None:  # tensorboard_trace_handler's layout, with the path kept
        worker = f"{socket.gethostname()}_{trace_name(case)}"
        path = trace_dir / f"{worker}.{time.time_ns()}.pt.trace.json"
        prof.export_chrome_trace(str(path))
        written.append(path)

    prof = profile(activities=where.profiler_activities(),
                   schedule=schedule(wait=settings.wait, warmup=settings.warmup,
                                     active=settings.active, repeat=1),
                   on_trace_ready=save, record_shapes=True, profile_memory=True,
                   with_stack=settings.with_stack)
    with quietly(prof) as next_step:
        for _ in range(settings.calls):
            step()
            next_step()
    if written and chrome_trace is not None:
        chrome_trace.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written[0], chrome_trace)
    steps = max(settings.active, 1)
    key = ops_key(case, profiled_label)
    averages = [e for e in prof.key_averages() if listed(e)]
    averages.sort(key=lambda e: e.self_cpu_time_total + _device_time(e, "self"), reverse=True)
    ops = [op_row(e, key, steps) for e in averages]
    top_level = sum(1 for e in prof.events()
                    if e.cpu_parent is not None and e.cpu_parent.name.startswith(STEP_PREFIX))
    events = list(prof.profiler.kineto_results.events())
    peak, timeline = memory_use(events, device_type=where.memory_event_type())
    spans = _spans(events)
    return CaseProfile(ops=ops, op_calls=top_level / steps, peak_mem_bytes=peak,
                       memory=timeline, step_ms=step_ms(spans), spans=first_step(spans),
                       settings=settings)


def listed(event: Any) -> bool:
    """Whether one of ``key_averages()``'s events gets an ``ops.csv`` row: not the profiler's
    own step, nor the device-side copy of a ``record_function`` range (``is_user_annotation``
    off the CPU), which spans kernels that have rows of their own (torch's table leaves it
    out of its device total too)."""
    on_device = event.device_type != DeviceType.CPU
    return not event.key.startswith(STEP_PREFIX) and not (
        on_device and getattr(event, "is_user_annotation", False))


def op_row(event: Any, key: dict[str, str], steps: int) -> dict[str, Any]:
    """The ``ops.csv`` row of one of ``key_averages()``'s events, per call of the case.

    ``device_type`` says what the row is: ``cpu`` for an operator (its self device time is the
    kernels it launched itself), ``cuda`` (or another device) for a kernel, copy or memset,
    whose time is its own. Every kernel has both, its row and its launching operator's: a
    case's device time is the sum over one kind (``reports.analysis.timed_ops``).
    """
    return {**key, "op": event.key, "calls": event.count / steps,
            "self_cpu_us": event.self_cpu_time_total / steps,
            "cpu_total_us": event.cpu_time_total / steps,
            "self_device_us": _device_time(event, "self") / steps,
            "device_total_us": _device_time(event, "total") / steps,
            "self_cpu_mem_bytes": event.self_cpu_memory_usage / steps,
            "device_type": event.device_type.name.lower()}


@contextmanager
def quietly(prof: profile) -> Iterator[Callable[[], None]]:
    """``prof`` started, and stopped on leaving; yields its ``step``. Kineto's markers never
    reach stderr (see the module docstring); every other line does."""
    with tempfile.TemporaryFile() as spool:
        _filtered(spool, prof.__enter__)
        try:
            yield lambda: _filtered(spool, prof.step)
        finally:
            _filtered(spool, prof.__exit__, None, None, None)


def _filtered(spool: BinaryIO, call: Callable[..., Any], *args: Any) -> None:
    """``call(*args)`` with fd 2 sent to ``spool``; then what it caught, less kineto's
    markers, to the real fd 2."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to keep clean
        call(*args)
        return
    os.dup2(spool.fileno(), 2)
    try:
        call(*args)
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        fd = spool.fileno()
        if size := os.lseek(fd, 0, os.SEEK_CUR):
            kept = KINETO_MARKER.sub(b"", os.pread(fd, size, 0))
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            while kept:
                kept = kept[os.write(2, kept):]


def _spans(events: list[Any]) -> pd.DataFrame:
    """Every event with a duration (``reports.timeline.SPAN_COLUMNS``): CPU operators on their
    thread's track, kernels and copies on their device stream's."""
    origin = min((e.start_ns() for e in events), default=0)  # keeps float us exact to the ns
    rows = []
    for e in events:
        if (duration := e.duration_ns()) > 0:
            on_cpu = e.device_type() == DeviceType.CPU
            track = (f"cpu:{e.start_thread_id()}" if on_cpu else
                     f"{e.device_type().name.lower()}{e.device_index()}:{e.device_resource_id()}")
            rows.append((e.name(), track, (e.start_ns() - origin) / 1e3, duration / 1e3))
    return pd.DataFrame(rows, columns=list(SPAN_COLUMNS))


def memory_use(events: list[Any],
               device_type: DeviceType) -> tuple[float, list[tuple[float, float]]]:
    """Peak bytes held beyond the start of a call, over the recorded calls; the first call's
    allocation timeline as (ms since the call started, bytes held).

    Built from the profiler's ``[memory]`` events (``profile_memory=True``, the kineto events
    of the profile): each is one allocation (positive bytes) or free (negative) on a device;
    their running sum inside a ``ProfilerStep`` is what the call holds on top of what existed
    before it.
    """
    steps = sorted((e.start_ns(), e.start_ns() + e.duration_ns()) for e in events
                   if e.name().startswith(STEP_PREFIX))
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events
                         if e.name() == "[memory]" and e.device_type() == device_type)
    peak, timeline = 0.0, []
    for i, (start, end) in enumerate(steps):
        held, timeline_i = 0.0, [(0.0, 0.0)]
        for t, nbytes in allocations:
            if start <= t <= end:
                held += nbytes
                peak = max(peak, held)
                timeline_i.append(((t - start) / 1e6, held))
        if i == 0:
            timeline = [*timeline_i, ((end - start) / 1e6, held)]
    return peak, timeline


def _device_time(event: Any, kind: str) -> float:
    # torch >= 2.4 names it device time; older releases cuda time
    names = (("self_device_time_total", "self_cuda_time_total") if kind == "self"
             else ("device_time_total", "cuda_time_total"))
    for name in names:
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0

"""What else used the machine while a case was timed.

Linux's ``/proc/stat`` counts the time every CPU spent busy (steal, the time the hypervisor gave
to other guests, included); this process's own CPU time (all its threads) comes from
``time.process_time``. The difference, over the wall time of the samples, is how many cores
other processes took: ``busy_cores``. A case whose threads needed more cores than were left is
marked: with 2 threads on 2 cores and one taken, every multi-threaded kernel waits on its
slower half, and the numbers say more about the neighbour than about the implementation.

``/proc/stat`` counts in clock ticks (10 ms), so one short sample reads 0 or 1 tick per CPU;
summed over the many samples of a case the count is unbiased. Off Linux nothing is measured and
``busy_cores`` is NaN: no case is marked, and the run says that it could not watch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reports.record import Case, CaseResult

NAN = float("nan")
#: cores other processes may use beyond those a case leaves free before it is marked: background
#: daemons and the odd tick of steal on a quiet machine stay below it
BUSY_SLACK_CORES = 0.25
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
_STAT = "/proc/stat"


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cpu_seconds() -> float | None:
    """CPU-seconds every CPU of the machine has spent busy since boot (steal included); None
    where ``/proc/stat`` is not there to read."""
    try:
        with open(_STAT, "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu" or len(fields) < 8:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    steal = int(fields[8]) if len(fields) > 8 else 0
    return (user + nice + system + irq + softirq + steal) * _TICK_S


@dataclass
class Meter:
    """Accumulates other processes' CPU time over the windows it is told about."""

    others_s: float = 0.0
    wall_s: float = 0.0
    windows: int = 0
    _start: tuple[float, float, float] | None = field(default=None, repr=False)

    def start(self) -> None:
        busy = busy_cpu_seconds()
        self._start = None if busy is None else (busy, time.process_time(), time.perf_counter())

    def stop(self) -> None:
        if self._start is None:
            return
        busy = busy_cpu_seconds()
        if busy is None:
            return
        busy0, own0, wall0 = self._start
        self.others_s += (busy - busy0) - (time.process_time() - own0)
        self.wall_s += time.perf_counter() - wall0
        self.windows += 1
        self._start = None

    def add(self, other: Meter) -> None:
        self.others_s += other.others_s
        self.wall_s += other.wall_s
        self.windows += other.windows

    @property
    def busy_cores(self) -> float:
        """Cores other processes used on average over the windows (NaN: nothing measured)."""
        if self.wall_s <= 0:
            return NAN
        return max(self.others_s / self.wall_s, 0.0)


def probe(seconds: float = 0.3, sleep: Callable[[float], None] = time.sleep) -> float:
    """Cores other processes use now, watched over ``seconds`` while this process sleeps."""
    meter = Meter()
    meter.start()
    sleep(seconds)
    meter.stop()
    return meter.busy_cores


def needed_cores(threads: int, device_kind: str) -> int:
    """Cores a case keeps busy: its CPU threads on the CPU, the one launching thread elsewhere."""
    return max(threads, 1) if device_kind == "cpu" else 1


def interference(busy_cores: float, threads: int, device_kind: str,
                 total: int | None = None) -> str:
    """Why the other processes' ``busy_cores`` spoil a case's numbers, or "" when they do not."""
    if math.isnan(busy_cores):
        return ""
    total = total or cores()
    needed = needed_cores(threads, device_kind)
    spare = max(total - needed, 0)
    if busy_cores <= spare + BUSY_SLACK_CORES:
        return ""
    left = max(total - busy_cores, 0.0)
    text = (f"interference: other processes used {busy_cores:.1f} of {total} cores, leaving "
            f"{left:.1f} for {needed} thread{'s' if needed > 1 else ''}")
    if device_kind == "cpu" and needed > 1:
        text += f" (try --threads {max(math.floor(left), 1)})"
    return text


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class LoadWatch:
    """A runner sink that watches the machine over a run: ``meta.json``'s ``load`` and the
    busy-machine warning.

    ``timed`` and ``unstable`` start from an earlier part of a resumed run.
    """

    def __init__(self, threads: int, target: float = NAN, timed: int = 0, unstable: int = 0,
                 disturbed: int = 0, probe_s: float = 0.3) -> None:
        self.threads, self.cores, self.target = threads, cores(), target
        self.loadavg_start = load_average()
        self.at_start = probe(probe_s) if probe_s > 0 else NAN
        self.busy: list[float] = []
        self.imprecise: list[float] = []  # the precision each imprecise case reached
        self.timed, self.unstable, self.disturbed = timed, unstable, disturbed

    def started(self, case: Case) -> None:
        pass

    def finished(self, result: CaseResult) -> None:
        if not result.samples:
            return
        self.timed += 1
        self.unstable += result.stable is False
        self.disturbed += any(f.startswith("interference:") for f in result.flags)
        if any(f.startswith("imprecise:") for f in result.flags):
            self.imprecise.append(result.precision)
        if not math.isnan(result.busy_cores):
            self.busy.append(result.busy_cores)

    def warning_now(self) -> str | None:
        """What to say before the first case when the machine is already busy."""
        if not self.at_start > BUSY_SLACK_CORES:
            return None
        left = max(self.cores - self.at_start, 0.0)
        return (f"the machine is busy: other processes use {self.at_start:.1f} of {self.cores} "
                f"cores; cases that need more than the {left:.1f} left will be marked unstable"
                + (f" (try --threads {max(math.floor(left), 1)})"
                   if self.threads > max(math.floor(left), 1) else ""))

    def summary(self) -> dict[str, Any]:
        """The run's ``load`` record, with its warning (None on a quiet run)."""
        mean = sum(self.busy) / len(self.busy) if self.busy else NAN
        peak = max(self.busy) if self.busy else NAN
        end = load_average()
        busy = self.disturbed > 0 or mean > BUSY_SLACK_CORES
        warning = None
        if busy:
            load = f"; load {end[0]:g}" if end else ""
            warning = (f"the machine was busy: other processes used {mean:.1f} of {self.cores} "
                       f"cores on average{load}; {self.unstable} of {self.timed} timed cases "
                       "unstable") if mean > BUSY_SLACK_CORES else (
                f"other processes disturbed {self.disturbed} of {self.timed} timed cases (up to "
                f"{peak:.1f} of {self.cores} cores; {mean:.2f} on average{load})")
            if self.disturbed:
                left = max(math.floor(self.cores - mean), 1)
                warning += (f" ({self.disturbed} disturbed: rerun on a quiet machine"
                            + (f" or with --threads {left}" if self.threads > left else "") + ")")
        return {"cores": self.cores, "threads": self.threads, "precision_target": self.target,
                "imprecise_cases": len(self.imprecise), "note": self._precision_note(),
                "loadavg_start": self.loadavg_start, "loadavg_end": end,
                "busy_cores_at_start": _rounded(self.at_start), "busy_cores_mean": _rounded(mean),
                "busy_cores_max": _rounded(peak), "timed_cases": self.timed,
                "unstable_cases": self.unstable, "disturbed_cases": self.disturbed,
                "watched": bool(self.busy) or not math.isnan(self.at_start), "busy": busy,
                "warning": warning}

    def _precision_note(self) -> str | None:
        """What to do about cases that missed the precision target (this part of the run)."""
        reached = sorted(p for p in self.imprecise if not math.isnan(p))
        if not reached:
            return None
        typical = reached[len(reached) // 2]
        suggest = math.ceil(typical * 100) / 100
        return (f"{len(reached)} timed case{'s' if len(reached) > 1 else ''} missed the "
                f"+-{self.target:.0%} precision target (half of them reached +-{typical:.1%} "
                f"or better): --precision {suggest:g} accepts that, a larger --max-time "
                "samples longer, a quieter machine helps most")


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)

"""Host memory of the process running the cases: each case's peak RSS, and a worker's growth.

Peak RSS (``peak_rss_bytes``): the largest resident set of the process while the case's work ran
(its check against the reference, warm-up, samples and, with ``--profile``, its profiling), read
from the kernel, not sampled. Before each piece of a case's work (its guard, ``suites.isolation``)
the process's high-water mark is reset by writing ``5`` to ``/proc/self/clear_refs`` (Linux 4.0+);
after it, ``VmHWM`` in ``/proc/self/status`` is the piece's peak; the case's peak is the largest
of its pieces. The kernel keeps that mark on every page fault, so it is exact, costs ~35 us per
piece and needs no thread: a sampling thread would both miss short peaks and take CPU from the
case being timed. Where the mark cannot be reset (not Linux, a locked-down ``/proc``), a piece
counts only when it raised the mark (``VmHWM``, or ``getrusage``'s ``ru_maxrss``): that new mark
was reached during it; otherwise the peak is not known (empty).

Growth: the RSS after a piece minus before it, summed per case (what the case left behind). A
worker process (``--isolate``) whose RSS grew by more than ``WORKER_RSS_GROWTH_BYTES`` since it
started is replaced after its size group (the earliest point: one group's cases are timed
together), so a leak of one implementation does not make the next cases run in a bloated,
fragmented process; its rows say so in ``flags``. ``LAYERBENCH_WORKER_RSS_LIMIT_MIB`` sets
the limit (0: never recycle).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: a worker that grew by more than this since it started is replaced after its size group. The
#: first torch.compile in a process adds ~150 MiB and glibc keeps freed heap memory (up to
#: ``suites.timing.TRIM_THRESHOLD_BYTES``): 512 MiB stays clear of both, and catches a leak
#: that would change the memory the next cases run in.
WORKER_RSS_GROWTH_BYTES = 512 << 20
RSS_LIMIT_ENV = "LAYERBENCH_WORKER_RSS_LIMIT_MIB"
RECYCLED_TAG = "worker recycled:"
MIB = 1 << 20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def worker_rss_limit() -> int:
    """The growth in bytes past which a worker is replaced (0: never): ``RSS_LIMIT_ENV`` in MiB,
    else ``WORKER_RSS_GROWTH_BYTES``."""
    text = os.environ.get(RSS_LIMIT_ENV, "").strip()
    try:
        return max(int(float(text) * MIB), 0) if text else WORKER_RSS_GROWTH_BYTES
    except ValueError:
        return WORKER_RSS_GROWTH_BYTES


def rss_bytes() -> float:
    """This process's resident set size now (NaN where unknown)."""
    return _read()[0]


def reset_peak() -> bool:
    """Reset this process's RSS high-water mark to its RSS now; whether that was possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class CaseMemory:
    """The peak RSS and growth of each case of one size group, over the pieces of its work."""

    def __init__(self, cases: int) -> None:
        self.peak = [math.nan] * cases
        self.grown = [0.0] * cases

    @contextlib.contextmanager
    def watching(self, index: int) -> Iterator[None]:
        """Measure the work in this block as case ``index``'s."""
        reset = reset_peak()
        rss_before, mark_before = _read()
        try:
            yield
        finally:
            rss_after, mark_after = _read()
            if reset or mark_after > mark_before:  # else this piece's peak is not known
                known = self.peak[index]
                self.peak[index] = mark_after if math.isnan(known) else max(known, mark_after)
            if not math.isnan(rss_after - rss_before):
                self.grown[index] += rss_after - rss_before

    def record(self, results: Sequence[Any]) -> None:
        """Give each result (one per case, in order) its ``peak_rss_bytes``."""
        for result, peak in zip(results, self.peak, strict=True):
            if hasattr(result, "peak_rss_bytes"):
                result.peak_rss_bytes = peak

    def recycled(self, results: Sequence[Any], grown_bytes: float, limit_bytes: int) -> None:
        """Flag each result (one per case, in order) of a group after which its worker, grown
        by ``grown_bytes`` since it started, is replaced."""
        for result, left in zip(results, self.grown, strict=True):
            if hasattr(result, "flags"):
                result.flags.append(
                    f"{RECYCLED_TAG} its RSS grew {grown_bytes / MIB:.0f} MiB since it started "
                    f"(limit {limit_bytes / MIB:.0f} MiB, {RSS_LIMIT_ENV}); this case left "
                    f"{left / MIB:+.0f} MiB; the worker was replaced after this size group")


def _read() -> tuple[float, float]:
    """(RSS, RSS high-water mark) of this process in bytes; NaN where unknown."""
    try:
        status = _STATUS.read_text(encoding="ascii", errors="replace")
    except OSError:
        status = ""
    found = {key: float(value) * 1024 for key, value in
             re.findall(r"^(VmRSS|VmHWM):\s+(\d+)\s+kB", status, re.MULTILINE)}
    if "VmHWM" not in found:  # ru_maxrss: KiB on Linux, bytes on macOS
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        found["VmHWM"] = float(maxrss) * (1 if sys.platform == "darwin" else 1024)
    return found.get("VmRSS", math.nan), found["VmHWM"]

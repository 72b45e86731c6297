"""Timing: warm up a zero-argument callable and turn it into samples for the rounds.

CPU (and MPS): blocks of calls timed by ``timeit`` with the thread count set, as
``torch.utils.benchmark.Timer`` does (one sample = the mean call time of one block lasting about
``block_s``). CUDA: one call per sample between two CUDA events, with a buffer larger than the
L2 cache overwritten before every sample, outside the timed region, so each call starts from a
cold cache as it would inside a network. ``suites.devices`` says which a device uses.
``suites.rounds`` decides how many samples to take, interleaved with the other implementations
of the same size.

On Linux with glibc, :func:`steady_malloc` first fixes malloc's thresholds, so every case meets
the same allocator whatever ran before it in the process.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.benchmark.utils.common import set_torch_threads

from reports.record import Samples
from suites.config import TimingConfig
from suites.devices import Device
from suites.rounds import SLOW_CALL_S, Contestant, run_rounds

__all__ = ["SLOW_CALL_S", "measure", "sampler", "steady_malloc", "warm_up"]


#: glibc's ``mallopt`` parameters, and the values :func:`steady_malloc` gives them.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest: blocks below it come from the heap
TRIM_THRESHOLD_BYTES = 1 << 30  # freed heap memory is kept (up to this much), not returned
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_malloc_state: dict[str, int] | None = None


def steady_malloc() -> dict[str, int] | None:
    """Fix glibc malloc's mmap and trim thresholds for this process; the values set, or None.

    By default glibc raises its mmap threshold each time a large block is freed and returns
    freed memory to the system above a trim threshold that follows it, so whether a 1-30 MiB
    tensor comes from the heap or from fresh, page-faulting memory depends on what the process
    ran before. ``F.conv2d`` at 32x8x28x28, 3x3 -> 16 channels ran 2.0 ms or 0.59 ms in the same
    process depending on the preceding case (one thread, this project's CPU machine). Fixed
    thresholds end that dependence: blocks under 32 MiB are reused from the heap, larger ones
    are always mapped afresh. Idempotent; does nothing (None) off glibc or when the user set
    malloc's environment variables or tunables.
    """
    global _malloc_state
    if _malloc_state is not None or not sys.platform.startswith("linux"):
        return _malloc_state or None
    if any(name in os.environ for name in _MALLOC_ENV):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    wanted = (("mmap_threshold", M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
              ("trim_threshold", M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    # what mallopt accepted (a stub of another allocator may refuse): recorded as it is
    _malloc_state = {name: value for name, param, value in wanted if mallopt(param, value)}
    return _malloc_state or None


def warm_up(step: Callable[[], Any], device: Device, seconds: float) -> float:
    """Call ``step`` (at least twice) until ``seconds`` have passed; return the time per call."""
    device.synchronize()
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < seconds:
        step()
        device.synchronize()
        calls += 1
        if calls >= 2 and time.perf_counter() - start > SLOW_CALL_S:
            break  # a slow call is warm after two; do not spend the budget here
    return (time.perf_counter() - start) / calls


def sampler(step: Callable[[], Any], device: Device, config: TimingConfig) -> Contestant:
    """Warm ``step`` up and make it a contestant of the rounds: each sample a block of calls
    (CPU) or one event-timed call after an L2 flush (CUDA). Call it with the case's threads set."""
    steady_malloc()
    per_call_s = warm_up(step, device, config.warmup_s)
    if device.event_timing:
        flush = device.flush_buffer() if config.flush_l2 else None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        timed = graphed(step) if config.cuda_graph else step

        def event_sample() -> float:
            if flush is not None:
                flush.zero_()  # evict the previous call's data from L2, outside the timed region
            start.record()
            timed()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return Contestant(event_sample, per_call_s)
    timed = device.blocking(step)
    calls = max(1, round(config.block_s / per_call_s))
    # timeit's loop, as torch.utils.benchmark.Timer runs it, but not Timer.timeit: that calls
    # the statement max(calls // 100, 2) more times before every sample, which tripled the
    # cost of a slow case (one call per sample) and added nothing the warm-up had not done.
    timer = timeit.Timer(timed, timer=time.perf_counter)  # garbage collection off while timing

    def block_sample() -> float:
        return max(timer.timeit(calls), 1e-9) / calls

    return Contestant(block_sample, per_call_s * calls, calls=calls)


def graphed(step: Callable[[], Any]) -> Callable[[], Any]:
    """``step`` captured once into a CUDA graph; the graph's replay, which launches all of its
    kernels at once: the time a graphed model would see, without the CPU's launch costs (the
    L2 flush before each sample stays outside the graph, so replays start cold too, unlike
    ``triton.testing.do_bench_cudagraph``, which replays many calls back to back on a warm
    cache). A step that synchronizes with the CPU or changes shapes cannot be captured: the
    case fails with the capture's error."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the allocator's warm-up, as torch.cuda.graph asks
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


#: a case is launch-bound when back-to-back calls take this much longer per call than one
#: call between events: the GPU waits for the CPU to launch its kernels
LAUNCH_BOUND_RATIO = 1.25
LAUNCH_BOUND_TAG = "launch_bound"


def wall_per_call(step: Callable[[], Any], device: Device, seconds: float,
                  min_calls: int = 10) -> float:
    """Seconds per call of back-to-back calls by the wall clock, synchronized once at the end:
    what a loop of calls costs with every launch on the CPU included (at least ``min_calls``
    calls, about ``seconds`` in all)."""
    device.synchronize()
    start = time.perf_counter()
    step()
    device.synchronize()
    calls = max(min_calls, round(seconds / max(time.perf_counter() - start, 1e-9)))
    start = time.perf_counter()
    for _ in range(calls):
        step()
    device.synchronize()
    return (time.perf_counter() - start) / calls


def launch_bound(wall_s: float, event_hi_s: float, event_median_s: float) -> str | None:
    """The ``launch_bound`` flag where back-to-back calls take clearly longer than one call on
    the GPU: more than ``LAUNCH_BOUND_RATIO`` x its median and beyond its 95% interval."""
    if not (wall_s > LAUNCH_BOUND_RATIO * event_median_s and wall_s > event_hi_s):
        return None
    return (f"{LAUNCH_BOUND_TAG}: {wall_s * 1e6:.3g} us per call back to back against "
            f"{event_median_s * 1e6:.3g} us on the GPU: the CPU launches slower than the GPU "
            "computes (wall_ms; --cuda-graph times the GPU alone)")


def measure(step: Callable[[], Any], device: Device, config: TimingConfig,
            threads: int) -> Samples:
    """Warm up ``step`` and time it alone (rounds of one), on ``threads`` CPU threads."""
    with set_torch_threads(threads):  # what Timer(num_threads=threads) does
        contestant = sampler(step, device, config)
        run_rounds([contestant], config)
    if contestant.failure is not None:
        raise contestant.failure
    return contestant.samples(group=None)

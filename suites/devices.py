"""Where a case runs: one object per device kind, so no code tests device strings.

``device("cuda:1")`` gives the device behind a ``--device`` value: whether it is present here,
which dtypes it runs, how to wait for its queued work, how to read the peak memory of a call,
what flushes its cache between timing samples, and what its thread count means. CPU, CUDA and
Apple's MPS are known; a name is checked for presence with ``problem()`` before anything runs.
"""

from __future__ import annotations

import contextlib
import gc
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

from reports.schema import device_kind

KINDS = ("cpu", "cuda", "mps")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tf32_flags() -> dict[str, Any]:
    """The TF32 switches in effect now (recorded in ``meta.json`` as ``machine.tf32``)."""
    return {
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


class Device:
    """The CPU; the base of the accelerators, which override what differs."""

    kind = "cpu"
    #: timing: blocks of back-to-back calls by wall clock (False), or one call per sample
    #: between device events after a cache flush (True)
    event_timing = False
    #: bytes of the copy that measures bandwidth: far beyond any cache
    copy_bytes = 256 << 20
    #: what ``threads`` means in a row: torch's intra-op threads that compute the case
    threads_meaning = "CPU threads computing the case"

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"device({self.name!r})"

    def problem(self) -> str:
        """Why the device cannot be used here, or ``""`` if it can."""
        return ""

    def dtype_problem(self, dtype: torch.dtype) -> str:
        """Why ``dtype`` cannot run here, or ``""``."""
        return ""

    def display_name(self) -> str:
        """What measured ceilings belong to: the CPU model and thread count, or the GPU."""
        return f"{cpu_model()} x{torch.get_num_threads()} threads"

    def synchronize(self) -> None:
        """Wait for the device's queued work (nothing to wait for on the CPU)."""

    def blocking(self, step: Callable[[], Any]) -> Callable[[], Any]:
        """``step``, made to return only once its work is done (for block timing)."""
        return step

    def selected(self) -> contextlib.AbstractContextManager[Any]:
        """Make this device the current one of its kind for a block (``cuda:N``)."""
        return contextlib.nullcontext()

    def release_memory(self) -> None:
        """Free what the last case left behind (its tensors, the allocator's cache)."""
        gc.collect()

    def peak_memory_bytes(self, step: Callable[[], Any]) -> int | None:
        """Peak bytes one call of ``step`` allocates beyond what exists before it, or None
        where only the profiler can tell (the CPU: ``bench --profile``)."""
        return None

    def poison_allocator(self, numel: int, dtype: torch.dtype) -> None:
        """Leave NaN-filled blocks where the next allocation may come from, so an output
        element an implementation forgets to write shows (the caching allocators only; CPU
        memory comes fresh and zeroed from the system)."""

    def flush_buffer(self) -> torch.Tensor | None:
        """A buffer larger than the device's last-level cache, overwritten before each
        event-timed sample (None where calls are timed in blocks)."""
        return None

    def profiler_activities(self) -> list[ProfilerActivity]:
        return [ProfilerActivity.CPU]

    def memory_event_type(self) -> DeviceType:
        """Which device's allocation events the profiler's memory timeline follows."""
        return DeviceType.CPU


class CudaDevice(Device):
    kind = "cuda"
    event_timing = True
    copy_bytes = 1 << 30
    threads_meaning = "CPU threads launching the case's kernels"

    def problem(self) -> str:
        if not torch.cuda.is_available():
            cuda = torch.version.cuda
            build = "a CPU-only build" if cuda is None else f"built for CUDA {cuda}"
            return (f"--device {self.name}: no CUDA GPU is available "
                    f"(torch {torch.__version__}, {build})")
        index_text = self.name.partition(":")[2] or "0"
        if not index_text.isdigit():
            return f"--device {self.name}: bad device index {index_text!r}"
        if int(index_text) >= torch.cuda.device_count():
            return (f"--device {self.name}: only {torch.cuda.device_count()} CUDA device(s) "
                    "present")
        return ""

    def dtype_problem(self, dtype: torch.dtype) -> str:
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return f"bfloat16 is not supported by {self.display_name()}"
        return ""

    def display_name(self) -> str:
        return torch.cuda.get_device_name(torch.device(self.name))

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def selected(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.device(torch.device(self.name))

    def release_memory(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()

    def peak_memory_bytes(self, step: Callable[[], Any]) -> int | None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)

    def poison_allocator(self, numel: int, dtype: torch.dtype) -> None:
        torch.full((numel,), float("nan"), dtype=dtype, device=self.name)

    def flush_buffer(self) -> torch.Tensor | None:
        l2_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
        return torch.empty(max(2 * l2_bytes, 64 << 20) // 4, dtype=torch.int32,
                           device=self.name)

    def profiler_activities(self) -> list[ProfilerActivity]:
        return [ProfilerActivity.CPU, ProfilerActivity.CUDA]

    def memory_event_type(self) -> DeviceType:
        return DeviceType.CUDA


class MpsDevice(Device):
    kind = "mps"
    copy_bytes = 1 << 30
    threads_meaning = "CPU threads launching the case's kernels"

    def problem(self) -> str:
        if not torch.backends.mps.is_available():
            return "--device mps: the MPS backend is not available on this machine"
        return ""

    def dtype_problem(self, dtype: torch.dtype) -> str:
        return "float64 is not supported on MPS" if dtype == torch.float64 else ""

    def display_name(self) -> str:
        return "Apple MPS"

    def synchronize(self) -> None:
        torch.mps.synchronize()

    def blocking(self, step: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> None:
            step()
            torch.mps.synchronize()
        return call


_CLASSES: dict[str, type[Device]] = {"cpu": Device, "cuda": CudaDevice, "mps": MpsDevice}


def device(name: str) -> Device:
    """The device behind a ``--device`` value (``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    Raises ``ValueError`` for a name of no known kind; presence is ``problem()``'s to say.
    """
    kind = device_kind(name)
    if kind not in _CLASSES or (kind != "cuda" and name != kind):
        raise ValueError(f"unknown device {name!r} (choose from cpu, cuda, cuda:N, mps, all)")
    return _CLASSES[kind](name)


def available() -> list[str]:
    """The device kinds present here (what ``--device all`` means)."""
    return [kind for kind in KINDS if not device(kind).problem()]

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
from collections.abc import Callable, Collection, Iterator
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


#: the settings of torch's ``fp32_precision`` API (torch >= 2.9) that decide TF32 on CUDA, as
#: ``torch.backends`` attribute paths, and the setting each inherits from while it is "none"
_FP32_SETTINGS: dict[str, tuple[str, str | None]] = {
    "matmul": ("cuda.matmul", "cuda"), "conv": ("cudnn.conv", "cuda"),
    "rnn": ("cudnn.rnn", "cuda"), "cuda": ("cudnn", "generic"), "generic": ("", None)}
#: the setting that decides whether each library's float32 math may use TF32 (``LIBRARIES``)
TF32_SETTINGS = {"cublas": "matmul", "cudnn_conv": "conv", "cudnn_rnn": "rnn"}


def _fp32_holder(setting: str) -> Any:
    holder: Any = torch.backends
    for part in filter(None, _FP32_SETTINGS[setting][0].split(".")):
        holder = getattr(holder, part)
    return holder


def fp32_precision(setting: str) -> str | None:
    """torch's ``fp32_precision`` of a CUDA ``setting`` (``matmul``, ``conv``, ``rnn``) as in
    effect, inherited values resolved: ``tf32``, ``ieee`` or ``none``; None before torch 2.9.
    Unlike the legacy ``allow_tf32`` it never raises, whichever API set it."""
    try:
        return str(_fp32_holder(setting).fp32_precision)
    except AttributeError:
        return None


def tf32_allowed(library: str) -> bool:
    """Whether float32 math through ``library`` (one of ``LIBRARIES``) may use TF32 now."""
    setting = TF32_SETTINGS[library]
    if (value := fp32_precision(setting)) is not None:
        return value == "tf32"
    # torch < 2.9 has only the legacy flags, which cannot disagree with themselves
    legacy = torch.backends.cuda.matmul if setting == "matmul" else torch.backends.cudnn
    return bool(legacy.allow_tf32)


def tf32_flags() -> dict[str, Any]:
    """The TF32 switches in effect now (``meta.json``: ``machine.tf32``), read through torch's
    ``fp32_precision`` API so that no mix of it and the legacy flags can raise.

    ``cudnn_allow_tf32``: cuDNN convolutions or RNNs may use TF32; ``float32_matmul_precision``
    is the legacy setting, None where the two APIs disagree and torch refuses to read it.
    """
    allowed = {library: tf32_allowed(library) for library in TF32_SETTINGS}
    try:
        legacy: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:  # "mix of the legacy and new APIs"
        legacy = None
    return {
        "cuda_matmul_allow_tf32": allowed["cublas"],
        "cudnn_allow_tf32": allowed["cudnn_conv"] or allowed["cudnn_rnn"],
        "cudnn_conv_allow_tf32": allowed["cudnn_conv"],
        "cudnn_rnn_allow_tf32": allowed["cudnn_rnn"],
        "float32_matmul_precision": legacy,
    }


def _own_fp32_precision(setting: str) -> str:
    """The own value of ``matmul``, ``cuda`` or ``generic``, "none" where it inherits (torch's
    getter resolves inheritance): found by moving its parent to another value for a moment,
    then putting that back. (``conv`` and ``rnn`` start in an internal "default" state that no
    setter accepts, so theirs cannot be put back once changed: nothing here changes them.)"""
    value = fp32_precision(setting)
    parent = _FP32_SETTINGS[setting][1]
    if value is None or value == "none" or parent is None:
        return value or "none"
    parent_value = _own_fp32_precision(parent)
    probe = "ieee" if value == "tf32" else "tf32"
    _fp32_holder(parent).fp32_precision = probe
    try:
        return "none" if fp32_precision(setting) == probe else value
    finally:
        _fp32_holder(parent).fp32_precision = parent_value


@contextlib.contextmanager
def matmul_tf32(enabled: bool) -> Iterator[None]:
    """cuBLAS float32 matmuls with TF32 ``enabled`` or not within the block; the setting that was
    there before is put back exactly (an inherited "none" stays inherited), through the same
    API, so the legacy flags are never mixed in."""
    if fp32_precision("matmul") is None:  # torch < 2.9
        saved_flag = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved_flag
        return
    saved = _own_fp32_precision("matmul")
    torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved


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

    def uses_tf32(self, dtype: torch.dtype, libraries: Collection[str]) -> bool:
        """Whether an implementation whose float32 math goes through ``libraries``
        (``Impl.libraries``) may compute ``dtype`` in TF32 here: never off CUDA."""
        return False

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
    threads_meaning = ("the one CPU thread launching the case's kernels (torch's intra-op "
                       "threads only compute its CPU-side work)")

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
        if dtype != torch.bfloat16:
            return ""
        if absent := self.problem():  # no device to select
            return absent
        with self.selected():  # the check reads the current device's compute capability
            # before compute capability 8.0 bfloat16 runs emulated: not the native
            # arithmetic a bfloat16 case is meant to measure
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return "" if native else f"bfloat16 is not supported natively by {self.display_name()}"

    def uses_tf32(self, dtype: torch.dtype, libraries: Collection[str]) -> bool:
        return dtype == torch.float32 and any(tf32_allowed(lib) for lib in libraries)

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
    threads_meaning = ("the one CPU thread launching the case's kernels (torch's intra-op "
                       "threads only compute its CPU-side work)")

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

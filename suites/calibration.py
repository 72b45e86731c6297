"""The device's ceilings: peak matmul FLOP/s per dtype and copy bandwidth, measured once.

The roofline says what a case could at best achieve: ``min(peak FLOP/s, intensity x bandwidth)``
with intensity = FLOPs / minimum bytes. Both ceilings are measured here with the same timer as
the cases, on the same device and thread count, and cached per device, thread count and torch
version, so every later run reuses them (``python cli.py calibrate --force`` measures again).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

from impls.registry import DTYPE_NAMES
from suites.compilation import PROJECT_ROOT
from suites.environment import cpu_model, dtype_problem

MATMUL_SIZES = (256, 512, 1024, 2048, 4096, 8192)  # square n; grown until a call is long enough
LONG_CALL_S = 0.02  # a matmul this long is past launch and cache effects
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30, "mps": 2**30}  # far beyond any cache
TIMER_S = 0.2  # seconds of timing per measurement
BUSY_LOAD = 0.5  # a 1-minute load average above this before a CPU calibration: not quiet


def cache_dir() -> Path:
    """``$LAYERBENCH_CACHE_DIR/calibration``, by default ``<project>/.cache/calibration``."""
    root = os.environ.get("LAYERBENCH_CACHE_DIR", str(PROJECT_ROOT / ".cache"))
    return Path(root) / "calibration"


def device_name(device: str) -> str:
    """What the ceilings belong to: the CPU model and thread count, or the GPU's name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    if device == "mps":
        return "Apple MPS"
    return f"{cpu_model()} x{torch.get_num_threads()} threads"


def cache_path(device: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{device_name(device)}-torch{torch.__version__}")
    return cache_dir() / f"{slug.strip('-')}.json"


def ceilings(device: str, force: bool = False) -> dict[str, Any]:
    """The cached ceilings of ``device``, measured (and cached) when missing or ``force``."""
    path = cache_path(device)
    if not force:
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("torch") == torch.__version__ and cached.get("matmul_gflops"):
                return cached
        except (OSError, ValueError, AttributeError):
            pass  # missing or damaged: measure again
    measured = measure(device)
    save(device, measured)
    return measured


def busy_warning(measured: dict[str, Any]) -> str | None:
    """A warning when ``measured`` was taken on a busy CPU (see ``measure``), else None."""
    load = measured.get("load_before")
    if load is None or load <= BUSY_LOAD:
        return None
    return (f"the machine was busy when these ceilings were measured (1-minute load "
            f"{load:.2f}): they may be low, and roofline fractions high; rerun `python cli.py "
            f"calibrate --force` when it is quiet")


def save(device: str, measured: dict[str, Any]) -> Path:
    """Cache ``measured`` as the ceilings of ``device`` (atomically: never a half file)."""
    path = cache_path(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(measured, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def measure(device: str) -> dict[str, Any]:
    """Measure peak matmul GFLOP/s for every dtype the device runs, and copy GB/s.

    On the CPU, ``load_before`` is the 1-minute load average as the measurement starts: other
    work on the cores lowers the ceilings, and every roofline fraction divided by them rises.
    """
    load = os.getloadavg()[0] if device == "cpu" and hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    gflops = {}
    for name, dtype in DTYPE_NAMES.items():
        if dtype_problem(dtype, device) or (device == "mps" and dtype == torch.float64):
            continue
        if device.startswith("cuda") and dtype == torch.float32:
            with _tf32(False):
                gflops["float32"] = matmul_gflops(device, dtype)
            with _tf32(True):
                gflops["tf32"] = matmul_gflops(device, dtype)
        else:
            gflops[name] = matmul_gflops(device, dtype)
    return {"device": device, "device_name": device_name(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_before": load, "matmul_gflops": gflops,
            "copy_gbps": copy_gbps(device), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "measure_s": round(time.perf_counter() - start, 2)}


def matmul_gflops(device: str, dtype: torch.dtype) -> float:
    """Best GFLOP/s of square ``a @ b`` over growing sizes (2 n^3 FLOPs per call)."""
    best = 0.0
    for n in MATMUL_SIZES:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        call_s = _best_s(lambda a=a, b=b: torch.mm(a, b))
        best = max(best, 2 * n**3 / call_s / 1e9)
        del a, b
        if call_s > LONG_CALL_S or (device == "cpu" and n >= 4096):
            break
    return best


def copy_gbps(device: str) -> float:
    """GB/s of ``dst.copy_(src)`` on buffers far larger than any cache, read + write counted."""
    nbytes = COPY_BYTES["cuda" if device.startswith("cuda") else device]
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    call_s = _best_s(lambda: dst.copy_(src))
    return 2 * nbytes / call_s / 1e9


def peak_key(dtype: str, device: str, tf32: dict[str, Any]) -> str:
    """Which matmul peak bounds a case: float32 on CUDA with TF32 allowed runs at ``tf32``.

    ``tf32`` holds the flags of ``environment.tf32_flags()`` (as stored in ``meta.json``).
    """
    if dtype == "float32" and device.startswith("cuda") and (
            tf32.get("cuda_matmul_allow_tf32") or tf32.get("cudnn_allow_tf32")):
        return "tf32"
    return dtype


def attainable_gflops(flops: float, bytes_moved: float, peak_gflops: float,
                      copy_gbps: float) -> float:
    """The roofline: ``min(peak, intensity x bandwidth)`` in GFLOP/s."""
    if bytes_moved <= 0:
        return peak_gflops
    return min(peak_gflops, flops / bytes_moved * copy_gbps)


def roofline_frac(gflops: float, flops: float, bytes_moved: float, ceilings: dict[str, Any],
                  peak_key: str) -> float:
    """Achieved / attainable GFLOP/s for one case; NaN when the ceilings lack ``peak_key``."""
    peak = (ceilings.get("matmul_gflops") or {}).get(peak_key)
    if not peak or not ceilings.get("copy_gbps") or math.isnan(gflops) or flops <= 0:
        return math.nan
    return gflops / attainable_gflops(flops, bytes_moved, peak, ceilings["copy_gbps"])


def _best_s(fn: Any) -> float:
    fn()  # warm up: kernel selection, first-touch pages
    # Timer runs on one thread unless told otherwise; the cases run on all of torch's threads
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return min(timer.blocked_autorange(min_run_time=TIMER_S).times)  # a ceiling: the best block


class _tf32:
    """Set TF32 for matmuls within a block, restoring the user's choice after."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self._saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.enabled

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self._saved

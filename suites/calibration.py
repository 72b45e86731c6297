"""The device's ceilings: peak matmul FLOP/s per dtype and copy bandwidth, measured once.

The roofline says what a case could at best achieve: ``min(peak FLOP/s, intensity x bandwidth)``
with intensity = FLOPs / minimum bytes. Both ceilings are measured here with the same timer as
the cases, on the same device and thread count, and cached per device, thread count and torch
version, so every later run reuses them (``python cli.py calibrate --force`` measures again).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

from impls.registry import DTYPE_NAMES
from suites.compilation import PROJECT_ROOT
from suites.devices import Device, device, matmul_tf32

MATMUL_SIZES = (256, 512, 1024, 2048, 4096, 8192)  # square n; grown until a call is long enough
LONG_CALL_S = 0.02  # a matmul this long is past launch and cache effects
TIMER_S = 0.2  # seconds of timing per measurement
BUSY_LOAD = 0.5  # a 1-minute load average above this before a CPU calibration: not quiet


def cache_dir() -> Path:
    """``$LAYERBENCH_CACHE_DIR/calibration``, by default ``<project>/.cache/calibration``."""
    root = os.environ.get("LAYERBENCH_CACHE_DIR", str(PROJECT_ROOT / ".cache"))
    return Path(root) / "calibration"


def cache_path(name: str) -> Path:
    """Where the ceilings of device ``name`` are cached: per model, thread count and torch."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-",
                  f"{device(name).display_name()}-torch{torch.__version__}")
    return cache_dir() / f"{slug.strip('-')}.json"


def ceilings(name: str, force: bool = False) -> dict[str, Any]:
    """The cached ceilings of device ``name``, measured (and cached) when missing or
    ``force``."""
    path = cache_path(name)
    if not force:
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("torch") == torch.__version__ and cached.get("matmul_gflops"):
                return cached
        except (OSError, ValueError, AttributeError):
            pass  # missing or damaged: measure again
    measured = measure(name)
    save(name, measured)
    return measured


def busy_warning(measured: dict[str, Any]) -> str | None:
    """A warning when ``measured`` was taken on a busy CPU (see ``measure``), else None."""
    load = measured.get("load_before")
    if load is None or load <= BUSY_LOAD:
        return None
    return (f"the machine was busy when these ceilings were measured (1-minute load "
            f"{load:.2f}): they may be low, and roofline fractions high; rerun `python cli.py "
            f"calibrate --force` when it is quiet")


def save(name: str, measured: dict[str, Any]) -> Path:
    """Cache ``measured`` as the ceilings of device ``name`` (atomically: never a half file)."""
    path = cache_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(measured, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def measure(name: str) -> dict[str, Any]:
    """Measure peak matmul GFLOP/s for every dtype device ``name`` runs, and copy GB/s.

    The work runs with the device current (``cuda:N``: the timer synchronises the current
    device), and what it allocated is handed back after (on CUDA, ~2 GiB of cached blocks).
    On the CPU, ``load_before`` is the 1-minute load average as the measurement starts: other
    work on the cores lowers the ceilings, and every roofline fraction divided by them rises.
    """
    where = device(name)
    load = os.getloadavg()[0] if where.kind == "cpu" and hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    with where.selected():
        try:
            gflops, gbps = _ceilings(where), copy_gbps(where)
        finally:
            where.release_memory()  # inside: empty_cache frees the current device's cache
    return {"device": name, "device_name": where.display_name(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_before": load, "matmul_gflops": gflops,
            "copy_gbps": gbps, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "measure_s": round(time.perf_counter() - start, 2)}


def _ceilings(where: Device) -> dict[str, float]:
    """Peak matmul GFLOP/s per dtype ``where`` runs; on CUDA float32 both as IEEE float32 and
    as TF32 (the ``tf32`` peak), whatever the user's TF32 setting, which is put back after."""
    gflops = {}
    for dtype_name, dtype in DTYPE_NAMES.items():
        if where.dtype_problem(dtype):
            continue
        if where.kind == "cuda" and dtype == torch.float32:
            with matmul_tf32(False):
                gflops["float32"] = matmul_gflops(where, dtype)
            with matmul_tf32(True):
                gflops["tf32"] = matmul_gflops(where, dtype)
        else:
            gflops[dtype_name] = matmul_gflops(where, dtype)
    return gflops


def matmul_gflops(where: Device, dtype: torch.dtype) -> float:
    """Best GFLOP/s of square ``a @ b`` over growing sizes (2 n^3 FLOPs per call)."""
    best = 0.0
    for n in MATMUL_SIZES:
        a = torch.randn(n, n, device=where.name).to(dtype)
        b = torch.randn(n, n, device=where.name).to(dtype)
        call_s = _best_s(lambda a=a, b=b: torch.mm(a, b))
        best = max(best, 2 * n**3 / call_s / 1e9)
        del a, b
        if call_s > LONG_CALL_S or (where.kind == "cpu" and n >= 4096):
            break
    return best


def copy_gbps(where: Device) -> float:
    """GB/s of ``dst.copy_(src)`` on buffers far larger than any cache, read + write counted."""
    nbytes = where.copy_bytes
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=where.name).normal_()
    dst = torch.empty_like(src)
    call_s = _best_s(lambda: dst.copy_(src))
    return 2 * nbytes / call_s / 1e9


def _best_s(fn: Any) -> float:
    fn()  # warm up: kernel selection, first-touch pages
    # Timer runs on one thread unless told otherwise; the cases run on all of torch's threads
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return min(timer.blocked_autorange(min_run_time=TIMER_S).times)  # a ceiling: the best block


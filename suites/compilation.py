"""The ``torch.compile`` axis: any implementation, eager or compiled in a chosen mode."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune",
                 "max-autotune-no-cudagraphs")
#: modes whose compiled code runs as CUDA graphs on a GPU (replays from a private memory pool)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def inductor_cache_dir() -> Path:
    """Where inductor keeps compiled kernels, so a repeat run does not compile again.

    ``TORCHINDUCTOR_CACHE_DIR`` wins when set; otherwise ``<project>/.cache/inductor``.
    """
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", PROJECT_ROOT / ".cache" / "inductor"))


def use_project_cache() -> Path:
    """Point inductor at the project's cache directory (before the first compilation)."""
    path = inductor_cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


@functools.cache
def _warm_compiler(kind: str = "cpu") -> None:
    """Compile a trivial function once per process and device kind.

    The first compilation in a process also pays for importing and initialising dynamo and
    inductor (seconds), and the first on a GPU for Triton and its CUDA context; without this,
    that one-time cost would land in the first case's ``compile_s``.
    """
    torch.compile(lambda t: t * 2 + 1)(torch.ones(4, device=kind))
    torch._dynamo.reset()


def reset_compiler(device: str = "cpu") -> None:
    """Forget every compiled graph and guard (dynamo's caches), after warming the compiler for
    ``device``'s kind."""
    _warm_compiler(device.partition(":")[0])
    torch._dynamo.reset()


def graphed_on(mode: str, device_kind: str) -> bool:
    """Whether ``mode`` runs the compiled code as CUDA graphs on ``device_kind``."""
    return mode in CUDA_GRAPH_MODES and device_kind == "cuda"


def compiled(fn: Callable[..., Any], mode: str, reset: bool = True,
             device: str = "cpu") -> Callable[..., Any]:
    """``fn`` itself for ``mode == "none"``, else a fresh ``torch.compile`` of it.

    With ``reset``, dynamo is reset first so one implementation's guards and graphs never leak
    into the next. The runner resets once per size group instead (``reset_compiler``): a reset
    would drop the graphs of the group's other compiled functions, which are timed side by side.
    """
    if mode == "none":
        return fn
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r} (choose from {', '.join(COMPILE_MODES)})")
    if reset:
        reset_compiler(device)
    else:
        _warm_compiler(device.partition(":")[0])
    return torch.compile(fn, mode=None if mode == "default" else mode, fullgraph=False)

"""The machine and software a run happens on: the metadata of ``meta.json``."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from suites.compilation import PROJECT_ROOT, inductor_cache_dir
from suites.devices import cpu_model, device, tf32_flags
from suites.timing import steady_malloc


def _git(*args: str, cwd: Path = PROJECT_ROOT, timeout: float = 30) -> str:
    """``git ARGS`` in ``cwd``; its output. Raises ``OSError`` or ``SubprocessError``."""
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=True).stdout.strip()


def git_commit() -> str | None:
    """The commit of this project's code, ``-dirty`` when tracked files differ from it; None
    outside a git checkout of it (an exported tree inside another repository included)."""
    try:
        if Path(_git("rev-parse", "--show-toplevel")).resolve() != PROJECT_ROOT:
            return None
        out = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return out + ("-dirty" if dirty else "")


#: names the machine in the rows instead of its host name (e.g. two workers of one host posing
#: as two machines, or one name for a CI runner whose host name changes every job)
MACHINE_ENV = "LAYERBENCH_MACHINE"


def machine_key() -> str:
    """The ``machine`` every row run here records: ``$LAYERBENCH_MACHINE``, else the host name."""
    return os.environ.get(MACHINE_ENV, "").strip() or socket.gethostname()


def machine_info(devices: list[str]) -> dict[str, Any]:
    """Host, CPU, GPU and library versions for ``meta.json`` and ``machines.json``."""
    info: dict[str, Any] = {
        "key": machine_key(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "threads": torch.get_num_threads(),
        # per device: what the thread count means for its cases
        "threads_meaning": {name: device(name).threads_meaning for name in devices},
        "git_commit": git_commit(),
        "code_root": str(PROJECT_ROOT),
        "inductor_cache_dir": str(inductor_cache_dir()),
        "tf32": tf32_flags(),
        "malloc": steady_malloc(),
        "gpus": [],
    }
    if any(device(d).kind == "cuda" for d in devices):
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({
                "index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_bytes": props.total_memory, "sm_count": props.multi_processor_count,
                "l2_cache_bytes": getattr(props, "L2_cache_size", None),
            })
        info["cuda_driver"] = _nvidia_driver()
    return info


def _nvidia_driver() -> str | None:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None

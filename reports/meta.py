"""The machine and software behind a run, as rows every report shows."""

from __future__ import annotations

from typing import Any


def environment_rows(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows from ``meta.json``: command, time, machine, versions, calibration."""
    machine = meta.get("machine") or {}
    rows = [
        ("run", str(meta.get("run_id", ""))),
        ("command", " ".join(str(a) for a in meta.get("command") or [])),
        ("started / ended", f"{meta.get('start_time', '?')} / {meta.get('end_time') or '?'}"),
        ("host", f"{machine.get('host', '?')} ({machine.get('platform', '?')})"),
        ("CPU", f"{machine.get('cpu_model', '?')}, {machine.get('cpu_count', '?')} logical "
                f"cores, {machine.get('threads', '?')} torch threads"),
    ]
    for device, meaning in (machine.get("threads_meaning") or {}).items():
        rows.append((f"threads on {device}", meaning))
    for gpu in machine.get("gpus") or []:
        rows.append((f"GPU {gpu.get('index', '')}",
                     f"{gpu.get('name')} (sm {gpu.get('capability')}, "
                     f"{(gpu.get('memory_bytes') or 0) / 2**30:.0f} GiB), "
                     f"driver {machine.get('cuda_driver')}"))
    versions = f"torch {machine.get('torch', '?')}, python {machine.get('python', '?')}"
    if machine.get("torch_cuda"):
        versions += f", CUDA {machine['torch_cuda']}, cuDNN {machine.get('cudnn')}"
    rows.append(("versions", versions))
    if machine.get("gpus"):
        tf32 = machine.get("tf32") or {}
        rows.append(("TF32", ", ".join(f"{k}={v}" for k, v in tf32.items())))
    rows.append(("git commit", str(machine.get("git_commit") or "unknown")))
    if "malloc" in machine:  # runs before the thresholds were fixed do not say
        malloc = machine["malloc"]
        rows.append(("malloc", "glibc thresholds fixed: " + ", ".join(
            f"{k.replace('_', ' ')} {v / 2**20:g} MiB" for k, v in malloc.items())
            if malloc else "system default (thresholds not fixed)"))
    for device, ceilings in (meta.get("calibration") or {}).items():
        rows.append((f"ceilings {device}", ceiling_text(ceilings)))
    rows.append(("machine load", load_text(meta)))
    if meta.get("interrupted"):
        rows.append(("note", "the run was interrupted: finished cases only"))
    return rows


def ceiling_text(ceilings: dict[str, Any]) -> str:
    """``{"matmul_gflops": {"float32": 388.0}, "copy_gbps": 27.1}`` as one readable line."""
    parts = [f"{dtype} {gflops:,.0f} GFLOP/s"
             for dtype, gflops in (ceilings.get("matmul_gflops") or {}).items()]
    if ceilings.get("copy_gbps"):
        parts.append(f"copy {ceilings['copy_gbps']:,.1f} GB/s")
    return ", ".join(parts) or "not calibrated"


def load_text(meta: dict[str, Any]) -> str:
    """``meta["load"]`` as one line: the cores other processes used while cases were timed and
    the load averages (1, 5, 15 min) at start and end; ``unknown`` for a run without it."""
    load = meta.get("load")
    if not load:
        return "unknown"

    def cores(value: Any) -> str:
        return f"{value:.2g}" if isinstance(value, int | float) else "?"

    def averages(values: Any) -> str:
        return "/".join(f"{v:.2f}" for v in values) if values else "?"

    return (f"other processes used {cores(load.get('busy_cores_mean'))} of "
            f"{load.get('cores', '?')} cores on average (max "
            f"{cores(load.get('busy_cores_max'))}); load average "
            f"{averages(load.get('loadavg_start'))} at start, "
            f"{averages(load.get('loadavg_end'))} at end")

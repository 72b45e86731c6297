"""The machine and software behind a run, as rows every report shows, and the machines its
rows ran on (``machines.json``: several where a cluster or shards ran the cases)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from reports.columns import Col
from reports.schema import machine_key_of


def environment_rows(meta: dict[str, Any],
                     results: pd.DataFrame | None = None) -> list[tuple[str, str]]:
    """(label, value) rows from ``meta.json``: command, time, machine, versions, calibration;
    with the run's ``results``, where their cases ran when not (only) on that machine."""
    machine = meta.get("machine") or {}
    rows = [
        ("run", str(meta.get("run_id", ""))),
        ("command", " ".join(str(a) for a in meta.get("command") or [])),
        ("started / ended", f"{meta.get('start_time', '?')} / {meta.get('end_time') or '?'}"),
    ]
    if results is not None and machines_shown(results, meta):
        keys = machine_keys(results)
        rows.append(("cases ran on", f"{len(keys)} machine(s): {', '.join(keys)} (see "
                     "Machines); host, CPU and versions below are of the machine that ran the "
                     "command"))
    rows += [
        ("host", f"{machine.get('host', '?')} ({machine.get('platform', '?')})"),
        ("CPU", f"{machine.get('cpu_model', '?')}, {machine.get('cpu_count', '?')} logical "
                f"cores, {machine.get('threads', '?')} torch threads"),
    ]
    for device, meaning in (machine.get("threads_meaning") or {}).items():
        rows.append((f"threads on {device}", meaning))
    for gpu in machine.get("gpus") or []:
        rows.append((f"GPU {gpu.get('index', '')}",
                     f"{gpu_text(gpu)}, driver {machine.get('cuda_driver')}"))
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


def gpu_text(gpu: Mapping[str, Any]) -> str:
    """``NVIDIA H100 (sm 9.0, 80 GiB)``."""
    return (f"{gpu.get('name')} (sm {gpu.get('capability')}, "
            f"{(gpu.get('memory_bytes') or 0) / 2**30:.0f} GiB)")


def machine_keys(results: pd.DataFrame) -> list[str]:
    """The machines the rows ran on (their ``machine`` column), in order of first row."""
    return [str(k) for k in pd.unique(results["machine"])] if "machine" in results else []


def several_machines(results: pd.DataFrame) -> bool:
    """Whether the rows ran on more than one machine."""
    return len(machine_keys(results)) > 1


def machines_shown(results: pd.DataFrame, meta: Mapping[str, Any]) -> bool:
    """Whether a report describes the machines of the rows: where there are several, or where
    the one is not the machine of ``meta.json`` (a cluster's driver, which ran no case)."""
    keys = machine_keys(results)
    return bool(keys) and keys != [machine_key_of(meta)]


def per_machine(frame: pd.DataFrame, derive: Callable[[pd.DataFrame], pd.DataFrame],
                split: bool | None = None) -> pd.DataFrame:
    """``derive(frame)``; where ``split`` (default: where the rows ran on several machines),
    ``derive`` of each machine's rows with their ``machine`` as a column, one after the other:
    times and sizes of different machines are never ranked or fitted together."""
    if not (several_machines(frame) if split is None else split):
        return derive(frame)
    parts = [derive(rows).assign(machine=key)
             for key, rows in frame.groupby("machine", sort=False)]
    parts = [p for p in parts if len(p)] or [derive(frame.iloc[:0]).assign(machine="")]
    return pd.concat(parts, ignore_index=True)


def machine_ceilings(machines: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any],
                     key: str) -> dict[str, Any]:
    """Device -> measured ceilings of machine ``key``: its ``machines.json`` record's, else the
    run's own (``meta.json``) where ``key`` is the run's machine; ``{}`` if not calibrated."""
    own = (machines.get(key) or {}).get("calibration")
    return dict(own or (meta.get("calibration") or {} if key == machine_key_of(meta) else {}))


def machine_fingerprint(record: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two ``machines.json`` records one machine: host, CPU model and GPU models
    (one key whose records differ in these is two machines under one name)."""
    return {"host": record.get("host"), "cpu_model": record.get("cpu_model"),
            "gpus": sorted(str(g.get("name")) for g in record.get("gpus") or [])}


def machine_identity(machines: Mapping[str, Mapping[str, Any]], key: str) -> tuple[Any, ...]:
    """Which machine ``key`` of a run's ``machines`` is, as comparisons tell machines apart:
    ``machine_fingerprint`` (the key alone where it has no record)."""
    found = machine_fingerprint(machines.get(key) or {})
    return found["host"] or key, found["cpu_model"], tuple(found["gpus"])


MACHINE_COLUMNS = [
    Col("machine", "machine", tip="the key of each row's machine (results.csv)"),
    Col("host", "host"), Col("cpu", "CPU"), Col("cores", "cores", "int", "logical cores"),
    Col("threads", "torch threads", "int"), Col("gpus", "GPUs"), Col("driver", "driver"),
    Col("torch", "torch"), Col("ceilings", "ceilings", tip="measured by calibrate, per device"),
    Col("rows", "rows", "int", "cases of this run that ran there"),
]


def machine_table(machines: Mapping[str, Mapping[str, Any]],
                  results: pd.DataFrame) -> pd.DataFrame:
    """One row per machine the ``results`` ran on (``MACHINE_COLUMNS``), in order of first
    row: its ``machines.json`` record and how many rows ran there."""
    rows = []
    for key, count in results["machine"].value_counts(sort=False).items():
        m = machines.get(str(key)) or {}
        torch = str(m.get("torch", "?")) + (f", CUDA {m['torch_cuda']}" if m.get("torch_cuda")
                                            else "")
        rows.append({
            "machine": str(key), "host": m.get("host", "?"), "cpu": m.get("cpu_model", "?"),
            "cores": m.get("cpu_count"), "threads": m.get("threads"),
            "gpus": ", ".join(gpu_text(g) for g in m.get("gpus") or []) or "none",
            "driver": m.get("cuda_driver") or "", "torch": torch,
            "ceilings": "; ".join(f"{device}: {ceiling_text(c)}" for device, c in (
                m.get("calibration") or {}).items()) or "not calibrated",
            "rows": int(count)})
    return pd.DataFrame(rows, columns=[c.key for c in MACHINE_COLUMNS])


def machines_line(machines: Mapping[str, Mapping[str, Any]], results: pd.DataFrame) -> str:
    """``m1 (vm, AMD EPYC, 2 cores) 12 rows; m2 (gpubox, ..., NVIDIA H100 ...) 8 rows``."""
    parts = []
    for key, count in results["machine"].value_counts(sort=False).items():
        m = machines.get(str(key)) or {}
        what = [str(m.get("host", "?")), str(m.get("cpu_model", "?")),
                f"{m.get('cpu_count') or '?'} cores", *map(gpu_text, m.get("gpus") or [])]
        parts.append(f"{key} ({', '.join(what)}) {count} rows")
    return "; ".join(parts)

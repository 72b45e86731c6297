"""Fabricated run directories: the files a ``bench`` writes, built from a few lines of data.

Reports and comparisons are tested on these (fast, exact) as well as on real runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reports.schema import (
    KEY_COLUMNS,
    MACHINES_FILE,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    CsvAppender,
    result_columns,
    write_json,
)

MACHINE = {"host": "testhost", "platform": "Linux", "python": "3.11", "cpu_model": "Test CPU",
           "cpu_count": 2, "torch": "2.13.0+cpu", "torch_cuda": None, "cudnn": None,
           "threads": 2, "git_commit": "0" * 40, "tf32": {}, "gpus": []}
CALIBRATION = {"cpu": {"matmul_gflops": {"float32": 400.0, "float64": 200.0,
                                         "bfloat16": 2500.0, "float16": 100.0},
                       "copy_gbps": 27.0}}


@dataclass
class FakeCase:
    """One row of a fabricated run; timing statistics come from ``seconds``."""

    impl: str
    case: str = "N1"
    seconds: list[float] = field(default_factory=list)
    layer: str = "conv"
    compile: str = "none"
    device: str = "cpu"
    dtype: str = "float32"
    mode: str = "fwd"
    status: str = "ok"
    reason: str = ""
    flops: int = 1_000_000
    bytes: int = 100_000
    params: dict[str, int] = field(default_factory=lambda: {"N": 1})
    rel_err: float = 1e-7
    grad_rel_err: float = float("nan")
    compile_s: float = float("nan")
    predicted_s: float = float("nan")
    predicted_call_s: float = float("nan")
    machine: str = ""  # its machine's key (machines.json); '' = the run's own (meta.json)


def noisy(median_s: float, n: int = 30, spread: float = 0.02, seed: int = 0) -> list[float]:
    """``n`` samples around ``median_s`` with a relative spread (log-normal, seeded)."""
    rng = np.random.default_rng(seed)
    return list(median_s * np.exp(rng.normal(0.0, spread, n)))


def fake_run(path: Path, cases: list[FakeCase], machines: dict[str, Any] | None = None,
             **meta: Any) -> Path:
    """Write ``results.csv``, ``samples.csv`` and ``meta.json`` for ``cases`` under ``path``,
    and ``machines.json`` where ``machines`` (key -> record) is given. A case's speedup is
    against the builtin of its size on its machine."""
    path.mkdir(parents=True, exist_ok=True)
    params = list(dict.fromkeys(p for c in cases for p in c.params))
    results = CsvAppender(path / "results.csv", result_columns(params))
    samples = CsvAppender(path / "samples.csv", SAMPLE_COLUMNS)
    medians: dict[tuple[str, ...], float] = {}
    for c in cases:
        if c.seconds and c.impl == "builtin" and c.compile == "none":
            medians[(c.layer, c.device, c.dtype, c.mode, c.case, c.machine)] = float(
                np.median(c.seconds))
    for c in cases:
        key = {k: getattr(c, k) for k in KEY_COLUMNS}
        s = np.asarray(c.seconds, dtype=float)
        median = float(np.median(s)) if len(s) else float("nan")
        builtin = medians.get((c.layer, c.device, c.dtype, c.mode, c.case, c.machine),
                              float("nan"))
        row = {"run_id": path.name, **key, **{f"p_{k}": v for k, v in c.params.items()},
               "status": c.status, "reason": c.reason, "median_ms": median * 1e3,
               "iqr_ms": float(np.subtract(*np.percentile(s, [75, 25]))) * 1e3 if len(s) else None,
               "min_ms": float(s.min()) * 1e3 if len(s) else None,
               "mean_ms": float(s.mean()) * 1e3 if len(s) else None, "n_samples": len(s),
               "calls_per_sample": 1 if len(s) else 0, "compile_s": c.compile_s,
               "flops": c.flops, "bytes": c.bytes,
               "gflops": c.flops / median / 1e9 if len(s) else None,
               "gbps": c.bytes / median / 1e9 if len(s) else None,
               "speedup_vs_builtin": builtin / median if len(s) else None,
               "max_abs_err": c.rel_err, "rel_err": c.rel_err,
               "grad_max_abs_err": c.grad_rel_err, "grad_rel_err": c.grad_rel_err,
               "rtol": 1e-4, "atol": 1e-4, "predicted_s": c.predicted_s,
               "predicted_call_s": c.predicted_call_s, "threads": 2,
               "seed": 0, "machine": c.machine}
        results.append([row])
        samples.append({**key, "sample": i, "seconds": v} for i, v in enumerate(s))
    results.close()
    samples.close()
    if machines is not None:
        write_json(path / MACHINES_FILE, machines)
    write_json(path / "meta.json", {
        "schema_version": SCHEMA_VERSION, "run_id": path.name, "command": ["cli.py", "bench"],
        "start_time": "2026-11-25T10:00:00+0000", "end_time": "2026-11-25T10:01:00+0000",
        "machine": MACHINE, "calibration": CALIBRATION, "config": {}, **meta})
    return path

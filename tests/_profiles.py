"""A fabricated GPU profile: the ``ops.csv`` rows torch.profiler gives a case on CUDA.

Each operator (on cpu) carries the kernels it launched in its self device time, and each of
those kernels (on cuda) has a row of its own: the case's device time is the kernels', once.
"""

from __future__ import annotations

import pandas as pd

from reports.schema import OPS_COLUMNS

#: (op, device_type, self CPU us, CPU total us, self device us) per call: two operators and
#: their kernels, a runtime call, and a kernel no recorded operator launched (a compiled
#: graph's, under the profiler's step): 450 us of kernels, 850 us summed over every row
GPU_ROWS = (("aten::bmm", "cpu", 40.0, 90.0, 300.0), ("aten::_softmax", "cpu", 10.0, 12.0, 100.0),
            ("cudaLaunchKernel", "cpu", 30.0, 30.0, 0.0),
            ("ampere_fp16_gemm", "cuda", 0.0, 0.0, 300.0),
            ("softmax_warp_forward", "cuda", 0.0, 0.0, 100.0),
            ("triton_poi_fused_0", "cuda", 0.0, 0.0, 50.0))
GPU_KERNEL_US = 450.0


def gpu_ops(rows: tuple[tuple[str, str, float, float, float], ...] = GPU_ROWS,
            **key: str) -> pd.DataFrame:
    """``rows`` as ``ops.csv`` rows of one case (``key`` overrides its key columns)."""
    case = {"layer": "attention", "impl": "matmul", "compile": "none", "device": "cuda",
            "dtype": "float16", "mode": "fwd", "case": "c", "profiled_case": "c", **key}
    return pd.DataFrame([{**case, "op": op, "calls": 1.0, "self_cpu_us": cpu,
                          "cpu_total_us": total, "self_device_us": dev, "device_total_us": dev,
                          "self_cpu_mem_bytes": 0.0, "note": "", "device_type": kind}
                         for op, kind, cpu, total, dev in rows], columns=list(OPS_COLUMNS))

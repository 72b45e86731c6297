"""Numbers that deserve a second look: flagged on the row, never hidden or changed.

- ``fwdbwd<fwd``: forward and backward together faster than the forward alone of the same case
  (the backward is never free: one of the two timings is wrong).
- ``beyond roofline``: faster than the device allows: above the measured matmul peak by more
  than ``COMPUTE_ALLOWANCE``, or moving the case's minimum bytes faster than
  ``WARM_CACHE_ALLOWANCE`` x the measured copy bandwidth. The bandwidth is measured on buffers
  far larger than the caches; a small case whose data stays in L1/L2 legitimately beats it by a
  few times, so only more than that is flagged.
- ``>10x builtin``: more than ``SPEEDUP_LIMIT`` times faster than the builtin. KernelBench flags
  these for review: a hand-written layer that beats the library by that much has usually
  skipped work (or the builtin's timing was disturbed).
"""

from __future__ import annotations

import math
from typing import Any

from reports.style import format_seconds

COMPUTE_ALLOWANCE = 1.2
WARM_CACHE_ALLOWANCE = 10.0
SPEEDUP_LIMIT = 10.0
#: the tags that start every plausibility flag (``flags`` column); the others mark instability
PLAUSIBILITY_TAGS = ("fwdbwd<fwd:", "beyond roofline:", ">10x builtin:")
#: the tags that make a case unstable
INSTABILITY_TAGS = ("imprecise:", "interference:")


def implausible(median_s: float, flops: float, bytes_moved: float, speedup: float,
                forward_s: float | None, ceilings: dict[str, Any] | None,
                peak_key: str) -> list[str]:
    """The plausibility flags of one timed case (``forward_s``: the median of the same case in
    ``fwd`` mode, for a ``fwdbwd`` case)."""
    flags = []
    if forward_s is not None and median_s < forward_s:
        flags.append(f"fwdbwd<fwd: forward and backward took {format_seconds(median_s)}, less "
                     f"than the forward alone ({format_seconds(forward_s)})")
    if ceilings is not None and median_s > 0:
        peak = (ceilings.get("matmul_gflops") or {}).get(peak_key)
        gflops, gbps = flops / median_s / 1e9, bytes_moved / median_s / 1e9
        copy = ceilings.get("copy_gbps")
        if peak and gflops > COMPUTE_ALLOWANCE * peak:
            flags.append(f"beyond roofline: {gflops:.4g} GFLOP/s, more than "
                         f"{COMPUTE_ALLOWANCE:g}x the measured {peak_key} peak ({peak:.4g}; "
                         "if that is low, `python cli.py calibrate --force` measures it again)")
        elif copy and gbps > WARM_CACHE_ALLOWANCE * copy:
            flags.append(f"beyond roofline: {gbps:.4g} GB/s, more than {WARM_CACHE_ALLOWANCE:g}x "
                         f"the measured copy bandwidth ({copy:.3g} GB/s) that warm caches explain")
    if not math.isnan(speedup) and speedup > SPEEDUP_LIMIT:
        flags.append(f">10x builtin: x{speedup:.3g} faster than the builtin, take a second look")
    return flags


def unstable(flags: list[str]) -> bool:
    """Whether ``flags`` mark the case's timing as imprecise or disturbed."""
    return any(f.startswith(INSTABILITY_TAGS) for f in flags)

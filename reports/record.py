"""One case and what was measured of it: the record every line of ``results.csv`` is written from.

The runner fills a ``CaseResult``; ``row()`` gives its ``results.csv`` columns, the derived
figures included (median and spread from the raw samples, GFLOP/s, GB/s). ``relate`` adds the
figures that depend on other measurements: the speed relative to the same run's eager builtin
and the fraction of the device's roofline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reports.intervals import UNKNOWN, Interval, by_round, median_interval, paired_ratios
from reports.plausibility import PLAUSIBILITY_TAGS, implausible
from reports.schema import BASELINE_IMPL, precision

NAN = float("nan")


@dataclass(frozen=True)
class Case:
    """One (layer, impl, compile, params, device, dtype, mode) to run; ``label`` is the short
    stable name of its size (``Layer.label``), e.g. ``N64_Cin1_Cout8_H28_W28_k3_s1_p0``."""

    layer: str
    impl: str
    compile: str
    params: tuple[tuple[str, int], ...]
    device: str
    dtype: str
    mode: str
    label: str

    @property
    def size(self) -> dict[str, int]:
        return dict(self.params)

    @property
    def key(self) -> tuple[str, ...]:
        """The case's identity in the run files: (layer, impl, compile, device, dtype, mode,
        case label)."""
        return (self.layer, self.impl, self.compile, self.device, self.dtype, self.mode,
                self.label)

    @property
    def baseline(self) -> Case:
        """The eager builtin case that ``speedup_vs_builtin`` divides by."""
        return Case(self.layer, BASELINE_IMPL, "none", self.params, self.device, self.dtype,
                    self.mode, self.label)


@dataclass(frozen=True)
class Samples:
    """Raw per-call times in seconds, one per sample, and how each was taken.

    ``rounds`` holds each sample's interleaving round and ``group`` names the timing of one
    size the rounds belong to (None: not interleaved, e.g. read back from an earlier part of a
    resumed run): two cases' samples pair up only within one group.
    """

    seconds: tuple[float, ...]
    calls_per_sample: int
    rounds: tuple[int, ...] = ()
    group: int | None = None

    @property
    def median_s(self) -> float:
        return float(np.median(self.seconds))

    @property
    def interval(self) -> Interval:
        """The median and its 95% interval."""
        return median_interval(self.seconds)

    def paired_with(self, other: Samples) -> bool:
        return self.group is not None and self.group == other.group and bool(self.rounds)

    def speedup(self, builtin: Samples) -> Interval:
        """How many times faster than ``builtin``, with its 95% interval: the median of the
        per-round ratios where the two were interleaved, else the ratio of the medians with the
        (wider, conservative) interval its two intervals allow."""
        if self.paired_with(builtin):
            ratios = paired_ratios(by_round(builtin.seconds, builtin.rounds),
                                   by_round(self.seconds, self.rounds))
            if ratios:
                return median_interval(ratios)
        mine, theirs = self.interval, builtin.interval
        if not mine.value or not mine.lo:
            return UNKNOWN
        return Interval(theirs.value / mine.value, theirs.lo / mine.hi, theirs.hi / mine.lo,
                        mine.coverage * theirs.coverage)

    @property
    def iqr_s(self) -> float:
        q1, q3 = np.percentile(self.seconds, [25, 75])
        return float(q3 - q1)

    @property
    def min_s(self) -> float:
        return float(min(self.seconds))

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.seconds))


@dataclass
class CaseResult:
    """Everything measured for one case; ``row()`` gives its ``results.csv`` columns."""

    case: Case
    status: str = "ok"
    reason: str = ""
    samples: Samples | None = None
    compile_s: float = NAN
    flops: int = 0
    bytes: int = 0
    speedup_vs_builtin: float = NAN
    speedup_lo: float = NAN
    speedup_hi: float = NAN
    max_abs_err: float = NAN
    rel_err: float = NAN
    grad_max_abs_err: float = NAN
    grad_rel_err: float = NAN
    rtol: float = NAN
    atol: float = NAN
    peak_mem_bytes: float = NAN
    peak_rss_bytes: float = NAN  # the process's peak resident set while the case ran
    predicted_s: float = NAN
    predicted_call_s: float = NAN
    roofline_frac: float = NAN
    op_calls: float = NAN
    threads: int = 0
    seed: int = 0
    precision: float = NAN  # the larger relative half-width of the median's and speedup's
    busy_cores: float = NAN  # cores other processes used while the case was sampled
    stable: bool | None = None  # precise and undisturbed (None: not timed)
    tf32: bool | None = None  # its float32 math was allowed TF32 (None: not recorded)
    wall_s: float = NAN  # CUDA: wall time per call of back-to-back calls (launches included)
    flags: list[str] = field(default_factory=list)
    machine: str = ""  # the key of the machine it ran on (``machines.json``)
    ops: list[dict[str, Any]] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return self.samples.median_s if self.samples else NAN

    def relate(self, builtin: Samples | None, ceilings: dict[str, Any] | None,
               tf32: Mapping[str, Any], forward: Samples | None = None) -> None:
        """Speed relative to the eager ``builtin``'s samples (None: not timed), the roofline
        fraction under the device's ``ceilings`` (None: not calibrated), the precision reached,
        and the plausibility flags (``forward``: the samples of the same case in ``fwd`` mode,
        for a ``fwdbwd`` case). The roofline's peak is that of the case's own precision (its
        ``tf32``); ``tf32`` holds the run's TF32 flags, used only where the case has none."""
        if not self.samples:
            return
        widths = [self.samples.interval.precision]
        if builtin is not None and self.case != self.case.baseline:
            speedup = self.samples.speedup(builtin)
            self.speedup_vs_builtin, self.speedup_lo, self.speedup_hi = (
                speedup.value, speedup.lo, speedup.hi)
            widths.append(speedup.precision)
        elif builtin is not None:
            self.speedup_vs_builtin = 1.0
        self.precision = max(widths)
        peak_key = precision(self.case.dtype, self.case.device,
                             tf32 if self.tf32 is None else self.tf32)
        if ceilings is not None:
            self.roofline_frac = roofline_frac(
                self.flops / self.median_s / 1e9, self.flops, self.bytes, ceilings, peak_key)
        self.flags = [f for f in self.flags if not f.startswith(PLAUSIBILITY_TAGS)]
        self.flags += implausible(
            self.median_s, self.flops, self.bytes, speedup=self.speedup_vs_builtin,
            forward_s=forward.median_s if forward is not None else None,
            ceilings=ceilings, peak_key=peak_key)

    def row(self) -> dict[str, Any]:
        c, s = self.case, self.samples
        median_s = self.median_s
        interval = s.interval if s else UNKNOWN
        return {
            "layer": c.layer, "impl": c.impl, "compile": c.compile, "device": c.device,
            "dtype": c.dtype, "mode": c.mode, "case": c.label,
            **{f"p_{k}": v for k, v in c.params},
            "status": self.status, "reason": self.reason,
            "median_ms": median_s * 1e3,
            "iqr_ms": s.iqr_s * 1e3 if s else NAN,
            "min_ms": s.min_s * 1e3 if s else NAN,
            "mean_ms": s.mean_s * 1e3 if s else NAN,
            "ci_lo_ms": interval.lo * 1e3,
            "ci_hi_ms": interval.hi * 1e3,
            "n_samples": len(s.seconds) if s else 0,
            "calls_per_sample": s.calls_per_sample if s else 0,
            "compile_s": self.compile_s,
            "flops": self.flops, "bytes": self.bytes,
            "gflops": self.flops / median_s / 1e9 if s else NAN,
            "gbps": self.bytes / median_s / 1e9 if s else NAN,
            "roofline_frac": self.roofline_frac,
            "speedup_vs_builtin": self.speedup_vs_builtin,
            "speedup_lo": self.speedup_lo, "speedup_hi": self.speedup_hi,
            "max_abs_err": self.max_abs_err, "rel_err": self.rel_err,
            "grad_max_abs_err": self.grad_max_abs_err, "grad_rel_err": self.grad_rel_err,
            "rtol": self.rtol, "atol": self.atol,
            "peak_mem_bytes": self.peak_mem_bytes, "peak_rss_bytes": self.peak_rss_bytes,
            "predicted_s": self.predicted_s,
            "predicted_call_s": self.predicted_call_s, "op_calls": self.op_calls,
            "threads": self.threads, "seed": self.seed,
            "precision": self.precision, "busy_cores": self.busy_cores,
            "stable": NAN if self.stable is None or not s else int(self.stable),
            "tf32": NAN if self.tf32 is None else int(self.tf32),
            "wall_ms": self.wall_s * 1e3,
            "flags": "; ".join(self.flags), "machine": self.machine,
        }


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

"""Tables for people: every column a report shows, with a header in words, its unit and how a
value is written.

A table in ``report.html``, ``report.md`` or ``compare.html`` names its columns by ``Col``: the
frame's column, the header a reader sees, and a ``kind`` that decides the text of a cell (times
in us/ms/s, speedups as ``x1.22``, fractions as ``%``, errors as ``6.4×10⁻⁶``, never
``6.384e-06``). The raw value stays with the cell (``sort_key``), so a page sorts by number,
not by text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Col:
    """One column of a table for people.

    ``key``: the frame's column; ``title``: its header; ``kind``: how a value is written (a key
    of ``FORMATS``); ``tip``: what the column means (a header tooltip in HTML); ``interval``:
    the frame's (low, high) columns shown after the value, e.g. ``x1.22 (1.18-1.26)``;
    ``empty``: what a cell without a value says.
    """

    key: str
    title: str
    kind: str = "text"
    tip: str = ""
    interval: tuple[str, str] | None = None
    empty: str = ""

    @property
    def numeric(self) -> bool:
        return self.kind != "text"


def plain(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits in positional notation: ``0.00064``,
    ``12.3``, ``1,234,000``; never ``1.2e+06``."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    text = np.format_float_positional(value, precision=digits, unique=False, fractional=False,
                                      trim="-")
    whole, _, fraction = text.partition(".")
    if abs(value) >= 1e4:  # digits beyond the significant ones are zeros: group them
        return f"{int(whole):,}"
    return f"{whole}.{fraction}" if fraction else whole


def rounded(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` significant digits (999.7 to 3: 1000)."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def time_ms(ms: float) -> str:
    """A time given in ms, in the unit that keeps it short: ``31.4 us``, ``1.13 ms``,
    ``2.5 s``, ``3.2 min``, ``1.5 h``."""
    ms = rounded(ms, 3)
    for unit, scale, below in (("ns", 1e-6, 1e-3), ("us", 1e-3, 1.0), ("ms", 1.0, 1e3),
                               ("s", 1e3, 120e3), ("min", 60e3, 7200e3)):
        if abs(ms) < below:
            return f"{plain(ms / scale)} {unit}"
    return f"{plain(ms / 3600e3)} h"


def time_unit(largest_us: float) -> tuple[str, float]:
    """One unit for a column of times up to ``largest_us``, and its size in us: us below 1 ms,
    ms below 10 s, s above."""
    if largest_us < 1e3:
        return "us", 1.0
    return ("ms", 1e3) if largest_us < 1e7 else ("s", 1e6)


def seconds(s: float) -> str:
    return time_ms(s * 1e3)


def speedup(value: float) -> str:
    """``x1.22``: how many times faster than the builtin (below 1: slower)."""
    return f"x{plain(value)}"


def percent(fraction: float) -> str:
    """A fraction as a percentage: ``94%``, ``5.3%``, ``0.001%``."""
    return f"{plain(fraction * 100, 2 if abs(fraction) < 0.1 else 3)}%"


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def error(value: float) -> str:
    """A relative error: ``6.4×10⁻⁶``, ``0.012``, ``0``; readable over many decades."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if 1e-3 <= abs(value) < 1e4:
        return plain(value, 2)
    value = rounded(value, 2)
    exponent = math.floor(math.log10(abs(value)))
    mantissa = value / 10**exponent
    return f"{mantissa:.2g}×10{str(exponent).translate(SUPERSCRIPT)}"


def count(value: float) -> str:
    """A count: ``1,234``; a fractional one (operators per call averaged) ``2.5``."""
    return f"{int(value):,}" if float(value).is_integer() else plain(value)


def size_bytes(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{plain(value / scale)} {unit}"
    return f"{int(value)} B"


def mib(value: float) -> str:
    return size_bytes(value * 2**20)


def cores(value: float) -> str:
    """Cores busy with other work: ``0.1 cores``, ``1 core``."""
    return f"{plain(value, 2)} core{'' if rounded(value, 2) == 1 else 's'}"


FORMATS: dict[str, Callable[[float], str]] = {
    "ms": time_ms, "s": seconds, "x": speedup, "pct": percent, "err": error, "int": count,
    "num": plain, "bytes": size_bytes, "mib": mib, "cores": cores,
}


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def cell_text(value: Any, kind: str) -> str:
    """What a reader sees for ``value`` of a ``kind`` column ('' when it has no value)."""
    if missing(value):
        return ""
    if kind == "text" or isinstance(value, str):
        return str(value)
    return FORMATS[kind](float(value))


def interval_text(lo: Any, hi: Any, kind: str) -> str:
    """`` (1.18-1.26)``: a 95% interval after a value, in the value's unit ('' if unknown)."""
    if missing(lo) or missing(hi):
        return ""
    if kind in ("x", "num"):
        return f" ({plain(float(lo))}-{plain(float(hi))})"
    return f" ({cell_text(lo, kind)} - {cell_text(hi, kind)})"


def column_text(frame: pd.DataFrame, col: Col) -> list[str]:
    """Every cell of ``col`` in ``frame`` as text, intervals included where ``frame`` has
    them."""
    values = [cell_text(v, col.kind) for v in frame[col.key]]
    if col.interval is not None and set(col.interval) <= set(frame.columns):
        lo, hi = col.interval
        values = [v + interval_text(a, b, col.kind) if v else v
                  for v, a, b in zip(values, frame[lo], frame[hi], strict=True)]
    return [v or col.empty for v in values]


def sort_key(value: Any) -> str:
    """The value a page sorts a numeric cell by ('' sorts last)."""
    return "" if missing(value) or isinstance(value, str) else repr(float(value))


def present(frame: pd.DataFrame, columns: Sequence[Col]) -> list[Col]:
    """The columns of ``columns`` that ``frame`` has, in order."""
    return [c for c in columns if c.key in frame.columns]


def auto(frame: pd.DataFrame) -> list[Col]:
    """Columns for a frame nobody described: its names, numbers as plain numbers."""
    return [Col(c, str(c), "num" if pd.api.types.is_numeric_dtype(frame[c])
                and not pd.api.types.is_bool_dtype(frame[c]) else "text") for c in frame.columns]


# The columns of results.csv (and of the frames derived from it), in words.
RESULTS = {c.key: c for c in (
    Col("mark", "", tip="~ unstable, ! implausible: hover the row for its flags"),
    Col("variant", "implementation", tip="implementation, +compile mode when compiled"),
    Col("layer", "layer"), Col("impl", "implementation"), Col("compile", "compile mode"),
    Col("device", "device"), Col("dtype", "dtype"), Col("mode", "mode"),
    Col("setting", "setting", tip="device, dtype, mode"),
    Col("case", "size"), Col("status", "status"), Col("reason", "why"),
    Col("machine", "machine", tip="the machine it ran on (Machines)"),
    Col("median_ms", "median time", "ms", "median of the timed calls",
        interval=("ci_lo_ms", "ci_hi_ms")),
    Col("wall_ms", "back to back", "ms",
        "CUDA: wall time per call of back-to-back calls, CPU launches included"),
    Col("iqr_ms", "spread (IQR)", "ms", "interquartile range of the samples"),
    Col("min_ms", "fastest call", "ms"), Col("mean_ms", "mean time", "ms"),
    Col("n_samples", "samples", "int"), Col("calls_per_sample", "calls per sample", "int"),
    Col("gflops", "GFLOP/s", "num", "achieved: FLOPs per call / median time"),
    Col("gbps", "GB/s", "num", "minimum traffic per call / median time"),
    Col("roofline_frac", "of roofline", "pct",
        "achieved / what the roofline allows at this arithmetic intensity"),
    Col("speedup_vs_builtin", "vs builtin", "x",
        "times faster than the eager builtin (below 1: slower), with its 95% interval",
        interval=("speedup_lo", "speedup_hi")),
    Col("rel_err", "output error", "err", "relative error against the float64 reference"),
    Col("grad_rel_err", "gradient error", "err",
        "largest relative error of the gradients against the float64 reference"),
    Col("compile_s", "compile time", "s"),
    Col("peak_mem_bytes", "peak memory", "bytes", "most memory one call holds (profiled)"),
    Col("op_calls", "operators per call", "int", "operators launched per call (profiled)"),
    Col("peak_rss_bytes", "peak host memory", "bytes",
        "the most host memory (RSS) the process held while the case ran"),
    Col("tf32", "TF32", "int", "1: float32 on CUDA through a library with TF32 allowed"),
    Col("precision", "known to +-", "pct", "half-width of the 95% interval reached"),
    Col("busy_cores", "other load", "cores", "cores other processes used while it ran"),
    Col("flags", "flags"),
    Col("flops", "FLOPs per call", "int"), Col("bytes", "bytes per call", "bytes"),
)}


def results_columns(keys: Sequence[str], **titles: str) -> list[Col]:
    """``RESULTS`` columns by key; ``titles`` renames some for one table."""
    return [Col(**{**RESULTS[k].__dict__, "title": titles[k]}) if k in titles else RESULTS[k]
            for k in keys]

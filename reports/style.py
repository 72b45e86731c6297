"""One look for every figure and page: implementation colours, verdict colours, units.

An implementation keeps its colour in every figure of a report (``palette``), and in every run,
so a reader who learnt that violet is im2col in the latency plot finds it violet in the roofline
too, and in last week's run, whatever ``--impl`` left out or ``--impl-file`` added.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from reports import columns
from reports.schema import BASELINE_IMPL

#: the baseline's colour, the same in every run
BASELINE_COLOR = "#1f77b4"
#: the colour of each built-in implementation, fixed by name (not by position, which a user's
#: implementation or a new built-in would shift). The attention family (ten implementations and
#: the builtin in one figure) takes tab10 and near-black, the most distinct eleven; the others
#: are chosen apart from the rest of their layers. Every colour differs from every other.
IMPL_COLORS = MappingProxyType({
    BASELINE_IMPL: BASELINE_COLOR, "loops": "#d62728", "einsum": "#2ca02c",
    "matmul": "#ff7f0e", "blockwise": "#9467bd", "sdpa_math": "#8c564b",
    "sdpa_flash": "#e377c2", "sdpa_efficient": "#bcbd22", "sdpa_cudnn": "#17becf",
    "flash": "#1a1a1a", "torch_layers": "#7f7f7f", "im2col": "#6a3d9a",
    "im2col_chunked": "#e6ab02", "vectorized": "#66a61e", "fused": "#e7298a",
    "unfold": "#1b9e77", "addmm": "#7b4173", "batched": "#a6761d"})
#: colours of the implementations ``IMPL_COLORS`` does not name (a user's ``--impl-file``, a
#: built-in added since): none of the built-ins' and each far from every layer's built-ins. A
#: name takes the one its hash picks, so it keeps it from run to run; the next free one where
#: another such name of the run took it first (in name order)
EXTRA_COLORS = ("#637939", "#fb8072", "#9e9ac8", "#bf5b17", "#393b79", "#e7969c", "#6baed6",
                "#ad494a")


@dataclass(frozen=True)
class Palette:
    """Every implementation of a run, in legend order, each with a colour of its own."""

    order: tuple[str, ...]
    colors: dict[str, str]

    def color(self, impl: str) -> str:
        return self.colors.get(impl, "#000000")

    def sorted(self, impls: Iterable[str]) -> list[str]:
        """``impls`` (each once) in legend order."""
        unique = set(impls)
        return [i for i in self.order if i in unique] + sorted(unique - set(self.order))


def palette(meta: dict[str, Any], impls: Iterable[str] = ()) -> Palette:
    """The colours of a run, in legend order: ``meta["impl_order"]`` (the registry's order,
    recorded by the run), then any other implementation of ``impls`` in order of appearance.
    Built-ins take ``IMPL_COLORS``, every other name one of ``extra_colors``: distinct for
    every implementation of the run, and the same for a name in every run."""
    order = tuple(dict.fromkeys([*(meta.get("impl_order") or []), *impls]))
    others = sorted(i for i in order if i not in IMPL_COLORS)
    colors = dict(IMPL_COLORS)
    pool = extra_colors(len(others))
    free = [True] * len(pool)
    for name in others:
        slot = zlib.crc32(name.encode()) % len(EXTRA_COLORS)
        while not free[slot]:
            slot = (slot + 1) % len(pool)
        free[slot] = False
        colors[name] = pool[slot]
    return Palette(order, colors)


def extra_colors(n: int) -> list[str]:
    """``EXTRA_COLORS``, then (for more than eight names) hues spaced by the golden ratio."""
    pool, taken, i = list(EXTRA_COLORS), {*EXTRA_COLORS, *IMPL_COLORS.values()}, 0
    while len(pool) < n:
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.55 + 0.3 * (i % 2), 0.7)
        color = f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"
        if color not in taken:
            pool.append(color)
            taken.add(color)
        i += 1
    return pool


VERDICT_COLORS = {"faster": "#2ca02c", "slower": "#d62728", "same": "#7f7f7f",
                  "suspicious": "#ff7f0e", "new": "#1f77b4", "missing": "#9467bd",
                  "correctness changed": "#8c564b"}
STATUS_COLORS = {"ok": "#2ca02c", "incorrect": "#d62728", "error": "#8c564b", "oom": "#ff7f0e",
                 "timeout": "#e377c2", "skipped": "#7f7f7f"}


def variants(frame: Any) -> list[str]:
    """``variant`` of every row of a frame with ``impl`` and ``compile`` columns."""
    return [variant(i, c) for i, c in zip(frame["impl"], frame["compile"], strict=True)]


def variant(impl: str, compile_mode: str) -> str:
    """How a (impl, compile) pair is named in legends and tables: ``im2col+default``."""
    return impl if compile_mode == "none" else f"{impl}+{compile_mode}"


def format_seconds(seconds: float) -> str:
    """``0.000012`` -> ``12 us``, ``5.93`` -> ``5.93 s``, ``1800`` -> ``30 min``; nan -> ``-``
    (``reports.columns``' units, which never fall into scientific notation)."""
    return "-" if seconds != seconds else columns.seconds(seconds)


def format_count(n: float, unit: str) -> str:
    """``1, "op"`` -> ``1 op``, ``12`` -> ``12 ops``, ``10398`` -> ``10.4k ops``; nan -> ''."""
    if n != n:
        return ""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix} {unit}s"
    return (f"{n:.3g}" if n < 100 else f"{n:.0f}") + f" {unit}" + ("" if n == 1 else "s")


def speedup_text(speedup: float, lo: float = float("nan"), hi: float = float("nan")) -> str:
    """``x2.31 (2.25-2.37)``: a speedup with its 95% interval where known; '' for NaN."""
    if speedup != speedup:
        return ""
    interval = f" ({lo:.3g}-{hi:.3g})" if lo == lo and hi == hi else ""
    return f"x{speedup:.3g}{interval}"

"""One look for every figure and page: implementation colours, verdict colours, units.

An implementation keeps its colour in every figure of a report (``palette``), and in every run
of the same registry, so a reader who learnt that orange is im2col in the latency plot finds it
orange in the roofline too.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reports.schema import BASELINE_IMPL

#: the baseline's colour, the same in every run
BASELINE_COLOR = "#1f77b4"
#: colours of the other implementations, in the run's implementation order (the registry's:
#: layers in the notes' order, each in the order it registers its implementations), chosen to
#: stay apart from each other and from the baseline's blue
PALETTE = ("#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf", "#7f7f7f", "#393b79", "#637939", "#843c39", "#7b4173", "#1b9e77",
           "#e7ba52", "#6a3d9a", "#b15928", "#66a61e", "#fb9a99", "#80b1d3", "#1a1a1a",
           "#ce6dbd", "#8c6d31")


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
    """The colours of a run: ``meta["impl_order"]`` (the registry's order, recorded by the
    run), then any other implementation of ``impls`` in order of appearance. Distinct for every
    implementation; the same for an implementation in every run of one registry."""
    order = list(dict.fromkeys([*(meta.get("impl_order") or []), *impls]))
    others = [i for i in order if i != BASELINE_IMPL]
    colors = {impl: _nth_color(i) for i, impl in enumerate(others)}
    return Palette(tuple(order), {**colors, BASELINE_IMPL: BASELINE_COLOR})


def _nth_color(i: int) -> str:
    """``PALETTE[i]``; past its end, hues spaced by the golden ratio."""
    if i < len(PALETTE):
        return PALETTE[i]
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.75)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


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
    """``0.000012`` -> ``12 us``, ``5.93`` -> ``5.93 s``, ``1800`` -> ``30 min``; nan -> ``-``."""
    if seconds != seconds:
        return "-"
    for unit, scale, below in (("us", 1e-6, 1e-3), ("ms", 1e-3, 1.0), ("s", 1.0, 120.0),
                               ("min", 60.0, 7200.0)):
        if seconds < below:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 3600:.3g} h"


def speedup_text(speedup: float, lo: float = float("nan"), hi: float = float("nan")) -> str:
    """``x2.31 (2.25-2.37)``: a speedup with its 95% interval where known; '' for NaN."""
    if speedup != speedup:
        return ""
    interval = f" ({lo:.3g}-{hi:.3g})" if lo == lo and hi == hi else ""
    return f"x{speedup:.3g}{interval}"

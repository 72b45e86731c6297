"""One look for every figure and page: implementation colours, verdict colours, units.

An implementation keeps its colour in every figure of every report (``impl_colors``), so a reader
who learnt that orange is im2col in the latency plot finds it orange in the roofline too.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

# The techniques of the notes, slowest first; anything else (a user's impl) gets a colour from
# its name, stable across runs.
KNOWN_IMPLS = ("loops", "im2col", "einsum", "unfold", "matmul", "batched", "vectorized", "fused",
               "blockwise", "builtin", "torch_layers", "sdpa_math", "flash", "efficient", "cudnn")
_PALETTE = ("#d62728", "#ff7f0e", "#2ca02c", "#17becf", "#9467bd", "#8c564b", "#e377c2",
            "#bcbd22", "#7f7f7f", "#1f77b4", "#393b79", "#637939", "#8c6d31", "#843c39",
            "#7b4173")
_EXTRA = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
          "#dbdb8d", "#9edae5", "#5254a3", "#b5cf6b", "#e7ba52", "#ad494a", "#a55194")

VERDICT_COLORS = {"faster": "#2ca02c", "slower": "#d62728", "same": "#7f7f7f",
                  "suspicious": "#ff7f0e", "new": "#1f77b4", "missing": "#9467bd",
                  "correctness changed": "#8c564b"}
STATUS_COLORS = {"ok": "#2ca02c", "incorrect": "#d62728", "error": "#8c564b", "oom": "#ff7f0e",
                 "timeout": "#e377c2", "skipped": "#7f7f7f"}


def impl_color(impl: str) -> str:
    """The colour of ``impl`` in every figure."""
    if impl in KNOWN_IMPLS:
        return _PALETTE[KNOWN_IMPLS.index(impl)]
    return _EXTRA[zlib.crc32(impl.encode()) % len(_EXTRA)]


def impl_order(impls: Iterable[str]) -> list[str]:
    """``impls`` in legend order: the notes' techniques slowest first, then others by name."""
    unique = set(impls)
    known = [i for i in KNOWN_IMPLS if i in unique]
    return known + sorted(unique - set(known))


def impl_colors(impls: Iterable[str]) -> dict[str, str]:
    """A seaborn ``palette=`` mapping for ``impls``."""
    return {impl: impl_color(impl) for impl in impl_order(impls)}


def variants(frame: Any) -> list[str]:
    """``variant`` of every row of a frame with ``impl`` and ``compile`` columns."""
    return [variant(i, c) for i, c in zip(frame["impl"], frame["compile"], strict=True)]


def variant(impl: str, compile_mode: str) -> str:
    """How a (impl, compile) pair is named in legends and tables: ``im2col+default``."""
    return impl if compile_mode == "none" else f"{impl}+{compile_mode}"

"""What every figure shares: the data of one layer, the facet grid, lines, legends, ticks, files.

``reports.plots`` (speed and correctness) and ``reports.profile_plots`` (where the time goes)
draw on these; matplotlib is imported only when a figure is drawn. An implementation keeps its
colour in every figure of a run (``LayerData.palette``, ``reports.style.palette``); the compile
mode sets marker and dashes. Facets are laid out in up to three columns so that no figure is
taller than ``MAX_HEIGHT_PX``; shared legends sit right of the grid, outside the data. Where
a run's cases ran on several machines, figures of time get a panel per machine and setting
(``LayerData.facet``), and the roofline draws each machine's own ceilings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.analysis import growth_exponents, measured
from reports.meta import machine_ceilings, per_machine, several_machines
from reports.schema import machine_key_of
from reports.style import Palette, variant

DPI = 110
WIDTH_IN = 8.0
MAX_HEIGHT_PX = 1000
MAX_HEIGHT_IN = MAX_HEIGHT_PX / DPI
CASE_LABELS_IN = 2.0  # height of the title and the rotated case names under the panels
#: a figure drawing more points than this is written as PNG: SVG costs ~120 bytes a marker on
#: top of ~40 kB of frame and text, so past ~500 points it outgrows the PNG (~60-100 kB)
SVG_MAX_POINTS = 500
#: sizes whose FLOPs differ by less than this factor share one point of a latency line
BIN_RATIO = 1.2
STYLES = {"none": ("o", "-"), "default": ("s", "--"), "reduce-overhead": ("^", "-."),
          "max-autotune": ("D", ":"), "max-autotune-no-cudagraphs": ("v", ":")}
FACET = ("device", "dtype", "mode")


@dataclass(frozen=True)
class Figure:
    path: Path  # the file written: .svg, or .png where SVG would be large
    layer: str
    kind: str  # latency, speedup, ... (the drawer's name)
    title: str
    caption: str  # what it shows and how to read it


@dataclass(frozen=True)
class LayerData:
    """One layer's rows and what all its figures share."""

    name: str
    rows: pd.DataFrame
    timed: pd.DataFrame  # measured rows (ok or incorrect, positive median)
    cases: list[str]  # smallest FLOPs first
    slopes: dict[tuple[str, ...], float]  # (impl, compile, device, dtype, mode) -> exponent
    meta: dict[str, Any]
    ops: pd.DataFrame  # this layer's ops.csv rows (empty when the run was not profiled)
    palette: Palette  # the run's implementation colours and legend order
    #: machine key -> its ``machines.json`` record (``{}``: the run's own, ``meta.json``)
    machines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    several: bool = False  # the run's cases ran on several machines

    @property
    def facet(self) -> tuple[str, ...]:
        """The columns a figure of time has a panel per: the setting, and the machine where
        there are several (times of two machines do not share a line)."""
        return (*FACET, "machine") if self.several else FACET

    def ceilings(self, machine: str) -> dict[str, Any]:
        """Device -> measured ceilings of ``machine`` (``reports.meta.machine_ceilings``)."""
        return machine_ceilings(self.machines, self.meta, machine)


@dataclass(frozen=True)
class Drawn:
    fig: Any  # matplotlib.figure.Figure
    title: str
    caption: str


def slopes_of(results: pd.DataFrame) -> dict[tuple[str, ...], float]:
    """(layer, impl, compile, device, dtype, mode) -> growth exponent (where it has one); the
    machine last in the key where the cases ran on several (each machine's sizes fitted)."""
    exps = per_machine(results, growth_exponents)
    keys = ["layer", "impl", "compile", "device", "dtype", "mode",
            *(["machine"] if "machine" in exps else [])]
    return {tuple(r[k] for k in keys): r["exponent"] for _, r in exps.iterrows()}


def layer_data(results: pd.DataFrame, name: str, meta: dict[str, Any], palette: Palette,
               slopes: dict[tuple[str, ...], float] | None = None,
               ops: pd.DataFrame | None = None,
               machines: Mapping[str, Mapping[str, Any]] | None = None) -> LayerData:
    """What the figures of layer ``name`` draw from (``slopes``: of the whole run, if known;
    ``machines``: ``machines.json``, by default the run's own machine only)."""
    if "machine" not in results:  # a frame from before the column: the run's own machine
        results = results.assign(machine=machine_key_of(meta))
    rows = results[results["layer"] == name]
    size = rows.groupby("case", sort=False)["flops"].min()
    cases = list(size.sort_values(kind="stable", na_position="last").index)
    slopes = slopes_of(results) if slopes is None else slopes
    own = {k[1:]: v for k, v in slopes.items() if k[0] == name}
    ops = ops[ops["layer"] == name] if ops is not None and len(ops) else pd.DataFrame(
        columns=["layer", "op"])
    return LayerData(name, rows, measured(rows), cases, own, meta, ops, palette,
                     machines or {}, several_machines(results))


def grid(n: int, cols: int | None = None, col_in: float = 4.2, legend_in: float = 2.2,
         extra_in: float = 0.6) -> tuple[Any, list[Any]]:
    """``n`` panels, row by row in ``cols`` columns (by default one up to three panels, two up
    to eight, else three), rows shrunk and columns added (a multiple of ``cols`` if given) so
    the figure stays under ``MAX_HEIGHT_IN``. ``col_in``: the width of a column; ``legend_in``:
    room for a shared legend; ``extra_in``: height the title and x labels need."""
    from matplotlib.figure import Figure as MplFigure

    unit = cols or 1
    cols = cols or (1 if n <= 3 else 2 if n <= 8 else 3)
    min_row_in = 1.7
    need = math.ceil(n / max(1, int((MAX_HEIGHT_IN - extra_in) // min_row_in)))
    if need > cols:
        cols = unit * math.ceil(need / unit)
    rows = math.ceil(n / cols)
    row_in = max(min_row_in, min(3.0, (MAX_HEIGHT_IN - extra_in) / rows))
    width = WIDTH_IN if cols == 1 else legend_in + col_in * cols
    fig = MplFigure(figsize=(width, min(rows * row_in + extra_in, MAX_HEIGHT_IN)),
                    layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def facet_keys(frame: pd.DataFrame, keys: tuple[str, ...] = FACET) -> list[tuple[str, ...]]:
    return list(dict.fromkeys(frame[list(keys)].itertuples(index=False, name=None)))


def subset(frame: pd.DataFrame, keys: tuple[str, ...], values: tuple[str, ...]) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)
    for k, v in zip(keys, values, strict=True):
        keep &= (frame[k] == v).to_numpy()
    return frame[keep]


def variant_pairs(frame: pd.DataFrame, palette: Palette) -> list[tuple[str, str]]:
    """(impl, compile) pairs in legend order: the run's implementation order, eager first."""
    modes = ["none", *[m for m in pd.unique(frame["compile"]) if m != "none"]]
    present = set(frame[["impl", "compile"]].itertuples(index=False, name=None))
    return [(i, m) for i in palette.sorted(frame["impl"]) for m in modes if (i, m) in present]


def style(compile_mode: str) -> dict[str, Any]:
    """Marker and dashes of a compile mode."""
    marker, dashes = STYLES.get(compile_mode, ("P", (0, (3, 1, 1, 1))))
    return {"marker": marker, "linestyle": dashes, "markersize": 4.5, "linewidth": 1.4}


def pick(frame: pd.DataFrame, impl: str, compile_mode: str) -> pd.DataFrame:
    return frame[(frame["impl"] == impl) & (frame["compile"] == compile_mode)]


def positive(values: Any) -> np.ndarray:
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
    return np.isfinite(v) & (v > 0)


def facet_title(ax: Any, values: tuple[str, ...]) -> None:
    ax.set_title(" · ".join(str(v) for v in values), fontsize="medium")


def setting(frame: pd.DataFrame) -> str:
    parts = [", ".join(map(str, pd.unique(frame[k]))) for k in ("device", "dtype")]
    return " / ".join(parts)


def case_axis(axes: list[Any], cases: list[str]) -> None:
    """Case names along the x axis of every panel, written under the bottom panel of each
    column only."""
    below = {(ax.get_subplotspec().colspan.start, ax.get_subplotspec().rowspan.start)
             for ax in axes}
    for ax in axes:
        spec = ax.get_subplotspec()
        bottom = not any(c == spec.colspan.start and r > spec.rowspan.start for c, r in below)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases if bottom else [], rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.5, len(cases) - 0.5)
        ax.set_xlabel("case (smallest FLOPs left)" if bottom else "")


def legend(ax: Any, n: int | None = None) -> None:
    """The legend of one panel, right of it."""
    n = len(ax.get_legend_handles_labels()[1]) if n is None else n
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small",
              ncol=1 if n <= 16 else 2)


def legend_handles(axes: list[Any]) -> dict[str, Any]:
    """Label -> first artist with that label, over every axes (each label once)."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    return handles


def fig_legend(fig: Any, axes: list[Any]) -> None:
    """One legend for all panels, right of the grid and outside every panel."""
    if handles := legend_handles(axes):
        shown = fig.legend(list(handles.values()), list(handles), loc="outside right upper",
                           frameon=False, fontsize="small", ncol=1 if len(handles) <= 16 else 2)
        for handle in shown.legend_handles:  # markers sized by the data: one size here
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([30.0])


def lines(ax: Any, frame: pd.DataFrame, x: str, y: str, palette: Palette,
          pos: dict[str, int] | None = None,
          label: Callable[[str, str], str] | None = None) -> None:
    """One line per variant of ``frame``: ``y`` against ``x`` (or case positions ``pos``),
    sorted along x. Against a numeric ``x`` every size is a marker and the line joins the
    geometric means of sizes within ``BIN_RATIO`` of each other, so sizes of almost equal x do
    not make it zig-zag."""
    for impl, mode in variant_pairs(frame, palette):
        g = pick(frame, impl, mode)
        g = g[positive(g[y]) & (True if pos else positive(g[x]))]
        if g.empty:
            continue
        xs = g["case"].map(pos).to_numpy(float) if pos else g[x].to_numpy(float)
        order = np.argsort(xs, kind="stable")
        xs, ys = xs[order], g[y].to_numpy(float)[order]
        name = label(impl, mode) if label else variant(impl, mode)
        look = {"color": palette.color(impl), **style(mode)}
        if pos:
            ax.plot(xs, ys, label=name, **look)
            continue
        line_x, line_y = binned(xs, ys)
        ax.plot(line_x, line_y, label=name, markevery=[], **look)
        ax.plot(xs, ys, **{**look, "linestyle": "none"})


def binned(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``xs`` grouped where each is within ``BIN_RATIO`` of its group's first; the
    geometric mean x and y of every group."""
    starts = [0]
    for i in range(1, len(xs)):
        if xs[i] >= xs[starts[-1]] * BIN_RATIO:
            starts.append(i)
    groups = np.split(np.arange(len(xs)), starts[1:])
    return (np.array([_geomean(xs[g]) for g in groups]),
            np.array([_geomean(ys[g]) for g in groups]))


def _geomean(values: np.ndarray) -> float:
    """Exact where all are equal (a rounded mean would widen a one-size axis to 1e-11)."""
    if (values == values[0]).all():
        return float(values[0])
    return float(np.exp(np.log(values).mean()))


def positions(cases: list[str], frame: pd.DataFrame) -> tuple[list[str], dict[str, int]]:
    shown = [c for c in cases if c in set(frame["case"])]
    return shown, {c: i for i, c in enumerate(shown)}


def label_points(ax: Any, points: list[tuple[float, float, str, str]],
                 gap: float = 0.065, top: float = 0.97) -> None:
    """Write ``(x, y, text, color)`` beside each point. Labels of points less than a third of
    the axes apart in x are stacked at least ``gap`` (axes fraction) apart in their points'
    order, with a thin line back to a point they had to leave, none above ``top``. Call once
    the axes' scales and limits are final."""
    placed = sorted((tuple(ax.transLimits.transform(ax.transScale.transform((x, y)))), text,
                     color, (x, y)) for x, y, text, color in points)
    groups: list[list[Any]] = []
    for p in placed:  # by x: a label joins the group of its left neighbour if near it
        if groups and p[0][0] - groups[-1][-1][0][0] < 0.33:
            groups[-1].append(p)
        else:
            groups.append([p])
    for group in groups:
        group.sort(key=lambda p: p[0][1])
        ys = spread([p[0][1] for p in group], gap, hi=top)
        for ((fx, fy), text, color, xy), ty in zip(group, ys, strict=True):
            left = fx > 0.72  # near the right edge: write it to the left of the point
            ax.annotate(text, xy, xytext=(fx + (-0.02 if left else 0.02), ty),
                        textcoords="axes fraction", ha="right" if left else "left",
                        va="center", fontsize="x-small", color=color,
                        arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6, "shrinkA": 0,
                                    "shrinkB": 3} if abs(ty - fy) > gap / 2 else None)


def spread(ys: list[float], gap: float, lo: float = 0.03, hi: float = 0.97) -> list[float]:
    """Sorted positions ``ys`` moved apart to at least ``gap``, as little as they can, kept
    inside ``[lo, hi]`` where there is room; the order is kept."""
    out: list[float] = []
    for y in ys:
        out.append(max(y, lo, out[-1] + gap) if out else max(y, lo))
    for i in range(len(out) - 1, -1, -1):  # then back down from the top edge
        out[i] = min(out[i], hi if i == len(out) - 1 else out[i + 1] - gap)
    return out


def readable_ticks(fig: Any) -> None:
    """Every log axis of ``fig`` labelled at plain numbers (1, 2, 5, 10 where it spans a decade
    or two; every decade, or every few, where it spans more), never at minor ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    for ax in fig.axes:
        for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(limits)
            if axis.get_scale() != "log" or not lo > 0:
                continue
            axis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: tick_text(v)))
            axis.set_minor_formatter(NullFormatter())


def log_ticks(lo: float, hi: float) -> list[float]:
    """Three to about eight tick values between ``lo`` and ``hi`` on a log scale."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for subs in ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)):
        ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in subs
                 if lo <= m * 10.0 ** e <= hi * (1 + 1e-9)]
        if len(ticks) >= 3:
            stride = math.ceil(len(ticks) / 8)
            return ticks[::stride]
    return [float(v) for v in np.linspace(lo, hi, 4)]


def tick_text(value: float) -> str:
    """``2000000`` -> ``2M``, ``0.05`` -> ``0.05``, ``3e-7`` -> ``3×10⁻⁷`` (mathtext)."""
    if value >= 1000:
        for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if value >= scale:
                return f"{value / scale:.3g}{suffix}"
    if value >= 1e-3:
        return f"{value:.3g}"
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10.0 ** exponent
    lead = "" if abs(mantissa - 1) < 1e-6 else rf"{mantissa:.2g}\times"
    return rf"${lead}10^{{{exponent}}}$"


def drawn_points(fig: Any) -> int:
    """Markers, line vertices, bars and segments drawn in ``fig``: what an SVG pays for."""
    count = 0
    for ax in fig.axes:
        count += sum(len(line.get_xdata()) for line in ax.get_lines()) + len(ax.patches)
        for c in ax.collections:
            count += len(c.get_segments()) if hasattr(c, "get_segments") else len(
                c.get_offsets())
    return count


def save(fig: Any, stem: Path) -> Path:
    """Write ``fig`` as ``stem``.svg, or ``stem``.png when it draws more than
    ``SVG_MAX_POINTS`` points, with readable log ticks; the same bytes for the same figure.
    Returns the path written."""
    import matplotlib

    readable_ticks(fig)
    svg = drawn_points(fig) <= SVG_MAX_POINTS
    path, other = (stem.parent / f"{stem.name}.{suffix}" for suffix in (
        ("svg", "png") if svg else ("png", "svg")))  # a name may hold dots: no with_suffix
    with matplotlib.rc_context({"svg.hashsalt": "layerbench"}):
        fig.savefig(path, dpi=DPI, metadata={"Date": None} if svg else None)
    other.unlink(missing_ok=True)  # an earlier report's
    return path

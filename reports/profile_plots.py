"""Figures of a profiled run (``bench --profile``): why each implementation takes its time.

- ``ops``: where the time of one call goes, per implementation: its self time split over the
  operators that take most of it (100% bars, labelled with the profiled time per call);
- ``op_calls``: operators launched per call, per size (the five-loop conv launches one per
  multiply-add, im2col a handful, ``F.conv2d`` one);
- ``memory``: peak memory a call holds beyond its inputs, per size, against the bytes of the
  inputs, weights and output.

Drawn by ``reports.plots.render`` when the run has an ``ops.csv``; one case (``profile``) gets
``case_figures``: its operator breakdown and its memory timeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.analysis import OTHER_OPS, op_shares, self_time_column
from reports.figures import (
    CASE_LABELS_IN,
    MAX_HEIGHT_IN,
    WIDTH_IN,
    Drawn,
    LayerData,
    case_axis,
    facet_keys,
    facet_title,
    fig_legend,
    grid,
    legend_handles,
    lines,
    positions,
    positive,
    save,
    setting,
    subset,
    variant_pairs,
)
from reports.style import Palette, format_count, format_seconds, variant

TOP_OPS = 7
MAX_CASES = 4  # breakdown panels per figure
BAR_IN = 0.26  # height of one bar of the breakdown
OTHER_COLOR = "#c7c7c7"
TOP_CASE_OPS = 12  # operators in a profiled case's breakdown
LOG_SPAN = 100.0  # bar values spanning more than this factor get a log axis
MIN_SHARE_LABEL = 0.08  # segments narrower than this carry no percentage


def op_colors(ops: list[str]) -> dict[str, str]:
    """One colour per operator of a figure, light (apart from the implementations' colours,
    dark enough text reads on them); ``other`` grey."""
    import seaborn as sns

    named = [op for op in ops if op != OTHER_OPS]
    light = [c for i, c in enumerate(sns.color_palette("pastel", 10).as_hex()) if i != 7]
    return {**dict(zip(named, light, strict=False)), OTHER_OPS: OTHER_COLOR}


def _breakdown(layer: LayerData) -> Drawn | None:
    shares = op_shares(layer.ops, TOP_OPS)
    if shares.empty:
        return None
    shares = shares[shares["layer"] == layer.name]
    totals = shares.groupby(["device", "dtype", "mode", "case"], sort=False)
    # the cases with the most implementations profiled, largest first, as many as fit
    coverage = totals.apply(lambda g: g[["impl", "compile"]].drop_duplicates().shape[0],
                            include_groups=False).rename("variants").reset_index()
    order = {c: i for i, c in enumerate(layer.cases)}
    coverage = coverage.assign(pos=coverage["case"].map(order).fillna(-1))
    bars = int(coverage["variants"].max())
    cols = 1 if len(coverage) == 1 else 2
    panel_in = BAR_IN * bars + 0.9
    rows = max(1, min(math.ceil(MAX_CASES / cols), int((MAX_HEIGHT_IN - 1.0) // panel_in)))
    panels = coverage.sort_values(["variants", "pos"], ascending=False).head(rows * cols)
    panels = panels.sort_values("pos")
    rows = math.ceil(len(panels) / cols)
    colors = op_colors(list(pd.unique(shares["op"])))
    where = ("device", "dtype", "mode", "case")
    keys = [tuple(panel[list(where)]) for _, panel in panels.iterrows()]
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(2.2 + 4.4 * cols, min(rows * panel_in + 1.0, MAX_HEIGHT_IN)),
                    layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[len(keys):]:
        ax.remove()
    for i, (ax, key) in enumerate(zip(axes, keys, strict=False)):
        rows_of = subset(layer.rows, where, key)
        calls = {(i, c): float(n) for i, c, n in zip(rows_of["impl"], rows_of["compile"],
                                                      rows_of["op_calls"], strict=True)}
        _stacked_bars(ax, subset(shares, where, key), colors, calls, layer.palette)
        ax.set_ylim(bars - 0.5, -0.5)  # the same bar height in every panel
        if i + cols >= len(keys):  # the bottom panel of its column
            ax.set_xlabel("share of the self time of one call")
        ax.set_title(f"{key[-1]}\n{' · '.join(key[:-1])}", fontsize="small")
    handles = legend_handles(axes[:len(keys)])
    fig.legend(list(handles.values()), list(handles), loc="outside right upper",
               frameon=False, fontsize="small")
    unit = "GPU kernel" if self_time_column(layer.ops) == "self_device_us" else "CPU"
    caption = (f"Where one call's {unit} time goes: each bar splits an implementation's self "
               "time (time inside an operator, not in the operators it calls) over the "
               f"{'kernels' if unit == 'GPU kernel' else 'operators'} that take most of it, "
               "labelled with their share where it is "
               f"{MIN_SHARE_LABEL:.0%} or more; beside each bar, the profiled time per call "
               "(under the profiler, so above the benchmark's median) and the operators "
               "launched per call. Many tiny operators (select, mul, add) mean per-call "
               "overhead dominates; one big GEMM or convolution means the work itself does.")
    return Drawn(fig, f"{layer.name}: where the time goes ({setting(shares)})", caption)


def _stacked_bars(ax: Any, data: pd.DataFrame, colors: dict[str, str],
                  calls: dict[tuple[str, str], float], impls: Palette) -> None:
    """Horizontal 100% bars, one per variant, segments per operator in ``colors`` order
    (labelled with their share where wide enough); the variant's name beside its bar with the
    profiled time and the operators launched (``calls``) per call."""
    pairs = variant_pairs(data, impls)
    names = []
    for row, (impl, mode) in enumerate(pairs):
        mine = data[(data["impl"] == impl) & (data["compile"] == mode)]
        left = 0.0
        for op in colors:
            share = float(mine.loc[mine["op"] == op, "share"].sum())
            if share > 0:
                ax.barh(row, share, left=left, color=colors[op], label=op, height=0.7,
                        edgecolor="white", linewidth=0.5)
                if share >= MIN_SHARE_LABEL:
                    ax.text(left + share / 2, row, f"{share:.0%}", ha="center", va="center",
                            fontsize=6.5, color="0.15")
                left += share
        ops = format_count(calls.get((impl, mode), float("nan")), "op")
        names.append(f"{variant(impl, mode)}\n{format_seconds(float(mine['us'].sum()) / 1e6)}"
                     + (f" · {ops}" if ops else ""))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7.5)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(_percent())


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0)


def _per_size(layer: LayerData, column: str, ylabel: str, scale: float = 1.0,
              reference: Callable[[Any, pd.DataFrame], None] | None = None) -> Any:
    rows = layer.rows[positive(layer.rows[column])]
    if rows.empty:
        return None
    rows = rows.assign(**{column: rows[column] * scale})
    cases, pos = positions(layer.cases, rows)
    facets = facet_keys(rows)
    fig, axes = grid(len(facets), extra_in=CASE_LABELS_IN)
    for ax, facet in zip(axes, facets, strict=True):
        sub = subset(rows, ("device", "dtype", "mode"), facet)
        lines(ax, sub, "case", column, layer.palette, pos=pos)
        if reference is not None:
            reference(ax, sub.assign(x=sub["case"].map(pos)))
        ax.set_yscale("log")
        ax.set(ylabel=ylabel)
        facet_title(ax, facet)
    case_axis(axes, cases)
    fig_legend(fig, axes)
    return fig, rows


def _op_calls(layer: LayerData) -> Drawn | None:
    drawn = _per_size(layer, "op_calls", "operators launched per call")
    if drawn is None:
        return None
    fig, rows = drawn
    caption = ("Top-level operators each call launches (counted by the profiler, per call): "
               "every one pays Python and dispatcher overhead of a few microseconds, so an "
               "implementation launching thousands is slow whatever the arithmetic; a built-in "
               "launches one or a few.")
    return Drawn(fig, f"{layer.name}: operator calls per call ({setting(rows)})", caption)


def _memory(layer: LayerData) -> Drawn | None:
    def minimum(ax: Any, sub: pd.DataFrame) -> None:
        io = sub.groupby("x")["bytes"].first() / 2**20
        ax.plot(io.index, io.to_numpy(float), color="0.3", linestyle=":", linewidth=1.2,
                label="inputs + weights + output")

    drawn = _per_size(layer, "peak_mem_bytes", "peak memory held (MiB)", 1 / 2**20, minimum)
    if drawn is None:
        return None
    fig, rows = drawn
    caption = ("Most memory one call holds at once beyond what existed before it (CPU: the "
               "running sum of the profiler's allocation events; CUDA: max_memory_allocated), "
               "per size; dotted: the bytes of the inputs, weights and output, for scale. "
               "Well above the dotted line means large intermediates (im2col's column matrix, "
               "attention's score matrix).")
    return Drawn(fig, f"{layer.name}: peak memory per call ({setting(rows)})", caption)


PROFILE_DRAWERS: dict[str, Callable[[LayerData], Drawn | None]] = {
    "ops": _breakdown, "op_calls": _op_calls, "memory": _memory,
}


def case_figures(ops: pd.DataFrame, memory: list[tuple[float, float]], title: str,
                 out_dir: Path) -> list[Path]:
    """One profiled case: ``breakdown`` (self time per operator) and ``memory`` (bytes held
    over one call), each .svg or .png (``reports.figures.save``); returns the paths written."""
    import seaborn as sns
    from matplotlib.figure import Figure as MplFigure

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        fig = MplFigure(figsize=(WIDTH_IN, 0.3 * min(len(ops), TOP_CASE_OPS) + 1.6),
                        layout="constrained")
        _op_times(fig.subplots(), ops)
        fig.suptitle(f"{title}: where the time goes")
        paths.append(save(fig, out_dir / "breakdown"))
        if memory:
            fig = MplFigure(figsize=(WIDTH_IN, 3.2), layout="constrained")
            ax = fig.subplots()
            t, held = np.array(memory, dtype=float).T
            ax.step(t, held / 2**20, where="post", color="#d62728")
            ax.set(xlabel="ms into the call", ylabel="MiB held beyond the inputs")
            fig.suptitle(f"{title}: memory over one call (peak {held.max() / 2**20:.3g} MiB)")
            paths.append(save(fig, out_dir / "memory"))
    return paths


def _op_times(ax: Any, ops: pd.DataFrame) -> None:
    """The ``TOP_CASE_OPS`` operators of ``ops`` with the most self time, as bars in ms
    labelled with their share of the case's self time; on a log axis where they span more
    than ``LOG_SPAN``."""
    column = self_time_column(ops)
    ms = pd.to_numeric(ops[column], errors="coerce").fillna(0.0) / 1e3
    total = float(ms.sum())
    top = ops.assign(ms=ms)[ms > 0].sort_values("ms", ascending=False).head(TOP_CASE_OPS)
    values = top["ms"].to_numpy(float)
    if not len(values):
        ax.text(0.5, 0.5, "no operator self time recorded", ha="center", transform=ax.transAxes)
        return
    ax.barh(range(len(top)), values, color="#1f77b4", height=0.7)
    log = len(values) > 1 and values.max() / values.min() > LOG_SPAN
    if log:
        ax.set_xscale("log")
        ax.set_xlim(values.min() / 2, values.max() * 1.5)
    else:
        ax.set_xlim(0, max(values.max(), 1e-9) * 1.05)
    for i, value in enumerate(values):
        end = ax.transLimits.transform(ax.transScale.transform((value, i)))[0]
        inside = end > 0.6  # a long bar: its label inside it, where the room is
        ax.text(value * (0.95 if inside else 1.05) if log else value + values.max() * (
                -0.01 if inside else 0.01), i, f"{value:.3g} ms · {_share_text(value / total)}",
                va="center", ha="right" if inside else "left", fontsize=7.5,
                color="white" if inside else "0.15")
    ax.set_yticks(range(len(top)))
    ax.set_yticklabels([f"{op}  ({format_count(calls, 'call')})" for op, calls
                        in zip(top["op"], top["calls"], strict=True)], fontsize=8)
    ax.invert_yaxis()
    device = "GPU" if column == "self_device_us" else "CPU"
    ax.set_xlabel(f"{device} self time per call (ms{', log scale' if log else ''}) · share of "
                  "the case's total")


def _share_text(share: float) -> str:
    """``0.452`` -> ``45%``, ``0.0031`` -> ``0.31%``."""
    return f"{share:.0%}" if share >= 0.1 else f"{share * 100:.2g}%"

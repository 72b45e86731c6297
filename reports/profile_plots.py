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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.analysis import OTHER_OPS, op_shares, self_time_column
from reports.figures import (
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
    setting,
    subset,
    variant_pairs,
)
from reports.style import Palette, format_seconds, variant

TOP_OPS = 7
MAX_CASES = 4  # breakdown panels per figure
OTHER_COLOR = "#c7c7c7"


def op_colors(ops: list[str]) -> dict[str, str]:
    """One colour per operator of a figure; ``other`` grey."""
    import seaborn as sns

    named = [op for op in ops if op != OTHER_OPS]
    palette = sns.color_palette("tab10", max(len(named), 1)).as_hex()
    return {**dict(zip(named, palette, strict=False)), OTHER_OPS: OTHER_COLOR}


def _breakdown(layer: LayerData) -> Drawn | None:
    shares = op_shares(layer.ops, TOP_OPS)
    if shares.empty:
        return None
    shares = shares[shares["layer"] == layer.name]
    totals = shares.groupby(["device", "dtype", "mode", "case"], sort=False)
    # the cases with the most implementations profiled, largest first
    coverage = totals.apply(lambda g: g[["impl", "compile"]].drop_duplicates().shape[0],
                            include_groups=False).rename("variants").reset_index()
    order = {c: i for i, c in enumerate(layer.cases)}
    coverage = coverage.assign(pos=coverage["case"].map(order).fillna(-1))
    panels = coverage.sort_values(["variants", "pos"], ascending=False).head(MAX_CASES)
    panels = panels.sort_values("pos")
    colors = op_colors(list(pd.unique(shares["op"])))
    where = ("device", "dtype", "mode", "case")
    keys = [tuple(panel[list(where)]) for _, panel in panels.iterrows()]
    data = [subset(shares, where, key) for key in keys]
    sizes = [max(len(d[["impl", "compile"]].drop_duplicates()), 1) for d in data]
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(WIDTH_IN * 1.15, sum(0.42 * n + 0.9 for n in sizes) + 1.4),
                    layout="constrained")
    axes = fig.subplots(len(keys), 1, squeeze=False, height_ratios=[n + 1.5 for n in sizes])
    for ax, key, panel_data in zip(axes[:, 0], keys, data, strict=True):
        rows = subset(layer.rows, where, key)
        calls = {(i, c): float(n) for i, c, n in zip(rows["impl"], rows["compile"],
                                                      rows["op_calls"], strict=True)}
        _stacked_bars(ax, panel_data, colors, calls, layer.palette)
        facet_title(ax, key)
    axes[-1, 0].set_xlabel("share of the self time of one call")
    handles = legend_handles(axes)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncol=min(len(handles), 4), frameon=False, fontsize="small")
    unit = "GPU kernel" if self_time_column(layer.ops) == "self_device_us" else "CPU"
    caption = (f"Where one call's {unit} time goes: each bar splits an implementation's self "
               "time (time inside an operator, not in the operators it calls) over the "
               f"operators that take most of it; the label gives the profiled time per call "
               "(under the profiler, so above the benchmark's median) and the operators "
               "launched per call. Many tiny operators (select, mul, add) mean per-call "
               "overhead dominates; one big GEMM or convolution means the work itself does.")
    return Drawn(fig, f"{layer.name}: where the time goes ({setting(shares)})", caption)


def _stacked_bars(ax: Any, data: pd.DataFrame, colors: dict[str, str],
                  calls: dict[tuple[str, str], float], impls: Palette) -> None:
    """Horizontal 100% bars, one per variant, segments per operator in ``colors`` order;
    labelled with the profiled time and the operators launched (``calls``) per call."""
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
                left += share
        n = calls.get((impl, mode), float("nan"))
        names.append(f"{variant(impl, mode)}\n{format_seconds(float(mine['us'].sum()) / 1e6)}"
                     + (f" · {n:,.0f} ops" if np.isfinite(n) else ""))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7.5)
    ax.invert_yaxis()
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
    fig, axes = grid(len(facets), sharex=True)
    for ax, facet in zip(axes[:, 0], facets, strict=True):
        sub = subset(rows, ("device", "dtype", "mode"), facet)
        lines(ax, sub, "case", column, layer.palette, pos=pos)
        if reference is not None:
            reference(ax, sub.assign(x=sub["case"].map(pos)))
        ax.set_yscale("log")
        ax.set(ylabel=ylabel)
        facet_title(ax, facet)
    case_axis(axes[-1, 0], cases)
    fig_legend(axes)
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
    """One profiled case: ``breakdown.png`` (self time per operator) and ``memory.png``
    (bytes held over one call); returns the paths written."""
    import seaborn as sns
    from matplotlib.figure import Figure as MplFigure

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        column = self_time_column(ops)
        top = ops.assign(us=pd.to_numeric(ops[column], errors="coerce").fillna(0.0))
        top = top.sort_values("us", ascending=False).head(12)
        fig = MplFigure(figsize=(WIDTH_IN, 0.3 * len(top) + 1.6), layout="constrained")
        ax = fig.subplots()
        ax.barh(range(len(top)), top["us"].to_numpy(float), color="#1f77b4")
        ax.set_yticks(range(len(top)))
        ax.set_yticklabels([f"{op}  (x{calls:.4g})" for op, calls
                            in zip(top["op"], top["calls"], strict=True)], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"self time per call (us, {'GPU' if column == 'self_device_us' else 'CPU'})"
                      "; x = calls per call")
        fig.suptitle(f"{title}: where the time goes")
        paths.append(out_dir / "breakdown.png")
        fig.savefig(paths[-1], dpi=110)
        if memory:
            fig = MplFigure(figsize=(WIDTH_IN, 3.2), layout="constrained")
            ax = fig.subplots()
            t, held = np.array(memory, dtype=float).T
            ax.step(t, held / 2**20, where="post", color="#d62728")
            ax.set(xlabel="ms into the call", ylabel="MiB held beyond the inputs")
            fig.suptitle(f"{title}: memory over one call (peak {held.max() / 2**20:.3g} MiB)")
            paths.append(out_dir / "memory.png")
            fig.savefig(paths[-1], dpi=110)
    return paths

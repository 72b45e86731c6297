"""Figures of one run: latency, speedup, roofline, correctness, compile and backward per layer.

``render`` writes ``<layer>_<kind>.svg`` for every figure the run has data for (and, for a
profiled run, the figures of ``reports.profile_plots``); ``.png`` instead for a figure of many
points, whose SVG would be large (``reports.figures.save``). Figures are
``matplotlib.figure.Figure`` objects drawn without pyplot (no GUI backend, no global registry of
open figures to leak) under a seaborn theme; matplotlib and seaborn are imported only when a
figure is drawn, since importing them takes a second or more. A run whose cases ran on several
machines gets a panel per machine in its figures of time (latency, compile) and its roofline,
each panel under its machine's own ceilings (``machines.json``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.analysis import MIN_GROWTH_POINTS
from reports.figures import (
    BIN_RATIO,
    CASE_LABELS_IN,
    FACET,
    Drawn,
    Figure,
    LayerData,
    case_axis,
    facet_keys,
    facet_title,
    fig_legend,
    grid,
    label_points,
    layer_data,
    legend,
    lines,
    pick,
    positions,
    positive,
    save,
    setting,
    slopes_of,
    style,
    subset,
    variant_pairs,
)
from reports.profile_plots import PROFILE_DRAWERS
from reports.schema import baseline_rows, precision
from reports.style import STATUS_COLORS, Palette, palette, variant

ERR_FLOOR = 1e-10  # where an error of exactly 0 is drawn, so a log axis can show it


def render(results: pd.DataFrame, meta: dict[str, Any], out_dir: Path,
           ops: pd.DataFrame | None = None,
           machines: dict[str, dict[str, Any]] | None = None) -> list[Figure]:
    """Write every figure ``results`` (and a profiled run's ``ops``) has data for under
    ``out_dir``; per layer in KINDS order, then the profile figures. ``machines``: the run's
    ``machines.json`` (``reports.schema.load_machines``), whose ceilings the roofline draws."""
    import seaborn as sns

    drawers = {**DRAWERS, **(PROFILE_DRAWERS if ops is not None and len(ops) else {})}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slopes = slopes_of(results)
    colors = palette(meta, results["impl"])
    figures = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        for name in pd.unique(results["layer"]):
            layer = layer_data(results, str(name), meta, colors, slopes, ops, machines)
            for kind, draw in drawers.items():
                drawn = draw(layer)
                if drawn is None:
                    continue
                drawn.fig.suptitle(drawn.title, fontsize="large")
                stem = out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', layer.name)}_{kind}"
                path = save(drawn.fig, stem)
                figures.append(Figure(path, layer.name, kind, drawn.title, drawn.caption))
    return figures


# -- the figures -----------------------------------------------------------------------------

def _latency(layer: LayerData) -> Drawn | None:
    timed = layer.timed[positive(layer.timed["flops"])]
    predicted = _predicted(layer.rows)
    if timed.empty:
        return None
    facets = facet_keys(pd.concat([timed, predicted]), layer.facet)
    fig, axes = grid(len(facets), col_in=6.2, legend_in=0.0)  # a legend (slopes) per panel
    for ax, facet in zip(axes, facets, strict=True):
        sub = subset(timed, layer.facet, facet)

        def label(impl: str, mode: str, facet: tuple[str, ...] = facet) -> str:
            slope = layer.slopes.get((impl, mode, *facet))
            return f"{variant(impl, mode)} (slope {'n/a' if slope is None else f'{slope:.2f}'})"

        lines(ax, sub, "flops", "median_ms", layer.palette, label=label)
        for impl, mode in variant_pairs(sub, layer.palette):  # the IQR as a bar around each median
            g = pick(sub, impl, mode)
            med, half = g["median_ms"].to_numpy(float), g["iqr_ms"].to_numpy(float) / 2
            half = np.where(np.isfinite(half), half, 0.0)
            ax.vlines(g["flops"], med - np.minimum(half, 0.9 * med), med + half,
                      color=layer.palette.color(impl), alpha=0.35, linewidth=2.5)
        pred = subset(predicted, layer.facet, facet)
        for impl, mode in variant_pairs(pred, layer.palette):
            g = pick(pred, impl, mode)
            ax.scatter(g["flops"], g["predicted_ms"], s=40, facecolors="none",
                       edgecolors=layer.palette.color(impl), linewidths=1.3,
                       marker=style(mode)["marker"],
                       label=f"{variant(impl, mode)} predicted (skipped)")
        ax.set(xscale="log", yscale="log", xlabel="FLOPs per call",
               ylabel="median time per call (ms)")
        facet_title(ax, facet)
        legend(ax)
    caption = ("Median time per call against the FLOPs of the call, both on log scales; a marker "
               "per size and a line per implementation (marker and dashes show the compile "
               f"mode) through the sizes, those within {BIN_RATIO:g}x of each other's FLOPs "
               "averaged into one point; vertical bars span the interquartile range. The "
               "legend's slope is the growth exponent, fitted over "
               f"{MIN_GROWTH_POINTS} sizes or more (n/a with fewer): 1 means time grows with "
               "the work, well below 1 means fixed overheads dominate these sizes.")
    caption += _per_machine(layer)
    if not predicted.empty:
        caption += (" Hollow markers are naive-loop cases skipped by the time budget, drawn at "
                    "their predicted time per call.")
    return Drawn(fig, f"{layer.name}: latency vs FLOPs ({setting(timed)})", caption)


def _predicted(rows: pd.DataFrame) -> pd.DataFrame:
    """Skipped naive-loop rows with a per-call prediction, in ``predicted_ms``."""
    skipped = rows[(rows["status"] == "skipped") & positive(rows["predicted_call_s"])]
    return skipped.assign(predicted_ms=skipped["predicted_call_s"] * 1e3)


def _speedup(layer: LayerData) -> Drawn | None:
    t = layer.timed
    data = t[positive(t["speedup_vs_builtin"])
             & ~baseline_rows(t)]
    if data.empty:
        return None
    cases, pos = positions(layer.cases, data)
    facets = facet_keys(data)
    fig, axes = grid(len(facets), extra_in=CASE_LABELS_IN)
    for ax, facet in zip(axes, facets, strict=True):
        lines(ax, subset(data, FACET, facet), "case", "speedup_vs_builtin", layer.palette,
              pos=pos)
        ax.axhline(1.0, color="0.2", linestyle=":", linewidth=1.2, label="builtin (eager) = 1")
        ax.set(yscale="log", ylabel="speedup vs builtin (x)")
        facet_title(ax, facet)
    case_axis(axes, cases)
    fig_legend(fig, axes)
    caption = ("Builtin median time divided by this implementation's, per size, on a log scale: "
               "above the dotted line at 1 is faster than the eager builtin, below is slower "
               "(0.1 = ten times slower).")
    return Drawn(fig, f"{layer.name}: speedup vs builtin ({setting(data)})", caption)


def _peak_key(device: str, dtype: str, table: dict[str, Any], meta: dict[str, Any],
              rows: pd.DataFrame | None = None) -> str:
    """The peak a facet's ceiling is drawn at, by the runner's rule (``precision``): tf32 where
    any of its ``rows`` ran with TF32 allowed (their ``tf32`` column), so that the line bounds
    every point; the run's flags where no row says (runs before the column, or no ``rows``).
    float32 if tf32 was not calibrated."""
    recorded = rows["tf32"].dropna() if rows is not None and "tf32" in rows else pd.Series()
    flags = (meta.get("machine") or {}).get("tf32") or {}
    key = precision(dtype, device, bool(recorded.any()) if len(recorded) else flags)
    return key if key in table else dtype


def _per_machine(layer: LayerData) -> str:
    """What a figure of time says where the cases ran on several machines."""
    return (" A panel per machine (named last in its title): times of different machines are "
            "not comparable." if layer.several else "")


def _roofline(layer: LayerData) -> Drawn | None:
    t = layer.timed
    ceilings = {m: layer.ceilings(m) for m in pd.unique(t["machine"])}
    calibrated = np.array([d in ceilings[m] for d, m in zip(t["device"], t["machine"],
                                                             strict=True)], dtype=bool)
    data = t[positive(t["gflops"]) & positive(t["flops"]) & positive(t["bytes"]) & calibrated]
    if data.empty:
        return None
    rank = {c: i / max(len(layer.cases) - 1, 1) for i, c in enumerate(layer.cases)}
    data = data.assign(intensity=data["flops"] / data["bytes"],
                       area=14 + 56 * data["case"].map(rank).fillna(0.0))
    facets = facet_keys(data, layer.facet)
    fig, axes = grid(len(facets))
    for ax, facet in zip(axes, facets, strict=True):
        sub = subset(data, layer.facet, facet)
        (device, dtype, _), machine = facet[:3], sub["machine"].iloc[0]
        best = []
        for impl, compile_mode in variant_pairs(sub, layer.palette):
            g = pick(sub, impl, compile_mode)
            ax.scatter(g["intensity"], g["gflops"], color=layer.palette.color(impl), s=g["area"],
                       marker=style(compile_mode)["marker"], label=variant(impl, compile_mode),
                       alpha=0.85, linewidths=0)
            top = g.loc[g["gflops"].idxmax()]
            best.append((top["intensity"], top["gflops"], variant(impl, compile_mode),
                         layer.palette.color(impl)))
        own = {**layer.meta, "machine": layer.machines.get(machine) or layer.meta.get("machine")}
        _ceiling(ax, ceilings[machine][device], device, dtype, own, sub)
        ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs per byte)",
               ylabel="achieved GFLOP/s")
        ax.autoscale_view()
        label_points(ax, best, top=0.88)  # above: the ceiling's label
        facet_title(ax, facet)
    fig_legend(fig, axes)
    whose = "each panel's machine's" if layer.several else "this machine's"
    caption = ("Achieved GFLOP/s against arithmetic intensity (FLOPs per byte moved), both on log "
               "scales; the larger the marker, the more FLOPs the size, and each variant's "
               "fastest point carries its name. The grey line is the attainable ceiling, "
               f"min(peak matmul GFLOP/s, intensity x copy GB/s), from {whose} "
               "calibration: points under its slope are memory-bound, under its flat part "
               "compute-bound; the gap is headroom.")
    if layer.several:
        caption += " A panel per machine (named last in its title)."
    return Drawn(fig, f"{layer.name}: roofline ({setting(data)})", caption)


def _ceiling(ax: Any, ceilings: dict[str, Any], device: str, dtype: str, meta: dict[str, Any],
             rows: pd.DataFrame) -> None:
    table = ceilings.get("matmul_gflops") or {}
    key = _peak_key(device, dtype, table, meta, rows)
    intensity = rows["intensity"]
    peak, bandwidth = table.get(key), ceilings.get("copy_gbps")
    if not peak or not bandwidth:
        ax.text(0.02, 0.95, f"no calibrated ceiling for {key}", transform=ax.transAxes,
                fontsize="small", va="top")
        return
    ridge = peak / bandwidth  # FLOPs per byte where memory stops being the limit
    lo = min(float(intensity.min()) / 2, ridge / 4)
    hi = max(float(intensity.max()) * 2, ridge * 4)
    xs = np.array([lo, ridge, hi])  # two straight segments on log-log axes
    ax.plot(xs, np.minimum(peak, xs * bandwidth), color="0.45", linewidth=1.6)
    ax.annotate(f"{key} peak {peak:,.0f} GFLOP/s", (hi, peak), ha="right", va="bottom",
                fontsize="x-small", color="0.3")
    ax.annotate(f"copy {bandwidth:,.1f} GB/s", (lo, lo * bandwidth), ha="left", va="bottom",
                fontsize="x-small", color="0.3", rotation=20)


def _correctness(layer: LayerData) -> Drawn | None:
    rows = layer.rows.copy()
    grad = rows["grad_rel_err"] if "grad_rel_err" in rows else pd.Series(np.nan, rows.index)
    has_err = np.isfinite(rows["rel_err"].to_numpy(float)) | np.isfinite(grad.to_numpy(float))
    errs = rows[has_err]
    statuses = (rows["status"] != "ok").any()
    if errs.empty and not statuses:
        return None
    facets = facet_keys(errs)
    fig, axes = grid(len(facets) + int(statuses), extra_in=1.2)
    for ax, facet in zip(axes, facets, strict=False):
        _errors(ax, subset(errs, FACET, facet), grad, layer.palette)
        facet_title(ax, facet)
    if statuses:
        _status(axes[-1], rows, layer.palette)
    fig_legend(fig, axes[: len(facets)])
    caption = ("Relative error of the output (circles) and of the gradients (triangles) against "
               "the reference, one point per case, log scale; the dashed line is the dtype's rtol "
               "and red rings mark cases outside tolerance. Errors of exactly 0 are drawn at "
               f"{ERR_FLOOR:g} so the log axis can show them.")
    if statuses:
        caption += " The last panel counts the cases of each status per implementation."
    return Drawn(fig, f"{layer.name}: correctness ({setting(rows)})", caption)


def _errors(ax: Any, sub: pd.DataFrame, grad: pd.Series, colors: Palette) -> None:
    variants = variant_pairs(sub, colors)
    for i, (impl, mode) in enumerate(variants):
        g = pick(sub, impl, mode)
        jitter = np.linspace(-0.08, 0.08, len(g)) if len(g) > 1 else np.zeros(1)
        bad = (g["status"] == "incorrect").to_numpy()
        for offset, values, marker, what in ((-0.15, g["rel_err"], "o", "output"),
                                             (0.15, grad.loc[g.index], "^", "gradient")):
            y = values.to_numpy(float)
            shown = np.isfinite(y)
            if not shown.any():
                continue
            y, x = np.maximum(y, ERR_FLOOR), i + offset + jitter
            ax.scatter(x[shown], y[shown], s=22, marker=marker, color=colors.color(impl),
                       alpha=0.8)
            ax.scatter([], [], marker=marker, color="0.4", label=f"{what} rel err")
            ring = shown & bad
            if ring.any():
                ax.scatter(x[ring], y[ring], s=110, facecolors="none", linewidths=1.5,
                           edgecolors=STATUS_COLORS["incorrect"], label="incorrect")
    for rtol in pd.unique(sub["rtol"].dropna()):
        ax.axhline(rtol, color="0.3", linestyle="--", linewidth=1.1, label="rtol")
        ax.annotate(f"rtol {rtol:g}", (1.0, rtol), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize="x-small")
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([variant(*v) for v in variants], rotation=30, ha="right")
    ax.set(yscale="log", ylabel="relative error")


def _status(ax: Any, rows: pd.DataFrame, colors: Palette) -> None:
    """Stacked bars: how many cases of each variant ended in each status (all settings)."""
    variants = variant_pairs(rows, colors)
    bottom = np.zeros(len(variants))
    for status, color in STATUS_COLORS.items():
        counts = np.array([int((pick(rows, i, m)["status"] == status).sum())
                           for i, m in variants])
        if counts.any():
            ax.bar(range(len(variants)), counts, bottom=bottom, color=color, label=status)
            bottom += counts
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([variant(*v) for v in variants], rotation=30, ha="right")
    ax.set(ylabel="cases", title="case status (all settings)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    legend(ax)


def _compile(layer: LayerData) -> Drawn | None:
    t = layer.timed
    compiled = t[t["compile"] != "none"]
    if compiled.empty:
        return None
    data = t[t["impl"].isin(set(compiled["impl"]))]
    cases, pos = positions(layer.cases, compiled)
    data = data[data["case"].isin(pos)]
    facets = facet_keys(compiled, layer.facet)
    fig, axes = grid(2 * len(facets), cols=2, extra_in=CASE_LABELS_IN)
    for left, right, facet in zip(axes[0::2], axes[1::2], facets, strict=True):
        lines(left, subset(data, layer.facet, facet), "case", "median_ms", layer.palette,
              pos=pos)
        lines(right, subset(compiled, layer.facet, facet), "case", "compile_s", layer.palette,
              pos=pos)
        left.set(yscale="log", ylabel="median time per call (ms)")
        right.set(yscale="log", ylabel="compile time (s)")
        facet_title(left, facet)
        facet_title(right, facet)
    case_axis(axes, cases)
    fig_legend(fig, axes)
    caption = ("Left: median time per call, eager (solid, circles) against torch.compile (other "
               "dashes and markers) per implementation and size; right: compile time, the first "
               "call's duration minus one call, in seconds. Compiling pays off once the time saved "
               "per call times the number of calls exceeds the compile time."
               + _per_machine(layer))
    return Drawn(fig, f"{layer.name}: torch.compile ({setting(compiled)})", caption)


def _backward(layer: LayerData) -> Drawn | None:
    t = layer.timed
    on = ["impl", "compile", "device", "dtype", "case", "machine"]  # one machine's pair
    pairs = t[t["mode"] == "fwd"].merge(t[t["mode"] == "fwdbwd"], on=on, suffixes=("", "_bwd"))
    if pairs.empty:
        return None
    pairs = pairs.assign(ratio=pairs["median_ms_bwd"] / pairs["median_ms"])
    cases, pos = positions(layer.cases, pairs)
    facets = facet_keys(pairs, ("device", "dtype"))
    fig, axes = grid(len(facets), extra_in=CASE_LABELS_IN)
    for ax, facet in zip(axes, facets, strict=True):
        lines(ax, subset(pairs, ("device", "dtype"), facet), "case", "ratio", layer.palette,
              pos=pos)
        ax.axhline(3.0, color="0.2", linestyle=":", linewidth=1.2, label="3x (GEMM-like)")
        ratio = pairs["ratio"][positive(pairs["ratio"])]
        if len(ratio) and ratio.max() / ratio.min() > 10:
            ax.set_yscale("log")
        ax.set(ylabel="fwd+bwd time / fwd time")
        facet_title(ax, facet)
    case_axis(axes, cases)
    fig_legend(fig, axes)
    caption = ("Median time of forward + backward divided by forward alone, per size: the cost of "
               "the backward pass. A GEMM-like layer costs about 3x (one GEMM forward, two "
               "backward), the dotted line; far above it points at a slow or recomputing "
               "backward.")
    return Drawn(fig, f"{layer.name}: backward cost ({setting(pairs)})", caption)


DRAWERS: dict[str, Callable[[LayerData], Drawn | None]] = {
    "latency": _latency, "speedup": _speedup, "roofline": _roofline,
    "correctness": _correctness, "compile": _compile, "backward": _backward,
}
KINDS = tuple(DRAWERS)

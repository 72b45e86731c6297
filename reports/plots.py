"""Figures of one run: latency, speedup, roofline, correctness, compile and backward per layer.

``render`` writes ``<layer>_<kind>.png`` for every figure the run has data for. Figures are
``matplotlib.figure.Figure`` objects drawn without pyplot (no GUI backend, no global registry of
open figures to leak) under a seaborn theme; matplotlib and seaborn are imported only when a
figure is drawn, since importing them takes a second or more. An implementation has the same
colour in every figure (``reports.style.impl_color``); the compile mode sets marker and dashes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.analysis import growth_exponents, measured
from reports.style import STATUS_COLORS, impl_color, impl_order, variant
from suites.calibration import peak_key

KINDS = ("latency", "speedup", "roofline", "correctness", "compile", "backward")
DPI = 110
WIDTH_IN = 8.0
ERR_FLOOR = 1e-10  # where an error of exactly 0 is drawn, so a log axis can show it
STYLES = {"none": ("o", "-"), "default": ("s", "--"), "reduce-overhead": ("^", "-."),
          "max-autotune": ("D", ":"), "max-autotune-no-cudagraphs": ("v", ":")}
FACET = ("device", "dtype", "mode")


@dataclass(frozen=True)
class Figure:
    path: Path  # the PNG written
    layer: str
    kind: str  # one of KINDS
    title: str
    caption: str  # what it shows and how to read it


@dataclass(frozen=True)
class _Layer:
    """One layer's rows and what all its figures share."""

    name: str
    rows: pd.DataFrame
    timed: pd.DataFrame  # measured rows (ok or incorrect, positive median)
    cases: list[str]  # smallest FLOPs first
    slopes: dict[tuple[str, ...], float]  # (impl, compile, device, dtype, mode) -> exponent
    meta: dict[str, Any]
    ops: pd.DataFrame  # this layer's ops.csv rows (empty when the run was not profiled)


@dataclass(frozen=True)
class Drawn:
    fig: Any  # matplotlib.figure.Figure
    title: str
    caption: str


def render(results: pd.DataFrame, meta: dict[str, Any], out_dir: Path,
           ops: pd.DataFrame | None = None) -> list[Figure]:
    """Write every figure ``results`` (and a profiled run's ``ops``) has data for under
    ``out_dir``; per layer in KINDS order, then the profile figures."""
    import seaborn as sns

    from reports.profile_plots import PROFILE_DRAWERS

    drawers = {**DRAWERS, **(PROFILE_DRAWERS if ops is not None and len(ops) else {})}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slopes = _slopes(results)
    figures = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        for name in pd.unique(results["layer"]):
            layer = _layer(results, str(name), meta, slopes, ops)
            for kind, draw in drawers.items():
                drawn = draw(layer)
                if drawn is None:
                    continue
                drawn.fig.suptitle(drawn.title, fontsize="large")
                path = out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', layer.name)}_{kind}.png"
                drawn.fig.savefig(path, dpi=DPI)
                figures.append(Figure(path, layer.name, kind, drawn.title, drawn.caption))
    return figures


def _slopes(results: pd.DataFrame) -> dict[tuple[str, ...], float]:
    exps = growth_exponents(results)
    keys = ["layer", "impl", "compile", "device", "dtype", "mode"]
    return {tuple(r[k] for k in keys): r["exponent"] for _, r in exps.iterrows()}


def _layer(results: pd.DataFrame, name: str, meta: dict[str, Any],
           slopes: dict[tuple[str, ...], float] | None = None,
           ops: pd.DataFrame | None = None) -> _Layer:
    rows = results[results["layer"] == name]
    size = rows.groupby("case", sort=False)["flops"].min()
    cases = list(size.sort_values(kind="stable", na_position="last").index)
    slopes = _slopes(results) if slopes is None else slopes
    own = {k[1:]: v for k, v in slopes.items() if k[0] == name}
    ops = ops[ops["layer"] == name] if ops is not None and len(ops) else pd.DataFrame(
        columns=["layer", "op"])
    return _Layer(name, rows, measured(rows), cases, own, meta, ops)


# -- shared pieces ---------------------------------------------------------------------------

def grid(n_rows: int, n_cols: int = 1, width: float = WIDTH_IN,
          sharex: bool = False) -> tuple[Any, np.ndarray]:
    """Facets stacked in rows; a shared x axis means rotated case labels under the last row."""
    from matplotlib.figure import Figure as MplFigure

    height = (3.0 if n_rows <= 4 else 2.4) * n_rows + 0.6 + (1.4 if sharex else 0.0)
    fig = MplFigure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(n_rows, n_cols, sharex=sharex, squeeze=False)


def facet_keys(frame: pd.DataFrame, keys: tuple[str, ...] = FACET) -> list[tuple[str, ...]]:
    return list(dict.fromkeys(frame[list(keys)].itertuples(index=False, name=None)))


def subset(frame: pd.DataFrame, keys: tuple[str, ...], values: tuple[str, ...]) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)
    for k, v in zip(keys, values, strict=True):
        keep &= (frame[k] == v).to_numpy()
    return frame[keep]


def variant_pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(impl, compile) pairs in legend order: impls as in the notes, eager before compiled."""
    modes = ["none", *[m for m in pd.unique(frame["compile"]) if m != "none"]]
    present = set(frame[["impl", "compile"]].itertuples(index=False, name=None))
    return [(i, m) for i in impl_order(frame["impl"]) for m in modes if (i, m) in present]


def _style(compile_mode: str) -> dict[str, Any]:
    marker, dashes = STYLES.get(compile_mode, ("P", (0, (3, 1, 1, 1))))
    return {"marker": marker, "linestyle": dashes, "markersize": 4.5, "linewidth": 1.4}


def _pick(frame: pd.DataFrame, impl: str, compile_mode: str) -> pd.DataFrame:
    return frame[(frame["impl"] == impl) & (frame["compile"] == compile_mode)]


def positive(values: Any) -> np.ndarray:
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
    return np.isfinite(v) & (v > 0)


def facet_title(ax: Any, values: tuple[str, ...]) -> None:
    ax.set_title(" · ".join(str(v) for v in values), fontsize="medium")


def setting(frame: pd.DataFrame) -> str:
    parts = [", ".join(map(str, pd.unique(frame[k]))) for k in ("device", "dtype")]
    return " / ".join(parts)


def case_axis(ax: Any, cases: list[str]) -> None:
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(cases) - 0.5)
    ax.set_xlabel("case (smallest FLOPs left)")


def _legend(ax: Any, n: int | None = None) -> None:
    n = len(ax.get_legend_handles_labels()[1]) if n is None else n
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small",
              ncol=1 if n <= 16 else 2)


def legend_handles(axes: np.ndarray) -> dict[str, Any]:
    """Label -> first artist with that label, over every axes (each label once)."""
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    return handles


def fig_legend(axes: np.ndarray) -> None:
    """One legend for all facets, right of the top-right axes (a figure legend would collide
    with the suptitle when it is tall)."""
    if handles := legend_handles(axes):
        axes[0, -1].legend(list(handles.values()), list(handles), loc="upper left",
                           bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small",
                           ncol=1 if len(handles) <= 16 else 2)


def lines(ax: Any, frame: pd.DataFrame, x: str, y: str, pos: dict[str, int] | None = None,
           label: Callable[[str, str], str] | None = None) -> None:
    """One line per variant of ``frame``: ``y`` against ``x`` (or case positions ``pos``)."""
    for impl, mode in variant_pairs(frame):
        g = _pick(frame, impl, mode)
        g = g[positive(g[y]) & (True if pos else positive(g[x]))]
        if g.empty:
            continue
        xs = g["case"].map(pos).to_numpy(float) if pos else g[x].to_numpy(float)
        order = np.argsort(xs, kind="stable")
        name = label(impl, mode) if label else variant(impl, mode)
        ax.plot(xs[order], g[y].to_numpy(float)[order], color=impl_color(impl), label=name,
                **_style(mode))


def positions(cases: list[str], frame: pd.DataFrame) -> tuple[list[str], dict[str, int]]:
    shown = [c for c in cases if c in set(frame["case"])]
    return shown, {c: i for i, c in enumerate(shown)}


# -- the figures -----------------------------------------------------------------------------

def _latency(layer: _Layer) -> Drawn | None:
    timed = layer.timed[positive(layer.timed["flops"])]
    predicted = _predicted(layer.rows)
    if timed.empty:
        return None
    facets = facet_keys(pd.concat([timed, predicted]))
    fig, axes = grid(len(facets))
    for ax, facet in zip(axes[:, 0], facets, strict=True):
        sub = subset(timed, FACET, facet)

        def label(impl: str, mode: str, facet: tuple[str, ...] = facet) -> str:
            slope = layer.slopes.get((impl, mode, *facet))
            return variant(impl, mode) + ("" if slope is None else f" (slope {slope:.2f})")

        lines(ax, sub, "flops", "median_ms", label=label)
        for impl, mode in variant_pairs(sub):  # the IQR as a bar around each median
            g = _pick(sub, impl, mode)
            med, half = g["median_ms"].to_numpy(float), g["iqr_ms"].to_numpy(float) / 2
            half = np.where(np.isfinite(half), half, 0.0)
            ax.vlines(g["flops"], med - np.minimum(half, 0.9 * med), med + half,
                      color=impl_color(impl), alpha=0.35, linewidth=2.5)
        pred = subset(predicted, FACET, facet)
        for impl, mode in variant_pairs(pred):
            g = _pick(pred, impl, mode)
            ax.scatter(g["flops"], g["predicted_ms"], s=40, facecolors="none",
                       edgecolors=impl_color(impl), linewidths=1.3, marker=_style(mode)["marker"],
                       label=f"{variant(impl, mode)} predicted (skipped)")
        ax.set(xscale="log", yscale="log", xlabel="FLOPs per call",
               ylabel="median time per call (ms)")
        facet_title(ax, facet)
        _legend(ax)
    caption = ("Median time per call against the FLOPs of the call, both on log scales; one line "
               "per implementation (marker and dashes show the compile mode), vertical bars span "
               "the interquartile range. The legend's slope is the growth exponent: 1 means time "
               "grows with the work, well below 1 means fixed overheads dominate these sizes.")
    if not predicted.empty:
        caption += (" Hollow markers are naive-loop cases skipped by the time budget, drawn at "
                    "their predicted time per call.")
    return Drawn(fig, f"{layer.name}: latency vs FLOPs ({setting(timed)})", caption)


def _predicted(rows: pd.DataFrame) -> pd.DataFrame:
    """Skipped naive-loop rows with a per-call prediction, in ``predicted_ms``."""
    skipped = rows[(rows["status"] == "skipped") & positive(rows["predicted_call_s"])]
    return skipped.assign(predicted_ms=skipped["predicted_call_s"] * 1e3)


def _speedup(layer: _Layer) -> Drawn | None:
    t = layer.timed
    data = t[positive(t["speedup_vs_builtin"])
             & ~((t["impl"] == "builtin") & (t["compile"] == "none"))]
    if data.empty:
        return None
    cases, pos = positions(layer.cases, data)
    facets = facet_keys(data)
    fig, axes = grid(len(facets), sharex=True)
    for ax, facet in zip(axes[:, 0], facets, strict=True):
        lines(ax, subset(data, FACET, facet), "case", "speedup_vs_builtin", pos=pos)
        ax.axhline(1.0, color="0.2", linestyle=":", linewidth=1.2, label="builtin (eager) = 1")
        ax.set(yscale="log", ylabel="speedup vs builtin (x)")
        facet_title(ax, facet)
    case_axis(axes[-1, 0], cases)
    fig_legend(axes)
    caption = ("Builtin median time divided by this implementation's, per size, on a log scale: "
               "above the dotted line at 1 is faster than the eager builtin, below is slower "
               "(0.1 = ten times slower).")
    return Drawn(fig, f"{layer.name}: speedup vs builtin ({setting(data)})", caption)


def _peak_key(device: str, dtype: str, table: dict[str, Any], meta: dict[str, Any]) -> str:
    """The runner's rule (``peak_key``), falling back to float32 if tf32 was not calibrated."""
    key = peak_key(dtype, device, (meta.get("machine") or {}).get("tf32") or {})
    return key if key in table else dtype


def _roofline(layer: _Layer) -> Drawn | None:
    calibration = layer.meta.get("calibration") or {}
    t = layer.timed
    data = t[positive(t["gflops"]) & positive(t["flops"]) & positive(t["bytes"])
             & t["device"].isin(list(calibration))]
    if data.empty:
        return None
    data = data.assign(intensity=data["flops"] / data["bytes"])
    facets = facet_keys(data)
    fig, axes = grid(len(facets))
    for ax, (device, dtype, mode) in zip(axes[:, 0], facets, strict=True):
        sub = subset(data, FACET, (device, dtype, mode))
        for impl, compile_mode in variant_pairs(sub):
            g = _pick(sub, impl, compile_mode)
            ax.scatter(g["intensity"], g["gflops"], color=impl_color(impl), s=26,
                       marker=_style(compile_mode)["marker"], label=variant(impl, compile_mode))
        _ceiling(ax, calibration[device], device, dtype, layer.meta, sub["intensity"])
        ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs per byte)",
               ylabel="achieved GFLOP/s")
        facet_title(ax, (device, dtype, mode))
    fig_legend(axes)
    caption = ("Achieved GFLOP/s against arithmetic intensity (FLOPs per byte moved), both on log "
               "scales. The grey line is the attainable ceiling, min(peak matmul GFLOP/s, "
               "intensity x copy GB/s), from this machine's calibration: points under its slope "
               "are memory-bound, under its flat part compute-bound; the gap is headroom.")
    return Drawn(fig, f"{layer.name}: roofline ({setting(data)})", caption)


def _ceiling(ax: Any, ceilings: dict[str, Any], device: str, dtype: str, meta: dict[str, Any],
             intensity: pd.Series) -> None:
    table = ceilings.get("matmul_gflops") or {}
    key = _peak_key(device, dtype, table, meta)
    peak, bandwidth = table.get(key), ceilings.get("copy_gbps")
    if not peak or not bandwidth:
        ax.text(0.02, 0.95, f"no calibrated ceiling for {key}", transform=ax.transAxes,
                fontsize="small", va="top")
        return
    ridge = peak / bandwidth  # FLOPs per byte where memory stops being the limit
    lo = min(float(intensity.min()) / 2, ridge / 4)
    hi = max(float(intensity.max()) * 2, ridge * 4)
    xs = np.geomspace(lo, hi, 200)
    ax.plot(xs, np.minimum(peak, xs * bandwidth), color="0.45", linewidth=1.6)
    ax.annotate(f"{key} peak {peak:,.0f} GFLOP/s", (hi, peak), ha="right", va="bottom",
                fontsize="x-small", color="0.3")
    ax.annotate(f"copy {bandwidth:,.1f} GB/s", (lo, lo * bandwidth), ha="left", va="bottom",
                fontsize="x-small", color="0.3", rotation=20)


def _correctness(layer: _Layer) -> Drawn | None:
    rows = layer.rows.copy()
    grad = rows["grad_rel_err"] if "grad_rel_err" in rows else pd.Series(np.nan, rows.index)
    has_err = np.isfinite(rows["rel_err"].to_numpy(float)) | np.isfinite(grad.to_numpy(float))
    errs = rows[has_err]
    statuses = (rows["status"] != "ok").any()
    if errs.empty and not statuses:
        return None
    facets = facet_keys(errs)
    fig, axes = grid(len(facets) + int(statuses))
    for ax, facet in zip(axes[: len(facets), 0], facets, strict=True):
        _errors(ax, subset(errs, FACET, facet), grad)
        facet_title(ax, facet)
    if statuses:
        _status(axes[-1, 0], rows)
    fig_legend(axes[: len(facets)])
    caption = ("Relative error of the output (circles) and of the gradients (triangles) against "
               "the reference, one point per case, log scale; the dashed line is the dtype's rtol "
               "and red rings mark cases outside tolerance. Errors of exactly 0 are drawn at "
               f"{ERR_FLOOR:g} so the log axis can show them.")
    if statuses:
        caption += " The last panel counts the cases of each status per implementation."
    return Drawn(fig, f"{layer.name}: correctness ({setting(rows)})", caption)


def _errors(ax: Any, sub: pd.DataFrame, grad: pd.Series) -> None:
    variants = variant_pairs(sub)
    for i, (impl, mode) in enumerate(variants):
        g = _pick(sub, impl, mode)
        jitter = np.linspace(-0.08, 0.08, len(g)) if len(g) > 1 else np.zeros(1)
        bad = (g["status"] == "incorrect").to_numpy()
        for offset, values, marker, what in ((-0.15, g["rel_err"], "o", "output"),
                                             (0.15, grad.loc[g.index], "^", "gradient")):
            y = values.to_numpy(float)
            shown = np.isfinite(y)
            if not shown.any():
                continue
            y, x = np.maximum(y, ERR_FLOOR), i + offset + jitter
            ax.scatter(x[shown], y[shown], s=22, marker=marker, color=impl_color(impl), alpha=0.8)
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


def _status(ax: Any, rows: pd.DataFrame) -> None:
    """Stacked bars: how many cases of each variant ended in each status (all settings)."""
    variants = variant_pairs(rows)
    bottom = np.zeros(len(variants))
    for status, color in STATUS_COLORS.items():
        counts = np.array([int((_pick(rows, i, m)["status"] == status).sum())
                           for i, m in variants])
        if counts.any():
            ax.bar(range(len(variants)), counts, bottom=bottom, color=color, label=status)
            bottom += counts
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([variant(*v) for v in variants], rotation=30, ha="right")
    ax.set(ylabel="cases", title="case status (all settings)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    _legend(ax)


def _compile(layer: _Layer) -> Drawn | None:
    t = layer.timed
    compiled = t[t["compile"] != "none"]
    if compiled.empty:
        return None
    data = t[t["impl"].isin(set(compiled["impl"]))]
    cases, pos = positions(layer.cases, compiled)
    data = data[data["case"].isin(pos)]
    facets = facet_keys(compiled)
    fig, axes = grid(len(facets), 2, width=WIDTH_IN * 1.5, sharex=True)
    for (left, right), facet in zip(axes, facets, strict=True):
        lines(left, subset(data, FACET, facet), "case", "median_ms", pos=pos)
        lines(right, subset(compiled, FACET, facet), "case", "compile_s", pos=pos)
        left.set(yscale="log", ylabel="median time per call (ms)")
        right.set(yscale="log", ylabel="compile time (s)")
        facet_title(left, facet)
        facet_title(right, facet)
    case_axis(axes[-1, 0], cases)
    case_axis(axes[-1, 1], cases)
    fig_legend(axes)
    caption = ("Left: median time per call, eager (solid, circles) against torch.compile (other "
               "dashes and markers) per implementation and size; right: compile time, the first "
               "call's duration minus one call, in seconds. Compiling pays off once the time saved "
               "per call times the number of calls exceeds the compile time.")
    return Drawn(fig, f"{layer.name}: torch.compile ({setting(compiled)})", caption)


def _backward(layer: _Layer) -> Drawn | None:
    t = layer.timed
    on = ["impl", "compile", "device", "dtype", "case"]
    pairs = t[t["mode"] == "fwd"].merge(t[t["mode"] == "fwdbwd"], on=on, suffixes=("", "_bwd"))
    if pairs.empty:
        return None
    pairs = pairs.assign(ratio=pairs["median_ms_bwd"] / pairs["median_ms"])
    cases, pos = positions(layer.cases, pairs)
    facets = facet_keys(pairs, ("device", "dtype"))
    fig, axes = grid(len(facets), sharex=True)
    for ax, facet in zip(axes[:, 0], facets, strict=True):
        lines(ax, subset(pairs, ("device", "dtype"), facet), "case", "ratio", pos=pos)
        ax.axhline(3.0, color="0.2", linestyle=":", linewidth=1.2, label="3x (GEMM-like)")
        ratio = pairs["ratio"][positive(pairs["ratio"])]
        if len(ratio) and ratio.max() / ratio.min() > 10:
            ax.set_yscale("log")
        ax.set(ylabel="fwd+bwd time / fwd time")
        facet_title(ax, facet)
    case_axis(axes[-1, 0], cases)
    fig_legend(axes)
    caption = ("Median time of forward + backward divided by forward alone, per size: the cost of "
               "the backward pass. A GEMM-like layer costs about 3x (one GEMM forward, two "
               "backward), the dotted line; far above it points at a slow or recomputing "
               "backward.")
    return Drawn(fig, f"{layer.name}: backward cost ({setting(pairs)})", caption)


DRAWERS: dict[str, Callable[[_Layer], Drawn | None]] = {
    "latency": _latency, "speedup": _speedup, "roofline": _roofline,
    "correctness": _correctness, "compile": _compile, "backward": _backward,
}

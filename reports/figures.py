"""What every figure shares: the data of one layer, the facet grid, lines, legends, styles.

``reports.plots`` (speed and correctness) and ``reports.profile_plots`` (where the time goes)
draw on these; matplotlib is imported only when a figure is drawn. An implementation keeps its
colour in every figure of a run (``LayerData.palette``, from the run's implementation order);
the compile mode sets marker and dashes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.analysis import growth_exponents, measured
from reports.style import Palette, variant

DPI = 110
WIDTH_IN = 8.0
STYLES = {"none": ("o", "-"), "default": ("s", "--"), "reduce-overhead": ("^", "-."),
          "max-autotune": ("D", ":"), "max-autotune-no-cudagraphs": ("v", ":")}
FACET = ("device", "dtype", "mode")


@dataclass(frozen=True)
class Figure:
    path: Path  # the PNG written
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


@dataclass(frozen=True)
class Drawn:
    fig: Any  # matplotlib.figure.Figure
    title: str
    caption: str


def slopes_of(results: pd.DataFrame) -> dict[tuple[str, ...], float]:
    """(layer, impl, compile, device, dtype, mode) -> growth exponent."""
    exps = growth_exponents(results)
    keys = ["layer", "impl", "compile", "device", "dtype", "mode"]
    return {tuple(r[k] for k in keys): r["exponent"] for _, r in exps.iterrows()}


def layer_data(results: pd.DataFrame, name: str, meta: dict[str, Any], palette: Palette,
               slopes: dict[tuple[str, ...], float] | None = None,
               ops: pd.DataFrame | None = None) -> LayerData:
    """What the figures of layer ``name`` draw from (``slopes``: of the whole run, if known)."""
    rows = results[results["layer"] == name]
    size = rows.groupby("case", sort=False)["flops"].min()
    cases = list(size.sort_values(kind="stable", na_position="last").index)
    slopes = slopes_of(results) if slopes is None else slopes
    own = {k[1:]: v for k, v in slopes.items() if k[0] == name}
    ops = ops[ops["layer"] == name] if ops is not None and len(ops) else pd.DataFrame(
        columns=["layer", "op"])
    return LayerData(name, rows, measured(rows), cases, own, meta, ops, palette)


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


def case_axis(ax: Any, cases: list[str]) -> None:
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(cases) - 0.5)
    ax.set_xlabel("case (smallest FLOPs left)")


def legend(ax: Any, n: int | None = None) -> None:
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


def lines(ax: Any, frame: pd.DataFrame, x: str, y: str, palette: Palette,
          pos: dict[str, int] | None = None,
          label: Callable[[str, str], str] | None = None) -> None:
    """One line per variant of ``frame``: ``y`` against ``x`` (or case positions ``pos``)."""
    for impl, mode in variant_pairs(frame, palette):
        g = pick(frame, impl, mode)
        g = g[positive(g[y]) & (True if pos else positive(g[x]))]
        if g.empty:
            continue
        xs = g["case"].map(pos).to_numpy(float) if pos else g[x].to_numpy(float)
        order = np.argsort(xs, kind="stable")
        name = label(impl, mode) if label else variant(impl, mode)
        ax.plot(xs[order], g[y].to_numpy(float)[order], color=palette.color(impl), label=name,
                **style(mode))


def positions(cases: list[str], frame: pd.DataFrame) -> tuple[list[str], dict[str, int]]:
    shown = [c for c in cases if c in set(frame["case"])]
    return shown, {c: i for i, c in enumerate(shown)}

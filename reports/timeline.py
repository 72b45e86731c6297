"""The timeline of one profiled call: its operators as a Gantt chart, one lane per nesting depth.

Spans are the trace's complete events (``name``, ``track``, ``start_us``, ``dur_us``): a track is
a CPU thread (``cpu:<tid>``) or a device stream (``cuda0:<stream>``; ``gpu0:<stream>`` read
from a trace); ``ProfilerStep#N`` spans delimit the recorded calls. ``first_step`` keeps the
operators of the first recorded call, with times from its start; ``draw_timeline`` draws them.

A five-loop conv's call holds hundreds of thousands of operators of a few microseconds each, so
the chart draws a span two pixels wide or more as a bar of its own, and the narrower ones of a
lane by slices of a few pixels: each slice stacks the operators that start in it by the share
of its time they fill (full height: operators back to back). A few thousand rectangles at
most, whatever the count, and the mix shows (select 50%, mul 25%, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

STEP_PREFIX = "ProfilerStep"
SPAN_COLUMNS = ("name", "track", "start_us", "dur_us")
#: device-side event categories of a Chrome trace (the rest ran on a CPU thread)
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
MAX_DEPTH = 6  # CPU nesting levels drawn per thread (deeper spans sit inside these)
TOP_COLORED = 9  # operators with a colour of their own; the rest grey
LABELLED = 12  # longest spans named on their bar (where the name fits)
OTHER, OTHER_COLOR = "other operators", "#b4b4b4"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#bcbd22", "#17becf")
SLICE_PX = 4  # operators narrower than two pixels are drawn by slices of this many pixels
WIDTH_IN, DPI = 11.0, 100


def spans_from_trace(path: Path) -> pd.DataFrame:
    """Every complete event (``"ph": "X"``) of a Chrome trace as spans (``SPAN_COLUMNS``).

    Parsing takes ~70 ms a MB on a 2-core machine (a five-loop conv's trace of 190,000
    operators: 88 MB, 6 s, 580 MB of memory);
    ``bench --profile`` and ``profile`` save the spans of the first call next to it instead.
    """
    events = json.loads(path.read_bytes()).get("traceEvents", [])
    rows = [(e.get("name", ""), _track(e), float(e["ts"]), float(e["dur"])) for e in events
            if e.get("ph") == "X" and "ts" in e and "dur" in e and e.get("cat") != "Trace"]
    return pd.DataFrame(rows, columns=list(SPAN_COLUMNS))


def _track(event: dict[str, Any]) -> str:
    if event.get("cat") in DEVICE_CATEGORIES:
        return f"gpu{event.get('pid')}:{event.get('tid')}"
    return f"cpu:{event.get('tid')}"


def step_ms(spans: pd.DataFrame) -> list[float]:
    """Wall time of each recorded call (its ``ProfilerStep`` span), in ms, in order."""
    steps = spans[spans["name"].str.startswith(STEP_PREFIX)].sort_values("start_us")
    return [float(d) / 1e3 for d in steps["dur_us"]]


def first_step(spans: pd.DataFrame) -> pd.DataFrame:
    """The spans of the first recorded call, ``start_us`` from its start; empty without one.

    CPU spans are those inside its ``ProfilerStep``; device spans (kernels run after their
    launch) those starting before the next call starts.
    """
    is_step = spans["name"].str.startswith(STEP_PREFIX)
    steps = spans[is_step].sort_values("start_us")
    if steps.empty:
        return pd.DataFrame(columns=list(SPAN_COLUMNS))
    start = float(steps["start_us"].iloc[0])
    end = start + float(steps["dur_us"].iloc[0])
    following = float(steps["start_us"].iloc[1]) if len(steps) > 1 else np.inf
    ops = spans[~is_step]
    on_cpu = ops["track"].str.startswith("cpu:")
    inside = np.where(on_cpu, (ops["start_us"] >= start) & (ops["start_us"] <= end),
                      (ops["start_us"] >= start) & (ops["start_us"] < following))
    found = ops[inside].assign(start_us=lambda f: f["start_us"] - start)
    return found.sort_values("start_us", kind="stable").reset_index(drop=True)


def nesting(spans: pd.DataFrame) -> np.ndarray:
    """Each span's depth in its track: how many spans of the track enclose it."""
    depth = np.zeros(len(spans), dtype=int)
    starts = spans["start_us"].to_numpy(float)
    ends = starts + spans["dur_us"].to_numpy(float)
    for _, index in spans.groupby("track", sort=False).indices.items():
        order = index[np.lexsort((-(ends[index] - starts[index]), starts[index]))]
        stack: list[float] = []
        for i in order:
            while stack and stack[-1] <= starts[i]:
                stack.pop()
            depth[i] = len(stack)
            stack.append(ends[i])
    return depth


def lanes(spans: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``spans`` with a ``lane`` number (track by track, depth by depth; CPU first) and the
    lanes' labels; spans deeper than ``MAX_DEPTH`` dropped."""
    spans = spans.assign(depth=nesting(spans))
    spans = spans[spans["depth"] < MAX_DEPTH]
    tracks = sorted(pd.unique(spans["track"]), key=lambda t: (not t.startswith("cpu:"), t))
    cpu_tracks = sum(t.startswith("cpu:") for t in tracks)
    labels, number = [], {}
    for track in tracks:
        depths = sorted(pd.unique(spans.loc[spans["track"] == track, "depth"]))
        for depth in depths:
            number[(track, depth)] = len(labels)
            labels.append(_lane_label(track, int(depth), cpu_tracks > 1))
    lane = [number[key] for key in zip(spans["track"], spans["depth"], strict=True)]
    return spans.assign(lane=lane), labels


def _lane_label(track: str, depth: int, several_threads: bool) -> str:
    kind, _, where = track.partition(":")
    if kind == "cpu":
        thread = f" thread {where}" if several_threads else ""
        return f"CPU{thread} " + ("top level" if depth == 0 else f"depth {depth}")
    return f"{kind} stream {where}" + (f" depth {depth}" if depth else "")


def draw_timeline(spans: pd.DataFrame, title: str, path: Path,
                  call_ms: float | None = None) -> Path | None:
    """A Gantt chart of one call's ``spans`` (``first_step``) at ``path`` (PNG), over the
    call's ``call_ms`` where known; None when there is nothing to draw."""
    if spans.empty:
        return None
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    placed, labels = lanes(spans)
    end_ms = max(float((placed["start_us"] + placed["dur_us"]).max()) / 1e3, call_ms or 0.0)
    pixel_ms = end_ms / (WIDTH_IN * DPI * 0.8)
    totals = placed.groupby("name")["dur_us"].sum().sort_values(ascending=False)
    colors = dict(zip(totals.index[:TOP_COLORED], PALETTE, strict=False))
    fig = Figure(figsize=(WIDTH_IN, 0.42 * len(labels) + 2.0), layout="constrained")
    ax = fig.subplots()
    for lane, mine in placed.groupby("lane"):
        named = mine.assign(name=mine["name"].where(mine["name"].isin(colors), OTHER))
        _draw_lane(ax, named, int(lane), {**colors, OTHER: OTHER_COLOR}, pixel_ms)
    _label_longest(ax, placed, pixel_ms)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(0, end_ms)
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.set_xlabel("ms from the start of the call")
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.6)
    ax.set_axisbelow(True)
    handles = [Patch(color=c, label=n) for n, c in colors.items()]
    if len(totals) > len(colors):
        handles.append(Patch(color=OTHER_COLOR, label=OTHER))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4),
               frameon=False, fontsize=7.5)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _draw_lane(ax: Any, lane: pd.DataFrame, y: int, colors: dict[str, str],
               pixel_ms: float) -> None:
    """One lane: spans two pixels wide or more as bars; the narrower ones by slices of
    ``SLICE_PX`` pixels, each stacking its operators by the share of the slice they fill."""
    start = lane["start_us"].to_numpy(float) / 1e3
    width = lane["dur_us"].to_numpy(float) / 1e3
    names = lane["name"].to_numpy(object)
    wide = width >= 2 * pixel_ms
    top, bottom = y - 0.4, y + 0.4  # the y axis points down
    _rectangles(ax, start[wide], start[wide] + width[wide], np.full(wide.sum(), top),
                np.full(wide.sum(), bottom), [colors[n] for n in names[wide]])
    if wide.all():
        return
    slice_ms = SLICE_PX * pixel_ms
    share = (pd.DataFrame({"slice": (start[~wide] // slice_ms).astype(int),
                           "name": names[~wide], "busy": width[~wide] / slice_ms})
             .groupby(["slice", "name"])["busy"].sum().unstack(fill_value=0.0))
    share = share.div(np.maximum(share.sum(axis=1), 1.0), axis=0)  # a span counts where it starts
    share = share[[n for n in colors if n in share.columns]]
    left = share.index.to_numpy(float) * slice_ms
    level = np.full(len(share), bottom)
    for name in share.columns:
        height = 0.8 * share[name].to_numpy(float)
        drawn = height > 0
        _rectangles(ax, left[drawn], left[drawn] + slice_ms, level[drawn] - height[drawn],
                    level[drawn], [colors[name]] * int(drawn.sum()))
        level -= height


def _rectangles(ax: Any, x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray,
                colors: list[str]) -> None:
    """Axis-aligned rectangles in one collection (thousands draw in milliseconds)."""
    if not len(x0):
        return
    from matplotlib.collections import PolyCollection

    corners = np.stack([np.stack([x0, y0], 1), np.stack([x0, y1], 1), np.stack([x1, y1], 1),
                        np.stack([x1, y0], 1)], 1)  # (n, 4, 2)
    ax.add_collection(PolyCollection(corners, facecolors=colors, linewidths=0))


def _label_longest(ax: Any, placed: pd.DataFrame, pixel_ms: float) -> None:
    """The names of the longest spans, on their bars where they fit."""
    for _, span in placed.nlargest(LABELLED, "dur_us").iterrows():
        width_ms = span["dur_us"] / 1e3
        name = str(span["name"]).removeprefix("aten::")
        if width_ms < 7 * pixel_ms * len(name):  # ~7 pixels a character at this size
            continue
        ax.text(span["start_us"] / 1e3 + width_ms / 2, span["lane"], name, ha="center",
                va="center", fontsize=7, color="white", clip_on=True)

"""The offline profile page of a case: its per-call times, where the time goes, memory over a call,
the timeline of one call and the operator table, in one HTML file that needs no network.

TensorBoard's profiler views and Perfetto's UI load their code online; this page embeds its
figures as data URIs and references nothing outside itself. ``profile`` writes it as
``profile.html`` in its run directory; ``write_run_pages`` writes one per case of a
``bench --profile`` run as ``profile/<trace_name>/index.html``, from the files the profiling
pass saved next to each case's trace (``write_case_files``):

- ``steps.json``: the wall time of each recorded call (``step_ms``), the operators launched and
  the peak memory per call, the profiler's schedule;
- ``memory.csv``: bytes held over the first recorded call (``ms``, ``bytes_held``);
- ``timeline.csv``: the first recorded call's spans (``reports.timeline``), which ``trace.json``
  also holds but takes seconds to parse for a five-loop conv.

A run without them (an older layerbench) gets its times and timeline from ``trace.json`` and a
page without the memory figure, saying why.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from reports import html
from reports.analysis import event_kinds, self_time_column, timed_ops
from reports.columns import Col, plain, present, size_bytes, time_ms, time_unit
from reports.schema import KEY_COLUMNS, PROFILE_DIR, load_ops, trace_name
from reports.style import variant
from reports.timeline import SPAN_COLUMNS, draw_timeline, first_step, spans_from_trace, step_ms

STEPS_FILE, MEMORY_FILE, SPANS_FILE = "steps.json", "memory.csv", "timeline.csv"
TRACE_FILE, PAGE_FILE, TIMELINE_FIGURE = "trace.json", "index.html", "timeline.png"
#: recorded calls this many times apart are worth a look at the trace
SPREAD_NOTE = 1.5
ONLINE_NOTE = ("TensorBoard's profiler views and Perfetto's UI (ui.perfetto.dev) need internet "
               "access: they load their code online, and offline they stay on a spinner. This "
               "page does not.")


def write_case_files(case_dir: Path, step_times_ms: Sequence[float],
                     memory: Sequence[tuple[float, float]], spans: pd.DataFrame,
                     summary: Mapping[str, Any]) -> None:
    """What a case's page needs besides its trace and ``ops.csv``: ``steps.json`` (the calls'
    wall times in ms and ``summary``), ``memory.csv`` and ``timeline.csv`` (see the module)."""
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / STEPS_FILE).write_text(
        json.dumps({"step_ms": list(step_times_ms), **summary}, indent=1) + "\n",
        encoding="utf-8")
    pd.DataFrame(list(memory), columns=["ms", "bytes_held"]).to_csv(case_dir / MEMORY_FILE,
                                                                    index=False)
    spans[list(SPAN_COLUMNS)].to_csv(case_dir / SPANS_FILE, index=False, float_format="%.3f")


@dataclass
class CaseFiles:
    """A case's saved profile, as far as its directory has it (``notes``: what is missing)."""

    step_ms: list[float] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    memory: list[tuple[float, float]] | None = None
    spans: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


def read_case_files(case_dir: Path) -> CaseFiles:
    """The saved files of ``case_dir``; what an older run lacks comes from ``trace.json``."""
    found = CaseFiles()
    if (case_dir / STEPS_FILE).exists():
        found.summary = json.loads((case_dir / STEPS_FILE).read_text(encoding="utf-8"))
        found.step_ms = [float(t) for t in found.summary.pop("step_ms", [])]
    if (case_dir / MEMORY_FILE).exists():
        memory = pd.read_csv(case_dir / MEMORY_FILE)
        found.memory = list(zip(memory["ms"], memory["bytes_held"], strict=True))
    else:
        found.notes.append(f"No memory timeline: this case has no {MEMORY_FILE} (profiled by an "
                           "older layerbench, which kept only the peak).")
    if (case_dir / SPANS_FILE).exists():
        found.spans = pd.read_csv(case_dir / SPANS_FILE, dtype={"name": str, "track": str},
                                  keep_default_na=False)
    elif (case_dir / TRACE_FILE).exists():
        every = spans_from_trace(case_dir / TRACE_FILE)
        found.spans = first_step(every)
        found.step_ms = found.step_ms or step_ms(every)
    else:
        found.notes.append(f"No timeline: this case has no {TRACE_FILE}.")
    return found


def case_page(case_dir: Path, ops: pd.DataFrame, out: Path,
              tensorboard_dir: Path | None = None) -> Path:
    """Write the page of the case whose ``ops.csv`` rows are ``ops`` and whose profile files
    are in ``case_dir`` (figures drawn there too) at ``out``; returns ``out``."""
    from reports.profile_plots import case_figures

    key = dict(zip(KEY_COLUMNS, ops[list(KEY_COLUMNS)].iloc[0], strict=True))
    profiled = str(ops["profiled_case"].iloc[0])
    title = (f"{key['layer']}/{variant(key['impl'], key['compile'])} {profiled} "
             f"({key['device']} {key['dtype']} {key['mode']})")
    files = read_case_files(case_dir)
    failed = ops["op"].astype(str).str.startswith("<").all()
    parts = [html.definitions(_facts(key, profiled, files, ops))]
    if failed:
        note = " ".join(str(n) for n in ops["note"].dropna())
        parts.append(f'<p class="warning">The profiler failed on this case: {html.esc(note)}</p>')
    else:
        # the rows the case's total is made of: on a GPU its kernels, each once
        figures = case_figures(timed_ops(ops), files.memory or [], title, case_dir)
        timeline = None
        if files.spans is not None:
            timeline = draw_timeline(files.spans, f"{title}: the first recorded call",
                                     case_dir / TIMELINE_FIGURE,
                                     files.step_ms[0] if files.step_ms else None)
        parts += _figures(figures, timeline, files)
        table = ops_frame(ops)
        parts += ["<h2>Operators</h2>",
                  html.table(table, present(table, OPS_TABLE), scroll=True, sortable=True),
                  '<p class="note">Per call of the case (averaged over the recorded calls): '
                  "self time is spent in the operator itself, total time includes the operators "
                  "it calls; self memory is what it allocates less what it frees."
                  f"{DEVICE_NOTE if 'device_type' in table.columns else ''}</p>"]
    parts += ["<h2>Files</h2>", html.definitions(_file_rows(case_dir, out, tensorboard_dir)),
              f'<p class="note">{html.esc(ONLINE_NOTE)}</p>']
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html.page(f"Profile: {title}", "\n".join(parts)), encoding="utf-8")
    return out


def _facts(key: Mapping[str, str], profiled: str, files: CaseFiles,
           ops: pd.DataFrame) -> list[tuple[str, str]]:
    rows = [("layer / implementation", f"{key['layer']} / {key['impl']}"),
            ("size", profiled if profiled == key["case"]
             else f"{profiled} (profiled in place of the run's {key['case']})"),
            ("device, dtype, mode", f"{key['device']}, {key['dtype']}, {key['mode']}"),
            ("torch.compile", key["compile"])]
    if files.step_ms:
        rows.append(("wall time under the profiler", per_call_text(files.step_ms)))
    summary = files.summary
    if _finite(summary.get("op_calls")):
        rows.append(("operators launched per call", f"{summary['op_calls']:,.0f}"))
    if _finite(summary.get("peak_mem_bytes")):
        rows.append(("peak memory beyond the inputs", size_bytes(summary["peak_mem_bytes"])))
    self_us = pd.to_numeric(ops["self_cpu_us"], errors="coerce").sum()
    if self_us > 0:
        rows.append(("CPU self time per call", time_ms(self_us / 1e3)))
    if self_time_column(ops) == "self_device_us":  # the report's "under the profiler"
        rows.append(("GPU time per call", time_ms(timed_ops(ops)["us"].sum() / 1e3)))
    if schedule := summary.get("schedule"):
        rows.append(("profiler schedule", ", ".join(f"{k} {v}" for k, v in schedule.items())))
    return rows


FIGURE_TEXT = {
    "breakdown": ("Where the time goes", "Self time per operator (on a GPU: per kernel) per "
                  "call in ms, with its share of the case's total; calls per call in brackets."),
    "memory": ("Memory over one call", "Bytes the call holds beyond what existed before it, "
               "from the profiler's allocation events."),
}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _figures(figures: Sequence[Path], timeline: Path | None, files: CaseFiles) -> list[str]:
    parts = []
    for path in figures:
        heading, caption = FIGURE_TEXT.get(path.stem, (path.stem, ""))
        parts += [f"<h2>{html.esc(heading)}</h2>", html.figure(path, caption)]
    if timeline is not None:
        parts += ["<h2>Timeline of one call</h2>",
                  html.figure(timeline, "The operators of the first recorded call, one lane "
                              "per nesting depth (top level: what the implementation calls "
                              "directly), the longest named. Operators under two pixels wide "
                              "are drawn by slices of a few pixels, stacked by the share of the "
                              "slice each fills (full height: back to back); white is time "
                              "between operators (Python, the profiler).")]
    elif files.spans is not None:
        files.notes.append("No timeline: the trace holds no recorded call.")
    return [*parts, *(f'<p class="note">{html.esc(n)}</p>' for n in files.notes)]


def _file_rows(case_dir: Path, out: Path,
               tensorboard_dir: Path | None) -> list[tuple[str, str]]:
    rows = []
    for name, what in ((TRACE_FILE, "Chrome trace: Perfetto (online), chrome://tracing"),
                       ("ops.csv", "every operator, per call"), (STEPS_FILE, "per-call times"),
                       (MEMORY_FILE, "memory over one call"),
                       (SPANS_FILE, "the first call's operators, for the timeline")):
        if (case_dir / name).exists():
            rows.append((name, f"{_relative(case_dir / name, out.parent)}: {what}"))
    if tensorboard_dir is not None:
        rows.append(("TensorBoard (online)", f"tensorboard --logdir {tensorboard_dir}"))
    return rows


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.relative_to(start))
    except ValueError:
        return str(path)


def write_run_pages(run_dir: Path) -> dict[tuple[str, ...], Path]:
    """The page of every profiled case of a ``bench --profile`` run, at
    ``profile/<trace_name>/index.html``; key (``KEY_COLUMNS`` order) -> page."""
    ops = load_ops(run_dir)
    pages: dict[tuple[str, ...], Path] = {}
    for key, rows in ops.groupby(list(KEY_COLUMNS), sort=False):
        case_dir = Path(run_dir) / PROFILE_DIR / trace_name(key)
        pages[tuple(key)] = case_page(case_dir, rows, case_dir / PAGE_FILE,
                                      tensorboard_dir=Path(run_dir) / PROFILE_DIR)
    return pages


#: the operator table of a page: per call of the case, averaged over the recorded calls
OPS_TABLE = (
    Col("op", "operator"), Col("calls", "calls", "int", "calls per call of the case"),
    Col("self_cpu_ms", "self CPU", "ms", "time in the operator itself, not in those it calls"),
    Col("self_share", "of the self time", "pct"),
    Col("cpu_total_ms", "CPU total", "ms", "time in the operator and those it calls"),
    Col("self_device_ms", "self device", "ms", "kernel time the operator launched itself"),
    Col("device_total_ms", "device total", "ms"),
    Col("self_cpu_mem_bytes", "self memory", "bytes", "what it allocates less what it frees"),
    Col("device_type", "on", tip="cpu: an operator, whose self device time is the kernels it "
        "launched; cuda: one of those kernels (or a copy), in its own row"),
)
#: why the table lists every kernel's time twice, and which rows make the total
DEVICE_NOTE = (" On the GPU each kernel (on cuda) is also in the self device time of the operator "
               "that launched it (on cpu): the case's GPU time is the sum over the kernels.")


def ops_frame(ops: pd.DataFrame) -> pd.DataFrame:
    """The rows of a page's operator table (``OPS_TABLE``'s columns: times in ms, the self
    time's share, device times and each row's kind only where the case ran kernels)."""
    ops = ops[~ops["op"].astype(str).str.startswith("<")]
    number = {c: pd.to_numeric(ops[c], errors="coerce").fillna(0.0) for c in
              ("calls", "self_cpu_us", "cpu_total_us", "self_device_us", "device_total_us",
               "self_cpu_mem_bytes")}
    total = number["self_cpu_us"].sum()
    frame = {"op": ops["op"].astype(str), "calls": number["calls"],
             "self_cpu_ms": number["self_cpu_us"] / 1e3,
             "self_share": number["self_cpu_us"] / total if total > 0 else number["calls"] * 0,
             "cpu_total_ms": number["cpu_total_us"] / 1e3}
    if number["self_device_us"].sum() > 0:
        frame["self_device_ms"] = number["self_device_us"] / 1e3
        frame["device_total_ms"] = number["device_total_us"] / 1e3
        frame["device_type"] = event_kinds(ops)
    frame["self_cpu_mem_bytes"] = number["self_cpu_mem_bytes"]
    return pd.DataFrame(frame).reset_index(drop=True)


def per_call_text(step_times_ms: Sequence[float]) -> str:
    """``per call: median 1032 ms over 3 active steps (24-1035 ms; steps differ by 43x: look at
    the timeline)``: the recorded calls' wall times under the profiler, in the unit of the
    longest, to 4 significant digits."""
    if not step_times_ms:
        return "per call: no recorded call in the trace"
    unit, scale = time_unit(1e3 * max(step_times_ms))

    def shown(ms: float) -> str:
        return plain(1e3 * ms / scale, 4)

    if len(step_times_ms) == 1:
        return f"per call: {shown(step_times_ms[0])} {unit} (1 active step)"
    lo, hi = min(step_times_ms), max(step_times_ms)
    spread = f"{shown(lo)}-{shown(hi)} {unit}"
    if lo > 0 and hi / lo >= SPREAD_NOTE:
        spread += f"; steps differ by {plain(hi / lo, 2)}x: look at the timeline"
    return (f"per call: median {shown(statistics.median(step_times_ms))} {unit} over "
            f"{len(step_times_ms)} active steps ({spread})")

"""What commands print: a progress bar with ETA while a run runs, summary tables at its end,
the implementations of ``list`` and the operators of ``profile``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from reports.analysis import MARK_LEGEND, best_per_size, event_kinds, mark, marks
from reports.columns import count, plain, size_bytes, time_unit
from reports.record import Case, CaseResult
from reports.style import format_seconds, speedup_text, variant, variants


def console(stderr: bool = False) -> Console:
    """A console that keeps tables whole when output goes to a file or a CI log."""
    found = Console(stderr=stderr)
    if not found.is_terminal and not os.environ.get("COLUMNS"):
        found = Console(stderr=stderr, width=160)
    return found


def say(text: str, stderr: bool = False) -> None:
    """One plain line (no markup, no colouring, paths never wrapped) to stdout or stderr."""
    console(stderr).print(text, markup=False, highlight=False, soft_wrap=True)


MARKS = {"ok": "[green]ok[/]", "incorrect": "[bold red]WRONG[/]", "error": "[red]error[/]",
         "oom": "[yellow]oom[/]", "timeout": "[yellow]timeout[/]", "skipped": "[dim]skipped[/]"}


class ProgressBar:
    """A runner sink showing cases done, elapsed time, ETA and the case in flight.

    On a terminal it is a bar redrawn in place. Without one (a pipe, ``| tee``, a CI log) a bar
    would print nothing until the end, so every case that ends gets one plain line instead,
    at most one every ``LINE_EVERY_S`` seconds (and always the last): done/total, the case,
    its status, elapsed time and ETA.
    """

    LINE_EVERY_S = 2.0

    def __init__(self, total: int, console: Console, enabled: bool = True) -> None:
        self._lines = enabled and not console.is_terminal
        self._console, self._total, self._done = console, total, 0
        self._start = self._last = time.monotonic()
        self._last -= self.LINE_EVERY_S
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[case]}"), console=console,
            disable=not enabled or self._lines, transient=True)
        self._task = self._progress.add_task("bench", total=total, case="")

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def started(self, case: Case) -> None:
        self._progress.update(self._task, case=f"{case.layer}/{variant(case.impl, case.compile)} "
                                               f"{case.device} {case.dtype} {case.mode} "
                                               f"{case.label}")

    def finished(self, result: CaseResult) -> None:
        self._progress.advance(self._task)
        self._done += 1
        now = time.monotonic()
        if not self._lines or (now - self._last < self.LINE_EVERY_S
                               and self._done < self._total):
            return
        self._last, elapsed = now, now - self._start
        eta = elapsed / self._done * (self._total - self._done)
        case = result.case
        timed = (f" {format_seconds(result.median_s)}" if result.samples else "")
        self._console.print(
            f"[{self._done}/{self._total}] {case.layer}/{variant(case.impl, case.compile)} "
            f"{case.device} {case.dtype} {case.mode} {case.label}: {result.status}{timed} "
            f"(elapsed {format_seconds(elapsed)}"
            + (f", eta {format_seconds(eta)})" if self._done < self._total else ")"),
            markup=False, highlight=False, soft_wrap=True)


def _cell(row: pd.Series) -> str:
    status = row["status"]
    if status == "skipped":
        predicted = row.get("predicted_s")
        if isinstance(predicted, float) and not math.isnan(predicted):
            return f"[dim]skipped (~{format_seconds(predicted)})[/]"
        return MARKS[status]
    if status in ("error", "oom", "timeout"):
        return MARKS[status]
    speedup = row["speedup_vs_builtin"]
    text = f"{format_seconds(row['median_ms'] / 1e3)}" + (f" x{speedup:.3g}"
                                                        if speedup == speedup else "")
    marked = mark(row.get("stable"), row.get("flags"))
    if "~" in marked:  # unstable: the number stands, but not to its target precision
        text = f"[yellow]~{text}[/]"
    if "!" in marked:
        text = f"[bold magenta]![/]{text}"
    return f"{text} {MARKS[status]}"


def summary_tables(results: pd.DataFrame) -> list[Table]:
    """One table per (layer, device, dtype, mode): sizes down, implementations across, and the
    fastest correct implementation of each size (a tie where the 95% intervals overlap).

    Each cell: median time, speedup vs the eager builtin (x2 = twice as fast), correctness;
    ``~`` (yellow) marks an unstable case, ``!`` a plausibility flag (``problems`` says why).
    """
    tables = []
    results = results.assign(variant=variants(results))
    best = best_per_size(results).set_index(["layer", "device", "dtype", "mode", "case"])
    for (layer, device, dtype, mode), group in results.groupby(
            ["layer", "device", "dtype", "mode"], sort=False):
        caption = "median time, speed vs builtin (x2 = twice as fast), correctness"
        if (marks(group) != "").any():
            caption += f"\n{MARK_LEGEND} (why: below)"
        table = Table(title=f"{layer} · {device} · {dtype} · {mode}", title_justify="left",
                      caption=caption, caption_justify="left")
        columns = list(dict.fromkeys(group["variant"]))
        table.add_column("case", style="bold")
        for name in columns:
            table.add_column(name, justify="right")
        table.add_column("fastest")
        for case, rows in group.groupby("case", sort=False):
            by_variant = {r["variant"]: r for _, r in rows.iterrows()}
            key = (layer, device, dtype, mode, case)
            table.add_row(case, *(_cell(by_variant[v]) if v in by_variant else ""
                                  for v in columns),
                          _fastest(best.loc[key]) if key in best.index else "")
        tables.append(table)
    return tables


def _fastest(best: pd.Series) -> str:
    """The verdict of a size; where it names one variant, with its speedup and interval."""
    if best["verdict"].startswith("tie: "):  # each tied variant's speedup is in its cell
        return escape(best["verdict"])
    speedup = speedup_text(best["speedup_vs_builtin"], best["speedup_lo"], best["speedup_hi"])
    return escape(best["verdict"] + (f" {speedup}" if speedup else ""))


def problems(results: pd.DataFrame) -> list[str]:
    """One line per case that did not end ``ok``, with its reason; then one per ``ok`` case that
    was unstable or flagged, with its flags."""
    lines = []
    for _, r in results[results["status"] != "ok"].iterrows():
        lines.append(f"{r['status']:>9}  {_label(r)}: {r['reason']}")
    ok = results[results["status"] == "ok"]
    for (_, r), marked in zip(ok.iterrows(), marks(ok), strict=True):
        if marked:
            what = "unstable" if "~" in marked else "flagged"
            lines.append(f"{what:>9}  {_label(r)}: {r['flags'] or 'missed its precision'}")
    return lines


def _label(r: pd.Series) -> str:
    return (f"{r['layer']}/{variant(r['impl'], r['compile'])} {r['device']} {r['dtype']} "
            f"{r['mode']} {r['case']}")


def load_lines(meta: dict[str, Any]) -> list[str]:
    """What to print about the machine's load during a run: its warning when it was busy, and
    a note on the cases that missed their precision target; nothing for a run without
    ``meta["load"]``."""
    load = meta.get("load") or {}
    return [*([f"note: {load['note']}"] if load.get("note") else []),
            *([f"warning: {load['warning']}"] if load.get("warning") else [])]


_SHORT_DTYPES = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}


def impl_table(rows: Iterable[dict[str, Any]]) -> Table:
    """``list``: one row per implementation (``layer``, ``impl``, ``devices``, ``dtypes``,
    ``modes``, ``compile`` (bool), ``notes``)."""
    table = Table(title="layerbench implementations", title_justify="left")
    for column in ("layer", "impl", "devices", "dtypes", "modes", "compile", "notes"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["layer"], r["impl"], ",".join(r["devices"]),
                      ",".join(_SHORT_DTYPES.get(d, d) for d in r["dtypes"]),
                      ",".join(r["modes"]), "yes" if r["compile"] else "no", r["notes"])
    return table


def ops_table(ops: pd.DataFrame, top: int, title: str) -> Table:
    """``profile``: the top operators by self time, with their share, calls and self memory per
    call; times in one unit chosen by magnitude (us, ms or s), never in scientific notation."""
    device_time = ops["self_device_us"].sum() > 0
    total = ops["self_cpu_us"].sum()
    largest = ops[["cpu_total_us", "device_total_us"]].fillna(0.0).to_numpy(float).max(initial=0.0)
    unit, scale = time_unit(float(largest))
    heading = f"{title}: top operators by self time (per call)"
    # a table narrower than its title wraps the title: a table of short operator names did
    table = Table(title=heading, title_justify="left", min_width=len(heading))
    columns = ["operator", "calls", f"self CPU {unit}", "%", f"CPU total {unit}"]
    # on a GPU a kernel's time is in its row (on cuda) and in its operator's (on cpu)
    columns += [f"self device {unit}", f"device total {unit}", "on"] if device_time else []
    kinds = event_kinds(ops)
    memory = "self_cpu_mem_bytes" in ops.columns
    columns += ["self memory"] if memory else []
    for column in columns:
        table.add_column(column, justify="left" if column == "operator" else "right")
    for i, r in ops.head(top).iterrows():
        cells = [r["op"], count(r["calls"]), plain(r["self_cpu_us"] / scale),
                 f"{100 * r['self_cpu_us'] / total:.1f}" if total > 0 else "",
                 plain(r["cpu_total_us"] / scale)]
        cells += [plain(r["self_device_us"] / scale), plain(r["device_total_us"] / scale),
                  kinds[i]] if device_time else []
        cells += [size_bytes(r["self_cpu_mem_bytes"])] if memory else []
        table.add_row(*cells)
    return table

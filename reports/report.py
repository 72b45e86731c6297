"""A run directory's report: figures under ``plots/``, ``report.html`` and ``report.md``.

Everything is rebuilt from the files of the run (``results.csv``, ``meta.json``), so
``python cli.py report RUN_DIR`` gives the same report as the end of ``bench``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports import html
from reports.analysis import (
    MARK_LEGEND,
    best_per_size,
    growth_exponents,
    marks,
    measured,
    profile_table,
)
from reports.console import load_lines, say
from reports.markdown import definitions, md_table
from reports.meta import environment_rows
from reports.outcome import UsageError
from reports.schema import STATUSES, load_ops, load_run
from reports.stats import geomean
from reports.style import Palette, palette, speedup_text, variant, variants

TABLE_COLUMNS = ["mark", "layer", "impl", "compile", "device", "dtype", "mode", "case",
                 "status", "median_ms", "ci_lo_ms", "ci_hi_ms", "iqr_ms", "n_samples", "gflops",
                 "gbps", "roofline_frac", "speedup_vs_builtin", "speedup_lo", "speedup_hi",
                 "rel_err", "grad_rel_err", "compile_s", "peak_mem_bytes", "op_calls",
                 "precision", "busy_cores", "stable", "flags", "reason"]
SETTING = ["device", "dtype", "mode"]
MD_ROWS = 20  # unstable or flagged cases listed in report.md at most, per layer
METHOD = (
    "Correctness: every case against a float64 CPU reference computed from the same rounded "
    "inputs (outputs, every gradient, updated state), per-dtype tolerances. Timing: median of raw "
    "samples after warm-up (CPU: torch.utils.benchmark blocks on the recorded thread count; CUDA: "
    "events with the L2 cache flushed between samples). FLOPs count a multiply-add as 2 and "
    "masked (causal) attention densely; bytes are the minimum traffic (each input, weight and "
    "output once). Roofline fraction = achieved / min(peak matmul FLOP/s of the dtype, "
    "intensity x copy bandwidth), ceilings from `python cli.py calibrate`. Growth exponent = "
    "log-log slope of time vs FLOPs over the sizes measured: ~1 means time grows with the work, "
    "well below 1 means fixed overheads dominate. Fastest per size: named only where its 95% "
    "interval of the median ends below the runner-up's, else a tie of the implementations whose "
    "intervals overlap the best's; speedups with their 95% interval.")

PROFILE_NOTE = (
    "From `--profile`: a separate pass under torch.profiler after the timing. profiled_ms: the "
    "self time of every operator per call, under the profiler (above median_ms, the honest "
    "time); op_calls: operators launched per call; peak_mem_mib: the most memory a call holds "
    "beyond its inputs (CPU: the profiler's allocation events; CUDA: max_memory_allocated); "
    "top_op: the operator with the most self time, top_share its part. Traces: profile/<case>/ "
    "(TensorBoard: tensorboard --logdir profile; Perfetto: open profile/<case>/trace.json).")


def build_report(run_dir: str | Path) -> list[Path]:
    """Write the figures, ``report.html`` and ``report.md`` of ``run_dir``; return their paths.

    Raises ``RunDataError`` when the run directory is missing, corrupt or empty.
    """
    from reports.plots import render  # matplotlib: only imported when a report is drawn

    run_dir = Path(run_dir)
    results, meta = load_run(run_dir)
    ops = load_ops(run_dir)
    figures = render(results, meta, run_dir / "plots", ops)
    profiled = profile_table(results, ops)
    order = palette(meta, results["impl"])
    summaries = {layer: _layer_summary(rows, profiled[profiled["layer"] == layer], order)
                 for layer, rows in results.groupby("layer", sort=False)}
    title = f"layerbench report: {meta.get('run_id', run_dir.name)}"
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    html_path.write_text(html.page(title, _html_body(results, meta, summaries, figures)),
                         encoding="utf-8")
    md_path.write_text(_markdown(title, results, meta, summaries, figures, run_dir),
                       encoding="utf-8")
    return [html_path, md_path, *(f.path for f in figures)]


def report(run_dir: Path) -> int:
    """The ``report`` command: (re)build the report of ``run_dir``; print what it wrote."""
    try:
        paths = build_report(run_dir)
    except OSError as exc:
        raise UsageError(f"{run_dir}: cannot write the report ({exc.strerror or exc})") from None
    for path in paths[:2]:
        say(str(path))
    say(f"{len(paths) - 2} figures in {run_dir / 'plots'}")
    return 0


def status_counts(results: pd.DataFrame) -> pd.DataFrame:
    """Cases per layer and status (every status a column, zeros included)."""
    counts = pd.crosstab(results["layer"], results["status"]).reindex(
        columns=list(STATUSES), fill_value=0)
    counts.insert(0, "cases", counts.sum(axis=1))
    counts = counts.reindex(pd.unique(results["layer"])).reset_index()
    counts.columns.name = None
    return counts


def variant_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per variant and setting: sizes measured, geomean speedup vs builtin, growth exponent,
    correct sizes marked unstable (``~``) or flagged implausible (``!``)."""
    exponents = growth_exponents(results).set_index(["impl", "compile", *SETTING])["exponent"]
    rows = []
    timed = measured(results)
    for key, group in results.groupby(["impl", "compile", *SETTING], sort=False):
        ok = timed.loc[timed.index.intersection(group.index)]
        ok = ok[ok["status"] == "ok"]
        speedups = ok["speedup_vs_builtin"].dropna()
        judged = ok["stable"].notna().any()  # runs before stability was judged: unknown
        rows.append({
            "variant": variant(key[0], key[1]), "setting": " ".join(key[2:]),
            "cases": len(group), "ok": int((group["status"] == "ok").sum()),
            "speedup_vs_builtin": geomean(speedups) if len(speedups) else np.nan,
            "growth_exponent": exponents.get(key, np.nan),
            "best_roofline_frac": ok["roofline_frac"].max() if len(ok) else np.nan,
            "fastest_ms": ok["median_ms"].min() if len(ok) else np.nan,
            "unstable": int((ok["stable"] == 0).sum()) if judged else np.nan,
            "flagged": int(marks(ok).str.contains("!", regex=False).sum()) if judged
            else np.nan,
        })
    return pd.DataFrame(rows)


def _setting(rows: pd.DataFrame) -> pd.Series | list[str]:
    return rows[SETTING].agg(" ".join, axis=1) if len(rows) else []


def _marked(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``variant`` (marked ``~`` unstable, ``!`` flagged) and ``setting``; a mark
    without flags gets ``unstable`` as its ``flags``, so every mark has its note."""
    mark = marks(rows)
    flags = rows["flags"].where((rows["flags"] != "") | (mark == ""), "unstable")
    return rows.assign(variant=mark + pd.Series(variants(rows), index=rows.index, dtype=object),
                       setting=_setting(rows), flags=flags)


def _best(rows: pd.DataFrame) -> pd.DataFrame:
    """The fastest correct implementation per size, as the report shows it."""
    best = best_per_size(rows)
    interval = [f"{lo:.4g}-{hi:.4g}" if np.isfinite(lo) and np.isfinite(hi) else ""
                for lo, hi in zip(best["ci_lo_ms"], best["ci_hi_ms"], strict=True)]
    speedup = [speedup_text(*s) for s in zip(best["speedup_vs_builtin"], best["speedup_lo"],
                                             best["speedup_hi"], strict=True)]
    return pd.DataFrame({"setting": _setting(best), "case": best["case"],
                         "fastest": best["verdict"], "median_ms": best["median_ms"],
                         "ci95_ms": interval, "speedup": speedup, "gflops": best["gflops"],
                         "runner_up": best["runner_up"],
                         "runner_up_ratio": best["runner_up_ratio"], "flags": best["flags"]})


def _layer_summary(rows: pd.DataFrame, profiled: pd.DataFrame,
                   order: Palette) -> dict[str, pd.DataFrame]:
    key = ["layer", "impl", "compile", *SETTING, "case"]
    problems = _marked(rows[rows["status"] != "ok"])
    ok = rows[rows["status"] == "ok"]
    shaky = _marked(ok[marks(ok) != ""])
    profiled = _marked(profiled.merge(rows[[*key, "stable", "flags"]], on=key, how="left")
                       .fillna({"flags": ""}))
    if len(profiled):  # the run's order of implementations, then smallest size first
        rank = {impl: i for i, impl in enumerate(order.sorted(profiled["impl"]))}
        flops = rows.groupby("case")["flops"].min()
        profiled = profiled.assign(_i=profiled["impl"].map(rank),
                                   _f=profiled["case"].map(flops)).sort_values(
            ["setting", "_i", "compile", "_f"], kind="stable")
    return {"variants": variant_summary(rows), "best": _best(rows),
            "problems": problems[["variant", "setting", "case", "status", "reason", "flags"]],
            "unstable": shaky[["variant", "setting", "case", "median_ms", "precision",
                               "busy_cores", "flags"]],
            "profile": profiled[["variant", "setting", "case", "median_ms", "profiled_ms",
                                 "op_calls", "peak_mem_mib", "top_op", "top_share", "flags"]]}


def _html_table(frame: pd.DataFrame, scroll: bool = False, show_flags: bool = False) -> str:
    """``frame`` in HTML, its ``flags`` as each row's note (and a column if ``show_flags``)."""
    shown = frame if show_flags else frame.drop(columns="flags")
    return html.table(shown, scroll=scroll, row_notes=frame["flags"])


def _md_table(frame: pd.DataFrame) -> str:
    """``frame`` in Markdown, with its ``flags`` column only where a row has some."""
    return md_table(frame if (frame["flags"] != "").any() else frame.drop(columns="flags"))


def _warnings(results: pd.DataFrame, meta: dict[str, Any]) -> tuple[list[str], str]:
    """The run's busy-machine warning lines, and what the marks mean if any case has one."""
    return load_lines(meta), MARK_LEGEND if (marks(results) != "").any() else ""


def _html_body(results: pd.DataFrame, meta: dict[str, Any],
               summaries: dict[str, dict[str, pd.DataFrame]], figures: list[Any]) -> str:
    warnings, legend = _warnings(results, meta)
    parts = [f'<p class="warning">{html.esc(line)}</p>' for line in warnings]
    parts += ["<h2>Run</h2>", html.definitions(environment_rows(meta)),
              f'<p class="note">{html.esc(METHOD)}</p>',
              "<h2>At a glance</h2>", html.table(status_counts(results))]
    if legend:
        parts.append(f'<p class="note">Marks: {html.esc(legend)}. Hover over a highlighted '
                     "row for its flags.</p>")
    for layer, summary in summaries.items():
        parts += [f'<h2 id="{html.esc(layer)}">{html.esc(layer)}</h2>',
                  "<h3>Implementations</h3>",
                  html.table(summary["variants"]),
                  '<p class="note">speedup_vs_builtin: geometric mean over the correct sizes '
                  "(2 = twice as fast as the eager builtin); growth_exponent: see above; "
                  "unstable, flagged: correct sizes marked ~ and !.</p>"]
        for name, title in (("best", "Fastest correct implementation per size"),
                            ("unstable", "Unstable or flagged cases"),
                            ("problems", "Failures and skips")):
            if len(summary[name]):
                parts += [f"<h3>{title}</h3>",
                          _html_table(summary[name], show_flags=name == "unstable")]
        if len(summary["profile"]):
            parts += ["<h3>Where the time goes (profiled)</h3>", _html_table(summary["profile"]),
                      f'<p class="note">{html.esc(PROFILE_NOTE)}</p>']
        parts += [html.figure(f.path, f"{f.title}. {f.caption}")
                  for f in figures if f.layer == layer]
    table = results.assign(mark=marks(results))
    table = table[[c for c in TABLE_COLUMNS if c in table.columns]]
    parts += ["<h2>Every case</h2>", _html_table(table, scroll=True, show_flags=True)]
    return "\n".join(parts)


def _markdown(title: str, results: pd.DataFrame, meta: dict[str, Any],
              summaries: dict[str, dict[str, pd.DataFrame]], figures: list[Any],
              run_dir: Path) -> str:
    machine = meta.get("machine") or {}
    keep = {"run", "command", "CPU", "versions", "git commit", "machine load"}
    rows = [(k, v) for k, v in environment_rows(meta) if k in keep or k.startswith(("GPU",
                                                                                  "ceilings"))]
    warnings, legend = _warnings(results, meta)
    lines = [f"# {title}", "", *(f"> **{line}**\n" for line in warnings), definitions(rows), "",
             "## At a glance", "", md_table(status_counts(results)), ""]
    if legend:
        lines += [f"Marks: {legend}.", ""]
    for layer, summary in summaries.items():
        lines += [f"## {layer}", "", md_table(summary["variants"]), ""]
        problems = summary["problems"]
        for title, frame in (("Fastest per size", summary["best"]),
                             ("Unstable or flagged", summary["unstable"].head(MD_ROWS)),
                             ("Failures", problems[problems["status"] != "skipped"]),
                             ("Where the time goes (profiled)", summary["profile"])):
            if len(frame):
                lines += [f"**{title}:**", "", _md_table(frame), ""]
        if len(summary["unstable"]) > MD_ROWS:
            lines += [f"… and {len(summary['unstable']) - MD_ROWS} more unstable or flagged "
                      "case(s) in report.html.", ""]
        if skipped := int((problems["status"] == "skipped").sum()):
            lines += [f"{skipped} case(s) skipped (reasons in report.html).", ""]
        links = [f"[{f.kind}]({f.path.relative_to(run_dir).as_posix()})"
                 for f in figures if f.layer == layer]
        if links:
            lines += ["Figures: " + " · ".join(links), ""]
    lines += [f"Full report: `report.html`; every case: `results.csv` "
              f"({len(results)} rows, {machine.get('cpu_model', '?')}).", ""]
    return "\n".join(lines)

"""A run directory's report: figures under ``plots/``, ``report.html`` and ``report.md``.

Both open with the answer (``reports.verdict``: per layer and setting, the fastest correct
implementation or a tie, the best hand-written one against the builtin, how many cases are
correct, which need a second look), then each layer's tables and figures, every case, and the
run's machine and method last. Everything is rebuilt from the files of the run
(``results.csv``, ``meta.json``, ``ops.csv``, ``profile/``), so ``python cli.py report RUN_DIR``
gives the same report as the end of ``bench``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from reports import html
from reports.analysis import MARK_LEGEND, marks, profile_table
from reports.columns import Col, results_columns
from reports.console import load_lines, say
from reports.markdown import definitions, md_table
from reports.meta import environment_rows
from reports.outcome import UsageError
from reports.schema import KEY_COLUMNS, PROFILE_DIR, load_ops, load_run, trace_name
from reports.style import palette
from reports.summary import (
    BEST_COLUMNS,
    PROBLEM_COLUMNS,
    PROFILE_COLUMNS,
    UNSTABLE_COLUMNS,
    VARIANT_COLUMNS,
    layer_summary,
    marked,
    status_counts,
    variant_summary,
)
from reports.verdict import verdicts

__all__ = ["build_report", "contents", "report", "status_counts", "variant_summary"]

EVERY_CASE = results_columns(
    ["variant", "case", "layer", "setting", "status", "median_ms", "wall_ms",
     "speedup_vs_builtin", "gflops", "roofline_frac", "rel_err", "grad_rel_err", "n_samples",
     "precision", "busy_cores", "iqr_ms", "compile_s", "peak_mem_bytes", "peak_rss_bytes",
     "op_calls", "tf32", "flags",
     "reason"])
VERDICT_COLUMNS = [
    Col("layer", "layer"), Col("setting", "setting", tip="device, dtype, mode"),
    Col("fastest", "fastest correct", tip="geometric mean of the speed against the eager "
        "builtin over every size, 95% interval; a tie where intervals overlap"),
    Col("wins", "fastest per size", tip="how often each was fastest at one size"),
    Col("hand", "best hand-written vs builtin",
        tip="the fastest implementation other than the builtin (compiled or not)"),
    Col("correct", "correct", tip="cases correct against the float64 reference"),
    Col("failed", "not correct or not run"), Col("look", "take a second look"),
]
#: columns of the every-case table shown only where a row has a value other than 0 (CUDA,
#: compile, profile)
SOMETIMES = frozenset({"wall_ms", "compile_s", "peak_mem_bytes", "op_calls", "tf32"})
MD_ROWS = 20  # unstable or flagged cases listed in report.md at most, per layer
METHOD = (
    "Correctness: every case against a float64 CPU reference computed from the same rounded "
    "inputs (outputs, every gradient, updated state), per-dtype tolerances. Timing: median of raw "
    "samples after warm-up, in rounds that interleave a size's implementations (CPU: blocks of "
    "calls on the recorded thread count; CUDA: events with the L2 cache flushed between "
    "samples). FLOPs count a multiply-add as 2 and masked (causal) attention densely; bytes are "
    "the minimum traffic (each input, weight and output once). Roofline fraction = achieved / "
    "min(peak matmul FLOP/s of the dtype, intensity x copy bandwidth), ceilings from `python "
    "cli.py calibrate`. Growth exponent = log-log slope of time vs FLOPs over three sizes or "
    "more: ~1 means time grows with the work, well below 1 means fixed overheads dominate. "
    "Speed against the builtin: per size the median of paired per-round ratios with its 95% "
    "interval; over sizes their geometric mean, intervals combined as independent errors. "
    "Fastest per size: named only where its 95% interval of the median ends below the "
    "runner-up's, else a tie of the implementations whose intervals overlap the best's.")
PROFILE_NOTE = (
    "From `--profile`: a separate pass under torch.profiler after the timing. Under the "
    "profiler: the self time of every operator per call (above the median time, the honest "
    "one); operators per call: launched by the implementation; peak memory: the most a call "
    "holds beyond its inputs (CPU: the profiler's allocation events; CUDA: "
    "max_memory_allocated). Each case's page (the 'profile' link) works offline; TensorBoard "
    "(tensorboard --logdir profile) and Perfetto (profile/<case>/trace.json) need internet "
    "access for their views.")


def build_report(run_dir: str | Path) -> list[Path]:
    """Write the figures, the profile pages, ``report.html`` and ``report.md`` of ``run_dir``;
    return their paths (the two reports first).

    Raises ``RunDataError`` when the run directory is missing, corrupt or empty.
    """
    from reports.plots import render  # matplotlib: only imported when a report is drawn

    run_dir = Path(run_dir)
    results, meta = load_run(run_dir)
    ops = load_ops(run_dir)
    figures = render(results, meta, run_dir / "plots", ops)
    pages = _profile_pages(run_dir, ops)
    profiled = profile_table(results, ops)
    order = palette(meta, results["impl"])
    summaries = {layer: layer_summary(rows, profiled[profiled["layer"] == layer], order)
                 for layer, rows in results.groupby("layer", sort=False)}
    title = f"layerbench report: {meta.get('run_id', run_dir.name)}"
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    body = _html_body(results, meta, summaries, figures, _links(results, figures, pages,
                                                                run_dir))
    html_path.write_text(html.page(title, body, _subtitle(results, meta)), encoding="utf-8")
    md_path.write_text(_markdown(title, results, meta, summaries, figures, run_dir),
                       encoding="utf-8")
    return [html_path, md_path, *(f.path for f in figures), *pages.values()]


def report(run_dir: Path) -> int:
    """The ``report`` command: (re)build the report of ``run_dir``; print what it wrote."""
    try:
        paths = build_report(run_dir)
    except OSError as exc:
        raise UsageError(f"{run_dir}: cannot write the report ({exc.strerror or exc})") from None
    for path in paths[:2]:
        say(str(path))
    say(f"{contents(paths)} in {run_dir}")
    return 0


def contents(paths: list[Path]) -> str:
    """What ``build_report`` wrote besides the two reports: ``8 figures, 14 profile pages``."""
    pages = sum(p.name == "index.html" for p in paths[2:])
    return f"{len(paths) - 2 - pages} figures" + (f", {pages} profile pages" if pages else "")


def _profile_pages(run_dir: Path, ops: pd.DataFrame) -> dict[tuple[str, ...], Path]:
    """Each profiled case's offline page (``reports.profile_page``), by case key."""
    if ops.empty:
        return {}
    from reports.profile_page import write_run_pages

    return write_run_pages(run_dir)


def _subtitle(results: pd.DataFrame, meta: dict[str, Any]) -> str:
    machine = meta.get("machine") or {}
    devices = ", ".join(pd.unique(results["device"]))
    return (f"{len(results)} cases on {devices} ({machine.get('cpu_model', '?')}, torch "
            f"{machine.get('torch', '?')}), {str(meta.get('start_time', '?'))[:16]}")


def _links(results: pd.DataFrame, figures: list[Any], pages: dict[tuple[str, ...], Path],
           run_dir: Path) -> list[str]:
    """Per row of ``results``: links to its layer's first figure, its profile page (or trace)
    and its row of results.csv."""
    first = {}
    for f in figures:
        first.setdefault(f.layer, f)
    out = []
    for number, (_, row) in enumerate(results.iterrows(), start=1):
        key = tuple(str(row[c]) for c in KEY_COLUMNS)
        parts = []
        if row["layer"] in first:
            parts.append(f'<a href="#{_figure_id(first[row["layer"]])}">figure</a>')
        trace = run_dir / PROFILE_DIR / trace_name(key) / "trace.json"
        target = pages.get(key) or (trace if trace.is_file() else None)
        if target is not None:
            parts.append(f'<a href="{html.esc(target.relative_to(run_dir).as_posix())}">'
                         "profile</a>")
        parts.append(f'<a href="results.csv" title="row {number} of results.csv">csv '
                     f"{number}</a>")
        out.append(" · ".join(parts))
    return out


def _figure_id(figure: Any) -> str:
    return f"fig-{figure.layer}-{figure.kind}"


def _warnings(results: pd.DataFrame, meta: dict[str, Any]) -> tuple[list[str], str]:
    """The run's busy-machine warning lines, and what the marks mean if any case has one."""
    return load_lines(meta), MARK_LEGEND if (marks(results) != "").any() else ""


def _html_table(frame: pd.DataFrame, columns: list[Col], **options: Any) -> str:
    """``frame`` in HTML, each row's ``flags`` as its note."""
    return html.table(frame, columns, row_notes=frame["flags"], **options)


def _html_body(results: pd.DataFrame, meta: dict[str, Any],
               summaries: dict[str, dict[str, pd.DataFrame]], figures: list[Any],
               links: list[str]) -> str:
    warnings, legend = _warnings(results, meta)
    toc = " ".join(f'<a href="#{html.esc(x)}">{html.esc(x)}</a>'
                   for x in ["verdict", *summaries, "every-case", "run"])
    parts = [f'<nav class="toc">{toc}</nav>',
             *(f'<p class="warning">{html.esc(line)}</p>' for line in warnings),
             '<h2 id="verdict">Verdict</h2>',
             html.table(verdicts(results), VERDICT_COLUMNS).replace("<table", '<table '
                                                                    'class="verdict"', 1)]
    if legend:
        parts.append(f'<p class="note">Marks: {html.esc(legend)}. Hover over a highlighted '
                     "row for its flags.</p>")
    for layer, summary in summaries.items():
        parts += [f'<h2 id="{html.esc(layer)}">{html.esc(layer)}</h2>',
                  "<h3>Implementations</h3>", html.table(summary["variants"], VARIANT_COLUMNS,
                                                         sortable=True)]
        for name, title, columns in (
                ("best", "Fastest correct implementation per size", BEST_COLUMNS),
                ("unstable", "Unstable or flagged cases", UNSTABLE_COLUMNS),
                ("problems", "Failures and skips", PROBLEM_COLUMNS)):
            if len(summary[name]):
                parts += [f"<h3>{title}</h3>", _html_table(summary[name], columns,
                                                           sortable=True)]
        if len(summary["profile"]):
            parts += ["<h3>Where the time goes (profiled)</h3>",
                      _html_table(summary["profile"], PROFILE_COLUMNS, sortable=True),
                      f'<p class="note">{html.esc(PROFILE_NOTE)}</p>']
        parts += [html.figure(f.path, f"{f.title}. {f.caption}", _figure_id(f))
                  for f in figures if f.layer == layer]
    table = marked(results)
    every = [c for c in EVERY_CASE
             if c.key not in SOMETIMES or (table[c.key].fillna(0) != 0).any()]
    parts += ['<h2 id="every-case">Every case</h2>',
              _html_table(table, every, links=links, scroll=True, sortable=True,
                          filterable=True, table_id="cases"),
              '<h2 id="run">Run and method</h2>', html.definitions(environment_rows(meta)),
              html.table(status_counts(results)), f'<p class="note">{html.esc(METHOD)}</p>']
    return "\n".join(parts)


def _md_table(frame: pd.DataFrame, columns: list[Col]) -> str:
    """``frame`` in Markdown, with its ``flags`` column only where a row has some."""
    flags = "flags" in frame.columns and (frame["flags"] != "").any()
    return md_table(frame, [c for c in columns if c.key != "flags" or flags])


def _markdown(title: str, results: pd.DataFrame, meta: dict[str, Any],
              summaries: dict[str, dict[str, pd.DataFrame]], figures: list[Any],
              run_dir: Path) -> str:
    machine = meta.get("machine") or {}
    keep = {"run", "command", "CPU", "versions", "git commit", "machine load"}
    rows = [(k, v) for k, v in environment_rows(meta) if k in keep or k.startswith(("GPU",
                                                                                  "ceilings"))]
    warnings, legend = _warnings(results, meta)
    lines = [f"# {title}", "", *(f"> **{line}**\n" for line in warnings), "## Verdict", "",
             md_table(verdicts(results), VERDICT_COLUMNS), ""]
    if legend:
        lines += [f"Marks: {legend}.", ""]
    for layer, summary in summaries.items():
        lines += [f"## {layer}", "", md_table(summary["variants"], VARIANT_COLUMNS), ""]
        problems = summary["problems"]
        for title, frame, columns in (
                ("Fastest per size", summary["best"], BEST_COLUMNS),
                ("Unstable or flagged", summary["unstable"].head(MD_ROWS), UNSTABLE_COLUMNS),
                ("Failures", problems[problems["status"] != "skipped"], PROBLEM_COLUMNS),
                ("Where the time goes (profiled)", summary["profile"], PROFILE_COLUMNS)):
            if len(frame):
                lines += [f"**{title}:**", "", _md_table(frame, columns), ""]
        if len(summary["unstable"]) > MD_ROWS:
            lines += [f"… and {len(summary['unstable']) - MD_ROWS} more unstable or flagged "
                      "case(s) in report.html.", ""]
        if skipped := int((problems["status"] == "skipped").sum()):
            lines += [f"{skipped} case(s) skipped (reasons in report.html).", ""]
        links = [f"[{f.kind}]({f.path.relative_to(run_dir).as_posix()})"
                 for f in figures if f.layer == layer]
        if links:
            lines += ["Figures: " + " · ".join(links), ""]
    lines += ["## Run", "", definitions(rows), "",
              f"Full report: `report.html`; every case: `results.csv` "
              f"({len(results)} rows, {machine.get('cpu_model', '?')}).", ""]
    return "\n".join(lines)

"""A run directory's report: figures under ``plots/``, ``report.html`` and ``report.md``.

Both open with the answer (``reports.verdict``: per layer and setting, the fastest correct
implementation or a tie, the best hand-written one against the builtin, how many cases are
correct, which need a second look), then each layer's tables and figures, every case, and the
run's machine and method last. Everything is rebuilt from the files of the run
(``results.csv``, ``meta.json``, ``machines.json``, ``ops.csv``, ``profile/``), so ``python
cli.py report RUN_DIR`` gives the same report as the end of ``bench``.

Where the cases ran on several machines (a Dask cluster, merged shards), a Machines section
describes each, the tables get a ``machine`` column, the verdict says that speeds are against
each machine's own builtin, and figures of time and the roofline get a panel per machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from reports import html
from reports.analysis import MARK_LEGEND, marks, profile_table
from reports.columns import RESULTS, Col, results_columns
from reports.console import load_lines, say
from reports.markdown import definitions, md_table
from reports.meta import (
    MACHINE_COLUMNS,
    environment_rows,
    machine_keys,
    machine_table,
    machines_shown,
    several_machines,
)
from reports.outcome import UsageError
from reports.schema import KEY_COLUMNS, PROFILE_DIR, load_machines, load_ops, load_run, trace_name
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
from reports.verdict import machines_note, verdicts

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
#: the verdict's column where the cases ran on several machines, after the setting
VERDICT_MACHINES = Col("machines", "machines", "int", "machines its cases ran on, each timing "
                       "its implementations against its own builtin")
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
    machines = load_machines(run_dir, meta)
    ops = load_ops(run_dir)
    figures = render(results, meta, run_dir / "plots", ops, machines)
    pages = _profile_pages(run_dir, ops)
    profiled = profile_table(results, ops)
    order = palette(meta, results["impl"])
    split = several_machines(results)
    summaries = {layer: layer_summary(rows, profiled[profiled["layer"] == layer], order, split)
                 for layer, rows in results.groupby("layer", sort=False)}
    title = f"layerbench report: {meta.get('run_id', run_dir.name)}"
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    body = _html_body(results, meta, machines, summaries, figures,
                      _links(results, figures, pages, run_dir))
    html_path.write_text(html.page(title, body, _subtitle(results, meta, machines)),
                         encoding="utf-8")
    md_path.write_text(_markdown(title, results, meta, machines, summaries, figures, run_dir),
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


def _subtitle(results: pd.DataFrame, meta: dict[str, Any],
              machines: dict[str, dict[str, Any]]) -> str:
    devices = ", ".join(pd.unique(results["device"]))
    machine = _one_machine(results, meta, machines)
    where = _cpu(results, meta, machines) + (
        "" if machine is None else f", torch {machine.get('torch', '?')}")
    return f"{len(results)} cases on {devices} ({where}), {str(meta.get('start_time', '?'))[:16]}"


def _one_machine(results: pd.DataFrame, meta: dict[str, Any],
                 machines: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The record of the one machine the cases ran on (``meta.json``'s unless they ran
    elsewhere); None where they ran on several."""
    if several_machines(results):
        return None
    own = meta.get("machine") or {}
    if not machines_shown(results, meta):
        return own
    return machines.get(machine_keys(results)[0]) or own


def _cpu(results: pd.DataFrame, meta: dict[str, Any],
         machines: dict[str, dict[str, Any]]) -> str:
    machine = _one_machine(results, meta, machines)
    return f"{len(machine_keys(results))} machines" if machine is None else str(
        machine.get("cpu_model", "?"))


def _with_machine(columns: list[Col], several: bool, column: Col = RESULTS["machine"]
                  ) -> list[Col]:
    """``columns``, and ``column`` after their setting where the cases ran on ``several``
    machines."""
    if not several:
        return columns
    keys = [c.key for c in columns]
    at = keys.index("setting") + 1 if "setting" in keys else 1
    return [*columns[:at], column, *columns[at:]]


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
               machines: dict[str, dict[str, Any]],
               summaries: dict[str, dict[str, pd.DataFrame]], figures: list[Any],
               links: list[str]) -> str:
    warnings, legend = _warnings(results, meta)
    several, shown = several_machines(results), machines_shown(results, meta)
    toc = " ".join(f'<a href="#{html.esc(x)}">{html.esc(x)}</a>' for x in [
        "verdict", *summaries, "every-case", *(["machines"] if shown else []), "run"])
    columns = _with_machine(VERDICT_COLUMNS, several, VERDICT_MACHINES)
    parts = [f'<nav class="toc">{toc}</nav>',
             *(f'<p class="warning">{html.esc(line)}</p>' for line in warnings),
             '<h2 id="verdict">Verdict</h2>',
             html.table(verdicts(results), columns).replace("<table", '<table '
                                                            'class="verdict"', 1)]
    if note := machines_note(results):
        parts.append(f'<p class="note">{html.esc(note)}</p>')
    if legend:
        parts.append(f'<p class="note">Marks: {html.esc(legend)}. Hover over a highlighted '
                     "row for its flags.</p>")
    for layer, summary in summaries.items():
        parts += [f'<h2 id="{html.esc(layer)}">{html.esc(layer)}</h2>', "<h3>Implementations</h3>",
                  html.table(summary["variants"], _with_machine(VARIANT_COLUMNS, several),
                             sortable=True)]
        for name, title, columns in (
                ("best", "Fastest correct implementation per size", BEST_COLUMNS),
                ("unstable", "Unstable or flagged cases", UNSTABLE_COLUMNS),
                ("problems", "Failures and skips", PROBLEM_COLUMNS)):
            if len(summary[name]):
                parts += [f"<h3>{title}</h3>", _html_table(
                    summary[name], _with_machine(columns, several), sortable=True)]
        if len(summary["profile"]):
            parts += ["<h3>Where the time goes (profiled)</h3>",
                      _html_table(summary["profile"], _with_machine(PROFILE_COLUMNS, several),
                                  sortable=True),
                      f'<p class="note">{html.esc(PROFILE_NOTE)}</p>']
        parts += [html.figure(f.path, f"{f.title}. {f.caption}", _figure_id(f))
                  for f in figures if f.layer == layer]
    table = marked(results)
    every = _with_machine([c for c in EVERY_CASE if c.key not in SOMETIMES
                           or (table[c.key].fillna(0) != 0).any()], several)
    parts += ['<h2 id="every-case">Every case</h2>',
              _html_table(table, every, links=links, scroll=True, sortable=True,
                          filterable=True, table_id="cases")]
    if shown:
        parts += ['<h2 id="machines">Machines</h2>',
                  html.table(machine_table(machines, results), MACHINE_COLUMNS)]
    parts += ['<h2 id="run">Run and method</h2>', html.definitions(environment_rows(meta, results)),
              html.table(status_counts(results)), f'<p class="note">{html.esc(METHOD)}</p>']
    return "\n".join(parts)


def _md_table(frame: pd.DataFrame, columns: list[Col], several: bool = False) -> str:
    """``frame`` in Markdown, with its ``flags`` column only where a row has some (and its
    machine where the cases ran on ``several``)."""
    flags = "flags" in frame.columns and (frame["flags"] != "").any()
    return md_table(frame, _with_machine([c for c in columns if c.key != "flags" or flags],
                                         several))


def _markdown(title: str, results: pd.DataFrame, meta: dict[str, Any],
              machines: dict[str, dict[str, Any]],
              summaries: dict[str, dict[str, pd.DataFrame]], figures: list[Any],
              run_dir: Path) -> str:
    keep = {"run", "command", "CPU", "versions", "git commit", "machine load", "cases ran on"}
    rows = [(k, v) for k, v in environment_rows(meta, results)
            if k in keep or k.startswith(("GPU", "ceilings"))]
    warnings, legend = _warnings(results, meta)
    several = several_machines(results)
    lines = [f"# {title}", "", *(f"> **{line}**\n" for line in warnings), "## Verdict", "",
             md_table(verdicts(results), _with_machine(VERDICT_COLUMNS, several,
                                                       VERDICT_MACHINES)), ""]
    if note := machines_note(results):
        lines += [note, ""]
    if legend:
        lines += [f"Marks: {legend}.", ""]
    for layer, summary in summaries.items():
        lines += [f"## {layer}", "", _md_table(summary["variants"], VARIANT_COLUMNS, several),
                  ""]
        problems = summary["problems"]
        for title, frame, columns in (
                ("Fastest per size", summary["best"], BEST_COLUMNS),
                ("Unstable or flagged", summary["unstable"].head(MD_ROWS), UNSTABLE_COLUMNS),
                ("Failures", problems[problems["status"] != "skipped"], PROBLEM_COLUMNS),
                ("Where the time goes (profiled)", summary["profile"], PROFILE_COLUMNS)):
            if len(frame):
                lines += [f"**{title}:**", "", _md_table(frame, columns, several), ""]
        if len(summary["unstable"]) > MD_ROWS:
            lines += [f"… and {len(summary['unstable']) - MD_ROWS} more unstable or flagged "
                      "case(s) in report.html.", ""]
        if skipped := int((problems["status"] == "skipped").sum()):
            lines += [f"{skipped} case(s) skipped (reasons in report.html).", ""]
        links = [f"[{f.kind}]({f.path.relative_to(run_dir).as_posix()})"
                 for f in figures if f.layer == layer]
        if links:
            lines += ["Figures: " + " · ".join(links), ""]
    if machines_shown(results, meta):
        lines += ["## Machines", "", md_table(machine_table(machines, results),
                                              MACHINE_COLUMNS), ""]
    lines += ["## Run", "", definitions(rows), "",
              f"Full report: `report.html`; every case: `results.csv` "
              f"({len(results)} rows, {_cpu(results, meta, machines)}).", ""]
    return "\n".join(lines)

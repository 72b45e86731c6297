"""The files of a comparison: ``compare.csv``, ``compare.md``, ``compare.html``, ``compare.png``.

Each run's machine is described last; where a run's cases ran elsewhere than the machine of its
``meta.json`` (a cluster, merged shards), the machines it used, and the case tables name each
case's machine in A and in B.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports import html
from reports.columns import Col, present
from reports.compare import GEOMEAN_COLUMNS, Comparison, compare_runs
from reports.console import load_lines, say
from reports.markdown import md_table
from reports.meta import (
    MACHINE_COLUMNS,
    environment_rows,
    load_text,
    machine_table,
    machines_line,
    machines_shown,
)
from reports.outcome import EXIT_FAILED, EXIT_OK, UsageError
from reports.style import VERDICT_COLORS, variant, variants
from reports.writer import new_run_dir

FIGURE_ROWS = 80  # cases drawn at most; the most changed ones when there are more
TABLE_ROWS = 30  # rows per Markdown section; compare.csv has them all
TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8, 1, 1.25, 2, 5, 10, 20, 50, 100)


def write_comparison(comparison: Comparison, out_dir: Path) -> list[Path]:
    """Write ``compare.csv``, ``compare.md``, ``compare.html`` and ``compare.png``: the answer
    first (regressions, verdict counts, geometric means, each run's load), then the cases that
    changed, every case, and the runs' machines last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"compare.{ext}" for ext in ("csv", "md", "html", "png")]
    comparison.frame.to_csv(paths[0], index=False)
    plot_ratios(comparison, paths[3])
    counts, sections, geo = _counts(comparison), _sections(comparison), _geo_view(comparison)
    view = _columns(comparison)
    md = ["# Run comparison", "", "\n\n".join(_summary(comparison)), "", _machines(comparison),
          "", "## Verdicts", "", md_table(counts, COUNT_COLUMNS)]
    for title, frame, total in sections:
        more = f"\n\n… and {total - len(frame)} more in compare.csv" if total > len(frame) else ""
        md += ["", f"## {title} ({total})", "", md_table(frame, view) + more]
    md += ["", "## Geometric mean of ratios", "",
           md_table(geo, present(geo, GEO_COLUMNS)) if len(geo) else "no timed cases",
           "", f"![ratio per case]({paths[3].name})", ""]
    paths[1].write_text("\n".join(md), encoding="utf-8")
    plain = [line.replace("**", "").replace("`", "") for line in _summary(comparison)]
    busy = [f"{_role(i)} {run.label}: {line}" for i, run in enumerate(comparison.runs)
            for line in load_lines(run.meta)]
    verdict = plain[-1]
    body = [f'<p class="{"bad" if comparison.regressions else "good"}">{html.esc(verdict)}</p>',
            html.table(counts, COUNT_COLUMNS),
            *(f'<p class="warning">{html.esc(line)}</p>' for line in busy),
            "<h2>Geometric mean of ratios</h2>",
            html.table(geo, present(geo, GEO_COLUMNS), sortable=True) if len(geo)
            else "<p>no timed cases</p>",
            html.figure(paths[3], "Ratio of medians B/A per case with its 95% bootstrap "
                        "interval; the grey band is the threshold")]
    for title, frame, total in _sections(comparison, limit=None):
        body += [f"<h2>{html.esc(title)} ({total})</h2>",
                 html.table(frame, view, scroll=True, sortable=True)]
    body += ["<h2>Every case</h2>",
             html.table(_view(comparison.frame), view, scroll=True, sortable=True,
                        filterable=True, table_id="cases"),
             "<h2>How cases are judged</h2>",
             "".join(f'<p class="note">{html.esc(line)}</p>' for line in plain[:-1]),
             "<h2>Runs</h2>"]
    for i, run in enumerate(comparison.runs):
        body += [f"<h3>{'A (baseline)' if i == 0 else 'B'}: {html.esc(run.label)}</h3>",
                 html.definitions(environment_rows(run.meta, run.results))]
        if machines_shown(run.results, run.meta):
            body.append(html.table(machine_table(run.machines, run.results), MACHINE_COLUMNS))
    paths[2].write_text(html.page("Run comparison", "\n".join(body), plain[0]),
                        encoding="utf-8")
    return paths


def regression_lines(comparison: Comparison, with_run: bool = True) -> list[str]:
    """One ``REGRESSION ...`` line per case that fails (with the run it failed in)."""
    lines = []
    for _, r in comparison.frame[comparison.frame["regression"]].iterrows():
        where = f"{r['run_b']}: " if with_run else ""
        lines.append(f"REGRESSION {where}{r['layer']}/{r['impl']}+{r['compile']} {r['device']} "
                     f"{r['dtype']} {r['mode']} {r['case']}: {r['verdict']} "
                     f"(x{r['ratio']:.3g}) {r['note']}")
    return lines


def compare(runs: list[Path], basis: str, threshold: float, alpha: float,
            out: Path | None) -> int:
    """The ``compare`` command: compare each of ``runs[1:]`` with ``runs[0]``, write the files
    to ``out`` (default ``results/<time>-compare``), print the verdicts; exit 1 on a
    regression."""
    comparison = compare_runs(runs, basis=basis, threshold=threshold, alpha=alpha)
    try:
        out_dir = out if out is not None else new_run_dir(Path("results"), "compare")
        paths = write_comparison(comparison, out_dir)
    except OSError as exc:
        raise UsageError(f"cannot write the comparison ({exc.strerror or exc})") from None
    counts = comparison.frame["verdict"].value_counts()
    lines = [*(f"load {_role(i)} {run.label}: {load_text(run.meta)}"
               for i, run in enumerate(comparison.runs)),
             f"basis: {comparison.basis}; " + ", ".join(
                 f"{verdict} {n}" for verdict, n in counts.items()),
             *regression_lines(comparison), f"comparison: {paths[2]}"]
    for line in lines:
        say(line)
    return EXIT_FAILED if comparison.regressions else EXIT_OK


def _machines(c: Comparison) -> str:
    """One line per run: where it ran and with what (the full record is in compare.html)."""
    keep = ("CPU", "versions", "git commit")
    lines = []
    for i, run in enumerate(c.runs):
        rows = dict(environment_rows(run.meta))
        gpus = [v for k, v in rows.items() if k.startswith("GPU")]
        what = "; ".join([*(rows[k] for k in keep if k in rows), *gpus,
                          f"load: {load_text(run.meta)}"])
        if machines_shown(run.results, run.meta):
            what += f"; cases ran on: {machines_line(run.machines, run.results)}"
        lines.append(f"- {_role(i)} `{run.label}`: {what}")
    return "\n".join(lines)


def _role(i: int) -> str:
    return "A" if i == 0 else "B"


def _summary(c: Comparison) -> list[str]:
    runs = ", ".join(f"`{r.label}`" for r in c.runs[1:])
    basis = {"relative": "relative: each time divided by the same run's eager builtin",
             "absolute": "absolute (seconds)",
             "relative and absolute": "relative to the builtin, and in seconds: slower only "
                                      "where both agree"}.get(c.basis, c.basis)
    result = (f"**{c.regressions} regression(s).**" if c.regressions else "**No regression.**")
    return [f"Baseline A: `{c.runs[0].label}`; compared with it: {runs}. Basis: {basis}.",
            f"A case is slower/faster when its median moves by more than max({c.threshold:.0%}, "
            f"3 x its noise) and the one-sided Mann-Whitney U test gives p < {c.alpha:g}; a "
            "large change without significance is suspicious, and so is any change of a case "
            "that either run timed unstable (missed its precision or ran under interference).",
            *c.notes, result]


COUNT_COLUMNS = [Col("run_b", "run B"), *(Col(v, v, "int") for v in VERDICT_COLORS),
                 Col("regressions", "regressions", "int")]
GEO_COLUMNS = [Col("run_b", "run B"), Col("layer", "layer"), Col("variant", "implementation"),
               Col("cases", "cases", "int"),
               Col("geomean_ratio", "B / A (geomean)", "num", "geometric mean of the ratios: "
                   "above 1, B is slower"),
               Col("min_ratio", "lowest", "num"), Col("max_ratio", "highest", "num"),
               Col("slower", "slower", "int"), Col("faster", "faster", "int")]


def _columns(c: Comparison) -> list[Col]:
    """How the case tables of a comparison read (``_view``'s columns)."""
    relative = [Col("rel_a", "A / builtin", "num"), Col("rel_b", "B / builtin", "num")]
    machines = [Col("machine_a", "machine A"), Col("machine_b", "machine B")]
    return [*([Col("run_b", "run B")] if len(c.runs) > 2 else []),
            Col("variant", "implementation"), Col("case", "size"), Col("layer", "layer"),
            Col("setting", "setting", tip="device, dtype, mode"),
            *(machines if any(machines_shown(r.results, r.meta) for r in c.runs) else []),
            Col("status_a", "status A"), Col("status_b", "status B"),
            Col("median_a_ms", "A median", "ms"), Col("median_b_ms", "B median", "ms"),
            *(relative if c.basis == "relative" else []),
            Col("ratio", "B / A", "num", "ratio of medians with its 95% bootstrap interval: "
                "above 1, B is slower", interval=("ci_lo", "ci_hi")),
            Col("p_value", "p", "num", "one-sided Mann-Whitney U"),
            Col("threshold_used", "threshold", "pct"), Col("verdict", "verdict"),
            Col("note", "note")]


def _counts(c: Comparison) -> pd.DataFrame:
    counts = pd.crosstab(c.frame["run_b"], c.frame["verdict"])
    counts = counts.reindex(columns=list(VERDICT_COLORS), fill_value=0).reset_index()
    counts.columns.name = None
    counts["regressions"] = c.frame.groupby("run_b")["regression"].sum().to_numpy(int)
    return counts


def _sections(c: Comparison, limit: int | None = TABLE_ROWS) -> list[tuple[str, pd.DataFrame,
                                                                             int]]:
    """(title, rows to show, row count) for regressions, improvements and suspicious cases."""
    f = c.frame
    fixed = (f["verdict"] == "correctness changed") & ~f["regression"]
    picks = [("Regressions", f[f["regression"]], False),
             ("Improvements", f[(f["verdict"] == "faster") | fixed], True),
             ("Suspicious", f[f["verdict"] == "suspicious"], False)]
    out = []
    for title, rows, ascending in picks:
        if len(rows):
            rows = rows.sort_values("ratio", ascending=ascending, na_position="first")
            out.append((title, _view(rows.head(limit) if limit else rows), len(rows)))
    return out


def _view(rows: pd.DataFrame) -> pd.DataFrame:
    """Comparison rows with ``variant`` (impl + compile) and ``setting`` (device dtype mode)."""
    return rows.assign(variant=variants(rows),
                       setting=rows[["device", "dtype", "mode"]].agg(" ".join, axis=1)
                       if len(rows) else [])


def _geo_view(c: Comparison) -> pd.DataFrame:
    columns = [col for col in GEOMEAN_COLUMNS if col not in ("impl", "compile")]
    return c.geomeans[columns if len(c.runs) > 2 else columns[1:]]


def plot_ratios(c: Comparison, path: Path) -> None:
    """Ratio per case (log x) with CI bars, coloured by verdict; one panel per later run."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    f = c.frame[np.isfinite(c.frame["ratio"].astype(float))].copy()
    devices = f["device"] if f["device"].nunique() > 1 else [""] * len(f)
    f["label"] = [" ".join(filter(None, (layer, variant(i, m), dev, dt, mode, case)))
                  for layer, i, m, dev, dt, mode, case in zip(
                      f["layer"], f["impl"], f["compile"], devices, f["dtype"], f["mode"],
                      f["case"], strict=True)]
    f["log"] = np.log(f["ratio"].astype(float))
    f["flag"] = f["verdict"] != "same"
    score = f.groupby("label").agg(flag=("flag", "max"), size=("log", lambda s: s.abs().max()),
                                   mean=("log", "mean"))
    shown = score.sort_values(["flag", "size"], ascending=False).head(FIGURE_ROWS)
    labels = list(shown.sort_values("mean").index)  # most slowed-down at the top
    position = {label: i for i, label in enumerate(labels)}
    runs_b = [r.label for r in c.runs[1:]]
    fig, axes = plt.subplots(1, len(runs_b), sharey=True, squeeze=False,
                             figsize=(3.5 + 4.5 * len(runs_b), 1.8 + 0.22 * max(len(labels), 3)))
    band = (1 / (1 + c.threshold), 1 + c.threshold)
    lo, hi = _limits(f, band)
    for ax, run_b in zip(axes[0], runs_b, strict=True):
        ax.axvspan(*band, color="#e6e6e6", zorder=0, label=f"±{c.threshold:.0%}")
        ax.axvline(1.0, color="#555555", lw=0.8, zorder=1)
        sub = f[(f["run_b"] == run_b) & f["label"].isin(position)]
        for verdict, g in sub.groupby("verdict"):
            ratio = g["ratio"].to_numpy(float)
            err = np.nan_to_num(np.abs([ratio - g["ci_lo"].to_numpy(float),
                                        g["ci_hi"].to_numpy(float) - ratio]))
            ax.errorbar(ratio, g["label"].map(position), xerr=err, fmt="o", ms=4, capsize=2,
                        color=VERDICT_COLORS.get(verdict, "#000000"), label=verdict, zorder=2)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator(_ticks(lo, hi)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("median ratio B / A (> 1: B slower)")
        ax.set_title(f"{run_b}\nvs {c.runs[0].label}", fontsize=9)
        ax.grid(axis="x", color="#dddddd", lw=0.5)
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0][0].set_ylim(-0.7, max(len(labels), 1) - 0.3)
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles),
               fontsize=8, frameon=False)
    top = 1.0
    if len(score) > len(labels):
        fig.suptitle(f"{len(labels)} of {len(score)} cases: the changed and the most moved",
                     fontsize=9)
        top = 1.0 - 0.35 / fig.get_figheight()
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, top))  # room for the legend
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _limits(f: pd.DataFrame, band: tuple[float, float]) -> tuple[float, float]:
    """x range: every ratio and the band, widened for the intervals but at most 3x further."""
    def finite(values: Any) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        return v[np.isfinite(v) & (v > 0)]

    core = np.concatenate([finite(f["ratio"]), band])
    lo, hi = core.min() / 1.2, core.max() * 1.2
    ci_lo, ci_hi = finite(f["ci_lo"]), finite(f["ci_hi"])
    if len(ci_lo):
        lo = max(min(lo, ci_lo.min() / 1.05), lo / 3)
    if len(ci_hi):
        hi = min(max(hi, ci_hi.max() * 1.05), hi * 3)
    return lo, hi


def _ticks(lo: float, hi: float) -> list[float]:
    """Round ratios from ``TICKS`` inside (lo, hi), 1 always, thinned to about 8 labels."""
    spacing = math.log(hi / lo) / 8
    picked = [1.0]
    for side in ([t for t in TICKS if t > 1], [t for t in reversed(TICKS) if t < 1]):
        last = 1.0
        for t in side:
            if lo <= t <= hi and abs(math.log(t / last)) >= spacing:
                picked.append(t)
                last = t
    return sorted(picked)

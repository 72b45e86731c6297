"""The tables of a run's report, as frames, and how each of their columns reads.

``report.html`` and ``report.md`` show the same tables: per layer the implementations (speed
against the builtin, growth, roofline), the fastest per size, the cases that need a second
look, the failures and skips, and where a profiled case spends its time. Where a run's cases
ran on several machines, the implementations, the growth and the fastest per size are each
machine's (a ``machine`` column): times of different machines are not fitted or ranked
together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.analysis import best_per_size, growth_exponents, marks, measured
from reports.columns import Col, results_columns
from reports.meta import per_machine, several_machines
from reports.schema import STATUSES
from reports.style import Palette, variants
from reports.verdict import speeds

SETTING = ["device", "dtype", "mode"]
KEY = ["layer", "impl", "compile", *SETTING, "case"]


def status_counts(results: pd.DataFrame) -> pd.DataFrame:
    """Cases per layer and status (every status a column, zeros included)."""
    counts = pd.crosstab(results["layer"], results["status"]).reindex(
        columns=list(STATUSES), fill_value=0)
    counts.insert(0, "cases", counts.sum(axis=1))
    counts = counts.reindex(pd.unique(results["layer"])).reset_index()
    counts.columns.name = None
    return counts


def variant_summary(results: pd.DataFrame, split: bool | None = None) -> pd.DataFrame:
    """Per variant and setting (and ``machine`` where ``split``; default: where the rows ran on
    several): cases, correct ones, geometric-mean speedup vs the builtin with its 95% interval
    (``reports.verdict``), growth exponent (NaN below three sizes), best roofline fraction, the
    range of its times (smallest to largest size), correct sizes marked unstable (``~``) or
    flagged implausible (``!``)."""
    split = several_machines(results) if split is None else split
    by = ["impl", "compile", *SETTING, *(["machine"] if split else [])]
    exponents = per_machine(results, growth_exponents, split).set_index(by)["exponent"]
    rows = []
    timed = measured(results)
    for key, group in results.groupby(by, sort=False):
        ok = timed.loc[timed.index.intersection(group.index)]
        ok = ok[ok["status"] == "ok"]
        speed = speeds(group)
        judged = ok["stable"].notna().any()  # runs before stability was judged: unknown
        by_size = ok.sort_values("flops", kind="stable")["median_ms"]
        rows.append({
            "variant": variants(group.iloc[:1])[0], "setting": " ".join(key[2:5]),
            **({"machine": key[5]} if split else {}),
            "cases": len(group), "ok": int((group["status"] == "ok").sum()),
            "speedup_vs_builtin": speed[0].speedup if speed else np.nan,
            "speedup_lo": speed[0].lo if speed and not speed[0].builtin else np.nan,
            "speedup_hi": speed[0].hi if speed and not speed[0].builtin else np.nan,
            "growth_exponent": exponents.get(key, np.nan),
            "best_roofline_frac": ok["roofline_frac"].max() if len(ok) else np.nan,
            "first_ms": by_size.iloc[0] if len(ok) else np.nan,
            "last_ms": by_size.iloc[-1] if len(ok) else np.nan,
            "unstable": int((ok["stable"] == 0).sum()) if judged else np.nan,
            "flagged": int(marks(ok).str.contains("!", regex=False).sum()) if judged
            else np.nan,
        })
    return pd.DataFrame(rows)


VARIANT_COLUMNS = [
    Col("variant", "implementation"), Col("setting", "setting", tip="device, dtype, mode"),
    Col("cases", "cases", "int"), Col("ok", "correct", "int", "cases correct and timed"),
    Col("speedup_vs_builtin", "vs builtin", "x",
        "geometric mean over its correct sizes of how many times faster than the eager "
        "builtin, with its 95% interval", interval=("speedup_lo", "speedup_hi")),
    Col("growth_exponent", "growth", "num",
        "log-log slope of time vs FLOPs (3 sizes or more): ~1 time grows with the work, "
        "well below 1 fixed costs dominate", empty="n/a"),
    Col("best_roofline_frac", "best of roofline", "pct"),
    Col("first_ms", "smallest size", "ms", "median time at its smallest correct size"),
    Col("last_ms", "largest size", "ms", "median time at its largest correct size"),
    Col("unstable", "unstable", "int", "correct sizes marked ~"),
    Col("flagged", "flagged", "int", "correct sizes marked !"),
]


def marked(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``variant`` (marked ``~`` unstable, ``!`` flagged) and ``setting``; a mark
    without flags gets ``unstable`` as its ``flags``, so every mark has its note."""
    mark = marks(rows)
    flags = rows["flags"].where((rows["flags"] != "") | (mark == ""), "unstable")
    return rows.assign(variant=mark + pd.Series(variants(rows), index=rows.index, dtype=object),
                       setting=setting_of(rows), flags=flags)


def setting_of(rows: pd.DataFrame) -> pd.Series | list[str]:
    return rows[SETTING].agg(" ".join, axis=1) if len(rows) else []


def best_table(rows: pd.DataFrame, split: bool | None = None) -> pd.DataFrame:
    """The fastest correct implementation per size (per machine where ``split``), as the report
    shows it."""
    best = per_machine(rows, best_per_size, split)
    machine = ["machine"] if "machine" in best else []
    return best.assign(setting=setting_of(best))[
        ["setting", *machine, "case", "verdict", "median_ms", "ci_lo_ms", "ci_hi_ms",
         "speedup_vs_builtin", "speedup_lo", "speedup_hi", "gflops", "runner_up",
         "runner_up_ratio", "flags"]]


BEST_COLUMNS = [
    Col("setting", "setting"), Col("case", "size"),
    Col("verdict", "fastest", tip="named where its 95% interval ends below the runner-up's, "
        "else a tie of those whose intervals overlap"),
    *results_columns(["median_ms", "speedup_vs_builtin", "gflops"]),
    Col("runner_up", "runner-up"),
    Col("runner_up_ratio", "runner-up slower by", "x", "runner-up's median / the fastest's"),
]

UNSTABLE_COLUMNS = results_columns(["variant", "setting", "case", "median_ms", "precision",
                                    "busy_cores", "flags"])
PROBLEM_COLUMNS = results_columns(["variant", "setting", "case", "status", "reason"])
PROFILE_COLUMNS = [
    *results_columns(["variant", "setting", "case", "median_ms"]),
    Col("profiled_ms", "under the profiler", "ms",
        "self time of every operator per call (on a GPU: of every kernel)"),
    Col("op_calls", "operators per call", "int"),
    Col("peak_mem_mib", "peak memory", "mib", "most memory a call holds beyond its inputs"),
    Col("top_op", "top operator"), Col("top_share", "its share", "pct"),
]


def layer_summary(rows: pd.DataFrame, profiled: pd.DataFrame, order: Palette,
                  split: bool | None = None) -> dict[str, pd.DataFrame]:
    """One layer's tables: ``variants``, ``best``, ``unstable``, ``problems``, ``profile``;
    ``split``: per machine (default: where ``rows`` ran on several)."""
    problems = marked(rows[rows["status"] != "ok"])
    ok = rows[rows["status"] == "ok"]
    shaky = marked(ok[marks(ok) != ""])
    extra = ["stable", "flags", *(["machine"] if "machine" in rows else [])]
    profiled = marked(profiled.merge(rows[[*KEY, *extra]], on=KEY, how="left")
                      .fillna({"flags": ""}))
    if len(profiled):  # the run's order of implementations, then smallest size first
        rank = {impl: i for i, impl in enumerate(order.sorted(profiled["impl"]))}
        flops = rows.groupby("case")["flops"].min()
        profiled = profiled.assign(_i=profiled["impl"].map(rank),
                                   _f=profiled["case"].map(flops)).sort_values(
            ["setting", "_i", "compile", "_f"], kind="stable")
    return {"variants": variant_summary(rows, split), "best": best_table(rows, split),
            "problems": problems, "unstable": shaky, "profile": profiled}

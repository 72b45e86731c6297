"""The analysis half of ``benchmarks/interference.py``: read its runs, measure the goals,
write the Markdown. Pure: it only reads run directories and the record the runner kept."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

KEY = ("layer", "impl", "compile", "device", "dtype", "mode", "case")
SIZE = ("layer", "device", "dtype", "mode", "case")
TIMED = ("ok", "incorrect")
OFF = 0.10  # a speedup further than this from the quiet reference is wrong unless flagged
GOAL_WRONG_PCT, GOAL_AGREE_PCT = 2.0, 95.0

Record = dict[str, Any]
Loaded = tuple[pd.DataFrame, frozenset[str], dict[str, Any]]  # results, its columns, meta


# ---------------------------------------------------------------------------- reading

def read_results(run_dir: Path) -> tuple[pd.DataFrame, frozenset[str]]:
    """``results.csv`` with every column this script reads (absent ones NaN), and the set of
    columns the file really has (runs made before the change lack the new ones; none: a
    run that wrote no results)."""
    path = run_dir / "results.csv"
    if not path.is_file() or not path.stat().st_size:
        frame, present = pd.DataFrame(columns=[*KEY, "status"]), frozenset[str]()
    else:
        frame = pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"],
                            dtype={c: str for c in (*KEY, "status", "flags")})
        present = frozenset(frame.columns)
    for column in ("median_ms", "ci_lo_ms", "ci_hi_ms", "speedup_vs_builtin", "stable"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in present \
            else math.nan
    frame["flags"] = frame["flags"].fillna("").astype(str) if "flags" in present else ""
    frame["flagged"] = (frame["stable"] == 0) | (frame["flags"].str.strip() != "")
    frame["timed"] = frame["status"].isin(TIMED)
    frame["builtin"] = (frame["impl"] == "builtin") & (frame["compile"] == "none")
    return frame, present


def _load(run: Record, root: Path) -> Loaded:
    run_dir = root / str(run.get("run_dir"))  # None: a missing directory, no results
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if run.get("run_dir") and meta_path.is_file() \
        else {}
    frame, present = read_results(run_dir)
    return frame, present, meta


def _slower(run: Record, root: Path) -> int | None:
    """``slower`` verdicts in the run's comparison with quiet run 1 (None: not compared)."""
    path = root / str(run.get("compare_dir")) / "compare.csv"
    if run.get("compare_dir") is None or not path.is_file():
        return None
    return int((pd.read_csv(path, keep_default_na=False)["verdict"] == "slower").sum())


# ---------------------------------------------------------------------------- analysis

def quiet_reference(frames: list[pd.DataFrame]) -> pd.Series:
    """Per case key: the median over the quiet runs of its speedup vs the builtin."""
    rows = [f[f["timed"] & ~f["builtin"] & f["speedup_vs_builtin"].notna()] for f in frames]
    rows = [r for r in rows if len(r)]
    if not rows:
        return pd.Series(dtype=float)
    return pd.concat(rows).groupby(list(KEY))["speedup_vs_builtin"].median()


def confidently_wrong(frame: pd.DataFrame, reference: pd.Series) -> tuple[int, int, pd.DataFrame]:
    """Cases compared, cases off by more than ``OFF``, and the off ones that carry no flag."""
    rows = frame[frame["timed"] & ~frame["builtin"] & frame["speedup_vs_builtin"].notna()]
    ref = pd.Series([reference.get(tuple(k), math.nan) for k in rows[list(KEY)].values],
                    index=rows.index, dtype=float)
    rows = rows.assign(quiet_speedup=ref)[ref.notna()]
    off = (rows["speedup_vs_builtin"] / rows["quiet_speedup"] - 1).abs() > OFF
    wrong = rows[off & ~rows["flagged"]]
    return len(rows), int(off.sum()), wrong


def best_per_size(frame: pd.DataFrame) -> dict[tuple[str, ...], tuple[str, bool]]:
    """Per size: the correct timed variant with the smallest median, and whether its interval
    lies below the runner-up's (a missing interval: not separated, a tie)."""
    rows = frame[(frame["status"] == "ok") & frame["median_ms"].notna()]
    found = {}
    for size, group in rows.groupby(list(SIZE)):
        if len(group) < 2:
            continue
        best, second = group.nsmallest(2, "median_ms").to_dict("records")
        separated = bool(best["ci_hi_ms"] < second["ci_lo_ms"])  # NaN compares False
        found[tuple(size)] = (f"{best['impl']}+{best['compile']}", separated)
    return found


def best_agreement(quiet: list[pd.DataFrame], loaded: list[pd.DataFrame]) -> Record:
    """Over the sizes every quiet run separates and agrees on: the loaded runs that name the
    same best or a tie (``fraction`` None without intervals or such sizes)."""
    quiet_best = [best_per_size(f) for f in quiet]
    sizes = set().union(*quiet_best) if quiet_best else set()
    chosen = {s: quiet_best[0][s][0] for s in sizes
              if all(s in q and q[s][1] for q in quiet_best)
              and len({q[s][0] for q in quiet_best}) == 1}
    pairs = agree = 0
    disagreements = []
    for i, frame in enumerate(loaded):
        for size, (best, separated) in best_per_size(frame).items():
            if size in chosen:
                pairs += 1
                agree += best == chosen[size] or not separated
                if separated and best != chosen[size]:
                    disagreements.append({"run": i, "size": "/".join(size), "quiet": chosen[size],
                                          "loaded": best})
    return {"sizes": len(sizes), "sizes_separated": len(chosen), "pairs": pairs, "agree": agree,
            "fraction": agree / pairs if pairs else None, "disagreements": disagreements}


def _warning(meta: dict[str, Any]) -> bool | None:
    load = meta.get("load")
    return bool(load.get("warning")) if isinstance(load, dict) else None


def _recorded(data: list[Loaded], columns: set[str], which: Any) -> bool:
    """Whether every run with results has ``which`` (any, all) of ``columns``."""
    present = [p for _, p, _ in data if p]
    return bool(present) and all(which(c in p for c in columns) for p in present)


def _group(layer: str, load: int, runs: list[Record], data: list[Loaded], quiet: list[Loaded],
           root: Path) -> Record:
    """The figures of one layer at one load level (``data``: its runs' files)."""
    frames = [f for f, _, _ in data]
    timed = sum(int(f["timed"].sum()) for f in frames)
    flags_known = _recorded(data, {"flags", "stable"}, any)
    flagged = sum(int((f["timed"] & f["flagged"]).sum()) for f in frames)
    warnings = [_warning(m) for _, _, m in data]
    slower = [_slower(r, root) for r in runs]
    group: Record = {
        "layer": layer, "load": load, "runs": len(runs),
        "run_dirs": [r["run_dir"] for r in runs], "exits": [r["exit"] for r in runs],
        "wall_s": [r["wall_s"] for r in runs],
        "wall_s_mean": sum(r["wall_s"] for r in runs) / len(runs) if runs else None,
        "timed_cases": timed, "flags_recorded": flags_known,
        "flagged": flagged if flags_known else None,
        "warning_known": sum(w is not None for w in warnings),
        "warning_fired": sum(bool(w) for w in warnings),
        "compared_runs": sum(s is not None for s in slower),
        "slower": sum(s for s in slower if s is not None),
        "busy_cores_mean": [(m.get("load") or {}).get("busy_cores_mean") for _, _, m in data],
        "compared_cases": None, "off": None, "confidently_wrong": None, "wrong_cases": [],
        "best": None}
    if load == 0:
        return group
    reference = quiet_reference([f for f, _, _ in quiet])
    wrong_rows = []
    compared = off = 0
    for run, frame in zip(runs, frames, strict=True):
        n, k, wrong = confidently_wrong(frame, reference)
        compared, off = compared + n, off + k
        wrong_rows += [{"run_dir": run["run_dir"], "case": "/".join(r[c] for c in KEY),
                        "speedup": r["speedup_vs_builtin"], "quiet_speedup": r["quiet_speedup"]}
                       for r in wrong.to_dict("records")]
    ci_known = _recorded(quiet, {"ci_lo_ms", "ci_hi_ms"}, all)
    group.update(compared_cases=compared, off=off,
                 confidently_wrong=len(wrong_rows) if flags_known else None,
                 wrong_cases=wrong_rows if flags_known else [],
                 best=best_agreement([f for f, _, _ in quiet], frames) if ci_known else None)
    return group


def _total(groups: list[Record]) -> Record:
    """Counts summed over ``groups`` (one load level or all loaded levels)."""
    def add(field: str) -> int | None:
        values = [g[field] for g in groups]
        return None if not values or None in values else sum(values)
    bests = [g["best"] for g in groups]
    best = None
    if bests and None not in bests:
        pairs, agree = sum(b["pairs"] for b in bests), sum(b["agree"] for b in bests)
        best = {"sizes": sum(b["sizes"] for b in bests),
                "sizes_separated": sum(b["sizes_separated"] for b in bests), "pairs": pairs,
                "agree": agree, "fraction": agree / pairs if pairs else None,
                "disagreements": [d for b in bests for d in b["disagreements"]]}
    walls = [w for g in groups for w in g["wall_s"]]
    return {"layer": "all", "load": groups[0]["load"] if groups else None,
            "runs": sum(g["runs"] for g in groups),
            "wall_s_mean": sum(walls) / len(walls) if walls else None,
            **{f: add(f) for f in ("timed_cases", "flagged", "warning_known", "warning_fired",
                                   "compared_runs", "slower", "compared_cases", "off",
                                   "confidently_wrong")},
            "flags_recorded": all(g["flags_recorded"] for g in groups), "best": best}


def analyse(runs: list[Record], checks: list[Record], root: Path) -> Record:
    """Every figure of the evidence from the run records (``run_dir``, ``compare_dir``:
    relative to ``root`` or absolute) and the gate checks' records; reads files, runs
    nothing."""
    loaded = {id(r): _load(r, root) for r in runs}
    layers = list(dict.fromkeys(r["layer"] for r in runs))
    loads = sorted({r["load"] for r in runs})
    groups = []
    for layer in layers:
        quiet = [loaded[id(r)] for r in runs if (r["layer"], r["load"]) == (layer, 0)]
        for load in loads:
            mine = sorted((r for r in runs if (r["layer"], r["load"]) == (layer, load)),
                          key=lambda r: r["index"])
            if mine:
                groups.append(_group(layer, load, mine, [loaded[id(r)] for r in mine], quiet,
                                     root))
    per_load = [_total([g for g in groups if g["load"] == load]) for load in loads]
    busy = _total([g for g in groups if g["load"] > 0])
    quiet = _total([g for g in groups if g["load"] == 0])
    gate = {"checks": len(checks), "false_alarms": sum(c["exit"] == 1 for c in checks),
            "other_exits": sum(c["exit"] not in (0, 1) for c in checks),
            "check_dirs": [c.get("check_dir") for c in checks]}
    return {"groups": groups, "per_load": per_load, "loaded": busy, "quiet": quiet,
            "gate": gate, "goals": goals(busy, quiet, gate)}


def goals(busy: Record, quiet: Record, gate: Record) -> list[Record]:
    """Goal, measured, met (True/False; None: not measured)."""
    wrong, cases = busy["confidently_wrong"], busy["compared_cases"]
    wrong_pct = 100 * wrong / cases if wrong is not None and cases else None
    best = busy["best"] or {}
    agree_pct = 100 * best["fraction"] if best.get("fraction") is not None else None
    slower = [g for g in (busy, quiet) if g["compared_runs"]]
    warn_known = bool(busy["warning_known"] and quiet["warning_known"])
    return [
        {"goal": f"confidently wrong loaded cases: 0, at most {GOAL_WRONG_PCT:g}%",
         "measured": (f"{wrong} of {cases} ({wrong_pct:.1f}%)" if wrong_pct is not None
                      else "n/a (no flags recorded)" if not busy["flags_recorded"]
                      else "n/a (no loaded case compared)"),
         "met": None if wrong_pct is None else wrong_pct <= GOAL_WRONG_PCT},
        {"goal": f"best implementation agrees under load (or a tie): >= {GOAL_AGREE_PCT:g}%",
         "measured": (f"{best['agree']} of {best['pairs']} ({agree_pct:.1f}%); "
                      f"{best['sizes_separated']} of {best['sizes']} sizes separated quietly"
                      if agree_pct is not None else "n/a (no intervals recorded)" if not best
                      else f"n/a (0 of {best['sizes']} sizes separated quietly)"),
         "met": None if agree_pct is None else agree_pct >= GOAL_AGREE_PCT},
        {"goal": "`slower` verdicts of compare vs quiet run 1 (loaded and A/A): 0",
         "measured": (f"{sum(g['slower'] for g in slower)} in "
                      f"{sum(g['compared_runs'] for g in slower)} comparisons"
                      if slower else "n/a"),
         "met": sum(g["slower"] for g in slower) == 0 if slower else None},
        {"goal": "busy warning in every loaded run, in no quiet run",
         "measured": (f"loaded {busy['warning_fired']}/{busy['warning_known']}, quiet "
                      f"{quiet['warning_fired']}/{quiet['warning_known']} (runs with a load "
                      "record)" if warn_known
                      else "n/a (no load record in meta.json)"),
         "met": (busy["warning_fired"] == busy["warning_known"] and not quiet["warning_fired"])
         if warn_known else None},
        {"goal": "gate A/A checks beside a busy loop: no false alarm",
         "measured": (f"{gate['false_alarms']} of {gate['checks']} failed"
                      + (f", {gate['other_exits']} other exits" if gate["other_exits"] else "")
                      if gate["checks"] else "n/a (--checks 0)"),
         "met": gate["false_alarms"] == 0 and not gate["other_exits"] if gate["checks"]
         else None},
        {"goal": "quiet wall time: no slower than before the change (`--wall-only --cli`)",
         "measured": _num(quiet["wall_s_mean"], " s per run"), "met": None},
    ]


# ---------------------------------------------------------------------------- Markdown

def _code(path: str | None) -> str:
    return f"`{path}`" if path else "—"


def _num(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


def _frac(k: int | None, n: int | None) -> str:
    return "n/a" if k is None or not n else f"{k} ({100 * k / n:.1f}%)"


def _row(g: Record) -> str:
    loaded = g["load"] != 0
    best = g["best"]
    agree = ("—" if not loaded else "n/a" if best is None else
             f"n/a (0 of {best['sizes']} sizes separated)" if not best["pairs"] else
             f"{best['agree']}/{best['pairs']} ({100 * best['fraction']:.0f}%), "
             f"{best['sizes_separated']}/{best['sizes']} sizes")
    wrong = ("—" if not loaded else "n/a" if g["confidently_wrong"] is None
             else _frac(g["confidently_wrong"], g["compared_cases"]))
    return " | ".join([
        str(g["load"]), str(g["runs"]), str(g["timed_cases"]),
        _frac(g["flagged"], g["timed_cases"]) if g["flags_recorded"] else "n/a",
        "—" if not loaded else _frac(g["off"], g["compared_cases"]), wrong, agree,
        f"{g['slower']} in {g['compared_runs']}" if g["compared_runs"] else "n/a",
        f"{g['warning_fired']}/{g['warning_known']}" if g["warning_known"] else "n/a",
        _num(g["wall_s_mean"])])


HEADER = ("| load | runs | timed cases | flagged | off >10% | confidently wrong | best agrees "
          "(runs, quiet sizes separated) | slower (comparisons) | busy warning | wall s |\n"
          "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")


def markdown(analysis: Record, runs: list[Record], checks: list[Record],
             config: Record | None = None) -> str:
    """Tables per layer and load level, the totals, the goals, and the runs behind them."""
    c = config or {}
    lines = ["# Timing under interference", ""]
    if c:
        lines += [f"`{c.get('cli')}` bench, preset {c.get('preset')}, {c.get('runs')} run(s) per "
                  f"layer and load level, threads {c.get('threads') or 'default'}; the load is "
                  "that many busy-loop processes beside each run.", ""]
    lines += [f"Against the quiet runs (load 0) of the same layer; off = speedup vs the builtin "
             f"more than {OFF:.0%} from the quiet median; confidently wrong = off and not "
             "flagged; flagged = `stable == 0` or a `flags` tag."]
    for layer in dict.fromkeys(g["layer"] for g in analysis["groups"]):
        lines += ["", f"## {layer}", "", HEADER]
        lines += [f"| {_row(g)} |" for g in analysis["groups"] if g["layer"] == layer]
    lines += ["", "## All layers", "", HEADER, *(f"| {_row(g)} |" for g in analysis["per_load"])]
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']} | "
              f"{'n/a' if g['met'] is None else 'yes' if g['met'] else 'no'} |"
              for g in analysis["goals"]]
    wrong = [w for g in analysis["groups"] for w in g["wrong_cases"]]
    if wrong:
        lines += ["", f"## Confidently wrong cases ({len(wrong)}; all in interference.json)", ""]
        lines += [f"- `{w['run_dir']}` {w['case']}: x{w['speedup']:.3g}, quiet "
                  f"x{w['quiet_speedup']:.3g}" for w in wrong[:20]]
    lines += ["", "## Runs", "", "| layer | load | # | exit | wall s | run directory | compare |",
              "|---|---:|---:|---:|---:|---|---|"]
    lines += [f"| {r['layer']} | {r['load']} | {r['index']} | {r['exit']} | {r['wall_s']} | "
              f"`{r['run_dir']}` | {_code(r.get('compare_dir'))} |" for r in runs]
    if checks:
        lines += ["", "Gate checks (one busy loop each): " + "; ".join(
            f"#{c['index']} exit {c['exit']} `{c['check_dir']}`" for c in checks)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- command line

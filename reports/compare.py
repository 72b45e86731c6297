"""Compare runs: match cases, test each for a change, and give each a verdict.

The first run is the baseline A; every later run B is compared with it. Two bases:

- ``absolute``: seconds against seconds, cases matched on every key column;
- ``relative``: each case's samples divided by the median of the eager builtin (same layer,
  device, dtype, mode and case) of the same run and machine, so runs from different machines or
  devices compare. When each run holds a single device, cases match ignoring ``device`` (a CPU run
  against a CUDA run). The builtin rows are the unit of this basis (1.0 by definition) and are
  left out of the verdicts.

``auto`` picks relative when the runs' devices differ, or when any case both runs timed ran on
different machines in each (the records of the rows' ``machine`` in ``machines.json``: host,
CPU model, GPU names); a run spread over a cluster compared with one on the same machines stays
absolute.
A case slower or faster in a run disturbed by other processes (``interference``), or by less
than the runs' imprecision allows, is ``suspicious`` (``unstable`` says why): worth a
re-measurement, never a regression.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.meta import machine_identity
from reports.schema import (
    BASELINE_IMPL,
    FAILED,
    KEY_COLUMNS,
    TIMED,
    RunDataError,
    is_baseline,
    load_machines,
    load_run,
    load_samples,
)
from reports.stats import (
    classify,
    effect_threshold,
    geomean,
    mann_whitney_greater,
    ratio_ci,
    relative_noise,
)
from reports.style import variant

BASES = ("auto", "absolute", "relative")
UNTIMED_FLAGGED = ("oom", "timeout", "error")  # losing (or gaining) a time to these is suspicious
REF_KEY = ("layer", "device", "dtype", "mode", "case")
COLUMNS = [*KEY_COLUMNS, "run_a", "run_b", "status_a", "status_b", "median_a_ms", "median_b_ms",
           "ratio", "ci_lo", "ci_hi", "p_value", "noise", "threshold_used", "verdict", "note",
           "regression", "n_a", "n_b", "rel_a", "rel_b", "unstable", "machine_a", "machine_b"]
GEOMEAN_COLUMNS = ["run_b", "layer", "impl", "compile", "variant", "cases", "geomean_ratio",
                   "min_ratio", "max_ratio", "slower", "faster"]


@dataclass(frozen=True)
class Run:
    """One loaded run directory; ``samples`` maps the full case key to seconds per call;
    ``machines``: its ``machines.json`` (key of a row's ``machine`` -> record)."""

    path: Path
    label: str
    meta: dict[str, Any]
    results: pd.DataFrame = field(repr=False)
    samples: dict[tuple[str, ...], np.ndarray] = field(repr=False)
    machines: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)


@dataclass
class Comparison:
    """Every later run against the first: one ``frame`` row per case and later run.

    ``frame`` has ``COLUMNS``; ``ratio`` is B / A of medians (seconds, or multiples of the
    builtin in the relative basis), ``threshold_used`` the relative change a case had to exceed.
    ``regressions`` counts slower cases plus ok -> incorrect/error cases.
    """

    frame: pd.DataFrame
    geomeans: pd.DataFrame
    runs: list[Run]
    basis: str
    threshold: float
    alpha: float
    regressions: int
    notes: list[str]


def compare_runs(run_dirs: list[Path], basis: str = "auto", threshold: float = 0.10,
                 alpha: float = 0.01,
                 noise: Mapping[tuple[str, ...], float] | None = None) -> Comparison:
    """Compare ``run_dirs[1:]`` with ``run_dirs[0]``; ``RunDataError`` on unusable input.

    ``noise`` (case key -> relative run-to-run noise, e.g. measured A/A for a baseline) raises
    a case's noise estimate above what its own samples show.
    """
    if len(run_dirs) < 2:
        raise RunDataError(f"compare needs at least two run directories, got {len(run_dirs)}")
    if basis not in BASES:
        raise RunDataError(f"unknown basis {basis!r}: choose one of {', '.join(BASES)}")
    runs = _dedupe([load(Path(p)) for p in run_dirs])
    if basis == "auto":
        basis = _auto_basis(runs)
    single = all(r.results["device"].nunique() == 1 for r in runs)
    keys = [c for c in KEY_COLUMNS if not (basis == "relative" and single and c == "device")]
    rows, notes = [], []
    base = runs[0]
    for other in runs[1:]:
        pair = _compare_pair(base, other, keys, basis, threshold, alpha, noise or {})
        if basis == "relative":
            if not any(math.isfinite(r.get("ratio", math.nan)) for r in pair) and any(
                    r["note"].startswith("not compared") for r in pair):
                raise RunDataError(f"no case of {other.label} can be compared with "
                                   f"{base.label} relative to the builtin: a run has no timed "
                                   "eager builtin for the cases they share")
            notes.append(_reference_note(base, other, keys))
        rows += pair
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if basis == "absolute":
        frame = _shared_shifts(frame, threshold)
    return Comparison(frame=frame, geomeans=geomeans(frame), runs=runs, basis=basis,
                      threshold=threshold, alpha=alpha,
                      regressions=int(frame["regression"].sum()), notes=notes)


def load(path: Path) -> Run:
    """A run directory with its samples indexed by case key."""
    results, meta = load_run(path)
    results = results.astype({c: str for c in KEY_COLUMNS})
    machines = load_machines(path, meta)
    timed = int((results["status"].isin(TIMED) & (results["n_samples"] > 0)).sum())
    if not timed:  # nothing to read (and a header-only samples.csv has no numeric column)
        return Run(path, str(meta.get("run_id") or path.name), meta, results, {}, machines)
    samples = load_samples(path).astype({**{c: str for c in KEY_COLUMNS}, "seconds": float})
    samples = samples[np.isfinite(samples["seconds"]) & (samples["seconds"] > 0)]
    index = {tuple(k): g.to_numpy(float) for k, g in samples.sort_values("sample", kind="stable")
             .groupby(list(KEY_COLUMNS), sort=False)["seconds"]}
    if not index:
        raise RunDataError(f"{path / 'samples.csv'}: missing or empty, but results.csv has "
                           f"{timed} timed case(s)")
    return Run(path, str(meta.get("run_id") or path.name), meta, results, index, machines)


def _dedupe(runs: list[Run]) -> list[Run]:
    """Give runs that share a run id distinct labels (``id``, ``id#2``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        label = run.label if seen[run.label] == 1 else f"{run.label}#{seen[run.label]}"
        out.append(replace(run, label=label))
    return out


def _auto_basis(runs: list[Run]) -> str:
    """``relative`` where the runs' devices differ or a case both the first and a later run
    timed ran on different machines in each; else ``absolute``."""
    base = runs[0]
    if len({tuple(sorted(r.results["device"].unique())) for r in runs}) > 1:
        return "relative"
    rows_a = _index(base, list(KEY_COLUMNS), "absolute")
    for other in runs[1:]:
        for key, rb in _index(other, list(KEY_COLUMNS), "absolute").items():
            ra = rows_a.get(key)
            if ra is not None and (machine_identity(base.machines, ra["machine"])
                                   != machine_identity(other.machines, rb["machine"])):
                return "relative"
    return "absolute"


def _references(run: Run) -> dict[tuple[str, ...], float]:
    """Median seconds of each timed eager builtin, by (layer, device, dtype, mode, case,
    machine): a case is divided by the builtin it ran with."""
    out = {}
    for row in run.results.to_dict("records"):
        if is_baseline(row["impl"], row["compile"]) and row["status"] in TIMED:
            values = run.samples.get(tuple(row[c] for c in KEY_COLUMNS))
            median = float(np.median(values)) if values is not None else row["median_ms"] / 1e3
            if median > 0:
                out[(*(row[c] for c in REF_KEY), row["machine"])] = median
    return out


def _index(run: Run, keys: list[str], basis: str) -> dict[tuple[str, ...], dict[str, Any]]:
    rows = run.results.to_dict("records")
    return {tuple(r[c] for c in keys): r for r in rows
            if not (basis == "relative" and is_baseline(r["impl"], r["compile"]))}


def _compare_pair(a: Run, b: Run, keys: list[str], basis: str, threshold: float,
                  alpha: float, noise: Mapping[tuple[str, ...], float]) -> list[dict[str, Any]]:
    rows_a, rows_b = _index(a, keys, basis), _index(b, keys, basis)
    if not rows_a.keys() & rows_b.keys():
        raise RunDataError(_nothing_in_common(a, b, basis))
    refs = (_references(a), _references(b)) if basis == "relative" else None
    order = list(rows_a) + [k for k in rows_b if k not in rows_a]
    return [_case(rows_a.get(k), rows_b.get(k), a, b, refs, threshold, alpha, noise)
            for k in order]


def _nothing_in_common(a: Run, b: Run, basis: str) -> str:
    for column in ("layer", "device", "dtype", "mode", "impl", "compile"):
        va, vb = (sorted(set(r.results[column])) for r in (a, b))
        if not set(va) & set(vb):
            return (f"no cases in common ({basis} basis): {a.label} has {column} "
                    f"{', '.join(va)}; {b.label} has {', '.join(vb)}")
    return f"no cases in common ({basis} basis) between {a.label} and {b.label}"


def _values(run: Run, row: dict[str, Any],
            refs: dict[tuple[str, ...], float] | None) -> tuple[np.ndarray | None, str]:
    """The samples to compare (seconds or multiples of the builtin), or None and why not."""
    if row["status"] not in TIMED or not row["median_ms"] > 0:
        return None, f"{row['status']}" + (f" ({row['reason']})" if _text(row["reason"]) else "")
    values = run.samples.get(tuple(row[c] for c in KEY_COLUMNS))
    if values is None:  # a row without samples still has its median: one value
        values = np.array([row["median_ms"] / 1e3])
    if refs is None:
        return values, ""
    ref = refs.get((*(row[c] for c in REF_KEY), row["machine"]))
    if ref is None:
        return None, f"no timed eager builtin on its machine in {run.label}"
    return values / ref, ""


def _median_ms(run: Run, row: dict[str, Any] | None) -> float:
    """Median of the raw samples (as compared), else the one in results.csv."""
    values = None if row is None else run.samples.get(tuple(row[c] for c in KEY_COLUMNS))
    return float(np.median(values)) * 1e3 if values is not None else _get(row, "median_ms")


def _get(row: dict[str, Any] | None, column: str, default: Any = math.nan) -> Any:
    return default if row is None else row[column]


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _case(ra: dict[str, Any] | None, rb: dict[str, Any] | None, a: Run, b: Run,
          refs: tuple[dict, dict] | None, threshold: float, alpha: float,
          noise: Mapping[tuple[str, ...], float]) -> dict[str, Any]:
    either = ra if ra is not None else rb
    row: dict[str, Any] = {c: either[c] for c in KEY_COLUMNS}
    if ra is not None and rb is not None and ra["device"] != rb["device"]:
        row["device"] = f"{ra['device']}->{rb['device']}"
    row.update(run_a=a.label, run_b=b.label, regression=False, note="", unstable="",
               machine_a=_get(ra, "machine", ""), machine_b=_get(rb, "machine", ""),
               status_a=_get(ra, "status", ""), status_b=_get(rb, "status", ""),
               median_a_ms=_median_ms(a, ra), median_b_ms=_median_ms(b, rb),
               n_a=_get(ra, "n_samples"), n_b=_get(rb, "n_samples"))
    if ra is None or rb is None:
        row["verdict"] = "new" if ra is None else "missing"
        row["note"] = f"only in {b.label if ra is None else a.label} ({either['status']})"
        return row
    sa, sb = ra["status"], rb["status"]
    va, why_a = _values(a, ra, refs[0] if refs else None)
    vb, why_b = _values(b, rb, refs[1] if refs else None)
    verdict, note = "same", ""
    if va is not None and vb is not None:
        floor = noise.get(tuple(ra[c] for c in KEY_COLUMNS), 0.0)
        verdict, note = _timing(row, va, vb, threshold, alpha, floor)
        unstable = _unstable(a, ra, b, rb, row["ratio"])
        row["unstable"] = unstable
        if unstable and verdict in ("slower", "faster"):
            verdict, note = "suspicious", f"{row['ratio']:.3g}x, but {unstable}" + (
                f"; {note}" if note else "")
        if refs:
            row["rel_a"], row["rel_b"] = float(np.median(va)), float(np.median(vb))
    elif sa in TIMED and sb in TIMED:  # timed, but no builtin to divide by
        note = f"not compared: {why_a or why_b}"
    elif va is None and vb is None:
        note = f"not timed: {why_a}" + (f" -> {why_b}" if why_b != why_a else "")
    else:
        untimed = sb if vb is None else sa
        verdict = "suspicious" if untimed in UNTIMED_FLAGGED else "same"
        note = f"timed only in {a.label if vb is None else b.label}; {sa} -> {sb}: " \
               f"{why_b or why_a}"
    if (sa == "ok" and sb in FAILED) or (sa in FAILED and sb == "ok"):
        verdict, note = "correctness changed", f"{sa} -> {sb}" + (
            f" ({rb['reason']})" if _text(rb["reason"]) else "") + (f"; {note}" if note else "")
        row["regression"] = sa == "ok"
    row["verdict"], row["note"] = verdict, note
    row["regression"] = bool(row["regression"] or verdict == "slower")
    return row


#: implementations of one size that must have moved alike before a move is put on the machine
SHARED_SHIFT_MIN = 3


def _shared_shifts(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``suspicious``, not ``slower``/``faster``, for a case that moved with its whole size.

    The implementations of one size are timed in the same rounds; when the size as a whole
    (the median of at least ``SHARED_SHIFT_MIN`` of them, the builtin with it) moved beyond the
    threshold, a case within the threshold of that shift moved with the machine (a frequency
    state, a neighbour on the host), not by its code: a rerun of identical code found the first
    attention size 1.6-2.0x slower in every implementation.
    """
    frame = frame.copy()
    size = ["run_b", "layer", "device", "dtype", "mode", "case"]
    timed = frame[np.isfinite(frame["ratio"].astype(float))]
    for _, group in timed.groupby(size, sort=False):
        if len(group) < SHARED_SHIFT_MIN or not (group["impl"] == BASELINE_IMPL).any():
            continue
        logs = np.log(group["ratio"].astype(float))
        shift = float(np.median(logs))
        builtin = float(logs[group["impl"] == BASELINE_IMPL].iloc[0])
        band = math.log1p(threshold)
        if abs(shift) <= band or abs(builtin - shift) > band:
            continue  # the size as a whole (its builtin with it) did not move
        moved = group.index[group["verdict"].isin(("slower", "faster"))
                            & (abs(logs - shift) <= band)]
        frame.loc[moved, ["verdict", "regression"]] = ["suspicious", False]
        frame.loc[moved, "note"] = (f"the {len(group)} implementations of this size moved alike "
                                    f"(median x{math.exp(shift):.3g}, the builtin "
                                    f"x{math.exp(builtin):.3g}): the machine, not the code?")
    frame["regression"] = frame["regression"].astype(bool)
    return frame


def _unstable(a: Run, ra: dict[str, Any], b: Run, rb: dict[str, Any], ratio: float) -> str:
    """Why the runs' timings of a case cannot carry a verdict; '' when they can.

    A run disturbed by other processes (``interference``) cannot: its time may be several
    times the real one. An imprecise one can when the change is clearly larger than both
    runs' intervals (more than twice their relative half-widths added up).
    """
    reasons, widths = [], 0.0
    for run, row in ((a, ra), (b, rb)):
        if row["stable"] != 0:
            continue
        flags = str(row["flags"] or "")
        if "interference:" in flags or "imprecise:" not in flags:
            reasons.append(f"unstable in {run.label} ({flags or 'missed its precision'})")
            widths = math.inf
        else:
            precision = float(row["precision"]) if row["precision"] == row["precision"] else (
                math.inf)
            reasons.append(f"imprecise in {run.label} (+-{precision:.1%})")
            widths += precision
    clear = ratio > 0 and abs(math.log(ratio)) > 2 * widths
    return "" if not reasons or clear else " and ".join(reasons)


def _timing(row: dict[str, Any], va: np.ndarray, vb: np.ndarray, threshold: float,
            alpha: float, noise_floor: float = 0.0) -> tuple[str, str]:
    """Fill the statistics of ``row`` from the two samples; return (verdict, note)."""
    ratio = float(np.median(vb) / np.median(va))
    p_slower, p_faster = mann_whitney_greater(va, vb), mann_whitney_greater(vb, va)
    noise = max(relative_noise(va), relative_noise(vb), noise_floor)
    row["ci_lo"], row["ci_hi"] = ratio_ci(va, vb)
    row.update(ratio=ratio, p_value=p_slower if ratio >= 1 else p_faster, noise=noise,
               threshold_used=effect_threshold(noise, threshold))
    verdict = classify(ratio, p_slower, p_faster, noise, threshold, alpha)
    note = ""
    if verdict == "suspicious":
        note = (f"{ratio:.3g}x but not significant (p={row['p_value']:.2g}, "
                f"{len(va)} vs {len(vb)} samples)")
    if min(len(va), len(vb)) == 1:
        note = ("single value (no samples); " + note).rstrip("; ")
    return verdict, note


def _reference_note(a: Run, b: Run, keys: list[str]) -> str:
    """How the builtins' own times compare: what the relative basis divided out."""
    ra, rb = ({k[:-1]: v for k, v in r.items()} for r in (_references(a), _references(b)))
    if "device" not in keys:
        ra, rb = ({k[:1] + k[2:]: v for k, v in r.items()} for r in (ra, rb))
    shared = ra.keys() & rb.keys()
    g = geomean(rb[k] / ra[k] for k in shared)
    return (f"{b.label}: times relative to each run's eager builtin; that builtin takes "
            f"{g:.3g}x the time of {a.label}'s (geomean over {len(shared)} cases)")


def geomeans(frame: pd.DataFrame) -> pd.DataFrame:
    """Geometric mean of the ratios per (run_b, layer, impl, compile) over timed cases."""
    timed = frame[np.isfinite(frame["ratio"].astype(float))]
    rows = []
    for (run_b, layer, impl, compile_mode), g in timed.groupby(
            ["run_b", "layer", "impl", "compile"], sort=False):
        rows.append({"run_b": run_b, "layer": layer, "impl": impl, "compile": compile_mode,
                     "variant": variant(impl, compile_mode), "cases": len(g),
                     "geomean_ratio": geomean(g["ratio"]), "min_ratio": g["ratio"].min(),
                     "max_ratio": g["ratio"].max(),
                     "slower": int((g["verdict"] == "slower").sum()),
                     "faster": int((g["verdict"] == "faster").sum())})
    return pd.DataFrame(rows, columns=GEOMEAN_COLUMNS)

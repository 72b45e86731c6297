"""Numbers a report derives from ``results.csv``: growth exponents, the fastest variant per size.

Only measured rows count (``ok``, and ``incorrect`` ones, whose speed is real even if their
answer is not); skipped and failed cases have no time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.plausibility import PLAUSIBILITY_TAGS
from reports.schema import TIMED, device_kind
from reports.style import variant

GROUP = ["layer", "impl", "compile", "device", "dtype", "mode"]
#: distinct sizes a growth exponent is fitted from: a line through two points always fits, so
#: two would give a slope whatever the shape of the curve
MIN_GROWTH_POINTS = 3


def measured(results: pd.DataFrame) -> pd.DataFrame:
    """Rows with a time: status ``ok`` or ``incorrect`` and a positive median."""
    keep = results["status"].isin(TIMED) & (results["median_ms"] > 0)
    return results[keep]


def growth_exponents(results: pd.DataFrame) -> pd.DataFrame:
    """Log-log slope of median time against FLOPs, per implementation and setting.

    A slope of 1 means time grows in proportion to the work (a compute-bound loop); well below 1
    means fixed overheads dominate the sizes measured. Needs ``MIN_GROWTH_POINTS`` distinct FLOP
    counts; a variant with fewer has no row.
    Columns: the group, ``variant``, ``exponent``, ``r2``, ``points``, ``flops_min``,
    ``flops_max``.
    """
    rows = []
    timed = measured(results)
    timed = timed[timed["flops"] > 0]
    for key, group in timed.groupby(GROUP, sort=False):
        x, y = np.log(group["flops"].to_numpy(float)), np.log(group["median_ms"].to_numpy(float))
        if len(np.unique(x)) < MIN_GROWTH_POINTS:
            continue
        slope, intercept = np.polyfit(x, y, 1)
        residual = y - (slope * x + intercept)
        spread = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float((residual ** 2).sum()) / spread if spread > 0 else 1.0
        rows.append({**dict(zip(GROUP, key, strict=True)), "variant": variant(key[1], key[2]),
                     "exponent": float(slope), "r2": r2, "points": len(group),
                     "flops_min": int(group["flops"].min()),
                     "flops_max": int(group["flops"].max())})
    return pd.DataFrame(rows, columns=[*GROUP, "variant", "exponent", "r2", "points",
                                       "flops_min", "flops_max"])


#: what the marks of a case mean, for captions and notes
MARK_LEGEND = ("~ unstable: missed its precision target or ran under interference; "
               "! implausible (fwd+bwd faster than fwd, beyond the roofline or >10x the "
               "builtin): the numbers are kept, take a second look")


def mark(stable: object, flags: object) -> str:
    """``~`` for an unstable case (``stable`` 0), ``!`` for one with a plausibility flag (a
    reason of ``flags`` that starts with one of ``PLAUSIBILITY_TAGS``), both, or ''."""
    implausible = isinstance(flags, str) and any(
        reason.startswith(PLAUSIBILITY_TAGS) for reason in flags.split("; "))
    return ("~" if stable == 0 else "") + ("!" if implausible else "")


def marks(rows: pd.DataFrame) -> pd.Series:
    """``mark`` of every row of a frame with ``stable`` and ``flags`` columns."""
    return pd.Series([mark(s, f) for s, f in zip(rows["stable"], rows["flags"], strict=True)],
                     index=rows.index, dtype=object)


SIZE = ["layer", "device", "dtype", "mode", "case"]
BEST_COLUMNS = [*SIZE, "verdict", "separated", "best", "mark", "median_ms", "ci_lo_ms",
                "ci_hi_ms", "speedup_vs_builtin", "speedup_lo", "speedup_hi", "gflops",
                "runner_up", "runner_up_ratio", "flags"]


def best_per_size(results: pd.DataFrame) -> pd.DataFrame:
    """The fastest correct variant of every (layer, device, dtype, mode, case), where the timing
    can tell.

    ``verdict``: the variant with the lowest median when its 95% interval ends below the
    runner-up's (``ci_hi_ms < ci_lo_ms``; ``separated`` True); else ``tie: a, b``, the variants
    whose intervals overlap the best's (``separated`` False); without intervals (runs before
    them) the lowest median, ``a (interval unknown)`` (``separated`` NaN). Names carry their
    ``mark``. The other columns describe ``best`` (lowest median); ``flags`` holds those of the
    variants named and the runner-up, ``runner_up_ratio`` how much slower the second is.
    """
    ok = measured(results)
    ok = ok[ok["status"] == "ok"]
    rows = []
    for key, group in ok.groupby(SIZE, sort=False):
        ranked = group.sort_values("median_ms", kind="stable")
        best = ranked.iloc[0]
        named, separated = _fastest(ranked)
        names = [mark(r["stable"], r["flags"]) + variant(r["impl"], r["compile"])
                 for _, r in named.iterrows()]
        verdict = names[0] if separated or len(names) == 1 else "tie: " + ", ".join(names)
        row = {**dict(zip(SIZE, key, strict=True)), "verdict": verdict,
               "separated": separated, "best": variant(best["impl"], best["compile"]),
               "mark": mark(best["stable"], best["flags"]),
               **{c: best[c] for c in ("median_ms", "ci_lo_ms", "ci_hi_ms", "speedup_vs_builtin",
                                       "speedup_lo", "speedup_hi", "gflops")},
               "runner_up": "", "runner_up_ratio": np.nan,
               "flags": "; ".join(f"{variant(r['impl'], r['compile'])}: {r['flags']}"
                                  for _, r in ranked.iloc[:max(len(named), 2)].iterrows()
                                  if isinstance(r["flags"], str) and r["flags"])}
        if separated != separated:  # NaN: the old rule, said as such
            row["verdict"] += " (interval unknown)"
        if len(ranked) > 1:
            second = ranked.iloc[1]
            row["runner_up"] = mark(second["stable"], second["flags"]) + variant(
                second["impl"], second["compile"])
            row["runner_up_ratio"] = second["median_ms"] / best["median_ms"]
        rows.append(row)
    return pd.DataFrame(rows, columns=BEST_COLUMNS)


def _fastest(ranked: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """The rows a verdict names (by median) and whether the best stands apart (NaN: unknown)."""
    if len(ranked) == 1:  # nothing to tell apart
        return ranked, True
    best_hi, second_lo = ranked["ci_hi_ms"].iloc[0], ranked["ci_lo_ms"].iloc[1]
    if not (np.isfinite(best_hi) and np.isfinite(second_lo)):
        return ranked.iloc[:1], np.nan
    if best_hi < second_lo:
        return ranked.iloc[:1], True
    # a variant without an interval counts by its median
    lows = ranked["ci_lo_ms"].where(np.isfinite(ranked["ci_lo_ms"]), ranked["median_ms"])
    return ranked[lows <= best_hi], False


OTHER_OPS = "other"
#: ``ops.csv``'s ``device_type`` of an operator row; other values mark a kernel, copy or memset
CPU_EVENT = "cpu"
CASE_KEY = [*GROUP, "case"]


def event_kinds(ops: pd.DataFrame) -> pd.Series:
    """Each row's ``device_type``: as recorded, or, in an ``ops.csv`` written before that
    column, ``cuda`` for a row with device time and no CPU time (torch.profiler gives a
    device event no CPU time and an operator some), else ``cpu``."""
    device_only = (_number(ops, "cpu_total_us") <= 0) & (_number(ops, "self_device_us") > 0)
    inferred = pd.Series(np.where(device_only, "cuda", CPU_EVENT), index=ops.index)
    if "device_type" not in ops.columns:
        return inferred
    recorded = ops["device_type"].astype(object)
    known = recorded.notna() & (recorded.astype(str).str.strip() != "")
    return recorded.where(known, inferred).astype(str).str.lower()


def timed_ops(ops: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``ops`` that make up their case's self time, with it as ``us`` (per call of
    the case): their sum is the case's total.

    A GPU case with kernel rows counts their device time, and only theirs: torch.profiler lists
    each kernel twice, as a device event of its own and in the self device time of the
    operator that launched it (``FunctionEvent.self_device_time_total`` of a CPU event is its
    kernels' time), so adding both kinds counts every kernel twice. The kernel rows are the
    complete set (a kernel launched outside any recorded operator, e.g. a compiled graph's
    Triton kernel under the dropped ``ProfilerStep``, has its own row only) and what torch's
    own table totals. A GPU case without them (the legacy profiler, whose operators hold their
    kernels' time) counts its operators' self device time; every other case its operators'
    self CPU time.
    """
    if ops.empty:
        return ops.assign(us=pd.Series(dtype=float))
    on_device = event_kinds(ops) != CPU_EVENT
    cpu, device = _number(ops, "self_cpu_us"), _number(ops, "self_device_us")
    cases = [ops[k].astype(str) for k in CASE_KEY]

    def case_sum(values: pd.Series) -> pd.Series:
        return values.groupby(cases, sort=False, dropna=False).transform("sum")

    gpu = ops["device"].astype(str).map(device_kind) != CPU_EVENT
    kernels = gpu & (case_sum(device.where(on_device, 0.0)) > 0)
    legacy = gpu & ~kernels & (case_sum(device.where(~on_device, 0.0)) > 0)
    keep = (kernels & on_device) | (~kernels & ~on_device)
    us = np.where(kernels | legacy, device, cpu)
    return ops.assign(us=us)[keep]


def self_time_column(ops: pd.DataFrame) -> str:
    """Where the rows of ``timed_ops`` hold their time: ``self_device_us`` where a GPU case ran
    kernels, else ``self_cpu_us``."""
    on_gpu = ops["device"].astype(str).map(device_kind) != CPU_EVENT
    if on_gpu.any() and _number(ops.loc[on_gpu], "self_device_us").sum() > 0:
        return "self_device_us"
    return "self_cpu_us"


def _number(ops: pd.DataFrame, column: str) -> pd.Series:
    """``ops[column]`` as numbers, 0 where empty or absent."""
    if column not in ops.columns:
        return pd.Series(0.0, index=ops.index)
    return pd.to_numeric(ops[column], errors="coerce").fillna(0.0)


def op_shares(ops: pd.DataFrame, top: int = 7) -> pd.DataFrame:
    """Each profiled case's self time (``timed_ops``: kernel time on a GPU) split over the
    ``top`` operators of ``ops`` (by their largest share in any case) plus ``other``: columns
    key, ``op``, ``us`` (per call of the case), ``share`` (of the case's total)."""
    key = CASE_KEY
    ops = ops[ops["op"].notna() & ~ops["op"].astype(str).str.startswith("<")]
    frame = timed_ops(ops)
    if frame.empty:
        return pd.DataFrame(columns=[*key, "op", "us", "share"])
    totals = frame.groupby(key, sort=False)["us"].transform("sum")
    frame = frame.assign(share=frame["us"] / totals.where(totals > 0))
    leaders = (frame.groupby("op")["share"].max().sort_values(ascending=False)
               .index[:top].tolist())
    frame = frame.assign(op=frame["op"].where(frame["op"].isin(leaders), OTHER_OPS))
    shares = frame.groupby([*key, "op"], sort=False, as_index=False)[["us", "share"]].sum()
    order = {op: i for i, op in enumerate([*leaders, OTHER_OPS])}
    return shares.sort_values([*key, "op"], key=lambda c: c.map(order) if c.name == "op"
                              else c, kind="stable").reset_index(drop=True)


def profile_table(results: pd.DataFrame, ops: pd.DataFrame) -> pd.DataFrame:
    """Per profiled case: operator calls per call, peak memory, profiled time per call (the
    total of ``timed_ops``: each kernel once on a GPU) and the operator that takes the most
    of it."""
    key = CASE_KEY
    shares = op_shares(ops, top=10**6)
    if shares.empty:
        return pd.DataFrame(columns=[*key, "variant", "median_ms", "op_calls", "peak_mem_mib",
                                     "profiled_ms", "top_op", "top_share"])
    top = shares.sort_values("us", ascending=False, kind="stable").groupby(key, sort=False).head(1)
    total = shares.groupby(key, sort=False, as_index=False)["us"].sum()
    table = total.merge(top[[*key, "op", "share"]], on=key).merge(
        results[[*key, "op_calls", "peak_mem_bytes", "median_ms"]], on=key, how="left")
    return pd.DataFrame({
        **{k: table[k] for k in key},
        "variant": [variant(i, c) for i, c in zip(table["impl"], table["compile"], strict=True)],
        "median_ms": table["median_ms"],
        "op_calls": table["op_calls"],
        "peak_mem_mib": table["peak_mem_bytes"] / 2**20,
        "profiled_ms": table["us"] / 1e3,
        "top_op": table["op"], "top_share": table["share"],
    })

"""Numbers a report derives from ``results.csv``: growth exponents, the fastest variant per size.

Only measured rows count (``ok``, and ``incorrect`` ones, whose speed is real even if their
answer is not); skipped and failed cases have no time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.style import variant

GROUP = ["layer", "impl", "compile", "device", "dtype", "mode"]
MEASURED = ("ok", "incorrect")


def measured(results: pd.DataFrame) -> pd.DataFrame:
    """Rows with a time: status ``ok`` or ``incorrect`` and a positive median."""
    keep = results["status"].isin(MEASURED) & (results["median_ms"] > 0)
    return results[keep]


def growth_exponents(results: pd.DataFrame) -> pd.DataFrame:
    """Log-log slope of median time against FLOPs, per implementation and setting.

    A slope of 1 means time grows in proportion to the work (a compute-bound loop); well below 1
    means fixed overheads dominate the sizes measured. Needs two or more distinct FLOP counts.
    Columns: the group, ``variant``, ``exponent``, ``r2``, ``points``, ``flops_min``,
    ``flops_max``.
    """
    rows = []
    timed = measured(results)
    timed = timed[timed["flops"] > 0]
    for key, group in timed.groupby(GROUP, sort=False):
        x, y = np.log(group["flops"].to_numpy(float)), np.log(group["median_ms"].to_numpy(float))
        if len(np.unique(x)) < 2:
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


def best_per_size(results: pd.DataFrame) -> pd.DataFrame:
    """The fastest correct variant of every (layer, device, dtype, mode, case).

    Columns: the setting, ``case``, ``best``, ``median_ms``, ``speedup_vs_builtin``, ``gflops``,
    ``runner_up`` and how much slower it is (``runner_up_ratio``).
    """
    ok = measured(results)
    ok = ok[ok["status"] == "ok"]
    rows = []
    for key, group in ok.groupby(["layer", "device", "dtype", "mode", "case"], sort=False):
        ranked = group.sort_values("median_ms")
        best = ranked.iloc[0]
        row = {**dict(zip(["layer", "device", "dtype", "mode", "case"], key, strict=True)),
               "best": variant(best["impl"], best["compile"]), "median_ms": best["median_ms"],
               "speedup_vs_builtin": best["speedup_vs_builtin"], "gflops": best["gflops"],
               "runner_up": "", "runner_up_ratio": np.nan}
        if len(ranked) > 1:
            second = ranked.iloc[1]
            row["runner_up"] = variant(second["impl"], second["compile"])
            row["runner_up_ratio"] = second["median_ms"] / best["median_ms"]
        rows.append(row)
    return pd.DataFrame(rows)

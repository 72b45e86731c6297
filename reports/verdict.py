"""The answer a report opens with, per layer and setting: which implementation is fastest, how
the best hand-written one does against the builtin, how many cases are correct, and which need
a second look.

Speeds are compared as the geometric mean of each variant's speedup over the eager builtin
across the sizes it ran correctly; its 95% interval combines the per-size intervals (paired
ratios, ``speedup_lo``/``speedup_hi``) on the log scale as independent errors. A variant
is a candidate for *fastest* only if it ran correctly at every size the setting measured; the
best hand-written one (any implementation but the builtin, compiled or not) is the fastest of
those that ran every size, else of all, and is named with the sizes it covered.

Where the cases ran on several machines, each speedup is against the builtin of the same size
on the same machine (they ran together), so speeds of different machines average together;
times do not, and the fastest per size is found among one machine's rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.analysis import best_per_size, marks, measured
from reports.meta import machine_keys, per_machine
from reports.schema import BASELINE_IMPL
from reports.style import variant

SETTING = ["layer", "device", "dtype", "mode"]
Z95 = 1.959964


@dataclass(frozen=True)
class Speed:
    """A variant's geometric-mean speedup over the builtin, its 95% interval, its sizes."""

    name: str
    speedup: float
    lo: float
    hi: float
    sizes: int
    builtin: bool  # the eager builtin itself (x1 exactly)
    hand: bool  # a hand-written implementation (not the builtin, compiled or not)

    @property
    def known(self) -> bool:
        """Whether the interval is known (the builtin's is exact)."""
        return self.builtin or (math.isfinite(self.lo) and math.isfinite(self.hi))

    def overlaps(self, other: Speed) -> bool:
        """Whether the intervals overlap (False where one is unknown: then medians decide)."""
        if not (self.known and other.known):
            return False
        lo, hi = (1.0, 1.0) if self.builtin else (self.lo, self.hi)
        other_lo, other_hi = (1.0, 1.0) if other.builtin else (other.lo, other.hi)
        return lo <= other_hi and other_lo <= hi


def geomean_interval(speedups: np.ndarray, lo: np.ndarray,
                     hi: np.ndarray) -> tuple[float, float, float]:
    """Geometric mean of ``speedups`` and its approximate 95% interval (NaN if any size lacks
    one): per-size log half-widths / 1.96 as standard errors, combined in quadrature."""
    logs = np.log(speedups)
    mean = float(np.exp(logs.mean()))
    se = (np.log(hi) - np.log(lo)) / (2 * Z95)
    if not np.all(np.isfinite(se)):
        return mean, math.nan, math.nan
    half = Z95 * float(np.sqrt((se ** 2).sum())) / len(logs)
    return mean, float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))


def speeds(rows: pd.DataFrame) -> list[Speed]:
    """Every variant's ``Speed`` in one setting, fastest first."""
    ok = measured(rows)
    ok = ok[(ok["status"] == "ok") & (ok["speedup_vs_builtin"] > 0)]
    out = []
    for (impl, mode), group in ok.groupby(["impl", "compile"], sort=False):
        builtin = impl == BASELINE_IMPL and mode == "none"
        s = group["speedup_vs_builtin"].to_numpy(float)
        lo, hi = (np.ones_like(s), np.ones_like(s)) if builtin else (
            group["speedup_lo"].to_numpy(float), group["speedup_hi"].to_numpy(float))
        mean, low, high = geomean_interval(s, lo, hi)
        out.append(Speed(variant(impl, mode), mean, low, high, group["case"].nunique(), builtin,
                         impl != BASELINE_IMPL))
    return sorted(out, key=lambda v: -v.speedup)


def fastest(candidates: list[Speed]) -> list[Speed]:
    """The fastest of ``candidates`` (sorted fastest first), and those it cannot be told apart
    from (overlapping intervals): a tie when more than one."""
    if not candidates:
        return []
    best = candidates[0]
    return [best, *(c for c in candidates[1:] if c.overlaps(best))]


def fastest_text(top: list[Speed], runner_up: Speed | None) -> str:
    """``im2col x2 (1.9-2.1)``, ``tie: a ..., b ...``, or with ``(interval unknown)`` where
    the best or the runner-up has no interval (runs before paired timing)."""
    text = ("tie: " if len(top) > 1 else "") + ", ".join(map(speed_text, top))
    if top and runner_up is not None and not (top[0].known and runner_up.known):
        text += " (interval unknown)"
    return text


def speed_text(s: Speed) -> str:
    """``flash x0.91 (0.88-0.94)``; the builtin ``builtin x1``."""
    interval = (f" ({s.lo:.3g}-{s.hi:.3g})" if not s.builtin and math.isfinite(s.lo)
                and math.isfinite(s.hi) else "")
    return f"{s.name} x{s.speedup:.3g}{interval}"


def wins(rows: pd.DataFrame) -> str:
    """How often each variant was the fastest at one size: ``builtin 5, flash 2, tie 2 (of
    9)``."""
    best = per_machine(rows, best_per_size)
    if best.empty:
        return ""
    won = best["best"].where(best["separated"] != False, "tie")  # noqa: E712 (NaN: unknown)
    counts = won.value_counts()
    order = [v for v in counts.index if v != "tie"] + (["tie"] if "tie" in counts else [])
    return ", ".join(f"{v} {counts[v]}" for v in order) + f" (of {len(best)} sizes)"


def verdicts(results: pd.DataFrame) -> pd.DataFrame:
    """One row per layer and setting: ``layer``, ``setting``, ``fastest`` (a name or ``tie:
    a, b``, with speeds), ``wins`` (fastest per size), ``hand`` (the best hand-written variant,
    its speed and the sizes it covered), ``correct`` (``52 of 54``), ``failed`` (what went
    wrong: counts per status), ``look`` (unstable and flagged counts), ``sizes``,
    ``machines`` (how many its cases ran on)."""
    rows = []
    for key, group in results.groupby(SETTING, sort=False):
        sizes = group.loc[group["status"] == "ok", "case"].nunique()
        all_speeds = speeds(group)
        complete = [s for s in all_speeds if s.sizes == sizes]
        top = fastest(complete)
        written = [s for s in all_speeds if s.hand]
        hand = next(iter([s for s in written if s.sizes == sizes] or written), None)
        ok = group[group["status"] == "ok"]
        mark = marks(ok)
        failed = group.loc[group["status"] != "ok", "status"].value_counts()
        rows.append({
            "layer": key[0], "setting": " ".join(key[1:]),
            "fastest": fastest_text(top, complete[1] if len(complete) > 1 else None),
            "wins": wins(group),
            "hand": "" if hand is None else
            f"{speed_text(hand)}" + ("" if hand.sizes == sizes else
                                     f", over {hand.sizes} of {sizes} sizes"),
            "correct": f"{len(ok)} of {len(group)}",
            "failed": ", ".join(f"{n} {status}" for status, n in failed.items()),
            "look": ", ".join(f"{n} {what}" for what, n in (
                ("unstable (~)", int(mark.str.contains("~", regex=False).sum())),
                ("flagged (!)", int(mark.str.contains("!", regex=False).sum()))) if n),
            "sizes": sizes, "machines": max(len(machine_keys(group)), 1),
        })
    return pd.DataFrame(rows, columns=["layer", "setting", "fastest", "wins", "hand", "correct",
                                       "failed", "look", "sizes", "machines"])


def machines_note(results: pd.DataFrame) -> str:
    """What a verdict over several machines means ('' for one machine)."""
    keys = machine_keys(results)
    if len(keys) < 2:
        return ""
    return (f"The cases ran on {len(keys)} machines ({', '.join(keys)}; see Machines). Every "
            "speed is against the eager builtin of the same size on the same machine, each "
            "machine's own builtin, so speeds compare across machines; times, and the fastest "
            "per size, compare only within one machine.")

"""The regression gate's data: a baseline's run-to-run noise, and re-measured verdicts.

A baseline is a run directory (``results.csv``, ``samples.csv``, ``meta.json``) plus
``noise.csv``: for every case, how much its median moved between repeated runs of unchanged code
(A/A), as the standard deviation of the log medians, in seconds and relative to the same run's
eager builtin; and ``code.tar.gz``, the code it timed (``suites.baseline`` stores it). ``check``
widens each case's threshold to 3x that noise (``gate``). A case flagged slower is timed again,
the baseline's code and the current code one after the other, and must be slower than the
baseline's code in every such round, or it is reported ``suspicious``, not failed: a machine
that drifted since the baseline was recorded (a noisy neighbour, another host of the same kind)
moves both alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from reports.compare import Comparison, compare_runs
from reports.console import say
from reports.schema import KEY_COLUMNS, TIMED, RunDataError, baseline_rows, load_run

NOISE_FILE = "noise.csv"
NOISE_COLUMNS = [*KEY_COLUMNS, "repeats", "noise_abs", "noise_rel"]
REF_KEY = ["layer", "device", "dtype", "mode", "case"]


def case_noise(run_dirs: list[Path]) -> pd.DataFrame:
    """Run-to-run noise of every case timed in all of ``run_dirs`` (repeats of one plan).

    ``noise_abs``: standard deviation of log(median seconds) across the runs (0.05 = about 5 %);
    ``noise_rel``: the same for the median divided by the run's eager builtin.
    """
    medians = []
    for i, run_dir in enumerate(run_dirs):
        results, _ = load_run(run_dir)
        timed = results[results["status"].isin(TIMED) & (results["median_ms"] > 0)]
        builtin = timed[baseline_rows(timed)]
        ref = builtin.set_index(REF_KEY)["median_ms"].rename("builtin_ms")
        timed = timed.join(ref, on=REF_KEY)
        medians.append(timed.assign(repeat=i, rel=timed["median_ms"] / timed["builtin_ms"]))
    frame = pd.concat(medians)
    rows = []
    for key, group in frame.groupby(list(KEY_COLUMNS), sort=False):
        if len(group) < 2:
            continue
        rows.append({**dict(zip(KEY_COLUMNS, key, strict=True)), "repeats": len(group),
                     "noise_abs": _log_std(group["median_ms"]),
                     "noise_rel": _log_std(group["rel"])})
    return pd.DataFrame(rows, columns=NOISE_COLUMNS)


def _log_std(values: pd.Series) -> float:
    x = np.log(values.dropna().to_numpy(float))
    return float(np.std(x, ddof=1)) if len(x) >= 2 else float("nan")


def load_noise(baseline: Path, basis: str) -> dict[tuple[str, ...], float]:
    """Case key -> noise of the baseline for ``basis`` (``absolute`` or ``relative``)."""
    path = baseline / NOISE_FILE
    if not path.is_file():
        raise RunDataError(f"{baseline}: not a baseline (no {NOISE_FILE}; write one with "
                           "`python cli.py check --save-baseline --baseline DIR`)")
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={
            c: str for c in KEY_COLUMNS})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise RunDataError(f"{path}: unreadable ({exc})") from None
    if missing := [c for c in NOISE_COLUMNS if c not in frame.columns]:
        raise RunDataError(f"{path}: missing column(s) {', '.join(missing)}")
    column = "noise_rel" if basis == "relative" else "noise_abs"
    return {tuple(row[list(KEY_COLUMNS)]): float(row[column])
            for _, row in frame.iterrows() if np.isfinite(row[column])}


def restrict(comparison: Comparison, layers: tuple[str, ...]) -> Comparison:
    """Only the cases of ``layers`` (a check of some layers against a baseline of all)."""
    frame = comparison.frame[comparison.frame["layer"].isin(layers)]
    geomeans = comparison.geomeans[comparison.geomeans["layer"].isin(layers)]
    return replace(comparison, frame=frame, geomeans=geomeans,
                   regressions=int(frame["regression"].sum()))


def same_machine_kind(meta_a: dict, meta_b: dict) -> bool:
    """Whether two runs' absolute times are comparable: same CPU, cores, threads, GPUs and
    torch (the host name may differ: CI runners of one kind)."""
    def kind(meta: dict) -> tuple:
        m = meta.get("machine") or {}
        return (m.get("cpu_model"), m.get("cpu_count"), m.get("threads"), m.get("torch"),
                tuple(g.get("name") for g in m.get("gpus") or []))
    return kind(meta_a) == kind(meta_b)


def combine(relative: Comparison, absolute: Comparison) -> Comparison:
    """Slower only where both bases agree: relative to the builtin **and** in seconds.

    On one kind of machine this is the robust rule: a machine-wide slowdown moves every time in
    seconds but not relative to the builtin, and a builtin that alone got faster or slower moves
    every other implementation relative to it but not in seconds; neither is a regression of the
    implementation. Rows are those of ``relative`` (the builtin itself is the unit there).
    """
    frame = relative.frame.copy()
    seconds_rows = {tuple(str(r[c]) for c in KEY_COLUMNS): r
                    for r in absolute.frame.to_dict("records")}
    keys = frame[list(KEY_COLUMNS)].astype(str).apply(tuple, axis=1)
    for index in frame.index[frame["verdict"] == "slower"]:
        other = seconds_rows.get(keys[index])
        if other is not None and other["verdict"] == "slower":
            frame.loc[index, "note"] = f"x{other['ratio']:.3g} in seconds too"
            continue
        seconds = f"x{other['ratio']:.3g}" if other is not None else "not measured"
        frame.loc[index, ["verdict", "regression"]] = ["suspicious", False]
        frame.loc[index, "note"] = (f"slower relative to the builtin but not in seconds "
                                    f"({seconds}, threshold x{1 + other['threshold_used']:.3g})"
                                    if other is not None else f"seconds: {seconds}")
    frame["regression"] = frame["regression"].astype(bool)
    return replace(relative, frame=frame, basis="relative and absolute",
                   regressions=int(frame["regression"].sum()))


def gate(baseline: Path, run_dir: Path, basis: str, threshold: float, alpha: float,
         layers: tuple[str, ...], noise_of: Path | None = None) -> Comparison:
    """The gate's verdict on ``run_dir`` against ``baseline`` for ``layers``, before any
    re-measurement; ``RunDataError`` on unusable input. ``noise_of``: the baseline whose
    ``noise.csv`` applies (default ``baseline``; a re-measurement of the baseline's code has
    none of its own).

    ``basis`` ``relative`` or ``absolute``: that basis, each case's threshold widened to 3x its
    baseline noise. ``both`` (one kind of machine): slower in seconds beyond 3x the noise in
    seconds, **and** slower relative to the builtin by the plain threshold: a drift guard, not
    widened by the builtin's own noise, which would hide real slowdowns of steady cases.
    """
    def one(b: str, noise: Mapping[tuple[str, ...], float] | None) -> Comparison:
        return restrict(compare_runs([baseline, run_dir], b, threshold, alpha, noise), layers)

    noisy = noise_of or baseline
    if basis == "both":
        return combine(one("relative", None), one("absolute", load_noise(noisy, "absolute")))
    return one(basis, load_noise(noisy, basis))


def _candidates(frame: pd.DataFrame) -> pd.Series:
    """Rows found slower, and rows that looked slower in an unstable timing (``suspicious``
    with an ``unstable`` reason): both are measured again."""
    unstable = frame["unstable"].fillna("").astype(str) != "" if "unstable" in frame else False
    looked_slower = (frame["verdict"] == "suspicious") & unstable & (
        frame["ratio"] > 1 + frame["threshold_used"].fillna(0))
    return (frame["verdict"] == "slower") | looked_slower


def flagged(comparison: Comparison) -> list[tuple[str, ...]]:
    """Case keys (with device) the comparison found slower, or that looked slower in a timing
    that was disturbed or imprecise: each is measured again."""
    rows = comparison.frame[_candidates(comparison.frame)]
    return [tuple(r) for r in rows[list(KEY_COLUMNS)].astype(str).itertuples(index=False)]


def confirm(comparison: Comparison, again: list[Comparison], against: str = "") -> Comparison:
    """Keep ``slower`` only for cases found slower in every re-measurement in ``again`` (a
    case that looked slower in an unstable timing becomes ``slower`` the same way).

    A flag that does not reproduce becomes ``suspicious`` (reported, not a failure), with the
    re-measured ratios in its note; ``against`` says what the re-measurements were compared
    with (e.g. the baseline's code, timed alongside). Correctness regressions are not touched:
    they always fail.
    """
    frame = comparison.frame.copy()
    keys = frame[list(KEY_COLUMNS)].astype(str).apply(tuple, axis=1)
    for index in frame.index[_candidates(frame)]:
        key = keys[index]
        ratios, verdicts = [], []
        for other in again:
            match = other.frame[other.frame[list(KEY_COLUMNS)].astype(str).apply(tuple, axis=1)
                                == key]
            verdicts.append(match["verdict"].iloc[0] if len(match) else "missing")
            ratios.append(float(match["ratio"].iloc[0]) if len(match) else float("nan"))
        seen = ", ".join(f"x{r:.3g}" for r in ratios)
        if again and all(v == "slower" for v in verdicts):
            frame.loc[index, ["verdict", "regression"]] = ["slower", True]
            frame.loc[index, "note"] = (f"confirmed by {len(again)} re-measurement(s)"
                                        f"{against}: {seen}")
        else:
            frame.loc[index, ["verdict", "regression"]] = ["suspicious", False]
            frame.loc[index, "note"] = (f"did not reproduce in re-measurement(s){against}: "
                                        f"{seen}" if again else "not re-measured")
    return replace(comparison, frame=frame, regressions=int(frame["regression"].sum()))


def summary_line(comparison: Comparison) -> str:
    """``PASS: 152 cases, 0 regressions (3 suspicious)`` or ``FAIL: ...``."""
    counts: Mapping[str, int] = comparison.frame["verdict"].value_counts().to_dict()
    detail = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    word = "FAIL" if comparison.regressions else "PASS"
    return (f"{word}: {len(comparison.frame)} cases compared with the baseline, "
            f"{comparison.regressions} regression(s) ({detail})")


def noise_lines(noise: pd.DataFrame) -> list[str]:
    """The spread of a baseline's noise, one line per basis."""
    lines = []
    for column in ("noise_abs", "noise_rel"):
        q = noise[column].quantile([0.5, 0.9, 1.0])
        lines.append(f"  run-to-run noise ({column}): median {q[0.5]:.1%}, 90th percentile "
                     f"{q[0.9]:.1%}, max {q[1.0]:.1%}")
    return lines


def rebuild_noise(baseline: Path, runs: list[Path]) -> int:
    """The ``noise`` command: re-estimate ``baseline``'s per-case noise from its own run and
    more A/A ``runs`` of the same code; prints where it wrote and the spread; exit 0."""
    load_run(baseline)
    for run_dir in runs:
        load_run(run_dir)
    noise = case_noise([baseline, *runs])
    noise.to_csv(baseline / NOISE_FILE, index=False)
    say(f"{baseline / NOISE_FILE}: {len(noise)} cases from {len(runs) + 1} runs")
    for line in noise_lines(noise):
        say(line)
    return 0

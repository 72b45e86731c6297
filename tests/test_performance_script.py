"""benchmarks/performance.py's ratio arithmetic on hand-made results (no timing here)."""

from __future__ import annotations

import importlib.util
import math

import pandas as pd
import pytest

from suites.compilation import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location("performance",
                                               PROJECT_ROOT / "benchmarks" / "performance.py")
assert _spec is not None and _spec.loader is not None
performance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(performance)


def _row(run: str, impl: str, case: str, ms: float, status: str = "ok",
         flops: float = 1.0) -> dict[str, object]:
    return {"run_id": run, "layer": "conv", "impl": impl, "compile": "none", "status": status,
            "case": case, "median_ms": ms, "flops": flops, "roofline_frac": 0.5}


def _runs(mine: dict[str, list[float]], builtin_ms: float = 1.0) -> pd.DataFrame:
    """Three runs; ``mine[case]`` the implementation's times per run, the builtin at 1 ms."""
    rows = []
    for i in range(3):
        for j, (case, times) in enumerate(mine.items()):
            rows.append(_row(f"r{i}", "builtin", case, builtin_ms, flops=j + 1))
            rows.append(_row(f"r{i}", "im2col_chunked", case, times[i], flops=j + 1))
    return pd.DataFrame(rows)


def test_ratio_per_size_is_the_median_over_runs_and_the_geomean_spans_sizes() -> None:
    results = _runs({"a": [2.0, 2.2, 9.0], "b": [0.5, 0.4, 0.6]})  # one slow spell in run 3
    per_case = performance.case_ratios(results).set_index("case")
    assert per_case.loc["a", "ratio"] == pytest.approx(2.2)
    assert per_case.loc["a", "spread"] == pytest.approx(4.5)
    assert per_case.loc["b", "ratio"] == pytest.approx(0.5)
    (row,) = performance.ratio_table(results).to_dict("records")
    assert row["geomean"] == pytest.approx(math.sqrt(2.2 * 0.5))
    assert row["sizes"] == "2/2" and row["complete"]
    (best,) = performance.best_table(performance.ratio_table(results), {}).to_dict("records")
    assert best["verdict"] == "PASS"  # 1.05 <= 1.5


def test_a_size_the_builtin_failed_is_left_out_not_counted_against_the_impl() -> None:
    results = _runs({"a": [2.0, 2.0, 2.0], "b": [0.5, 0.5, 0.5]})
    results.loc[(results["impl"] == "builtin") & (results["case"] == "b"), "status"] = "oom"
    (row,) = performance.ratio_table(results).to_dict("records")
    assert row["sizes"] == "1/1" and row["complete"]
    assert row["geomean"] == pytest.approx(2.0)
    assert len(performance.best_table(performance.ratio_table(results), {})) == 1


def test_an_impl_missing_a_size_has_no_verdict() -> None:
    results = _runs({"a": [2.0, 2.0, 2.0], "b": [0.5, 0.5, 0.5]})
    results.loc[(results["impl"] != "builtin") & (results["case"] == "b"), "status"] = "error"
    (row,) = performance.ratio_table(results).to_dict("records")
    assert row["sizes"] == "1/2" and not row["complete"]
    assert performance.best_table(performance.ratio_table(results), {}).empty

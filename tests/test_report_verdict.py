"""The answer a report opens with: fastest correct implementation or a tie, the best
hand-written one against the builtin with its interval, correct cases, cases to look at."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.report import build_report
from reports.verdict import geomean_interval, verdicts
from tests._runs import FakeCase, fake_run

NAN = math.nan


def _rows(speeds: dict[str, list[tuple[float, float, float]]], **extra: str) -> pd.DataFrame:
    """A results frame: per variant (``impl`` or ``impl+mode``) its (speedup, lo, hi) per size;
    the builtin takes 1 ms at every size."""
    rows = []
    for name, per_size in speeds.items():
        impl, _, mode = name.partition("+")
        for i, (s, lo, hi) in enumerate(per_size):
            median = 1.0 / s if s == s else NAN
            rows.append({"layer": "conv", "impl": impl, "compile": mode or "none",
                         "device": "cpu", "dtype": "float32", "mode": "fwd", "case": f"N{i}",
                         "status": extra.get(f"{name}:N{i}", "ok" if s == s else "skipped"),
                         "median_ms": median, "ci_lo_ms": median * 0.99,
                         "ci_hi_ms": median * 1.01, "speedup_vs_builtin": s,
                         "speedup_lo": lo, "speedup_hi": hi, "gflops": 1.0, "flops": 10**i,
                         "stable": 1, "flags": ""})
    return pd.DataFrame(rows)


EXACT = [(1.0, NAN, NAN)] * 3


def test_the_geomean_interval_combines_sizes_as_independent_errors() -> None:
    s, lo, hi = np.array([2.0, 8.0]), np.array([1.0, 4.0]), np.array([4.0, 16.0])
    mean, low, high = geomean_interval(s, lo, hi)
    half = math.sqrt(2) * math.log(2) / 2  # each size: +-log 2, i.e. 1.96 standard errors
    assert mean == pytest.approx(4.0)
    assert (low, high) == pytest.approx((4.0 * math.exp(-half), 4.0 * math.exp(half)))
    assert math.isnan(geomean_interval(s, np.array([1.0, NAN]), hi)[1])


def test_a_separated_winner_is_named_with_its_interval() -> None:
    row = verdicts(_rows({"builtin": EXACT, "im2col": [(2.0, 1.9, 2.1)] * 3,
                          "einsum": [(1.2, 1.1, 1.3)] * 3})).iloc[0]
    assert row["fastest"].startswith("im2col x2 (1.")
    assert row["hand"].startswith("im2col x2 (1.") and "over" not in row["hand"]
    assert row["wins"] == "im2col 3 (of 3 sizes)"
    assert (row["correct"], row["failed"], row["look"]) == ("9 of 9", "", "")


def test_overlapping_intervals_are_a_tie_that_names_both() -> None:
    row = verdicts(_rows({"builtin": EXACT, "flash": [(1.02, 0.97, 1.08)] * 3,
                          "einsum": [(0.5, 0.48, 0.52)] * 3})).iloc[0]
    assert row["fastest"].startswith("tie: flash x1.02 (0.9") and "builtin x1" in row["fastest"]
    assert "einsum" not in row["fastest"]


def test_a_variant_missing_sizes_cannot_be_fastest_but_can_be_the_best_hand_written() -> None:
    fast_loops = [(3.0, 2.9, 3.1), (NAN, NAN, NAN), (NAN, NAN, NAN)]
    row = verdicts(_rows({"builtin": EXACT, "loops": fast_loops})).iloc[0]
    assert row["fastest"] == "builtin x1"
    assert row["hand"].startswith("loops x3 (") and row["hand"].endswith("over 1 of 3 sizes")
    assert row["failed"] == "2 skipped" and row["correct"] == "4 of 6"
    complete = verdicts(_rows({"builtin": EXACT, "loops": fast_loops,
                               "im2col": [(0.5, 0.4, 0.6)] * 3})).iloc[0]
    assert complete["hand"].startswith("im2col x0.5")  # one that ran every size first


def test_a_compiled_builtin_is_not_hand_written() -> None:
    row = verdicts(_rows({"builtin": EXACT, "builtin+default": [(1.5, 1.4, 1.6)] * 3,
                          "im2col": [(0.8, 0.7, 0.9)] * 3})).iloc[0]
    assert row["fastest"].startswith("builtin+default x1.5")
    assert row["hand"].startswith("im2col x0.8")


def test_incorrect_and_unstable_cases_are_counted() -> None:
    rows = _rows({"builtin": EXACT, "im2col": [(2.0, 1.9, 2.1)] * 3}, **{"im2col:N1": "incorrect"})
    rows.loc[(rows["impl"] == "builtin") & (rows["case"] == "N0"), "stable"] = 0
    row = verdicts(rows).iloc[0]
    assert (row["correct"], row["failed"], row["look"]) == ("5 of 6", "1 incorrect",
                                                           "1 unstable (~)")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cases = []
    for case, n in {"N1": 1, "N8": 8, "N64": 64}.items():
        common = {"case": case, "flops": 10**6 * n, "params": {"N": n}}
        cases += [FakeCase("builtin", seconds=[1e-4 * n] * 5, **common),
                  FakeCase("im2col", seconds=[4e-4 * n] * 5, rel_err=6.384e-06, **common),
                  FakeCase("loops", status="skipped", reason="predicted 9 min > budget: " +
                           "a long reason " * 20, **common)]
    path = fake_run(tmp_path_factory.mktemp("runs") / "run", cases)
    build_report(path)
    return path


def test_the_report_opens_with_the_verdict_and_ends_with_the_method(run: Path) -> None:
    page = (run / "report.html").read_text(encoding="utf-8")
    order = [page.index(s) for s in ('<h2 id="verdict">', '<h2 id="conv">',
                                     '<h2 id="every-case">', '<h2 id="run">', "Correctness: ")]
    assert order == sorted(order)
    verdict = page[order[0]:order[1]]
    assert "builtin x1" in verdict and "im2col x0.25" in verdict and "6 of 9" in verdict
    assert "3 skipped" in verdict
    md = (run / "report.md").read_text(encoding="utf-8")
    assert md.index("## Verdict") < md.index("## conv") < md.index("## Run")
    # fabricated timings have no intervals: medians decide, and the verdict says so
    assert ("| conv | cpu float32 fwd | builtin x1 (interval unknown) | builtin 3 (of 3 sizes) "
            "| im2col x0.25 | 6 of 9 | 3 skipped |  |") in md


def test_tables_speak_words_and_units(run: Path) -> None:
    page = (run / "report.html").read_text(encoding="utf-8")
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", page)
    assert "median time" in headers and "vs builtin" in headers and "of roofline" in headers
    raw = {"speedup_vs_builtin", "best_roofline_frac", "runner_up_ratio", "median_ms",
           "fastest_ms", "rel_err"}
    assert not raw & set(headers)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert "6.4×10⁻⁶" in cells and "100 us" in cells and "x0.25" in cells
    assert not [c for c in cells if re.search(r"\de[+-]\d", c)]


def test_every_row_links_its_figure_and_its_results_row(run: Path) -> None:
    page = (run / "report.html").read_text(encoding="utf-8")
    table = page[page.index('id="cases"'):]
    anchors = set(re.findall(r'<a href="#([^"]+)">figure</a>', table))
    assert anchors and all(f'<figure id="{a}">' in page for a in anchors)
    rows = re.findall(r'title="row (\d+) of results.csv"', table)
    assert sorted(map(int, rows)) == list(range(1, 10))


def test_skipped_rows_keep_their_reason_on_one_line(run: Path) -> None:
    page = (run / "report.html").read_text(encoding="utf-8")
    cells = re.findall(r'<td class="text long" title="([^"]*)">', page)
    assert any(c.startswith("predicted 9 min &gt; budget") for c in cells)

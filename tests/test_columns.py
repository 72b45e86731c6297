"""How report tables write numbers: units a reader knows, never scientific notation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reports.columns import Col, column_text, error, percent, plain, time_ms
from reports.markdown import md_table


@pytest.mark.parametrize(("ms", "text"), [
    (0.0005, "500 ns"), (0.0313, "31.3 us"), (0.9997, "1 ms"), (1.129, "1.13 ms"),
    (999.7, "1 s"), (2500.0, "2.5 s"), (190_000.0, "3.17 min"), (9_000_000.0, "2.5 h")])
def test_times_take_the_unit_that_keeps_them_short(ms: float, text: str) -> None:
    assert time_ms(ms) == text


@pytest.mark.parametrize(("fraction", "text"), [
    (0.9431, "94.3%"), (0.053, "5.3%"), (1.039e-05, "0.001%"), (1.68, "168%")])
def test_fractions_are_percentages(fraction: float, text: str) -> None:
    assert percent(fraction) == text


@pytest.mark.parametrize(("value", "text"), [
    (6.384e-06, "6.4×10⁻⁶"), (9.997e-4, "1×10⁻³"), (0.0123, "0.012"), (0.0, "0"),
    (3.2e5, "3.2×10⁵")])
def test_errors_read_over_many_decades(value: float, text: str) -> None:
    assert error(value) == text


def test_no_number_is_written_in_scientific_notation() -> None:
    values = np.geomspace(1e-12, 1e12, 97)
    for kind in ("ms", "s", "x", "pct", "num", "int", "bytes", "cores"):
        texts = column_text(pd.DataFrame({"v": values}), Col("v", "v", kind))
        assert not [t for t in texts if "e+" in t or "e-" in t], kind
    assert plain(1_234_567.0) == "1,230,000" and plain(0.000638) == "0.000638"


def test_intervals_follow_the_value_in_its_unit() -> None:
    frame = pd.DataFrame({"s": [1.22, 1.0, math.nan], "lo": [1.18, math.nan, 1.0],
                          "hi": [1.26, math.nan, 2.0], "t": [0.0313, 2.0, 30.0],
                          "tl": [0.0302, 1.9, math.nan], "th": [0.0345, 2.1, 31.0]})
    assert column_text(frame, Col("s", "", "x", interval=("lo", "hi"))) == [
        "x1.22 (1.18-1.26)", "x1", ""]
    assert column_text(frame, Col("t", "", "ms", interval=("tl", "th")))[:2] == [
        "31.3 us (30.2 us - 34.5 us)", "2 ms (1.9 ms - 2.1 ms)"]
    assert column_text(frame, Col("s", "", "num", empty="n/a"))[2] == "n/a"


def test_markdown_tables_use_the_words_and_units_of_their_columns() -> None:
    frame = pd.DataFrame({"median_ms": [0.0313], "roofline_frac": [0.5], "name": ["a|b"]})
    text = md_table(frame, [Col("name", "implementation"), Col("median_ms", "median time", "ms"),
                            Col("roofline_frac", "of roofline", "pct")])
    assert text.splitlines() == ["| implementation | median time | of roofline |",
                                 "|:---|---:|---:|", "| a\\|b | 31.3 us | 50% |"]

"""report.html and compare.html in a real browser (headless Chromium through playwright): they
load with no network access, fit the window, sort, filter, link and keep long rows short.

Skipped where playwright or a Chromium is missing (``apt-get install chromium``; playwright
drives the system browser, set ``LAYERBENCH_CHROMIUM`` to use another one).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reports.compare import compare_runs
from reports.compare_report import write_comparison
from reports.report import build_report
from tests._runs import FakeCase, fake_run, noisy

pytestmark = pytest.mark.browser
WIDTH, HEIGHT = 1400, 900
CHROMIUM = os.environ.get("LAYERBENCH_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _cases(slow: float = 1.0) -> list[FakeCase]:
    cases = []
    sizes = {"N1": 1, "N8": 8, "N64": 64, "N16_Cin64_Cout128_H56_W56_k3_s2_p1": 512}
    for seed, (case, n) in enumerate(sizes.items()):
        common = {"case": case, "flops": 10**6 * n, "params": {"N": n}}
        cases += [FakeCase("builtin", seconds=noisy(1e-5 * n, seed=seed), **common),
                  FakeCase("im2col", seconds=noisy(3e-5 * n * slow, seed=seed), **common),
                  FakeCase("einsum", seconds=noisy(2e-5 * n, seed=seed), rel_err=6e-6, **common),
                  FakeCase("loops", status="skipped", reason="predicted 2.6 h per call > "
                           "--budget 10 s: " + "a reason that goes on and on " * 12, **common)]
    return cases


def _unsteady(run: Path) -> Path:
    """Intervals on every timed row, einsum's marked unstable with a long flag (as a busy
    machine leaves them): the widest tables a report has."""
    path = run / "results.csv"
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    timed = frame["median_ms"] > 0
    frame.loc[timed, "ci_lo_ms"] = frame.loc[timed, "median_ms"] * 0.97
    frame.loc[timed, "ci_hi_ms"] = frame.loc[timed, "median_ms"] * 1.04
    frame.loc[timed, "stable"] = (frame.loc[timed, "impl"] != "einsum").astype(int)
    frame["flags"] = np.where(timed & (frame["impl"] == "einsum"),
                              "imprecise: median and speedup known to +-10.2%, target +-2.0% "
                              "(n=105); interference: other processes used 1.0 of 2 cores", "")
    frame.to_csv(path, index=False)
    return run


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browser")
    a, b = _unsteady(fake_run(root / "a", _cases())), fake_run(root / "b", _cases(slow=1.5))
    build_report(a)
    write_comparison(compare_runs([a, b]), root / "cmp")
    return {"report": a / "report.html", "compare": root / "cmp" / "compare.html"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def opened(browser: Any) -> Iterator[Any]:
    """A function that opens a page offline: any request beyond the file itself and its data
    URIs fails the test."""
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, offline=True)
    fetched: list[str] = []
    errors: list[str] = []

    def open_page(path: Path) -> Any:
        page = context.new_page()
        page.on("request", lambda r: fetched.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        return page

    yield open_page
    context.close()
    assert [u for u in fetched if not u.startswith(("file:", "data:"))] == []
    assert errors == []


def _column(page: Any, table: str, title: str) -> int:
    heads = page.locator(f"#{table} thead th").all_inner_texts()
    return next(i for i, h in enumerate(heads) if h.strip().rstrip("▲▼ ") == title)


def _values(page: Any, table: str, column: int) -> list[str]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr:not([hidden])",
        f"rows => rows.map(r => r.cells[{column}].dataset.v ?? r.cells[{column}].textContent)")


@pytest.mark.parametrize("name", ["report", "compare"])
def test_the_page_loads_offline_fits_the_window_and_shows_its_figures(
        pages: dict[str, Path], opened: Any, name: str) -> None:
    page = opened(pages[name])
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    # nothing sticks out of the page's column: wide tables scroll inside their own box
    assert page.evaluate("document.body.scrollWidth <= document.body.clientWidth")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and min(widths) > 0
    box = page.locator("#cases").locator("xpath=..")  # the wide table scrolls in its own box
    assert box.evaluate("b => b.scrollWidth > b.clientWidth")


def test_the_verdict_is_on_the_first_screen(pages: dict[str, Path], opened: Any) -> None:
    page = opened(pages["report"])
    verdict = page.locator("table.verdict").bounding_box()
    assert verdict is not None and verdict["y"] + verdict["height"] < HEIGHT
    assert "builtin" in page.locator("table.verdict").inner_text()


def test_a_header_click_sorts_by_number_with_empty_cells_last(pages: dict[str, Path],
                                                               opened: Any) -> None:
    page = opened(pages["report"])
    column = _column(page, "cases", "median time")
    header = page.locator("#cases thead th").nth(column)
    header.click()
    values = _values(page, "cases", column)
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers) and len(numbers) == 12
    assert values[len(numbers):] == [""] * 4  # skipped cases have no time
    header.click()
    numbers = [float(v) for v in _values(page, "cases", column) if v]
    assert numbers == sorted(numbers, reverse=True)


def test_the_filter_keeps_rows_with_every_word(pages: dict[str, Path], opened: Any) -> None:
    page = opened(pages["report"])
    box = page.locator('input.filter[data-table="cases"]')
    box.fill("im2col n8")
    assert page.locator("#cases tbody tr:not([hidden])").count() == 1
    box.fill("-skipped")
    assert page.locator("#cases tbody tr:not([hidden])").count() == 12
    assert page.locator("span.shown").first.inner_text() == "12 of 16 rows"


def _heights(rows: Any) -> list[float]:
    return [rows.nth(i).bounding_box()["height"] for i in range(rows.count())]


def test_skipped_rows_stay_one_line_until_clicked(pages: dict[str, Path], opened: Any) -> None:
    page = opened(pages["report"])
    rows = page.locator("#cases tbody tr", has_text="skipped")
    heights = _heights(rows)
    assert rows.count() == 4 and max(heights) < 30
    reason = rows.first.locator("td.long")
    reason.click()
    assert rows.first.bounding_box()["height"] > 2 * heights[0]


def test_every_row_of_a_comparison_is_one_line(pages: dict[str, Path], opened: Any) -> None:
    page = opened(pages["compare"])
    rows = page.locator("#cases tbody tr")
    assert rows.count() == 16 and max(_heights(rows)) < 30
    assert page.locator("#cases tbody tr", has_text="skipped").count() == 4


def test_a_row_links_to_its_figure(pages: dict[str, Path], opened: Any) -> None:
    page = opened(pages["report"])
    page.locator("#cases tbody tr").first.get_by_role("link", name="figure").click()
    target = page.evaluate("location.hash")
    assert target.startswith("#fig-conv-")
    top = page.locator(target).bounding_box()["y"]
    assert 0 <= top < HEIGHT / 2  # scrolled to the figure

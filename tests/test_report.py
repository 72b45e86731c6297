"""Reports built from fabricated runs: the files, their numbers, and that they stand alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from reports.report import build_report, status_counts, variant_summary
from reports.schema import RunDataError, load_run
from tests._report import assert_links_resolve, assert_self_contained
from tests._runs import FakeCase, fake_run

SIZES = {"N1": 1, "N8": 8, "N64": 64}


def _cases() -> list[FakeCase]:
    """conv: builtin, im2col 4x slower (time proportional to FLOPs), loops measured once then
    skipped; rnn: builtin and a crashing impl."""
    cases = []
    for case, n in SIZES.items():
        flops = 10**6 * n
        common = {"case": case, "flops": flops, "bytes": 10**4 * n, "params": {"N": n}}
        cases.append(FakeCase("builtin", seconds=[1e-10 * flops] * 5, **common))
        cases.append(FakeCase("im2col", seconds=[4e-10 * flops] * 5, **common))
        if n == 1:
            cases.append(FakeCase("loops", seconds=[1e-6 * flops] * 3, **common))
        else:
            cases.append(FakeCase("loops", status="skipped", reason="predicted 9 min > budget",
                                  predicted_s=540.0, predicted_call_s=60.0, **common))
    cases.append(FakeCase("builtin", layer="rnn", seconds=[2e-3] * 5, params={"T": 4}))
    cases.append(FakeCase("fused", layer="rnn", status="error", params={"T": 4},
                          reason="RuntimeError: shapes do not match"))
    return cases


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = fake_run(tmp_path_factory.mktemp("runs") / "fake-run", _cases())
    build_report(run)
    return run


def test_report_files_exist_and_are_not_empty(report: Path) -> None:
    for name in ("report.html", "report.md"):
        assert (report / name).stat().st_size > 1000, name
    plots = list((report / "plots").glob("*.*"))
    assert {"conv_latency", "conv_speedup", "conv_roofline", "conv_correctness"} <= {
        p.stem for p in plots}
    for plot in plots:  # SVG, or PNG where a figure draws many points
        assert plot.read_bytes().startswith({".png": b"\x89PNG", ".svg": b"<?xml"}[plot.suffix])


def test_html_stands_alone_and_shows_the_run(report: Path) -> None:
    html = (report / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    for text in ("Test CPU", "2.13.0+cpu", "0" * 40, "float32 400 GFLOP/s", "copy 27.0 GB/s",
                 "Failures and skips", "RuntimeError: shapes do not match",
                 "predicted 9 min &gt; budget", "Every case"):
        assert text in html, text
    assert html.count("data:image/png;base64,") + html.count("data:image/svg+xml;base64,") \
        == len(list((report / "plots").glob("*.*")))


def test_markdown_is_concise_and_links_resolve(report: Path) -> None:
    markdown = (report / "report.md").read_text(encoding="utf-8")
    assert_links_resolve(markdown, report)
    assert "RuntimeError: shapes do not match" in markdown  # failures are listed
    assert "2 case(s) skipped" in markdown
    assert len(markdown.splitlines()) < 80


def test_status_counts_per_layer(report: Path) -> None:
    frame = load_run(report)[0]
    counts = status_counts(frame).set_index("layer")
    assert counts.loc["conv", "cases"] == 9
    assert counts.loc["conv", "ok"] == 7 and counts.loc["conv", "skipped"] == 2
    assert counts.loc["rnn", "error"] == 1 and counts.loc["rnn", "ok"] == 1


def test_variant_summary_numbers(report: Path) -> None:
    frame = load_run(report)[0]
    summary = variant_summary(frame[frame["layer"] == "conv"]).set_index("variant")
    assert summary.loc["im2col", "speedup_vs_builtin"] == pytest.approx(0.25)
    assert summary.loc["builtin", "speedup_vs_builtin"] == pytest.approx(1.0)
    # time proportional to FLOPs: a growth exponent of exactly 1
    assert summary.loc["im2col", "growth_exponent"] == pytest.approx(1.0)
    assert math.isnan(summary.loc["loops", "growth_exponent"])  # one measured size only
    assert summary.loc["loops", "ok"] == 1 and summary.loc["loops", "cases"] == 3


def test_a_report_of_nothing_but_failures(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "failed", [
        FakeCase("builtin", status="error", reason="RuntimeError: no"),
        FakeCase("loops", status="skipped", reason="predicted 2 h > budget")])
    paths = build_report(run)
    assert "RuntimeError: no" in (run / "report.html").read_text(encoding="utf-8")
    assert all(p.stat().st_size > 0 for p in paths)


def test_a_missing_run_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(RunDataError, match="not a run directory"):
        build_report(tmp_path / "nothing")


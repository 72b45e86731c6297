"""Verdicts that respect uncertainty: ties where intervals overlap, unstable and flagged cases
marked wherever a run is shown, the busy-machine warning, and compare's ``suspicious``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.console import Console

from reports.analysis import best_per_size, mark
from reports.compare import compare_runs
from reports.compare_report import compare
from reports.console import load_lines, problems, summary_tables
from reports.report import build_report
from reports.schema import load_run, write_json
from tests._runs import FakeCase, fake_run, noisy

INTERFERENCE = ("interference: other processes used 1.0 of 2 cores, leaving 1.0 for 2 threads "
                "(try --threads 1)")
TOO_FAST = ">10x builtin: x107 faster than the builtin, take a second look"
BUSY = {"cores": 2, "loadavg_start": [1.2, 0.9, 0.7], "loadavg_end": [3.9, 2.5, 1.1],
        "busy_cores_at_start": 0.05, "busy_cores_mean": 0.9, "busy_cores_max": 1.1,
        "timed_cases": 6, "unstable_cases": 1, "busy": True,
        "warning": "the machine was busy: other processes used 0.9 of 2 cores on average"}
QUIET = {**BUSY, "busy_cores_mean": 0.01, "busy_cores_max": 0.02, "busy": False,
         "unstable_cases": 0, "warning": None}


def amend(run: Path, changes: dict[tuple[str, str], dict[str, Any]]) -> Path:
    """Set new columns of ``results.csv`` rows, by (impl, case), as a runner would write them;
    every other timed row gets a narrow interval and ``stable`` 1."""
    path = run / "results.csv"
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    timed = frame["median_ms"] > 0
    frame.loc[timed, "ci_lo_ms"] = frame.loc[timed, "median_ms"] * 0.99
    frame.loc[timed, "ci_hi_ms"] = frame.loc[timed, "median_ms"] * 1.01
    frame.loc[timed, ["stable", "precision", "busy_cores"]] = [1, 0.01, 0.0]
    frame["flags"] = frame["flags"].astype(object)
    for (impl, case), values in changes.items():
        rows = (frame["impl"] == impl) & (frame["case"] == case)
        assert rows.any(), (impl, case)
        for column, value in values.items():
            frame.loc[rows, column] = value
    frame.to_csv(path, index=False)
    return run


def _sized(impl_ms: dict[str, float], case: str = "N1") -> list[FakeCase]:
    return [FakeCase(impl, case, [ms / 1e3] * 5) for impl, ms in impl_ms.items()]


def _interval(lo: float, hi: float) -> dict[str, float]:
    return {"ci_lo_ms": lo, "ci_hi_ms": hi}


@pytest.fixture
def three(tmp_path: Path) -> Path:
    """builtin 3 ms; im2col 1.00 ms and einsum 1.02 ms at N1, im2col 1.0 and einsum 1.5 at N8."""
    return fake_run(tmp_path / "three", [*_sized({"builtin": 3.0, "im2col": 1.0, "einsum": 1.02}),
                                         *_sized({"builtin": 3.0, "im2col": 1.0, "einsum": 1.5},
                                                 "N8")])


# --- the fastest per size ------------------------------------------------------------------------


def test_overlapping_intervals_are_a_tie_and_separated_ones_name_the_fastest(three: Path) -> None:
    amend(three, {("im2col", "N1"): _interval(0.95, 1.05), ("einsum", "N1"): _interval(1.0, 1.1),
                  ("im2col", "N8"): {**_interval(0.95, 1.05), "speedup_lo": 2.9,
                                     "speedup_hi": 3.1},
                  ("einsum", "N8"): _interval(1.4, 1.6)})
    best = best_per_size(load_run(three)[0]).set_index("case")
    assert best.loc["N1", "verdict"] == "tie: im2col, einsum"
    assert best["separated"].tolist() == [False, True] and best.loc["N1", "best"] == "im2col"
    assert best.loc["N8", "verdict"] == "im2col"
    assert best.loc["N8", "runner_up"] == "einsum"
    assert (best.loc["N8", "speedup_lo"], best.loc["N8", "speedup_hi"]) == (2.9, 3.1)


def test_a_tie_names_every_implementation_overlapping_the_best(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "r", _sized({"builtin": 1.2, "im2col": 1.0, "einsum": 1.1}))
    amend(run, {("im2col", "N1"): _interval(0.9, 1.25), ("einsum", "N1"): _interval(1.05, 1.2),
                ("builtin", "N1"): _interval(1.15, 1.3)})
    assert best_per_size(load_run(run)[0])["verdict"].item() == "tie: im2col, einsum, builtin"


def test_runs_without_intervals_keep_the_old_rule(three: Path) -> None:
    best = best_per_size(load_run(three)[0]).set_index("case")  # no interval columns written
    assert best.loc["N1", "verdict"] == "im2col (interval unknown)"
    assert math.isnan(best.loc["N1", "separated"])
    assert best.loc["N1", "runner_up"] == "einsum"


def test_marks_follow_stability_and_flag_tags() -> None:
    assert mark(0, INTERFERENCE) == "~" and mark(1, TOO_FAST) == "!"
    assert mark(1, f"{INTERFERENCE}; {TOO_FAST}") == "!"  # stable says ~, the tags say !
    assert mark(1, ">10x builtin: x12 faster than the builtin; take a second look") == "!"
    assert mark(0, f"imprecise: +-4% > 2%; {TOO_FAST}") == "~!"
    assert mark(1, "") == "" and mark(math.nan, math.nan) == ""


# --- marks in what a run prints and its report ---------------------------------------------------


@pytest.fixture
def shaky(three: Path) -> Path:
    """``three`` with einsum at N8 unstable and im2col at N1 flagged implausible."""
    return amend(three, {("einsum", "N8"): {"stable": 0, "flags": INTERFERENCE},
                         ("im2col", "N1"): {"flags": TOO_FAST}})


def _text(tables: list[Any]) -> str:
    out = Console(record=True, width=250, color_system=None)
    for table in tables:
        out.print(table)
    return out.export_text()


def _row(text: str, case: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"│ {case} "))


def test_console_tables_mark_unstable_and_flagged_cells(shaky: Path) -> None:
    results = load_run(shaky)[0]
    text = _text(summary_tables(results))
    n1, n8 = _row(text, "N1"), _row(text, "N8")
    assert "!1 ms x3 ok" in n1 and "~" not in n1
    assert "~1.5 ms x2 ok" in n8 and "!" not in n8
    caption = " ".join(text.split())  # the caption says what the marks mean
    assert "~ unstable: missed its precision" in caption and "! implausible (" in caption
    assert "~" not in _text(summary_tables(load_run(fake_run(shaky.parent / "q", _sized(
        {"builtin": 1.0, "im2col": 2.0})))[0]))
    lines = problems(results)
    assert lines == [f"  flagged  conv/im2col cpu float32 fwd N1: {TOO_FAST}",
                     f" unstable  conv/einsum cpu float32 fwd N8: {INTERFERENCE}"]


def test_console_tables_give_the_verdict_with_the_speedup_interval(three: Path) -> None:
    assert _row(_text(summary_tables(load_run(three)[0])), "N1").endswith(
        "│ im2col (interval unknown) x3 │")
    amend(three, {("im2col", "N8"): {"speedup_lo": 2.9, "speedup_hi": 3.1}})
    text = _text(summary_tables(load_run(three)[0]))
    assert _row(text, "N8").endswith("│ im2col x3 (2.9-3.1) │")
    assert _row(text, "N1").endswith("│ tie: im2col, einsum │")  # 1.00 +-1% and 1.02 +-1%


def test_report_marks_unstable_cases_and_warns_of_a_busy_machine(shaky: Path) -> None:
    meta = json.loads((shaky / "meta.json").read_text(encoding="utf-8"))
    write_json(shaky / "meta.json", {**meta, "load": BUSY})
    build_report(shaky)
    md = (shaky / "report.md").read_text(encoding="utf-8")
    assert md.index(BUSY["warning"]) < md.index("## Verdict") < md.index("## Run")
    assert "other processes used 0.9 of 2 cores on average (max 1.1)" in md
    assert "1.20/0.90/0.70 at start" in md
    assert "| ~einsum | cpu float32 fwd | N8 |" in md and INTERFERENCE in md
    assert "| !im2col | cpu float32 fwd | N1 |" in md and TOO_FAST in md
    assert "Marks: ~ unstable" in md
    page = (shaky / "report.html").read_text(encoding="utf-8")
    assert page.index(BUSY["warning"]) < page.index('<h2 id="verdict">') < page.index(
        '<h2 id="run">')
    assert f'<tr class="flagged" title="{INTERFERENCE}">' in page
    assert '<td class="text">~einsum</td>' in page
    assert f'title="{TOO_FAST.replace(">", "&gt;")}"' in page


def test_a_quiet_run_has_no_warning_and_no_marks(tmp_path: Path) -> None:
    run = amend(fake_run(tmp_path / "quiet", _sized({"builtin": 1.0, "im2col": 2.0}),
                         load=QUIET), {})
    build_report(run)
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "Warning" not in md and "Marks:" not in md and "~" not in md
    assert "machine load" in md and "0.01 of 2 cores" in md
    assert 'class="flagged"' not in (run / "report.html").read_text(encoding="utf-8")


def test_load_lines_give_the_warning_only_when_there_is_one() -> None:
    assert load_lines({"load": BUSY}) == [f"warning: {BUSY['warning']}"]
    assert load_lines({"load": QUIET}) == []
    assert load_lines({}) == [] and load_lines({"load": None}) == []


# --- compare: an unstable case is suspicious, never slower or faster -----------------------------


def _pair(tmp_path: Path, stable: int) -> list[Path]:
    """A: builtin and im2col at 1 ms; B: im2col 3x slower, ``stable`` in B as given."""
    def cases(factor: float, seed: int) -> list[FakeCase]:
        return [FakeCase(impl, "N1", noisy(ms * (factor if impl == "im2col" else 1.0), 30,
                                           seed=seed + i))
                for i, (impl, ms) in enumerate((("builtin", 1e-3), ("im2col", 1e-3)))]

    a = amend(fake_run(tmp_path / f"a{stable}", cases(1.0, 0)), {})
    b = amend(fake_run(tmp_path / f"b{stable}", cases(3.0, 10), load=BUSY),
              {("im2col", "N1"): {"stable": stable, "flags": INTERFERENCE if not stable else ""}})
    return [a, b]


def test_compare_calls_an_unstable_slowdown_suspicious(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    runs = _pair(tmp_path, stable=0)
    c = compare_runs(runs)
    row = c.frame.set_index("impl").loc["im2col"]
    assert row["verdict"] == "suspicious" and not row["regression"]
    assert row["ratio"] == pytest.approx(3.0, rel=0.05)
    assert f"unstable in {runs[1].name}" in row["note"] and INTERFERENCE in row["note"]
    assert compare(runs, "auto", 0.10, 0.01, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "REGRESSION" not in out and "suspicious 1" in out
    assert "load A a0: unknown" in out
    assert "load B b0: other processes used 0.9 of 2 cores" in out
    md = (tmp_path / "out" / "compare.md").read_text(encoding="utf-8")
    assert "## Suspicious (1)" in md and "load: other processes used 0.9" in md


def test_compare_calls_the_same_slowdown_slower_when_stable(tmp_path: Path) -> None:
    runs = _pair(tmp_path, stable=1)
    c = compare_runs(runs)
    assert c.frame.set_index("impl").loc["im2col", "verdict"] == "slower"
    assert compare(runs, "auto", 0.10, 0.01, tmp_path / "out") == 1


def _finished(bar: object, n: int) -> None:
    from reports.record import Case, CaseResult, Samples

    for i in range(n):
        case = Case("conv", "im2col", "none", (("N", i + 1),), "cpu", "float32", "fwd",
                    f"N{i + 1}")
        bar.started(case)  # type: ignore[attr-defined]
        bar.finished(CaseResult(case, samples=Samples((2e-3,), 1)))  # type: ignore[attr-defined]


def test_without_a_terminal_progress_is_plain_lines_with_eta(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from reports.console import ProgressBar

    out = io.StringIO()
    with ProgressBar(3, Console(file=out, force_terminal=False, width=200)) as bar:
        _finished(bar, 3)
    lines = out.getvalue().splitlines()
    # the first line at once, then at most one every LINE_EVERY_S, and always the last
    assert lines[0].startswith("[1/3] conv/im2col cpu float32 fwd N1: ok 2 ms (elapsed ")
    assert lines[-1].startswith("[3/3] conv/im2col cpu float32 fwd N3: ok")
    assert all("eta" in line for line in lines[:-1]) and len(lines) in (2, 3)
    monkeypatch.setattr(ProgressBar, "LINE_EVERY_S", 0.0)
    out = io.StringIO()
    with ProgressBar(3, Console(file=out, force_terminal=False, width=200)) as bar:
        _finished(bar, 3)
    assert [line[:5] for line in out.getvalue().splitlines()] == ["[1/3]", "[2/3]", "[3/3]"]
    out = io.StringIO()
    with ProgressBar(3, Console(file=out, force_terminal=False), enabled=False) as bar:
        _finished(bar, 3)  # --quiet: nothing at all
    assert out.getvalue() == ""


def test_the_operator_table_keeps_its_title_on_one_line() -> None:
    import io

    from rich.console import Console

    from reports.console import ops_table

    ops = pd.DataFrame({"op": ["aten::mm"], "calls": [1.0], "self_cpu_us": [3.0],
                        "cpu_total_us": [3.0], "self_device_us": [0.0],
                        "device_total_us": [0.0]})
    out = Console(file=io.StringIO(), width=160, force_terminal=False)
    out.print(ops_table(ops, 5, "conv/im2col N2_Cin1_Cout4_H8_W8_k3_s1_p0"))
    first = out.file.getvalue().splitlines()[0]  # type: ignore[attr-defined]
    assert first.strip() == ("conv/im2col N2_Cin1_Cout4_H8_W8_k3_s1_p0: top operators by self "
                             "time (per call)")

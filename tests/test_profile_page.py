"""The pieces of the offline profile page: kineto's stderr lines kept out, per-call times with
their spread, operator tables without scientific notation, and the timeline of a call with
hundreds of thousands of operators."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from reports.console import ops_table
from reports.profile_page import case_page, per_call_text
from reports.schema import OPS_COLUMNS
from reports.timeline import SPAN_COLUMNS, draw_timeline, first_step, nesting, step_ms
from suites.profiling import quietly
from tests._profiles import GPU_ROWS, gpu_ops

MARKER = b"USDT:2026-12-07 22:02:51 18892:18892 SyncActivityProfilerHandler.cpp:52] profiler_"


class NoisyProfiler:
    """Writes to fd 2 as kineto does when it starts and stops, with a real message between."""

    def __enter__(self) -> NoisyProfiler:
        os.write(2, MARKER + b"start\nreal error: out of disk\n")
        return self

    def step(self) -> None:
        os.write(2, b"a warning from step\n")

    def __exit__(self, *exc: object) -> None:
        os.write(2, MARKER + b"stop\n")


def test_kineto_markers_are_dropped_and_every_other_stderr_line_kept(
        capfd: pytest.CaptureFixture[str]) -> None:
    with quietly(NoisyProfiler()) as next_step:  # type: ignore[arg-type]
        os.write(2, b"the implementation's own line\n")
        next_step()
    err = capfd.readouterr().err
    assert err == ("real error: out of disk\nthe implementation's own line\n"
                   "a warning from step\n")


def test_the_real_profiler_writes_no_markers(capfd: pytest.CaptureFixture[str]) -> None:
    prof = torch.profiler.profile(schedule=torch.profiler.schedule(wait=0, warmup=1, active=1,
                                                                   repeat=1))
    with quietly(prof) as next_step:
        for _ in range(2):
            torch.ones(4).sum()
            next_step()
    assert "USDT" not in capfd.readouterr().err
    assert any(e.key == "aten::sum" for e in prof.key_averages())


def test_per_call_states_the_steps_and_their_spread() -> None:
    assert per_call_text([1035.0, 1032.0, 24.0]) == (
        "per call: median 1032 ms over 3 active steps (24-1035 ms; steps differ by 43x: look at "
        "the timeline)")
    assert per_call_text([2.0, 2.1, 2.05]) == (
        "per call: median 2.05 ms over 3 active steps (2-2.1 ms)")
    assert per_call_text([0.0412]) == "per call: 41.2 us (1 active step)"


def _ops(self_us: list[float]) -> pd.DataFrame:
    key = {"layer": "conv", "impl": "loops", "compile": "none", "device": "cpu",
           "dtype": "float32", "mode": "fwd", "case": "c", "profiled_case": "c"}
    return pd.DataFrame([{**key, "op": f"aten::op{i}", "calls": 97402.0, "self_cpu_us": us,
                          "cpu_total_us": 2 * us, "self_device_us": 0.0, "device_total_us": 0.0,
                          "self_cpu_mem_bytes": 3e6, "note": ""}
                         for i, us in enumerate(self_us)], columns=list(OPS_COLUMNS))


def test_operator_table_prints_times_in_one_unit_without_scientific_notation() -> None:
    console = Console(width=200, record=True)
    console.print(ops_table(_ops([6.731e5, 12.5, 0.004]), 10, "conv/loops c"))
    text = console.export_text()
    assert "self CPU ms" in text and "673" in text and "97,402" in text and "2.86 MiB" in text
    assert "e+0" not in text and "e-0" not in text


def test_nesting_counts_the_enclosing_spans_of_a_track() -> None:
    spans = pd.DataFrame([("a", "cpu:1", 0.0, 10.0), ("b", "cpu:1", 1.0, 3.0),
                          ("c", "cpu:1", 1.5, 1.0), ("d", "cpu:1", 5.0, 2.0),
                          ("e", "cpu:2", 2.0, 1.0)], columns=list(SPAN_COLUMNS))
    assert list(nesting(spans)) == [0, 1, 2, 1, 0]


def test_first_step_keeps_its_own_operators_from_its_start() -> None:
    spans = pd.DataFrame([("ProfilerStep#2", "cpu:1", 100.0, 50.0), ("x", "cpu:1", 110.0, 5.0),
                          ("ProfilerStep#3", "cpu:1", 160.0, 20.0), ("y", "cpu:1", 165.0, 5.0),
                          ("kernel", "cuda0:7", 155.0, 3.0)], columns=list(SPAN_COLUMNS))
    assert step_ms(spans) == [0.05, 0.02]
    found = first_step(spans)
    assert list(found["name"]) == ["x", "kernel"]  # a kernel runs after its launch's step
    assert list(found["start_us"]) == [10.0, 55.0]


def test_a_call_of_a_quarter_million_operators_draws_small(tmp_path: Path) -> None:
    n = 250_000
    rng = np.random.default_rng(0)
    starts = np.arange(n) * 2.0  # back to back, 2 us apart: 0.5 s
    spans = pd.DataFrame({"name": rng.choice(["aten::select", "aten::mul", "aten::add"], n),
                          "track": "cpu:1", "start_us": starts, "dur_us": 1.5})
    spans = pd.concat([spans, spans.assign(name="aten::as_strided", dur_us=0.5,
                                           start_us=starts + 0.2)], ignore_index=True)
    path = draw_timeline(spans, "five loops", tmp_path / "timeline.png", call_ms=500.0)
    assert path is not None and path.read_bytes().startswith(b"\x89PNG")
    assert path.stat().st_size < 300_000


def test_a_case_whose_profiler_failed_gets_a_page_saying_so(tmp_path: Path) -> None:
    ops = _ops([1.0]).assign(op="<profiler failed>", note="RuntimeError: no kineto")
    page = case_page(tmp_path, ops.iloc[:1], tmp_path / "index.html").read_text()
    assert "The profiler failed on this case: RuntimeError: no kineto" in page


#: an operator and its kernel, and a kernel of its own: 400 us of kernels, 700 us in all
GPU_CASE = GPU_ROWS[:1] + GPU_ROWS[3:5]


def test_a_gpu_page_totals_the_kernels_once_and_marks_each_row(tmp_path: Path) -> None:
    page = case_page(tmp_path, gpu_ops(GPU_CASE), tmp_path / "index.html").read_text()
    facts = page[:page.index("<h2>")]
    assert "<dt>GPU time per call</dt><dd>400 us</dd>" in facts  # not 700: each kernel once
    table = page[page.index("<h2>Operators</h2>"):]
    assert ">on<" in table and ">cuda<" in table and ">cpu<" in table
    assert "the case's GPU time is the sum over the kernels" in table
    cpu_page = case_page(tmp_path, _ops([5.0]), tmp_path / "cpu.html").read_text()
    assert "GPU time per call" not in cpu_page and ">on<" not in cpu_page


def test_the_operator_table_marks_kernels_on_a_gpu() -> None:
    console = Console(width=200, record=True)
    console.print(ops_table(gpu_ops(GPU_CASE), 10, "attention/matmul c"))
    rows = [[cell.strip() for cell in line.split(line[0])[1:-1]]
            for line in console.export_text().splitlines() if line[:1] in "┃│" and line]
    on = {row[0]: row[rows[0].index("on")] for row in rows[1:]}
    assert on == {"aten::bmm": "cpu", "ampere_fp16_gemm": "cuda", "softmax_warp_forward": "cuda"}

"""Launch-bound cases on a GPU: back-to-back wall time beside the event time, the flag it
raises, and the CUDA-graph option; the logic runs here with a fabricated clock and device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.record import CaseResult, Samples
from suites import timing
from suites.cases import new_case
from suites.config import BenchConfig
from suites.presets import notes_size
from suites.runner import judge
from suites.timing import LAUNCH_BOUND_RATIO, launch_bound, wall_per_call
from tests._cli import invoke, only_run_dir


class _Clock:
    """``time.perf_counter`` that moves only when a fabricated call says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Device:
    def __init__(self) -> None:
        self.syncs = 0

    def synchronize(self) -> None:
        self.syncs += 1


def test_wall_time_is_per_call_of_a_back_to_back_block(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, where, calls = _Clock(), _Device(), []
    monkeypatch.setattr(timing.time, "perf_counter", clock)

    def step() -> None:  # 2 ms of CPU per call (launches), the device never waits
        calls.append(1)
        clock.now += 2e-3

    assert wall_per_call(step, where, seconds=0.1) == pytest.approx(2e-3)  # type: ignore[arg-type]
    assert len(calls) == 1 + 50 and where.syncs == 3  # one probe call, then a 0.1 s block
    calls.clear()
    wall_per_call(step, where, seconds=1e-6, min_calls=10)  # type: ignore[arg-type]
    assert len(calls) == 1 + 10


@pytest.mark.parametrize(("wall", "hi", "flagged"), [
    (50e-6, 12e-6, True), (12.4e-6, 12e-6, False), (11e-6, 10.5e-6, False),
    (16e-6, 20e-6, False), (float("nan"), 12e-6, False)])
def test_launch_bound_needs_a_clear_excess(wall: float, hi: float, flagged: bool) -> None:
    median = 10e-6
    flag = launch_bound(wall, hi, median)
    assert (flag is not None) == flagged
    if flagged:
        assert flag.startswith("launch_bound: 50 us per call back to back against 10 us")
    assert LAUNCH_BOUND_RATIO * median > 12.4e-6  # what keeps the second case unflagged


def test_judge_flags_a_launch_bound_case_once(tmp_path: Path) -> None:
    case = new_case("conv", "builtin", "none", notes_size("conv"), "cpu", "float32", "fwd")
    result = CaseResult(case, samples=Samples((10e-6,) * 20, 1, tuple(range(20)), 1),
                        wall_s=40e-6, threads=1)
    config = BenchConfig(layers=("conv",))
    for _ in range(2):  # judged again, as a resumed run does
        judge(result, config, {case: result.samples}, None)
    assert [f for f in result.flags if f.startswith("launch_bound")] == [
        launch_bound(40e-6, 10e-6, 10e-6)]
    assert result.row()["wall_ms"] == pytest.approx(0.04)


def test_cuda_graph_is_recorded_and_leaves_cpu_cases_alone(tmp_path: Path) -> None:
    done = invoke("bench", "conv", "--impl", "builtin", "--size", "N=1,C_in=1,C_out=2",
                  "--preset", "quick", "--cuda-graph", "--min-time", "0.01", "--max-time",
                  "0.05", "--quiet", "--no-report", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    meta = json.loads((only_run_dir(tmp_path) / "meta.json").read_text(encoding="utf-8"))
    assert meta["config"]["timing"]["cuda_graph"] is True
    header = (only_run_dir(tmp_path) / "results.csv").read_text(encoding="utf-8").split("\n")[0]
    assert "wall_ms" in header.split(",")

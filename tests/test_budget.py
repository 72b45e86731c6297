"""Time budgets: a naive loop predicted to take too long is skipped with the prediction."""

from __future__ import annotations

import math

import pytest
import torch

from impls import REGISTRY, register_impl
from reports.record import Case, CaseResult
from suites import budget
from suites.budget import case_seconds, predict
from suites.cases import new_case
from suites.config import BenchConfig, TimingConfig
from suites.runner import run, run_case

LAYER = REGISTRY.layer("conv")
MNIST = {"N": 64, "C_in": 1, "C_out": 8, "H": 28, "W": 28, "k": 3, "stride": 1, "padding": 0}
FAST_TIMING = TimingConfig(min_time_s=0.01, warmup_s=0.005, block_s=0.002, min_samples=3)


def _case(impl: str, params: dict[str, int], compile_mode: str = "none", dtype: str = "float32",
          mode: str = "fwd") -> Case:
    return new_case("conv", impl, compile_mode, params, "cpu", dtype, mode)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_loops_at_mnist_size_is_skipped_by_a_small_budget(mode: str) -> None:
    loops = REGISTRY.impl("conv", "loops")
    batch_sizes: list[int] = []

    def counting_loops(x, weight, bias, stride, padding):
        batch_sizes.append(x.shape[0])
        return loops.fn(x, weight, bias, stride, padding)

    config = BenchConfig(layers=("conv",), budget_s=0.5)
    with REGISTRY.scoped():
        register_impl("conv", "loops", naive=True, replace=True)(counting_loops)
        result = run_case(_case("loops", MNIST, mode=mode), config)
    assert result.status == "skipped", result.reason
    assert "predicted" in result.reason
    assert "budget" in result.reason
    assert result.predicted_s > config.budget_s
    assert result.samples is None
    # only the calibration size ran: the five loops never met the batch of 64
    assert batch_sizes
    assert MNIST["N"] not in batch_sizes
    row = result.row()
    assert row["status"] == "skipped"
    assert row["n_samples"] == 0
    assert math.isnan(row["median_ms"])
    assert row["predicted_s"] == result.predicted_s


def test_skipped_case_still_reaches_the_sinks() -> None:
    """Never silently dropped: a skipped case is a row like any other."""

    seen_started: list[Case] = []
    seen_finished: list[CaseResult] = []

    class Sink:
        def started(self, case: Case) -> None:
            seen_started.append(case)

        def finished(self, result: CaseResult) -> None:
            seen_finished.append(result)

    config = BenchConfig(layers=("conv",), budget_s=0.5)
    case = _case("loops", MNIST)
    results = run(config, [case], [Sink()])
    assert seen_started == [case]
    assert [r.case for r in seen_finished] == [case]
    assert results[0].status == "skipped"


def test_loops_within_budget_runs() -> None:
    tiny = {"N": 1, "C_in": 1, "C_out": 2, "H": 5, "W": 4, "k": 3, "stride": 1, "padding": 0}
    config = BenchConfig(layers=("conv",), budget_s=60.0, trials=2, timing=FAST_TIMING)
    result = run_case(_case("loops", tiny), config)
    assert result.status == "ok", result.reason
    assert 0 < result.predicted_s <= config.budget_s
    assert result.samples is not None
    assert len(result.samples.seconds) >= FAST_TIMING.min_samples


def test_loops_under_compile_is_skipped_with_a_reason() -> None:
    config = BenchConfig(layers=("conv",), compile_modes=("default",))
    result = run_case(_case("loops", MNIST, compile_mode="default"), config)
    assert result.status == "skipped"
    assert "loops" in result.reason
    assert "compile" in result.reason
    assert result.samples is None


def test_unsupported_dtype_is_skipped_with_a_reason() -> None:
    config = BenchConfig(layers=("conv",))
    with REGISTRY.scoped():
        register_impl("conv", "f64_only", devices=("cpu",), dtypes=(torch.float64,),
                      modes=("fwd",))(REGISTRY.impl("conv", "builtin").fn)
        for case, words in [(_case("f64_only", MNIST, dtype="float32"), "float32"),
                            (_case("f64_only", MNIST, dtype="float64", mode="fwdbwd"),
                             "fwdbwd")]:
            result = run_case(case, config)
            assert result.status == "skipped"
            assert words in result.reason


def test_prediction_scales_with_flops() -> None:
    loops = REGISTRY.impl("conv", "loops")
    config = BenchConfig(layers=("conv",))
    big = {**MNIST, "N": 4 * MNIST["N"]}
    assert LAYER.flops(big, "fwd") == 4 * LAYER.flops(MNIST, "fwd")
    small_prediction = predict(loops, LAYER, MNIST, torch.float32, "cpu", "fwd", config)
    big_prediction = predict(loops, LAYER, big, torch.float32, "cpu", "fwd", config)
    assert big_prediction.per_call_s > small_prediction.per_call_s
    assert big_prediction.case_s > small_prediction.case_s


class _FakeClock:
    """Every reading is 1 ms after the previous one: each timed call lasts exactly 1 ms."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-3
        return self.now


@pytest.mark.parametrize("params", [
    MNIST,
    {"N": 8, "C_in": 3, "C_out": 16, "H": 32, "W": 20, "k": 5, "stride": 2, "padding": 2},
], ids=LAYER.label)
def test_prediction_is_the_calibration_time_scaled_by_flops(
        monkeypatch: pytest.MonkeyPatch, params: dict[str, int]) -> None:
    monkeypatch.setattr(budget, "time", _FakeClock())
    loops = REGISTRY.impl("conv", "loops")
    config = BenchConfig(layers=("conv",))
    small = LAYER.calibration_params(params)
    LAYER.check(small)
    assert LAYER.flops(small, "fwd") < LAYER.flops(params, "fwd")
    prediction = predict(loops, LAYER, params, torch.float32, "cpu", "fwd", config)
    expected = 1e-3 * LAYER.flops(params, "fwd") / LAYER.flops(small, "fwd")
    assert prediction.per_call_s == pytest.approx(expected, rel=1e-9)
    assert prediction.case_s == pytest.approx(case_seconds(prediction.per_call_s, config))


@pytest.mark.parametrize("per_call_s", [2.0, 30.0])
def test_case_seconds_counts_trials_warmup_and_samples_of_a_slow_call(per_call_s: float) -> None:
    """A slow call runs once per trial, at least twice to warm up, and per timing sample."""
    config = BenchConfig(layers=("conv",), trials=3)
    calls = config.trials + 2 + config.timing.slow_min_samples
    assert case_seconds(per_call_s, config) >= calls * per_call_s

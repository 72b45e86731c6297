"""Time budgets: predict what a naive loop will cost before running it.

A naive implementation is first run on the layer's calibration size (same kernel, stride and
structure, tiny batch and channels); its time per FLOP, scaled to the case, predicts the cost of
one call. A case whose whole measurement (correctness trials, warm-up, timing) is predicted to
exceed the budget is recorded as ``skipped`` with the prediction, never run for minutes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from impls.registry import Impl, Layer, Params
from reports.style import format_seconds
from suites.config import BenchConfig
from suites.correctness import bind, make_trial
from suites.devices import device
from suites.timing import SLOW_CALL_S

CALIBRATION_S = 0.5  # time spent measuring one calibration, at most (beyond two calls)


@dataclass(frozen=True)
class Prediction:
    per_call_s: float
    case_s: float

    def reason(self, budget_s: float) -> str:
        return (f"predicted {format_seconds(self.case_s)} ({format_seconds(self.per_call_s)} "
                f"per call) > budget {format_seconds(budget_s)}; raise --budget to run it")


def case_seconds(per_call_s: float, config: BenchConfig) -> float:
    """Wall time of a whole case whose calls each take ``per_call_s``."""
    timing = config.timing
    floor = timing.slow_min_samples if per_call_s > SLOW_CALL_S else timing.min_samples
    warmup = max(2 * per_call_s, timing.warmup_s)
    return config.trials * per_call_s + warmup + max(timing.min_time_s, floor * per_call_s)


def predict(impl: Impl, layer: Layer, params: Params, dtype: torch.dtype, device_name: str,
            mode: str, config: BenchConfig) -> Prediction:
    """Time ``impl`` at the calibration size and scale by FLOPs.

    The best of up to five calls (at least two, stopping after ``CALIBRATION_S``): on a busy
    machine a single call can stall for milliseconds, which would skip a loop that is cheap.
    """
    small = layer.calibration_params(params)
    step = bind(impl.fn, make_trial(layer, small, config.seed, dtype, device_name, mode))
    where = device(device_name)
    best, spent, calls = float("inf"), 0.0, 0
    while calls < 2 or (calls < 5 and spent < CALIBRATION_S):
        where.synchronize()
        start = time.perf_counter()
        step()
        where.synchronize()
        elapsed = time.perf_counter() - start
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    per_call_s = best * layer.flops(params, mode) / max(layer.flops(small, mode), 1)
    return Prediction(per_call_s, case_seconds(per_call_s, config))

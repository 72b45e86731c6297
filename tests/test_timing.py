"""Timing statistics and the sampling loop (no assertion on how long anything takes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from suites.config import TimingConfig
from suites.timing import SLOW_CALL_S, Samples, measure, sample_count, warm_up


def test_statistics_of_a_hand_computed_example() -> None:
    samples = Samples((4.0, 1.0, 100.0, 3.0, 2.0), calls_per_sample=1)
    assert samples.median_s == 3.0
    assert samples.min_s == 1.0
    assert samples.mean_s == 22.0
    # sorted 1 2 3 4 100: the 25th and 75th percentiles are 2 and 4
    assert samples.iqr_s == 2.0


@pytest.mark.parametrize("n", [1, 2, 7, 50, 201])
def test_statistics_match_numpy(n: int) -> None:
    seconds = np.random.default_rng(n).lognormal(mean=-7.0, sigma=0.5, size=n)
    samples = Samples(tuple(float(s) for s in seconds), calls_per_sample=3)
    assert samples.median_s == pytest.approx(float(np.median(seconds)), rel=1e-12)
    q1, q3 = np.percentile(seconds, [25, 75])
    assert samples.iqr_s == pytest.approx(float(q3 - q1), rel=1e-12, abs=1e-18)
    assert samples.min_s == float(np.min(seconds))
    assert samples.mean_s == pytest.approx(float(np.mean(seconds)), rel=1e-12)
    assert samples.iqr_s >= 0
    assert samples.min_s <= samples.median_s


def test_measure_collects_positive_samples_of_a_cheap_call() -> None:
    config = TimingConfig(min_time_s=0.02, warmup_s=0.005, block_s=0.002, min_samples=5,
                          max_samples=40)
    x = torch.randn(64, 64)
    calls = [0]

    def step() -> torch.Tensor:
        calls[0] += 1
        return x @ x

    samples = measure(step, "cpu", config, threads=1)
    assert config.min_samples <= len(samples.seconds) <= config.max_samples
    assert all(s > 0 for s in samples.seconds)
    assert samples.calls_per_sample >= 1
    # every sample really called the step calls_per_sample times (plus the warm-up calls)
    assert calls[0] >= len(samples.seconds) * samples.calls_per_sample + 2


def test_measure_keeps_the_thread_count() -> None:
    before = torch.get_num_threads()
    config = TimingConfig(min_time_s=0.005, warmup_s=0.001, block_s=0.001, min_samples=2)
    measure(lambda: torch.ones(8).sum(), "cpu", config, threads=1)
    assert torch.get_num_threads() == before


def test_warm_up_calls_at_least_twice() -> None:
    calls = [0]

    def step() -> None:
        calls[0] += 1

    per_call_s = warm_up(step, "cpu", seconds=0.0)
    assert calls[0] >= 2
    assert per_call_s > 0


CONFIG = TimingConfig(min_time_s=0.5, min_samples=7, slow_min_samples=3, max_samples=200)


@pytest.mark.parametrize("per_call_s", [1e-9, 1e-6, 1e-4, 1e-3, 0.01, 0.1, 0.5, 0.99])
@pytest.mark.parametrize("calls_per_sample", [1, 10, 1000])
def test_sample_count_stays_within_bounds(per_call_s: float, calls_per_sample: int) -> None:
    count = sample_count(per_call_s, calls_per_sample, CONFIG)
    assert CONFIG.min_samples <= count <= CONFIG.max_samples


def test_sample_count_fills_min_time() -> None:
    # 10 ms per sample, 0.5 s wanted: 50 samples, inside both bounds
    assert sample_count(0.001, 10, CONFIG) == 50


def test_sample_count_caps_cheap_calls() -> None:
    assert sample_count(1e-9, 1, CONFIG) == CONFIG.max_samples


def test_sample_count_floors_expensive_calls() -> None:
    assert sample_count(0.4, 1, CONFIG) == CONFIG.min_samples


@pytest.mark.parametrize("per_call_s", [SLOW_CALL_S * 1.5, 20.0, 600.0])
def test_sample_count_of_slow_calls_uses_the_slow_floor(per_call_s: float) -> None:
    assert sample_count(per_call_s, 1, CONFIG) == CONFIG.slow_min_samples

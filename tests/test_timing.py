"""Timing statistics and the sampling loop (no assertion on how long anything takes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from reports.record import Samples
from suites import timing
from suites.compilation import PROJECT_ROOT
from suites.config import TimingConfig
from suites.devices import device
from suites.timing import measure, warm_up

CPU = device("cpu")


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

    samples = measure(step, CPU, config, threads=1)
    assert config.min_samples <= len(samples.seconds) <= config.max_samples
    assert all(s > 0 for s in samples.seconds)
    assert samples.calls_per_sample >= 1
    # every sample really called the step calls_per_sample times (plus the warm-up calls)
    assert calls[0] >= len(samples.seconds) * samples.calls_per_sample + 2


def test_measure_calls_the_step_only_for_warm_up_and_samples(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.utils.benchmark.Timer.timeit calls the statement twice more before each sample: a
    # slow case (one call per sample) cost three times its samples. No hidden calls here.
    calls, warm = [0], [0]

    def step() -> None:
        calls[0] += 1
        time.sleep(0.002)

    def counted_warm_up(*args: object) -> float:
        per_call_s = warm_up(*args)  # type: ignore[arg-type]
        warm[0] = calls[0]
        return per_call_s

    monkeypatch.setattr(timing, "warm_up", counted_warm_up)
    config = TimingConfig(min_time_s=0.01, warmup_s=0.001, block_s=0.001, min_samples=4)
    samples = measure(step, CPU, config, threads=1)
    assert samples.calls_per_sample == 1
    assert calls[0] - warm[0] == len(samples.seconds) >= 4
    assert all(s >= 0.002 for s in samples.seconds)


def test_measure_keeps_the_thread_count() -> None:
    before = torch.get_num_threads()
    config = TimingConfig(min_time_s=0.005, warmup_s=0.001, block_s=0.001, min_samples=2)
    measure(lambda: torch.ones(8).sum(), CPU, config, threads=1)
    assert torch.get_num_threads() == before


def test_warm_up_calls_at_least_twice() -> None:
    calls = [0]

    def step() -> None:
        calls[0] += 1

    per_call_s = warm_up(step, CPU, seconds=0.0)
    assert calls[0] >= 2
    assert per_call_s > 0


_FAULTS_PER_CONV = """
import json, resource
import torch
import torch.nn.functional as F
from suites.timing import steady_malloc

state = steady_malloc()
torch.set_num_threads(1)
x, w, b = torch.randn(32, 8, 28, 28), torch.randn(16, 8, 3, 3), torch.randn(16)
for _ in range(5):
    F.conv2d(x, w, b, padding=1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    F.conv2d(x, w, b, padding=1)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50
print(json.dumps({"state": state, "faults": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_steady_malloc_reuses_freed_memory_instead_of_page_faulting() -> None:
    # With glibc's default thresholds this conv's 1.6 MB output and oneDNN's buffers came from
    # fresh pages on every call (~750 page faults per call here; 2.0 ms instead of 0.59 ms).
    env = {k: v for k, v in os.environ.items() if k not in timing._MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_CONV], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    found = json.loads(out.stdout)
    if found["state"] is None:
        pytest.skip("not glibc: mallopt unavailable")
    assert found["state"] == {"mmap_threshold": timing.MMAP_THRESHOLD_BYTES,
                              "trim_threshold": timing.TRIM_THRESHOLD_BYTES}
    assert found["faults"] < 5


def test_steady_malloc_leaves_the_users_malloc_settings_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "_malloc_state", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert timing.steady_malloc() is None
    assert timing._malloc_state is None

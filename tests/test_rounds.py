"""Interleaved rounds, intervals, interference and plausibility on synthetic sample streams.

No test here depends on how fast anything runs: contestants return made-up seconds, and the
rounds count time by the seconds they are told.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from reports.intervals import median_interval, order_rank, paired_ratios
from reports.plausibility import implausible, unstable
from reports.record import Samples
from suites import interference
from suites.config import TimingConfig
from suites.interference import LoadWatch, Meter
from suites.rounds import SLOW_CALL_S, Contestant, needs_more, precision, run_rounds

CONFIG = TimingConfig(min_time_s=0.05, max_time_s=0.5, precision=0.02, min_samples=7,
                      slow_min_samples=3, max_samples=200)


def stream(values: Iterator[float]) -> Callable[[], float]:
    return lambda: next(values)


def steady(seconds: float, anchor: bool = False, calls: int = 1) -> Contestant:
    return Contestant(stream(itertools.repeat(seconds)), seconds * calls, calls=calls,
                      anchor=anchor)


# --- intervals ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [6, 7, 10, 25, 50, 100, 200, 999])
def test_median_interval_ranks_match_the_binomial(n: int) -> None:
    from scipy import stats

    k = order_rank(n)
    # P(Bin(n, 1/2) < k) <= 2.5% < P(Bin(n, 1/2) < k + 1): the largest such rank
    assert stats.binom.cdf(k - 1, n, 0.5) <= 0.025 < stats.binom.cdf(k, n, 0.5)
    interval = median_interval(range(n))
    assert interval.lo == k - 1 and interval.hi == n - k
    assert interval.coverage >= 0.95


def test_median_interval_of_few_samples_is_their_range_with_its_real_coverage() -> None:
    interval = median_interval([3.0, 1.0, 2.0])
    assert (interval.value, interval.lo, interval.hi) == (2.0, 1.0, 3.0)
    assert interval.coverage == pytest.approx(0.75)
    assert interval.precision == pytest.approx(0.5)


def test_normal_approximation_agrees_with_the_exact_rank_at_the_switch() -> None:
    exact, approx = order_rank(1000), order_rank(1001)
    assert abs(approx - exact) <= 1


def test_paired_ratios_use_only_rounds_both_took_part_in() -> None:
    assert paired_ratios({1: 2.0, 2: 4.0, 5: 9.0}, {1: 1.0, 2: 2.0, 3: 7.0}) == [2.0, 2.0]


def test_paired_speedup_cancels_what_hits_both_sides_of_a_round() -> None:
    # the machine slows down 1x..10x from round to round; the implementation is always 2x faster
    load = [1 + (r * 7919) % 10 for r in range(40)]
    rounds = tuple(range(1, 41))
    builtin = Samples(tuple(2e-3 * f for f in load), 1, rounds, group=7)
    mine = Samples(tuple(1e-3 * f for f in load), 1, rounds, group=7)
    paired = mine.speedup(builtin)
    assert paired.value == pytest.approx(2.0) and paired.precision == pytest.approx(0.0)
    unpaired = mine.speedup(Samples(builtin.seconds, 1, rounds, group=8))
    assert unpaired.value == pytest.approx(2.0)
    assert unpaired.precision > 0.3  # the same data, not paired: the interval is wide


# --- rounds --------------------------------------------------------------------------------

def test_every_round_takes_one_sample_of_each_active_contestant_in_a_shuffled_order() -> None:
    contestants = [steady(1e-3, anchor=True), steady(2e-3), steady(3e-3), steady(4e-3)]
    orders: list[list[int]] = []
    run_rounds(contestants, CONFIG, seed=1, on_round=lambda r, o: orders.append(o))
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders[:7])  # no one left before its floor
    assert len({tuple(o) for o in orders}) > 1  # the order changes from round to round
    firsts = {o[0] for o in orders}
    assert firsts == {0, 1, 2, 3}  # every contestant leads some round
    for c in contestants:
        assert c.rounds == sorted(set(c.rounds))  # at most one sample per round


def test_the_order_is_deterministic_for_a_seed() -> None:
    def orders(seed: int) -> list[list[int]]:
        found: list[list[int]] = []
        run_rounds([steady(1e-3, anchor=True), steady(2e-3), steady(3e-3)], CONFIG, seed=seed,
                   on_round=lambda r, o: found.append(o))
        return found

    assert orders(3) == orders(3)


def test_steady_contestants_stop_at_their_floor_and_minimum_time() -> None:
    contestants = [steady(1e-3, anchor=True, calls=10), steady(2e-3, calls=5)]
    run_rounds(contestants, CONFIG)
    for c in contestants:
        assert len(c.seconds) >= CONFIG.min_samples
        assert c.sampled_s >= CONFIG.min_time_s
        # stopped as soon as both the floor and the minimum time were met
        assert len(c.seconds) == max(CONFIG.min_samples,
                                     math.ceil(CONFIG.min_time_s / c.sample_s - 1e-9))
        assert not needs_more(c, contestants[0], CONFIG)


def test_a_noisy_contestant_stops_once_its_target_is_out_of_reach_and_misses_it() -> None:
    noisy = Contestant(stream(itertools.cycle([1e-3, 5e-3, 2e-3, 9e-3])), 1e-3)
    anchor = steady(1e-3, anchor=True)
    run_rounds([anchor, noisy], CONFIG)
    # +-100% at half the cap: 2500x the samples needed, far beyond it; the rest is not wasted
    assert CONFIG.max_time_s / 2 <= noisy.sampled_s < CONFIG.max_time_s / 2 + 0.01
    assert median_interval(noisy.seconds).precision > CONFIG.precision
    assert set(noisy.rounds) <= set(anchor.rounds)


def test_a_contestant_within_reach_of_its_target_samples_until_it_gets_there() -> None:
    rng = np.random.default_rng(0)
    jittery = Contestant(stream(iter(1e-3 * rng.lognormal(0.0, 0.08, 10_000))), 1e-3)
    anchor = steady(1e-3, anchor=True)
    run_rounds([anchor, jittery], CONFIG)
    assert jittery.sampled_s > CONFIG.min_time_s * 1.2  # went on past the minimum
    assert precision(jittery, anchor) <= CONFIG.precision  # and got there
    assert jittery.sampled_s < CONFIG.max_time_s


def test_the_anchor_stays_while_others_need_pairs_but_not_past_max_samples() -> None:
    # the anchor is precise after 3 samples of 0.1 s; the other needs 50 for its minimum time
    config = TimingConfig(min_time_s=0.05, max_time_s=100.0, min_samples=3, max_samples=200)
    anchor, other = steady(1e-3, anchor=True, calls=100), steady(1e-3)
    assert run_rounds([anchor, other], config) == 50
    assert anchor.rounds == other.rounds == list(range(1, 51))
    capped = dataclasses.replace(config, max_samples=20)
    anchor, other = steady(1e-3, anchor=True, calls=100), steady(1e-3)
    assert run_rounds([anchor, other], capped) == 20
    assert len(anchor.seconds) == len(other.seconds) == 20


def test_a_slow_contestant_joins_fewer_rounds_and_skips_the_warm_up_round() -> None:
    slow_calls = [0]

    def slow() -> float:
        slow_calls[0] += 1
        return SLOW_CALL_S * 2

    loop = Contestant(slow, SLOW_CALL_S * 2)
    fast = Contestant(stream(itertools.cycle([1e-3, 1.5e-3])), 1e-3)
    run_rounds([steady(1e-3, anchor=True), loop, fast], CONFIG)
    assert len(loop.seconds) == CONFIG.slow_min_samples == slow_calls[0]
    assert loop.rounds == [1, 2, 3]
    assert len(fast.seconds) > len(loop.seconds)


def test_a_contestant_that_fails_leaves_and_the_others_go_on() -> None:
    calls = [0]

    def breaks() -> float:
        calls[0] += 1
        if calls[0] == 4:
            raise RuntimeError("boom")
        return 1e-3

    broken = Contestant(breaks, 1e-3)
    others = [steady(1e-3, anchor=True), steady(2e-3)]
    run_rounds([others[0], broken, others[1]], CONFIG)
    assert isinstance(broken.failure, RuntimeError) and calls[0] == 4
    assert all(len(c.seconds) >= CONFIG.min_samples and c.failure is None for c in others)


# --- interference --------------------------------------------------------------------------

@pytest.mark.parametrize(("busy", "threads", "kind", "marked", "hint"), [
    (0.02, 2, "cpu", False, ""),       # a quiet machine
    (1.0, 2, "cpu", True, "--threads 1"),  # one core taken, two threads: each waits on the other
    (1.0, 1, "cpu", False, ""),        # one thread fits on the free core
    (1.6, 1, "cpu", True, ""),         # not even one core left
    (1.0, 2, "cuda", False, ""),       # a GPU case keeps one CPU thread busy
    (math.nan, 2, "cpu", False, ""),   # nothing measured: nothing claimed
])
def test_interference_marks_cases_whose_threads_did_not_fit(
        busy: float, threads: int, kind: str, marked: bool, hint: str) -> None:
    text = interference.interference(busy, threads, kind, total=2)
    assert bool(text) is marked
    assert hint in text
    if marked:
        assert text.startswith("interference:") and unstable([text])


def test_meter_counts_other_processes_cpu_time_not_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"busy": 100.0, "own": 5.0, "wall": 0.0}
    monkeypatch.setattr(interference, "busy_cpu_seconds", lambda: clock["busy"])
    monkeypatch.setattr(interference.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(interference.time, "perf_counter", lambda: clock["wall"])
    meter = Meter()
    for _ in range(4):  # each window: 1 s of wall time, 2 CPU-s busy, 1.5 of them our own
        meter.start()
        clock["busy"] += 2.0
        clock["own"] += 1.5
        clock["wall"] += 1.0
        meter.stop()
    assert meter.busy_cores == pytest.approx(0.5)
    assert meter.windows == 4


def test_meter_without_proc_stat_measures_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interference, "busy_cpu_seconds", lambda: None)
    meter = Meter()
    meter.start()
    meter.stop()
    assert math.isnan(meter.busy_cores)


class _Result:
    def __init__(self, busy: float, flags: list[str]) -> None:
        self.samples, self.busy_cores, self.flags = (1.0,), busy, flags
        self.precision = 0.01
        self.stable = not unstable(flags)


def test_the_run_warning_fires_when_cases_were_disturbed_and_not_on_a_quiet_run() -> None:
    quiet = LoadWatch(threads=2, target=0.02, probe_s=0)
    for _ in range(5):
        quiet.finished(_Result(0.01, []))
    assert quiet.summary()["warning"] is None and not quiet.summary()["busy"]
    assert quiet.summary()["note"] is None
    imprecise = _Result(0.01, ["imprecise: median known to +-4.2%, target +-2.0% (n=40)"])
    imprecise.precision = 0.042
    quiet.finished(imprecise)
    summary = quiet.summary()
    assert summary["warning"] is None  # imprecise on a quiet machine: a note, not a warning
    assert "1 timed case missed the +-2% precision target" in summary["note"]
    assert "--precision 0.05" in summary["note"]
    busy = LoadWatch(threads=2, target=0.02, probe_s=0)
    busy.finished(_Result(0.02, []))
    busy.finished(_Result(1.1, [interference.interference(1.1, 2, "cpu", total=2)]))
    summary = busy.summary()
    assert summary["busy"] and summary["unstable_cases"] == 1 and summary["timed_cases"] == 2
    assert "the machine was busy" in summary["warning"] and "1 of 2 timed cases" in (
        summary["warning"])
    burst = LoadWatch(threads=2, target=0.02, probe_s=0)  # quiet but for one case
    for _ in range(9):
        burst.finished(_Result(0.0, []))
    burst.finished(_Result(1.5, [interference.interference(1.5, 2, "cpu", total=2)]))
    warning = burst.summary()["warning"]
    assert warning.startswith("other processes disturbed 1 of 10 timed cases (up to 1.5 of 2 "
                              "cores; 0.15 on average") and "busy" not in warning


# --- plausibility --------------------------------------------------------------------------

CEILINGS = {"matmul_gflops": {"float32": 100.0}, "copy_gbps": 20.0}


def test_plausible_numbers_get_no_flag() -> None:
    assert implausible(1e-3, flops=1e7, bytes_moved=1e6, speedup=2.0, forward_s=5e-4,
                       ceilings=CEILINGS, peak_key="float32") == []


@pytest.mark.parametrize(("kwargs", "tag"), [
    (dict(forward_s=2e-3), "fwdbwd<fwd:"),                       # fwd+bwd 1 ms, fwd 2 ms
    (dict(flops=1.3e8), "beyond roofline:"),                      # 130 GFLOP/s > 1.2 x 100
    (dict(bytes_moved=2.1e8), "beyond roofline:"),                # 210 GB/s > 10 x 20 GB/s
    (dict(speedup=10.5), ">10x builtin:"),
])
def test_each_implausible_number_is_flagged_and_keeps_the_row_stable(
        kwargs: dict[str, float], tag: str) -> None:
    args = dict(median_s=1e-3, flops=1e7, bytes_moved=1e6, speedup=2.0, forward_s=None,
                ceilings=CEILINGS, peak_key="float32") | kwargs
    flags = implausible(**args)  # type: ignore[arg-type]
    assert len(flags) == 1 and flags[0].startswith(tag)
    assert not unstable(flags)

"""Interleaved rounds: time the implementations of one size together, so a burst hits them alike.

Each round takes one sample (a block of calls) of every implementation that still needs one, in
an order shuffled every round; round 0 only warms up. A burst of other work, a frequency change
or a slow drift of the host then lands on all of them, and the speed against the builtin
(the *anchor*) is a ratio of two samples of the same round: the paired ratio.

Sampling stops per implementation (adaptive stopping): once it has ``min_samples`` samples and
``min_time_s`` of them, it stops as soon as its median, and its paired ratio against the anchor,
are known to ``precision`` (the relative half-width of their 95% intervals), when it has
spent ``max_time_s`` sampling (or taken ``max_samples``), or as soon as the target is out of
reach within that time (an interval narrows as one over the square root of the samples). The
anchor goes on while any other still needs pairs. A call slower than ``SLOW_CALL_S`` (a naive
loop) needs only ``slow_min_samples``: it joins the first rounds and stops early.

While each sample is taken, ``suites.interference.Meter`` counts what other processes used.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from reports.intervals import NAN, by_round, median_interval, paired_ratios
from reports.record import Samples
from suites.config import TimingConfig
from suites.interference import Meter

SLOW_CALL_S = 1.0  # above this a call is "slow": fewer samples suffice (naive loops)

Guard = Callable[[int], AbstractContextManager[None]]


@dataclass
class Contestant:
    """One implementation in the rounds: how to take a sample and what it has taken."""

    take: Callable[[], float]  # one sample: seconds per call
    sample_s: float  # expected wall time of one sample
    calls: int = 1  # calls per sample
    anchor: bool = False  # the builtin: the others' paired ratios divide by its samples
    seconds: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    sampled_s: float = 0.0
    meter: Meter = field(default_factory=Meter)
    failure: Exception | None = None
    done: bool = False

    @property
    def slow(self) -> bool:
        return self.sample_s > SLOW_CALL_S

    def samples(self, group: int | None) -> Samples:
        return Samples(tuple(self.seconds), self.calls, tuple(self.rounds), group)


def precision(contestant: Contestant, anchor: Contestant | None) -> float:
    """The relative half-width reached: the larger of the median's and the paired ratio's."""
    width = median_interval(contestant.seconds).precision
    if anchor is not None and anchor is not contestant and not anchor.failure:
        ratios = paired_ratios(by_round(anchor.seconds, anchor.rounds),
                               by_round(contestant.seconds, contestant.rounds))
        width = max(width, median_interval(ratios).precision if ratios else NAN)
    return width


def needs_more(contestant: Contestant, anchor: Contestant | None, config: TimingConfig) -> bool:
    """Whether ``contestant`` should take part in the next round (the anchor aside)."""
    floor = config.slow_min_samples if contestant.slow else config.min_samples
    n = len(contestant.seconds)
    if n < floor or (contestant.sampled_s < config.min_time_s and not contestant.slow):
        return n < config.max_samples
    if n >= config.max_samples or contestant.sampled_s >= config.max_time_s:
        return False
    reached = precision(contestant, anchor)
    if math.isnan(reached):  # not known yet
        return True
    return reached > config.precision and reachable(reached, n, contestant.sampled_s, config)


def reachable(reached: float, n: int, sampled_s: float, config: TimingConfig) -> bool:
    """Whether the precision target can still be met within ``max_time_s``: an interval narrows
    as ``1 / sqrt(n)``, so ``reached`` after ``n`` samples needs ``n (reached / target)^2``.
    A case that cannot get there stops, marked imprecise, instead of spending its cap; but not
    before half of it: the interval of a few dozen samples is itself too rough to judge by."""
    if sampled_s < config.max_time_s / 2:
        return True
    within_cap = min(n * config.max_time_s / max(sampled_s, 1e-12), config.max_samples)
    return n * (reached / config.precision) ** 2 <= within_cap


def order(active: Sequence[int], rng: random.Random) -> list[int]:
    """The order of one round: shuffled, so no implementation always follows the same one."""
    shuffled = list(active)
    rng.shuffle(shuffled)
    return shuffled


@contextlib.contextmanager
def _unguarded(index: int) -> Iterator[None]:
    yield


def run_rounds(contestants: Sequence[Contestant], config: TimingConfig, seed: int = 0,
               guard: Guard = _unguarded,
               on_round: Callable[[int, list[int]], None] | None = None) -> int:
    """Sample ``contestants`` in rounds until each is done; the number of rounds taken.

    ``guard(i)`` wraps every sample of contestant ``i`` (a time limit); a sample that raises
    ends that contestant with ``failure`` set, and the rounds go on without it.
    ``on_round(r, order)`` is told each round's order (tests watch it).
    """
    rng = random.Random(seed)
    anchor = next((c for c in contestants if c.anchor), None)
    warm = [i for i, c in enumerate(contestants) if not c.slow and len(contestants) > 1]
    for i in order(warm, rng):  # round 0: warm every fast one up after the others' set-up
        _take(contestants[i], i, guard, record=None)
    r = 0
    while True:
        for c in contestants:
            if c is not anchor and not c.done and not c.failure:
                c.done = not needs_more(c, anchor, config)
        others = [c for c in contestants if c is not anchor and not c.done and not c.failure]
        if anchor is not None and not anchor.failure:
            anchor.done = (not others and not needs_more(anchor, None, config)) or (
                len(anchor.seconds) >= config.max_samples)
        active = [i for i, c in enumerate(contestants) if not c.done and not c.failure]
        if not active:
            return r
        r += 1
        this_round = order(active, rng)
        if on_round is not None:
            on_round(r, this_round)
        for i in this_round:
            _take(contestants[i], i, guard, record=r)


def _take(contestant: Contestant, index: int, guard: Guard, record: int | None) -> None:
    if contestant.failure:
        return
    try:
        with guard(index):
            contestant.meter.start()
            seconds = contestant.take()
            contestant.meter.stop()
    except Exception as exc:  # the implementation failed (or its time ran out): it leaves
        contestant.failure, contestant.done = exc, True
        return
    if record is not None:
        contestant.seconds.append(seconds)
        contestant.rounds.append(record)
        contestant.sampled_s += seconds * contestant.calls

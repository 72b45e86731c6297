"""Distribution-free intervals for one run's timings: the median's and a paired ratio's.

Timing samples are skewed and bursty (a busy machine adds a long right tail), so the interval
of a median comes from order statistics, not from a normal approximation: with ``n`` samples,
``[x(k), x(n-k+1)]`` covers the true median with probability ``1 - 2 P(Bin(n, 1/2) < k)``,
whatever the distribution. Fewer than six samples cannot reach 95%; their interval is the range
(``n = 3``: 75%) and says so through ``coverage``.

A paired ratio divides two implementations' samples taken in the same interleaving round, so
what slowed the machine during a round slows both sides of its ratio alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

NAN = float("nan")
#: above this many samples the binomial tail is taken from the normal approximation
EXACT_MAX_N = 1000


@dataclass(frozen=True)
class Interval:
    """A median (or median ratio) and its confidence interval."""

    value: float
    lo: float
    hi: float
    coverage: float  # the interval's actual coverage (below the asked one for n < 6)

    @property
    def precision(self) -> float:
        """The interval's larger half-width relative to the value (0.02: known to +-2%)."""
        if not self.value or math.isnan(self.value):
            return NAN
        return max(self.value - self.lo, self.hi - self.value) / abs(self.value)


UNKNOWN = Interval(NAN, NAN, NAN, 0.0)


def order_rank(n: int, confidence: float = 0.95) -> int:
    """The largest ``k`` (1-based) with ``P(Bin(n, 1/2) < k) <= (1 - confidence) / 2``; 0 when
    even the range covers less than ``confidence``."""
    alpha = (1.0 - confidence) / 2
    if n > EXACT_MAX_N:  # normal approximation with continuity correction
        z = _z(1 - alpha)
        return max(0, math.floor(n / 2 - z * math.sqrt(n) / 2 + 0.5))
    tail, k, total = 0, 0, 2 ** n
    while True:
        tail += math.comb(n, k)  # P(Bin < k + 1) * 2^n
        if tail / total > alpha:
            return k
        k += 1


def median_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The median of ``values`` and its order-statistic ``confidence`` interval (NaNs dropped)."""
    x = sorted(v for v in values if not math.isnan(v))
    n = len(x)
    if n == 0:
        return UNKNOWN
    median = _median(x)
    k = order_rank(n, confidence)
    if k == 0:  # too few samples: the range, with the coverage it really has
        return Interval(median, x[0], x[-1], 1.0 - 2 * 0.5 ** n if n > 1 else 0.0)
    return Interval(median, x[k - 1], x[n - k], _coverage(n, k))


def paired_ratios(numerator: Mapping[int, float], denominator: Mapping[int, float]) -> list[float]:
    """``numerator[r] / denominator[r]`` for every round ``r`` both were sampled in."""
    return [numerator[r] / denominator[r] for r in sorted(numerator.keys() & denominator.keys())
            if denominator[r] > 0]


def by_round(seconds: Sequence[float], rounds: Sequence[int]) -> dict[int, float]:
    """Samples keyed by their round (a round holds at most one sample of a case)."""
    return dict(zip(rounds, seconds, strict=True))


def _median(x: Sequence[float]) -> float:
    n = len(x)
    return x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2


def _coverage(n: int, k: int) -> float:
    if n > EXACT_MAX_N:
        return 1 - 2 * _normal_cdf((k - 0.5 - n / 2) / (math.sqrt(n) / 2))
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _z(p: float) -> float:
    """The standard normal quantile of ``p`` (bisection: no scipy on the timing path)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _normal_cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2

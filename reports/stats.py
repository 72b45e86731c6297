"""Statistics for comparing two sets of timing samples (numpy only).

Pure functions, shared by ``compare`` and the CI regression gate: a one-sided Mann-Whitney U test,
a bootstrap confidence interval of the ratio of medians, a robust noise estimate, the geometric
mean, and the rule that turns those numbers into a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

# Exact U distribution up to this many (a, b) pairs: the DP costs ~(n*m)^2 / 2 flops, and by
# then the normal approximation is within ~1e-3 of the exact p-value.
EXACT_MAX_PAIRS = 2500


def mann_whitney_greater(a: ArrayLike, b: ArrayLike) -> float:
    """One-sided Mann-Whitney U p-value for "values in ``b`` tend to be larger than in ``a``".

    With times, a small p says run B is slower. ``U`` counts the pairs with ``b > a`` (ties count
    half); the p-value is ``P(U >= U_observed)`` under the null hypothesis of one distribution.
    Exact (dynamic programming over U) when there are no ties and ``len(a) * len(b) <=
    EXACT_MAX_PAIRS``; otherwise the normal approximation with tie and continuity corrections.
    NaN when either sample is empty.
    """
    x, y = _clean(a), _clean(b)
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return math.nan
    ranks, tie_counts = _ranks(np.concatenate([x, y]))
    u = float(ranks[n:].sum()) - m * (m + 1) / 2  # U of b: pairs with b > a
    ties = bool((tie_counts > 1).any())
    if not ties and n * m <= EXACT_MAX_PAIRS:
        return float(_upper_tail(n, m)[round(u)])
    total = n + m
    tie_term = float((tie_counts ** 3 - tie_counts).sum()) / (total * (total - 1))
    var = n * m / 12.0 * ((total + 1) - tie_term)
    if var <= 0:  # every value equal: no evidence either way
        return 1.0
    z = (u - n * m / 2.0 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _clean(values: ArrayLike) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def _ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks with ties averaged, and the size of each group of equal values."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0  # mean rank of each distinct value
    return average[inverse], counts


@lru_cache(maxsize=64)
def _upper_tail(n: int, m: int) -> np.ndarray:
    """``P(U >= u)`` for ``u = 0 .. n*m``: U = pairs with b > a, samples of sizes n (a), m (b).

    Recursion on the largest of the ``i + j`` values: it is a ``b`` with probability
    ``j / (i + j)`` and then beats all ``i`` values of ``a`` (U grows by ``i``), else it is an
    ``a`` and beats nothing. Probabilities, not counts, so nothing overflows.
    """
    previous = [np.ones(1)] * (m + 1)  # i = 0: U = 0 for every j
    for i in range(1, n + 1):
        current = [np.ones(1)]  # j = 0
        for j in range(1, m + 1):
            pmf = np.zeros(i * j + 1)
            pmf[: (i - 1) * j + 1] += previous[j] * (i / (i + j))
            pmf[i:] += current[j - 1] * (j / (i + j))
            current.append(pmf)
        previous = current
    tail = np.cumsum(previous[m][::-1])[::-1]
    tail.setflags(write=False)
    return tail


def ratio_ci(a: ArrayLike, b: ArrayLike, confidence: float = 0.95, resamples: int = 2000,
             seed: int = 0) -> tuple[float, float]:
    """Bootstrap percentile interval of ``median(b) / median(a)``; seeded, so deterministic.

    Both samples are resampled with replacement ``resamples`` times (vectorised). NaNs when
    either sample is empty.
    """
    x, y = _clean(a), _clean(b)
    if len(x) == 0 or len(y) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    med_a = np.median(x[rng.integers(0, len(x), size=(resamples, len(x)))], axis=1)
    med_b = np.median(y[rng.integers(0, len(y), size=(resamples, len(y)))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = med_b / med_a
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ratios, [tail, 1.0 - tail])
    return float(lo), float(hi)


def geomean(values: Iterable[float]) -> float:
    """Geometric mean of the positive, finite ``values``; NaN when there are none."""
    x = np.asarray(list(values), dtype=float)
    x = x[np.isfinite(x) & (x > 0)]
    return float(np.exp(np.log(x).mean())) if len(x) else math.nan


def relative_noise(samples: ArrayLike) -> float:
    """Semi-interquartile range over the median: a robust relative spread (0.02 = 2 %).

    NaN for no samples; 0 for one.
    """
    x = _clean(samples)
    if len(x) == 0:
        return math.nan
    q25, median, q75 = np.percentile(x, [25, 50, 75])
    return float((q75 - q25) / 2.0 / median) if median > 0 else math.nan


def effect_threshold(noise: float, threshold: float = 0.10) -> float:
    """The relative change a case must exceed to count: ``max(threshold, 3 x noise)``.

    Unknown noise (NaN) leaves the plain ``threshold``.
    """
    return max(threshold, 3.0 * noise) if math.isfinite(noise) else threshold


def classify(ratio: float, p_slower: float, p_faster: float, noise: float,
             threshold: float = 0.10, alpha: float = 0.01) -> str:
    """Verdict on a case whose median time went from A to B, ``ratio = B / A``.

    Let ``bar = 1 + max(threshold, 3 x noise)`` (``noise`` from ``relative_noise``, the larger of
    the two runs'). Then:

    - ``"slower"``: ``ratio > bar`` and ``p_slower < alpha`` (a large and significant change);
    - ``"faster"``: ``ratio < 1 / bar`` and ``p_faster < alpha``;
    - ``"suspicious"``: ``ratio`` beyond the bar either way but not significant (e.g. naive loops
      timed 3 times each: even fully separated samples give p = 1/20). Worth a re-measurement,
      never a failure;
    - ``"same"``: otherwise. A significant change inside the bar is real but too small to matter
      (or within the run-to-run noise), so it is "same" too.

    NaN p-values count as not significant; a NaN ratio is "same".
    """
    bar = 1.0 + effect_threshold(noise, threshold)
    if ratio > bar:
        return "slower" if p_slower < alpha else "suspicious"
    if ratio < 1.0 / bar:
        return "faster" if p_faster < alpha else "suspicious"
    return "same"

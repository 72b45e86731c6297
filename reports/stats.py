"""Statistics for comparing two sets of timing samples (numpy and scipy).

Pure functions, shared by ``compare`` and the CI regression gate: a one-sided Mann-Whitney U test,
a bootstrap confidence interval of the ratio of medians (both from ``scipy.stats``), a robust noise
estimate, the geometric mean, and the rule that turns those numbers into a verdict.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike

# The exact U distribution is used up to this many (a, b) pairs (when nothing is tied); beyond
# that the normal approximation is within ~1e-3 of the exact p-value.
EXACT_MAX_PAIRS = 2500


def mann_whitney_greater(a: ArrayLike, b: ArrayLike) -> float:
    """One-sided Mann-Whitney U p-value for "values in ``b`` tend to be larger than in ``a``".

    With times, a small p says run B is slower. ``U`` counts the pairs with ``b > a`` (ties count
    half); the p-value is ``P(U >= U_observed)`` under the null hypothesis of one distribution.
    ``scipy.stats.mannwhitneyu``: exact when there are no ties and ``len(a) * len(b) <=
    EXACT_MAX_PAIRS``; otherwise the normal approximation with tie and continuity corrections
    (1.0 when every value is equal: no evidence either way). Non-finite values are dropped; NaN
    when either sample is then empty.
    """
    x, y = _clean(a), _clean(b)
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return math.nan
    both = np.concatenate([x, y])
    if both.min() == both.max():  # every value equal: zero variance, no evidence either way
        return 1.0
    ties = len(np.unique(both)) < n + m
    method = "exact" if not ties and n * m <= EXACT_MAX_PAIRS else "asymptotic"
    from scipy import stats  # ~0.7 s to import: only when runs are compared

    # scipy's U is that of its first sample: b, so "greater" is P(U_b >= u).
    return float(stats.mannwhitneyu(y, x, alternative="greater", method=method).pvalue)


def _clean(values: ArrayLike) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def _median_ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.median(y, axis=axis) / np.median(x, axis=axis)


def ratio_ci(a: ArrayLike, b: ArrayLike, confidence: float = 0.95, resamples: int = 2000,
             seed: int = 0) -> tuple[float, float]:
    """Bootstrap percentile interval of ``median(b) / median(a)``; seeded, so deterministic.

    ``scipy.stats.bootstrap``: both samples are resampled independently, with replacement,
    ``resamples`` times (vectorised). Non-finite values are dropped; NaNs when either sample is
    then empty. A sample of one value resamples to itself, so only the other one varies.
    """
    x, y = _clean(a), _clean(b)
    if len(x) == 0 or len(y) == 0:
        return math.nan, math.nan
    if len(x) == 1 and len(y) == 1:
        ratio = float(_median_ratio(x, y))
        return ratio, ratio
    # scipy resamples only samples of two or more values; a single value is a constant.
    if len(x) == 1:
        data, statistic = (y,), lambda v, axis=-1: _median_ratio(x, v, axis)
    elif len(y) == 1:
        data, statistic = (x,), lambda v, axis=-1: _median_ratio(v, y, axis)
    else:
        data, statistic = (x, y), _median_ratio
    from scipy import stats

    # random_state= (not rng=, scipy >= 1.15) keeps scipy 1.11 working; a Generator either way.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        # A zero median gives inf or NaN ratios (and a NaN bound a DegenerateDataWarning).
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(data, statistic, n_resamples=resamples, vectorized=True,
                                 paired=False, confidence_level=confidence, method="percentile",
                                 random_state=np.random.default_rng(seed))
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


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

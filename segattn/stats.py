"""Statistics over seeds: is a head's difference to the baseline real?

Two runs of one configuration differ by several mIoU points on small data, so comparisons are made
over seeds: the mean with a 95 % confidence interval from Student's t distribution (n - 1 degrees of
freedom), and Welch's t-test (unequal variances) for the difference of two means. The context
benchmark and ``scripts/study.py`` report both; scipy's ``t`` distribution gives the quantiles.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class Interval(NamedTuple):
    mean: float
    half_width: float  # mean +- half_width is the confidence interval (nan with one value)
    n: int

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"61.3 ± 4.2 (3)"``, values times ``scale`` (percent by default)."""
        if self.n == 0:
            return "—"
        hw = "" if math.isnan(self.half_width) else f" ± {scale * self.half_width:.{digits}f}"
        return f"{scale * self.mean:.{digits}f}{hw} ({self.n})"


def _present(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> Interval:
    """Mean and the half width of its Student-t confidence interval; None and NaN values are left out."""
    from scipy import stats

    xs = _present(values)
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n == 1:
        return Interval(mean, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Interval(mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n), n)


def welch_p(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    """Two-sided p-value of Welch's t-test that ``a`` and ``b`` have the same mean (NaN with fewer than
    two values on a side). Two constant samples give 1.0 when equal and 0.0 when not: no spread at all
    leaves no doubt either way."""
    from scipy import stats

    xa, xb = _present(a), _present(b)
    if len(xa) < 2 or len(xb) < 2:
        return math.nan
    if max(xa) == min(xa) and max(xb) == min(xb):
        return 1.0 if xa[0] == xb[0] else 0.0
    return float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)


def p_text(p: float) -> str:
    """A p-value as a table shows it: ``<0.001``, ``0.03``, ``0.4``, or ``—``."""
    if math.isnan(p):
        return "—"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


class Rate(NamedTuple):
    """``k`` successes of ``n`` with the Wilson score interval ``[low, high]`` of the rate."""
    k: int
    n: int
    low: float
    high: float

    def text(self) -> str:
        """``"2/3 (21-98 %)"``: the count and the 95 % interval of the rate in percent."""
        if self.n == 0:
            return "—"
        return f"{self.k}/{self.n} ({100 * self.low:.0f}-{100 * self.high:.0f} %)"


def wilson_ci(k: int, n: int, z: float = 1.959963984540054) -> Rate:
    """The Wilson score interval of a rate of ``k`` successes in ``n`` trials (Wilson, "Probable
    Inference, the Law of Succession, and Statistical Inference", 1927): unlike the normal
    approximation it stays inside [0, 1] and is not empty at 0/n or n/n. ``z``: 1.96 for 95 %."""
    if n == 0:
        return Rate(0, 0, math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Rate(k, n, 0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def fisher_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test that two rates, ``k1`` of ``n1`` and ``k2`` of ``n2``, are
    the same: the probability, with the margins fixed, of a table no more likely than the one observed
    (the hypergeometric distribution; NaN when a sample is empty)."""
    if n1 == 0 or n2 == 0:
        return math.nan
    k, n = k1 + k2, n1 + n2

    def prob(x: int) -> float:
        return math.comb(n1, x) * math.comb(n2, k - x) / math.comb(n, k)

    observed = prob(k1)
    support = range(max(0, k - n2), min(k, n1) + 1)
    return min(1.0, sum(p for p in map(prob, support) if p <= observed * (1 + 1e-9)))

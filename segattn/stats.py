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

"""How sure a figure is: intervals over seeds, and when one recipe may be called better than another.

Training a recipe again with another seed moves its FID by about as much as many recipe changes do, so a verdict
needs the spread over seeds. Two recipes are compared with Welch's interval for a difference of means (no equal
variances assumed), with the conservative degrees of freedom `min(n1, n2) - 1`: at 3 seeds a side the multiplier
is t = 4.30, at 5 seeds 2.78. A difference whose 95% interval holds 0 is a tie.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

LEVEL = 0.95


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided Student-t multiplier for `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float] | None:
    """`(mean, lo, hi)`: the mean of independent repeats and its Student-t interval; None for fewer than 2 values."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile(len(values) - 1, level) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclass
class Difference:
    """`a - b` with its interval; `tie` when the interval holds 0 (or when either side has a single value)."""

    diff: float
    lo: float | None
    hi: float | None
    multiplier: float | None

    @property
    def tie(self) -> bool:
        return self.lo is None or self.lo <= 0 <= self.hi

    def __str__(self) -> str:
        if self.lo is None:
            return f"{self.diff:+.3g} (no interval: needs 2+ seeds on each side)"
        return f"{self.diff:+.3g} [{self.lo:+.3g}, {self.hi:+.3g}]"


def welch(a: list[float], b: list[float], level: float = LEVEL) -> Difference:
    """Welch's interval for mean(a) - mean(b), degrees of freedom min(n_a, n_b) - 1.

    Args:
        a, b: one figure per seed of each recipe.
        level: coverage of the interval.
    """
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(diff, None, None, None)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    t = t_quantile(min(len(a), len(b)) - 1, level)
    return Difference(diff, diff - t * se, diff + t * se, t)

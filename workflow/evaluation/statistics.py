"""Statistics of probe sets, for any experiment's evaluations: proportions with Wilson score
intervals, paired differences of proportions (Newcombe), medians with interquartile
ranges, mean differences with t intervals, and calibration (expected calibration error,
reliability bins, temperature scaling). Plain Python and NumPy, checked in
tests/test_statistics.py against closed forms and published examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
# Student's t 97.5% quantiles for 1..30 degrees of freedom (beyond: the normal's).
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
ECE_BINS = 10


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def text(self, digits: int = 2, percent: bool = False) -> str:
        if percent:
            return f"{100 * self.estimate:.0f}% (95% CI {100 * self.low:.0f}–{100 * self.high:.0f}%)"
        return f"{self.estimate:.{digits}f} (95% CI {self.low:.{digits}f} to {self.high:.{digits}f})"


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """A proportion with its Wilson score interval (Wilson 1927); n = 0 gives NaN."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 of n (n of n) the bound is 0 (1) exactly; rounding must not put it past p.
    low = 0.0 if successes == 0 else min(p, centre - half)
    high = 1.0 if successes == n else max(p, centre + half)
    return Interval(p, low, high)


def paired_difference(first: Sequence[bool], second: Sequence[bool], z: float = Z95) -> Interval:
    """The difference of two paired proportions (first - second) with Newcombe's (1998)
    method 10 interval: the two Wilson intervals combined through the pairs' correlation."""
    n = len(first)
    if n == 0 or n != len(second):
        return Interval(math.nan, math.nan, math.nan)
    a = sum(1 for x, y in zip(first, second) if x and y)
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if not x and y)
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    one, two = wilson(a + b, n, z), wilson(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins else 0.0
    diff = p1 - p2
    low = diff - math.sqrt(max(0.0, (p1 - one.low) ** 2 - 2 * phi * (p1 - one.low) * (two.high - p2) + (two.high - p2) ** 2))
    high = diff + math.sqrt(max(0.0, (one.high - p1) ** 2 - 2 * phi * (one.high - p1) * (p2 - two.low) + (p2 - two.low) ** 2))
    return Interval(diff, max(-1.0, low), min(1.0, high))


def mean_interval(values: Sequence[float]) -> Interval:
    """A mean with its t interval (NaN bounds with fewer than two values)."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    mean = float(np.mean(values))
    if n < 2:
        return Interval(mean, math.nan, math.nan)
    t = T95[n - 2] if n - 1 <= len(T95) else Z95
    half = t * float(np.std(values, ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class Spread:
    n: int
    median: float
    q1: float
    q3: float

    def text(self, digits: int = 2) -> str:
        return f"median {self.median:.{digits}f} (IQR {self.q1:.{digits}f}–{self.q3:.{digits}f}, n = {self.n})"


def spread(values: Sequence[float]) -> Spread | None:
    """Median and quartiles (linear interpolation between order statistics), or None."""
    if not len(values):
        return None
    q1, median, q3 = np.quantile(np.asarray(values, dtype=float), [0.25, 0.5, 0.75])
    return Spread(len(values), float(median), float(q1), float(q3))


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    accuracy: float
    confidence: float


def reliability(confidence: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> list[Bin]:
    """Equal-width confidence bins [k/bins, (k+1)/bins) (the last one closed) with each
    bin's count, accuracy and mean confidence; empty bins are left out."""
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    index = np.minimum((conf * bins).astype(int), bins - 1)
    found = []
    for k in range(bins):
        members = index == k
        if members.any():
            found.append(Bin(k / bins, (k + 1) / bins, int(members.sum()), float(hit[members].mean()), float(conf[members].mean())))
    return found


def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over bins."""
    n = len(confidence)
    if n == 0:
        return math.nan
    return sum(b.count * abs(b.accuracy - b.confidence) for b in reliability(confidence, correct, bins)) / n


def best_temperature(temperatures: Sequence[float], confidence_by_t: Sequence[Sequence[float]], correct: Sequence[bool]) -> tuple[float, float]:
    """(temperature, its ECE) of the temperature with the lowest ECE; ``confidence_by_t``
    holds each probe's top-1 probability at each temperature. Ties go to the temperature
    nearest 1."""
    conf = np.asarray(confidence_by_t, dtype=float)
    scores = [ece(conf[:, j], correct) for j in range(len(temperatures))]
    best = min(range(len(temperatures)), key=lambda j: (round(scores[j], 12), abs(math.log(temperatures[j]))))
    return float(temperatures[best]), float(scores[best])

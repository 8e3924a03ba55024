"""The probe-set statistics (workflow/evaluation/statistics.py) against published values, closed forms
and simulated coverage."""

import math
import random

import numpy as np
import pytest

from workflow.evaluation import statistics as st


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        # Wilson score intervals as tabulated by Newcombe (1998, Statist. Med. 17:857, table II).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_intervals_match_published_values(k, n, low, high):
    interval = st.wilson(k, n)
    assert interval.estimate == pytest.approx(k / n)
    assert interval.low == pytest.approx(low, abs=6e-5)
    assert interval.high == pytest.approx(high, abs=6e-5)


def test_paired_difference_is_zero_centred_for_identical_outcomes_and_bounded():
    same = [True] * 7 + [False] * 5
    interval = st.paired_difference(same, same)
    assert interval.estimate == 0.0
    assert interval.low < 0 < interval.high
    extreme = st.paired_difference([True] * 10, [False] * 10)
    assert extreme.estimate == 1.0 and -1.0 <= extreme.low <= extreme.high <= 1.0 and extreme.low > 0.5


def test_paired_difference_covers_the_truth_about_95_percent_of_the_time():
    """Simulated: 40 pairs, correlated outcomes, true difference 0.2."""
    rng = random.Random(1)
    cells = [(True, True, 0.35), (True, False, 0.30), (False, True, 0.10), (False, False, 0.25)]  # P(first)-P(second) = 0.2
    covered = 0
    runs = 2000
    for _ in range(runs):
        pairs = rng.choices([(a, b) for a, b, _ in cells], weights=[w for _, _, w in cells], k=40)
        interval = st.paired_difference([a for a, _ in pairs], [b for _, b in pairs])
        covered += interval.low <= 0.2 <= interval.high
    assert 0.92 <= covered / runs <= 0.985


def test_mean_interval_uses_student_t():
    values = [1.0, 2.0, 3.0, 4.0]
    interval = st.mean_interval(values)
    half = 3.182 * np.std(values, ddof=1) / 2
    assert interval.estimate == 2.5 and interval.low == pytest.approx(2.5 - half) and interval.high == pytest.approx(2.5 + half)


def test_spread_gives_median_and_quartiles():
    s = st.spread([0.1, 0.2, 0.3, 0.4, 0.5])
    assert (s.n, s.median, s.q1, s.q3) == (5, 0.3, 0.2, 0.4)
    assert st.spread([]) is None


def test_ece_by_hand():
    # Bins [0.2, 0.3): conf 0.25, 0.25, accuracy 0.5 -> |0.5 - 0.25| weight 2;
    # [0.9, 1.0]: conf 0.95, 1.0, accuracy 1 -> |1 - 0.975| weight 2.
    ece = st.ece([0.25, 0.25, 0.95, 1.0], [True, False, True, True])
    assert ece == pytest.approx((2 * 0.25 + 2 * 0.025) / 4)
    bins = st.reliability([0.25, 0.25, 0.95, 1.0], [True, False, True, True])
    assert [(b.count, b.accuracy) for b in bins] == [(2, 0.5), (2, 1.0)]


def test_best_temperature_recovers_an_overconfident_models_temperature():
    """Outcomes drawn from the distribution at temperature 2; the model reports temperature 1."""
    rng = np.random.default_rng(0)
    temperatures = [2 ** (k / 2) for k in range(-4, 9)]
    confidences, correct = [], []
    for _ in range(3000):
        logits = rng.normal(0, 3, size=20)
        top = int(logits.argmax())
        truth = np.exp(logits / 2) / np.exp(logits / 2).sum()
        correct.append(bool(rng.random() < truth[top]))
        confidences.append([float(np.exp(logits[top] / t) / np.exp(logits / t).sum()) for t in temperatures])
    at_one = st.ece([c[temperatures.index(1.0)] for c in confidences], correct)
    best, best_ece = st.best_temperature(temperatures, confidences, correct)
    assert best == 2.0
    assert best_ece < at_one / 3
    assert math.isnan(st.ece([], []))


@pytest.mark.parametrize("n", [1, 3, 7, 9, 20, 263])
def test_wilson_bounds_never_cross_the_estimate(n):
    """At 0 of n and n of n the bounds are exactly 0 and 1 (rounding once put a lower bound
    a hair above 0, which broke the error bars of the statistics figure)."""
    for k in range(n + 1):
        interval = st.wilson(k, n)
        assert 0.0 <= interval.low <= interval.estimate <= interval.high <= 1.0
    assert st.wilson(0, n).low == 0.0 and st.wilson(n, n).high == 1.0

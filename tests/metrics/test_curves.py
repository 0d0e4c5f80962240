"""Dose-response curves: ASR with N attempts against brute-force enumeration, power-law fits
against planted exponents."""

import itertools

import numpy as np
import pytest

from fissure.metrics.curves import asr_at_n, attempts_curve, fit_power_law


@pytest.mark.parametrize("k, c", [(5, 0), (5, 1), (5, 3), (6, 6), (7, 2)])
def test_asr_at_n_equals_enumerating_every_subset_of_attempts(k, c):
    outcomes = [True] * c + [False] * (k - c)
    for n in range(1, k + 1):
        subsets = list(itertools.combinations(outcomes, n))
        assert asr_at_n(k, c, n) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert asr_at_n(k, c, 1) == pytest.approx(c / k)


def test_asr_at_n_rejects_impossible_counts():
    with pytest.raises(ValueError):
        asr_at_n(3, 4, 1)
    with pytest.raises(ValueError):
        asr_at_n(3, 1, 4)


def test_attempts_curve_averages_requests_and_rises_with_attempts():
    counts = [(4, 0), (4, 1), (4, 2), (4, 4), (4, 1)]
    curve = attempts_curve(counts, n_resamples=500)
    assert [r["attempts"] for r in curve] == [1, 2, 3, 4]
    for r in curve:
        assert r["estimate"] == pytest.approx(np.mean([asr_at_n(4, c, r["attempts"]) for _, c in counts]))
        assert r["low"] <= r["estimate"] <= r["high"]
    assert all(a["estimate"] <= b["estimate"] for a, b in zip(curve, curve[1:]))
    assert curve[-1]["estimate"] == pytest.approx(4 / 5)  # with all 4 attempts: every request that ever leaked


def test_power_law_fit_recovers_planted_exponents_and_its_interval_covers_them():
    rng = np.random.default_rng(0)
    x = np.array([1, 2, 4, 8, 16, 32, 64, 128], dtype=float)
    covered, trials = 0, 300
    for _ in range(trials):
        exponent = rng.uniform(-1.5, -0.2)
        y = 3.0 * x ** exponent * np.exp(rng.normal(0, 0.05, size=len(x)))
        fit = fit_power_law(x, y)
        assert fit["exponent"] == pytest.approx(exponent, abs=0.06)
        assert fit["prefactor"] == pytest.approx(3.0, rel=0.2)
        covered += fit["low"] <= exponent <= fit["high"]
        slope, _ = np.polyfit(np.log(x), np.log(y), 1)  # an independent least-squares fit
        assert fit["exponent"] == pytest.approx(slope)
    assert 0.9 <= covered / trials <= 0.99  # nominal 95%


def test_power_law_fit_needs_three_positive_points():
    assert fit_power_law([1, 2], [1.0, 0.5]) is None
    assert fit_power_law([1, 2, 3], [1.0, 0.0, -1.0]) is None

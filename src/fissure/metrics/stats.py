"""Uncertainty for every number: Wilson score intervals for rates, bootstrap intervals for means."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm
from scipy.stats import t as student_t


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    confidence: float
    method: str

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "confidence": self.confidence, "method": self.method}


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion (well behaved at 0 and 1, unlike Wald).

    With no trials the rate is unknown: estimate NaN, interval [0, 1].
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes ({successes}) <= trials ({trials})")
    if trials == 0:
        return Interval(math.nan, 0.0, 1.0, confidence, "wilson")
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), confidence, "wilson")


def detectable_rise(n: int, baseline: float, *, alpha: float = 0.05, power: float = 0.8,
                    n_baseline: int | None = None) -> float | None:
    """The smallest rise above a ``baseline`` rate that a two-sided test of two proportions at level
    ``alpha`` detects with probability ``power``, each rate measured on ``n`` trials (the baseline on
    ``n_baseline``, default ``n``): the minimum detectable difference, on the arcsine scale (Cohen's h,
    the normal approximation statsmodels' ``NormalIndPower`` uses). ``None`` when even a rate of 1
    would not be detected."""
    if n < 1 or not 0 <= baseline <= 1 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"need n >= 1, baseline in [0, 1], alpha and power in (0, 1); got {n}, {baseline}, "
                         f"{alpha}, {power}")
    se = math.sqrt(1 / n + 1 / (n_baseline or n))
    z = float(norm.ppf(1 - alpha / 2))

    def short(h: float) -> float:  # power at effect size h, both tails, less the power asked for
        return float(norm.sf(z - h / se) + norm.cdf(-z - h / se)) - power

    h = brentq(short, 0.0, 20 * se, xtol=1e-12) if short(20 * se) > 0 else math.inf
    top = 2 * math.asin(math.sqrt(baseline)) + h
    if top > math.pi:
        return None
    return math.sin(top / 2) ** 2 - baseline


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean,
                       confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (resampled with replacement)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap needs at least one value")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(n_resamples, data.size))
    stats = np.array([statistic(data[row]) for row in idx])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(float(statistic(data)), float(low), float(high), confidence, f"bootstrap-{n_resamples}")


def jackknife_interval(values: Sequence, statistic: Callable[[list], float],
                       confidence: float = 0.95) -> Interval:
    """Leave-one-out jackknife interval of ``statistic`` over ``values`` (any objects: texts, say).

    For statistics of a pooled set whose value changes when a unit appears twice (distinct-n,
    n-gram entropy, a Zipf fit), where a bootstrap resample's duplicates would bias every
    replicate: leaving one unit out never duplicates one. Standard error
    ``sqrt((n-1)/n * sum((t_i - mean t)^2))`` (Efron & Tibshirani 1993, ch. 11), interval
    ``estimate +- t_{n-1} * se``; for the mean this is exactly the classic t interval.
    """
    items = list(values)
    n = len(items)
    if n < 2:
        raise ValueError("the jackknife needs at least two values")
    estimate = float(statistic(items))
    leave_out = np.array([statistic(items[:i] + items[i + 1:]) for i in range(n)], dtype=np.float64)
    se = math.sqrt((n - 1) / n * float(((leave_out - leave_out.mean()) ** 2).sum()))
    half = float(student_t.ppf(1 - (1 - confidence) / 2, n - 1)) * se
    return Interval(estimate, estimate - half, estimate + half, confidence, "jackknife")

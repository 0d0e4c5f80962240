import numpy as np
import pytest
from scipy.stats import binomtest, bootstrap

from fissure.metrics.stats import bootstrap_interval, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (47, 200)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    got = wilson_interval(k, n)
    assert got.low == pytest.approx(ref.low, abs=1e-9)
    assert got.high == pytest.approx(ref.high, abs=1e-9)
    assert got.estimate == k / n


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_bootstrap_close_to_scipy_percentile():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 1.0, size=200)
    ref = bootstrap((data,), np.mean, confidence_level=0.95, n_resamples=4000, method="percentile",
                    random_state=1).confidence_interval
    got = bootstrap_interval(data, n_resamples=4000, seed=1)
    assert got.low == pytest.approx(ref.low, abs=0.03)
    assert got.high == pytest.approx(ref.high, abs=0.03)
    assert got.low < 3.0 < got.high or abs(got.estimate - 3.0) < 0.2


def test_jackknife_of_the_mean_is_the_t_interval():
    from scipy.stats import sem, t

    from fissure.metrics.stats import jackknife_interval

    values = [3.1, 0.4, 2.2, 5.0, 1.7, 2.9, 4.4]
    got = jackknife_interval(values, lambda v: sum(v) / len(v), confidence=0.9)
    low, high = t.interval(0.9, len(values) - 1, loc=np.mean(values), scale=sem(values))
    assert got.estimate == pytest.approx(np.mean(values))
    assert (got.low, got.high) == pytest.approx((low, high))
    assert got.method == "jackknife"
    with pytest.raises(ValueError):
        jackknife_interval([1.0], np.mean)


@pytest.mark.parametrize("n,baseline,n_baseline", [(6, 0.0, None), (30, 0.0, None), (30, 0.1, None), (30, 0.33, None),
                                                   (60, 0.5, None), (30, 0.2, 90)])
def test_detectable_rise_is_statsmodels_power_solution(n, baseline, n_baseline):
    """The minimum detectable difference: the effect size statsmodels' NormalIndPower solves for,
    turned back into a rate above the baseline (Cohen's h = 2 asin sqrt p1 - 2 asin sqrt p0)."""
    import math

    from statsmodels.stats.power import NormalIndPower

    from fissure.metrics.stats import detectable_rise

    ratio = (n_baseline or n) / n
    h = NormalIndPower().solve_power(effect_size=None, nobs1=n, alpha=0.05, power=0.8, ratio=ratio)
    expected = math.sin(math.asin(math.sqrt(baseline)) + h / 2) ** 2 - baseline
    assert detectable_rise(n, baseline, n_baseline=n_baseline) == pytest.approx(expected, abs=1e-5)
    # more trials detect less; a higher power asks for more
    assert detectable_rise(4 * n, baseline, n_baseline=n_baseline) < detectable_rise(n, baseline, n_baseline=n_baseline)
    assert detectable_rise(n, baseline, power=0.9, n_baseline=n_baseline) > detectable_rise(n, baseline, n_baseline=n_baseline)


def test_detectable_rise_says_when_no_rate_is_detectable():
    from fissure.metrics.stats import detectable_rise

    assert detectable_rise(2, 0.9) is None  # not even a rate of 1 would be told apart from 0.9 on 2 trials
    with pytest.raises(ValueError, match="baseline"):
        detectable_rise(10, 1.5)

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

"""Confidence intervals and verdicts against scipy (a test dependency through scikit-learn)."""

import math

import pytest

from attnlab.stats import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, difference_ci, mean_ci, t_quantile, verdict

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3.5, 4, 9, 30, 200])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(p, df):
    assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-7, abs=1e-9)


def test_mean_ci_is_the_student_t_interval():
    xs = [0.61, 0.64, 0.58, 0.66]
    ci = mean_ci(xs)
    low, high = scipy_stats.t.interval(0.95, len(xs) - 1, loc=sum(xs) / 4, scale=scipy_stats.sem(xs))
    assert (ci.low, ci.high) == pytest.approx((low, high), rel=1e-8)
    assert ci.format(2) == f"{ci.mean:.2f} ± {ci.half_width:.2f}"
    assert math.isinf(mean_ci([1.0]).half_width) and mean_ci([1.0]).format() == "1.000"
    assert mean_ci([2.0, 2.0, 2.0]).half_width == 0.0


def test_difference_ci_is_welch():
    a, b = [3.1, 2.9, 3.4, 3.0], [2.1, 2.6, 2.2]
    ci = difference_ci(a, b)
    res = scipy_stats.ttest_ind(a, b, equal_var=False)
    low, high = res.confidence_interval(0.95)
    assert (ci.low, ci.high) == pytest.approx((low, high), rel=1e-7)


def test_verdicts_follow_the_interval():
    assert verdict([0.9, 0.91, 0.92], [0.6, 0.62, 0.61], higher_is_better=True) == HOLDS
    assert verdict([0.6, 0.62, 0.61], [0.9, 0.91, 0.92], higher_is_better=True) == DOES_NOT_HOLD
    assert verdict([2.1, 2.0, 2.05], [2.5, 2.4, 2.45], higher_is_better=False) == HOLDS  # lower loss is better
    assert verdict([0.7, 0.9, 0.5], [0.72, 0.6, 0.8], higher_is_better=True) == INCONCLUSIVE
    assert verdict([0.9], [0.1], higher_is_better=True) == INCONCLUSIVE  # one seed proves nothing


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([1.0, float("nan")])

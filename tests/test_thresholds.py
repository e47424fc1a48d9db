"""Adaptive threshold and score calibration."""

import numpy as np
import pytest

from streamad.thresholds import AdaptiveThreshold, ScoreCalibrator


def test_threshold_seeded_exact_at_low_level():
    reference = np.random.default_rng(0).normal(size=2000)
    threshold = AdaptiveThreshold(reference, level=0.9)
    assert threshold.current("new-series") == pytest.approx(np.quantile(reference, 0.9), rel=1e-9)


def test_threshold_extrapolates_exponential_tail():
    # 2000 excesses over the base quantile: the estimate's standard error is about 0.1.
    reference = np.random.default_rng(0).exponential(size=20_000)
    threshold = AdaptiveThreshold(reference, level=0.999, window_size=20_000)
    assert threshold.current("s") == pytest.approx(np.log(1000.0), abs=0.3)


def test_threshold_from_few_scores_exceeds_their_max():
    reference = np.random.default_rng(1).normal(size=200)
    threshold = AdaptiveThreshold(reference, level=0.999)
    assert threshold.current("s") > reference.max()


def test_threshold_alerts_on_first_window():
    threshold = AdaptiveThreshold(np.linspace(0.0, 1.0, 500), level=0.99)
    is_alert, value = threshold.update("pump-1", 5.0)
    assert is_alert
    assert 1.0 < value < 1.1


def test_threshold_warmup_suppresses_alerts():
    threshold = AdaptiveThreshold(np.linspace(0.0, 1.0, 500), level=0.99, warmup=2)
    decisions = [threshold.update("pump-1", 5.0)[0] for _ in range(3)]
    assert decisions == [False, False, True]


def test_threshold_follows_recent_normal_scores():
    rng = np.random.default_rng(1)
    threshold = AdaptiveThreshold(rng.normal(size=500), level=0.95, window_size=1000)
    for score in rng.normal(scale=0.1, size=1000):
        threshold.update("quiet", float(score))
    assert threshold.current("quiet") < 0.3


def test_threshold_rises_with_a_noisier_stream():
    rng = np.random.default_rng(2)
    threshold = AdaptiveThreshold(rng.normal(size=1000), level=0.999, window_size=2000)
    before = threshold.current("s")
    for score in rng.normal(scale=2.0, size=4000):
        threshold.update("s", float(score))
    assert before < 4.0
    assert threshold.current("s") > 5.0


def test_threshold_short_incident_raises_it_little():
    threshold = AdaptiveThreshold(np.linspace(0.0, 1.0, 5000), level=0.999, window_size=5000)
    before = threshold.current("s")
    decisions = [threshold.update("s", 50.0)[0] for _ in range(20)]
    after = threshold.current("s")
    base = 0.9
    assert all(decisions)
    assert after > before
    assert after - before < 0.2 * (before - base)


def test_threshold_ties_do_not_alert():
    threshold = AdaptiveThreshold(np.full(100, 12.129488), level=0.999)
    assert not threshold.update("s", 12.129530)[0]
    assert threshold.update("s", 12.2)[0]


def test_threshold_shared_across_series_by_default():
    threshold = AdaptiveThreshold(np.linspace(0.0, 1.0, 100), level=0.5, window_size=100)
    for _ in range(100):
        threshold.update("a", 0.0)
    assert threshold.current("b") == threshold.current("a")
    assert threshold.current("b") < 0.1


def test_threshold_per_series_keeps_series_apart():
    threshold = AdaptiveThreshold(np.linspace(0.0, 1.0, 100), level=0.5, window_size=100, per_series=True)
    for _ in range(100):
        threshold.update("a", 0.0)
    assert threshold.current("a") < 0.1
    assert threshold.current("b") == pytest.approx(0.5, abs=0.02)


def test_threshold_ignores_nan_score():
    threshold = AdaptiveThreshold(np.linspace(0.0, 1.0, 100), level=0.9)
    before = threshold.current("s")
    assert threshold.update("s", float("nan")) == (False, before)
    assert threshold.current("s") == before


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1])
def test_threshold_rejects_invalid_level(level):
    with pytest.raises(ValueError, match=str(level)):
        AdaptiveThreshold([1.0, 2.0], level=level)


def test_threshold_rejects_empty_reference():
    with pytest.raises(ValueError, match="retrain"):
        AdaptiveThreshold([float("nan")])


def test_calibrator_is_empirical_cdf():
    calibrator = ScoreCalibrator(np.arange(1.0, 100.0))
    probabilities = calibrator.probability([0.0, 50.0, 99.0])
    assert probabilities[0] == 0.0
    assert probabilities[1] == pytest.approx(50 / 100)
    assert probabilities[2] == pytest.approx(99 / 100)


def test_calibrator_orders_scores_above_reference():
    calibrator = ScoreCalibrator(np.arange(100.0))
    probabilities = calibrator.probability([100.0, 150.0, 1000.0])
    assert np.all(np.diff(probabilities) > 0)
    assert np.all((probabilities > 0.99) & (probabilities <= 1.0))


def test_calibrator_keeps_order_far_above_reference():
    calibrator = ScoreCalibrator(np.arange(100.0))
    probabilities = calibrator.probability([1e4, 1e5, 1e6])
    assert np.all(np.diff(probabilities) > 0)
    assert np.all(probabilities < 1.0)


def test_calibrator_keeps_nan():
    assert np.isnan(ScoreCalibrator([1.0, 2.0]).probability([np.nan])[0])

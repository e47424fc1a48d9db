"""Adaptive thresholds and calibrated anomaly probabilities for window scores."""

from streamad.thresholds.calibration import ScoreCalibrator
from streamad.thresholds.quantile import AdaptiveThreshold

__all__ = ["AdaptiveThreshold", "ScoreCalibrator"]

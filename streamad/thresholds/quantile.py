"""Running-quantile threshold per series, seeded from validation scores."""

from __future__ import annotations

import copy

import numpy as np
from river import stats


class AdaptiveThreshold:
    """A running quantile of each series' scores, usable from the first window.

    One river ``stats.Quantile`` (the P² algorithm, five markers of state) is fed the
    reference scores once. Every new series starts from a copy of that seeded estimator,
    so its threshold before any data is the reference quantile, and then it follows the
    series' own score distribution. A window alerts when its score is above the threshold
    that was in force before the score was added, and when the series has produced more
    than ``warmup`` scores.

    Parameters
    ----------
    reference
        Scores of normal windows (the bundle's validation scores).
    level
        Quantile level in (0, 1). Default 0.999: about one window in a thousand of data
        like the reference alerts.
    warmup
        Number of scores per series that update the quantile but never alert. Default 0,
        since the seed makes the threshold usable from the first window.

    Examples
    --------
    >>> threshold = AdaptiveThreshold(reference=[0.1 * i for i in range(100)], level=0.9)
    >>> threshold.update("pump-1", 100.0)
    (True, ...)
    >>> is_alert, value = threshold.update("pump-1", 1.0)
    >>> is_alert
    False
    """

    def __init__(self, reference, level: float = 0.999, warmup: int = 0) -> None:
        if not 0.0 < level < 1.0:
            raise ValueError(f"threshold level={level!r} is invalid; use a quantile level strictly between 0 and 1, e.g. 0.999")
        if warmup < 0:
            raise ValueError(f"warmup={warmup!r} is invalid; use a count of scores >= 0")
        reference = np.asarray(reference, dtype=np.float64).ravel()
        reference = reference[np.isfinite(reference)]
        if reference.size == 0:
            raise ValueError("reference scores are empty or all non-finite; retrain the model bundle")

        self.level = float(level)
        self.warmup = int(warmup)
        self._seed = stats.Quantile(self.level)
        for score in reference:
            self._seed.update(float(score))
        self._quantiles: dict[str, stats.Quantile] = {}
        self._counts: dict[str, int] = {}

    def current(self, series: str) -> float:
        """Return the threshold now in force for ``series``."""
        quantile = self._quantiles.get(series, self._seed)
        return float(quantile.get())

    def update(self, series: str, score: float) -> tuple[bool, float]:
        """Add one score of ``series``; return ``(is_alert, threshold)`` for it.

        The threshold is the one in force before the score is added. A NaN score never
        alerts and does not change the quantile.
        """
        quantile = self._quantiles.get(series)
        if quantile is None:
            quantile = copy.deepcopy(self._seed)
            self._quantiles[series] = quantile
            self._counts[series] = 0

        threshold = float(quantile.get())
        if not np.isfinite(score):
            return False, threshold

        count = self._counts[series]
        is_alert = count >= self.warmup and score > threshold
        quantile.update(float(score))
        self._counts[series] = count + 1
        return bool(is_alert), threshold

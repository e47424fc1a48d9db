"""Running-quantile threshold, seeded from validation scores."""

from __future__ import annotations

import copy

import numpy as np
from river import stats

SHARED_KEY = "*"


class AdaptiveThreshold:
    """An exact rolling quantile of recent normal scores, usable from the first window.

    A river ``stats.RollingQuantile`` over the last ``window_size`` scores is first fed
    the reference scores, so the threshold before any data is the reference's empirical
    quantile at ``level``. Afterwards every score that does not alert is added, and the
    oldest one drops out. Alerting scores are not added, so a long incident does not
    raise its own threshold and hide its second half.

    By default one quantile serves all series, which suits one model scoring many
    series: its score is a log-density on one scale, and the state does not grow with the
    number of series. ``per_series=True`` keeps one quantile per series instead, at
    ``window_size`` floats of memory each.

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
    window_size
        Number of most recent normal scores the quantile is computed over. Default 5000.
    per_series
        One quantile per series (True) or one shared by all series (False, default).

    Examples
    --------
    >>> threshold = AdaptiveThreshold(reference=[0.1 * i for i in range(100)], level=0.9)
    >>> round(threshold.current("pump-1"), 2)
    8.91
    >>> threshold.update("pump-1", 100.0)[0]
    True
    >>> threshold.update("pump-1", 1.0)[0]
    False

    NOTE: a series whose normal scores rise for good (a new regime) alerts until the
    model is retrained, because its alerting scores never enter the quantile.
    """

    def __init__(
        self,
        reference,
        level: float = 0.999,
        warmup: int = 0,
        window_size: int = 5000,
        per_series: bool = False,
    ) -> None:
        if not 0.0 < level < 1.0:
            raise ValueError(f"threshold level={level!r} is invalid; use a quantile level strictly between 0 and 1, e.g. 0.999")
        if warmup < 0:
            raise ValueError(f"warmup={warmup!r} is invalid; use a count of scores >= 0")
        if window_size < 1:
            raise ValueError(f"window_size={window_size!r} is invalid; use a number of scores >= 1, e.g. 5000")
        reference = np.asarray(reference, dtype=np.float64).ravel()
        reference = reference[np.isfinite(reference)]
        if reference.size == 0:
            raise ValueError("reference scores are empty or all non-finite; retrain the model bundle")

        self.level = float(level)
        self.warmup = int(warmup)
        self.window_size = int(window_size)
        self.per_series = per_series
        self._seed = stats.RollingQuantile(q=self.level, window_size=self.window_size)
        for score in reference[-self.window_size :]:
            self._seed.update(float(score))
        self._quantiles: dict[str, stats.RollingQuantile] = {}
        self._counts: dict[str, int] = {}

    def _quantile(self, series: str) -> stats.RollingQuantile:
        key = series if self.per_series else SHARED_KEY
        quantile = self._quantiles.get(key)
        if quantile is None:
            quantile = copy.deepcopy(self._seed)
            self._quantiles[key] = quantile
        return quantile

    def current(self, series: str) -> float:
        """Return the threshold now in force for ``series``."""
        return float(self._quantile(series).get())

    def update(self, series: str, score: float) -> tuple[bool, float]:
        """Add one score of ``series``; return ``(is_alert, threshold)`` for it.

        The threshold is the one in force before the score is added. A NaN score never
        alerts and is not added.
        """
        quantile = self._quantile(series)
        threshold = float(quantile.get())
        if not np.isfinite(score):
            return False, threshold

        count = self._counts.get(series, 0)
        self._counts[series] = count + 1
        is_alert = count >= self.warmup and score > threshold
        if not is_alert:
            quantile.update(float(score))
        return bool(is_alert), threshold

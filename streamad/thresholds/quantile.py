"""Running-quantile threshold, seeded from validation scores."""

from __future__ import annotations

from collections import deque

import numpy as np
from river import stats

SHARED_KEY = "*"

# Relative difference below which a score counts as equal to the threshold.
TIE_TOLERANCE = 1e-4

# Level of the base quantile above which excesses are modelled as exponential.
TAIL_BASE_LEVEL = 0.9


class AdaptiveThreshold:
    """A running-quantile threshold with an exponential tail, usable from the first window.

    An exact quantile at level 0.999 needs thousands of normal scores, and over a short
    window it is the window's maximum, so one anomaly would set the threshold for the next.
    The threshold is therefore extrapolated by peaks over threshold. A river
    ``stats.RollingQuantile`` tracks the base quantile ``u`` at level 0.9 of the last
    ``window_size`` scores. The excesses over ``u`` are modelled as exponential with their
    mean ``β``, so the threshold at ``level`` is ``u + β·ln(0.1 / (1 - level))``. For
    ``level <= 0.9`` the threshold is the exact rolling quantile at ``level``.

    The window is first filled with the reference scores, so the threshold is usable from
    the first window. Afterwards every finite score that does not alert is added and the
    oldest one drops out. The threshold therefore follows the live score distribution. It
    rises when the stream is noisier than the validation data and falls when it is calmer. A
    score above the threshold is added as the threshold's value (winsorised), so an
    incident raises the threshold only a little (20 alerting windows among 5000 raise it
    by roughly a tenth of its distance from the base quantile), while a lasting shift to
    higher scores still raises it step by step until the new level stops alerting.

    A score alerts when it exceeds the threshold by more than a relative ``1e-4``. Scores
    are computed in float32, and windows with the same content can differ by about
    ``1e-5`` relative, so smaller differences are ties (e.g. a constant channel scores the
    same value everywhere).

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
        Number of most recent scores the threshold is computed over. Default 5000.
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
        self.base_level = min(self.level, TAIL_BASE_LEVEL)
        self._tail_factor = float(np.log((1.0 - self.base_level) / (1.0 - self.level)))
        self.warmup = int(warmup)
        self.window_size = int(window_size)
        self.per_series = per_series
        self._seed_scores = reference[-self.window_size :].copy()
        self._quantiles: dict[str, stats.RollingQuantile] = {}
        # river's RollingQuantile keeps its window in Rust and cannot export it, so each
        # quantile's window is mirrored here for checkpoints.
        self._windows: dict[str, deque] = {}
        self._counts: dict[str, int] = {}

    def _key(self, series: str) -> str:
        return series if self.per_series else SHARED_KEY

    def _quantile(self, series: str) -> stats.RollingQuantile:
        key = self._key(series)
        quantile = self._quantiles.get(key)
        if quantile is None:
            quantile = self._load_window(key, self._seed_scores)
        return quantile

    def _load_window(self, key: str, scores: np.ndarray) -> stats.RollingQuantile:
        quantile = stats.RollingQuantile(q=self.base_level, window_size=self.window_size)
        window: deque = deque(maxlen=self.window_size)
        for score in scores[-self.window_size :]:
            quantile.update(float(score))
            window.append(float(score))
        self._quantiles[key] = quantile
        self._windows[key] = window
        return quantile

    def current(self, series: str) -> float:
        """Return the threshold now in force for ``series``."""
        base = float(self._quantile(series).get())
        if self._tail_factor == 0.0:
            return base
        window = self._window_scores(self._key(series))
        excess = window[window > base] - base
        mean_excess = float(excess.mean()) if excess.size else 0.0
        return base + mean_excess * self._tail_factor

    def update(self, series: str, score: float) -> tuple[bool, float]:
        """Add one score of ``series``; return ``(is_alert, threshold)`` for it.

        The threshold is the one in force before the score is added. A NaN score never
        alerts and is not added; a score above the threshold is added as the threshold.
        """
        quantile = self._quantile(series)
        threshold = self.current(series)
        if not np.isfinite(score):
            return False, threshold

        count = self._counts.get(series, 0)
        self._counts[series] = count + 1
        margin = TIE_TOLERANCE * max(1.0, abs(threshold))
        is_alert = count >= self.warmup and score > threshold + margin
        added = min(float(score), threshold)
        quantile.update(added)
        self._windows[self._key(series)].append(added)
        return bool(is_alert), threshold

    def export_state(self, series_ids: list[str], include_shared: bool = True) -> dict[str, np.ndarray]:
        """Return the state of ``series_ids`` as arrays, for :meth:`import_state`.

        ``counts`` is the number of scores seen per series (for the warm-up). With
        ``per_series=True`` the windows of the series' quantiles are concatenated in
        ``windows`` with their lengths in ``window_lengths``. The shared quantile's window is
        ``shared_window`` when ``per_series=False`` and ``include_shared`` is True.
        """
        arrays = {"counts": np.array([self._counts.get(series, 0) for series in series_ids], dtype=np.int64)}
        if self.per_series:
            windows = [self._window_scores(series) for series in series_ids]
            arrays["window_lengths"] = np.array([len(window) for window in windows], dtype=np.int64)
            arrays["windows"] = np.concatenate(windows) if windows else np.zeros(0)
        elif include_shared:
            arrays["shared_window"] = self._window_scores(SHARED_KEY)
        return arrays

    def import_state(self, series_ids: list[str], arrays: dict[str, np.ndarray], include_shared: bool = True) -> None:
        """Replace the state of ``series_ids`` with arrays from :meth:`export_state`.

        Raises ValueError when the arrays were exported with another ``per_series`` setting.
        """
        counts = arrays["counts"]
        if len(counts) != len(series_ids):
            raise ValueError(f"threshold state has {len(counts)} series counts for {len(series_ids)} series")
        if self.per_series != ("windows" in arrays):
            raise ValueError(
                f"threshold state was saved with per-series thresholds {'on' if 'windows' in arrays else 'off'}, "
                f"and this engine has them {'on' if self.per_series else 'off'}; use the same setting or delete the checkpoints"
            )
        for series, count in zip(series_ids, counts):
            self._counts[series] = int(count)
        if self.per_series:
            ends = np.cumsum(arrays["window_lengths"])
            for series, start, end in zip(series_ids, ends - arrays["window_lengths"], ends):
                self._load_window(series, np.asarray(arrays["windows"][start:end], dtype=np.float64))
        elif include_shared and "shared_window" in arrays:
            self._load_window(SHARED_KEY, np.asarray(arrays["shared_window"], dtype=np.float64))

    def forget(self, series_ids: list[str]) -> None:
        """Drop the state of ``series_ids``; a later score of one starts from the seed again.

        The shared quantile is kept, because other series use it.
        """
        for series in series_ids:
            self._counts.pop(series, None)
            if self.per_series:
                self._quantiles.pop(series, None)
                self._windows.pop(series, None)

    def _window_scores(self, key: str) -> np.ndarray:
        window = self._windows.get(key)
        if window is None:
            return self._seed_scores.copy()
        return np.fromiter(window, dtype=np.float64, count=len(window))

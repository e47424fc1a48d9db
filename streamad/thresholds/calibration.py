"""Map a score to an anomaly probability by its rank among reference scores."""

from __future__ import annotations

import numpy as np


class ScoreCalibrator:
    """Empirical CDF of reference scores, with an exponential tail above their maximum.

    ``probability(s)`` is the fraction of reference scores at or below ``s``, so a score
    at the 99th percentile of normal validation windows maps to 0.99. Scores above the
    largest reference score would all map to 1.0 and lose their order, which matters to
    scorers that sweep one threshold over the probability of many files (NAB). Above the
    maximum the remaining mass ``1/(n+1)`` therefore decays as ``1/(1 + excess/IQR)``,
    with the reference scores' interquartile range as the length scale. An exponential
    decay would round to exactly 1.0 in float64 about 35 IQRs above the maximum, where
    real anomalies and drifts of the likelihood score often lie.

    Parameters
    ----------
    reference
        Scores of normal windows, typically the bundle's validation scores.

    Examples
    --------
    >>> calibrator = ScoreCalibrator([1.0, 2.0, 3.0, 4.0])
    >>> calibrator.probability([0.5, 2.0, 4.0])
    array([0. , 0.4, 0.8])
    >>> bool(calibrator.probability([100.0])[0] > 0.99)
    True
    """

    def __init__(self, reference) -> None:
        scores = np.sort(np.asarray(reference, dtype=np.float64).ravel())
        scores = scores[np.isfinite(scores)]
        if scores.size == 0:
            raise ValueError("reference scores are empty or all non-finite; retrain the model bundle")
        self.reference = scores
        q25, q75 = np.quantile(scores, [0.25, 0.75])
        self.tail_scale = float(q75 - q25) if q75 > q25 else 1.0

    def probability(self, scores) -> np.ndarray:
        """Return the anomaly probability in [0, 1] of each score; NaN stays NaN."""
        scores = np.asarray(scores, dtype=np.float64)
        n = self.reference.size
        rank = np.searchsorted(self.reference, scores, side="right")
        probability = rank / (n + 1.0)

        above = scores > self.reference[-1]
        excess = (scores[above] - self.reference[-1]) / self.tail_scale
        probability[above] = 1.0 - 1.0 / ((n + 1.0) * (1.0 + excess))

        probability[np.isnan(scores)] = np.nan
        return probability

"""Per-channel standardisation and forward filling of short gaps.

Examples
--------
>>> import numpy as np
>>> train = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0]])
>>> scaler = StandardScaler().fit(train)
>>> scaler.mean_.tolist(), scaler.scale_.tolist()
([2.0, 5.0], [1.0, 1.0])
>>> fill_gaps(np.array([1.0, np.nan, 3.0, np.nan, np.nan, 6.0]), max_fill=1).tolist()
[1.0, 1.0, 3.0, nan, nan, 6.0]
"""

from __future__ import annotations

import numpy as np


class StandardScaler:
    """Standardise each channel to zero mean and unit variance, ignoring NaN.

    Fit it on training data only, so that test and live data are scaled with statistics the
    model saw. The scale is the population standard deviation (``ddof=0``), as in
    scikit-learn. A channel that is constant in the training data gets scale 1 so that it is
    only centred, and NaN stays NaN in :meth:`transform`.

    Values of any shape ``(..., C)`` are accepted, with channels on the last axis, so windows
    ``(N, L, C)`` and series ``(T, C)`` use the same scaler. A 1-D array is one channel.

    Attributes
    ----------
    mean_
        float64 ``(C,)``, the training mean of each channel. None before :meth:`fit`.
    scale_
        float64 ``(C,)``, the divisor of each channel. None before :meth:`fit`.
    """

    def __init__(self) -> None:
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def fit(self, values: np.ndarray) -> StandardScaler:
        """Compute each channel's mean and scale from the training values.

        Raises
        ------
        ValueError
            When the values contain ±inf, or a channel has no finite value.
        """
        rows = _as_rows(values)
        if rows.shape[0] == 0:
            raise ValueError("StandardScaler.fit needs at least one row of training values")
        if np.isinf(rows).any():
            channel = int(np.flatnonzero(np.isinf(rows).any(axis=0))[0])
            raise ValueError(
                f"StandardScaler.fit: channel {channel} contains ±inf; replace it with NaN (missing) or a finite value"
            )

        counts = np.sum(~np.isnan(rows), axis=0)
        if np.any(counts == 0):
            channel = int(np.flatnonzero(counts == 0)[0])
            raise ValueError(
                f"StandardScaler.fit: channel {channel} has no finite value in the training data; "
                "drop the channel or train on data where it is observed"
            )

        mean = np.nanmean(rows, axis=0)
        variance = np.nanvar(rows, axis=0)
        # A constant channel has a variance of rounding-error size rather than exactly 0.
        # This is scikit-learn's bound for that error (sklearn.preprocessing._data._is_constant_feature).
        eps = np.finfo(np.float64).eps
        rounding_bound = counts * eps * variance + (counts * mean * eps) ** 2
        constant = variance <= rounding_bound

        self.mean_ = mean
        self.scale_ = np.where(constant, 1.0, np.sqrt(variance))
        return self

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Return ``(values - mean_) / scale_`` as float64 of the input's shape."""
        array = self._check_input(values, "transform")
        return (array - self.mean_) / self.scale_

    def inverse_transform(self, values: np.ndarray) -> np.ndarray:
        """Return ``values * scale_ + mean_``, undoing :meth:`transform`."""
        array = self._check_input(values, "inverse_transform")
        return array * self.scale_ + self.mean_

    def to_dict(self) -> dict:
        """Return the fitted statistics as a JSON-serialisable dict for :meth:`from_dict`."""
        self._check_fitted("to_dict")
        return {"mean": self.mean_.tolist(), "scale": self.scale_.tolist()}

    @classmethod
    def from_dict(cls, state: dict) -> StandardScaler:
        """Rebuild a fitted scaler from the output of :meth:`to_dict`."""
        missing = [key for key in ("mean", "scale") if key not in state]
        if missing:
            raise ValueError(f"scaler state is missing {missing}; expected the keys 'mean' and 'scale' from to_dict()")

        mean = np.asarray(state["mean"], dtype=np.float64)
        scale = np.asarray(state["scale"], dtype=np.float64)
        if mean.ndim != 1 or mean.shape != scale.shape:
            raise ValueError(
                f"scaler state has mean of shape {mean.shape} and scale of shape {scale.shape}; "
                "both must be lists of the same length"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError("scaler state is invalid: mean must be finite and scale finite and positive")

        scaler = cls()
        scaler.mean_ = mean
        scaler.scale_ = scale
        return scaler

    def _check_fitted(self, method: str) -> None:
        if self.mean_ is None or self.scale_ is None:
            raise RuntimeError(f"StandardScaler.{method} needs a fitted scaler; call fit(training_values) first")

    def _check_input(self, values: np.ndarray, method: str) -> np.ndarray:
        self._check_fitted(method)
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 1 and len(self.mean_) == 1:
            array = array.reshape(-1, 1)
        if array.ndim == 0 or array.shape[-1] != len(self.mean_):
            raise ValueError(
                f"StandardScaler.{method}: the values have shape {array.shape}, but the scaler was fitted "
                f"on {len(self.mean_)} channel(s); put the channels on the last axis"
            )
        return array


def _as_rows(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError("StandardScaler.fit needs an array of shape (..., channels), got a scalar")
    if array.ndim == 1:
        return array.reshape(-1, 1)
    return array.reshape(-1, array.shape[-1])


def fill_gaps(values: np.ndarray, max_fill: int) -> np.ndarray:
    """Forward-fill runs of NaN of at most ``max_fill`` steps, channel by channel.

    A run longer than ``max_fill`` stays NaN as a whole, so no invented value hides a long
    outage. NaN before the first observed value stays NaN because nothing precedes it. A run
    at the end of the array is filled when it is short enough. ``max_fill=0`` fills nothing.

    Parameters
    ----------
    values
        ``(T,)`` or ``(T, C)``. The input is not modified.
    max_fill
        The maximum length, in time steps, of a run of NaN that is filled.

    Returns
    -------
    numpy.ndarray
        A float64 copy of ``values`` with the short gaps filled.

    Examples
    --------
    >>> import numpy as np
    >>> fill_gaps(np.array([np.nan, 1.0, np.nan, np.nan, 4.0, np.nan]), max_fill=2).tolist()
    [nan, 1.0, 1.0, 1.0, 4.0, 4.0]
    """
    if isinstance(max_fill, bool) or not isinstance(max_fill, (int, np.integer)) or max_fill < 0:
        raise ValueError(f"max_fill={max_fill!r} is invalid; use an integer >= 0 (the number of steps to fill)")

    filled = np.array(values, dtype=np.float64)
    if filled.ndim not in (1, 2):
        raise ValueError(f"fill_gaps expects values of shape (T,) or (T, C), got shape {filled.shape}")
    if max_fill == 0 or filled.size == 0:
        return filled

    table = filled.reshape(len(filled), -1)
    missing = np.isnan(table)
    steps = np.arange(len(table))[:, None]

    # For every point: the index of the last observed value at or before it (-1 if none)
    # and of the first observed value at or after it (T if none).
    previous = np.maximum.accumulate(np.where(missing, -1, steps), axis=0)
    following = np.minimum.accumulate(np.where(missing, len(table), steps)[::-1], axis=0)[::-1]
    run_length = following - previous - 1

    fillable = missing & (previous >= 0) & (run_length <= max_fill)
    rows, columns = np.nonzero(fillable)
    table[rows, columns] = table[previous[rows, columns], columns]
    return filled

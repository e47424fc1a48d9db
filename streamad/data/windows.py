"""Sliding windows over a series, the input unit of the windowed VAEs.

Examples
--------
>>> import numpy as np
>>> windows = sliding_windows(np.arange(6.0), window=3, stride=2)
>>> windows.x[:, :, 0].tolist()
[[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]]
>>> windows.end.tolist()
[2, 4]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Windows:
    """Windows cut from one series.

    Attributes
    ----------
    x
        float32 ``(N, L, C)``, the windows that contain no missing value.
    end
        int64 ``(N,)``, the index in the series of each window's last point, so an alert
        for window ``i`` refers to the time step ``end[i]``.
    skipped
        The number of windows that were dropped because they contained NaN or ±inf. Fill
        short gaps with :func:`~streamad.data.preprocessing.fill_gaps` first.
    """

    x: np.ndarray
    end: np.ndarray
    skipped: int

    def __len__(self) -> int:
        return len(self.end)


def sliding_windows(values: np.ndarray, window: int, stride: int = 1) -> Windows:
    """Cut windows of ``window`` steps every ``stride`` steps, starting at index 0.

    Window ``k`` covers the rows ``k * stride`` to ``k * stride + window - 1``. A trailing
    part shorter than a stride is not covered. The windows are built from a strided view
    (``numpy.lib.stride_tricks.sliding_window_view``) and copied once into ``x``.

    Parameters
    ----------
    values
        ``(T,)`` or ``(T, C)``. A 1-D array is one channel.
    window
        The window length ``L`` in steps, from 1 to ``T``.
    stride
        The step between the starts of consecutive windows, at least 1.

    Raises
    ------
    ValueError
        When ``window`` or ``stride`` is not a positive integer, ``window`` exceeds the length
        of the series, or ``values`` is not 1-D or 2-D.

    Examples
    --------
    >>> import numpy as np
    >>> values = np.array([[0.0, 10.0], [1.0, np.nan], [2.0, 12.0], [3.0, 13.0], [4.0, 14.0]])
    >>> windows = sliding_windows(values, window=2)
    >>> windows.x.shape, windows.end.tolist(), windows.skipped
    ((2, 2, 2), [3, 4], 2)
    """
    _check_positive_integer("window", window)
    _check_positive_integer("stride", stride)

    array = np.asarray(values)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"sliding_windows expects values of shape (T,) or (T, C), got shape {array.shape}")
    length = array.shape[0]
    if window > length:
        raise ValueError(
            f"window={window} is longer than the series ({length} points); use a window of at most {length} steps"
        )

    starts = np.arange(0, length - window + 1, stride)

    # A window is invalid when it contains a non-finite point; count those per window
    # from a cumulative sum instead of scanning every window.
    invalid_point = ~np.isfinite(array).all(axis=1)
    invalid_before = np.concatenate(([0], np.cumsum(invalid_point)))
    valid = invalid_before[starts + window] == invalid_before[starts]
    valid_starts = starts[valid]

    # sliding_window_view puts the window axis last, (T - L + 1, C, L). The transposed view
    # is (T - L + 1, L, C), and indexing it with `valid_starts` copies the windows once.
    view = np.lib.stride_tricks.sliding_window_view(array.astype(np.float32), window, axis=0)
    x = view.transpose(0, 2, 1)[valid_starts]
    end = (valid_starts + window - 1).astype(np.int64)
    return Windows(x=x, end=end, skipped=int(len(starts) - len(valid_starts)))


def _check_positive_integer(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; use an integer >= 1 (a number of time steps)")

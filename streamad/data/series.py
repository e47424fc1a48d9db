"""The in-memory time series and its timestamp conventions.

A :class:`Series` stores timestamps as int64 epoch milliseconds (UTC) when the source has a
clock, and as the step index ``0..T-1`` when it has none (``.npy`` arrays, CSV files without a
timestamp column).

Examples
--------
>>> import numpy as np
>>> series = Series("demo", np.array([0, 60_000]), np.array([1.0, 2.0]), ["value"], True)
>>> series.values.shape
(2, 1)
>>> format_timestamp(int(series.timestamps[1]), series.has_clock)
'1970-01-01T00:01:00Z'
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MS = dt.timedelta(milliseconds=1)


@dataclass
class Series:
    """A time series with one row per time step and one column per channel.

    ``__post_init__`` converts ``timestamps`` to int64 and ``values`` to float64 of shape
    ``(T, C)`` (a 1-D array becomes one channel), and raises ValueError when the shapes,
    the channel names or the order of the timestamps are inconsistent.

    Attributes
    ----------
    series_id
        Identifier used in logs, alerts and label look-ups.
    timestamps
        int64 ``(T,)``, strictly increasing: epoch milliseconds (UTC) when ``has_clock``,
        otherwise the step index ``0..T-1``.
    values
        float64 ``(T, C)``; NaN marks a missing value.
    channels
        The ``C`` channel names, in column order.
    has_clock
        Whether ``timestamps`` are epoch milliseconds rather than step indices.
    """

    series_id: str
    timestamps: np.ndarray
    values: np.ndarray
    channels: list[str]
    has_clock: bool

    def __post_init__(self) -> None:
        self.series_id = str(self.series_id)
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.ndim == 1:
            self.values = self.values.reshape(-1, 1)
        self.channels = [str(name) for name in self.channels]
        self.has_clock = bool(self.has_clock)

        if self.timestamps.ndim != 1:
            raise ValueError(
                f"series {self.series_id!r}: timestamps must be 1-D, got shape {self.timestamps.shape}"
            )
        if self.values.ndim != 2:
            raise ValueError(
                f"series {self.series_id!r}: values must have shape (time, channels), "
                f"got shape {self.values.shape}"
            )
        if len(self.timestamps) != len(self.values):
            raise ValueError(
                f"series {self.series_id!r}: {len(self.timestamps)} timestamps but "
                f"{len(self.values)} rows of values; both must have one entry per time step"
            )
        if len(self.channels) != self.values.shape[1]:
            raise ValueError(
                f"series {self.series_id!r}: {len(self.channels)} channel names {self.channels} "
                f"for {self.values.shape[1]} value columns; give one name per column"
            )
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"series {self.series_id!r}: channel names {self.channels} repeat a name")

        steps = np.diff(self.timestamps)
        if np.any(steps <= 0):
            row = int(np.flatnonzero(steps <= 0)[0]) + 1
            raise ValueError(
                f"series {self.series_id!r}: timestamps must be strictly increasing, but "
                f"timestamp {self.timestamps[row]} at index {row} is not after "
                f"{self.timestamps[row - 1]}; sort the rows by time and remove duplicates"
            )

    def __len__(self) -> int:
        return len(self.timestamps)

    def slice(self, start: int | None, stop: int | None) -> Series:
        """Return the rows ``start:stop`` as a new Series.

        The bounds follow Python slicing, so negative and out-of-range bounds are allowed.
        The arrays of the result are views of this series' arrays, not copies.
        """
        rows = slice(start, stop)
        return Series(
            series_id=self.series_id,
            timestamps=self.timestamps[rows],
            values=self.values[rows],
            channels=list(self.channels),
            has_clock=self.has_clock,
        )


def format_timestamp(timestamp: int, has_clock: bool) -> str:
    """Format a Series timestamp for logs, alerts and reports.

    With a clock, the result is ISO-8601 in UTC with a ``Z`` suffix, and milliseconds appear
    only when they are not zero. Without a clock, the result is the step index as a string.

    Examples
    --------
    >>> format_timestamp(1386018900000, True)
    '2013-12-02T21:15:00Z'
    >>> format_timestamp(1386018900250, True)
    '2013-12-02T21:15:00.250Z'
    >>> format_timestamp(42, False)
    '42'
    """
    timestamp = int(timestamp)
    if not has_clock:
        return str(timestamp)

    moment = _EPOCH + dt.timedelta(milliseconds=timestamp)
    if timestamp % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: object) -> int:
    """Convert an ISO-8601 string, a datetime or a number of epoch milliseconds to epoch ms.

    A string without a UTC offset is read as UTC, and one with an offset is converted to UTC.
    Both ``T`` and a space may separate date and time, as ``datetime.fromisoformat`` allows
    on Python 3.11 and later. Numbers are taken as epoch milliseconds, never as seconds, and a
    float is rounded to the nearest millisecond. Precision below one millisecond is truncated.

    Raises
    ------
    ValueError
        When the value is not a valid timestamp. The message contains the value.

    Examples
    --------
    >>> parse_timestamp("2013-12-02 21:15:00")
    1386018900000
    >>> parse_timestamp("2013-12-02T22:15:00+01:00")
    1386018900000
    >>> parse_timestamp(1386018900000)
    1386018900000
    """
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"timestamp {value!r} is invalid: a boolean is not a time")

    if isinstance(value, (int, np.integer)):
        return int(value)

    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"timestamp {value!r} is invalid; give epoch milliseconds or an ISO-8601 string")
        return int(round(float(value)))

    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ValueError(f"timestamp {value!r} is missing (NaT)")
        return int(value.astype("datetime64[ms]").astype(np.int64))

    if isinstance(value, dt.datetime):
        return _datetime_to_ms(value)

    if isinstance(value, str):
        text = value.strip()
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"timestamp {value!r} is not a valid ISO-8601 date-time; "
                "use a form like '2013-12-02T21:15:00Z' or epoch milliseconds as a number"
            ) from None
        return _datetime_to_ms(moment)

    raise ValueError(
        f"timestamp {value!r} of type {type(value).__name__} is invalid; "
        "give an ISO-8601 string or epoch milliseconds as a number"
    )


def _datetime_to_ms(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (moment - _EPOCH) // _ONE_MS

"""Replay in-memory series through the engine, and align scored points with their rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from streamad.data import Series
from streamad.engine import RunStats, ScoredPoint, StreamEngine, run_stream
from streamad.records import Record


@dataclass
class SeriesMessage:
    """One row of a series, shaped like a Kafka message for :func:`~streamad.engine.run_stream`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    record: Record | None
    error: Exception | None = None


class SeriesSource:
    """A source over loaded series that returns their rows in timestamp order, in batches.

    Rows of several series are merged by timestamp with a stable sort, so rows with equal
    timestamps keep their input order. The message's ``topic`` is the series id and its
    ``offset`` the row index.

    Parameters
    ----------
    series
        Series to replay.
    batch_size
        Rows per :meth:`poll`.
    """

    def __init__(self, series: Sequence[Series], batch_size: int = 512) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid; use an integer >= 1")
        self.series = list(series)
        self.batch_size = batch_size
        series_index = np.concatenate([np.full(len(item), i) for i, item in enumerate(self.series)])
        row_index = np.concatenate([np.arange(len(item)) for item in self.series])
        timestamps = np.concatenate([item.timestamps for item in self.series])
        order = np.argsort(timestamps, kind="stable")
        self._series_index = series_index[order]
        self._row_index = row_index[order]
        self._timestamps = timestamps[order]
        self._position = 0

    @property
    def exhausted(self) -> bool:
        """True when every row has been returned by :meth:`poll`."""
        return self._position >= len(self._timestamps)

    def _message(self, position: int) -> SeriesMessage:
        series = self.series[self._series_index[position]]
        row = int(self._row_index[position])
        values = series.values[row].astype(np.float64)
        timestamp = int(series.timestamps[row])
        raw = {"series": series.series_id, "timestamp": timestamp, "values": [None if np.isnan(v) else float(v) for v in values]}
        return SeriesMessage(
            topic=series.series_id,
            partition=0,
            offset=row,
            key=series.series_id.encode(),
            raw=json.dumps(raw).encode(),
            record=Record(series.series_id, timestamp, values),
        )

    def poll(self) -> list[SeriesMessage]:
        """Return the next batch of rows, or an empty list after the last row."""
        stop = min(self._position + self.batch_size, len(self._timestamps))
        messages = [self._message(position) for position in range(self._position, stop)]
        self._position = stop
        return messages

    def commit(self, messages) -> None:
        """Do nothing: in-memory series have no offsets to commit."""

    def close(self) -> None:
        """Do nothing: there is nothing to release."""


def replay_series(
    engine: StreamEngine,
    series: Sequence[Series],
    alert_sinks: Iterable = (),
    on_points=None,
    batch_size: int = 512,
) -> RunStats:
    """Run every row of ``series`` through ``engine``; return the run's counters."""
    source = SeriesSource(series, batch_size=batch_size)
    return run_stream(engine, source, alert_sinks, until=lambda: source.exhausted, on_points=on_points)


def align_points(series: Series, points: Sequence[ScoredPoint]) -> tuple[np.ndarray, np.ndarray]:
    """Return per-row ``(scores, is_alert)`` of ``series``; rows without a scored window get NaN and False."""
    scores = np.full(len(series), np.nan)
    alerts = np.zeros(len(series), dtype=bool)
    own = [point for point in points if point.series == series.series_id]
    if not own:
        return scores, alerts
    timestamps = np.array([point.timestamp for point in own], dtype=np.int64)
    rows = np.searchsorted(series.timestamps, timestamps)
    scores[rows] = [point.score for point in own]
    alerts[rows] = [point.is_alert for point in own]
    return scores, alerts

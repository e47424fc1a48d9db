"""File replay source and file sinks: JSON lines, scores CSV, stdout."""

from __future__ import annotations

import csv
import json
import logging
import os
import stat
import sys
import time
from pathlib import Path
from typing import IO, Sequence

import numpy as np

from streamad.data import Series, format_timestamp, load_series, load_series_collection
from streamad.replay import SeriesSource

logger = logging.getLogger(__name__)


def load_file_series(
    path: str | Path,
    out_of_order: str = "drop",
    channels: list[str] | None = None,
    on_invalid_line=None,
    on_out_of_order=None,
    reject_nan: bool = False,
) -> list[Series]:
    """Load every series of a data file: one for CSV and ``.npy``, one or more for JSON lines.

    With ``out_of_order="drop"`` rows whose timestamp is not after every earlier row of
    their series are skipped with a logged warning (real exports contain such rows, e.g.
    an hour repeated in NAB's machine-temperature file); ``"raise"`` rejects the file.
    ``channels`` selects channels by name (CSV column names, or positions ``"0"``, ``"1"``, ...
    for ``.npy`` files), e.g. the channels a model bundle was trained on.
    ``on_invalid_line`` skips invalid lines of a JSON lines file and CSV rows with an invalid
    value, ``on_out_of_order`` gets each dropped row, and ``reject_nan`` makes a NaN value
    invalid instead of missing, see :func:`~streamad.data.load_series`.
    """
    path = Path(path)
    options = {
        "channels": channels,
        "out_of_order": out_of_order,
        "on_invalid_line": on_invalid_line,
        "on_out_of_order": on_out_of_order,
        "reject_nan": reject_nan,
    }
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return load_series_collection(path, **options)
    return [load_series(path, **options)]


class FileReplaySource(SeriesSource):
    """Replay the rows of loaded data files in timestamp order, optionally paced.

    With ``speed`` set, :meth:`poll` sleeps so that the replay runs ``speed`` times faster
    than the timestamps imply. Without it, rows come as fast as the engine consumes them.

    Parameters
    ----------
    series
        Series to replay, e.g. from :func:`load_file_series`.
    batch_size
        Rows per :meth:`poll`.
    speed
        Replay speed relative to real time, or None for no pacing. Needs series with
        clock timestamps.

    Examples
    --------
    >>> import numpy as np
    >>> from streamad.data import Series
    >>> series = Series("pump", np.arange(3) * 1000, np.ones((3, 1)), ["value"], True)
    >>> source = FileReplaySource([series], batch_size=2)
    >>> [message.offset for message in source.poll()], source.exhausted
    ([0, 1], False)
    """

    def __init__(self, series: Sequence[Series], batch_size: int = 512, speed: float | None = None) -> None:
        super().__init__(series, batch_size=batch_size)
        if speed is not None and not speed > 0:
            raise ValueError(f"speed={speed!r} is invalid; use a positive factor, e.g. 60 for one hour per minute")
        if speed is not None and not all(item.has_clock for item in self.series):
            raise ValueError("speed is set, but a series has no clock timestamps (.npy); drop --speed for it")
        self.speed = speed
        self._clock_start: float | None = None
        self._first_timestamp = 0

    def poll(self):
        """Return the next batch; when paced, wait for the next row and return the rows due by then."""
        if self.speed is None or self.exhausted:
            return super().poll()

        first = self._position
        time.sleep(max(0.0, self._due(first) - time.monotonic()))
        now = time.monotonic()
        stop = first + 1
        limit = min(first + self.batch_size, len(self._timestamps))
        while stop < limit and self._due(stop) <= now:
            stop += 1
        messages = [self._message(position) for position in range(first, stop)]
        self._position = stop
        return messages

    def _due(self, position: int) -> float:
        """Return the monotonic clock time at which row ``position`` is released."""
        timestamp = int(self._timestamps[position])
        if self._clock_start is None:
            self._clock_start = time.monotonic()
            self._first_timestamp = timestamp
        return self._clock_start + (timestamp - self._first_timestamp) / 1000.0 / self.speed


class JsonLinesSink:
    """Append each item as one JSON line to a file, and fsync on :meth:`flush`.

    Parameters
    ----------
    path
        Output file; parent directories are created. A path that is not a regular file, such
        as ``/dev/null`` or a named pipe, is written without fsync, because fsync on a
        character device or a pipe fails with EINVAL.
    append
        Keep existing lines (True) or truncate the file first (False).
    """

    def __init__(self, path: str | Path, append: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and (self.path.is_file() or not self.path.exists()):
            _terminate_partial_line(self.path)
        self._file: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8")
        self._fsync = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)

    def send(self, items: list[dict]) -> None:
        for item in items:
            self._file.write(json.dumps(item, sort_keys=True) + "\n")

    def flush(self) -> None:
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


def _terminate_partial_line(path: Path) -> None:
    """End a last line that a killed writer left unfinished, so that the next line stays intact.

    The partial line itself stays invalid JSON. Its items were not flushed, so the stream
    runner sends them again after the restart.
    """
    try:
        with open(path, "rb+") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() == 0:
                return
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")
                logger.warning("ended a partial last line in %s, left by an earlier crash", path)
    except FileNotFoundError:
        return


class StdoutSink:
    """Print each item as one JSON line on standard output."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def send(self, items: list[dict]) -> None:
        for item in items:
            self.stream.write(json.dumps(item, sort_keys=True) + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()


class ScoresCsvWriter:
    """Write scored points as CSV: ``timestamp, series, score, threshold, anomaly_probability, is_alert``."""

    columns = ("timestamp", "series", "score", "threshold", "anomaly_probability", "is_alert")

    def __init__(self, path: str | Path, has_clock: bool) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.has_clock = has_clock
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.columns)

    def write(self, points) -> None:
        for point in points:
            self._writer.writerow(
                (
                    format_timestamp(point.timestamp, self.has_clock),
                    point.series,
                    f"{point.score:.6f}",
                    f"{point.threshold:.6f}",
                    f"{point.anomaly_probability:.6f}",
                    int(point.is_alert),
                )
            )

    def close(self) -> None:
        self._file.close()

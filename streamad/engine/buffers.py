"""Per-series window buffers kept in arrays, one row per series."""

from __future__ import annotations

import numpy as np

NO_TIMESTAMP = np.iinfo(np.int64).min


class SeriesBuffers:
    """Ring buffers of the last ``window`` scaled points of every series, with the gap policy.

    Row ``s`` of each array belongs to one series. The rows grow by doubling, so adding a
    series is amortised O(1), and the state of 100k series is a few arrays rather than
    100k Python objects.

    Gap policy: a NaN value is replaced by the channel's last value while the channel's
    run of NaN is at most ``max_fill`` steps long. A longer run makes the point invalid,
    and every window that contains an invalid point is skipped and counted instead of
    being scored.

    Parameters
    ----------
    window
        Window length ``L``.
    channels
        Number of channels ``C``.
    stride
        A window is formed each time ``stride`` new points have arrived, once ``L`` are there.
    max_fill
        Longest run of NaN per channel that is forward-filled.
    """

    def __init__(self, window: int, channels: int, stride: int = 1, max_fill: int = 0, capacity: int = 16) -> None:
        self.window = window
        self.channels = channels
        self.stride = stride
        self.max_fill = max_fill
        self.slots: dict[str, int] = {}
        self.series_ids: list[str] = []
        self._allocate(capacity)

    # Names of the per-row arrays, in the order of their allocation.
    STATE_ARRAYS = ("values", "seen", "last_timestamp", "last_value", "nan_run", "last_invalid")

    def _allocate(self, capacity: int) -> None:
        self.values = np.zeros((capacity, self.window, self.channels), dtype=np.float32)
        self.seen = np.zeros(capacity, dtype=np.int64)
        self.last_timestamp = np.full(capacity, NO_TIMESTAMP, dtype=np.int64)
        self.last_value = np.full((capacity, self.channels), np.nan, dtype=np.float32)
        self.nan_run = np.zeros((capacity, self.channels), dtype=np.int64)
        self.last_invalid = np.full(capacity, -1, dtype=np.int64)

    def _grow(self) -> None:
        old = (self.values, self.seen, self.last_timestamp, self.last_value, self.nan_run, self.last_invalid)
        self._allocate(2 * len(self.seen))
        for new, previous in zip(
            (self.values, self.seen, self.last_timestamp, self.last_value, self.nan_run, self.last_invalid), old
        ):
            new[: len(previous)] = previous

    def slot(self, series: str) -> int:
        """Return the row of ``series``, adding a row for a new series."""
        slot = self.slots.get(series)
        if slot is None:
            slot = len(self.series_ids)
            if slot == len(self.seen):
                self._grow()
            self.slots[series] = slot
            self.series_ids.append(series)
        return slot

    def push(self, slot: int, timestamp: int, scaled: np.ndarray) -> bool:
        """Append one scaled point to row ``slot``; return True when it completes a window to score.

        The caller has checked that ``timestamp`` is after the row's last timestamp.
        """
        missing = np.isnan(scaled)
        self.nan_run[slot] = np.where(missing, self.nan_run[slot] + 1, 0)
        filled = np.where(missing, self.last_value[slot], scaled)
        index = self.seen[slot]
        if np.any(self.nan_run[slot] > self.max_fill) or np.any(np.isnan(filled)):
            self.last_invalid[slot] = index
        else:
            self.last_value[slot] = filled

        self.values[slot, index % self.window] = filled
        self.seen[slot] = index + 1
        self.last_timestamp[slot] = timestamp

        count = index + 1
        return count >= self.window and (count - self.window) % self.stride == 0

    def window_is_valid(self, slot: int) -> bool:
        """Return False if the newest window of row ``slot`` contains an invalid point."""
        first_index = self.seen[slot] - self.window
        return self.last_invalid[slot] < first_index

    def window_of(self, slot: int) -> np.ndarray:
        """Return the newest window of row ``slot`` in time order, shape ``(L, C)``."""
        order = (self.seen[slot] + np.arange(self.window)) % self.window
        return self.values[slot, order]

    def export_rows(self, slots: list[int]) -> dict[str, np.ndarray]:
        """Return copies of the rows ``slots`` of every state array, keyed by array name."""
        return {name: getattr(self, name)[slots].copy() for name in self.STATE_ARRAYS}

    def import_rows(self, slots: list[int], arrays: dict[str, np.ndarray]) -> None:
        """Overwrite the rows ``slots`` with arrays from :meth:`export_rows`.

        Raises ValueError when an array's shape does not fit, e.g. a checkpoint written
        for another window length or channel count.
        """
        for name in self.STATE_ARRAYS:
            target = getattr(self, name)
            source = arrays[name]
            expected = (len(slots),) + target.shape[1:]
            if source.shape != expected:
                raise ValueError(f"buffer state {name!r} has shape {source.shape}, expected {expected}")
            target[slots] = source

    def reset_rows(self, slots: list[int]) -> None:
        """Return the rows ``slots`` to the state of a series that has no point yet."""
        self.values[slots] = 0.0
        self.seen[slots] = 0
        self.last_timestamp[slots] = NO_TIMESTAMP
        self.last_value[slots] = np.nan
        self.nan_run[slots] = 0
        self.last_invalid[slots] = -1

"""Group consecutive alerting points of a series into incidents with stable ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from streamad.engine.buffers import NO_TIMESTAMP


def alert_id_for(series: str, start: int, model_version: str, score_name: str) -> str:
    """Return the incident id: the first 16 hex digits of SHA-256 of (series, start, model version, score).

    The id is a pure function of its inputs, so re-processing the same data with the same
    model and score after a crash or a replay yields the same ids, and consumers can
    deduplicate. The score name keeps apart two detectors of one series and model that
    use different scores. Labels are not part of the id.
    """
    key = f"{series}\x1f{start}\x1f{model_version}\x1f{score_name}".encode()
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass
class IncidentEvent:
    """One lifecycle event of an incident: ``firing``, ``update`` or ``resolved``."""

    alert_id: str
    sequence: int
    status: str
    series: str
    start: int
    end: int | None
    timestamp: int
    score: float
    peak_score: float
    threshold: float
    anomaly_probability: float
    slot: int


class IncidentTracker:
    """Open, update and resolve incidents from the per-point alert decisions.

    An incident opens at a series' first alerting point (``firing``). While it is open, an
    ``update`` reports a peak score that has risen since the last event, at most once per
    update period. It resolves once the score has stayed below the threshold for the
    resolve period; its ``end`` is the last alerting point. State is kept in arrays indexed
    by the series' buffer row.

    The periods are counted in scored windows (``update_every``, ``resolve_after``) or,
    when ``has_clock`` is True and a time setting is given, in the series' own time
    (``update_interval_s``, ``resolve_after_s``), measured between record timestamps in
    epoch milliseconds. Step-indexed series (``has_clock`` False) always use the counts.

    Parameters
    ----------
    model_version
        Version of the bundle that scores the data; part of every ``alert_id``.
    score_name
        Name of the anomaly score (``--score``); part of every ``alert_id``.
    resolve_after
        Consecutive non-alerting scored windows that close an incident (hysteresis).
    update_every
        Alerting windows between two ``update`` events of one incident.
    capacity
        Initial number of series rows; the arrays grow as needed.
    resolve_after_s
        When set, an incident resolves at its first non-alerting point that is at least
        this many seconds after its last alerting point, and ``resolve_after`` is unused.
    update_interval_s
        When set, an ``update`` needs at least this many seconds since the incident's last
        event, and ``update_every`` is unused.
    has_clock
        True when timestamps are epoch milliseconds; False for step indexes, which ignore
        the time settings.
    """

    def __init__(
        self,
        model_version: str,
        resolve_after: int = 3,
        update_every: int = 10,
        capacity: int = 16,
        *,
        resolve_after_s: float | None = None,
        update_interval_s: float | None = None,
        has_clock: bool = True,
        score_name: str = "likelihood",
    ) -> None:
        if resolve_after < 1:
            raise ValueError(f"resolve_after={resolve_after!r} (--resolve-after) is invalid; use a count of windows >= 1")
        if update_every < 1:
            raise ValueError(f"update_every={update_every!r} (--update-every) is invalid; use a count of windows >= 1")
        if resolve_after_s is not None and not resolve_after_s >= 0:
            raise ValueError(f"resolve_after_s={resolve_after_s!r} (--resolve-after-s) is invalid; use seconds >= 0")
        if update_interval_s is not None and not update_interval_s >= 0:
            raise ValueError(f"update_interval_s={update_interval_s!r} (--update-interval-s) is invalid; use seconds >= 0")
        self.model_version = model_version
        self.score_name = score_name
        self.resolve_after = resolve_after
        self.update_every = update_every
        self.has_clock = has_clock
        # Periods in timestamp units (milliseconds), or None to count windows.
        self.resolve_after_ms = _milliseconds(resolve_after_s) if has_clock else None
        self.update_interval_ms = _milliseconds(update_interval_s) if has_clock else None
        self._allocate(capacity)
        self.alert_ids: dict[int, str] = {}

    # Names of the per-row arrays; ``alert_ids`` contains the ids of the open incidents.
    STATE_ARRAYS = (
        "start", "last_alert", "peak", "reported_peak", "sequence", "quiet", "alerts_since_event", "last_event",
    )
    # Arrays added after the first checkpoint format, with the value a row gets when a
    # checkpoint written before them is restored.
    _ADDED_ARRAYS = {"last_event": NO_TIMESTAMP}

    def _allocate(self, capacity: int) -> None:
        self.start = np.full(capacity, NO_TIMESTAMP, dtype=np.int64)
        self.last_alert = np.full(capacity, NO_TIMESTAMP, dtype=np.int64)
        self.peak = np.full(capacity, -np.inf)
        self.reported_peak = np.full(capacity, -np.inf)
        self.sequence = np.zeros(capacity, dtype=np.int64)
        self.quiet = np.zeros(capacity, dtype=np.int64)
        self.alerts_since_event = np.zeros(capacity, dtype=np.int64)
        # Timestamp of the open incident's last event, for the update period.
        self.last_event = np.full(capacity, NO_TIMESTAMP, dtype=np.int64)

    def _ensure(self, slot: int) -> None:
        capacity = len(self.start)
        if slot < capacity:
            return
        old = [getattr(self, name) for name in self.STATE_ARRAYS]
        self._allocate(max(2 * capacity, slot + 1))
        for name, source in zip(self.STATE_ARRAYS, old):
            getattr(self, name)[:capacity] = source

    def export_rows(self, slots: list[int]) -> tuple[dict[str, np.ndarray], list[str | None]]:
        """Return copies of the rows ``slots`` and the alert id of each row's open incident, or None."""
        if slots:
            self._ensure(max(slots))
        arrays = {name: getattr(self, name)[slots].copy() for name in self.STATE_ARRAYS}
        return arrays, [self.alert_ids.get(slot) for slot in slots]

    def import_rows(self, slots: list[int], arrays: dict[str, np.ndarray], alert_ids: list[str | None]) -> None:
        """Overwrite the rows ``slots`` with the output of :meth:`export_rows`.

        An array listed in ``_ADDED_ARRAYS`` that ``arrays`` lacks, as in a checkpoint from
        an earlier version, gets its default value.
        """
        if slots:
            self._ensure(max(slots))
        for name in self.STATE_ARRAYS:
            source = arrays.get(name)
            if source is None and name in self._ADDED_ARRAYS:
                source = np.full(len(slots), self._ADDED_ARRAYS[name], dtype=getattr(self, name).dtype)
            if source is None:
                raise ValueError(f"incident state {name!r} is missing; delete the checkpoint to start afresh")
            if source.shape != (len(slots),):
                raise ValueError(f"incident state {name!r} has shape {source.shape}, expected {(len(slots),)}")
            getattr(self, name)[slots] = source
        for slot, alert_id in zip(slots, alert_ids):
            if alert_id is None:
                self.alert_ids.pop(slot, None)
            else:
                self.alert_ids[slot] = alert_id

    def reset_rows(self, slots: list[int]) -> None:
        """Close the rows ``slots`` without an event, as for a series that was never seen."""
        if slots:
            self._ensure(max(slots))
        self.start[slots] = NO_TIMESTAMP
        self.last_alert[slots] = NO_TIMESTAMP
        self.peak[slots] = -np.inf
        self.reported_peak[slots] = -np.inf
        self.sequence[slots] = 0
        self.quiet[slots] = 0
        self.alerts_since_event[slots] = 0
        self.last_event[slots] = NO_TIMESTAMP
        for slot in slots:
            self.alert_ids.pop(slot, None)

    def is_open(self, slot: int) -> bool:
        return slot < len(self.start) and self.start[slot] != NO_TIMESTAMP

    def observe(
        self,
        slot: int,
        series: str,
        timestamp: int,
        score: float,
        threshold: float,
        probability: float,
        is_alert: bool,
    ) -> IncidentEvent | None:
        """Feed one scored point of a series; return the event it causes, if any."""
        self._ensure(slot)
        if is_alert:
            self.quiet[slot] = 0
            self.last_alert[slot] = timestamp
            if self.start[slot] == NO_TIMESTAMP:
                self.start[slot] = timestamp
                self.peak[slot] = score
                self.reported_peak[slot] = score
                self.sequence[slot] = 1
                self.alerts_since_event[slot] = 0
                self.last_event[slot] = timestamp
                self.alert_ids[slot] = alert_id_for(series, timestamp, self.model_version, self.score_name)
                return self._event(slot, series, "firing", timestamp, score, threshold, probability, end=None)

            self.peak[slot] = max(self.peak[slot], score)
            self.alerts_since_event[slot] += 1
            if self.peak[slot] > self.reported_peak[slot] and self._update_due(slot, timestamp):
                self.sequence[slot] += 1
                self.alerts_since_event[slot] = 0
                self.last_event[slot] = timestamp
                self.reported_peak[slot] = self.peak[slot]
                return self._event(slot, series, "update", timestamp, score, threshold, probability, end=None)
            return None

        if self.start[slot] == NO_TIMESTAMP:
            return None
        self.quiet[slot] += 1
        if not self._resolve_due(slot, timestamp):
            return None
        self.sequence[slot] += 1
        event = self._event(slot, series, "resolved", timestamp, score, threshold, probability, end=int(self.last_alert[slot]))
        self.start[slot] = NO_TIMESTAMP
        self.peak[slot] = -np.inf
        self.last_event[slot] = NO_TIMESTAMP
        del self.alert_ids[slot]
        return event

    def _update_due(self, slot: int, timestamp: int) -> bool:
        if self.update_interval_ms is None:
            return self.alerts_since_event[slot] >= self.update_every
        last_event = self.last_event[slot]
        # A row restored from a checkpoint without ``last_event`` may update at once.
        return last_event == NO_TIMESTAMP or timestamp - last_event >= self.update_interval_ms

    def _resolve_due(self, slot: int, timestamp: int) -> bool:
        if self.resolve_after_ms is None:
            return self.quiet[slot] >= self.resolve_after
        return timestamp - self.last_alert[slot] >= self.resolve_after_ms

    def _event(self, slot, series, status, timestamp, score, threshold, probability, end) -> IncidentEvent:
        return IncidentEvent(
            alert_id=self.alert_ids[slot],
            sequence=int(self.sequence[slot]),
            status=status,
            series=series,
            start=int(self.start[slot]),
            end=end,
            timestamp=int(timestamp),
            score=float(score),
            peak_score=float(self.peak[slot]),
            threshold=float(threshold),
            anomaly_probability=float(probability),
            slot=slot,
        )


def _milliseconds(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000.0))

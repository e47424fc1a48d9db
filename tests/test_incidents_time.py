"""Incident lifecycle with periods in the series' own time, and its checkpointed state."""

import numpy as np
import pytest

from streamad.engine.buffers import NO_TIMESTAMP
from streamad.engine.incidents import IncidentTracker

MINUTE = 60_000


def _feed(tracker, points, slot=0):
    """Feed (timestamp, score, is_alert) points; return the events as (status, timestamp, peak, end)."""
    events = []
    for timestamp, score, is_alert in points:
        event = tracker.observe(slot, "s", timestamp, score, 1.0, 0.5, is_alert)
        if event is not None:
            events.append((event.status, event.timestamp, event.peak_score, event.end))
    return events


def test_resolve_after_seconds_since_last_alert():
    tracker = IncidentTracker("v1", resolve_after=1, resolve_after_s=600)
    # Alerts at minutes 0 and 1, then quiet points every 4 minutes.
    points = [(0, 5.0, True), (MINUTE, 6.0, True)] + [(MINUTE + k * 4 * MINUTE, 0.0, False) for k in range(1, 5)]
    events = _feed(tracker, points)
    assert [event[0] for event in events] == ["firing", "resolved"]
    # 9 minutes after the last alert is not enough; 13 minutes is.
    assert events[1][1] == 13 * MINUTE
    assert events[1][3] == MINUTE


def test_resolve_period_restarts_on_new_alert():
    tracker = IncidentTracker("v1", resolve_after_s=300)
    points = [(0, 5.0, True), (4 * MINUTE, 0.0, False), (5 * MINUTE, 5.0, True), (9 * MINUTE, 0.0, False), (10 * MINUTE, 0.0, False)]
    events = _feed(tracker, points)
    assert [event[0] for event in events] == ["firing", "resolved"]
    assert events[1][1] == 10 * MINUTE
    assert events[1][3] == 5 * MINUTE


def test_update_at_most_every_interval_with_peak():
    tracker = IncidentTracker("v1", update_every=1, update_interval_s=300)
    # The score rises every minute for 12 minutes.
    points = [(k * MINUTE, 10.0 + k, True) for k in range(13)]
    events = _feed(tracker, points)
    assert [event[0] for event in events] == ["firing", "update", "update"]
    assert [event[1] for event in events] == [0, 5 * MINUTE, 10 * MINUTE]
    assert events[2][2] == 20.0


def test_update_needs_risen_peak():
    tracker = IncidentTracker("v1", update_interval_s=60)
    points = [(0, 10.0, True)] + [(k * MINUTE, 9.0, True) for k in range(1, 10)]
    events = _feed(tracker, points)
    assert [event[0] for event in events] == ["firing"]


def test_update_reports_peak_reached_between_events():
    tracker = IncidentTracker("v1", update_interval_s=300)
    points = [(0, 10.0, True), (MINUTE, 30.0, True), (2 * MINUTE, 12.0, True), (6 * MINUTE, 11.0, True)]
    events = _feed(tracker, points)
    assert [event[0] for event in events] == ["firing", "update"]
    assert events[1][1] == 6 * MINUTE
    assert events[1][2] == 30.0


def test_step_indexed_series_use_window_counts():
    tracker = IncidentTracker("v1", resolve_after=2, update_every=2, resolve_after_s=3600, update_interval_s=3600, has_clock=False)
    points = [(0, 1.0, True), (1, 2.0, True), (2, 3.0, True), (3, 0.0, False), (4, 0.0, False)]
    events = _feed(tracker, points)
    assert [event[0] for event in events] == ["firing", "update", "resolved"]
    assert tracker.resolve_after_ms is None
    assert tracker.update_interval_ms is None


def test_time_settings_reject_negative():
    with pytest.raises(ValueError, match="resolve-after-s"):
        IncidentTracker("v1", resolve_after_s=-1)
    with pytest.raises(ValueError, match="update-interval-s"):
        IncidentTracker("v1", update_interval_s=-0.5)


def test_time_state_round_trip_mid_incident():
    points = [(k * MINUTE, 10.0 + k, True) for k in range(4)] + [(k * MINUTE, 0.0, False) for k in range(4, 20)]
    whole = _feed(IncidentTracker("v1", update_interval_s=150, resolve_after_s=420), points)

    first = IncidentTracker("v1", update_interval_s=150, resolve_after_s=420)
    before = _feed(first, points[:3], slot=2)
    arrays, alert_ids = first.export_rows([2])
    second = IncidentTracker("v1", update_interval_s=150, resolve_after_s=420)
    second.import_rows([0], arrays, alert_ids)
    after = _feed(second, points[3:])

    assert [event[0] for event in whole] == ["firing", "update", "resolved"]
    assert before + after == whole


def test_import_without_last_event_array():
    tracker = IncidentTracker("v1", update_interval_s=600)
    _feed(tracker, [(0, 10.0, True)])
    arrays, alert_ids = tracker.export_rows([0])
    del arrays["last_event"]
    restored = IncidentTracker("v1", update_interval_s=600)
    restored.import_rows([0], arrays, alert_ids)
    assert restored.last_event[0] == NO_TIMESTAMP
    # With no known last event, the first risen peak updates at once.
    events = _feed(restored, [(MINUTE, 20.0, True)])
    assert [event[0] for event in events] == ["update"]


def test_import_rejects_missing_original_array():
    tracker = IncidentTracker("v1")
    arrays, alert_ids = tracker.export_rows([0])
    del arrays["peak"]
    with pytest.raises(ValueError, match="'peak' is missing"):
        IncidentTracker("v1").import_rows([0], arrays, alert_ids)


def test_rows_grow_keep_time_state():
    tracker = IncidentTracker("v1", capacity=1, update_interval_s=60)
    _feed(tracker, [(0, 10.0, True)], slot=0)
    _feed(tracker, [(0, 10.0, True)], slot=5)
    assert tracker.last_event[0] == 0
    assert np.all(tracker.last_event[1:5] == NO_TIMESTAMP)

"""Window buffers and incident grouping of the engine."""

import numpy as np
import pytest

from streamad.engine.buffers import SeriesBuffers
from streamad.engine.incidents import IncidentTracker, alert_id_for


def test_buffers_emit_windows_at_stride():
    buffers = SeriesBuffers(window=3, channels=1, stride=2)
    slot = buffers.slot("a")
    ready = [buffers.push(slot, t, np.array([float(t)])) for t in range(8)]
    assert ready == [False, False, True, False, True, False, True, False]


def test_buffers_return_window_in_time_order():
    buffers = SeriesBuffers(window=3, channels=2)
    slot = buffers.slot("a")
    for t in range(5):
        buffers.push(slot, t, np.array([t, -t], dtype=float))
    np.testing.assert_array_equal(buffers.window_of(slot), [[2, -2], [3, -3], [4, -4]])


def test_buffers_grow_beyond_capacity():
    buffers = SeriesBuffers(window=2, channels=1, capacity=2)
    for i in range(50):
        slot = buffers.slot(f"series-{i}")
        buffers.push(slot, 0, np.array([float(i)]))
        buffers.push(slot, 1, np.array([float(i) + 0.5]))
    np.testing.assert_array_equal(buffers.window_of(buffers.slots["series-7"]), [[7.0], [7.5]])
    assert len(buffers.seen) >= 50


def test_buffers_fill_short_gap():
    buffers = SeriesBuffers(window=3, channels=1, max_fill=1)
    slot = buffers.slot("a")
    for t, value in enumerate([1.0, np.nan, 3.0]):
        buffers.push(slot, t, np.array([value]))
    assert buffers.window_is_valid(slot)
    np.testing.assert_array_equal(buffers.window_of(slot)[:, 0], [1.0, 1.0, 3.0])


def test_buffers_skip_windows_with_long_gap():
    buffers = SeriesBuffers(window=3, channels=1, max_fill=1)
    slot = buffers.slot("a")
    valid = []
    for t, value in enumerate([1.0, np.nan, np.nan, 4.0, 5.0, 6.0, 7.0]):
        if buffers.push(slot, t, np.array([value])):
            valid.append(buffers.window_is_valid(slot))
    # Point 2 is the second NaN in a row, beyond max_fill=1: windows ending at 2, 3, 4 contain it.
    assert valid == [False, False, False, True, True]


def test_buffers_leading_nan_is_invalid():
    buffers = SeriesBuffers(window=1, channels=1, max_fill=5)
    slot = buffers.slot("a")
    buffers.push(slot, 0, np.array([np.nan]))
    assert not buffers.window_is_valid(slot)


def test_alert_id_is_deterministic():
    base = alert_id_for("s", 10, "v1", "likelihood")
    assert base == alert_id_for("s", 10, "v1", "likelihood")
    assert base != alert_id_for("s", 11, "v1", "likelihood")
    assert base != alert_id_for("s", 10, "v2", "likelihood")
    assert base != alert_id_for("t", 10, "v1", "likelihood")
    assert base != alert_id_for("s", 10, "v1", "importance")


def _feed(tracker, flags, scores=None):
    events = []
    for t, flag in enumerate(flags):
        if scores is not None:
            score = scores[t]
        elif flag:
            score = 10.0
        else:
            score = 0.0
        event = tracker.observe(0, "s", t, score, 1.0, 0.5, flag)
        if event is not None:
            events.append(event)
    return events


def test_incident_opens_and_resolves_after_hysteresis():
    tracker = IncidentTracker("v1", resolve_after=2)
    events = _feed(tracker, [False, True, True, False, True, False, False, False])
    assert [event.status for event in events] == ["firing", "resolved"]
    assert events[0].start == 1
    assert events[1].end == 4
    assert events[1].alert_id == events[0].alert_id == alert_id_for("s", 1, "v1", "likelihood")
    assert [event.sequence for event in events] == [1, 2]


def test_incident_updates_when_peak_rises():
    tracker = IncidentTracker("v1", resolve_after=1, update_every=2)
    scores = [5.0, 6.0, 7.0, 7.0, 7.0, 0.0]
    events = _feed(tracker, [True] * 5 + [False], scores)
    assert [event.status for event in events] == ["firing", "update", "resolved"]
    assert events[1].peak_score == 7.0
    assert [event.sequence for event in events] == [1, 2, 3]


def test_incident_new_incident_gets_new_id():
    tracker = IncidentTracker("v1", resolve_after=1)
    events = _feed(tracker, [True, False, True, False])
    ids = [event.alert_id for event in events if event.status == "firing"]
    assert len(ids) == 2
    assert ids[0] != ids[1]


def test_alert_id_depends_on_score_name():
    ids = {}
    for score_name in ("likelihood", "importance"):
        tracker = IncidentTracker("v1", resolve_after=1, score_name=score_name)
        ids[score_name] = _feed(tracker, [True])[0].alert_id
    assert ids["likelihood"] != ids["importance"]
    assert ids["importance"] == alert_id_for("s", 0, "v1", "importance")


def test_restored_incident_keeps_stored_alert_id():
    tracker = IncidentTracker("v1", resolve_after=1, score_name="likelihood")
    firing = _feed(tracker, [True])[0]
    arrays, alert_ids = tracker.export_rows([0])
    restored = IncidentTracker("v1", resolve_after=1, score_name="importance")
    restored.import_rows([0], arrays, alert_ids)
    events = _feed(restored, [False])
    assert [event.status for event in events] == ["resolved"]
    assert events[0].alert_id == firing.alert_id


def test_incident_rejects_invalid_counts():
    with pytest.raises(ValueError, match="resolve_after=0"):
        IncidentTracker("v1", resolve_after=0)

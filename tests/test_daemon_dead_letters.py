"""Bad records mixed into a good Kafka stream go to the dead letters and leave the good results unchanged."""

import base64
import copy
import json

import numpy as np
import pytest

from daemon_support import EventCollector
from streamad.engine import EngineConfig, StreamEngine, run_stream
from streamad.records import Record, encode_record
from streamad.replay import replay_series

pytestmark = pytest.mark.kafka

SERIES = "machine"
STREAM_ROWS = slice(3400, 4400)
MAX_RECORD_BYTES = 10_000
# Each bad record is inserted after the good record at index FIRST_BAD + SPACING * k.
FIRST_BAD = 60
SPACING = 40


def _bad_records(timestamps):
    """Return ``(name, payload, reason)`` rows; ``timestamps`` are those of the good records before each one."""
    previous = int(timestamps[-1])
    return [
        ("invalid JSON", b"{not json", "invalid_json"),
        ("empty value (tombstone)", b"", "invalid_json"),
        ("not UTF-8", b"\xff\xfe\x00", "invalid_utf8"),
        ("JSON array", b"[1, 2]", "not_object"),
        ("JSON null", b"null", "not_object"),
        ("missing series", b'{"timestamp": 1, "values": [1.0]}', "missing_field"),
        ("missing timestamp", b'{"series": "machine", "values": [1.0]}', "missing_field"),
        ("missing values", b'{"series": "machine", "timestamp": 1}', "missing_field"),
        ("series is a number", b'{"series": 5, "timestamp": 1, "values": [1.0]}', "bad_type"),
        ("empty series", b'{"series": " ", "timestamp": 1, "values": [1.0]}', "bad_series"),
        ("timestamp text", b'{"series": "machine", "timestamp": "yesterday", "values": [1.0]}', "bad_timestamp"),
        ("timestamp boolean", b'{"series": "machine", "timestamp": true, "values": [1.0]}', "bad_type"),
        ("timestamp beyond year 9999", b'{"series": "machine", "timestamp": 99999999999999999999, "values": [1.0]}', "bad_timestamp"),
        ("NaN value", b'{"series": "machine", "timestamp": 1, "values": [NaN]}', "non_finite"),
        ("infinite value", b'{"series": "machine", "timestamp": 1, "values": [1e400]}', "non_finite"),
        ("empty values", b'{"series": "machine", "timestamp": 1, "values": []}', "empty_values"),
        ("value is text", b'{"series": "machine", "timestamp": 1, "values": ["x"]}', "bad_type"),
        ("value and values", b'{"series": "machine", "timestamp": 1, "value": 1.0, "values": [1.0]}', "conflicting_fields"),
        ("duplicate key", b'{"series": "machine", "series": "other", "timestamp": 1, "values": [1.0]}', "duplicate_field"),
        ("oversized", json.dumps({"series": SERIES, "timestamp": 1, "values": [1.0], "pad": "x" * MAX_RECORD_BYTES}).encode(), "too_large"),
        ("two channels for a one-channel model", _payload(previous + 1, [1.0, 2.0]), "wrong_channel_count"),
        ("repeated timestamp", _payload(previous, [50.0]), "duplicate_timestamp"),
        ("timestamp going back", _payload(previous - 3_600_000, [50.0]), "timestamp_not_increasing"),
    ]


def _payload(timestamp, values):
    return json.dumps({"series": SERIES, "timestamp": int(timestamp), "values": values}).encode()


@pytest.fixture(scope="module")
def bundle(small_machine_bundle):
    # The session's 3-epoch model, trained on the rows before STREAM_ROWS: the test compares
    # two runs of one model, so its quality does not matter. The copy keeps the shared one unchanged.
    return copy.deepcopy(small_machine_bundle)


def test_bad_records_go_to_dead_letters(kafka_bootstrap, new_topic, group_id, make_source, bundle, machine_temperature):
    from connectors.kafka import produce_records

    stream = machine_temperature.slice(STREAM_ROWS.start, STREAM_ROWS.stop)
    stream.series_id = SERIES
    good = [Record(SERIES, int(stream.timestamps[i]), stream.values[i]) for i in range(len(stream))]

    # Build the mixed stream, noting where each bad record lands.
    payloads = []
    expected_dead = []
    bad_table = None
    bad_index = 0
    for index, record in enumerate(good):
        payloads.append(record)
        if index < FIRST_BAD or (index - FIRST_BAD) % SPACING != 0:
            continue
        bad_table = _bad_records(stream.timestamps[: index + 1])
        if bad_index < len(bad_table):
            name, payload, reason = bad_table[bad_index]
            expected_dead.append((len(payloads), name, payload, reason))
            payloads.append(payload)
            bad_index += 1
    assert bad_index == len(bad_table), "the good stream is too short for the bad-record table"
    assert len({reason for _, _, _, reason in expected_dead}) >= 15

    topic = new_topic(1, prefix="dead")
    produce_records(kafka_bootstrap, topic, payloads)

    source = make_source([topic], group_id, max_record_bytes=MAX_RECORD_BYTES)
    engine = StreamEngine(bundle, EngineConfig())
    events, dead_letters, points = EventCollector(), EventCollector(), []
    consumed = []

    class CountingSource:
        def poll(self):
            messages = source.poll()
            consumed.extend(messages)
            return messages

        def commit(self, messages):
            source.commit(messages)

    stats = run_stream(
        engine, CountingSource(), [events], dead_letter_sinks=[dead_letters],
        on_points=points.extend, until=lambda: len(consumed) >= len(payloads),
    )

    clean_events, clean_points = EventCollector(), []
    replay_series(StreamEngine(bundle, EngineConfig()), [stream], alert_sinks=[clean_events], on_points=clean_points.extend)

    assert any(event["status"] == "firing" for event in clean_events.items)
    assert stats.messages == len(payloads)
    received = [(entry["offset"], entry["reason"]) for entry in dead_letters.items]
    assert received == [(offset, reason) for offset, _, _, reason in expected_dead]
    for entry, (_, name, payload, _) in zip(dead_letters.items, expected_dead):
        assert base64.b64decode(entry["raw_base64"]) == payload, name
        assert entry["topic"] == topic, name
        assert entry["message"], name
    assert sum(stats.dead_letters.values()) == len(expected_dead)

    assert [(point.series, point.timestamp) for point in points] == [(point.series, point.timestamp) for point in clean_points]
    np.testing.assert_allclose([point.score for point in points], [point.score for point in clean_points], rtol=1e-5)
    assert [point.is_alert for point in points] == [point.is_alert for point in clean_points]
    assert [(e["alert_id"], e["sequence"], e["status"]) for e in events.items] == [
        (e["alert_id"], e["sequence"], e["status"]) for e in clean_events.items
    ]

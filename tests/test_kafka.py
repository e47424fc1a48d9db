"""Tests of the Kafka source and sinks against a real broker (Tansu, or STREAMAD_KAFKA_BOOTSTRAP).

The end of a stream is detected from the offsets that the producer got acknowledged, because
Tansu 0.6 returns the last batch's base offset from end_offsets().
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import numpy as np
import pytest
from conftest import JOIN_TIMEOUT_S, TEST_REQUEST_TIMEOUT_MS
from kafka import KafkaConsumer, TopicPartition

from connectors.kafka import (
    KafkaAlertSink,
    KafkaDeadLetterSink,
    KafkaSource,
    SourceMessage,
    create_topic,
    produce_records,
)
from streamad.records import Record, encode_record

pytestmark = pytest.mark.kafka


def _records(series_count: int, per_series: int, channels: int = 2) -> list[Record]:
    records = []
    for step in range(per_series):
        for series_index in range(series_count):
            values = [series_index + step * 0.5 + channel for channel in range(channels)]
            records.append(Record(f"series-{series_index}", 1_714_564_800_000 + step * 1000, values))
    return records


def _last_offsets(positions: list[tuple[int, int]], topic: str) -> dict[tuple[str, int], int]:
    last: dict[tuple[str, int], int] = {}
    for partition, offset in positions:
        last[(topic, partition)] = max(last.get((topic, partition), -1), offset)
    return last


def _consume_until(source: KafkaSource, last_offsets: dict[tuple[str, int], int]) -> list[SourceMessage]:
    """Poll until every partition in ``last_offsets`` has delivered its last acknowledged offset."""
    messages: list[SourceMessage] = []
    seen: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while any(seen.get(partition_id, -1) < offset for partition_id, offset in last_offsets.items()):
        assert time.monotonic() < deadline, f"timed out: read up to {seen}, expected {last_offsets}"
        for message in source.poll():
            messages.append(message)
            partition_id = (message.topic, message.partition)
            seen[partition_id] = max(seen.get(partition_id, -1), message.offset)
    return messages


def _read_all(bootstrap: str, topic: str, expected_count: int) -> list:
    """Read a topic from the beginning without a consumer group, which skips the group join."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=TEST_REQUEST_TIMEOUT_MS,
    )
    try:
        partitions = [TopicPartition(topic, partition) for partition in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found = []
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while len(found) < expected_count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                found.extend(batch)
        return found
    finally:
        consumer.close(autocommit=False)


def test_source_reads_all_records(kafka_bootstrap, new_topic, group_id, make_source):
    topic = new_topic(partitions=3)
    records = _records(series_count=4, per_series=15)
    positions = produce_records(kafka_bootstrap, topic, records)
    source = make_source([topic], group_id)

    messages = _consume_until(source, _last_offsets(positions, topic))

    assert len(messages) == len(records)
    assert all(message.error is None for message in messages)
    received = sorted((m.record for m in messages), key=lambda r: (r.series, r.timestamp))
    expected = sorted(records, key=lambda r: (r.series, r.timestamp))
    assert received == expected
    assert source.assignment() == {(topic, 0), (topic, 1), (topic, 2)}


def test_source_keeps_series_order(kafka_bootstrap, new_topic, group_id, make_source):
    topic = new_topic(partitions=3)
    records = _records(series_count=3, per_series=20, channels=1)
    positions = produce_records(kafka_bootstrap, topic, records)
    source = make_source([topic], group_id, max_poll_records=7)

    messages = _consume_until(source, _last_offsets(positions, topic))

    by_series: dict[str, list[int]] = {}
    for message in messages:
        by_series.setdefault(message.record.series, []).append(message.record.timestamp)
    assert set(by_series) == {"series-0", "series-1", "series-2"}
    for timestamps in by_series.values():
        assert timestamps == sorted(timestamps)
        assert len(timestamps) == 20
    partitions_of_series = {(m.record.series, m.partition) for m in messages}
    assert len(partitions_of_series) == 3  # keyed by series, so one partition per series


def test_invalid_record_does_not_stop_stream(kafka_bootstrap, new_topic, group_id, make_source):
    topic = new_topic(partitions=1)
    good_before = Record("pump", 1000, [1.0])
    good_after = Record("pump", 2000, [2.0])
    payloads = [good_before, b"{not json", b'{"series": "pump", "timestamp": 1500, "values": [NaN]}', b"\xff", good_after]
    positions = produce_records(kafka_bootstrap, topic, payloads)
    source = make_source([topic], group_id)

    messages = _consume_until(source, _last_offsets(positions, topic))

    assert [m.offset for m in messages] == [offset for _, offset in positions]
    assert messages[0].record == good_before
    assert messages[4].record == good_after
    assert [m.error.reason for m in messages[1:4]] == ["invalid_json", "non_finite", "invalid_utf8"]
    assert all(m.record is None for m in messages[1:4])
    assert messages[1].raw == b"{not json"
    assert source.invalid_count == 3


def test_dead_letter_round_trip(kafka_bootstrap, new_topic, group_id, make_source):
    source_topic = new_topic(partitions=1)
    dead_letter_topic = new_topic(partitions=1, prefix="dead-letter")
    positions = produce_records(kafka_bootstrap, source_topic, [b'{"series": ""}', Record("s", 0, [1.0])])
    source = make_source([source_topic], group_id)
    messages = _consume_until(source, _last_offsets(positions, source_topic))
    invalid = [m for m in messages if m.error is not None]

    # The stream runner builds entries with the value already base64-encoded.
    runner_entry = {
        "topic": source_topic,
        "partition": 0,
        "offset": positions[1][1],
        "reason": "channel_mismatch",
        "message": "The record has 1 channel, the model expects 2.",
        "raw_base64": base64.b64encode(b"{}").decode("ascii"),
        "key_base64": base64.b64encode(b"s").decode("ascii"),
    }

    with KafkaDeadLetterSink(kafka_bootstrap, dead_letter_topic) as sink:
        sink.send(invalid + [runner_entry])
        acknowledged = sink.flush(timeout=10)

    assert len(acknowledged) == 2
    found = _read_all(kafka_bootstrap, dead_letter_topic, expected_count=2)
    assert len(found) == 2
    found.sort(key=lambda message: message.offset)
    assert json.loads(found[1].value) == runner_entry
    assert found[1].key == b"s"
    document = json.loads(found[0].value)
    assert document["topic"] == source_topic
    assert document["partition"] == 0
    assert document["offset"] == positions[0][1]
    assert document["reason"] == "missing_field"
    assert "timestamp" in document["message"]
    assert base64.b64decode(document["raw_base64"]) == b'{"series": ""}'
    assert document["key_base64"] is None


def test_commit_then_new_consumer_resumes(kafka_bootstrap, new_topic, group_id, make_source):
    topic = new_topic(partitions=2)
    first_batch = _records(series_count=2, per_series=10, channels=1)
    first_positions = produce_records(kafka_bootstrap, topic, first_batch)
    first_source = make_source([topic], group_id)
    messages = _consume_until(first_source, _last_offsets(first_positions, topic))
    committed_messages = [m for m in messages if m.offset < 5]
    uncommitted = {(m.topic, m.partition, m.offset) for m in messages if m.offset >= 5}

    committed = first_source.commit(committed_messages)
    first_source.close()

    assert committed == {(topic, partition): 5 for partition, _ in first_positions}
    second_batch = _records(series_count=2, per_series=3, channels=1)
    second_positions = produce_records(kafka_bootstrap, topic, second_batch)
    second_source = make_source([topic], group_id)
    redelivered = _consume_until(second_source, _last_offsets(second_positions, topic))
    redelivered_ids = {(m.topic, m.partition, m.offset) for m in redelivered}
    assert min(m.offset for m in redelivered) == 5
    assert not any(m.offset < 5 for m in redelivered)
    assert uncommitted <= redelivered_ids
    assert len(redelivered) == len(uncommitted) + len(second_batch)


def test_commit_accepts_offset_mapping(kafka_bootstrap, new_topic, group_id, make_source):
    topic = new_topic(partitions=1)
    positions = produce_records(kafka_bootstrap, topic, _records(series_count=1, per_series=6, channels=1))
    source = make_source([topic], group_id)
    _consume_until(source, _last_offsets(positions, topic))

    first = source.commit({(topic, 0): 4})
    older = source.commit({TopicPartition(topic, 0): 2})
    empty = source.commit([])

    assert first == {(topic, 0): 4}
    assert older == {}
    assert empty == {}
    probe = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        assert probe.committed(TopicPartition(topic, 0)) == 4
    finally:
        probe.close(autocommit=False)


def test_lag_from_highwater(kafka_bootstrap, new_topic, group_id, make_source):
    topic = new_topic(partitions=1)
    positions = produce_records(kafka_bootstrap, topic, _records(series_count=1, per_series=30, channels=1))
    assert positions[-1][1] - positions[0][1] == 29
    source = make_source([topic], group_id, max_poll_records=10)
    source.wait_for_assignment(JOIN_TIMEOUT_S)

    first = source.poll()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not first and time.monotonic() < deadline:
        first = source.poll()

    assert 0 < len(first) <= 10
    assert source.lag() == {(topic, 0): 30 - (first[-1].offset + 1 - positions[0][1])}
    _consume_until(source, _last_offsets(positions, topic))
    assert source.lag() == {(topic, 0): 0}


def test_wait_for_assignment_keeps_records(kafka_bootstrap, new_topic, group_id, make_source):
    topic = new_topic(partitions=2)
    records = _records(series_count=2, per_series=5, channels=1)
    positions = produce_records(kafka_bootstrap, topic, records)
    source = make_source([topic], group_id)

    assigned = source.wait_for_assignment(JOIN_TIMEOUT_S)
    lag_before_poll = source.lag()
    messages = _consume_until(source, _last_offsets(positions, topic))

    assert assigned == {(topic, 0), (topic, 1)}
    # Records fetched during the wait count as lag until poll() returns them, so a partition
    # with a known high watermark still shows all of its records.
    for (_, partition), lag in lag_before_poll.items():
        assert lag == sum(1 for produced_partition, _ in positions if produced_partition == partition)
    assert sum(source.lag().values()) == 0
    assert len(messages) == len(records)
    assert len({(m.partition, m.offset) for m in messages}) == len(records)


def test_alert_sink_round_trip(kafka_bootstrap, new_topic):
    topic = new_topic(partitions=2, prefix="alerts")
    events = [
        {"alert_id": "a-1", "series": "pump-7", "score": np.float64(12.5), "window": np.arange(3), "timestamp": 1000},
        {"alert_id": "a-2", "series": "pump-8", "score": 3.25, "timestamp": 2000},
        {"alert_id": "a-3", "score": 1.0, "timestamp": 3000},
    ]

    with KafkaAlertSink(kafka_bootstrap, topic) as sink:
        sink.send(events)
        acknowledged = sink.flush(timeout=10)

    assert len(acknowledged) == 3
    found = _read_all(kafka_bootstrap, topic, expected_count=3)
    by_id = {json.loads(message.value)["alert_id"]: message for message in found}
    assert set(by_id) == {"a-1", "a-2", "a-3"}
    assert json.loads(by_id["a-1"].value) == {
        "alert_id": "a-1",
        "series": "pump-7",
        "score": 12.5,
        "window": [0, 1, 2],
        "timestamp": 1000,
    }
    assert by_id["a-1"].key == b"pump-7"
    assert by_id["a-2"].key == b"pump-8"
    assert by_id["a-3"].key == b"a-3"


def test_alert_sink_rejects_nan(kafka_bootstrap, new_topic):
    topic = new_topic(partitions=1, prefix="alerts")

    with KafkaAlertSink(kafka_bootstrap, topic) as sink:
        with pytest.raises(ValueError, match="alert 1"):
            sink.send([{"series": "a", "score": 1.0}, {"series": "b", "score": float("nan")}])
        acknowledged = sink.flush(timeout=10)

    assert acknowledged == []


def test_flush_without_sends(kafka_bootstrap, new_topic):
    topic = new_topic(partitions=1, prefix="alerts")

    with KafkaAlertSink(kafka_bootstrap, topic) as sink:
        assert sink.flush(timeout=1) == []


def test_create_topic_existing(kafka_bootstrap):
    name = f"test-{uuid.uuid4().hex[:12]}"

    assert create_topic(kafka_bootstrap, name, partitions=2) is True
    assert create_topic(kafka_bootstrap, name, partitions=2) is False


class _SeekOnAssign:
    """A rebalance handler that seeks every assigned partition to one offset, as a checkpoint restore does."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.reset = []

    def on_assigned(self, partitions):
        return {partition: self.offset for partition in partitions}

    def on_revoked(self, partitions):
        return {}

    def on_lost(self, partitions):
        pass

    def on_reset(self, partitions):
        self.reset.extend(partitions)


def test_seek_within_log_is_kept(kafka_bootstrap, new_topic, group_id, make_source):
    topic = new_topic(partitions=1)
    positions = produce_records(kafka_bootstrap, topic, _records(series_count=1, per_series=6, channels=1))
    source = make_source([topic], group_id)
    source.set_rebalance_handler(_SeekOnAssign(positions[3][1]))

    messages = _consume_until(source, _last_offsets(positions, topic))

    assert [message.offset for message in messages] == [offset for _, offset in positions[3:]]


def test_seek_beyond_log_resets_to_earliest(kafka_bootstrap, new_topic, group_id, make_source, caplog):
    # A checkpoint of a topic that was deleted and created again names an offset past the new log's end.
    topic = new_topic(partitions=1)
    positions = produce_records(kafka_bootstrap, topic, _records(series_count=1, per_series=6, channels=1))
    source = make_source([topic], group_id)
    handler = _SeekOnAssign(positions[-1][1] + 50)
    source.set_rebalance_handler(handler)

    with caplog.at_level("WARNING", logger="connectors.kafka"):
        messages = _consume_until(source, _last_offsets(positions, topic))
    committed = source.commit(messages)

    assert [message.offset for message in messages] == [offset for _, offset in positions]
    assert handler.reset == [(topic, 0)]
    assert committed == {(topic, 0): positions[-1][1] + 1}
    warnings = [record.getMessage() for record in caplog.records if "offset beyond the end of the log" in record.getMessage()]
    assert len(warnings) == 1
    assert f"partition={topic}[0]" in warnings[0]
    assert f"offset={positions[-1][1] + 50}" in warnings[0]


def test_source_restarts_recreated_topic(kafka_bootstrap, new_topic, group_id, make_source, caplog):
    from kafka import KafkaAdminClient, KafkaProducer

    from connectors.kafka import create_topic

    topic = new_topic(partitions=1)
    positions = produce_records(kafka_bootstrap, topic, _records(series_count=1, per_series=6, channels=1))
    source = make_source([topic], group_id)
    handler = _SeekOnAssign(0)
    source.set_rebalance_handler(handler)
    _consume_until(source, _last_offsets(positions, topic))

    # While the source runs, the topic is deleted and created again with fewer records.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=TEST_REQUEST_TIMEOUT_MS)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()
    create_topic(kafka_bootstrap, topic, 1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        for record in _records(series_count=1, per_series=3, channels=1):
            producer.send(topic, value=encode_record(record), partition=0).get(timeout=30)
    finally:
        producer.close()

    with caplog.at_level("WARNING", logger="connectors.kafka"):
        messages = _consume_until(source, {(topic, 0): 2})
    committed = source.commit(messages)

    assert [message.offset for message in messages] == [0, 1, 2]
    assert handler.reset == [(topic, 0)]
    assert committed == {(topic, 0): 3}
    replaced = [record.getMessage() for record in caplog.records if "the log was replaced" in record.getMessage()]
    assert len(replaced) == 1
    assert f"partition={topic}[0]" in replaced[0]

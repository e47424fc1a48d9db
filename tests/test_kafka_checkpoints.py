"""Partition checkpoints in a compacted Kafka topic, on a real broker, and a daemon that restarts from them.

The daemon test produces two slices of NAB's machine-temperature file to a 2-partition
topic and runs `streamad run` with only --checkpoint-topic, killing it twice mid-stream. It
checks against an uninterrupted in-process run that every window was scored and that the
incident events are the same.
"""

import json
import logging
import signal
import time
import uuid

import numpy as np
import pytest
from conftest import require_tansu

from daemon_support import (
    committed_offsets, event_set, kill_daemon, machine_slices, replay_windows_and_events, start_streamad_run, wait_for,
)
from streamad.engine import EngineConfig
from streamad.engine.checkpoint import CheckpointStore, decode_checkpoint
from streamad.engine.engine import EngineState
from streamad.records import Record, encode_record

pytestmark = pytest.mark.kafka

# One slice per partition, after the training rows; the first contains NAB's labelled
# anomaly window of 15 to 17 December 2013.
SLICE_ROWS = 2000
SLICE_STARTS = (3400, 4400)
PARTITIONS = len(SLICE_STARTS)
WINDOW = 32
SCORE = "reconstruction"
DAEMON_OPTIONS = [
    "--score", SCORE,
    "--per-series-threshold",
    "--checkpoint-every-records", "100",
    "--checkpoint-interval-s", "1",
    "--max-poll-records", "40",
    "--session-timeout-ms", "6000",
    "--heartbeat-interval-ms", "2000",
    "--max-poll-interval-ms", "10000",
    "--request-timeout-ms", "10000",
]


def _state(offset):
    """An engine state whose arrays depend on ``offset``, so that two checkpoints differ."""
    return EngineState(
        {"series": ["pump-1"], "offset_marker": offset},
        {"buffer": np.arange(offset, offset + 8, dtype=np.float64).reshape(4, 2), "count": np.array([offset])},
    )


def _checkpoint_topic():
    return f"checkpoints-{uuid.uuid4().hex[:12]}"


def _read_messages(bootstrap, topic):
    """Return ``(key, value)`` of every message of partition 0 of ``topic``, read up to its high watermark."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    messages = []
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                messages.extend((record.key, record.value) for record in records)
            highwater = consumer.highwater(tp)
            if highwater is not None and consumer.position(tp) >= highwater:
                return messages
    finally:
        consumer.close()
    pytest.fail(f"topic {topic} was not read to its end within 30 s")


def test_store_round_trip(kafka_bootstrap, tmp_path):
    from connectors.kafka_checkpoints import KafkaCheckpointStore

    topic = _checkpoint_topic()
    writer = KafkaCheckpointStore(kafka_bootstrap, topic, timeout_s=10)
    try:
        metadata = writer.write("metrics", 3, 41, _state(41))
    finally:
        writer.close()
    assert metadata.topic == topic

    reader = KafkaCheckpointStore(kafka_bootstrap, topic, timeout_s=10)
    try:
        checkpoint = reader.read("metrics", 3)
        missing = reader.read("metrics", 4)
    finally:
        reader.close()

    assert missing is None
    assert (checkpoint.topic, checkpoint.partition, checkpoint.offset) == ("metrics", 3, 41)
    assert checkpoint.state.meta == _state(41).meta
    np.testing.assert_array_equal(checkpoint.state.arrays["buffer"], _state(41).arrays["buffer"])
    np.testing.assert_array_equal(checkpoint.state.arrays["count"], [41])

    # The message is keyed "<topic>:<partition>", and its value has the format of a checkpoint file.
    [(key, value)] = _read_messages(kafka_bootstrap, topic)
    assert key == b"metrics:3"
    file_path = CheckpointStore(tmp_path).write("metrics", 3, 41, _state(41))
    from_file = decode_checkpoint(file_path.read_bytes(), "file")
    from_topic = decode_checkpoint(value, "message")
    assert from_topic.offset == from_file.offset
    assert from_topic.state.meta == from_file.state.meta
    assert sorted(from_topic.state.arrays) == sorted(from_file.state.arrays)


def test_store_last_value_per_key_wins(kafka_bootstrap, caplog):
    from connectors.kafka_checkpoints import KafkaCheckpointStore

    topic = _checkpoint_topic()
    writer = KafkaCheckpointStore(kafka_bootstrap, topic, timeout_s=10)
    try:
        # The last value of a key wins even when its offset is lower, as after a restore.
        for offset in (5, 90, 70):
            writer.write("metrics", 0, offset, _state(offset))
        writer.write("metrics", 1, 12, _state(12))
        writer.write("other", 0, 3, _state(3))
    finally:
        writer.close()

    reader = KafkaCheckpointStore(kafka_bootstrap, topic, timeout_s=10)
    try:
        with caplog.at_level(logging.INFO, logger="connectors.kafka_checkpoints"):
            offsets = {
                (name, partition): reader.read(name, partition)
                for name, partition in [("metrics", 0), ("metrics", 1), ("other", 0), ("other", 1)]
            }
    finally:
        reader.close()

    assert offsets[("metrics", 0)].offset == 70
    np.testing.assert_array_equal(offsets[("metrics", 0)].state.arrays["count"], [70])
    assert offsets[("metrics", 1)].offset == 12
    assert offsets[("other", 0)].offset == 3
    assert offsets[("other", 1)] is None
    loads = [record for record in caplog.records if record.getMessage().startswith("read Kafka checkpoint topic")]
    assert len(loads) == 1, "four reads in a row must read the topic once"


def test_store_reads_write_of_other_instance(kafka_bootstrap):
    from connectors.kafka_checkpoints import KafkaCheckpointStore

    topic = _checkpoint_topic()
    first = KafkaCheckpointStore(kafka_bootstrap, topic, timeout_s=10, cache_s=0)
    second = KafkaCheckpointStore(kafka_bootstrap, topic, timeout_s=10, cache_s=0)
    try:
        first.write("metrics", 0, 10, _state(10))
        assert second.read("metrics", 0).offset == 10
        first.write("metrics", 0, 20, _state(20))
        # With cache_s=0 every read loads the topic again, so it reads the newer checkpoint.
        assert second.read("metrics", 0).offset == 20
    finally:
        first.close()
        second.close()


def test_mirrored_store_reads_higher_offset(kafka_bootstrap, tmp_path):
    from connectors.kafka_checkpoints import KafkaCheckpointStore, MirroredCheckpointStore

    topic = _checkpoint_topic()
    directory = CheckpointStore(tmp_path / "checkpoints")
    kafka = KafkaCheckpointStore(kafka_bootstrap, topic, timeout_s=10, cache_s=0)
    mirrored = MirroredCheckpointStore([directory, kafka])
    try:
        mirrored.write("metrics", 0, 50, _state(50))
        assert directory.read("metrics", 0).offset == 50
        assert kafka.read("metrics", 0).offset == 50

        kafka.write("metrics", 0, 60, _state(60))
        assert mirrored.read("metrics", 0).offset == 60
        directory.write("metrics", 0, 70, _state(70))
        assert mirrored.read("metrics", 0).offset == 70

        # An unreadable file is logged and the topic's checkpoint is used.
        directory.path("metrics", 0).write_bytes(b"not a checkpoint")
        assert mirrored.read("metrics", 0).offset == 60
    finally:
        mirrored.close()


def test_store_logs_topic_lost_in_restart(caplog):
    from kafka import KafkaAdminClient

    from connectors.kafka import RetryBackoff
    from connectors.kafka_checkpoints import KafkaCheckpointStore
    from connectors.tansu import TansuBroker

    # Its own broker, because the restart loses every topic of the broker's memory storage.
    with TansuBroker(binary=require_tansu()) as broker:
        retry = RetryBackoff(max_s=1.0)
        store = KafkaCheckpointStore(broker.bootstrap, "checkpoints", timeout_s=5, cache_s=0, retry=retry)
        try:
            store.write("metrics", 0, 10, _state(10))
            store.write("metrics", 0, 11, _state(11))
            broker.restart()
            with caplog.at_level(logging.INFO, logger="connectors"):
                # Tansu 0.6 acknowledges this write although the restart lost the topic.
                store.write("metrics", 0, 12, _state(12))
                checkpoint = store.read("metrics", 0)
        finally:
            retry.stop.set()
            store.close()
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=5000)
        try:
            topics = admin.list_topics()
        finally:
            admin.close()

    assert "checkpoints" in topics
    assert checkpoint.offset == 12
    lines = [
        record.getMessage() for record in caplog.records
        if record.name.startswith("connectors.kafka") and "checkpoint" in record.getMessage()
    ]
    restarted = [index for index, line in enumerate(lines) if "partition started again" in line]
    assert len(restarted) == 1, lines
    warning = lines[restarted[0]]
    assert "checkpoint_partition=0 acknowledged_offset=0 previous_offset=1" in warning
    assert "checkpoint_topic=checkpoints topic=metrics partition=0 offset=12" in warning
    # The broker may have created the topic already for a metadata request, and then it is not created again.
    created = [index for index, line in enumerate(lines) if "created again" in line]
    assert all(index > restarted[0] for index in created), lines
    succeeded = [index for index, line in enumerate(lines) if "write succeeded" in line]
    assert all(index > max(restarted + created) for index in succeeded), lines
    assert not any("not found" in line for line in lines), lines


def test_store_rejects_invalid_topic(kafka_bootstrap):
    from connectors.kafka_checkpoints import KafkaCheckpointStore

    with pytest.raises(ValueError, match="not a valid Kafka topic name"):
        KafkaCheckpointStore(kafka_bootstrap, "check points", timeout_s=10)


# The daemon restarted with only --checkpoint-topic


@pytest.fixture(scope="module")
def bundle_dir(machine_model_dir):
    """The session's window-32 model, trained on rows 0 to 3400 (see tests/conftest.py)."""
    return machine_model_dir


@pytest.fixture(scope="module")
def streams(machine_temperature):
    return machine_slices(machine_temperature, SLICE_STARTS, SLICE_ROWS)


@pytest.fixture(scope="module")
def clean_run(bundle_dir, streams):
    """Scored windows and incident events of one uninterrupted in-process run."""
    return replay_windows_and_events(bundle_dir, streams, EngineConfig(score=SCORE, per_series_threshold=True))


def _produce(bootstrap, topic, streams):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for partition, series in enumerate(streams):
            for row in range(len(series)):
                record = Record(series.series_id, int(series.timestamps[row]), series.values[row])
                producer.send(topic, key=series.series_id.encode(), value=encode_record(record, True), partition=partition)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def _committed(bootstrap, group_id, topic):
    return committed_offsets(bootstrap, group_id, topic, PARTITIONS)


def _read_lines(path, position):
    """Return the JSON objects of the complete lines of ``path`` after ``position``, and the new position."""
    if not path.exists():
        return [], position
    with open(path, "rb") as file:
        file.seek(position)
        data = file.read()
    end = data.rfind(b"\n") + 1
    items = []
    for line in data[:end].splitlines():
        try:
            items.append(json.loads(line))
        except ValueError:
            continue  # a line cut by the kill; its batch is processed again
    return items, position + end


def test_daemon_restarts_from_checkpoint_topic(kafka_bootstrap, new_topic, group_id, bundle_dir, streams, clean_run, tmp_path):
    expected_windows, expected_events = clean_run
    assert any(status == "firing" for _, _, status in expected_events)
    topic = new_topic(PARTITIONS, prefix="ckdaemon")
    checkpoint_topic = _checkpoint_topic()
    _produce(kafka_bootstrap, topic, streams)
    log_path = tmp_path / "daemon.log"
    scores_path = tmp_path / "scores.jsonl"
    alerts_path = tmp_path / "alerts.jsonl"
    arguments = [
        "--model", str(bundle_dir), "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group-id", group_id,
        "--alerts", str(alerts_path), "--scores", str(scores_path), "--checkpoint-topic", checkpoint_topic,
        *DAEMON_OPTIONS,
    ]

    def start():
        return start_streamad_run(arguments, log_path)

    windows = set()
    position = 0
    for kill_after in (250, 400):
        daemon = start()
        scored_by_run = []
        try:

            def reached():
                nonlocal position
                items, position = _read_lines(scores_path, position)
                scored_by_run.extend(items)
                assert daemon.poll() is None, f"daemon exited with {daemon.returncode}:\n{log_path.read_text()[-4000:]}"
                return len(scored_by_run) >= kill_after

            wait_for(reached, 90, f"{kill_after} windows scored by one run", [log_path])
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=10)
        finally:
            kill_daemon(daemon)
        windows |= {(point["series"], point["timestamp"]) for point in scored_by_run}
    assert len(windows) < len(expected_windows), "the killed runs finished the stream"

    daemon = start()
    try:
        wait_for(
            lambda: _committed(kafka_bootstrap, group_id, topic) == [SLICE_ROWS] * PARTITIONS,
            120, "the commit of every record", [log_path],
        )
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, log_path.read_text()[-4000:]
    finally:
        kill_daemon(daemon)

    items, position = _read_lines(scores_path, position)
    windows |= {(point["series"], point["timestamp"]) for point in items}
    events, _ = _read_lines(alerts_path, 0)
    log = log_path.read_text()
    assert log.count("restored checkpoint") >= 2
    assert "no --checkpoint-dir" not in log
    assert not list(tmp_path.glob("**/*.npz"))
    assert windows == expected_windows
    assert event_set(events) == expected_events

"""`streamad run` against a real Kafka broker: records in, alerts read back from the alerts topic."""

import json
import signal
import time

import numpy as np
import pytest

from daemon_support import EventCollector, start_streamad_run, train_bundle_dir
from streamad.engine import EngineConfig, StreamEngine
from streamad.records import Record
from streamad.replay import replay_series
from streamad.training import TrainConfig

pytestmark = pytest.mark.kafka

# Rows 3400 to 6400 of the machine-temperature file: mid-December 2013, after NAB's
# probationary period, with the labelled anomaly window of 15 to 17 December.
STREAM_ROWS = slice(3400, 6400)


@pytest.fixture(scope="module")
def bundle_dir(machine_temperature, tmp_path_factory):
    train_span = machine_temperature.slice(0, 3400)
    config = TrainConfig(window=32, latent=4, hidden=64, epochs=40, patience=10, seed=0)
    return train_bundle_dir([train_span], config, tmp_path_factory.mktemp("model"))


def _committed_offset(bootstrap, group_id, topic):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()


def _read_topic(bootstrap, topic, expected, timeout_s=30.0):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def _run_daemon(bootstrap, bundle_dir, topic, group_id, tmp_path, alerts_topic):
    arguments = [
        "--model", str(bundle_dir), "--bootstrap-servers", bootstrap, "--topic", topic,
        "--group-id", group_id, "--alerts-topic", alerts_topic, "--alerts", str(tmp_path / "alerts.jsonl"),
        "--dead-letter", str(tmp_path / "dead.jsonl"),
        "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "2000", "--max-poll-interval-ms", "10000",
    ]
    return start_streamad_run(arguments, tmp_path / "daemon.log", mode="w")


def test_daemon_alerts_round_trip(kafka_bootstrap, new_topic, group_id, bundle_dir, machine_temperature, tmp_path):
    from connectors.kafka import produce_records
    from streamad.bundle import load_bundle

    topic = new_topic(1, prefix="metrics")
    alerts_topic = new_topic(1, prefix="alerts")
    stream = machine_temperature.slice(STREAM_ROWS.start, STREAM_ROWS.stop)
    records = [Record(stream.series_id, int(stream.timestamps[i]), stream.values[i]) for i in range(len(stream))]
    bad = [b"{not json", json.dumps({"series": stream.series_id, "timestamp": 1, "values": [1.0, 2.0]}).encode()]
    payloads = records[:1500] + bad + records[1500:]
    acknowledged = produce_records(kafka_bootstrap, topic, payloads)
    last_offset = max(offset for _, offset in acknowledged)

    daemon = _run_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, alerts_topic)
    try:
        deadline = time.monotonic() + 120
        committed = None
        while time.monotonic() < deadline and daemon.poll() is None:
            committed = _committed_offset(kafka_bootstrap, group_id, topic)
            if committed is not None and committed > last_offset:
                break
            time.sleep(1.0)
        log = (tmp_path / "daemon.log").read_text()
        assert committed == last_offset + 1, f"daemon did not commit through offset {last_offset}; log:\n{log[-3000:]}"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()

    collector = EventCollector()
    engine = StreamEngine(load_bundle(bundle_dir), EngineConfig())
    replay_series(engine, [stream], alert_sinks=[collector])
    expected_events = collector.items
    assert any(event["status"] == "firing" for event in expected_events)

    messages = _read_topic(kafka_bootstrap, alerts_topic, len(expected_events))
    received = [json.loads(message.value) for message in messages]
    assert [(e["alert_id"], e["sequence"], e["status"]) for e in received] == [
        (e["alert_id"], e["sequence"], e["status"]) for e in expected_events
    ]
    assert all(message.key == stream.series_id.encode() for message in messages)
    np.testing.assert_allclose([e["score"] for e in received], [e["score"] for e in expected_events], rtol=1e-4)

    file_events = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert file_events == received

    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [entry["offset"] for entry in dead] == [1500, 1501]
    assert dead[0]["reason"] == "invalid_json"
    assert dead[1]["reason"] == "wrong_channel_count"
    assert "stopped after" in (tmp_path / "daemon.log").read_text()

"""`streamad run` with a webhook through the outbox, killed with SIGKILL while the endpoint is down.

The events of the killed run wait in the outbox. After the endpoint comes up and the daemon
restarts from its checkpoints, the receiver must get every event of an uninterrupted
in-process run exactly once, in order within each incident.
"""

import json
import signal

import pytest

from connectors.outbox import Outbox
from daemon_support import (
    EventCollector, Receiver, committed_offsets, free_port, kill_daemon, start_streamad_run, train_bundle_dir,
    wait_for,
)
from streamad.bundle import load_bundle
from streamad.engine import EngineConfig, StreamEngine
from streamad.records import Record, encode_record
from streamad.replay import replay_series
from streamad.training import TrainConfig

pytestmark = pytest.mark.kafka

TRAIN_ROWS = 2000
STREAM_ROWS = (2000, 6000)
SCORE = "reconstruction"
# A low threshold level gives a few dozen events in 4000 rows, spread over a dozen incidents.
LEVEL = "0.99"
DAEMON_OPTIONS = [
    "--score", SCORE,
    "--level", LEVEL,
    "--per-series-threshold",
    "--checkpoint-every-records", "100",
    "--checkpoint-interval-s", "1",
    "--max-poll-records", "20",
    "--session-timeout-ms", "6000",
    "--heartbeat-interval-ms", "2000",
    "--max-poll-interval-ms", "10000",
    "--webhook-timeout", "2",
    "--webhook-max-attempts", "1000",
    "--webhook-backoff-base-s", "0.1",
    "--webhook-backoff-max-s", "1",
    "--webhook-drain-s", "5",
]


@pytest.fixture(scope="module")
def series(machine_temperature):
    return machine_temperature


@pytest.fixture(scope="module")
def bundle_dir(series, tmp_path_factory):
    config = TrainConfig(window=16, latent=2, hidden=16, epochs=5, patience=3, seed=0)
    return train_bundle_dir([series.slice(0, TRAIN_ROWS)], config, tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def stream(series):
    part = series.slice(*STREAM_ROWS)
    part.series_id = "machine-0"
    return part


@pytest.fixture(scope="module")
def expected_events(bundle_dir, stream):
    """Incident events of one uninterrupted in-process run, in emission order."""
    events = EventCollector()
    config = EngineConfig(score=SCORE, threshold_level=float(LEVEL), per_series_threshold=True, has_clock=True)
    replay_series(StreamEngine(load_bundle(bundle_dir), config), [stream], alert_sinks=[events])
    return events.items


def _produce(bootstrap, topic, stream):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for row in range(len(stream.timestamps)):
            record = Record(stream.series_id, int(stream.timestamps[row]), stream.values[row])
            producer.send(topic, key=stream.series_id.encode(), value=encode_record(record, True), partition=0)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def _start_daemon(bootstrap, bundle_dir, topic, group_id, directory, webhook_url):
    arguments = [
        "--model", str(bundle_dir), "--bootstrap-servers", bootstrap, "--topic", topic, "--group-id", group_id,
        "--webhook", webhook_url,
        "--outbox", str(directory / "outbox.db"),
        "--alerts", str(directory / "alerts.jsonl"),
        "--checkpoint-dir", str(directory / "checkpoints"),
        *DAEMON_OPTIONS,
    ]
    return start_streamad_run(arguments, directory / "daemon.log")


def _committed(bootstrap, group_id, topic):
    return committed_offsets(bootstrap, group_id, topic, 1)[0]


def test_outbox_survives_kill_nine_while_endpoint_down(kafka_bootstrap, new_topic, group_id, bundle_dir, stream, expected_events, tmp_path):
    expected_keys = [f"{event['alert_id']}:{event['sequence']}" for event in expected_events]
    assert len(set(expected_keys)) == len(expected_keys) >= 10
    topic = new_topic(1, prefix="outbox")
    _produce(kafka_bootstrap, topic, stream)
    log = tmp_path / "daemon.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}/alerts"

    # Run 1: the endpoint is down, so the events stay pending in the outbox.
    daemon = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, url)
    try:
        def some_pending():
            assert daemon.poll() is None, f"daemon exited with {daemon.returncode}:\n{log.read_text()[-4000:]}"
            if not (tmp_path / "outbox.db").exists():
                return False
            box = Outbox(tmp_path / "outbox.db")
            try:
                return box.backlog() >= len(expected_keys) // 3
            finally:
                box.close()

        wait_for(some_pending, 120, f"{len(expected_keys) // 3} pending events in the outbox", [log])
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    finally:
        kill_daemon(daemon)
    box = Outbox(tmp_path / "outbox.db")
    counts = box.counts()
    box.close()
    assert counts["delivered"] == 0
    assert counts["dead"] == 0
    assert counts["pending"] >= len(expected_keys) // 3

    # Run 2: SIGTERM while the endpoint is still down. The senders retry for --webhook-drain-s,
    # then the daemon exits with 0 and the events stay pending.
    daemon = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, url)
    try:
        wait_for(lambda: log.read_text().count("Kafka partitions assigned") >= 2, 120, "the second assignment", [log])
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-4000:]
    finally:
        kill_daemon(daemon)
    assert "pending event(s) for the next start" in log.read_text()
    box = Outbox(tmp_path / "outbox.db")
    counts = box.counts()
    box.close()
    assert counts["delivered"] == 0
    assert counts["pending"] >= len(expected_keys) // 3

    # Run 3: the endpoint is up; the restarted daemon finishes the stream and delivers everything.
    receiver = Receiver(port=port)
    try:
        daemon = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, url)
        try:
            wait_for(lambda: _committed(kafka_bootstrap, group_id, topic) == len(stream.timestamps), 120, "the commit of every record", [log])
            wait_for(lambda: set(receiver.keys()) >= set(expected_keys), 120, "delivery of every event", [log])
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0, log.read_text()[-4000:]
        finally:
            kill_daemon(daemon)
    finally:
        receiver.close()

    keys = receiver.keys()
    assert sorted(keys) == sorted(expected_keys), "an event is missing or was delivered twice"
    for alert_id in {event["alert_id"] for event in expected_events}:
        delivered = [key for key in keys if key.startswith(alert_id + ":")]
        expected = [key for key in expected_keys if key.startswith(alert_id + ":")]
        assert delivered == expected, f"incident {alert_id} arrived out of order"
    bodies = {f"{body['alert_id']}:{body['sequence']}": body for body in (json.loads(raw) for _, raw in receiver.accepted)}
    for event in expected_events:
        assert bodies[f"{event['alert_id']}:{event['sequence']}"]["status"] == event["status"]
    box = Outbox(tmp_path / "outbox.db")
    assert box.counts() == {"pending": 0, "delivered": len(expected_keys), "dead": 0}
    box.close()
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("pending in outbox") >= 2

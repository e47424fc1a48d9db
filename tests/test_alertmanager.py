"""The Alertmanager API v2 client against a real HTTP server on 127.0.0.1 that records the POSTs."""

import json
import time

import pytest

from connectors.alertmanager import AlertmanagerClient
from daemon_support import FakeAlertmanager
from streamad.alerts.severity import AlertContent

WAIT_S = 20.0


def _wait_until(predicate, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def alertmanager():
    server = FakeAlertmanager()
    yield server
    server.close()


def _event(status, sequence, probability=0.9995, end=None, alert_id="a1", series="pump-7"):
    event = {
        "alert_id": alert_id,
        "sequence": sequence,
        "status": status,
        "series": series,
        "start": "2024-05-01T12:00:00Z",
        "end": end,
        "timestamp": "2024-05-01T12:05:00Z",
        "score": 150.0,
        "peak_score": 180.5,
        "threshold": 60.25,
        "anomaly_probability": probability,
        "peak_anomaly_probability": probability,
        "score_name": "likelihood",
        "model_version": "v1",
        "channels": [] if status == "resolved" else [{"channel": "flow", "kind": "channel", "nats": 9.0, "share": 1.0}],
        "log_normalizer": 1.0,
    }
    return AlertContent(labels={"team": "pumps"}).decorate(event)


def test_client_resends_active_and_sends_resolved(alertmanager):
    client = AlertmanagerClient(alertmanager.url, resend_interval_s=0.3, timeout_s=5)
    try:
        client.send([_event("firing", 1)])
        assert alertmanager.wait_for(lambda: len(alertmanager.posts) >= 3)
        path, first, _ = alertmanager.posts[0]
        assert path == "/api/v2/alerts"
        (alert,) = first
        assert alert["labels"]["series"] == "pump-7"
        assert alert["labels"]["team"] == "pumps"
        assert alert["startsAt"] == "2024-05-01T12:00:00Z"
        assert "endsAt" not in alert
        # The open incident is sent again, unchanged, at the re-send interval.
        assert alertmanager.posts[1][1] == first
        assert alertmanager.posts[2][1] == first
        assert alertmanager.posts[2][2] - alertmanager.posts[1][2] >= 0.2

        client.send([_event("resolved", 2, end="2024-05-01T12:20:00Z")])
        assert alertmanager.wait_for(lambda: any("endsAt" in alert for _, body, _ in alertmanager.posts for alert in body))
        resolved = [alert for _, body, _ in alertmanager.posts for alert in body if "endsAt" in alert]
        assert resolved[0]["endsAt"] == "2024-05-01T12:20:00Z"
        assert resolved[0]["labels"] == alert["labels"]
        # The resolved alert keeps the channels of the firing one.
        assert resolved[0]["annotations"]["channels"] == alert["annotations"]["channels"]
        assert resolved[0]["annotations"]["summary"] == "Anomaly on pump-7 resolved"
        assert client.active_alerts() == []
        # The POST is recorded before the client reads the response and clears its queue.
        assert _wait_until(lambda: client.pending_count() == 0)

        # Nothing is open any more, so nothing is sent again.
        count = len(alertmanager.posts)
        assert not alertmanager.wait_for(lambda: len(alertmanager.posts) > count, timeout=1.0)
    finally:
        client.close()


def test_client_retries_with_backoff(alertmanager):
    alertmanager.fail_next = 3
    client = AlertmanagerClient(alertmanager.url, resend_interval_s=30, timeout_s=5, retry_initial_s=0.1, retry_max_s=0.4)
    try:
        started = time.monotonic()
        client.send([_event("firing", 1), _event("resolved", 2, end="2024-05-01T12:10:00Z", alert_id="a0")])
        assert alertmanager.wait_for(lambda: alertmanager.posts)
        elapsed = time.monotonic() - started
        assert alertmanager.failures == 3
        # Waits of 0.1, 0.2 and 0.4 s between the four attempts.
        assert elapsed >= 0.6
        (_, body, _) = alertmanager.posts[0]
        assert sorted("endsAt" in alert for alert in body) == [False, True]
        assert _wait_until(lambda: client.pending_count() == 0)
    finally:
        client.close()


def test_client_send_does_not_block_when_unreachable():
    # A port from a server that is closed again, so connections are refused.
    server = FakeAlertmanager()
    url = server.url
    server.close()
    client = AlertmanagerClient(url, resend_interval_s=30, timeout_s=1, retry_initial_s=0.05, retry_max_s=0.1)
    try:
        started = time.monotonic()
        for sequence in range(1, 50):
            client.send([_event("update" if sequence > 1 else "firing", sequence)])
        client.flush()
        assert time.monotonic() - started < 1.0
        assert len(client.active_alerts()) == 1
    finally:
        client.close(timeout_s=3)


def test_client_ends_old_label_set_on_new_severity(alertmanager):
    client = AlertmanagerClient(alertmanager.url, resend_interval_s=30, timeout_s=5)
    try:
        client.send([_event("firing", 1, probability=0.995)])
        assert alertmanager.wait_for(lambda: len(alertmanager.posts) >= 1)
        client.send([_event("update", 2, probability=0.9999)])
        assert alertmanager.wait_for(lambda: len(alertmanager.posts) >= 2)
        body = alertmanager.posts[1][1]
        by_severity = {alert["labels"]["severity"]: alert for alert in body}
        assert set(by_severity) == {"warning", "critical"}
        assert "endsAt" in by_severity["warning"]
        assert "endsAt" not in by_severity["critical"]
    finally:
        client.close()


def test_client_sends_only_changed_between_resends(alertmanager):
    client = AlertmanagerClient(alertmanager.url, resend_interval_s=30, timeout_s=5)
    try:
        client.send([_event("firing", 1, alert_id="a1")])
        assert alertmanager.wait_for(lambda: len(alertmanager.posts) >= 1)
        client.send([_event("firing", 1, alert_id="a2", series="pump-8")])
        assert alertmanager.wait_for(lambda: len(alertmanager.posts) >= 2)
        second = alertmanager.posts[1][1]
        assert [alert["labels"]["alert_id"] for alert in second] == ["a2"]
        assert len(client.active_alerts()) == 2
    finally:
        client.close()


def test_client_sends_firing_before_resolved_in_one_batch(alertmanager):
    # The daemon catching up can score a whole incident in one batch, so one send() contains both events.
    client = AlertmanagerClient(alertmanager.url, resend_interval_s=30, timeout_s=5)
    try:
        client.send([_event("firing", 1), _event("update", 2), _event("resolved", 3, end="2024-05-01T12:10:00Z")])
        assert alertmanager.wait_for(lambda: any("endsAt" in alert for _, body, _ in alertmanager.posts for alert in body))
        alerts = [alert for _, body, _ in alertmanager.posts for alert in body]
        assert ["endsAt" in alert for alert in alerts] == [False, True]
        assert alerts[0]["labels"] == alerts[1]["labels"]
        assert alerts[1]["endsAt"] == "2024-05-01T12:10:00Z"
        assert client.active_alerts() == []
    finally:
        client.close()


def test_client_sends_restored_incident_at_once(alertmanager):
    client = AlertmanagerClient(alertmanager.url, resend_interval_s=3600, timeout_s=5)
    try:
        client.send([_event("firing", 2, alert_id="live")])
        assert alertmanager.wait_for(lambda: len(alertmanager.posts) >= 1)
        # "live" is tracked already and keeps its alert, and a resolved event ends nothing.
        client.send_restored([
            _event("update", 3, alert_id="restored"),
            _event("firing", 1, alert_id="live", probability=0.5),
            _event("resolved", 4, alert_id="gone", end="2024-05-01T12:10:00Z"),
        ])
        assert alertmanager.wait_for(lambda: len(alertmanager.posts) >= 2)
    finally:
        client.close()

    sent = alertmanager.posts[1][1]
    assert [alert["labels"]["alert_id"] for alert in sent] == ["restored"]
    assert sent[0]["labels"] == _event("update", 3, alert_id="restored")["labels"]
    assert sent[0]["startsAt"] == "2024-05-01T12:00:00Z"
    assert "endsAt" not in sent[0]
    active = {alert["labels"]["alert_id"]: alert for alert in client.active_alerts()}
    assert sorted(active) == ["live", "restored"]
    assert active["live"]["labels"]["severity"] == "critical"


@pytest.mark.kafka
def test_daemon_resends_restored_incident(alertmanager, kafka_bootstrap, new_topic, group_id, machine_model_dir, machine_temperature, tmp_path):
    import signal

    from conftest import MACHINE_TRAIN_ROWS
    from connectors.kafka import produce_records
    from daemon_support import committed_offsets, kill_daemon, start_streamad_run, wait_for
    from streamad.bundle import load_bundle
    from streamad.data import format_timestamp
    from streamad.engine import EngineConfig, StreamEngine
    from streamad.records import Record

    # Stream up to a few points into the first incident, so that it is open when the daemon stops.
    stream = machine_temperature.slice(MACHINE_TRAIN_ROWS, MACHINE_TRAIN_ROWS + 2000)
    records = [Record(stream.series_id, int(stream.timestamps[i]), stream.values[i]) for i in range(len(stream))]
    replayed = StreamEngine(load_bundle(machine_model_dir), EngineConfig(resolve_after_s=3600)).process(records).events
    firing = next(event for event in replayed if event["status"] == "firing")
    cut = next(i for i, record in enumerate(records) if format_timestamp(record.timestamp, True) == firing["start"]) + 3
    topic = new_topic(1, prefix="metrics")
    produce_records(kafka_bootstrap, topic, records[:cut])

    log_path = tmp_path / "daemon.log"
    alerts_path = tmp_path / "alerts.jsonl"
    arguments = [
        "--model", str(machine_model_dir), "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group-id", group_id,
        # A re-send interval longer than the test, so that only the restore can send the incident in the second run.
        "--alertmanager", alertmanager.url, "--alertmanager-resend-s", "3600",
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--alerts", str(alerts_path), "--resolve-after-s", "3600",
        "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "2000", "--max-poll-interval-ms", "10000",
    ]

    def sent_alerts():
        with alertmanager.condition:
            return [alert for _, body, _ in alertmanager.posts for alert in body]

    def run_until(condition, description):
        daemon = start_streamad_run(arguments, log_path)
        try:
            wait_for(condition, 120, description, [log_path])
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0, log_path.read_text()[-4000:]
        finally:
            kill_daemon(daemon)

    run_until(
        lambda: committed_offsets(kafka_bootstrap, group_id, topic, 1) == [cut]
        and any(alert["labels"]["alert_id"] == firing["alert_id"] for alert in sent_alerts()),
        "the commit of every record and the firing alert",
    )
    first_run = sent_alerts()
    events_before = alerts_path.read_text().splitlines()
    with alertmanager.condition:
        alertmanager.posts.clear()

    run_until(lambda: sent_alerts(), "a POST of the second run")

    assert [event["alert_id"] for event in map(json.loads, events_before) if event["status"] == "firing"] == [firing["alert_id"]]
    # No record arrived in the second run, so it wrote no event, and the restore sent the incident.
    assert alerts_path.read_text().splitlines() == events_before
    resent = sent_alerts()
    assert {alert["labels"]["alert_id"] for alert in resent} == {firing["alert_id"]}
    assert all("endsAt" not in alert for alert in resent)
    last_sent = [alert for alert in first_run if alert["labels"]["alert_id"] == firing["alert_id"]][-1]
    assert resent[0]["labels"] == last_sent["labels"]
    assert resent[0]["startsAt"] == last_sent["startsAt"] == firing["start"]
    assert "sending 1 open incidents restored from checkpoints again" in log_path.read_text()


def test_client_rejects_bad_settings():
    with pytest.raises(ValueError, match="--alertmanager 'alertmanager:9093' is invalid"):
        AlertmanagerClient("alertmanager:9093")
    with pytest.raises(ValueError, match="--alertmanager-resend-s 0"):
        AlertmanagerClient("http://127.0.0.1:9", resend_interval_s=0)


# `streamad run --alertmanager` against a real Kafka broker and the recording server.

NAB_FILE = "artificialWithAnomaly/art_daily_jumpsup.csv"


@pytest.mark.kafka
def test_daemon_pushes_incidents_to_alertmanager(alertmanager, kafka_bootstrap, new_topic, group_id, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from connectors.kafka import produce_records
    from shared_data import NAB_DATA, require
    from streamad.bundle import save_bundle
    from streamad.data import format_timestamp, load_series
    from streamad.engine import EngineConfig, StreamEngine
    from streamad.records import Record
    from streamad.training import TrainConfig, train_bundle

    series = load_series(require(NAB_DATA / NAB_FILE))
    train_rows = int(0.15 * len(series))
    config = TrainConfig(window=32, latent=2, hidden=32, epochs=30, seed=0)
    bundle = train_bundle([series.slice(0, train_rows)], config, progress=False, score_names=("likelihood",))
    save_bundle(bundle, tmp_path / "model")

    # Stream up to a few points into the last incident, so that it is still open when the
    # records run out and the client has to re-send it.
    stream = series.slice(train_rows, None)
    records = [Record(stream.series_id, int(stream.timestamps[i]), stream.values[i]) for i in range(len(stream))]
    engine = StreamEngine(bundle, EngineConfig(resolve_after_s=3600))
    replayed = engine.process(records).events
    last_firing = [event for event in replayed if event["status"] == "firing"][-1]
    assert [event["status"] for event in replayed].count("resolved") >= 1
    cut = next(i for i, record in enumerate(records) if format_timestamp(record.timestamp, True) == last_firing["start"]) + 3
    topic = new_topic(1, prefix="metrics")
    produce_records(kafka_bootstrap, topic, records[:cut])

    command = [
        sys.executable, "-m", "streamad", "run", "--model", str(tmp_path / "model"),
        "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group-id", group_id,
        "--alertmanager", alertmanager.url, "--alertmanager-resend-s", "0.5",
        "--alerts", str(tmp_path / "alerts.jsonl"), "--resolve-after-s", "3600", "--label", "team=nab",
        "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "2000", "--max-poll-interval-ms", "10000",
    ]
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        def received():
            return [alert for _, body, _ in alertmanager.posts for alert in body]

        def resolved_and_resent():
            alerts = received()
            firing = [alert for alert in alerts if "endsAt" not in alert]
            starts = [alert["startsAt"] for alert in firing]
            return any("endsAt" in alert for alert in alerts) and len(starts) > len(set(starts))

        assert alertmanager.wait_for(resolved_and_resent, timeout=120), (
            f"no resolved and re-sent alerts; posts {len(alertmanager.posts)}; log:\n{log_path.read_text()[-3000:]}"
        )
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()

    events = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    resolved_events = [event for event in events if event["status"] == "resolved"]
    assert resolved_events
    alerts = received()
    ended = {alert["startsAt"]: alert["endsAt"] for alert in alerts if "endsAt" in alert}
    for event in resolved_events:
        assert ended.get(event["start"]) == event["end"]
    open_alerts = [alert for alert in alerts if alert["startsAt"] == last_firing["start"]]
    assert len(open_alerts) >= 2
    assert all("endsAt" not in alert for alert in open_alerts)
    assert all(alert["labels"]["team"] == "nab" for alert in alerts)
    assert all(alert["labels"]["alertname"] == "StreamADAnomaly" for alert in alerts)

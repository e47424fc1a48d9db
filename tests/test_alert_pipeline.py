"""The alert pipeline end to end: `streamad run` on a real broker with every alert destination at once.

The daemon scores a labelled NAB series from Kafka. It sends its incident events through the
SQLite outbox to the two webhook endpoints of a TOML config file, a signed `generic` one and a
grouped `alertmanager` one. It also sends them to a fake Alertmanager API (`--alertmanager`) and
to an `--alerts` file, while `--metrics-port` serves /metrics. The test checks that all of them
agree with the `--alerts` file, that the signatures verify, and that SIGTERM leaves nothing pending.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka import produce_records
from daemon_support import FakeAlertmanager, Receiver, free_port
from shared_data import NAB_DATA, require
from streamad.alerts.signing import SIGNATURE_HEADER, SignatureError, verify
from streamad.cli import main
from streamad.data import load_series
from streamad.records import Record

pytestmark = pytest.mark.kafka

NAB_FILE = "artificialWithAnomaly/art_daily_jumpsup.csv"
SERIES = "art_daily_jumpsup"
SECRET_ENV = "STREAMAD_PIPELINE_TEST_SECRET"
SECRET = "pipeline-test-secret"
WAIT_S = 120.0
# Fields of Alertmanager's webhook body, version 4, and of each of its alerts.
WEBHOOK_FIELDS = {
    "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels",
    "commonAnnotations", "externalURL", "alerts",
}
WEBHOOK_ALERT_FIELDS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small model trained by `streamad train` on NAB's probationary period (the first 15 %) of the file."""
    data = require(NAB_DATA / NAB_FILE)
    directory = tmp_path_factory.mktemp("pipeline") / "model"
    assert main([
        "train", "--data", str(data), "--out", str(directory), "--train-fraction", "0.15",
        "--window", "32", "--latent", "2", "--hidden", "32", "--epochs", "30", "--seed", "0",
    ]) == 0
    return directory


@pytest.fixture(scope="module")
def records():
    """The records after the training part: two incidents of the file's labelled anomalies, both resolved."""
    series = load_series(require(NAB_DATA / NAB_FILE))
    start = int(0.15 * len(series))
    return [Record(SERIES, int(series.timestamps[i]), series.values[i]) for i in range(start, len(series))]


def _write_config(path, outbox, generic_url, grouped_url):
    path.write_text(
        f"""
[run]
outbox = "{outbox}"
resolve_after_s = 3600
update_interval_s = 1800
label = ["team=nab"]
webhook_backoff_base_s = 0.1
webhook_backoff_max_s = 1
webhook_drain_s = 5

[webhooks.signed]
url = "{generic_url}"
secret_env = "{SECRET_ENV}"

[webhooks.grouped]
url = "{grouped_url}"
format = "alertmanager"
group_by = "series"
group_wait_s = 1
"""
    )


def _scrape(port):
    """Return {(name, sorted label items): value} from /metrics, or None while the server is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _wait_for(daemon, log, condition, description):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"daemon exited with {daemon.returncode}; log:\n{log.read_text()[-4000:]}"
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {WAIT_S} s waiting for {description}; daemon log:\n{log.read_text()[-4000:]}")


def _read_events(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _key(event):
    return f"{event['alert_id']}:{event['sequence']}"


def _api_alerts(alertmanager):
    with alertmanager.condition:
        return [(path, alert) for path, body, _ in alertmanager.posts for alert in body]


# 500 records per poll put each incident, firing to resolved, into one batch, as when the daemon
# catches up after a pause. 20 spread an incident over many batches, as in live operation.
@pytest.mark.parametrize("max_poll_records", [500, 20], ids=["whole-incident-batches", "small-batches"])
def test_pipeline_delivers_to_every_destination(
    kafka_bootstrap, new_topic, group_id, model, records, tmp_path, capsys, max_poll_records
):
    topic = new_topic(1, prefix="pipeline")
    produce_records(kafka_bootstrap, topic, records)
    signed = Receiver()
    grouped = Receiver()
    alertmanager = FakeAlertmanager()
    config = tmp_path / "run.toml"
    outbox = tmp_path / "outbox.db"
    alerts_file = tmp_path / "alerts.jsonl"
    _write_config(config, outbox, signed.url, grouped.url)
    metrics_port = free_port()
    command = [
        sys.executable, "-m", "streamad", "--log-level", "INFO", "run", "--config", str(config),
        "--model", str(model), "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group-id", group_id,
        "--alertmanager", alertmanager.url, "--alertmanager-resend-s", "1",
        "--alerts", str(alerts_file), "--metrics-port", str(metrics_port),
        "--max-poll-records", str(max_poll_records),
        "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "2000", "--max-poll-interval-ms", "10000",
    ]
    log = tmp_path / "daemon.log"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", SECRET_ENV: SECRET}
    with open(log, "w") as handle:
        daemon = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
    try:
        def consumed():
            samples = _scrape(metrics_port)
            return samples is not None and samples.get(("streamad_records_total", (("topic", topic),))) == len(records)

        _wait_for(daemon, log, consumed, f"the daemon to consume {len(records)} records")
        events = _read_events(alerts_file)
        assert events, "the daemon wrote no incident event to --alerts"
        expected_keys = {_key(event) for event in events}
        resolved = [event for event in events if event["status"] == "resolved"]

        def delivered():
            signed_keys = {headers["Idempotency-Key"] for headers, _ in signed.accepted}
            grouped_alerts = [alert for _, body in grouped.accepted for alert in json.loads(body)["alerts"]]
            api_ends = {alert["labels"]["alert_id"] for _, alert in _api_alerts(alertmanager) if "endsAt" in alert}
            return (
                signed_keys >= expected_keys
                and {alert["labels"]["alert_id"] for alert in grouped_alerts if alert["status"] == "resolved"}
                >= {event["alert_id"] for event in resolved}
                and api_ends >= {event["alert_id"] for event in resolved}
            )

        _wait_for(daemon, log, delivered, "delivery to both webhooks and to the Alertmanager API")
        samples = _scrape(metrics_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10) as response:
            assert response.status == 200
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-4000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        signed.close()
        grouped.close()
        alertmanager.close()

    text = log.read_text()
    assert "Traceback" not in text, text[-4000:]
    events = _read_events(alerts_file)
    by_key = {_key(event): event for event in events}
    assert len(by_key) == len(events), "the --alerts file has an event twice"

    # Incidents of the --alerts file: a firing and a resolved event each, with the resolved end.
    incidents = {}
    for event in events:
        incidents.setdefault(event["alert_id"], []).append(event)
    assert len(incidents) >= 2
    for alert_id, incident in incidents.items():
        assert [event["sequence"] for event in incident] == list(range(1, len(incident) + 1))
        assert incident[0]["status"] == "firing"
        assert incident[-1]["status"] == "resolved", f"incident {alert_id} did not resolve in the stream"
        assert {event["start"] for event in incident} == {incident[0]["start"]}
        assert incident[-1]["end"] is not None
        assert all(event["labels"]["team"] == "nab" for event in incident)

    # The signed generic endpoint: every request verifies, a tampered copy fails, each event once and in order.
    keys = []
    for headers, body in signed.accepted:
        verify(body, headers, SECRET)
        with pytest.raises(SignatureError):
            verify(body.replace(b'"series"', b'"Series"', 1), headers, SECRET)
        with pytest.raises(SignatureError):
            verify(body, headers, SECRET + "x")
        event = json.loads(body)
        assert headers["Idempotency-Key"] == _key(event)
        assert event == by_key[_key(event)], "the webhook body differs from the --alerts event"
        keys.append(_key(event))
    assert sorted(keys) == sorted(by_key), "an event is missing or arrived twice at the generic endpoint"
    for alert_id, incident in incidents.items():
        arrived = [int(key.split(":")[1]) for key in keys if key.startswith(alert_id + ":")]
        assert arrived == [event["sequence"] for event in incident], f"incident {alert_id} arrived out of order"

    # Channels: the nats of the entries plus the log-normalizer are the event's score.
    for event in events:
        if event["status"] == "resolved":
            assert event["channels"] == []
            continue
        assert [entry["kind"] for entry in event["channels"]] == ["channel", "latent"]
        total = sum(entry["nats"] for entry in event["channels"]) + event["log_normalizer"]
        assert total == pytest.approx(event["score"], abs=1e-2)

    # The grouped Alertmanager-format endpoint: complete v4 bodies whose alerts match the events.
    assert grouped.accepted
    grouped_statuses = {}
    for headers, body in grouped.accepted:
        assert SIGNATURE_HEADER not in headers, "the grouped endpoint has no secret"
        assert headers["Idempotency-Key"]
        document = json.loads(body)
        assert set(document) == WEBHOOK_FIELDS
        assert document["version"] == "4"
        assert document["receiver"] == "grouped"
        assert document["groupLabels"] == {"series": SERIES}
        assert document["groupKey"] == '{}:{series="%s"}' % SERIES
        assert document["commonLabels"]["series"] == SERIES
        assert document["commonLabels"]["team"] == "nab"
        assert isinstance(document["commonAnnotations"], dict)
        assert document["truncatedAlerts"] == 0
        assert document["alerts"]
        statuses = {alert["status"] for alert in document["alerts"]}
        assert document["status"] == ("firing" if "firing" in statuses else "resolved")
        for alert in document["alerts"]:
            assert set(alert) == WEBHOOK_ALERT_FIELDS
            incident = incidents[alert["labels"]["alert_id"]]
            assert alert["labels"]["series"] == SERIES
            assert alert["startsAt"] == incident[0]["start"]
            assert len(alert["fingerprint"]) == 16
            if alert["status"] == "resolved":
                assert alert["endsAt"] == incident[-1]["end"]
                assert alert["labels"] == incident[-1]["labels"]
            else:
                assert alert["status"] == "firing"
                assert alert["endsAt"] == "0001-01-01T00:00:00Z"
            grouped_statuses.setdefault(alert["labels"]["alert_id"], []).append(alert["status"])
    for alert_id in incidents:
        statuses = grouped_statuses.get(alert_id, [])
        assert statuses and statuses[-1] == "resolved", f"incident {alert_id} in the grouped bodies: {statuses}"
        assert statuses.count("resolved") == 1, f"incident {alert_id} in the grouped bodies: {statuses}"
    # One fingerprint per incident: its labels do not change unless the severity rises.
    fingerprints = {}
    for _, body in grouped.accepted:
        for alert in json.loads(body)["alerts"]:
            if alert["labels"]["severity"] == incidents[alert["labels"]["alert_id"]][-1]["severity"]:
                fingerprints.setdefault(alert["labels"]["alert_id"], set()).add(alert["fingerprint"])
    assert all(len(values) == 1 for values in fingerprints.values()), fingerprints

    # The Alertmanager API: firing alerts without endsAt, then the resolved one with endsAt = end.
    api = _api_alerts(alertmanager)
    assert {path for path, _ in api} == {"/api/v2/alerts"}
    for alert_id, incident in incidents.items():
        sent = [alert for _, alert in api if alert["labels"]["alert_id"] == alert_id]
        assert sent, f"incident {alert_id} never reached the Alertmanager API"
        assert all(alert["startsAt"] == incident[0]["start"] for alert in sent)
        firing = [index for index, alert in enumerate(sent) if "endsAt" not in alert]
        ended = [index for index, alert in enumerate(sent) if "endsAt" in alert]
        assert firing, f"incident {alert_id} was never sent firing to the API"
        assert ended, f"incident {alert_id} was never sent resolved to the API"
        assert min(firing) < min(ended)
        assert all(sent[index]["endsAt"] == incident[-1]["end"] for index in ended)
        assert sent[-1]["labels"] == incident[-1]["labels"]

    # /metrics counts the events of the --alerts file by status.
    for status in ("firing", "update", "resolved"):
        count = sum(event["status"] == status for event in events)
        assert samples.get(("streamad_incident_events_total", (("status", status),)), 0) == count, status

    # Nothing is left pending in the outbox.
    assert main(["alerts", "list", "--outbox", str(outbox)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("id\t")
    assert len(listing) == 2, listing
    assert listing[-1] == f"0 pending, {2 * len(events)} delivered, 0 dead"

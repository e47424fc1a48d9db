"""`streamad run` against a real Kafka broker: /metrics and /healthz, and a model reloaded mid-stream.

Each test starts the daemon as a subprocess on a slice of NAB's machine-temperature series
with a few bad records and an injected spike, and reads its state over HTTP as Prometheus
would.
"""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon_support import free_port, serve_http, stop_http
from streamad.bundle import save_bundle
from streamad.engine.incidents import alert_id_for
from streamad.records import Record
from streamad.training import TrainConfig, train_bundle

pytestmark = pytest.mark.kafka

TRAIN_ROWS = 3400
STREAM_ROWS = slice(3400, 4400)
SPIKE_ROWS = slice(700, 706)
SERIES = "machine"
# Maximum seconds a test waits for the daemon to reach a state.
WAIT_S = 120.0
# --max-in-flight of the health test: two undelivered events pause the daemon.
MAX_IN_FLIGHT = 1
CONSUMER_OPTIONS = [
    "--session-timeout-ms", "6000",
    "--heartbeat-interval-ms", "2000",
    # Generous, so that a slow batch on a loaded machine does not make the consumer leave the group.
    "--max-poll-interval-ms", "30000",
    "--max-poll-records", "50",
]


def _train(machine_temperature, seed):
    # Short training runs: the tests check the plumbing, not the model's quality.
    config = TrainConfig(window=32, latent=2, hidden=16, epochs=3, patience=3, seed=seed)
    return train_bundle([machine_temperature.slice(0, TRAIN_ROWS)], config, progress=False)


@pytest.fixture(scope="module")
def bundles(machine_temperature, small_machine_bundle):
    # The session's model is _train(machine_temperature, seed=0). The test saves its copy, which
    # changes the bundle's version and path, so the shared object stays unchanged.
    return copy.deepcopy(small_machine_bundle), _train(machine_temperature, seed=1)


@pytest.fixture(scope="module")
def records(machine_temperature):
    """The stream's good records, with a spike that opens an incident."""
    stream = machine_temperature.slice(STREAM_ROWS.start, STREAM_ROWS.stop)
    values = stream.values.copy()
    values[SPIKE_ROWS] += 150.0
    return [Record(SERIES, int(stream.timestamps[i]), values[i]) for i in range(len(stream))]


BAD_RECORDS = [
    (b"{not json", "invalid_json"),
    (json.dumps({"series": SERIES, "timestamp": 1, "values": [1.0, 2.0]}).encode(), "wrong_channel_count"),
    (b'{"series": "machine", "timestamp": 1, "values": [NaN]}', "non_finite"),
    (b"[1, 2]", "not_object"),
]


def _start_daemon(tmp_path, bootstrap, model, topic, group_id, port, *options, log_name="daemon.log"):
    command = [
        sys.executable, "-m", "streamad", "--log-level", "INFO", "run",
        "--model", str(model), "--bootstrap-servers", bootstrap, "--topic", topic, "--group-id", group_id,
        "--alerts", str(tmp_path / "alerts.jsonl"), "--dead-letter", str(tmp_path / "dead.jsonl"),
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--checkpoint-interval-s", "1",
        "--metrics-port", str(port), *CONSUMER_OPTIONS, *options,
    ]
    log = open(tmp_path / log_name, "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _scrape(port):
    """Return {(name, sorted label items): value} from /metrics, or None while the server is not up."""
    try:
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
    except (urllib.error.URLError, ConnectionError):
        return None
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _wait_for(daemon, tmp_path, port, condition, what, log_name="daemon.log"):
    """Scrape /metrics until ``condition(samples)`` is true; fail with the daemon's log after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    samples = None
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"daemon exited with {daemon.returncode}; log:\n{_log(tmp_path, log_name)}"
        samples = _scrape(port)
        if samples is not None and condition(samples):
            return samples
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; last metrics: {samples}\nlog:\n{_log(tmp_path, log_name)}")


def _log(tmp_path, log_name="daemon.log"):
    return (tmp_path / log_name).read_text()[-4000:]


def _stop(daemon, tmp_path, log_name="daemon.log"):
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0, _log(tmp_path, log_name)


def _lag(samples, topic, partition):
    return samples.get(("streamad_consumer_lag_records", (("partition", str(partition)), ("topic", topic))))


def _model_version(samples):
    for (name, labels), _ in samples.items():
        if name == "streamad_model_info":
            return dict(labels)["version"]
    return None


class DelayingWebhook:
    """A webhook endpoint that delays its response to the first event of the spike until the test releases it.

    ``events`` lists every request body in arrival order, a retried event more than once.
    """

    def __init__(self, spike_start_ms):
        self.spike_start_ms = spike_start_ms
        self.held = threading.Event()
        self.release = threading.Event()
        self.events = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - fixed by BaseHTTPRequestHandler
                event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                webhook.events.append(event)
                if _epoch_ms(event["start"]) >= webhook.spike_start_ms and not webhook.held.is_set():
                    webhook.held.set()
                    webhook.release.wait(timeout=WAIT_S)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = serve_http(Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def close(self):
        self.release.set()
        stop_http(self.server)


def _paused(samples):
    return samples.get(("streamad_backpressure_paused", ())) == 1


def test_daemon_serves_metrics_and_health(kafka_bootstrap, new_topic, group_id, bundles, records, tmp_path):
    """Scrape /metrics and /healthz while backpressure pauses the daemon mid-stream, and at the end of the stream.

    The webhook delays its response to the spike's first event, so the outbox backlog exceeds
    --max-in-flight and the daemon pauses its partition. A paused daemon keeps polling, so
    /healthz stays 200 beyond --health-max-stall-s. The daemon has no synchronous sink that
    could stall its loop, so the 503 of a stalled loop is checked by the unit tests of
    tests/test_metrics.py (test_metrics_health_fails_after_stall and
    test_status_server_serves_metrics_and_health), not here.
    """
    from connectors.kafka import produce_records

    bundle_dir = tmp_path / "model"
    save_bundle(bundles[0], bundle_dir)
    topic = new_topic(1, prefix="metrics")
    payloads = records[:300] + [payload for payload, _ in BAD_RECORDS] + records[300:]
    acknowledged = produce_records(kafka_bootstrap, topic, payloads)
    last_offset = max(offset for _, offset in acknowledged)

    webhook = DelayingWebhook(records[SPIKE_ROWS.start].timestamp)
    port = free_port()
    max_stall_s = 5.0
    daemon = _start_daemon(
        tmp_path, kafka_bootstrap, bundle_dir, topic, group_id, port,
        "--webhook", webhook.url, "--outbox", str(tmp_path / "outbox.db"), "--webhook-timeout", str(int(WAIT_S) + 30),
        "--max-in-flight", str(MAX_IN_FLIGHT), "--health-max-stall-s", str(max_stall_s),
    )
    try:
        _wait_for(daemon, tmp_path, port, lambda samples: True, "the metrics server")
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200, body
        assert json.loads(body)["model_version"] == bundles[0].version

        # While the webhook delays its response to the spike's first event, the next events of the incident
        # raise the outbox backlog above --max-in-flight, and the daemon pauses in the middle of the stream.
        assert webhook.held.wait(timeout=WAIT_S), f"no event of the spike reached the webhook; log:\n{_log(tmp_path)}"
        paused = _wait_for(daemon, tmp_path, port, _paused, "the backpressure pause")
        assert paused[("streamad_outbox_backlog", ())] > MAX_IN_FLIGHT
        assert _lag(paused, topic, 0) > 0
        assert "sinks are slow, pausing consumption" in (tmp_path / "daemon.log").read_text()

        # Paused for longer than --health-max-stall-s, the daemon still polls, so it stays healthy and reads no record.
        records_at_pause = paused[("streamad_records_total", (("topic", topic),))]
        observed_until = time.monotonic() + 2 * max_stall_s
        while time.monotonic() < observed_until:
            status, body = _get(f"http://127.0.0.1:{port}/healthz")
            assert status == 200, f"/healthz returned {status} while the daemon was paused: {body}"
            time.sleep(0.5)
        still_paused = _scrape(port)
        assert _paused(still_paused), f"the pause ended while the webhook delayed an event; log:\n{_log(tmp_path)}"
        assert still_paused[("streamad_records_total", (("topic", topic),))] == records_at_pause
        assert _lag(still_paused, topic, 0) == _lag(paused, topic, 0)
        assert still_paused[("streamad_seconds_since_last_poll", ())] < max_stall_s
        webhook.release.set()

        samples = _wait_for(
            daemon, tmp_path, port,
            lambda samples: samples.get(("streamad_checkpoint_offset", (("partition", "0"), ("topic", topic)))) == last_offset
            and _lag(samples, topic, 0) == 0
            and samples.get(("streamad_outbox_backlog", ())) == 0
            and not _paused(samples),
            "the whole stream to be checkpointed and its events delivered",
        )
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200, body
        _stop(daemon, tmp_path)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        webhook.close()

    assert samples[("streamad_records_total", (("topic", topic),))] == len(payloads)
    windows = len(records) - 32 + 1
    assert samples[("streamad_windows_scored_total", ())] == windows
    dead_letters = {dict(labels)["reason"]: value for (name, labels), value in samples.items() if name == "streamad_dead_letters_total"}
    assert dead_letters == {reason: 1 for _, reason in BAD_RECORDS}
    events = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert events, "the spike raised no incident"
    by_status = {dict(labels)["status"]: value for (name, labels), value in samples.items() if name == "streamad_incident_events_total"}
    assert by_status == dict(Counter(event["status"] for event in events))
    delivered = {(event["alert_id"], event["sequence"]) for event in webhook.events}
    assert delivered == {(event["alert_id"], event["sequence"]) for event in events}
    assert samples[("streamad_batch_duration_seconds_count", ())] >= len(payloads) / 50
    assert samples[("streamad_batch_duration_seconds_bucket", (("le", "+Inf"),))] == samples[("streamad_batch_duration_seconds_count", ())]
    assert _model_version(samples) == bundles[0].version
    checkpoint_time = samples[("streamad_checkpoint_last_success_timestamp_seconds", (("partition", "0"), ("topic", topic)))]
    assert abs(checkpoint_time - time.time()) < WAIT_S
    assert samples[("streamad_uptime_seconds", ())] > 0
    log = (tmp_path / "daemon.log").read_text()
    assert "resuming consumption after" in log
    pauses = re.search(r"(\d+) backpressure pauses", log)
    assert pauses is not None, _log(tmp_path)
    assert int(pauses.group(1)) >= 1


def _write_half_bundle(bundle, target, staging):
    """Leave ``target`` as a copy in progress: the config and half of the weights, no metadata yet."""
    save_bundle(bundle, staging)
    target.mkdir()
    (target / "config.json").write_bytes((staging / "config.json").read_bytes())
    weights = (staging / "model.pt").read_bytes()
    (target / "model.pt").write_bytes(weights[: len(weights) // 2])


def test_daemon_reloads_model_mid_stream(kafka_bootstrap, new_topic, group_id, bundles, records, tmp_path):
    from connectors.kafka import produce_records

    old, new = bundles
    versions = tmp_path / "models"
    save_bundle(old, versions / "v1")
    topic = new_topic(1, prefix="reload")
    half = 500
    produce_records(kafka_bootstrap, topic, records[:half])

    port = free_port()
    daemon = _start_daemon(tmp_path, kafka_bootstrap, versions, topic, group_id, port, "--reload-interval-s", "1")
    try:
        _wait_for(
            daemon, tmp_path, port,
            lambda samples: samples.get(("streamad_records_total", (("topic", topic),))) == half,
            "the first half of the stream",
        )
        # A copy in progress is the newest version: it fails to load, and the daemon goes on with v1.
        _write_half_bundle(new, versions / "v2", tmp_path / "staging")
        _wait_for(
            daemon, tmp_path, port,
            lambda samples: samples.get(("streamad_model_reloads_total", (("result", "failed"),)), 0) >= 2,
            "two failed reloads of the half-written bundle",
        )
        save_bundle(new, versions / "v2")
        samples = _wait_for(
            daemon, tmp_path, port, lambda samples: _model_version(samples) == new.version, "the new model version"
        )
        assert samples[("streamad_model_reloads_total", (("result", "loaded"),))] == 1

        acknowledged = produce_records(kafka_bootstrap, topic, records[half:])
        last_offset = max(offset for _, offset in acknowledged)
        _wait_for(
            daemon, tmp_path, port,
            lambda samples: samples.get(("streamad_checkpoint_offset", (("partition", "0"), ("topic", topic)))) == last_offset,
            "the whole stream to be checkpointed",
        )
        _stop(daemon, tmp_path)
    finally:
        if daemon.poll() is None:
            daemon.kill()

    log = (tmp_path / "daemon.log").read_text()
    assert "cannot load model bundle" in log
    assert f"model swapped: {old.version} -> {new.version}" in log
    events = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    second_half_start = records[half].timestamp
    later = [event for event in events if _epoch_ms(event["timestamp"]) >= second_half_start]
    assert any(event["status"] == "firing" for event in later), "the spike raised no incident after the reload"
    assert all(event["model_version"] == new.version for event in later)
    assert all(event["model_version"] == old.version for event in events if event not in later)
    # An incident opened before the swap keeps the old model's alert id, also in events the new model scored.
    for event in events:
        start = _epoch_ms(event["start"])
        version = new.version if start >= second_half_start else old.version
        assert event["alert_id"] == alert_id_for(SERIES, start, version, event["score_name"])

    # A restart with the directory of versions loads v2 and restores the checkpoint it wrote.
    restart_log = "restart.log"
    daemon = _start_daemon(
        tmp_path, kafka_bootstrap, versions, topic, group_id, port, "--reload-interval-s", "1", log_name=restart_log
    )
    try:
        samples = _wait_for(
            daemon, tmp_path, port, lambda samples: "restored checkpoint" in _log(tmp_path, restart_log),
            "the restart to restore its checkpoint", log_name=restart_log,
        )
        assert _model_version(samples) == new.version
        _stop(daemon, tmp_path, restart_log)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert "checkpoint ignored" not in _log(tmp_path, restart_log)


def _epoch_ms(text):
    return int(np.datetime64(text.rstrip("Z"), "ms").astype(np.int64))

"""Webhook delivery through the outbox, against real HTTP(S) servers on 127.0.0.1 that fail on purpose.

A receiver counts an event as delivered once per (alert_id, sequence), which the sink also
sends as the Idempotency-Key header. A request that times out after it reached the receiver
is retried, so the receiver may get it twice. "Exactly once" below means exactly once after
that deduplication, with no event missing and the events of each alert in order.
"""

import json
import shutil
import ssl
import subprocess
import time

import pytest

import connectors.webhook as webhook
from connectors.outbox import Outbox
from daemon_support import Receiver, free_port
from connectors.webhook import RateLimiter, WebhookEndpoint, WebhookSink, backoff_delay, parse_retry_after
from streamad.alerts.signing import SIGNATURE_HEADER, SeenSignatures, verify
from streamad.cli import main
from streamad.cli.alerts import EXIT_DEAD_LETTERS

WAIT_S = 60.0
FAST = {"backoff_base_s": 0.05, "backoff_max_s": 0.3}


@pytest.fixture
def receivers():
    started = []

    def make(**options):
        receiver = Receiver(**options)
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.close()


@pytest.fixture
def sinks():
    started = []

    def make(*args, **options):
        options.setdefault("poll_interval_s", 0.1)
        sink = WebhookSink(*args, **options)
        started.append(sink)
        return sink

    yield make
    for sink in started:
        sink.close(drain_s=0)


def _events(alerts=3, per_alert=4):
    """Events of ``alerts`` incidents interleaved as a stream emits them: sequence 1 of each, then 2, ..."""
    return [
        {"alert_id": f"alert-{a}", "sequence": s, "status": "firing" if s == 1 else "update", "series": f"pump-{a}", "score": float(s)}
        for s in range(1, per_alert + 1)
        for a in range(alerts)
    ]


def _key(event):
    return f"{event['alert_id']}:{event['sequence']}"


def _wait_for(condition, description, timeout_s=WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {description}")


def _assert_delivered_once_in_order(receiver, events):
    keys = receiver.keys()
    first_seen = list(dict.fromkeys(keys))
    assert sorted(first_seen) == sorted(_key(event) for event in events)
    for alert_id in {event["alert_id"] for event in events}:
        sequences = [int(key.split(":")[1]) for key in first_seen if key.startswith(alert_id + ":")]
        assert sequences == sorted(sequences), f"{alert_id} arrived out of order: {sequences}"


def _send(sink, events):
    sink.send(events)
    sink.flush()


def test_sink_posts_each_event_as_json(receivers, sinks, tmp_path):
    receiver = receivers()
    sink = sinks([WebhookEndpoint("hook", receiver.url)], tmp_path / "outbox.db")
    events = _events()
    _send(sink, events)
    _wait_for(lambda: sink.backlog() == 0, "delivery")
    assert receiver.keys() == [_key(event) for event in events]
    headers, body = receiver.accepted[0]
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == events[0]
    assert SIGNATURE_HEADER not in headers


def test_sink_retries_server_errors(receivers, sinks, tmp_path):
    receiver = receivers(statuses=[500, 503, 502])
    sink = sinks([WebhookEndpoint("hook", receiver.url, **FAST)], tmp_path / "outbox.db")
    events = _events()
    _send(sink, events)
    _wait_for(lambda: sink.backlog() == 0, "delivery after 3 server errors")
    assert len(receiver.requests) == len(events) + 3
    assert receiver.keys() == [_key(event) for event in events]
    _assert_delivered_once_in_order(receiver, events)


def test_sink_retries_timed_out_request(receivers, sinks, tmp_path):
    receiver = receivers(delay_first=2, delay=1.5)
    endpoint = WebhookEndpoint("hook", receiver.url, read_timeout_s=0.3, **FAST)
    sink = sinks([endpoint], tmp_path / "outbox.db")
    events = _events()
    _send(sink, events)
    _wait_for(lambda: sink.backlog() == 0, "delivery after 2 timeouts")
    _assert_delivered_once_in_order(receiver, events)
    # The timed-out requests reached the receiver and were sent again, so the head event
    # arrived up to three times; every other event once.
    keys = receiver.keys()
    assert keys.count(_key(events[0])) <= 3
    assert all(keys.count(_key(event)) == 1 for event in events[1:])
    box = Outbox(tmp_path / "outbox.db")
    assert box.rows("delivered")[0].attempts == 3
    assert box.rows("dead") == []
    box.close()


def test_sink_waits_for_endpoint_that_is_down(receivers, sinks, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/alerts"
    sink = sinks([WebhookEndpoint("hook", url, connect_timeout_s=0.5, max_attempts=1000, **FAST)], tmp_path / "outbox.db")
    events = _events()
    _send(sink, events)
    box = Outbox(tmp_path / "outbox.db")
    _wait_for(lambda: box.pending("hook")[0].attempts >= 3, "three failed connection attempts")
    assert "connect failed" in box.pending("hook")[0].last_error
    box.close()
    receiver = receivers(port=port)
    _wait_for(lambda: sink.backlog() == 0, "delivery once the endpoint is up")
    assert receiver.keys() == [_key(event) for event in events]


def test_sink_honours_retry_after(receivers, sinks, tmp_path):
    receiver = receivers(statuses=[(429, {"Retry-After": "2"})])
    sink = sinks([WebhookEndpoint("hook", receiver.url, **FAST)], tmp_path / "outbox.db")
    _send(sink, _events(alerts=1, per_alert=1))
    _wait_for(lambda: sink.backlog() == 0, "delivery after HTTP 429")
    first, second = receiver.requests[0][0], receiver.requests[1][0]
    # Retry-After is whole seconds and the sender waits at least that long.
    assert second - first >= 1.9


def test_sink_moves_client_error_to_dead_letters(receivers, sinks, tmp_path):
    receiver = receivers(statuses=[404])
    sink = sinks([WebhookEndpoint("hook", receiver.url, **FAST)], tmp_path / "outbox.db")
    events = _events(alerts=1, per_alert=3)
    _send(sink, events)
    _wait_for(lambda: sink.backlog() == 0, "the queue to empty")
    box = Outbox(tmp_path / "outbox.db")
    dead = box.rows("dead")
    box.close()
    assert [(row.sequence, row.attempts) for row in dead] == [(1, 1)]
    assert dead[0].last_error.startswith("HTTP 404")
    assert receiver.keys() == [_key(event) for event in events[1:]]


@pytest.mark.parametrize("status", [408, 429])
def test_sink_retries_timeout_and_throttle_statuses(receivers, sinks, tmp_path, status):
    receiver = receivers(statuses=[status])
    sink = sinks([WebhookEndpoint("hook", receiver.url, **FAST)], tmp_path / "outbox.db")
    _send(sink, _events(alerts=1, per_alert=1))
    _wait_for(lambda: sink.backlog() == 0, f"delivery after HTTP {status}")
    assert receiver.keys() == ["alert-0:1"]


def test_max_attempts_then_retry_delivers(receivers, sinks, tmp_path, capsys):
    receiver = receivers(statuses=[500] * 3)
    path = tmp_path / "outbox.db"
    sink = sinks([WebhookEndpoint("hook", receiver.url, max_attempts=3, **FAST)], path)
    events = _events(alerts=1, per_alert=2)
    _send(sink, events)
    box = Outbox(path)
    _wait_for(lambda: box.counts()["dead"] == 1, "the first event to be dead")
    dead = box.rows("dead")[0]
    assert (dead.sequence, dead.attempts) == (1, 3)
    assert "gave up after 3 attempts, max_attempts=3" in dead.last_error
    _wait_for(lambda: sink.backlog() == 0, "the second event")
    assert receiver.keys() == ["alert-0:2"]

    assert main(["alerts", "retry", "--outbox", str(path), "--all"]) == 0
    assert "moved 1 dead letter(s)" in capsys.readouterr().out
    _wait_for(lambda: box.counts() == {"pending": 0, "delivered": 2, "dead": 0}, "delivery of the retried event")
    box.close()
    assert receiver.keys() == ["alert-0:2", "alert-0:1"]


def test_retried_row_passes_waiting_head(receivers, sinks, tmp_path, capsys):
    receiver = receivers(statuses=[404, (429, {"Retry-After": "3600"})])
    path = tmp_path / "outbox.db"
    sink = sinks([WebhookEndpoint("hook", receiver.url, **FAST)], path)
    first, second = _events(alerts=1, per_alert=2)
    box = Outbox(path)
    _send(sink, [first])
    _wait_for(lambda: box.counts()["dead"] == 1, "the first event to be dead")
    _send(sink, [second])
    _wait_for(lambda: len(receiver.requests) == 2, "the throttled attempt")
    assert main(["alerts", "retry", "--outbox", str(path), "--all"]) == 0
    # The retried row keeps its lower id, so it goes first although the head waits an hour.
    _wait_for(lambda: receiver.keys() == ["alert-0:1"], "delivery of the retried event", timeout_s=30)
    assert [row.sequence for row in box.pending("hook")] == [2]
    box.close()


def test_backlog_ignores_unconfigured_endpoint(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    box.add([("removed", event) for event in _events()])
    sink = WebhookSink([WebhookEndpoint("hook", "http://127.0.0.1:9/")], box, start=False)
    assert sink.backlog() == 0
    sink.close()
    box.close()


def test_max_age_moves_to_dead_letters(receivers, sinks, tmp_path):
    receiver = receivers(statuses=[500] * 100)
    # Full jitter can draw waits near zero, so only a high max_attempts leaves the age as the limit.
    endpoint = WebhookEndpoint("hook", receiver.url, max_age_s=0.5, max_attempts=1000, backoff_base_s=0.2, backoff_max_s=0.2)
    sink = sinks([endpoint], tmp_path / "outbox.db")
    _send(sink, _events(alerts=1, per_alert=1))
    box = Outbox(tmp_path / "outbox.db")
    _wait_for(lambda: box.counts()["dead"] == 1, "the event to be dead")
    dead = box.rows("dead")[0]
    box.close()
    assert "HTTP 500" in dead.last_error
    assert "max_age_s=0.5" in dead.last_error
    assert dead.attempts < 1000


def test_sink_ignores_reemitted_events(receivers, sinks, tmp_path):
    receiver = receivers()
    path = tmp_path / "outbox.db"
    events = _events()
    sink = sinks([WebhookEndpoint("hook", receiver.url)], path)
    _send(sink, events)
    _wait_for(lambda: sink.backlog() == 0, "delivery")
    sink.close()
    # A restarted daemon re-emits the events of the batches after its last commit.
    again = sinks([WebhookEndpoint("hook", receiver.url)], path)
    _send(again, events[:5])
    assert again.backlog() == 0
    assert receiver.keys() == [_key(event) for event in events]


def test_sink_delivers_to_every_endpoint(receivers, sinks, tmp_path):
    first, second = receivers(), receivers(statuses=[500])
    sink = sinks(
        [WebhookEndpoint("first", first.url, **FAST), WebhookEndpoint("second", second.url, **FAST)], tmp_path / "outbox.db"
    )
    events = _events()
    _send(sink, events)
    _wait_for(lambda: sink.backlog() == 0, "delivery to both endpoints")
    assert first.keys() == second.keys() == [_key(event) for event in events]


def test_backlog_counts_buffered_and_pending(tmp_path):
    sink = WebhookSink([WebhookEndpoint("a", "http://127.0.0.1:9/"), WebhookEndpoint("b", "http://127.0.0.1:9/")], tmp_path / "o.db", start=False)
    sink.send(_events(alerts=1, per_alert=2))
    assert sink.backlog() == 4
    sink.flush()
    assert sink.backlog() == 4
    assert sink.outbox.backlog() == 4
    sink.close()


def test_close_drains_then_keeps_rest(receivers, tmp_path):
    port = free_port()
    path = tmp_path / "outbox.db"
    endpoint = WebhookEndpoint("hook", f"http://127.0.0.1:{port}/", connect_timeout_s=0.5, max_attempts=1000, **FAST)
    sink = WebhookSink([endpoint], path, poll_interval_s=0.1)
    _send(sink, _events())
    started = time.monotonic()
    sink.close(drain_s=1.0)
    # The grace period plus at most one connect timeout in flight, with room for a slow machine.
    assert time.monotonic() - started < 10
    box = Outbox(path)
    assert box.backlog() == 12
    box.close()

    receiver = receivers(port=port)
    again = WebhookSink([WebhookEndpoint("hook", receiver.url, **FAST)], path, poll_interval_s=0.1)
    again.close(drain_s=WAIT_S)
    assert receiver.keys() == [_key(event) for event in _events()]


def test_signed_requests_verify(receivers, sinks, tmp_path):
    receiver = receivers()
    secret = "shared-secret"
    sink = sinks([WebhookEndpoint("hook", receiver.url, secret=secret)], tmp_path / "outbox.db")
    events = _events(alerts=1, per_alert=3)
    _send(sink, events)
    _wait_for(lambda: sink.backlog() == 0, "delivery")
    seen = SeenSignatures()
    for headers, body in receiver.accepted:
        verify(body, headers, secret, seen=seen)
    headers, body = receiver.accepted[0]
    assert headers[SIGNATURE_HEADER].startswith("sha256=")
    with pytest.raises(ValueError, match="replay"):
        verify(body, headers, secret, seen=seen)


def test_send_command_delivers_pending(receivers, tmp_path, capsys):
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    receiver = receivers()
    box.add([(receiver.url, event) for event in _events()])
    box.close()
    assert main(["alerts", "send", "--outbox", str(path), "--webhook", receiver.url, "--timeout-s", "60"]) == 0
    assert "every pending event" in capsys.readouterr().out
    assert receiver.keys() == [_key(event) for event in _events()]


@pytest.mark.parametrize("rejected", [1, 12])
def test_send_command_fails_on_dead_letters(receivers, tmp_path, capsys, rejected):
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    receiver = receivers(statuses=[400] * rejected)
    events = _events()
    box.add([(receiver.url, event) for event in events])
    box.close()

    code = main(["alerts", "send", "--outbox", str(path), "--webhook", receiver.url, "--timeout-s", "60"])

    assert code == EXIT_DEAD_LETTERS
    output = capsys.readouterr().out
    assert f"{len(events) - rejected} delivered, {rejected} moved to the dead letters, 0 still pending" in output
    box = Outbox(path)
    assert box.dead_count() == rejected
    assert box.backlog() == 0
    box.close()


def test_rate_limit_holds_excess_events(receivers, sinks, tmp_path):
    receiver = receivers()
    sink = sinks([WebhookEndpoint("hook", receiver.url, rate_limit_per_minute=2)], tmp_path / "outbox.db")
    _send(sink, _events(alerts=1, per_alert=3))
    _wait_for(lambda: len(receiver.keys()) == 2, "two deliveries")
    time.sleep(0.5)
    assert receiver.keys() == ["alert-0:1", "alert-0:2"]
    assert sink.backlog() == 1


def test_rate_limiter_window():
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert limiter.delay(3) == 0
    limiter.record(2)
    now[0] = 10.0
    limiter.record(1)
    assert limiter.delay(1) == pytest.approx(50.0)
    assert limiter.delay(2) == pytest.approx(50.0)
    now[0] = 60.0
    assert limiter.delay(2) == 0
    assert limiter.delay(3) == pytest.approx(10.0)
    assert RateLimiter(0).delay(1000) == 0


def test_backoff_delay_bounds():
    delays = [backoff_delay(attempt, 0.5, 4.0) for attempt in range(1, 10) for _ in range(50)]
    assert min(delays) >= 0
    assert max(delays) <= 4.0
    assert max(backoff_delay(1, 0.5, 4.0) for _ in range(200)) <= 0.5
    assert backoff_delay(10_000, 0.5, 4.0) <= 4.0


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_alertmanager_groups_events_by_series(receivers, sinks, tmp_path, monkeypatch):
    calls = []

    def fake_payload(events, *, receiver="streamad", group_labels=None, external_url=""):
        calls.append((list(events), receiver, dict(group_labels or {})))
        return {"version": "4", "alerts": [event["alert_id"] + ":" + str(event["sequence"]) for event in events]}

    monkeypatch.setattr(webhook.payloads, "alertmanager_webhook_payload", fake_payload)
    receiver = receivers()
    endpoint = WebhookEndpoint("am", receiver.url, format="alertmanager", group_by="series", group_wait_s=0.5)
    sink = sinks([endpoint], tmp_path / "outbox.db")
    events = _events(alerts=2, per_alert=3)
    _send(sink, events)
    _wait_for(lambda: sink.backlog() == 0, "grouped delivery")
    bodies = [json.loads(body)["alerts"] for _, body in receiver.accepted]
    assert bodies == [["alert-0:1", "alert-0:2", "alert-0:3"], ["alert-1:1", "alert-1:2", "alert-1:3"]]
    assert [(receiver_name, labels) for _, receiver_name, labels in calls] == [("am", {"series": "pump-0"}), ("am", {"series": "pump-1"})]


def test_alertmanager_payload_error_goes_dead(receivers, sinks, tmp_path, monkeypatch):
    def broken(events, **options):
        raise NotImplementedError("not built yet")

    monkeypatch.setattr(webhook.payloads, "alertmanager_webhook_payload", broken)
    receiver = receivers()
    sink = sinks([WebhookEndpoint("am", receiver.url, format="alertmanager")], tmp_path / "outbox.db")
    _send(sink, _events(alerts=1, per_alert=1))
    _wait_for(lambda: sink.backlog() == 0, "the event to leave the queue")
    box = Outbox(tmp_path / "outbox.db")
    assert "cannot be built" in box.rows("dead")[0].last_error
    box.close()
    assert receiver.requests == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "127.0.0.1:80", "http://"])
def test_endpoint_rejects_non_http_url(url):
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookEndpoint("hook", url)


def test_sink_rejects_duplicate_names(tmp_path):
    with pytest.raises(ValueError, match="used twice"):
        WebhookSink([WebhookEndpoint("a", "http://127.0.0.1:9/"), WebhookEndpoint("a", "http://127.0.0.1:8/")], tmp_path / "o.db", start=False)


def _make_certificate(directory, name):
    """Write a self-signed certificate for 127.0.0.1 and its key with the openssl binary; return their paths."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
def certificates(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl binary is needed to make test certificates")
    server = _make_certificate(tmp_path, "server")
    client = _make_certificate(tmp_path, "client")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*server)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client[0])
    return server, client, context


def test_https_with_client_certificate(receivers, sinks, tmp_path, certificates):
    server, client, context = certificates
    receiver = receivers(ssl_context=context)
    endpoint = WebhookEndpoint("tls", receiver.url, ca_file=str(server[0]), cert_file=str(client[0]), key_file=str(client[1]))
    sink = sinks([endpoint], tmp_path / "outbox.db")
    _send(sink, _events(alerts=1, per_alert=2))
    _wait_for(lambda: sink.backlog() == 0, "delivery over https")
    assert receiver.keys() == ["alert-0:1", "alert-0:2"]


@pytest.mark.parametrize("missing", ["ca", "client certificate"])
def test_https_rejects_unverified_peer(receivers, sinks, tmp_path, certificates, missing):
    server, client, context = certificates
    receiver = receivers(ssl_context=context)
    options = {"ca_file": str(server[0])} if missing == "client certificate" else {"cert_file": str(client[0]), "key_file": str(client[1])}
    sink = sinks([WebhookEndpoint("tls", receiver.url, **options, **FAST)], tmp_path / "outbox.db")
    _send(sink, _events(alerts=1, per_alert=1))
    box = Outbox(tmp_path / "outbox.db")
    _wait_for(lambda: box.pending("tls")[0].attempts >= 1, "a failed attempt")
    error = box.pending("tls")[0].last_error
    box.close()
    assert "failed" in error
    assert receiver.accepted == []


@pytest.mark.parametrize("tls_version", ["TLSv1_2", "TLSv1_3"])
def test_https_missing_client_certificate_reason(receivers, sinks, tmp_path, certificates, tls_version):
    server, _, context = certificates
    # TLS 1.2 fails the handshake in connect(), and TLS 1.3 reports the rejection at the first write or read.
    context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, tls_version)
    receiver = receivers(ssl_context=context)
    path = tmp_path / "outbox.db"
    sink = sinks([WebhookEndpoint("tls", receiver.url, ca_file=str(server[0]), max_attempts=1, **FAST)], path)
    _send(sink, _events(alerts=1, per_alert=1))
    box = Outbox(path)
    _wait_for(lambda: box.counts()["dead"] == 1, "the event to be dead")
    reason = box.rows("dead")[0].last_error
    box.close()

    assert reason.startswith("TLS handshake failed (")
    assert "the server may require a client certificate" in reason
    assert "endpoint 'tls' has none: set cert_file and key_file for it" in reason
    # The original error stays in the reason.
    assert " failed: SSL" in reason or "failed: ConnectionResetError" in reason
    assert "gave up after 1 attempts, max_attempts=1" in reason
    assert receiver.accepted == []


def test_endpoint_rejects_missing_ca_file(tmp_path):
    with pytest.raises(ValueError, match="TLS files cannot be loaded"):
        WebhookEndpoint("tls", "https://127.0.0.1:9/", ca_file=str(tmp_path / "none.pem"))

"""The daemon's Prometheus metrics, their text format, the health check and the status server."""

import json
import socket
import urllib.error
import urllib.request
from collections import Counter
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.http_status import StatusServer, check_listen_address
from streamad.engine.runner import RunStats
from streamad.metrics import CONTENT_TYPE, DaemonMetrics


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _samples(metrics):
    """Return {(sample name, sorted label items): value} of the rendered text, parsed back."""
    text = metrics.render().decode()
    parsed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def _messages(*topics):
    return [SimpleNamespace(topic=topic) for topic in topics]


def _stats(points=0, events=None, dead_letters=None):
    stats = RunStats()
    stats.points = points
    stats.events_by_status = Counter(events or {})
    stats.dead_letters = Counter(dead_letters or {})
    return stats


def test_metrics_count_increases_once():
    clock = FakeClock()
    metrics = DaemonMetrics(max_stall_s=10, clock=clock)
    stats = _stats(points=5, events={"firing": 1}, dead_letters={"invalid_json": 2})
    metrics.observe_loop(polled_at=clock(), messages=_messages("a", "a", "b"), stats=stats, batch_seconds=0.2, lag=None)
    stats = _stats(points=12, events={"firing": 1, "resolved": 1}, dead_letters={"invalid_json": 2, "non_finite": 1})
    metrics.observe_loop(polled_at=clock(), messages=_messages("a"), stats=stats, batch_seconds=0.02, lag=None)
    # An empty poll adds nothing.
    metrics.observe_loop(polled_at=clock(), messages=[], stats=stats, batch_seconds=None, lag=None)

    samples = _samples(metrics)
    assert samples[("streamad_records_total", (("topic", "a"),))] == 3
    assert samples[("streamad_records_total", (("topic", "b"),))] == 1
    assert samples[("streamad_windows_scored_total", ())] == 12
    assert samples[("streamad_incident_events_total", (("status", "firing"),))] == 1
    assert samples[("streamad_incident_events_total", (("status", "resolved"),))] == 1
    assert samples[("streamad_dead_letters_total", (("reason", "invalid_json"),))] == 2
    assert samples[("streamad_dead_letters_total", (("reason", "non_finite"),))] == 1
    assert samples[("streamad_batch_duration_seconds_count", ())] == 2
    assert samples[("streamad_batch_duration_seconds_bucket", (("le", "0.025"),))] == 1
    assert samples[("streamad_batch_duration_seconds_bucket", (("le", "0.25"),))] == 2
    assert samples[("streamad_batch_duration_seconds_sum", ())] == pytest.approx(0.22)


def test_metrics_text_has_help_and_type_lines():
    metrics = DaemonMetrics(max_stall_s=10)
    metrics.observe_loop(polled_at=metrics.clock(), messages=_messages("a"), stats=_stats(), batch_seconds=0.1, lag=None)
    lines = metrics.render().decode().splitlines()
    for name, kind in [
        ("streamad_records_total", "counter"),
        ("streamad_windows_scored_total", "counter"),
        ("streamad_consumer_lag_records", "gauge"),
        ("streamad_batch_duration_seconds", "histogram"),
        ("streamad_model_info", "gauge"),
        ("streamad_uptime_seconds", "gauge"),
    ]:
        assert f"# TYPE {name} {kind}" in lines
        assert any(line.startswith(f"# HELP {name} ") for line in lines)
    assert not any("_created" in line for line in lines)


def test_metrics_escape_label_values():
    metrics = DaemonMetrics(max_stall_s=10)
    path = 'models/a "quoted" dir\\with\nnewline'
    metrics.set_model("abc123", path)
    text = metrics.render().decode()
    assert 'path="models/a \\"quoted\\" dir\\\\with\\nnewline"' in text
    samples = _samples(metrics)
    assert samples[("streamad_model_info", (("path", path), ("version", "abc123")))] == 1


def test_metrics_model_info_replaced_on_swap():
    metrics = DaemonMetrics(max_stall_s=10)
    metrics.set_model("old", "m/old")
    metrics.set_model("new", "m/new")
    info = [key for key in _samples(metrics) if key[0] == "streamad_model_info"]
    assert info == [("streamad_model_info", (("path", "m/new"), ("version", "new")))]


def test_metrics_lag_drops_revoked_partitions():
    metrics = DaemonMetrics(max_stall_s=10)
    lags = {("t", 0): 7, ("t", 1): 0}
    metrics.observe_loop(polled_at=metrics.clock(), messages=[], stats=_stats(), batch_seconds=None, lag=lambda: lags)
    samples = _samples(metrics)
    assert samples[("streamad_consumer_lag_records", (("partition", "0"), ("topic", "t")))] == 7
    assert samples[("streamad_consumer_lag_records", (("partition", "1"), ("topic", "t")))] == 0

    lags = {("t", 1): 3}
    metrics.observe_loop(polled_at=metrics.clock(), messages=[], stats=_stats(), batch_seconds=None, lag=lambda: lags)
    samples = _samples(metrics)
    assert ("streamad_consumer_lag_records", (("partition", "0"), ("topic", "t"))) not in samples
    assert samples[("streamad_consumer_lag_records", (("partition", "1"), ("topic", "t")))] == 3


def test_metrics_checkpoint_time_from_file(tmp_path):
    metrics = DaemonMetrics(max_stall_s=10)
    path = tmp_path / "t.0.npz"
    path.write_bytes(b"x")
    mtime = path.stat().st_mtime
    metrics.observe_loop(
        polled_at=metrics.clock(), messages=[], stats=_stats(), batch_seconds=None, lag=None,
        checkpoints={("t", 0): 41}, checkpoint_path=lambda topic, partition: tmp_path / f"{topic}.{partition}.npz",
    )
    samples = _samples(metrics)
    labels = (("partition", "0"), ("topic", "t"))
    assert samples[("streamad_checkpoint_last_success_timestamp_seconds", labels)] == pytest.approx(mtime)
    assert samples[("streamad_checkpoint_offset", labels)] == 41

    metrics.observe_loop(polled_at=metrics.clock(), messages=[], stats=_stats(), batch_seconds=None, lag=None, checkpoints={})
    assert ("streamad_checkpoint_offset", labels) not in _samples(metrics)


def test_metrics_backpressure_gauges():
    metrics = DaemonMetrics(max_stall_s=10)
    samples = _samples(metrics)
    assert samples[("streamad_backpressure_paused", ())] == 0
    assert samples[("streamad_outbox_backlog", ())] == 0

    metrics.observe_backpressure(paused=True, backlog=12)
    samples = _samples(metrics)
    assert samples[("streamad_backpressure_paused", ())] == 1
    assert samples[("streamad_outbox_backlog", ())] == 12

    metrics.observe_backpressure(paused=False, backlog=3)
    samples = _samples(metrics)
    assert samples[("streamad_backpressure_paused", ())] == 0
    assert samples[("streamad_outbox_backlog", ())] == 3


def test_metrics_count_dropped_windows():
    metrics = DaemonMetrics(max_stall_s=10)
    metrics.observe_engine(Counter(windows_skipped_gap=2, windows_dropped_non_finite_score=1, windows_scored=50))
    metrics.observe_engine(Counter(windows_skipped_gap=5, windows_dropped_non_finite_score=1, windows_scored=90))
    samples = _samples(metrics)
    assert samples[("streamad_windows_dropped_total", (("reason", "gap"),))] == 5
    assert samples[("streamad_windows_dropped_total", (("reason", "non_finite_score"),))] == 1


def test_metrics_health_fails_after_stall():
    clock = FakeClock()
    metrics = DaemonMetrics(max_stall_s=5, clock=clock)
    clock.now += 4
    healthy, body = metrics.health()
    assert healthy
    assert body["status"] == "ok"

    clock.now += 2
    healthy, body = metrics.health()
    assert not healthy
    assert body["status"] == "stalled"
    assert body["seconds_since_last_poll"] == pytest.approx(6)

    metrics.observe_loop(polled_at=clock(), messages=[], stats=_stats(), batch_seconds=None, lag=None)
    assert metrics.health()[0]
    assert _samples(metrics)[("streamad_seconds_since_last_poll", ())] == 0


def test_metrics_reject_nonpositive_stall():
    with pytest.raises(ValueError, match="health-max-stall-s"):
        DaemonMetrics(max_stall_s=0)


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_status_server_serves_metrics_and_health():
    clock = FakeClock()
    metrics = DaemonMetrics(max_stall_s=5, clock=clock)
    metrics.set_model("abc123", "models/pump")
    with StatusServer("127.0.0.1", 0, metrics.render, metrics.health, CONTENT_TYPE) as server:
        base = f"http://127.0.0.1:{server.port}"
        status, content_type, body = _get(base + "/metrics")
        assert status == 200
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        names = {family.name for family in text_string_to_metric_families(body.decode())}
        assert "streamad_model_info" in names

        status, content_type, body = _get(base + "/healthz")
        assert status == 200
        assert content_type == "application/json"
        assert json.loads(body)["model_version"] == "abc123"

        clock.now += 6
        status, _, body = _get(base + "/healthz")
        assert status == 503
        assert json.loads(body)["status"] == "stalled"

        status, _, _ = _get(base + "/other")
        assert status == 404


def _head(port, path):
    """Send HEAD over a raw socket; return (status, headers, bytes after the headers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"HEAD {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, rest


def test_status_server_answers_head_and_trailing_slash():
    metrics = DaemonMetrics(max_stall_s=5)
    metrics.set_model("abc123", "models/pump")
    with StatusServer("127.0.0.1", 0, metrics.render, metrics.health, CONTENT_TYPE) as server:
        for path in ("/healthz", "/healthz/", "/metrics", "/metrics/"):
            status, headers, rest = _head(server.port, path)
            assert status == 200, path
            assert int(headers["Content-Length"]) > 0, path
            assert rest == b"", path

        base = f"http://127.0.0.1:{server.port}"
        status, content_type, body = _get(base + "/healthz/")
        assert status == 200
        assert json.loads(body)["model_version"] == "abc123"
        status, _, _ = _get(base + "/metrics/?name=x")
        assert status == 200

        status, _, rest = _head(server.port, "/other")
        assert status == 404
        assert rest == b""
        status, _, _ = _get(base + "/")
        assert status == 404


def test_status_server_over_ipv6_loopback():
    metrics = DaemonMetrics(max_stall_s=5)
    try:
        server = StatusServer("::1", 0, metrics.render, metrics.health, CONTENT_TYPE)
    except OSError as error:
        pytest.skip(f"no IPv6 loopback on this machine: {error}")
    with server:
        status, _, _ = _get(f"http://[::1]:{server.port}/healthz")
        assert status == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_listen_address_accepts_loopback(host):
    check_listen_address(host, allow_remote=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "metrics.example"])
def test_listen_address_rejects_remote(host):
    with pytest.raises(ValueError, match="--metrics-allow-remote"):
        check_listen_address(host, allow_remote=False)
    check_listen_address(host, allow_remote=True)


# --- the run options ---


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import numpy as np

    from streamad.bundle import save_bundle
    from streamad.data import Series
    from streamad.training import TrainConfig, train_bundle

    t = np.arange(200)
    series = Series("sine", t * 60_000, np.sin(t / 6.0)[:, None], ["value"], True)
    bundle = train_bundle([series], TrainConfig(window=8, latent=1, hidden=8, epochs=1, seed=0), progress=False)
    directory = tmp_path_factory.mktemp("model")
    save_bundle(bundle, directory)
    return directory


def _run_arguments(model, *options):
    # Port 1 of the loopback address has no broker, but the options are checked before any connection.
    return ["run", "--model", str(model), "--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--group-id", "g", "--stdout", *options]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--metrics-port", "9464", "--metrics-address", "0.0.0.0"], "--metrics-allow-remote"),
        (["--metrics-port", "70000"], "--metrics-port 70000 is invalid"),
        (["--health-max-stall-s", "0"], "--health-max-stall-s 0.0 is invalid"),
        (["--reload-interval-s", "-1"], "--reload-interval-s -1.0 is invalid"),
    ],
)
def test_run_rejects_invalid_status_options(tiny_model, capsys, options, message):
    from streamad.cli import main

    assert main(_run_arguments(tiny_model, *options)) == 2
    assert message in capsys.readouterr().err


def test_run_options_in_config_file(tmp_path):
    from streamad.cli import build_parser
    from streamad.cli.config import load_run_config

    path = tmp_path / "run.toml"
    path.write_text(
        "[run]\nmetrics_port = 9464\nmetrics_address = \"::1\"\nmetrics_allow_remote = false\n"
        "health_max_stall_s = 30\nreload_interval_s = 10.5\n"
    )
    values = load_run_config(path, build_parser().run_parser, environ={})
    assert values == {
        "metrics_port": 9464,
        "metrics_address": "::1",
        "metrics_allow_remote": False,
        "health_max_stall_s": 30.0,
        "reload_interval_s": 10.5,
    }

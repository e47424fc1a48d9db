"""Start-up checks of `streamad run` and `streamad config check`: outputs, numbers, headers, Kafka and messages.

Every check here runs before the model bundle is loaded, so the tests use a model path that
does not exist: a test that reached the bundle would fail with "not found" instead.
"""

import io
import logging
import socket
import sys

import pytest

from connectors.kafka import KafkaSourceConfig
from connectors.outbox import Outbox, OutboxError
from connectors.webhook import EndpointSender, WebhookEndpoint
from streamad.alerts.severity import AlertContent
from streamad.cli import build_parser, main
from streamad.cli.config import ConfigError, load_run_config

KAFKA = ["--bootstrap-servers", "127.0.0.1:9", "--topic", "t", "--group-id", "g"]


def _run(tmp_path, *options):
    return main(["run", "--model", str(tmp_path / "no-model"), *KAFKA, *options])


def _check(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(
        f"""
[run]
model = "{tmp_path / 'no-model'}"
bootstrap_servers = "127.0.0.1:9092"
topic = ["metrics"]
group_id = "streamad"
stdout = true
{text}
"""
    )
    return main(["config", "check", str(path)])


def _last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("first", "second"),
    [("alerts", "outbox"), ("alerts", "scores"), ("alerts", "dead-letter"), ("scores", "dead-letter"), ("dead-letter", "outbox")],
)
def test_run_rejects_shared_output_file(tmp_path, monkeypatch, capsys, first, second):
    monkeypatch.chdir(tmp_path)
    # One relative and one absolute spelling of the same file.
    assert _run(tmp_path, f"--{first}", "c.db", f"--{second}", str(tmp_path / "c.db")) == 2
    error = _last_error(capsys)
    assert f"--{first} and --{second} are the same file" in error
    assert "c.db" in error
    assert "give them different paths" in error


def test_replay_rejects_shared_output_file(tmp_path, capsys):
    argv = ["replay", "--model", str(tmp_path / "no-model"), "--data", "d.csv", "--scores", str(tmp_path / "x")]
    assert main([*argv, "--alerts", str(tmp_path / "y"), "--dead-letter", str(tmp_path / "x")]) == 2
    assert "--scores and --dead-letter are the same file" in _last_error(capsys)


def test_config_check_rejects_shared_output_file(tmp_path, capsys):
    text = f'alerts = "{tmp_path / "c.db"}"\noutbox = "{tmp_path / "sub" / ".." / "c.db"}"'
    assert _check(tmp_path, text) == 2
    assert "--alerts and --outbox are the same file" in _last_error(capsys)


@pytest.mark.parametrize(
    "option",
    [
        "--webhook-timeout", "--checkpoint-interval-s", "--retry-backoff-max-s", "--webhook-max-age-s",
        "--webhook-backoff-base-s", "--webhook-backoff-max-s", "--webhook-drain-s", "--health-max-stall-s",
        "--alertmanager-resend-s", "--alertmanager-timeout-s", "--reload-interval-s", "--outbox-keep-delivered-s",
    ],
)
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_run_rejects_non_finite_seconds(tmp_path, capsys, option, value):
    assert _run(tmp_path, "--stdout", f"{option}={value}") == 2
    error = _last_error(capsys)
    assert f"{option} {float(value)!r} is invalid" in error
    assert "use a finite number" in error


@pytest.mark.parametrize("line", ["webhook_timeout = inf", "checkpoint_interval_s = nan", "webhook-drain-s = -inf"])
def test_config_check_rejects_non_finite_without_webhook(tmp_path, capsys, line):
    assert _check(tmp_path, line) == 2
    assert "is invalid; use a finite number" in _last_error(capsys)


def test_environment_rejects_non_finite_number():
    parser = build_parser()
    with pytest.raises(ConfigError, match="STREAMAD_RUN_WEBHOOK_TIMEOUT='inf' is invalid; use a finite number"):
        load_run_config(None, parser.run_parser, environ={"STREAMAD_RUN_WEBHOOK_TIMEOUT": "inf"})


def test_webhook_table_rejects_non_finite_timeout(tmp_path, capsys):
    text = f'outbox = "{tmp_path / "o.db"}"\n[webhooks.pager]\nurl = "http://127.0.0.1:1/hook"\ntimeout_s = inf'
    assert _check(tmp_path, text) == 2
    assert "[webhooks.pager]: timeout_s = inf is invalid; use a finite number" in _last_error(capsys)


@pytest.mark.parametrize("key", ["connect_timeout_s", "read_timeout_s", "max_age_s", "backoff_max_s", "group_wait_s"])
def test_endpoint_rejects_infinite_seconds(key):
    with pytest.raises(ValueError, match=f"{key}=inf is invalid"):
        WebhookEndpoint(name="e", url="http://127.0.0.1:1/", **{key: float("inf")})


@pytest.mark.parametrize("name", ["Bad Header", "X-Test:", "", "X(1)", "Ünicode"])
def test_endpoint_rejects_header_name(name):
    with pytest.raises(ValueError, match="use an HTTP token"):
        WebhookEndpoint(name="e", url="http://127.0.0.1:1/", headers={name: "x"})


@pytest.mark.parametrize("value", ["a\r\nInjected: 1", "a\nb", "a\x00", "a\x7f"])
def test_endpoint_rejects_header_control_character(value):
    with pytest.raises(ValueError, match="without CR, LF or other control characters"):
        WebhookEndpoint(name="e", url="http://127.0.0.1:1/", headers={"X-Test": value})


def test_endpoint_accepts_token_header_with_tab():
    endpoint = WebhookEndpoint(name="e", url="http://127.0.0.1:1/", headers={"X-Team_1.b!": "a\tb c"})
    assert endpoint.headers == {"X-Team_1.b!": "a\tb c"}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ('{ "Bad Header" = "x" }', "header name 'Bad Header' is invalid"),
        ('{ "X-Test" = "a\\r\\nInjected: 1" }', "value of header 'X-Test' is invalid"),
    ],
)
def test_config_check_rejects_invalid_header(tmp_path, capsys, headers, message):
    text = f'outbox = "{tmp_path / "o.db"}"\n[webhooks.pager]\nurl = "http://127.0.0.1:1/hook"\nheaders = {headers}'
    assert _check(tmp_path, text) == 2
    error = _last_error(capsys)
    assert "webhook endpoint 'pager'" in error
    assert message in error


def test_sender_moves_unsendable_request_to_dead_letters(tmp_path, caplog):
    # A listening socket is enough: http.client rejects the header after connecting, before sending.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        endpoint = WebhookEndpoint(name="e", url=f"http://127.0.0.1:{port}/hook")
        endpoint.headers["X-Test"] = "a\r\nInjected: 1"  # set after the constructor, which rejects it
        outbox = Outbox(tmp_path / "outbox.db")
        try:
            outbox.add([("e", {"alert_id": "a1", "sequence": 1, "status": "firing", "series": "s"})])
            sender = EndpointSender(endpoint, outbox)
            with caplog.at_level(logging.ERROR, logger="connectors.webhook"):
                sender._deliver(outbox.pending("e"))
            assert outbox.pending("e") == []
            (dead,) = outbox.rows("dead")
            assert "request cannot be sent" in dead.last_error
            assert "Invalid header value" in dead.last_error
            assert sender.dead == 1
            errors = [record for record in caplog.records if record.levelno == logging.ERROR]
            assert len(errors) == 1
            assert errors[0].exc_info is None
        finally:
            outbox.close()


@pytest.mark.parametrize("servers", ["notahostport", "kafka:", ":9092", "kafka:0", "kafka:65536", "kafka:x", "a:9092,b", "", "a b:9092"])
def test_source_config_rejects_bootstrap_servers(servers):
    with pytest.raises(ValueError, match="use HOST:PORT"):
        KafkaSourceConfig(bootstrap_servers=servers, topics=["t"], group_id="g")


@pytest.mark.parametrize("servers", ["kafka:9092", "a:1,b:65535", " a:9092 , b:9093", "[::1]:9092", ["a:9092", "b:9092"]])
def test_source_config_accepts_bootstrap_servers(servers):
    KafkaSourceConfig(bootstrap_servers=servers, topics=["t"], group_id="g")


def test_run_rejects_bootstrap_without_port_at_once(tmp_path, capsys):
    argv = ["run", "--model", str(tmp_path / "no-model"), "--bootstrap-servers", "notahostport", "--topic", "t", "--group-id", "g", "--stdout"]
    assert main(argv) == 2
    assert "bootstrap server 'notahostport'" in _last_error(capsys)


def test_heartbeat_at_most_third_of_session():
    KafkaSourceConfig(bootstrap_servers="k:9092", topics=["t"], group_id="g", session_timeout_ms=6000, heartbeat_interval_ms=2000)
    with pytest.raises(ValueError, match="heartbeat_interval_ms=2001 is more than a third of session_timeout_ms=6000; use at most 2000"):
        KafkaSourceConfig(bootstrap_servers="k:9092", topics=["t"], group_id="g", session_timeout_ms=6000, heartbeat_interval_ms=2001)


def test_config_check_rejects_heartbeat_above_third(tmp_path, capsys):
    assert _check(tmp_path, "heartbeat_interval_ms = 9000") == 2
    assert "heartbeat_interval_ms=9000 is more than a third of session_timeout_ms=10000" in _last_error(capsys)


def test_config_file_rejects_option_set_twice(tmp_path, capsys):
    assert _check(tmp_path, "max-poll-records = 5\nmax_poll_records = 600") == 2
    error = _last_error(capsys)
    assert "sets max_poll_records twice, as 'max-poll-records' and 'max_poll_records'" in error
    assert "keep one of them" in error


@pytest.mark.parametrize(("text", "expected"), [("yes", True), ("TRUE", True), ("1", True), ("on", True), ("off", False), ("No", False)])
def test_environment_flag_accepts_documented_words(text, expected):
    parser = build_parser()
    values = load_run_config(None, parser.run_parser, environ={"STREAMAD_RUN_PER_SERIES_THRESHOLD": text})
    assert values["per_series_threshold"] is expected


def test_environment_flag_rejects_other_word():
    parser = build_parser()
    with pytest.raises(ConfigError, match=r"'maybe' is invalid; use true or false \(1, true, yes, on, 0, false, no, off are accepted\)"):
        load_run_config(None, parser.run_parser, environ={"STREAMAD_RUN_PER_SERIES_THRESHOLD": "maybe"})


def test_config_check_names_directory(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path)]) == 2
    error = _last_error(capsys)
    assert f"config file {str(tmp_path)!r} is a directory; pass a TOML file" in error
    assert "Errno" not in error


def test_request_timeout_message_has_unit(tmp_path, capsys):
    assert _run(tmp_path, "--stdout", "--request-timeout-ms", "-1") == 2
    assert "--request-timeout-ms -1 is invalid; use more than 500 ms" in _last_error(capsys)


def test_corrupt_outbox_names_next_step(tmp_path):
    path = tmp_path / "bad.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(OutboxError, match="file is not a database; move the file aside and restart"):
        Outbox(path)


def test_alerts_list_broken_pipe_is_quiet(tmp_path, monkeypatch, capsys):
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    box.add([("hook", {"alert_id": "a1", "sequence": n, "status": "firing", "series": "s"}) for n in range(1, 4)])
    box.close()

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["alerts", "list", "--outbox", str(path)]) == 1
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{score:>99999999999}", "width or precision 99999999999; use at most 1000"),
        ("{score:.5000f}", "width or precision 5000"),
        ("{score:{series}}", "placeholder inside a format spec"),
        ("{score:d}", "cannot be rendered for a sample event"),
        ("{series:.3f}", "cannot be rendered for a sample event"),
    ],
)
def test_annotation_template_rejected_at_start(template, message):
    with pytest.raises(ValueError, match=message):
        AlertContent(annotations={"x": template})


def test_annotation_template_with_bounded_width_renders():
    content = AlertContent(annotations={"x": "{series:>20} {score:08.3f} {top_channels}"})
    assert content.render({"series": "s", "score": 1.5})["x"] == f"{'s':>20} 0001.500 "


def test_run_rejects_annotation_width_before_start(tmp_path, capsys):
    assert _run(tmp_path, "--stdout", "--annotation", "x={score:>99999999999}") == 2
    assert "--annotation x='{score:>99999999999}'" in _last_error(capsys)


def test_webhook_table_sets_external_url(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from connectors import webhook
    from streamad.cli.config import webhook_endpoint_settings

    run_args = build_parser().run_parser.parse_args(["--model", "m", *KAFKA])
    table = {"url": "http://127.0.0.1:1/hook", "format": "alertmanager", "external_url": "http://streamad.example"}
    endpoint = WebhookEndpoint(**webhook_endpoint_settings("am", table, run_args))
    assert endpoint.external_url == "http://streamad.example"

    captured = {}

    def fake_payload(events, **options):
        captured.update(options)
        return {"alerts": events}

    monkeypatch.setattr(webhook.payloads, "alertmanager_webhook_payload", fake_payload)
    sender = EndpointSender(endpoint, Outbox(tmp_path / "outbox.db"))
    row = SimpleNamespace(alert_id="a1", sequence=1, event_dict=lambda: {"alert_id": "a1", "sequence": 1, "series": "s"})
    sender._request([row])
    assert captured["external_url"] == "http://streamad.example"

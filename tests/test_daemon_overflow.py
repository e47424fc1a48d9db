"""`streamad run` against a real Kafka broker keeps going past values that overflow the model's float32."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from daemon_support import train_bundle_dir
from streamad.data import Series
from streamad.training import TrainConfig

pytestmark = pytest.mark.kafka

SERIES = "pump"
WINDOW = 12
RECORDS = 120
# Stream index of each value that must become a value_out_of_range dead letter.
HUGE_VALUES = {40: 1e40, 70: -1e308, 90: 1e30}
WAIT_S = 180.0


def _sine(length, start_ms=1_700_000_000_000):
    t = np.arange(length)
    values = np.sin(t / 6.0)[:, None] + 0.05 * np.random.default_rng(0).normal(size=(length, 1))
    return Series(SERIES, start_ms + t * 60_000, values, ["value"], True)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    config = TrainConfig(window=WINDOW, latent=2, hidden=16, epochs=3, patience=3, seed=0)
    return train_bundle_dir([_sine(400, start_ms=0)], config, tmp_path_factory.mktemp("overflow-model"))


def _read_lines(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_daemon_dead_letters_huge_values(kafka_bootstrap, new_topic, group_id, bundle_dir, tmp_path):
    from connectors.kafka import produce_records

    stream = _sine(RECORDS)
    payloads = []
    for index in range(RECORDS):
        value = HUGE_VALUES.get(index, float(stream.values[index, 0]))
        payloads.append(json.dumps({"series": SERIES, "timestamp": int(stream.timestamps[index]), "value": value}).encode())
    topic = new_topic(1, prefix="overflow")
    acknowledged = produce_records(kafka_bootstrap, topic, payloads)
    assert [offset for _, offset in acknowledged] == list(range(RECORDS))

    scores, dead_letters, log_path = tmp_path / "scores.jsonl", tmp_path / "dead.jsonl", tmp_path / "daemon.log"
    command = [
        sys.executable, "-m", "streamad", "--log-level", "INFO", "run",
        "--model", str(bundle_dir), "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--group-id", group_id,
        "--alerts", str(tmp_path / "alerts.jsonl"), "--scores", str(scores), "--dead-letter", str(dead_letters),
        "--max-poll-records", "25",
        "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "2000", "--max-poll-interval-ms", "10000",
    ]
    expected_windows = RECORDS - len(HUGE_VALUES) - WINDOW + 1
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and daemon.poll() is None and len(_read_lines(scores)) < expected_windows:
            time.sleep(0.5)
        assert daemon.poll() is None, f"the daemon stopped with exit status {daemon.returncode}:\n{log_path.read_text()[-3000:]}"
        assert len(_read_lines(scores)) == expected_windows, log_path.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
    assert daemon.returncode == 0, log_path.read_text()[-3000:]

    entries = _read_lines(dead_letters)
    assert [(entry["offset"], entry["reason"]) for entry in entries] == [(offset, "value_out_of_range") for offset in sorted(HUGE_VALUES)]
    for entry in entries:
        assert entry["topic"] == topic
        assert entry["partition"] == 0
        assert repr(HUGE_VALUES[entry["offset"]]) in entry["message"]
        assert SERIES in entry["message"]
    assert all(np.isfinite(point["score"]) for point in _read_lines(scores))
    assert "x contains NaN or infinite values" not in log_path.read_text()

"""Helpers of the daemon tests: start `streamad run` as a subprocess, wait for a condition, read
committed offsets and collect the incident events of an in-process run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def start_streamad_run(arguments, log_path: Path, mode: str = "a") -> subprocess.Popen:
    """Start ``streamad --log-level INFO run ARGUMENTS`` with stdout and stderr in ``log_path``.

    ``mode`` is the open mode of the log: "a" keeps the lines of earlier runs in the same file.
    The current PYTHONPATH is inherited, so the daemon imports the same code as the test.
    """
    command = [sys.executable, "-m", "streamad", "--log-level", "INFO", "run", *arguments]
    with open(log_path, mode) as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def tail_logs(logs, characters: int = 3000) -> str:
    """Return the last ``characters`` of every existing log file, each under a line with its name."""
    return "\n".join(f"--- {path.name}\n{path.read_text()[-characters:]}" for path in logs if path.exists())


def wait_for(condition, timeout_s: float, description: str, logs=()) -> None:
    """Poll ``condition`` every 0.1 s and fail the test with the tails of ``logs`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    tails = f"; daemon logs:\n{tail_logs(logs)}" if logs else ""
    pytest.fail(f"timed out after {timeout_s} s waiting for {description}{tails}")


def kill_daemon(daemon: subprocess.Popen) -> None:
    """Kill ``daemon`` with SIGKILL if it still runs, and reap it."""
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait(timeout=10)


def committed_offsets(bootstrap: str, group_id: str, topic: str, partitions: int) -> list[int | None]:
    """Return the committed offset of ``group_id`` for each partition of ``topic``, None where none is."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        return [consumer.committed(TopicPartition(topic, partition)) for partition in range(partitions)]
    finally:
        consumer.close()


class EventCollector:
    """An alert sink that keeps the events it is sent, in order, in ``items``."""

    def __init__(self):
        self.items = []

    def send(self, items):
        self.items.extend(items)

    def flush(self):
        pass

    def close(self):
        pass


def event_set(events) -> set[tuple]:
    """Return the (alert_id, sequence, status) key of each incident event, so duplicates collapse."""
    return {(event["alert_id"], event["sequence"], event["status"]) for event in events}

"""Helpers of the daemon and alert tests.

They start `streamad run` as a subprocess, wait for a condition, read committed offsets and
collect the incident events of an in-process run. The HTTP servers on 127.0.0.1 record the alerts
they receive and can fail on purpose.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Default time in seconds that FakeAlertmanager.wait_for waits for a condition.
ALERTMANAGER_WAIT_S = 20.0


def train_bundle_dir(train_series, config, directory: Path) -> Path:
    """Train a model bundle on ``train_series`` with the TrainConfig ``config``, save it in ``directory`` and return that."""
    from streamad.bundle import save_bundle
    from streamad.training import train_bundle

    bundle = train_bundle(list(train_series), config, progress=False)
    save_bundle(bundle, directory)
    return directory


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
    """Return the committed offset of ``group_id`` per partition of ``topic``, None for a partition without one."""
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



def machine_slices(series, starts, rows: int) -> list:
    """Return the ``rows``-row slices of ``series`` that begin at ``starts``, named machine-0, machine-1, ..."""
    slices = []
    for index, start in enumerate(starts):
        part = series.slice(start, start + rows)
        part.series_id = f"machine-{index}"
        slices.append(part)
    return slices


def replay_windows_and_events(bundle_dir: Path, streams, config) -> tuple[set, set]:
    """Replay ``streams`` through one uninterrupted in-process engine with EngineConfig ``config``.

    Return the (series, timestamp) of every scored window and the event_set of the incident events.
    """
    from streamad.bundle import load_bundle
    from streamad.engine import StreamEngine
    from streamad.replay import replay_series

    events = EventCollector()
    points = []
    replay_series(StreamEngine(load_bundle(bundle_dir), config), streams, alert_sinks=[events], on_points=points.extend)
    return {(point.series, point.timestamp) for point in points}, event_set(events.items)


def serve_http(handler_class, port: int = 0, ssl_context=None) -> ThreadingHTTPServer:
    """Start a threading HTTP(S) server on 127.0.0.1 (port 0 picks a free one) in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler_class)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_http(server: ThreadingHTTPServer) -> None:
    """Stop ``server``'s loop and close its socket."""
    server.shutdown()
    server.server_close()


def free_port():
    """Return a loopback TCP port that was free a moment ago, for a server that a subprocess starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Receiver:
    """An HTTP server that records every POST and responds with the statuses of ``statuses``, then 204.

    ``statuses`` items are an int status or a (status, headers) pair. The first ``delay_first``
    requests are recorded and then get their response after ``delay`` seconds, later than a short
    client read timeout.
    """

    def __init__(self, port=0, statuses=(), delay_first=0, delay=0.0, ssl_context=None):
        self.requests = []
        self.accepted = []
        self.statuses = list(statuses)
        self.delay_first = delay_first
        self.delay = delay
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append((time.monotonic(), dict(self.headers), body))
                    index = len(receiver.requests)
                    answer = receiver.statuses.pop(0) if receiver.statuses else 204
                if index <= receiver.delay_first:
                    time.sleep(receiver.delay)
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.accepted.append((dict(self.headers), body))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = serve_http(Handler, port, ssl_context)
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/alerts"

    def keys(self):
        """Return the Idempotency-Key of each accepted request, in arrival order."""
        with self.lock:
            return [headers["Idempotency-Key"] for headers, _ in self.accepted]

    def close(self):
        stop_http(self.server)


class FakeAlertmanager:
    """Record every POST to /api/v2/alerts; respond to the next ``fail_next`` requests with HTTP 503."""

    def __init__(self):
        self.posts = []
        self.failures = 0
        self.fail_next = 0
        self.condition = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with recorder.condition:
                    failing = recorder.fail_next > 0
                    if failing:
                        recorder.fail_next -= 1
                        recorder.failures += 1
                    else:
                        recorder.posts.append((self.path, json.loads(body), time.monotonic()))
                    recorder.condition.notify_all()
                self.send_response(503 if failing else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = serve_http(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, predicate, timeout=ALERTMANAGER_WAIT_S):
        deadline = time.monotonic() + timeout
        with self.condition:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.condition.wait(left)
        return True

    def close(self):
        stop_http(self.server)

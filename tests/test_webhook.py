"""Webhook sink against a real HTTP server on 127.0.0.1 that can fail on purpose."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from connectors.webhook import WebhookError, WebhookSink


class _Receiver:
    """An HTTP server that records POST bodies and responds with HTTP 500 to the first ``fail_first`` calls."""

    def __init__(self, fail_first=0, delay=0.0):
        self.bodies = []
        self.calls = 0
        self.fail_first = fail_first
        self.delay = delay
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.calls += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.delay:
                    time.sleep(receiver.delay)
                if receiver.calls <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append((self.headers["Content-Type"], json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    receivers = []

    def make(**options):
        receiver = _Receiver(**options)
        receivers.append(receiver)
        return receiver

    yield make
    for receiver in receivers:
        receiver.close()


EVENT = {"alert_id": "abc", "sequence": 1, "status": "firing", "series": "pump"}


def test_webhook_posts_json(receiver_factory):
    receiver = receiver_factory()
    WebhookSink(receiver.url).send([EVENT, {**EVENT, "sequence": 2}])
    assert [body for _, body in receiver.bodies] == [EVENT, {**EVENT, "sequence": 2}]
    assert receiver.bodies[0][0] == "application/json"


def test_webhook_raises_on_server_error(receiver_factory):
    receiver = receiver_factory(fail_first=1)
    with pytest.raises(WebhookError, match="HTTP 500"):
        WebhookSink(receiver.url).send([EVENT])
    assert receiver.bodies == []


def test_webhook_raises_on_timeout(receiver_factory):
    receiver = receiver_factory(delay=1.0)
    with pytest.raises(WebhookError, match="failed"):
        WebhookSink(receiver.url, timeout=0.2).send([EVENT])


def test_webhook_raises_when_endpoint_down(receiver_factory):
    receiver = receiver_factory()
    url = receiver.url
    receiver.close()
    with pytest.raises(WebhookError, match="check that the endpoint is up"):
        WebhookSink(url, timeout=1.0).send([EVENT])


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "127.0.0.1:80"])
def test_webhook_rejects_non_http_url(url):
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookSink(url)

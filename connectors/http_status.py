"""The HTTP status server of ``streamad run``: ``GET`` and ``HEAD`` of ``/metrics`` and ``/healthz``.

A trailing slash is accepted (``/healthz/``), and ``HEAD`` sends the headers of ``GET``
without the body, as load-balancer probes expect.

It runs ``http.server.ThreadingHTTPServer`` in a daemon thread, with one thread per request,
so a slow scraper does not delay the consuming loop. A request that sends nothing is dropped
after ``request_timeout_s``. It listens on a loopback address unless the caller allows
another one, because the metrics name topics and the model path and have no authentication.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"


def check_listen_address(host: str, allow_remote: bool) -> None:
    """Raise ValueError unless ``host`` is a loopback address, or ``allow_remote`` is True.

    ``host`` must be an IP address or ``localhost``, so that the check needs no DNS lookup.
    """
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if allow_remote:
            return
        raise ValueError(
            f"--metrics-address {host!r} is not an IP address; use a loopback address such as 127.0.0.1, "
            "or pass --metrics-allow-remote to listen on another interface"
        ) from None
    if not address.is_loopback and not allow_remote:
        raise ValueError(
            f"--metrics-address {host} is not a loopback address, so /metrics would be reachable from other hosts "
            "without authentication; use 127.0.0.1 or ::1, or pass --metrics-allow-remote"
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class StatusServer:
    """Serve ``/metrics`` and ``/healthz`` from a background thread.

    Parameters
    ----------
    host, port
        Address to listen on; port 0 picks a free port, see :attr:`port`.
    render_metrics
        Returns the metrics body, in the format of ``metrics_content_type``.
    health
        Returns ``(healthy, body)``. ``/healthz`` responds with 200 or 503 and ``body`` as JSON.
    metrics_content_type
        Content-Type of ``/metrics``.
    request_timeout_s
        Socket timeout of each request, in seconds.
    """

    def __init__(
        self,
        host: str,
        port: int,
        render_metrics: Callable[[], bytes],
        health: Callable[[], tuple[bool, dict]],
        metrics_content_type: str,
        request_timeout_s: float = 10.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"--metrics-port {port} is invalid; use a TCP port in 1-65535, or 0 to disable the server")
        handler = _make_handler(render_metrics, health, metrics_content_type, request_timeout_s)
        server_class = _Server
        if ":" in host:
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self._server = server_class((host, port), handler)
        except OSError as error:
            raise OSError(f"cannot listen on {host}:{port} for /metrics and /healthz: {error}; pick another --metrics-port") from error
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="streamad-status-http", daemon=True)

    def start(self) -> StatusServer:
        self._thread.start()
        logger.info("serving /metrics and /healthz on http://%s:%d", _url_host(self.host), self.port)
        return self

    def close(self) -> None:
        """Stop serving and close the socket; waits at most 5 s for the serving thread."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5.0)
        self._server.server_close()

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _make_handler(render_metrics, health, metrics_content_type: str, request_timeout_s: float):
    class Handler(BaseHTTPRequestHandler):
        timeout = request_timeout_s
        server_version = "streamad"

        def do_GET(self) -> None:  # noqa: N802 - the name is fixed by BaseHTTPRequestHandler
            self._respond(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802 - the name is fixed by BaseHTTPRequestHandler
            self._respond(send_body=False)

        def _respond(self, send_body: bool) -> None:
            self._send_body = send_body
            path = self.path.split("?", 1)[0]
            if len(path) > 1:
                path = path.rstrip("/")
            if path == "/metrics":
                try:
                    body = render_metrics()
                except Exception as error:  # noqa: BLE001 - a failed scrape must not end the server thread
                    logger.exception("rendering /metrics failed")
                    self._send(500, "text/plain; charset=utf-8", f"rendering the metrics failed: {error!r}\n".encode())
                    return
                self._send(200, metrics_content_type, body)
            elif path == "/healthz":
                healthy, body = health()
                self._send(200 if healthy else 503, JSON_CONTENT_TYPE, json.dumps(body).encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found; use /metrics or /healthz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self._send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the signature is fixed by BaseHTTPRequestHandler
            logger.debug("status request from %s: " + format, self.client_address[0], *args)

    return Handler

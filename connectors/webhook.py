"""Plain webhook sink: one HTTP POST of JSON per alert event."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

logger = logging.getLogger(__name__)


class WebhookError(RuntimeError):
    """A webhook POST failed: connection error, timeout or non-2xx status."""


class WebhookSink:
    """POST each alert event as a JSON body to ``url``.

    This sink delivers synchronously and raises on the first failure, so the stream
    runner does not commit the offsets of a batch whose alerts did not arrive.

    NOTE: there are no retries, no outbox and no signing yet: a failing endpoint stops the
    daemon, and after a restart the same events are sent again (at-least-once).

    Parameters
    ----------
    url
        ``http://`` or ``https://`` endpoint.
    timeout
        Seconds to wait for connect plus response, per request. Default 5.
    headers
        Extra request headers, e.g. an authorization token.
    """

    def __init__(self, url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url {url!r} is invalid; use an http:// or https:// URL")
        if not timeout > 0:
            raise ValueError(f"webhook timeout={timeout!r} is invalid; use a positive number of seconds")
        self.url = url
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", "User-Agent": "streamad", **(headers or {})}

    def send(self, items: list[dict]) -> None:
        for item in items:
            self._post(item)

    def _post(self, item: dict) -> None:
        body = json.dumps(item, sort_keys=True).encode()
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise WebhookError(
                f"webhook {self.url} returned HTTP {error.code} for alert {item.get('alert_id')} "
                f"sequence {item.get('sequence')}"
            ) from error
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise WebhookError(
                f"webhook POST to {self.url} failed for alert {item.get('alert_id')}: {error}; check that the "
                "endpoint is up and reachable"
            ) from error
        logger.debug("webhook %s accepted alert %s sequence %s", self.url, item.get("alert_id"), item.get("sequence"))

    def flush(self) -> None:
        """Do nothing: :meth:`send` returns only after every POST succeeded."""

    def close(self) -> None:
        """Do nothing: no connection is kept open."""

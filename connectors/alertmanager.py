"""Push incident events to Prometheus Alertmanager's API v2 (``POST <url>/api/v2/alerts``).

Alertmanager resolves an alert without ``endsAt`` once it has not been sent again for its
``resolve_timeout`` (5 minutes by default). Prometheus therefore re-sends every active
alert periodically, and so does :class:`AlertmanagerClient`: every open incident is sent
again every ``resend_interval_s`` seconds until its ``resolved`` event, which is sent
with ``endsAt``. The open incidents of partitions restored from a checkpoint reach the
client through :meth:`AlertmanagerClient.send_restored` and are sent at once.

Delivery is best effort and does not wait for the network in the daemon's loop, because
:meth:`AlertmanagerClient.send` only queues. A background thread POSTs, and retries with
exponential backoff while Alertmanager is unreachable. The offsets of a batch are committed whether or not its
alerts reached Alertmanager yet, and queued alerts are lost when the process dies.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any, Callable

from streamad.alerts.payloads import alertmanager_api_alerts, rfc3339

logger = logging.getLogger(__name__)

API_PATH = "/api/v2/alerts"
# HTTP statuses after which the same request may succeed later; other 4xx mean the alerts are invalid.
_RETRYABLE_CLIENT_ERRORS = (408, 425, 429)


class AlertmanagerClient:
    """An alert sink that keeps Alertmanager's view of the open incidents up to date.

    Parameters
    ----------
    url
        Base URL of Alertmanager, e.g. ``http://alertmanager:9093``; the client POSTs to
        ``<url>/api/v2/alerts``.
    resend_interval_s
        Seconds between two sends of every active alert. Keep it well below
        Alertmanager's ``resolve_timeout``. Default 60.
    timeout_s
        Seconds for connect plus response, per request. Default 5.
    retry_initial_s, retry_max_s
        First and largest wait between retries after a failed POST; the wait doubles
        after each failure. Defaults 1 and 60.
    max_pending
        Most resolved alerts kept for delivery while Alertmanager is unreachable; beyond
        it the oldest are dropped with an error log. Default 10000.
    generator_url
        ``generatorURL`` of every alert, e.g. a dashboard link; empty leaves it out.
    clock
        Monotonic clock in seconds, replaceable in tests.
    """

    def __init__(
        self,
        url: str,
        *,
        resend_interval_s: float = 60.0,
        timeout_s: float = 5.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        max_pending: int = 10_000,
        generator_url: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--alertmanager {url!r} is invalid; use the http:// or https:// base URL of Alertmanager")
        for name, value in (
            ("--alertmanager-resend-s", resend_interval_s),
            ("--alertmanager-timeout-s", timeout_s),
            ("retry_initial_s", retry_initial_s),
            ("retry_max_s", retry_max_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} {value!r} is invalid; use a positive number of seconds")
        if max_pending < 1:
            raise ValueError(f"max_pending={max_pending!r} is invalid; use a count >= 1")
        self.endpoint = url.rstrip("/") + API_PATH
        self.resend_interval_s = resend_interval_s
        self.timeout_s = timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.max_pending = max_pending
        self.generator_url = generator_url
        self.clock = clock

        self._condition = threading.Condition()
        # Open incidents by alert id: the postable alert that is sent again and again.
        self._active: dict[str, dict[str, Any]] = {}
        # Alerts to send once: resolved incidents, and label sets replaced by a new severity.
        self._pending: list[dict[str, Any]] = []
        # Open incidents whose alert changed since it was last sent; sent without waiting for the re-send.
        self._changed: set[str] = set()
        self._next_resend = 0.0
        self._next_retry = 0.0
        self._failures = 0
        self._dropped = 0
        self._stopping = False
        self.posts = 0
        self._thread = threading.Thread(target=self._run, name="alertmanager-client", daemon=True)
        self._thread.start()
        logger.info("sending alerts to %s, re-sending open incidents every %g s", self.endpoint, resend_interval_s)

    def send(self, items: list[dict]) -> None:
        """Queue incident events for the background thread, without waiting for the network."""
        now = datetime.now(timezone.utc)
        with self._condition:
            for event in items:
                (alert,) = alertmanager_api_alerts([event], generator_url=self.generator_url, now=now)
                alert_id = event["alert_id"]
                previous = self._active.get(alert_id)
                if event["status"] == "resolved":
                    self._active.pop(alert_id, None)
                    if alert_id in self._changed:
                        # The firing alert was not posted yet, e.g. because one batch held the
                        # whole incident. Post it ahead of the resolved one, so that Alertmanager
                        # stores the incident as firing before it ends.
                        self._changed.discard(alert_id)
                        if previous is not None:
                            self._queue(previous)
                    if previous is not None:
                        # Keep what only the firing alert had, e.g. its channels.
                        alert["annotations"] = {**previous["annotations"], **alert["annotations"]}
                    if previous is not None and previous["labels"] != alert["labels"]:
                        self._queue(_ended(previous, alert["endsAt"]))
                    self._queue(alert)
                    continue
                if previous is not None and previous["labels"] != alert["labels"]:
                    # A new severity is a new label set, so a new alert to Alertmanager: end the old one.
                    self._queue(_ended(previous, rfc3339(now)))
                self._active[alert_id] = alert
                self._changed.add(alert_id)
            self._condition.notify()

    def send_restored(self, items: list[dict]) -> None:
        """Queue the last events of open incidents restored from a checkpoint, to be sent again without waiting for an event.

        Alertmanager resolves an alert that is not sent again within its resolve_timeout, so
        after a restart the open incidents are sent at once and then with the periodic
        re-sends. An incident that the client already tracks keeps its newer alert, and a
        ``resolved`` event is skipped, so no alert ends and every alert keeps its labels.
        """
        now = datetime.now(timezone.utc)
        queued = []
        with self._condition:
            for event in items:
                alert_id = event["alert_id"]
                if event["status"] == "resolved" or alert_id in self._active:
                    continue
                (alert,) = alertmanager_api_alerts([event], generator_url=self.generator_url, now=now)
                self._active[alert_id] = alert
                self._changed.add(alert_id)
                queued.append(alert_id)
            self._condition.notify()
        if queued:
            logger.info(
                "alertmanager %s: sending %d open incidents restored from checkpoints again: alert_ids=%s",
                self.endpoint, len(queued), ",".join(queued),
            )

    def _queue(self, alert: dict[str, Any]) -> None:
        self._pending.append(alert)
        overflow = len(self._pending) - self.max_pending
        if overflow > 0:
            del self._pending[:overflow]
            self._dropped += overflow
            logger.error(
                "alertmanager %s unreachable: dropped %d resolved alerts beyond max_pending=%d (%d dropped so far)",
                self.endpoint, overflow, self.max_pending, self._dropped,
            )

    def active_alerts(self) -> list[dict[str, Any]]:
        """Return copies of the alerts of the open incidents."""
        with self._condition:
            return [dict(alert) for alert in self._active.values()]

    def pending_count(self) -> int:
        """Return how many one-off alerts (resolved or replaced) wait for delivery."""
        with self._condition:
            return len(self._pending)

    def flush(self) -> None:
        """Do nothing: delivery is asynchronous and best effort, so it never holds back a commit."""

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the background thread after one last delivery attempt of what is queued.

        Waits at most ``timeout_s`` seconds, by default the request timeout plus one.
        """
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join(self.timeout_s + 1.0 if timeout_s is None else timeout_s)
        with self._condition:
            left = len(self._pending)
        if left:
            logger.error("alertmanager %s: %d resolved alerts were not delivered before stopping", self.endpoint, left)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopping and not self._due():
                    self._condition.wait(timeout=self._wait_s())
                stopping = self._stopping
                # After a failure, at the re-send time and at the end, every open incident goes
                # out; otherwise only the changed ones.
                full = bool(self._failures) or stopping or self.clock() >= self._next_resend
                changed = set(self._changed) if not full else set(self._active)
                self._changed.clear()
                pending = list(self._pending)
                batch = pending + [alert for alert_id, alert in self._active.items() if alert_id in changed]
            delivered = self._post(batch) if batch else True
            with self._condition:
                if delivered:
                    # Alerts queued during the POST stay; the ones sent leave the queue.
                    sent = {id(alert) for alert in pending}
                    self._pending = [alert for alert in self._pending if id(alert) not in sent]
                    if full:
                        self._next_resend = self.clock() + self.resend_interval_s
                else:
                    self._changed |= changed & set(self._active)
                    self._next_retry = self.clock() + self._backoff()
            if stopping:
                return

    def _due(self) -> bool:
        if self._failures:
            return self.clock() >= self._next_retry
        if self._changed or self._pending:
            return True
        return bool(self._active) and self.clock() >= self._next_resend

    def _wait_s(self) -> float | None:
        """Return the seconds until the next retry or re-send, or None when only a new event can make one due."""
        if self._failures:
            return max(0.01, self._next_retry - self.clock())
        if self._active:
            return max(0.01, self._next_resend - self.clock())
        return None

    def _backoff(self) -> float:
        return min(self.retry_max_s, self.retry_initial_s * 2.0 ** (self._failures - 1))

    def _post(self, alerts: list[dict[str, Any]]) -> bool:
        body = json.dumps(alerts).encode("utf-8")
        request = urllib.request.Request(
            self.endpoint, data=body, headers={"Content-Type": "application/json", "User-Agent": "streamad"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as error:
            detail = error.read(500).decode("utf-8", "replace").strip()
            if 400 <= error.code < 500 and error.code not in _RETRYABLE_CLIENT_ERRORS:
                # Alertmanager rejected the alerts themselves; sending them again cannot help.
                logger.error(
                    "alertmanager %s rejected %d alerts with HTTP %d: %s; dropping the resolved ones",
                    self.endpoint, len(alerts), error.code, detail,
                )
                self._failures = 0
                return True
            return self._failed(len(alerts), f"HTTP {error.code}: {detail}")
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            return self._failed(len(alerts), str(error))
        self.posts += 1
        if self._failures:
            logger.info("alertmanager %s reachable again after %d failed attempts", self.endpoint, self._failures)
        self._failures = 0
        logger.debug("alertmanager %s accepted %d alerts", self.endpoint, len(alerts))
        return True

    def _failed(self, count: int, reason: str) -> bool:
        self._failures += 1
        logger.warning(
            "alertmanager POST of %d alerts to %s failed (attempt %d): %s; retrying in %.1f s",
            count, self.endpoint, self._failures, reason, self._backoff(),
        )
        return False


def _ended(alert: dict[str, Any], ends_at: str | None) -> dict[str, Any]:
    ended = dict(alert)
    ended["endsAt"] = ends_at
    return ended

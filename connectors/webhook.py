"""Webhook delivery through a durable outbox: endpoints, the sink and its sender threads.

:class:`WebhookSink` is an alert sink of the stream runner. ``send()`` buffers one row per
(endpoint, event), ``flush()`` writes them to the SQLite outbox in one transaction, and the
runner commits the Kafka offsets after that. One sender thread per endpoint then POSTs the
rows of its endpoint in insertion order and retries failures with exponential backoff and
full jitter. A row moves to the dead letters after ``max_attempts`` failed attempts, when it
is older than ``max_age_s`` at a failed attempt, or at once on a 4xx status other than 408
and 429. A row is sent until one attempt succeeds, so a receiver can get it twice. That
happens when a request timed out or lost its connection after the receiver got it, and when
the process died between the response and the write of ``delivered_at``. Receivers
deduplicate by the ``Idempotency-Key`` header.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import math
import os
import random
import re
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from connectors.outbox import Outbox, OutboxError, OutboxRow, event_key
from streamad.alerts import payloads
from streamad.alerts.signing import sign

logger = logging.getLogger(__name__)

FORMATS = ("generic", "alertmanager")
IDEMPOTENCY_HEADER = "Idempotency-Key"
# A header field name is an RFC 9110 token (section 5.1), and a field value has no control
# characters other than horizontal tab (section 5.5), so no CR or LF can split the request.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Bytes of a response body kept for the error message of a failed attempt.
_ERROR_BODY_BYTES = 200


class WebhookError(RuntimeError):
    """A webhook endpoint is misconfigured or its outbox cannot be used."""


def read_secret(env: str | None = None, file: str | None = None, label: str = "webhook") -> str | None:
    """Return the signing secret from the environment variable ``env`` or the file ``file``, or None when neither is set.

    A file's trailing newline is stripped. Raises ValueError when the variable is unset or
    empty, the file is missing or empty, or both sources are given.
    """
    if env and file:
        raise ValueError(f"{label}: set secret_env or secret_file, not both")
    if env:
        secret = os.environ.get(env, "")
        if not secret:
            raise ValueError(f"{label}: environment variable {env} for the signing secret is unset or empty; export it")
        return secret
    if file:
        try:
            secret = Path(file).read_text().rstrip("\r\n")
        except OSError as error:
            raise ValueError(f"{label}: signing secret file {file!r} cannot be read: {error.strerror}") from None
        if not secret:
            raise ValueError(f"{label}: signing secret file {file!r} is empty; write the secret into it")
        return secret
    return None


def check_headers(headers: dict, label: str) -> None:
    """Raise ValueError on a header name that is not an HTTP token or a value with a control character."""
    if not isinstance(headers, dict):
        raise ValueError(f"{label}: headers={headers!r} is invalid; use a table of header names to strings")
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(
                f"{label}: header name {name!r} is invalid; use an HTTP token: letters, digits and !#$%&'*+-.^_`|~, "
                "without spaces, e.g. X-Team"
            )
        if not isinstance(value, str) or _HEADER_VALUE_FORBIDDEN.search(value):
            raise ValueError(
                f"{label}: value of header {name!r} is invalid ({value!r}); use a string without CR, LF or other control characters"
            )


@dataclass
class WebhookEndpoint:
    """Settings of one webhook endpoint: URL, format, timeouts, TLS, signing, rate limit, grouping and retries.

    ``group_by`` (``alertmanager`` format only) is ``none``, ``series``, ``series_prefix``
    (the series id up to its last ``group_separator``) or ``label:<name>`` (the event's
    ``labels[name]``). Events with the same key that are pending together are sent in one
    request, after the oldest has waited ``group_wait_s``. ``rate_limit_per_minute`` of 0
    means no limit.
    """

    name: str
    url: str
    format: str = "generic"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    secret: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    rate_limit_per_minute: int = 0
    group_by: str = "none"
    external_url: str = ""
    group_separator: str = "-"
    group_wait_s: float = 0.0
    max_group_size: int = 100
    max_attempts: int = 10
    max_age_s: float = 86_400.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        label = f"webhook endpoint {self.name!r}"

        if not self.url.startswith(("http://", "https://")) or not urlsplit(self.url).hostname:
            raise ValueError(f"{label}: url {self.url!r} is invalid; use an http:// or https:// URL")
        if self.format not in FORMATS:
            raise ValueError(f"{label}: format {self.format!r} is unknown; use one of {', '.join(FORMATS)}")

        for name in ("connect_timeout_s", "read_timeout_s", "max_age_s", "backoff_base_s", "backoff_max_s"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{label}: {name}={getattr(self, name)!r} is invalid; use a finite positive number of seconds")
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(f"{label}: backoff_max_s={self.backoff_max_s} is below backoff_base_s={self.backoff_base_s}; raise it")
        if not (self.group_wait_s >= 0 and math.isfinite(self.group_wait_s)):
            raise ValueError(f"{label}: group_wait_s={self.group_wait_s!r} is invalid; use a finite number of seconds >= 0")
        for name in ("max_attempts", "max_group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{label}: {name}={getattr(self, name)!r} is invalid; use an integer >= 1")
        if self.rate_limit_per_minute < 0:
            raise ValueError(f"{label}: rate_limit_per_minute={self.rate_limit_per_minute!r} is invalid; use 0 (no limit) or more")

        if not (self.group_by in ("none", "series", "series_prefix") or (self.group_by.startswith("label:") and self.group_by[6:])):
            raise ValueError(f"{label}: group_by {self.group_by!r} is invalid; use none, series, series_prefix or label:<name>")
        if self.group_by != "none" and self.format != "alertmanager":
            raise ValueError(f"{label}: group_by needs format 'alertmanager'; the generic format sends one event per request")
        if not self.group_separator:
            raise ValueError(f"{label}: group_separator is empty; use a character such as '-'")

        check_headers(self.headers, label)
        if self.secret is not None and not self.secret:
            raise ValueError(f"{label}: the signing secret is empty; set a non-empty secret")
        if self.key_file and not self.cert_file:
            raise ValueError(f"{label}: key_file needs cert_file; set the client certificate too")
        if (self.ca_file or self.cert_file) and not self.url.startswith("https://"):
            raise ValueError(f"{label}: ca_file and cert_file need an https:// url, not {self.url!r}")
        self._ssl_context = self._build_ssl_context() if self.url.startswith("https://") else None

    def _build_ssl_context(self) -> ssl.SSLContext:
        label = f"webhook endpoint {self.name!r}"
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"{label}: TLS files cannot be loaded (ca_file={self.ca_file!r}, cert_file={self.cert_file!r}): {error}") from None
        return context

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl_context

    def group_key(self, event: dict) -> str | None:
        """Return the group of ``event``, or None without grouping."""
        if self.group_by == "none":
            return None
        series = str(event.get("series", ""))
        if self.group_by == "series":
            return series
        if self.group_by == "series_prefix":
            prefix, separator, _ = series.rpartition(self.group_separator)
            return prefix if separator else series
        labels = event.get("labels") or {}
        return str(labels.get(self.group_by[6:], ""))

    def group_label_name(self) -> str:
        return self.group_by[6:] if self.group_by.startswith("label:") else self.group_by


@dataclass
class AttemptResult:
    """The outcome of one POST: the HTTP status (None when no response came) and the error text."""

    status: int | None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def permanent(self) -> bool:
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the seconds of a Retry-After header (delay seconds or an HTTP date), or None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, moment.timestamp() - now)


def post(endpoint: WebhookEndpoint, body: bytes, headers: dict[str, str]) -> AttemptResult:
    """POST ``body`` to the endpoint with its connect and read timeouts; never raises for network errors.

    The read timeout applies to each socket read, so a server that trickles its response can
    take longer in total.
    """
    parts = urlsplit(endpoint.url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=endpoint.connect_timeout_s, context=endpoint.ssl_context
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=endpoint.connect_timeout_s)
    phase = "connect"
    try:
        connection.connect()
        phase = "request"
        connection.sock.settimeout(endpoint.read_timeout_s)
        connection.request("POST", path, body=body, headers=headers)
        phase = "response"
        response = connection.getresponse()
        text = response.read(_ERROR_BODY_BYTES).decode("utf-8", "replace")
        if 200 <= response.status < 300:
            return AttemptResult(response.status)
        return AttemptResult(
            response.status,
            f"HTTP {response.status} {response.reason}: {' '.join(text.split())}",
            parse_retry_after(response.getheader("Retry-After")),
        )
    except TimeoutError:
        limit = endpoint.connect_timeout_s if phase == "connect" else endpoint.read_timeout_s
        return AttemptResult(None, f"{phase} timed out after {limit:g} s")
    except (OSError, http.client.HTTPException) as error:
        if parts.scheme == "https" and _may_be_client_certificate_rejection(error, phase):
            return AttemptResult(None, _client_certificate_hint(endpoint, f"{phase} failed: {error!r}"))
        return AttemptResult(None, f"{phase} failed: {error!r}")
    finally:
        connection.close()


def _may_be_client_certificate_rejection(error: BaseException, phase: str) -> bool:
    """Return True for the errors that a client sees when the server rejects its handshake after verifying the server.

    With TLS 1.2 the server's alert fails ``connect()`` with an SSLError such as
    SSLV3_ALERT_HANDSHAKE_FAILURE. With TLS 1.3 the client's handshake ends before the
    server checks the client certificate, so the rejection arrives at the first write or read
    as an SSLEOFError, an SSLError such as TLSV13_ALERT_CERTIFICATE_REQUIRED, or a reset.
    A failed verification of the server's certificate is another cause, with its own message.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        return False
    if isinstance(error, ssl.SSLError):
        return True
    return phase == "request" and isinstance(error, (ConnectionResetError, BrokenPipeError))


def _client_certificate_hint(endpoint: WebhookEndpoint, failure: str) -> str:
    """Return the error text of a TLS handshake that the server may have rejected for the client certificate."""
    if endpoint.cert_file:
        return (
            f"TLS handshake failed ({failure}); the server may not accept the client certificate "
            f"cert_file={endpoint.cert_file!r} of endpoint {endpoint.name!r}: check that the server trusts its issuer"
        )
    return (
        f"TLS handshake failed ({failure}); the server may require a client certificate, and endpoint "
        f"{endpoint.name!r} has none: set cert_file and key_file for it (--webhook-cert-file and --webhook-key-file)"
    )


class RateLimiter:
    """At most ``per_minute`` events in any 60-second window; 0 means no limit. Not shared between processes."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._sent: deque[float] = deque()

    def delay(self, count: int) -> float:
        """Return the seconds to wait before ``count`` more events may be sent."""
        if not self.per_minute:
            return 0.0
        now = self.clock()
        while self._sent and now - self._sent[0] >= 60.0:
            self._sent.popleft()
        excess = len(self._sent) + count - self.per_minute
        if excess <= 0:
            return 0.0
        return self._sent[excess - 1] + 60.0 - now

    def record(self, count: int) -> None:
        now = self.clock()
        self._sent.extend([now] * count)


def backoff_delay(attempts: int, base_s: float, max_s: float) -> float:
    """Return a delay drawn uniformly from [0, min(max_s, base_s * 2**(attempts - 1))] (full jitter)."""
    ceiling = min(max_s, base_s * 2.0 ** min(attempts - 1, 62))
    return random.uniform(0.0, ceiling)


class EndpointSender(threading.Thread):
    """The thread that delivers the pending rows of one endpoint in insertion order."""

    def __init__(self, endpoint: WebhookEndpoint, outbox: Outbox, poll_interval_s: float = 1.0) -> None:
        super().__init__(name=f"webhook-{endpoint.name}", daemon=True)
        self.endpoint = endpoint
        self.outbox = outbox
        self.poll_interval_s = poll_interval_s
        self.limiter = RateLimiter(endpoint.rate_limit_per_minute)
        self.wake = threading.Event()
        self._stop_at: float | None = None
        self.delivered = 0
        self.dead = 0

    def stop(self, grace_s: float) -> None:
        """Let the thread deliver for at most ``grace_s`` more seconds, then end it; pending rows stay."""
        self._stop_at = time.monotonic() + max(0.0, grace_s)
        self.wake.set()

    def _stopping_now(self) -> bool:
        return self._stop_at is not None and time.monotonic() >= self._stop_at

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when woken or when the stop deadline comes first."""
        if self._stop_at is not None:
            seconds = min(seconds, self._stop_at - time.monotonic())
        if seconds > 0:
            self.wake.wait(seconds)
        self.wake.clear()

    def run(self) -> None:
        name = self.endpoint.name
        while not self._stopping_now():
            try:
                done = self._step()
            except OutboxError as error:
                logger.error("webhook endpoint %s: outbox error, retrying in %g s: %s", name, self.poll_interval_s, error)
                self._sleep(self.poll_interval_s)
                continue
            except Exception:  # noqa: BLE001 - the sender must not die silently and leave rows behind
                logger.exception("webhook endpoint %s: unexpected sender error, retrying in %g s", name, self.poll_interval_s)
                self._sleep(self.poll_interval_s)
                continue
            if done and self._stop_at is not None:
                break
        logger.info("webhook endpoint %s: sender stopped, %d delivered, %d dead this run", name, self.delivered, self.dead)

    def _step(self) -> bool:
        """Deliver or wait for the head of the queue; return True when nothing is pending."""
        endpoint = self.endpoint
        # Grouping looks past the head for events of the same group.
        limit = 1 if endpoint.group_by == "none" else endpoint.max_group_size * 5
        rows = self.outbox.pending(endpoint.name, limit=limit)
        if not rows:
            if self._stop_at is None:
                self._sleep(self.poll_interval_s)
            return True
        head = rows[0]
        now = time.time()
        # Waits end after poll_interval_s at the latest, so that a row that `streamad alerts
        # retry` puts before the head is noticed while the head waits for its backoff.
        if head.next_attempt_at > now:
            self._sleep(min(head.next_attempt_at - now, self.poll_interval_s))
            return False
        batch = self._batch(rows)
        if endpoint.group_by != "none" and head.attempts == 0 and len(batch) < endpoint.max_group_size:
            ready_at = head.created_at + endpoint.group_wait_s
            if ready_at > now and self._stop_at is None:
                self._sleep(min(ready_at - now, self.poll_interval_s))
                return False
        wait_s = self.limiter.delay(len(batch))
        if wait_s > 0:
            self._sleep(min(wait_s, self.poll_interval_s))
            return False
        self._deliver(batch)
        return False

    def _batch(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        endpoint = self.endpoint
        if endpoint.group_by == "none":
            return rows[:1]
        limit = endpoint.max_group_size
        if endpoint.rate_limit_per_minute:
            limit = min(limit, endpoint.rate_limit_per_minute)
        key = endpoint.group_key(rows[0].event_dict())
        now = time.time()
        batch = [rows[0]]
        for row in rows[1:]:
            if len(batch) >= limit:
                break
            if row.next_attempt_at <= now and endpoint.group_key(row.event_dict()) == key:
                batch.append(row)
        return batch

    def _request(self, batch: list[OutboxRow]) -> tuple[bytes, dict[str, str]]:
        endpoint = self.endpoint
        events = [row.event_dict() for row in batch]
        if endpoint.format == "generic":
            document = payloads.generic_payload(events[0])
            idempotency_key = f"{batch[0].alert_id}:{batch[0].sequence}"
        else:
            key = endpoint.group_key(events[0])
            group_labels = {} if key is None else {endpoint.group_label_name(): key}
            document = payloads.alertmanager_webhook_payload(
                events, receiver=endpoint.name, group_labels=group_labels, external_url=endpoint.external_url
            )
            keys = ",".join(f"{row.alert_id}:{row.sequence}" for row in batch)
            idempotency_key = batch[0].alert_id + ":" + str(batch[0].sequence) if len(batch) == 1 else (
                "group-" + hashlib.sha256(keys.encode()).hexdigest()[:32]
            )
        body = json.dumps(document, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "streamad",
            **endpoint.headers,
            IDEMPOTENCY_HEADER: idempotency_key,
        }
        if endpoint.secret is not None:
            headers.update(sign(body, endpoint.secret))
        return body, headers

    def _deliver(self, batch: list[OutboxRow]) -> None:
        endpoint = self.endpoint
        ids = [row.id for row in batch]
        head = batch[0]
        try:
            body, headers = self._request(batch)
        except Exception as error:  # noqa: BLE001 - a payload that cannot be built never will be
            message = f"payload of format {endpoint.format!r} cannot be built: {error!r}"
            logger.error("webhook endpoint %s: %s; alert %s sequence %s moved to the dead letters", endpoint.name, message, head.alert_id, head.sequence)
            self.outbox.move_to_dead(ids, message, count_attempt=False)
            self.dead += len(ids)
            return

        self.limiter.record(len(batch))
        try:
            result = post(endpoint, body, headers)
        except Exception as error:  # noqa: BLE001 - post() returns network failures; anything else repeats on every retry
            # E.g. http.client raises ValueError on a header that it cannot send.
            message = f"request cannot be sent: {error!r}"
            logger.error(
                "webhook endpoint %s: %s; alert %s sequence %s (%d event(s)) moved to the dead letters",
                endpoint.name, message, head.alert_id, head.sequence, len(ids),
            )
            self.outbox.move_to_dead(ids, message)
            self.dead += len(ids)
            return
        now = time.time()
        if result.delivered:
            self.outbox.mark_delivered(ids, now=now)
            self.delivered += len(ids)
            logger.debug("webhook endpoint %s delivered %d event(s) from alert %s sequence %s", endpoint.name, len(ids), head.alert_id, head.sequence)
            return
        if result.permanent:
            logger.error(
                "webhook endpoint %s rejected alert %s sequence %s (%d event(s)) with %s; moved to the dead letters",
                endpoint.name, head.alert_id, head.sequence, len(ids), result.error,
            )
            self.outbox.move_to_dead(ids, result.error)
            self.dead += len(ids)
            return

        dead_by_reason: dict[str, list[int]] = {}
        retry_ids = []
        for row in batch:
            attempts = row.attempts + 1
            if attempts >= endpoint.max_attempts:
                reason = f"{result.error} (gave up after {attempts} attempts, max_attempts={endpoint.max_attempts})"
            elif now - row.created_at >= endpoint.max_age_s:
                reason = f"{result.error} (gave up after {attempts} attempts in {now - row.created_at:.0f} s, max_age_s={endpoint.max_age_s:g})"
            else:
                retry_ids.append(row.id)
                continue
            dead_by_reason.setdefault(reason, []).append(row.id)
        for reason, dead_ids in dead_by_reason.items():
            logger.error(
                "webhook endpoint %s: alert %s sequence %s failed: %s; %d event(s) moved to the dead letters",
                endpoint.name, head.alert_id, head.sequence, reason, len(dead_ids),
            )
            self.outbox.move_to_dead(dead_ids, reason)
            self.dead += len(dead_ids)
        if retry_ids:
            if result.status == 429 and result.retry_after_s is not None:
                delay = result.retry_after_s
            else:
                delay = backoff_delay(head.attempts + 1, endpoint.backoff_base_s, endpoint.backoff_max_s)
            logger.warning(
                "webhook endpoint %s: attempt %d of alert %s sequence %s failed: %s; retrying in %.1f s",
                endpoint.name, head.attempts + 1, head.alert_id, head.sequence, result.error, delay,
            )
            self.outbox.mark_failed(retry_ids, result.error, now + delay)


class WebhookSink:
    """Alert sink that stores each event for each endpoint in the outbox and delivers it from sender threads.

    ``outbox`` is an :class:`Outbox` or the path of its database. ``drain_s`` is the time that
    :meth:`close` gives the senders to deliver what is pending before they stop. Delivered
    rows older than ``keep_delivered_s`` are deleted by :meth:`flush`, at most once a minute,
    and 0 keeps them.
    """

    def __init__(
        self,
        endpoints: Sequence[WebhookEndpoint],
        outbox: Outbox | str | Path,
        *,
        drain_s: float = 10.0,
        keep_delivered_s: float = 7 * 86_400.0,
        poll_interval_s: float = 1.0,
        start: bool = True,
    ) -> None:
        if not endpoints:
            raise ValueError("WebhookSink needs at least one endpoint")
        names = [endpoint.name for endpoint in endpoints]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"webhook endpoint name(s) {duplicates} are used twice; give each endpoint its own name")
        self.endpoints = list(endpoints)
        self._owns_outbox = not isinstance(outbox, Outbox)
        self.outbox = Outbox(outbox) if self._owns_outbox else outbox
        self.drain_s = drain_s
        self.keep_delivered_s = keep_delivered_s
        self._buffer: list[tuple[str, dict]] = []
        self._last_purge = 0.0
        self.senders = [EndpointSender(endpoint, self.outbox, poll_interval_s) for endpoint in self.endpoints]
        self._started = False
        self._closed = False
        if start:
            self.start()

    def start(self) -> None:
        """Start the sender threads and log the backlog found in the outbox."""
        if self._started:
            return
        backlog = self.outbox.backlog_by_endpoint()
        for name, count in sorted(backlog.items()):
            if name in {endpoint.name for endpoint in self.endpoints}:
                logger.info("webhook endpoint %s: %d event(s) pending in outbox %s", name, count, self.outbox.path)
            else:
                logger.warning(
                    "outbox %s has %d pending event(s) for endpoint %s, which is not configured; they wait until it is",
                    self.outbox.path, count, name,
                )
        for sender in self.senders:
            sender.start()
        self._started = True

    def send(self, items: list[dict]) -> None:
        """Buffer one row per endpoint and event; :meth:`flush` writes them to the outbox."""
        for item in items:
            event_key(item)
        for endpoint in self.endpoints:
            self._buffer.extend((endpoint.name, item) for item in items)

    def flush(self) -> None:
        """Write the buffered rows to the outbox in one fsynced transaction and wake the senders."""
        if self._buffer:
            added = self.outbox.add(self._buffer)
            if added < len(self._buffer):
                logger.info("outbox ignored %d event(s) already stored (re-emitted after a restart)", len(self._buffer) - added)
            self._buffer = []
            for sender in self.senders:
                sender.wake.set()
        now = time.monotonic()
        if self.keep_delivered_s and now - self._last_purge >= 60.0:
            self._last_purge = now
            purged = self.outbox.purge(delivered=True, dead=False, older_than_s=self.keep_delivered_s)
            if purged["delivered"]:
                logger.info("outbox purged %d delivered row(s) older than %g s", purged["delivered"], self.keep_delivered_s)

    def backlog(self) -> int:
        """Return the number of rows of the configured endpoints not yet delivered: pending plus buffered since the last flush.

        Rows of an endpoint that is no longer configured are not counted, because no sender
        delivers them and they would hold a backpressure pause forever.
        """
        pending = sum(self.outbox.backlog(endpoint.name) for endpoint in self.endpoints)
        return pending + len(self._buffer)

    def close(self, drain_s: float | None = None) -> None:
        """Give the senders ``drain_s`` (default: the sink's) to deliver the pending rows, then stop them.

        Buffered rows that were not flushed are dropped, because their offsets were not
        committed either. Rows still pending stay in the outbox for the next start.
        """
        if self._closed:
            return
        self._closed = True
        drain_s = self.drain_s if drain_s is None else drain_s
        self._buffer = []
        for sender in self.senders:
            sender.stop(drain_s)
        running = []
        for sender in self.senders:
            if sender.is_alive():
                endpoint = sender.endpoint
                sender.join(drain_s + endpoint.connect_timeout_s + endpoint.read_timeout_s + 5.0)
                if sender.is_alive():
                    logger.warning("webhook endpoint %s: sender did not stop in time", endpoint.name)
                    running.append(sender)
        pending = self.outbox.backlog()
        if pending:
            logger.info("outbox %s keeps %d pending event(s) for the next start", self.outbox.path, pending)
        # A sender that is still running uses the connection, and the process exit ends it.
        if self._owns_outbox and not running:
            self.outbox.close()

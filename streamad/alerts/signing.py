"""HMAC-SHA256 signatures of webhook requests, and their verification on the receiving side.

The sender signs ``timestamp + "." + body`` with a secret shared with the receiver and sends

- ``X-StreamAD-Timestamp: <unix seconds>``
- ``X-StreamAD-Signature: sha256=<hex digest>``

A receiver calls :func:`verify` with the raw request body (the bytes as received, before any
JSON parsing) and the request headers. Each delivery attempt is signed with a new timestamp,
so a retry of an old event passes the timestamp check and has a new signature. A receiver
deduplicates retries by the ``Idempotency-Key`` header, not by signature.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from typing import Mapping

SIGNATURE_HEADER = "X-StreamAD-Signature"
TIMESTAMP_HEADER = "X-StreamAD-Timestamp"
SCHEME = "sha256"


class SignatureError(ValueError):
    """A request failed signature verification: missing header, bad signature, stale timestamp or replay."""


class SeenSignatures:
    """Bounded in-memory store of the signatures already accepted, for :func:`verify`'s replay check.

    Entries older than ``max_age_s`` are dropped, so ``max_age_s`` must be at least the
    timestamp tolerance given to :func:`verify`: an older signature fails the timestamp check
    anyway. Safe to share between threads. A receiver with several processes needs a shared
    store instead, e.g. a set with expiry in Redis, behind the same ``add`` method.
    """

    def __init__(self, max_age_s: float = 600.0, max_entries: int = 100_000) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, signature: str, now: float | None = None) -> bool:
        """Record ``signature``; return False when it was already recorded, True otherwise."""
        now = time.time() if now is None else now
        with self._lock:
            while self._entries:
                oldest, seen_at = next(iter(self._entries.items()))
                if now - seen_at <= self.max_age_s and len(self._entries) < self.max_entries:
                    break
                del self._entries[oldest]
            if signature in self._entries:
                return False
            self._entries[signature] = now
            return True


def _secret_bytes(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the webhook signing secret is empty; set a non-empty secret")
    return key


def signature(body: bytes, timestamp: int, secret: str | bytes) -> str:
    """Return the hex HMAC-SHA256 of ``timestamp + "." + body`` under ``secret``."""
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(_secret_bytes(secret), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str | bytes, timestamp: int | None = None) -> dict[str, str]:
    """Return the signature headers of a request with ``body``, signed at ``timestamp`` (default now)."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"{SCHEME}={signature(body, timestamp, secret)}",
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # HTTP header names are case-insensitive, and a plain dict does not know that.
    getter = getattr(headers, "get", None)
    value = getter(name) if getter is not None else None
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | bytes,
    tolerance_s: float = 300,
    seen: SeenSignatures | None = None,
    now: float | None = None,
) -> int:
    """Check the signature headers of a received request; return its timestamp.

    Raises SignatureError when a header is missing or malformed, or when the timestamp is more
    than ``tolerance_s`` seconds before or after ``now``. It also raises when the signature
    does not match (compared in constant time), and, with a ``seen`` store, when the same
    signature was already accepted (a replayed request).
    """
    timestamp_text = _header(headers, TIMESTAMP_HEADER)
    signature_text = _header(headers, SIGNATURE_HEADER)
    if timestamp_text is None or signature_text is None:
        raise SignatureError(f"request is not signed: missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    # Digits only: int() would also accept surrounding spaces, a sign and underscores.
    if not (timestamp_text.isascii() and timestamp_text.isdigit()):
        raise SignatureError(f"{TIMESTAMP_HEADER} {timestamp_text!r} is invalid; expected unix seconds as digits only")
    timestamp = int(timestamp_text)
    scheme, _, digest = signature_text.strip().partition("=")
    if scheme != SCHEME or not digest:
        raise SignatureError(f"{SIGNATURE_HEADER} is malformed; expected '{SCHEME}=<hex digest>'")

    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(
            f"{TIMESTAMP_HEADER} {timestamp} is {abs(timestamp - now):.0f} s "
            f"{'behind' if timestamp < now else 'ahead of'} the receiver's clock, outside the "
            f"tolerance of {tolerance_s:g} s; the request is stale or a clock is wrong"
        )
    expected = signature(body, timestamp, secret)
    if not hmac.compare_digest(expected.encode(), digest.encode()):
        raise SignatureError("signature does not match the body and timestamp; the body was changed or the secret differs")
    if seen is not None and not seen.add(signature_text.strip(), now=now):
        raise SignatureError("signature was already accepted once; the request is a replay")
    return timestamp

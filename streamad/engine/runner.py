"""The poll → score → deliver → commit loop shared by the daemon and the demo.

Sources and sinks are passed in, so this module does no I/O of its own. A source has
``poll() -> list[message]``, ``commit(messages)`` and ``close()``; a message has ``topic``,
``partition``, ``offset``, ``raw`` (bytes), ``record`` (a :class:`~streamad.records.Record`
or None) and ``error`` (an :class:`~streamad.records.InvalidRecord` or None). A sink has
``send(items)``, ``flush()`` and ``close()``.

Offsets are committed only after the alert and dead-letter sinks have flushed the
results of the polled messages, so a crash re-delivers records whose alerts may not have
been delivered (at-least-once).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

from streamad.engine.engine import ScoredPoint, StreamEngine

logger = logging.getLogger(__name__)


class Sink(Protocol):
    def send(self, items: list[dict]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Source(Protocol):
    def poll(self) -> list: ...

    def commit(self, messages: Sequence) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunStats:
    """Counters of one run: messages, scored points, events and dead letters by reason."""

    messages: int = 0
    points: int = 0
    events: int = 0
    dead_letters: Counter = field(default_factory=Counter)


def dead_letter_entry(message, reason: str, detail: str) -> dict:
    """Return the dead-letter record of ``message``: original bytes (base64), position and reason."""
    raw = message.raw if isinstance(message.raw, (bytes, bytearray)) else str(message.raw).encode()
    return {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "reason": reason,
        "message": detail,
        "raw_base64": base64.b64encode(bytes(raw)).decode("ascii"),
    }


def run_stream(
    engine: StreamEngine,
    source: Source,
    alert_sinks: Iterable[Sink],
    *,
    dead_letter_sinks: Iterable[Sink] = (),
    stop: threading.Event | None = None,
    until: Callable[[], bool] | None = None,
    on_points: Callable[[list[ScoredPoint]], None] | None = None,
) -> RunStats:
    """Run the loop until ``stop`` is set or ``until()`` returns True after a batch.

    Every batch is handed to the sinks and flushed before its offsets are committed. On
    exit the sinks are flushed; the source and sinks are left open for the caller to close.
    """
    stop = stop or threading.Event()
    alert_sinks = list(alert_sinks)
    dead_letter_sinks = list(dead_letter_sinks)
    stats = RunStats()

    while not stop.is_set():
        messages = source.poll()
        if messages:
            _process_batch(engine, messages, alert_sinks, dead_letter_sinks, stats, on_points)
            source.commit(messages)
        if until is not None and until():
            break

    for sink in alert_sinks + dead_letter_sinks:
        sink.flush()
    return stats


def _process_batch(engine, messages, alert_sinks, dead_letter_sinks, stats: RunStats, on_points) -> None:
    started = time.monotonic()
    dead_letters: list[dict] = []
    usable = []
    for message in messages:
        if message.record is None:
            reason = getattr(message.error, "reason", "invalid_record")
            dead_letters.append(dead_letter_entry(message, reason, str(message.error)))
        else:
            usable.append(message)

    result = engine.process([message.record for message in usable])
    for rejection in result.rejected:
        dead_letters.append(dead_letter_entry(usable[rejection.index], rejection.reason, rejection.message))

    for entry in dead_letters:
        stats.dead_letters[entry["reason"]] += 1
        logger.warning(
            "dead letter topic=%s partition=%s offset=%s reason=%s: %s",
            entry["topic"], entry["partition"], entry["offset"], entry["reason"], entry["message"],
        )
    if dead_letters:
        for sink in dead_letter_sinks:
            sink.send(dead_letters)
    if result.events:
        for sink in alert_sinks:
            sink.send(result.events)
    for sink in alert_sinks + dead_letter_sinks:
        sink.flush()

    if on_points is not None and result.points:
        on_points(result.points)
    stats.messages += len(messages)
    stats.points += len(result.points)
    stats.events += len(result.events)
    last = messages[-1]
    logger.debug(
        "batch of %d messages up to topic=%s partition=%s offset=%s: %d windows, %d events in %.3f s",
        len(messages), last.topic, last.partition, last.offset, len(result.points), len(result.events),
        time.monotonic() - started,
    )

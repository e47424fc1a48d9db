"""The poll → score → deliver → commit loop shared by the daemon and the demo.

Sources and sinks are passed in, so this module does no I/O of its own. A source has
``poll() -> list[message]``, ``commit(messages)`` and ``close()``. A message has ``topic``,
``partition``, ``offset``, ``raw`` (bytes), ``record`` (a :class:`~streamad.records.Record`
or None) and ``error`` (an :class:`~streamad.records.InvalidRecord` or None). A sink has
``send(items)``, ``flush()`` and ``close()``, and optionally ``backlog()``, see :class:`Sink`.

Offsets are committed only after the alert and dead-letter sinks have flushed the
results of the polled messages, so a crash re-delivers records whose alerts may not have
been delivered (at-least-once).

With a :class:`~streamad.engine.checkpoint.PartitionCheckpointer`, offsets are committed
only after a checkpoint, every N records or T seconds and when the loop ends: sinks
flushed, then checkpoint files written, then offsets committed. A source that has
``set_rebalance_handler(handler)`` gets the checkpointer, to restore the state of
assigned partitions and to checkpoint revoked ones.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

from streamad.engine.backpressure import Backpressure
from streamad.engine.checkpoint import PartitionCheckpointer
from streamad.engine.engine import ScoredPoint, StreamEngine
from streamad.engine.partitions import SeriesPartitionCheck

if TYPE_CHECKING:
    from streamad.engine.reload import BundleReloader
    from streamad.metrics import DaemonMetrics

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """A destination of alert events, dead letters or scored points.

    A sink that delivers asynchronously may also have ``backlog() -> int``, the number of
    items that ``send()`` accepted and that are not delivered yet. With ``max_in_flight``,
    :func:`run_stream` pauses the source while the sum of the backlogs exceeds it, see
    :mod:`streamad.engine.backpressure`.
    """

    def send(self, items: list[dict]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Source(Protocol):
    def poll(self) -> list: ...

    def commit(self, messages: Sequence) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunStats:
    """Counters of one run: messages, scored points, events (also by status), dead letters by reason, backpressure pauses."""

    messages: int = 0
    points: int = 0
    events: int = 0
    dead_letters: Counter = field(default_factory=Counter)
    events_by_status: Counter = field(default_factory=Counter)
    pauses: int = 0


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


def point_document(point: ScoredPoint) -> dict:
    """Return the JSON object of a scored point; ``timestamp`` is as in the record (epoch ms or step)."""
    return {
        "series": point.series,
        "timestamp": point.timestamp,
        "score": point.score,
        "threshold": point.threshold,
        "anomaly_probability": point.anomaly_probability,
        "is_alert": point.is_alert,
    }


def run_stream(
    engine: StreamEngine,
    source: Source,
    alert_sinks: Iterable[Sink],
    *,
    dead_letter_sinks: Iterable[Sink] = (),
    point_sinks: Iterable[Sink] = (),
    stop: threading.Event | None = None,
    until: Callable[[], bool] | None = None,
    on_points: Callable[[list[ScoredPoint]], None] | None = None,
    checkpointer: PartitionCheckpointer | None = None,
    metrics: DaemonMetrics | None = None,
    reloader: BundleReloader | None = None,
    max_in_flight: int | None = None,
) -> RunStats:
    """Run the loop until ``stop`` is set or ``until()`` returns True after a batch.

    Every batch is handed to the sinks and flushed before its offsets are committed.
    ``point_sinks`` receive every scored point as a dict. Without ``checkpointer`` the
    offsets of every batch are committed after it. With one, they are committed after each
    checkpoint and once more when the loop ends. After every poll, ``metrics`` gets the
    counters, the lag and the checkpoint times, and ``reloader`` may swap in a new model.
    On exit the sinks are flushed; the source and sinks are left open for the caller to close.

    With ``max_in_flight``, the source is paused while the sinks' ``backlog()`` sum exceeds it,
    and resumed when the sum falls below half of it (:class:`~streamad.engine.backpressure.Backpressure`).
    """
    stop = stop or threading.Event()
    alert_sinks = list(alert_sinks)
    dead_letter_sinks = list(dead_letter_sinks)
    point_sinks = list(point_sinks)
    stats = RunStats()
    if checkpointer is not None:
        set_handler = getattr(source, "set_rebalance_handler", None)
        if set_handler is not None:
            set_handler(checkpointer)
    # The checkpointer warns about a series on two partitions itself.
    partition_check = SeriesPartitionCheck() if checkpointer is None else None
    backpressure = None
    if max_in_flight is not None:
        backpressure = Backpressure(alert_sinks + dead_letter_sinks + point_sinks, max_in_flight)

    while not stop.is_set():
        messages = source.poll() if backpressure is None else backpressure.poll(source, stop)
        polled_at = time.monotonic()
        if messages:
            try:
                _process_batch(engine, messages, alert_sinks, dead_letter_sinks, point_sinks, stats, on_points)
            except BaseException as error:
                if checkpointer is not None:
                    checkpointer.disable(f"a batch failed after it changed the engine state: {error!r}")
                raise
            if checkpointer is None:
                partition_check.record(messages)
                _commit(source, messages)
            else:
                checkpointer.record(messages)
        # Checked after empty polls too, so the last records of a stream that went quiet
        # are checkpointed and committed within interval_s.
        if checkpointer is not None and checkpointer.due():
            _checkpoint_and_commit(checkpointer, source)
        if metrics is not None:
            _update_metrics(metrics, engine, source, checkpointer, messages, stats, polled_at, backpressure)
        if reloader is not None:
            _reload_model(reloader)
        if until is not None and until():
            break

    if backpressure is not None:
        stats.pauses = backpressure.pauses
    for sink in alert_sinks + dead_letter_sinks + point_sinks:
        sink.flush()
    if checkpointer is not None:
        _checkpoint_and_commit(checkpointer, source)
    return stats


def _update_metrics(
    metrics, engine, source, checkpointer, messages, stats: RunStats, polled_at: float, backpressure: Backpressure | None = None
) -> None:
    """Hand the state of the loop after one poll to ``metrics``; a failure is logged and the loop goes on."""
    try:
        metrics.set_model(engine.bundle.version, engine.bundle.path)
        metrics.observe_engine(engine.stats)
        if backpressure is not None:
            metrics.observe_backpressure(paused=backpressure.paused, backlog=backpressure.backlog)
        metrics.observe_loop(
            polled_at=polled_at,
            messages=messages,
            stats=stats,
            batch_seconds=time.monotonic() - polled_at if messages else None,
            lag=getattr(source, "lag", None),
            checkpoints=None if checkpointer is None else checkpointer.checkpointed,
            # Only the directory store has files; for a Kafka store the time is when the write was noticed.
            checkpoint_path=None if checkpointer is None else getattr(checkpointer.store, "path", None),
        )
    except Exception as error:  # noqa: BLE001 - metrics must never stop the scoring
        metrics.update_failures += 1
        if metrics.update_failures in (1, 10, 100) or metrics.update_failures % 1000 == 0:
            logger.error("updating the metrics failed (%d times so far), continuing: %r", metrics.update_failures, error)


def _reload_model(reloader: BundleReloader) -> None:
    """Let ``reloader`` swap in a new model version between two batches; it logs its own failures."""
    reloader.check()


def _checkpoint_and_commit(checkpointer: PartitionCheckpointer, source: Source) -> None:
    """Write the checkpoints, then commit their offsets, so a commit never gets ahead of a checkpoint."""
    offsets = checkpointer.checkpoint()
    if offsets:
        _commit(source, offsets)


def _commit(source: Source, messages_or_offsets) -> None:
    try:
        source.commit(messages_or_offsets)
    except Exception as error:  # noqa: BLE001 - a failed commit loses no record, see below
        # Typically the group rebalanced since the poll. The partition's next owner resumes
        # after its checkpoint, or at the last committed offset and so reads these records
        # again: at least once either way.
        logger.error("offset commit failed, continuing: error=%r", error)


def _process_batch(engine, messages, alert_sinks, dead_letter_sinks, point_sinks, stats: RunStats, on_points) -> None:
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
    if result.points:
        documents = [point_document(point) for point in result.points]
        for sink in point_sinks:
            sink.send(documents)
    for sink in alert_sinks + dead_letter_sinks + point_sinks:
        sink.flush()

    if on_points is not None and result.points:
        on_points(result.points)
    stats.messages += len(messages)
    stats.points += len(result.points)
    stats.events += len(result.events)
    stats.events_by_status.update(event["status"] for event in result.events)
    last = messages[-1]
    logger.debug(
        "batch of %d messages up to topic=%s partition=%s offset=%s: %d windows, %d events in %.3f s",
        len(messages), last.topic, last.partition, last.offset, len(result.points), len(result.events),
        time.monotonic() - started,
    )

"""Backpressure of the stream runner: pause the source while asynchronous sinks fall behind.

A sink that delivers asynchronously, such as a webhook outbox, has ``backlog() -> int``: the
number of items that its ``send()`` accepted and that are not delivered yet. The runner sums
the backlogs of all sinks before each poll. When the sum exceeds ``max_in_flight``, it pauses
the source, and when the sum falls below half of ``max_in_flight``, it resumes it. The gap
between the two levels (hysteresis) keeps the source from pausing and resuming on every batch.

A source with ``pause()``, ``resume()`` and ``paused()``, such as
:class:`~connectors.kafka.KafkaSource`, is still polled while paused, because a Kafka consumer
that does not poll within ``max_poll_interval_ms`` leaves its group. Such polls return no
records of paused partitions. A source without these methods is not polled while paused.

The backlog can exceed ``max_in_flight`` by the items of one batch, because it is checked
before each poll and one batch is processed whole.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

logger = logging.getLogger(__name__)

# Seconds between two backlog checks while a source without pause() is paused.
_PAUSED_WAIT_S = 0.1


def sinks_backlog(sinks: Iterable) -> int | None:
    """Return the sum of ``backlog()`` over the sinks that have it, or None when none has it."""
    total = None
    for sink in sinks:
        backlog = getattr(sink, "backlog", None)
        if backlog is None:
            continue
        total = (total or 0) + int(backlog())
    return total


class BackpressureGate:
    """The pause and resume decision, with hysteresis, from a backlog count.

    The gate closes (pause) when the backlog exceeds ``max_in_flight`` and opens (resume)
    when the backlog is below ``max_in_flight / 2``.
    """

    def __init__(self, max_in_flight: int) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight!r} is invalid; use a number of items >= 1")
        self.max_in_flight = max_in_flight
        self.paused = False

    def update(self, backlog: int) -> str | None:
        """Apply one backlog reading; return ``"pause"`` or ``"resume"`` on a change, else None."""
        if not self.paused and backlog > self.max_in_flight:
            self.paused = True
            return "pause"
        # backlog < max_in_flight / 2 in integers, so that max_in_flight=1 resumes at a backlog of 0.
        if self.paused and 2 * backlog < self.max_in_flight:
            self.paused = False
            return "resume"
        return None


class Backpressure:
    """Pause and resume a source from the backlog of ``sinks``; used by :func:`~streamad.engine.runner.run_stream`.

    Call :meth:`poll` in place of ``source.poll()``. ``pauses``, ``resumes`` and
    ``max_backlog`` (the highest backlog read) are counters for logs and tests, and
    ``backlog`` is the reading taken before the last poll, for the metrics.
    """

    def __init__(self, sinks: Iterable, max_in_flight: int) -> None:
        self.gate = BackpressureGate(max_in_flight)
        self.sinks = list(sinks)
        self.pauses = 0
        self.resumes = 0
        self.max_backlog = 0
        self.backlog = 0
        self._paused_since = 0.0

    @property
    def paused(self) -> bool:
        return self.gate.paused

    def poll(self, source, stop: threading.Event) -> list:
        """Update the pause state of ``source`` from the sinks' backlog, then poll it if it may be polled."""
        backlog = sinks_backlog(self.sinks)
        if backlog is None:
            return source.poll()
        self.backlog = backlog
        self.max_backlog = max(self.max_backlog, backlog)
        change = self.gate.update(backlog)
        if change == "pause":
            self._pause(source, backlog)
        elif change == "resume":
            self._resume(source, backlog)

        if not self.gate.paused:
            return source.poll()
        if not _can_pause(source):
            stop.wait(_PAUSED_WAIT_S)
            return []
        messages = source.poll()
        # A source whose pause() does not cover partitions assigned later (KafkaSource does)
        # gets them paused here, after the poll that assigned them.
        newly_paused = source.pause()
        if newly_paused:
            logger.info(
                "paused newly assigned partitions: backlog=%d partitions=%s", backlog, _format_partitions(newly_paused)
            )
        # NOTE: records that such a poll returned from a newly assigned partition are processed,
        # so the backlog can then exceed max_in_flight by up to two batches.
        return messages

    def _pause(self, source, backlog: int) -> None:
        self.pauses += 1
        self._paused_since = time.monotonic()
        partitions = source.pause() if _can_pause(source) else set()
        logger.warning(
            "sinks are slow, pausing consumption: backlog=%d items > max_in_flight=%d partitions=%s",
            backlog, self.gate.max_in_flight, _format_partitions(partitions),
        )

    def _resume(self, source, backlog: int) -> None:
        self.resumes += 1
        partitions = source.resume() if _can_pause(source) else set()
        logger.info(
            "resuming consumption after %.1f s: backlog=%d items < %d (half of max_in_flight) partitions=%s",
            time.monotonic() - self._paused_since, backlog, (self.gate.max_in_flight + 1) // 2,
            _format_partitions(partitions),
        )


def _can_pause(source) -> bool:
    return all(callable(getattr(source, name, None)) for name in ("pause", "resume", "paused"))


def _format_partitions(partitions: Iterable[tuple[str, int]]) -> str:
    return ",".join(f"{topic}[{partition}]" for topic, partition in sorted(partitions)) or "none"

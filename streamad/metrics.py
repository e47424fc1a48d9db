"""Prometheus metrics and the health check of the ``streamad run`` daemon.

:class:`DaemonMetrics` keeps the daemon's metrics in a ``prometheus_client`` registry of its
own. The stream runner hands it the loop's state after every poll
(:meth:`DaemonMetrics.observe_loop`), and the status server (``connectors.http_status``)
renders it in the Prometheus text exposition format 0.0.4 and calls its health check
from its own threads. prometheus_client's metrics are thread-safe, and the few plain
attributes shared with those threads are replaced whole, never mutated in place.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as CountOf
from pathlib import Path
from typing import Callable, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

logger = logging.getLogger(__name__)

# The text format 0.0.4 has no creation timestamps, so prometheus_client would add a
# ``*_created`` gauge beside every counter and histogram series. The switch is process-wide.
disable_created_metrics()

# The format that generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Batch durations range from milliseconds (a few records) to minutes (a slow webhook, or a
# large model at max_poll_records). The last bucket is the default max_poll_interval_ms of 300 s,
# within which a batch must finish.
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

PartitionId = tuple[str, int]


class DaemonMetrics:
    """The metrics of one daemon process and its health state.

    Parameters
    ----------
    max_stall_s
        The health check fails when the loop has not polled for longer than this many seconds.
    registry
        Registry to register the metrics in; a new one by default, so that two instances in
        one process (e.g. in tests) do not collide.
    clock
        Monotonic clock in seconds, for the uptime and the time since the last poll.
    """

    def __init__(
        self,
        max_stall_s: float,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not max_stall_s > 0:
            raise ValueError(f"max_stall_s={max_stall_s!r} (--health-max-stall-s) is invalid; use seconds > 0")
        self.max_stall_s = float(max_stall_s)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        self.started = clock()
        self.last_poll = self.started
        self.model_version = ""
        # Failed calls of observe_loop, counted by the runner to log only some repeats.
        self.update_failures = 0
        self._seen_points = 0
        self._seen_events: CountOf = CountOf()
        self._seen_dead_letters: CountOf = CountOf()
        self._seen_dropped: CountOf = CountOf()
        self._lag_labels: set[tuple[str, str]] = set()
        self._checkpoint_offsets: dict[PartitionId, int] = {}

        registry = self.registry
        self.records = Counter(
            "streamad_records", "Records consumed, valid or not, by source topic.", ["topic"], registry=registry
        )
        self.windows_scored = Counter("streamad_windows_scored", "Windows scored by the model.", registry=registry)
        self.incident_events = Counter(
            "streamad_incident_events", "Incident events sent to the alert sinks, by status.", ["status"], registry=registry
        )
        self.windows_dropped = Counter(
            "streamad_windows_dropped",
            "Windows not scored, by reason: gap (a NaN run longer than the fill limit) or non_finite_score "
            "(the model returned NaN or infinity).",
            ["reason"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "streamad_dead_letters", "Records sent to the dead letters, by reason.", ["reason"], registry=registry
        )
        self.consumer_lag = Gauge(
            "streamad_consumer_lag_records",
            "Records not yet read per assigned partition: high watermark of the last fetch minus the position. "
            "A partition not fetched yet has no sample.",
            ["topic", "partition"],
            registry=registry,
        )
        self.batch_duration = Histogram(
            "streamad_batch_duration_seconds",
            "Seconds from the return of a non-empty poll to the end of its delivery, checkpoint and commit.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        )
        self.checkpoint_time = Gauge(
            "streamad_checkpoint_last_success_timestamp_seconds",
            "POSIX time of the newest checkpoint file of each partition this instance holds.",
            ["topic", "partition"],
            registry=registry,
        )
        self.checkpoint_offset = Gauge(
            "streamad_checkpoint_offset",
            "Offset of the last record in the newest checkpoint of each partition this instance holds.",
            ["topic", "partition"],
            registry=registry,
        )
        self.model = Info("streamad_model", "The model bundle that scores the windows.", registry=registry)
        self.model_reloads = Counter(
            "streamad_model_reloads",
            "Model reload attempts by result: loaded, rejected (does not fit the running state) or failed (unreadable).",
            ["result"],
            registry=registry,
        )
        self.backpressure_paused = Gauge(
            "streamad_backpressure_paused",
            "1 while backpressure pauses the partitions: from a backlog above --max-in-flight until it falls below half of it. "
            "Else 0.",
            registry=registry,
        )
        self.outbox_backlog = Gauge(
            "streamad_outbox_backlog",
            "Events accepted by asynchronous sinks, such as the webhook outbox, and not delivered yet, "
            "as read before the last poll.",
            registry=registry,
        )
        self.uptime = Gauge("streamad_uptime_seconds", "Seconds since the daemon started.", registry=registry)
        self.uptime.set_function(lambda: self.clock() - self.started)
        self.poll_age = Gauge(
            "streamad_seconds_since_last_poll",
            "Seconds since the consuming loop last returned from a poll; the health check fails above --health-max-stall-s.",
            registry=registry,
        )
        self.poll_age.set_function(self.seconds_since_poll)
        ProcessCollector(registry=registry)

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text exposition format 0.0.4."""
        return generate_latest(self.registry)

    def seconds_since_poll(self) -> float:
        return self.clock() - self.last_poll

    def health(self) -> tuple[bool, dict]:
        """Return whether the loop polled within ``max_stall_s`` and the JSON body of the health check."""
        since_poll = self.seconds_since_poll()
        healthy = since_poll <= self.max_stall_s
        body = {
            "status": "ok" if healthy else "stalled",
            "seconds_since_last_poll": round(since_poll, 3),
            "max_stall_s": self.max_stall_s,
            "model_version": self.model_version,
            "uptime_s": round(self.clock() - self.started, 3),
        }
        return healthy, body

    def observe_loop(
        self,
        *,
        polled_at: float,
        messages: Iterable,
        stats,
        batch_seconds: float | None,
        lag: Callable[[], Mapping[PartitionId, int]] | None,
        checkpoints: Mapping[PartitionId, int] | None = None,
        checkpoint_path: Callable[[str, int], Path] | None = None,
    ) -> None:
        """Update the metrics after one iteration of the consuming loop.

        ``polled_at`` is the clock time at which the poll returned, ``messages`` what it
        returned, and ``stats`` the run's cumulative
        :class:`~streamad.engine.runner.RunStats`, whose increase since the last call is
        added to the counters. ``checkpoints`` maps each partition to the offset of its
        newest checkpoint, whose file ``checkpoint_path(topic, partition)`` gives the
        checkpoint time. ``lag()`` returns the lag of each assigned partition, and partitions
        missing from it lose their sample. It is called last, because it may raise a Kafka
        error, and then the other metrics are already updated.
        """
        self.last_poll = polled_at
        for topic, count in CountOf(message.topic for message in messages).items():
            self.records.labels(topic).inc(count)
        if batch_seconds is not None:
            self.batch_duration.observe(batch_seconds)
        self._count_run_stats(stats)
        if checkpoints is not None:
            self._set_checkpoints(checkpoints, checkpoint_path)
        if lag is not None:
            self._set_lag(lag())

    def observe_backpressure(self, *, paused: bool, backlog: int) -> None:
        """Show whether backpressure pauses the partitions and the sinks' backlog that decided it."""
        self.backpressure_paused.set(1 if paused else 0)
        self.outbox_backlog.set(backlog)

    def observe_engine(self, engine_stats: Mapping[str, int]) -> None:
        """Count the windows the engine dropped since the last call, from its cumulative ``stats`` counter."""
        dropped = {
            "gap": engine_stats.get("windows_skipped_gap", 0),
            "non_finite_score": engine_stats.get("windows_dropped_non_finite_score", 0),
        }
        self._seen_dropped = _add_increase(self.windows_dropped, dropped, self._seen_dropped)

    def set_model(self, version: str, path: str | Path | None) -> None:
        """Show ``version`` as the model in use."""
        if version != self.model_version:
            self.model.info({"version": version, "path": "" if path is None else str(path)})
            self.model_version = version

    def count_reload(self, result: str) -> None:
        """Count one model reload attempt with its result: ``loaded``, ``rejected`` or ``failed``."""
        self.model_reloads.labels(result).inc()

    def _count_run_stats(self, stats) -> None:
        if stats.points > self._seen_points:
            self.windows_scored.inc(stats.points - self._seen_points)
            self._seen_points = stats.points
        self._seen_events = _add_increase(self.incident_events, stats.events_by_status, self._seen_events)
        self._seen_dead_letters = _add_increase(self.dead_letters, stats.dead_letters, self._seen_dead_letters)

    def _set_lag(self, lag: Mapping[PartitionId, int]) -> None:
        labels = {(topic, str(partition)): value for (topic, partition), value in lag.items()}
        for gone in self._lag_labels - set(labels):
            self.consumer_lag.remove(*gone)
        for label, value in labels.items():
            self.consumer_lag.labels(*label).set(value)
        self._lag_labels = set(labels)

    def _set_checkpoints(self, checkpoints: Mapping[PartitionId, int], checkpoint_path) -> None:
        for gone in set(self._checkpoint_offsets) - set(checkpoints):
            labels = (gone[0], str(gone[1]))
            self.checkpoint_time.remove(*labels)
            self.checkpoint_offset.remove(*labels)
        for partition_id, offset in checkpoints.items():
            if self._checkpoint_offsets.get(partition_id) == offset:
                continue
            topic, partition = partition_id
            # A restored checkpoint counts too, so its time is the file's, not the time it was noticed.
            written_at = time.time()
            if checkpoint_path is not None:
                try:
                    written_at = checkpoint_path(topic, partition).stat().st_mtime
                except OSError as error:
                    logger.debug("checkpoint file of topic=%s partition=%s not readable: %r", topic, partition, error)
            self.checkpoint_time.labels(topic, str(partition)).set(written_at)
            self.checkpoint_offset.labels(topic, str(partition)).set(offset)
        self._checkpoint_offsets = dict(checkpoints)


def _add_increase(counter: Counter, totals: Mapping[str, int], seen: CountOf) -> CountOf:
    """Increment ``counter``'s label of each key by its increase in ``totals`` since ``seen``; return the new ``seen``."""
    for key, total in totals.items():
        increase = total - seen.get(key, 0)
        if increase > 0:
            counter.labels(key).inc(increase)
    return CountOf(totals)

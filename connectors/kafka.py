"""Kafka source and sinks built on kafka-python.

:class:`KafkaSource` reads records in a consumer group and commits offsets only when the
caller calls :meth:`~KafkaSource.commit`, after the alerts for those records are
acknowledged. So delivery is at least once: a crash between the alert acknowledgement and
the commit sends the records, and their alerts, again. :class:`KafkaAlertSink` and
:class:`KafkaDeadLetterSink` send JSON and raise from :meth:`~KafkaJsonSink.flush` when a
message is not acknowledged. Given a :class:`RetryBackoff`, the source and the sinks instead
retry with backoff through a broker outage, see :func:`call_with_retry`.

Tansu 0.6, the broker of the tests and the demo, differs from Apache Kafka in ways that shape
this module:

- ListOffsets(latest), that is ``KafkaConsumer.end_offsets()``, returns the last batch's base
  offset instead of the high watermark, so :meth:`KafkaSource.lag` uses
  ``KafkaConsumer.highwater()`` from fetch responses.
- A consumer-group join takes about half of ``session_timeout_ms``, whatever
  ``max_poll_interval_ms`` is (measured with kafka-python 3.0.12: 3 s at 6000 ms, 5 s at
  10000 ms, 23 s at 45000 ms). Roughly one join in 15 takes twice as long, because a metadata
  response that arrives after the SyncGroup makes kafka-python join again.
- An idempotent producer never recovers from a broker restart that loses the memory
  storage, see :class:`KafkaJsonSink`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, UnknownError
from kafka.structs import OffsetAndMetadata

from streamad.records import DEFAULT_MAX_BYTES, InvalidRecord, Record, decode_record, encode_record

logger = logging.getLogger(__name__)

# At most this many invalid records per poll are logged one by one. The rest get one summary line.
_MAX_INVALID_LOGGED_PER_POLL = 10


class KafkaDeliveryError(KafkaError):
    """Messages that the broker did not acknowledge before the flush ended.

    ``retriable`` is True when every failure is retriable (see :func:`is_retriable`), such as
    the KafkaTimeoutError of a batch that expired while the broker was unreachable.
    """

    def __init__(self, message: str, failures: list[tuple[int, Exception]]) -> None:
        super().__init__(message)
        self.failures = failures
        self.retriable = all(is_retriable(error) for _, error in failures)


def is_retriable(error: BaseException) -> bool:
    """Return True for a Kafka error worth retrying: kafka-python's retriable errors and UNKNOWN_SERVER_ERROR (-1).

    Tansu 0.6 returned UNKNOWN_SERVER_ERROR for a produce request right after a restart
    that lost its memory storage (seen in tests/test_daemon_broker_restart.py), and Apache
    Kafka returns it for unexpected failures inside the broker.
    """
    return isinstance(error, KafkaError) and (bool(getattr(error, "retriable", False)) or isinstance(error, UnknownError))


_Result = TypeVar("_Result")


class RetryBackoff:
    """Exponential backoff with jitter between the retries of a Kafka operation during a broker outage.

    The ceiling of retry ``n`` (from 1) is ``initial_s * 2 ** (n - 1)``, capped at ``max_s``,
    and the delay is drawn uniformly from the upper half of the ceiling, so that many
    daemons do not retry in step. Setting ``stop`` ends the waiting: the operation then
    raises its last error instead of retrying.
    """

    def __init__(self, max_s: float = 30.0, initial_s: float = 0.5, stop: threading.Event | None = None) -> None:
        if isinstance(max_s, bool) or not isinstance(max_s, (int, float)) or not max_s > 0:
            raise ValueError(f"max_s={max_s!r} is invalid; use seconds > 0")
        if isinstance(initial_s, bool) or not isinstance(initial_s, (int, float)) or not initial_s > 0:
            raise ValueError(f"initial_s={initial_s!r} is invalid; use seconds > 0")
        self.max_s = float(max_s)
        self.initial_s = min(float(initial_s), self.max_s)
        self.stop = stop if stop is not None else threading.Event()
        self._random = random.Random()

    def delay(self, retry: int) -> float:
        """Return the seconds to wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(max(retry - 1, 0), 64))
        return ceiling * (0.5 + 0.5 * self._random.random())

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` and return True, or return False as soon as ``stop`` is set."""
        return not self.stop.wait(seconds)


def call_with_retry(
    operation: Callable[[], _Result],
    backoff: RetryBackoff | None,
    action: str,
    waiting_for: Callable[[], str],
    ids: Callable[[], str],
) -> _Result:
    """Call ``operation`` until it succeeds, waiting ``backoff`` delays after its retriable Kafka errors.

    Each failure logs one WARNING with ``action``, the retry number, the delay, what the
    retry waits for (``waiting_for()``), the ids (``ids()``, e.g. ``"topic=alerts"``) and the
    error. The first success after a failure logs one INFO line, and so does an error that
    is not retriable after a failure, because the broker responded. A Kafka error that is
    not retriable is raised at once, and so is any error when ``backoff`` is None or its
    ``stop`` event is set.
    """
    retries = 0
    started = time.monotonic()
    while True:
        try:
            result = operation()
        except KafkaError as error:
            if retries and not is_retriable(error):
                logger.info(
                    "%s: the broker responded again after %d retries in %.1f s, with an error that is not retried: %s",
                    action, retries, time.monotonic() - started, ids(),
                )
            if backoff is None or not is_retriable(error) or backoff.stop.is_set():
                raise
            retries += 1
            delay = backoff.delay(retries)
            logger.warning(
                "%s failed, retry %d in %.1f s, waiting for %s: %s error=%r",
                action, retries, delay, waiting_for(), ids(), error,
            )
            if not backoff.wait(delay):
                logger.warning("%s: stop requested, no more retries: %s", action, ids())
                raise
            continue
        if retries:
            logger.info(
                "%s succeeded after %d retries in %.1f s, the broker is reachable again: %s",
                action, retries, time.monotonic() - started, ids(),
            )
        return result


# Consumer side


@dataclass(frozen=True)
class KafkaSourceConfig:
    """Settings of :class:`KafkaSource`. Times are in milliseconds.

    The defaults suit Apache Kafka. Against Tansu a group join takes about half of
    ``session_timeout_ms``, so tests lower it to 6000 (Kafka's default minimum,
    ``group.min.session.timeout.ms``) with ``heartbeat_interval_ms`` of 2000.
    """

    bootstrap_servers: str | Sequence[str]
    topics: Sequence[str]
    group_id: str
    client_id: str = "streamad-source"
    # Maximum number of Kafka records that one poll() returns.
    max_poll_records: int = 500
    # Maximum time that one poll() waits for records.
    poll_timeout_ms: int = 500
    # The broker removes the consumer from the group when it sends no heartbeat for this long.
    session_timeout_ms: int = 10_000
    # Interval between heartbeats. Kafka recommends at most a third of session_timeout_ms.
    heartbeat_interval_ms: int = 3_000
    # Maximum time between two poll() calls before the consumer leaves the group. Scoring one
    # batch of max_poll_records records must finish within it.
    max_poll_interval_ms: int = 300_000
    # Maximum time that one request to the broker waits for its response.
    request_timeout_ms: int = 30_000
    # Where a group without a committed offset starts: "earliest" or "latest".
    auto_offset_reset: str = "earliest"
    # Maximum size of one record value. Larger values arrive as invalid records with reason too_large.
    max_record_bytes: int = DEFAULT_MAX_BYTES
    # Offsets are committed only through KafkaSource.commit(), after the alerts are acknowledged.
    # True is rejected.
    enable_auto_commit: bool = False

    def __post_init__(self) -> None:
        topics = (self.topics,) if isinstance(self.topics, str) else tuple(self.topics)
        if not topics or not all(isinstance(topic, str) and topic for topic in topics):
            raise ValueError(f"topics={self.topics!r} is invalid; give one or more non-empty topic names")
        object.__setattr__(self, "topics", topics)
        if not isinstance(self.group_id, str) or not self.group_id:
            raise ValueError(f"group_id={self.group_id!r} is invalid; give a non-empty consumer group id")
        if self.enable_auto_commit:
            raise ValueError(
                "enable_auto_commit=True is not supported; KafkaSource commits offsets only through commit(), "
                "after the alerts for the records are acknowledged"
            )
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ValueError(f"auto_offset_reset={self.auto_offset_reset!r} is invalid; use 'earliest' or 'latest'")
        for name in (
            "max_poll_records",
            "poll_timeout_ms",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "request_timeout_ms",
            "max_record_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} is invalid; use a positive integer")
        # kafka-python's documentation of heartbeat_interval_ms: "should be set no higher than 1/3
        # of that value" (session_timeout_ms).
        if 3 * self.heartbeat_interval_ms > self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms={self.heartbeat_interval_ms} is more than a third of "
                f"session_timeout_ms={self.session_timeout_ms}; use at most {self.session_timeout_ms // 3}"
            )
        # kafka-python requires fetch_max_wait_ms (500 by default) < request_timeout_ms.
        if self.request_timeout_ms <= 500:
            raise ValueError(f"request_timeout_ms={self.request_timeout_ms} is invalid; use more than 500 ms")
        _check_bootstrap_servers(self.bootstrap_servers)


def _check_bootstrap_servers(value) -> None:
    """Raise ValueError unless ``value`` is HOST:PORT[,HOST:PORT...] (a string or a list), with ports in 1-65535.

    kafka-python would take a bare host as port 9092 and then wait the full request timeout when
    the name does not resolve, so a missing port is rejected here at once.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    fix = "use HOST:PORT, or several separated by commas, e.g. kafka1:9092,kafka2:9092"
    if not items:
        raise ValueError(f"bootstrap_servers={value!r} is empty; {fix}")
    for item in items:
        text = item.strip() if isinstance(item, str) else ""
        host, separator, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # an IPv6 address, e.g. [::1]:9092
        valid_port = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
        if not separator or not host or not valid_port or any(character.isspace() for character in host):
            raise ValueError(f"bootstrap server {item!r} in {value!r} is invalid; {fix}")


@dataclass(frozen=True, eq=False)
class SourceMessage:
    """One Kafka record and the result of decoding its value.

    Exactly one of ``record`` and ``error`` is set. ``raw`` is the value, ``b""`` for a tombstone.
    ``kafka_timestamp_ms`` is the Kafka record timestamp, not the sample time in ``record``.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    record: Record | None
    error: InvalidRecord | None
    kafka_timestamp_ms: int | None = None


class _RebalanceListener(ConsumerRebalanceListener):
    """Log partition moves and pass them to the source's rebalance handler, if one is set.

    kafka-python 3.0 calls these methods on its IO thread while the thread that called
    ``poll()`` or ``close()`` waits, so they must not call blocking consumer methods such
    as ``commit()``, which raises RuntimeError there. They seek with ``seek()`` and commit
    with ``commit_async()``, and they catch every error of the handler, because an error
    that escapes aborts kafka-python's rebalance.
    """

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        if not revoked:
            return
        logger.info("Kafka partitions revoked: group=%s partitions=%s", self._source.config.group_id, _format_partitions(revoked))
        self._source._forget_next_offsets(revoked)
        handler = self._source.rebalance_handler
        if handler is None:
            return
        try:
            offsets = handler.on_revoked([(tp.topic, tp.partition) for tp in revoked])
            self._source.commit_async(offsets)
        except Exception:  # noqa: BLE001 - see the class docstring
            logger.exception("Rebalance handler failed on revocation: partitions=%s", _format_partitions(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        logger.info("Kafka partitions assigned: group=%s partitions=%s", self._source.config.group_id, _format_partitions(assigned))
        self._source._forget_next_offsets(assigned)
        self._source._pause_if_paused(assigned)
        handler = self._source.rebalance_handler
        if handler is None or not assigned:
            return
        try:
            seek_offsets = handler.on_assigned([(tp.topic, tp.partition) for tp in assigned])
            for (topic, partition), offset in seek_offsets.items():
                self._source.seek(topic, partition, offset)
        except Exception:  # noqa: BLE001 - see the class docstring
            logger.exception("Rebalance handler failed on assignment: partitions=%s", _format_partitions(assigned))

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        lost = list(lost)
        logger.warning(
            "Kafka partitions lost, their uncommitted records will be delivered again: group=%s partitions=%s",
            self._source.config.group_id,
            _format_partitions(lost),
        )
        self._source._forget_next_offsets(lost)
        handler = self._source.rebalance_handler
        if handler is None:
            return
        try:
            handler.on_lost([(tp.topic, tp.partition) for tp in lost])
        except Exception:  # noqa: BLE001 - see the class docstring
            logger.exception("Rebalance handler failed on lost partitions: partitions=%s", _format_partitions(lost))


class KafkaSource:
    """Records from Kafka topics, read in a consumer group with manual offset commits.

    Call :meth:`poll` in a loop, process the messages, and :meth:`commit` them after their
    results are delivered. A malformed record does not raise. It arrives as a
    :class:`SourceMessage` with ``error`` set.

    With ``retry``, a retriable Kafka error of a poll, for example during a broker outage,
    is logged and the poll returns no message after a backoff delay, and a commit that
    fails with one is retried with backoff until it succeeds or ``retry.stop`` is set.
    kafka-python reconnects by itself, with its reconnection backoff capped at
    ``retry.max_s``. The constructor still raises when no broker responds within
    ``request_timeout_ms``, so a wrong address fails at start.
    """

    def __init__(self, config: KafkaSourceConfig, retry: RetryBackoff | None = None) -> None:
        self.config = config
        self.retry = retry
        self._poll_retries = 0
        self._poll_failing_since = 0.0
        self.invalid_count = 0
        self._closed = False
        self._buffered: list[SourceMessage] = []
        self._committed: dict[tuple[str, int], int] = {}
        # The offset each assigned partition reads next, from seek() and the returned records
        # (see _check_log_ends). Unknown right after an assignment until records arrive.
        self._next_offsets: dict[TopicPartition, int] = {}
        self.rebalance_handler: Any = None
        # Set by pause() and cleared by resume(); newly assigned partitions are paused while it is set.
        self._pausing = False
        options: dict[str, Any] = {}
        if retry is not None:
            options["reconnect_backoff_max_ms"] = int(retry.max_s * 1000)
        try:
            self._consumer = KafkaConsumer(
                **options,
                bootstrap_servers=config.bootstrap_servers,
                client_id=config.client_id,
                group_id=config.group_id,
                enable_auto_commit=False,
                # An auto-created input topic gets the broker's default partition count, which can
                # move series to other partitions than their checkpoints. Tansu 0.6 ignores this flag.
                allow_auto_create_topics=False,
                auto_offset_reset=config.auto_offset_reset,
                max_poll_records=config.max_poll_records,
                session_timeout_ms=config.session_timeout_ms,
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                max_poll_interval_ms=config.max_poll_interval_ms,
                request_timeout_ms=config.request_timeout_ms,
                bootstrap_timeout_ms=config.request_timeout_ms,
            )
        except KafkaTimeoutError as error:
            raise _bootstrap_error(config.bootstrap_servers, error) from error
        # A consumer of a missing topic waits without any log line, so log a warning once here.
        for topic in config.topics:
            if not self._consumer.partitions_for_topic(topic):
                logger.warning("Kafka topic not found, waiting for it to be created: topic=%s", topic)
        self._consumer.subscribe(list(config.topics), listener=_RebalanceListener(self))
        logger.info(
            "Kafka source started: bootstrap=%s topics=%s group=%s",
            config.bootstrap_servers,
            ",".join(config.topics),
            config.group_id,
        )

    def poll(self, timeout_ms: int | None = None) -> list[SourceMessage]:
        """Fetch the next records, decoded, in offset order per partition.

        Waits at most ``timeout_ms`` (default ``config.poll_timeout_ms``) and returns an empty
        list when no record arrived. Call it at least every ``max_poll_interval_ms``, because it
        also keeps the consumer in its group.
        """
        if self._buffered:
            messages, self._buffered = self._buffered, []
            return messages
        timeout_ms = self.config.poll_timeout_ms if timeout_ms is None else timeout_ms
        if self.retry is None:
            return self._fetch(timeout_ms)
        return self._fetch_or_back_off(timeout_ms)

    def commit(self, messages_or_offsets: Iterable[SourceMessage] | Mapping[Any, int]) -> dict[tuple[str, int], int]:
        """Commit offsets synchronously and return the committed offset per ``(topic, partition)``.

        Given messages, commits the highest offset plus one per partition, so the group resumes
        after them. Given a mapping from ``(topic, partition)`` or ``TopicPartition`` to an
        offset, commits those offsets as they are. Each is the next offset to read, which is
        the last processed offset plus one, as in Kafka. An offset not above the one that
        this source last committed for the partition is skipped, so a late commit of an older
        batch cannot rewind the group.

        Each attempt waits at most ``request_timeout_ms``. Raises ``kafka.errors.CommitFailedError``
        when the group rebalanced since the poll. The uncommitted records are then delivered
        again to the partition's new owner. Raises ``kafka.errors.KafkaTimeoutError`` when the
        coordinator did not respond in time, which with ``retry`` happens only after
        ``retry.stop`` is set.
        """
        next_offsets = _next_offsets(messages_or_offsets)
        to_commit = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in next_offsets.items()
            if offset > self._committed.get((topic, partition), -1)
        }
        if not to_commit:
            return {}
        try:
            call_with_retry(
                lambda: self._consumer.commit(to_commit, timeout_ms=self.config.request_timeout_ms),
                self.retry,
                "Kafka offset commit",
                lambda: "the group coordinator to accept the offsets",
                lambda: f"group={self.config.group_id} offsets={_format_offsets(to_commit)}",
            )
        except KafkaError as error:
            logger.error(
                "Kafka offset commit failed: group=%s offsets=%s error=%r",
                self.config.group_id,
                _format_offsets(to_commit),
                error,
            )
            raise
        committed = {(tp.topic, tp.partition): meta.offset for tp, meta in to_commit.items()}
        self._committed.update(committed)
        logger.debug("Kafka offsets committed: group=%s offsets=%s", self.config.group_id, _format_offsets(to_commit))
        return committed

    def set_rebalance_handler(self, handler: Any) -> None:
        """Pass partition moves to ``handler``, e.g. a :class:`~streamad.engine.checkpoint.PartitionCheckpointer`.

        The handler has ``on_assigned(partitions) -> {partition: offset}``, whose offsets
        the consumer seeks to, ``on_revoked(partitions) -> {partition: offset}``, whose
        offsets are committed, ``on_lost(partitions)``, and ``on_reset(partitions)`` for
        partitions whose log was replaced and that now restart at the ``auto_offset_reset``
        offset (see :meth:`_check_log_ends`). A partition is a ``(topic, partition)`` pair.
        They are called inside :meth:`poll` and :meth:`close`.
        """
        self.rebalance_handler = handler

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Make the next fetch of an assigned partition start at ``offset``."""
        tp = TopicPartition(topic, partition)
        self._consumer.seek(tp, offset)
        self._next_offsets[tp] = offset
        self._buffered = [m for m in self._buffered if (m.topic, m.partition) != (topic, partition)]
        logger.info("Kafka partition seek: group=%s partition=%s[%d] offset=%d", self.config.group_id, topic, partition, offset)

    def commit_async(self, offsets: Mapping[Any, int]) -> None:
        """Send an offset commit without waiting for it, and log its result when it arrives.

        Use it where :meth:`commit` cannot block, such as in a rebalance listener.
        """
        next_offsets = _next_offsets(offsets)
        to_commit = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in next_offsets.items()
            if offset > self._committed.get((topic, partition), -1)
        }
        if not to_commit:
            return

        def log_result(_offsets, response) -> None:
            if isinstance(response, Exception):
                logger.error("Kafka offset commit failed: group=%s offsets=%s error=%r", self.config.group_id, _format_offsets(to_commit), response)
            else:
                logger.debug("Kafka offsets committed: group=%s offsets=%s", self.config.group_id, _format_offsets(to_commit))

        self._consumer.commit_async(to_commit, callback=log_result)
        self._committed.update({(tp.topic, tp.partition): meta.offset for tp, meta in to_commit.items()})

    def lag(self) -> dict[tuple[str, int], int]:
        """Return the number of records not yet read per assigned ``(topic, partition)``.

        Lag is the high watermark from the last fetch response minus the position, plus the
        records that :meth:`wait_for_assignment` fetched and :meth:`poll` has not returned yet.
        A partition that has not been fetched yet has no known high watermark and is left out,
        so an empty result right after the group join does not mean zero lag.
        """
        buffered: dict[tuple[str, int], int] = {}
        for message in self._buffered:
            partition_id = (message.topic, message.partition)
            buffered[partition_id] = buffered.get(partition_id, 0) + 1
        lags: dict[tuple[str, int], int] = {}
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            position = self._consumer.position(tp, timeout_ms=self.config.request_timeout_ms)
            if position is None:
                continue
            partition_id = (tp.topic, tp.partition)
            lags[partition_id] = max(0, highwater - position) + buffered.get(partition_id, 0)
        return lags

    def assignment(self) -> set[tuple[str, int]]:
        """Return the ``(topic, partition)`` pairs assigned to this consumer now."""
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def pause(self) -> set[tuple[str, int]]:
        """Stop fetching from every assigned partition until :meth:`resume`; return the partitions newly paused.

        Keep calling :meth:`poll`: it keeps the consumer in its group and returns no records of
        paused partitions, except those that :meth:`wait_for_assignment` fetched earlier.
        Partitions that a rebalance assigns before :meth:`resume` are paused as they are
        assigned, before their first fetch.
        """
        self._pausing = True
        return self._pause_partitions(self._consumer.assignment())

    def resume(self) -> set[tuple[str, int]]:
        """Fetch again from every paused partition; return the partitions resumed."""
        # NOTE: with kafka-python 3.0.12 on Tansu 0.6, a trial with 30 pause and resume cycles saw
        # two of three partitions never fetched until the pauses stopped (no records lost).
        self._pausing = False
        resumed = []
        for tp in self._consumer.paused():
            try:
                self._consumer.resume(tp)
            except KeyError:
                # Revoked since paused() returned it.
                continue
            resumed.append(tp)
        if resumed:
            logger.debug("Kafka partitions resumed: group=%s partitions=%s", self.config.group_id, _format_partitions(resumed))
        return {(tp.topic, tp.partition) for tp in resumed}

    def paused(self) -> set[tuple[str, int]]:
        """Return the assigned ``(topic, partition)`` pairs that are paused now."""
        return {(tp.topic, tp.partition) for tp in self._consumer.paused()}

    def _pause_if_paused(self, assigned: Iterable[TopicPartition]) -> None:
        """Pause newly assigned partitions between :meth:`pause` and :meth:`resume`; called by the rebalance listener.

        kafka-python 3.0.12 gives a newly assigned partition an unpaused state. Pausing it
        only after its first fetch is not enough. The fetcher can then set aside the parsed
        records of two paused partitions. After the resume it goes back to only one of
        them, so the other is never fetched again (read in kafka/consumer/fetcher.py,
        ``_paused_partition_records``, and reproduced on Tansu 0.6).
        """
        if not self._pausing:
            return
        newly_paused = self._pause_partitions(assigned)
        if newly_paused:
            logger.info(
                "Kafka partitions paused on assignment, consumption is paused: group=%s partitions=%s",
                self.config.group_id, _format_partitions(TopicPartition(*pair) for pair in newly_paused),
            )

    def _pause_partitions(self, partitions: Iterable[TopicPartition]) -> set[tuple[str, int]]:
        already_paused = self._consumer.paused()
        newly_paused = []
        for tp in partitions:
            if tp in already_paused:
                continue
            try:
                self._consumer.pause(tp)
            except KeyError:
                # Revoked since the caller listed it.
                continue
            newly_paused.append(tp)
        if newly_paused:
            logger.debug("Kafka partitions paused: group=%s partitions=%s", self.config.group_id, _format_partitions(newly_paused))
        return {(tp.topic, tp.partition) for tp in newly_paused}

    def wait_for_assignment(self, timeout_s: float) -> set[tuple[str, int]]:
        """Poll until the group assigns partitions to this consumer and return them.

        Records fetched meanwhile are kept and returned by the next :meth:`poll`. Raises
        ``TimeoutError`` when no partition is assigned within ``timeout_s`` seconds.
        """
        deadline = time.monotonic() + timeout_s
        while not self._consumer.assignment():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise TimeoutError(
                    f"No partition of {', '.join(self.config.topics)} was assigned to group "
                    f"{self.config.group_id!r} within {timeout_s:g} s; check that the topics exist and "
                    f"that other members of the group do not hold all partitions"
                )
            self._buffered.extend(self._fetch(min(remaining_ms, 200)))
        return self.assignment()

    def close(self) -> None:
        """Leave the group and close the connections without committing. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._consumer.close(autocommit=False)
        logger.info("Kafka source closed: group=%s", self.config.group_id)

    def __enter__(self) -> KafkaSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _fetch_or_back_off(self, timeout_ms: int) -> list[SourceMessage]:
        """Fetch records, or after a retriable Kafka error log it, wait the backoff delay and return no message.

        kafka-python 3.0.12 returns empty polls while the broker is unreachable and
        reconnects by itself, so this handles the errors that a poll still raises, e.g. a
        timed-out offset lookup.
        """
        try:
            messages = self._fetch(timeout_ms)
        except KafkaError as error:
            if not is_retriable(error):
                raise
            if self._poll_retries == 0:
                self._poll_failing_since = time.monotonic()
            self._poll_retries += 1
            delay = self.retry.delay(self._poll_retries)
            logger.warning(
                "Kafka poll failed, retry %d in %.1f s, waiting for the broker: group=%s topics=%s error=%r",
                self._poll_retries, delay, self.config.group_id, ",".join(self.config.topics), error,
            )
            self.retry.wait(delay)
            return []
        if self._poll_retries:
            logger.info(
                "Kafka poll succeeded after %d retries in %.1f s, the broker is reachable again: group=%s topics=%s",
                self._poll_retries, time.monotonic() - self._poll_failing_since, self.config.group_id, ",".join(self.config.topics),
            )
            self._poll_retries = 0
        return messages

    def _fetch(self, timeout_ms: int) -> list[SourceMessage]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.config.max_poll_records)
        self._check_log_ends(batches)
        messages: list[SourceMessage] = []
        invalid_in_poll = 0
        for tp in sorted(batches, key=lambda tp: (tp.topic, tp.partition)):
            for consumer_record in batches[tp]:
                message = self._decode(consumer_record)
                messages.append(message)
                if message.error is None:
                    continue
                invalid_in_poll += 1
                if invalid_in_poll <= _MAX_INVALID_LOGGED_PER_POLL:
                    logger.warning(
                        "Invalid record: topic=%s partition=%d offset=%d reason=%s error=%s",
                        message.topic,
                        message.partition,
                        message.offset,
                        message.error.reason,
                        message.error,
                    )
        if invalid_in_poll > _MAX_INVALID_LOGGED_PER_POLL:
            logger.warning(
                "%d more invalid records in this poll were not logged one by one: group=%s",
                invalid_in_poll - _MAX_INVALID_LOGGED_PER_POLL,
                self.config.group_id,
            )
        self.invalid_count += invalid_in_poll
        return messages

    def _check_log_ends(self, batches: Mapping[TopicPartition, list]) -> None:
        """Restart the partitions whose log was replaced under the consumer.

        A topic deleted and created again, or a broker that lost its data, leaves the
        consumer's offset past the end of the new log, e.g. the offset of a restored
        checkpoint. Kafka rejects such a fetch with OFFSET_OUT_OF_RANGE and kafka-python
        then resets the position to the ``auto_offset_reset`` offset itself, so the offsets
        of a partition go back. Tansu 0.6 returns no records and the real high watermark
        instead, so this source seeks to that offset when the next offset lies beyond the
        high watermark. In both cases the committed offset is forgotten and the rebalance
        handler's ``on_reset`` learns that the log was replaced.
        """
        for tp, records in batches.items():
            if not records:
                continue
            expected = self._next_offsets.get(tp)
            if expected is not None and records[0].offset < expected:
                logger.warning(
                    "Kafka partition offset went back: group=%s partition=%s[%d] expected=%d offset=%d; "
                    "the log was replaced (topic deleted and created again, or broker data lost), "
                    "so checkpoints and commits restart with the new offsets",
                    self.config.group_id, tp.topic, tp.partition, expected, records[0].offset,
                )
                self._log_replaced(tp)
            self._next_offsets[tp] = records[-1].offset + 1

        assignment = self._consumer.assignment()
        for tp in list(self._next_offsets):
            if tp not in assignment:
                del self._next_offsets[tp]
                continue
            expected = self._next_offsets[tp]
            highwater = self._consumer.highwater(tp)
            if highwater is None or expected <= highwater:
                continue
            logger.warning(
                "Kafka partition offset beyond the end of the log: group=%s partition=%s[%d] offset=%d high_watermark=%d; "
                "the log was replaced (topic deleted and created again, or broker data lost), so the consumer resets "
                "to the %s offset",
                self.config.group_id, tp.topic, tp.partition, expected, highwater, self.config.auto_offset_reset,
            )
            if self.config.auto_offset_reset == "earliest":
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek_to_end(tp)
            del self._next_offsets[tp]
            self._log_replaced(tp)

    def _log_replaced(self, tp: TopicPartition) -> None:
        # The offsets of the old log would make the commits of the new one look stale.
        partition_id = (tp.topic, tp.partition)
        self._committed.pop(partition_id, None)
        if self.rebalance_handler is not None:
            self.rebalance_handler.on_reset([partition_id])

    def _forget_next_offsets(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget the next offsets of partitions that moved, because their new position comes from the group."""
        for tp in partitions:
            self._next_offsets.pop(tp, None)

    def _decode(self, consumer_record: Any) -> SourceMessage:
        raw = bytes(consumer_record.value) if consumer_record.value is not None else b""
        record: Record | None = None
        error: InvalidRecord | None = None
        try:
            record = decode_record(raw, max_bytes=self.config.max_record_bytes)
        except InvalidRecord as invalid:
            error = invalid
        except Exception as unexpected:  # noqa: BLE001 - one poison record must not stop the stream
            logger.exception(
                "Record decoder failed unexpectedly: topic=%s partition=%d offset=%d",
                consumer_record.topic,
                consumer_record.partition,
                consumer_record.offset,
            )
            error = InvalidRecord("decoder_error", f"The record decoder failed with {unexpected!r}; report this bug.")
        timestamp = consumer_record.timestamp if consumer_record.timestamp is not None and consumer_record.timestamp >= 0 else None
        return SourceMessage(
            topic=consumer_record.topic,
            partition=consumer_record.partition,
            offset=consumer_record.offset,
            key=bytes(consumer_record.key) if consumer_record.key is not None else None,
            raw=raw,
            record=record,
            error=error,
            kafka_timestamp_ms=timestamp,
        )


def _next_offsets(messages_or_offsets: Iterable[SourceMessage] | Mapping[Any, int]) -> dict[tuple[str, int], int]:
    next_offsets: dict[tuple[str, int], int] = {}
    if isinstance(messages_or_offsets, Mapping):
        for partition_id, offset in messages_or_offsets.items():
            topic, partition = partition_id
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError(f"offset {offset!r} for {topic}[{partition}] is invalid; use the next offset to read, >= 0")
            next_offsets[(topic, int(partition))] = offset
        return next_offsets
    for message in messages_or_offsets:
        if not isinstance(message, SourceMessage):
            raise TypeError(
                f"commit() expects SourceMessage items or a mapping of offsets, got {type(message).__name__}"
            )
        partition_id = (message.topic, message.partition)
        next_offsets[partition_id] = max(next_offsets.get(partition_id, 0), message.offset + 1)
    return next_offsets


def _format_partitions(partitions: Iterable[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions)) or "none"


def _format_offsets(offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]={meta.offset}" for tp, meta in sorted(offsets.items()))


# Producer side


@dataclass
class _OutgoingMessage:
    """A message of a sink that is not acknowledged yet; ``future`` is None until it is (re-)sent."""

    index: int
    key: bytes | None
    value: bytes
    item_id: str
    future: Any = None


class KafkaJsonSink:
    """A producer that sends JSON messages to one topic and reports unacknowledged ones on flush.

    The producer uses ``acks="all"``. Idempotence is off by default, with one request in flight
    per connection so that retries keep the order. Tansu 0.6 responds with UNKNOWN_PRODUCER_ID
    to every produce request of an idempotent producer after a restart that lost its memory
    storage, and kafka-python retries that until ``delivery_timeout_ms``. The cost of no
    idempotence is a possible duplicate after a retry, which the at-least-once delivery of
    the source allows anyway.

    A message that the broker did not acknowledge is kept and sent again by the next
    :meth:`flush`. With ``retry``, :meth:`flush` itself waits with backoff and sends the
    failed messages again until the broker acknowledges them or ``retry.stop`` is set.

    Times are in milliseconds:

    - ``linger_ms``: how long the producer waits to fill a batch.
    - ``request_timeout_ms``: how long one produce request waits for its response. With
      ``retry``, it is also how long one flush attempt waits before it logs a retry.
    - ``delivery_timeout_ms``: maximum time from send to acknowledgement, retries included.
    - ``max_block_ms``: how long ``send()`` may block for metadata or buffer space.
    - ``bootstrap_timeout_ms``: how long the constructor waits to connect to the broker.
    """

    kind = "message"

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        client_id: str | None = None,
        linger_ms: int = 5,
        request_timeout_ms: int = 30_000,
        delivery_timeout_ms: int = 120_000,
        max_block_ms: int = 60_000,
        bootstrap_timeout_ms: int = 30_000,
        enable_idempotence: bool = False,
        retry: RetryBackoff | None = None,
    ) -> None:
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic={topic!r} is invalid; give a non-empty topic name")
        if delivery_timeout_ms < linger_ms + request_timeout_ms:
            raise ValueError(
                f"delivery_timeout_ms={delivery_timeout_ms} must be at least linger_ms + request_timeout_ms "
                f"({linger_ms + request_timeout_ms})"
            )
        self.topic = topic
        self.retry = retry
        self._request_timeout_s = request_timeout_ms / 1000
        self._pending: list[_OutgoingMessage] = []
        self._sent_count = 0
        options: dict[str, Any] = {}
        if retry is not None:
            # kafka-python's own reconnection backoff grows to 30 s by default, so it is capped like the retries.
            options["reconnect_backoff_max_ms"] = int(retry.max_s * 1000)
        self._producer = _make_producer(
            bootstrap_servers,
            client_id=client_id or f"streamad-{self.kind}-sink",
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            delivery_timeout_ms=delivery_timeout_ms,
            max_block_ms=max_block_ms,
            bootstrap_timeout_ms=bootstrap_timeout_ms,
            enable_idempotence=enable_idempotence,
            **options,
        )

    def flush(self, timeout: float | None = None) -> list[Any]:
        """Wait until every message sent so far is acknowledged and return their RecordMetadata.

        ``timeout`` is in seconds per attempt. None waits up to ``delivery_timeout_ms``, or
        with ``retry`` up to ``request_timeout_ms`` before each retry. Without ``retry`` it
        raises KafkaDeliveryError when a message failed and ``kafka.errors.KafkaTimeoutError``
        when the time ran out. With ``retry`` it raises them only when the error is not
        retriable or ``retry.stop`` is set. The unacknowledged messages are kept either way.
        Commit source offsets only after this returns.
        """
        acknowledged: list[Any] = []
        if self.retry is None:
            self._flush_once(timeout, acknowledged)
            return acknowledged
        attempt_timeout = self._request_timeout_s if timeout is None else timeout

        def attempt() -> list[Any]:
            self._flush_once(attempt_timeout, acknowledged)
            return acknowledged

        return call_with_retry(
            attempt,
            self.retry,
            f"Kafka {self.kind} delivery",
            lambda: f"the broker to acknowledge {len(self._pending)} {self.kind}s",
            lambda: f"topic={self.topic}",
        )

    def close(self, timeout: float = 10.0) -> None:
        """Send what is buffered, waiting up to ``timeout`` seconds, and close the producer."""
        self._producer.close(timeout=timeout)
        unacknowledged = sum(1 for message in self._pending if message.future is None or not message.future.succeeded())
        if unacknowledged:
            logger.warning("Kafka %s sink closed with %d unacknowledged messages: topic=%s", self.kind, unacknowledged, self.topic)
        logger.info("Kafka %s sink closed: topic=%s sent=%d", self.kind, self.topic, self._sent_count)

    def __enter__(self) -> KafkaJsonSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send_encoded(self, encoded: list[tuple[bytes | None, bytes]], ids: list[str]) -> None:
        for (key, value), item_id in zip(encoded, ids):
            self._pending.append(_OutgoingMessage(self._sent_count, key, value, item_id))
            self._sent_count += 1
        self._send_unsent()

    def _send_unsent(self) -> None:
        """Hand the pending messages that have no future to the producer, in order.

        When ``send()`` times out waiting max_block_ms for the topic's metadata, e.g. during
        a broker outage, that message and the later ones keep ``future`` None, so that the
        next flush sends them again in order instead of blocking once per message.
        """
        for message in self._pending:
            if message.future is not None:
                continue
            try:
                message.future = self._producer.send(self.topic, key=message.key, value=message.value)
            except KafkaTimeoutError as error:
                self._log_failure(message.index, message.item_id, error)
                return
            message.future.add_errback(self._log_failure, message.index, message.item_id)

    def _flush_once(self, timeout: float | None, acknowledged: list[Any]) -> None:
        """Wait for the pending messages once, appending the RecordMetadata of each acknowledged one to ``acknowledged``."""
        self._send_unsent()
        if not self._pending:
            return
        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError as error:
            if self.retry is None:
                logger.error("Kafka flush timed out: topic=%s unacknowledged=%d", self.topic, len(self._pending))
            waited = "in time" if timeout is None else f"within {timeout:g} s"
            raise KafkaTimeoutError(
                f"{len(self._pending)} {self.kind}s to topic {self.topic!r} were not acknowledged {waited} "
                f"({error}); the next flush waits for them again"
            ) from error

        failed: list[_OutgoingMessage] = []
        failures: list[tuple[int, Exception]] = []
        for message in self._pending:
            if message.future is None:
                failed.append(message)
                failures.append((message.index, KafkaTimeoutError("not sent: no metadata for the topic within max_block_ms")))
            elif message.future.failed():
                failures.append((message.index, message.future.exception))
                message.future = None
                failed.append(message)
            else:
                acknowledged.append(message.future.value)
        count = len(self._pending)
        # The failed messages stay, so that the next flush sends them again.
        self._pending = failed
        if failures:
            first_index, first_error = failures[0]
            raise KafkaDeliveryError(
                f"{len(failures)} of {count} {self.kind}s to topic {self.topic!r} were not acknowledged "
                f"(first: {self.kind} {first_index}, {first_error!r}); the next flush sends them again",
                failures,
            )

    def _log_failure(self, index: int, item_id: str, error: Exception) -> None:
        # With retry, flush() logs one line per retry for all failed messages instead.
        level = logging.ERROR if self.retry is None else logging.DEBUG
        logger.log(level, "Kafka %s not delivered: topic=%s %s error=%r", self.kind, self.topic, item_id, error)


class KafkaAlertSink(KafkaJsonSink):
    """Alert events sent as JSON to the alerts topic, keyed by series so that a series stays in order."""

    kind = "alert"

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Queue the events for sending. Call :meth:`flush` to wait for the acknowledgements.

        Each event is a JSON object. Its key is ``event["series"]``, or ``event["alert_id"]``
        when it has no series. NumPy scalars and arrays become JSON numbers and lists, and
        datetimes become ISO-8601 strings. Raises ValueError, before sending any event, when an
        event contains NaN or infinity or a value that JSON cannot represent.
        """
        encoded = []
        ids = []
        for index, event in enumerate(events):
            key = event.get("series") or event.get("alert_id")
            encoded.append((str(key).encode("utf-8") if key is not None else None, _encode_json(event, f"alert {index}")))
            ids.append(f"series={event.get('series')} alert_id={event.get('alert_id')}")
        self._send_encoded(encoded, ids)


class KafkaDeadLetterSink(KafkaJsonSink):
    """Invalid records sent as JSON to a dead-letter topic with the reason they were rejected.

    Each message is ``{"topic", "partition", "offset", "reason", "message", "raw_base64",
    "key_base64"}``, where ``raw_base64`` is the original value and ``key_base64`` the original
    key (or null), both base64-encoded. The message key is the original key.
    """

    kind = "dead letter"

    def send(self, entries: Sequence[SourceMessage | Mapping[str, Any]]) -> None:
        """Queue dead-letter entries for sending. Call :meth:`flush` to wait for the acknowledgements.

        An entry is a SourceMessage with ``error`` set, or a mapping as described in
        :func:`dead_letter_document`, such as the entries that the stream runner builds.
        """
        encoded = []
        ids = []
        for index, entry in enumerate(entries):
            document = dead_letter_document(entry)
            key = base64.b64decode(document["key_base64"]) if document["key_base64"] is not None else None
            encoded.append((key, _encode_json(document, f"dead-letter entry {index}")))
            ids.append(f"source_topic={document['topic']} partition={document['partition']} offset={document['offset']}")
        self._send_encoded(encoded, ids)


def dead_letter_document(entry: SourceMessage | Mapping[str, Any]) -> dict[str, Any]:
    """Build the JSON object of a dead-letter message from a SourceMessage or an entry mapping.

    A mapping has ``topic``, ``partition``, ``offset``, ``reason`` and ``message``, the original
    value as ``raw`` (bytes) or ``raw_base64`` (str), and optionally the original key as ``key``
    (bytes) or ``key_base64`` (str).
    """
    if isinstance(entry, SourceMessage):
        if entry.error is None:
            raise ValueError(
                f"The message at {entry.topic}[{entry.partition}] offset {entry.offset} decoded without error; "
                "send only messages with error set to the dead-letter sink"
            )
        entry = {
            "topic": entry.topic,
            "partition": entry.partition,
            "offset": entry.offset,
            "reason": entry.error.reason,
            "message": str(entry.error),
            "raw": entry.raw,
            "key": entry.key,
        }

    missing = [name for name in ("topic", "partition", "offset", "reason", "message") if name not in entry]
    if "raw" not in entry and "raw_base64" not in entry:
        missing.append("raw or raw_base64")
    if missing:
        raise ValueError(f"The dead-letter entry has no {', '.join(missing)}; add the missing fields")
    return {
        "topic": entry["topic"],
        "partition": entry["partition"],
        "offset": entry["offset"],
        "reason": entry["reason"],
        "message": entry["message"],
        "raw_base64": _base64_field(entry, "raw"),
        "key_base64": _base64_field(entry, "key"),
    }


def _base64_field(entry: Mapping[str, Any], name: str) -> str | None:
    """Return ``entry[name]`` base64-encoded, or ``entry[name + "_base64"]`` checked, or None."""
    if entry.get(name) is not None:
        value = entry[name]
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"The dead-letter entry field {name!r} has type {type(value).__name__}; pass the original bytes"
            )
        return base64.b64encode(bytes(value)).decode("ascii")
    encoded = entry.get(f"{name}_base64")
    if encoded is None:
        return None
    try:
        base64.b64decode(encoded, validate=True)
    except (TypeError, ValueError):
        raise ValueError(f"The dead-letter entry field '{name}_base64' is not valid base64: {encoded!r:.80}") from None
    return encoded


# Helpers for the demo and the tests


def produce_records(
    bootstrap_servers: str | Sequence[str],
    topic: str,
    records: Iterable[Record | bytes],
    *,
    has_clock: bool = True,
    timeout_s: float = 30.0,
) -> list[tuple[int, int]]:
    """Send records to a topic, wait for every acknowledgement and return ``(partition, offset)`` of each.

    A Record is encoded with :func:`~streamad.records.encode_record` and keyed by its series.
    Bytes are sent unchanged without a key, which lets tests send malformed messages.
    Raises KafkaDeliveryError when the broker rejects a record, and
    ``kafka.errors.KafkaTimeoutError`` when the acknowledgements take longer than ``timeout_s`` seconds.
    """
    producer = _make_producer(
        bootstrap_servers,
        client_id="streamad-producer",
        linger_ms=5,
        request_timeout_ms=max(1000, int(timeout_s * 1000) // 2),
        delivery_timeout_ms=max(2000, int(timeout_s * 1000)),
        max_block_ms=max(1000, int(timeout_s * 1000)),
        enable_idempotence=False,
    )
    try:
        futures = []
        for record in records:
            if isinstance(record, Record):
                futures.append(
                    producer.send(topic, key=record.series.encode("utf-8"), value=encode_record(record, has_clock))
                )
            elif isinstance(record, (bytes, bytearray, memoryview)):
                futures.append(producer.send(topic, value=bytes(record)))
            else:
                raise TypeError(f"produce_records expects Record or bytes items, got {type(record).__name__}")
        producer.flush(timeout=timeout_s)
        positions = []
        failures = []
        for index, future in enumerate(futures):
            if future.failed():
                failures.append((index, future.exception))
            else:
                positions.append((future.value.partition, future.value.offset))
        if failures:
            raise KafkaDeliveryError(
                f"{len(failures)} of {len(futures)} records to topic {topic!r} were not acknowledged "
                f"(first: record {failures[0][0]}, {failures[0][1]!r})",
                failures,
            )
        return positions
    finally:
        producer.close(timeout=5)


def create_topic(
    bootstrap_servers: str | Sequence[str],
    topic: str,
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> bool:
    """Create a topic and return True, or return False when it already exists.

    An existing topic is left as it is, even with another partition count. Brokers that
    auto-create topics (Tansu 0.6 does, with 4 partitions) would otherwise create it on the
    first produce or metadata request with their default partition count.
    """
    if partitions < 1:
        raise ValueError(f"partitions={partitions!r} is invalid; use 1 or more")
    timeout_ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="streamad-admin",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )
    try:
        admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": replication_factor}},
            timeout_ms=timeout_ms,
        )
    except TopicAlreadyExistsError:
        logger.info("Kafka topic exists already: topic=%s", topic)
        return False
    finally:
        admin.close()
    logger.info("Kafka topic created: topic=%s partitions=%d", topic, partitions)
    return True


def _make_producer(bootstrap_servers: str | Sequence[str], **options: Any) -> KafkaProducer:
    idempotent = options.pop("enable_idempotence")
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            enable_idempotence=idempotent,
            max_in_flight_requests_per_connection=5 if idempotent else 1,
            **options,
        )
    except KafkaTimeoutError as error:
        raise _bootstrap_error(bootstrap_servers, error) from error


def _bootstrap_error(bootstrap_servers: str | Sequence[str], error: Exception) -> KafkaTimeoutError:
    servers = bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
    return KafkaTimeoutError(
        f"Connecting to Kafka at {servers} timed out ({error}); check that the broker is running "
        "and that the bootstrap address is right"
    )


def _encode_json(document: Mapping[str, Any], label: str) -> bytes:
    try:
        text = json.dumps(document, default=_json_default, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The {label} cannot be encoded as JSON ({error}); replace NaN, infinity and objects "
            f"that are not numbers, strings, lists or dicts"
        ) from None
    return text.encode("utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")

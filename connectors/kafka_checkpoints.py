"""Partition checkpoints in a compacted Kafka topic, and a store that writes them to a directory and a topic.

:class:`KafkaCheckpointStore` has the interface of
:class:`~streamad.engine.checkpoint.CheckpointStore`, so the
:class:`~streamad.engine.checkpoint.PartitionCheckpointer` uses either. Each checkpoint is
one message keyed by ``"<topic>:<partition>"`` whose value is the bytes of
:func:`~streamad.engine.checkpoint.encode_checkpoint`, the same bytes as a checkpoint file.
The topic is created with ``cleanup.policy=compact``, so Kafka keeps at least the last
message of every key, and a reader keeps the last value per key.

Tansu 0.6 accepts ``cleanup.policy=compact`` when it creates the topic, but its
DescribeConfigs response contains no configuration for the topic, so the policy of an
existing topic cannot be checked there. The reader keeps the last value per key whether or
not the broker compacts.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from connectors.kafka import RetryBackoff, call_with_retry
from streamad.engine.checkpoint import PartitionCheckpoint, decode_checkpoint, encode_checkpoint
from streamad.engine.engine import EngineState

logger = logging.getLogger(__name__)

# Kafka topic names contain only ASCII letters, digits, '.', '_' and '-', at most 249 of them.
_TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Kafka's default maximum message size is 1 MiB, and a checkpoint with per-series thresholds
# holds up to 5000 floats per series, so the topic is created with a larger maximum.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def check_topic_name(topic: str) -> None:
    """Raise ValueError when ``topic`` is not a valid Kafka topic name for the checkpoints."""
    if not isinstance(topic, str) or not _TOPIC_PATTERN.match(topic) or topic in (".", ".."):
        raise ValueError(
            f"checkpoint topic {topic!r} is not a valid Kafka topic name; use 1 to 249 letters, digits, '.', '_' and '-'"
        )


class CheckpointDeliveryError(ConnectionError):
    """The broker did not acknowledge a checkpoint, so the offsets that it covers must not be committed.

    It is a ConnectionError, and so an OSError like the errors of the file store, so the
    checkpointer handles both the same way.
    """


class KafkaCheckpointStore:
    """Write and read partition checkpoints as messages of a compacted Kafka topic.

    A write sends one message with ``acks="all"`` and waits for its acknowledgement, at most
    ``timeout_s`` seconds per attempt. With ``retry``, a write that fails with a retriable
    error is tried again with backoff until the broker acknowledges it or ``retry.stop`` is
    set. A write that is not acknowledged raises :class:`CheckpointDeliveryError`.

    A read loads the whole topic with a consumer outside any group, from the beginning up to
    the high watermark of each partition, and keeps the last value per key. Reads within
    ``cache_s`` seconds of the last load use what that load read, so the assignment of many
    partitions reads the topic once. Acknowledged writes of this store update that cache.

    Tansu 0.6 keeps its topics in memory and, after a restart, acknowledges writes to a topic
    that it no longer lists. A write therefore checks that the broker lists the topic after an
    acknowledgement whose offset is not above the last one of its partition, or that needed a
    retry. When the topic is missing, the write creates it again and sends the checkpoint again.

    The constructor creates the topic when it is missing, with ``partitions`` partitions,
    ``cleanup.policy=compact`` and ``max.message.bytes=max_message_bytes``. It raises
    ValueError when the topic exists with another cleanup policy, because Kafka would then
    delete checkpoints of idle partitions after the retention time. ``replication_factor``
    -1 takes the broker's default.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        partitions: int = 1,
        replication_factor: int = -1,
        timeout_s: float = 30.0,
        cache_s: float = 2.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry: RetryBackoff | None = None,
        client_id: str = "streamad-checkpoints",
    ) -> None:
        check_topic_name(topic)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} is invalid; use seconds > 0")
        if cache_s < 0:
            raise ValueError(f"cache_s={cache_s!r} is invalid; use seconds >= 0")
        if partitions < 1:
            raise ValueError(f"partitions={partitions!r} is invalid; use 1 or more")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = float(timeout_s)
        self.cache_s = float(cache_s)
        self.max_message_bytes = int(max_message_bytes)
        self.retry = retry
        self.client_id = client_id
        self._timeout_ms = int(self.timeout_s * 1000)
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._cache: dict[bytes, bytes] = {}
        self._loaded_at: float | None = None
        # Last acknowledged offset per partition of the checkpoint topic, to notice a topic that restarted.
        self._acknowledged: dict[int, int] = {}

        self._ensure_topic()
        producer_options: dict[str, Any] = {}
        if retry is not None:
            producer_options["reconnect_backoff_max_ms"] = int(retry.max_s * 1000)
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers,
                client_id=f"{client_id}-producer",
                acks="all",
                # Tansu 0.6 rejects every request of an idempotent producer after a restart that
                # lost its memory storage, as KafkaJsonSink explains. One request in flight keeps
                # the order of the checkpoints of a partition without idempotence.
                enable_idempotence=False,
                linger_ms=0,
                max_in_flight_requests_per_connection=1,
                max_request_size=self.max_message_bytes,
                request_timeout_ms=self._timeout_ms,
                delivery_timeout_ms=self._timeout_ms * 2,
                max_block_ms=self._timeout_ms,
                bootstrap_timeout_ms=self._timeout_ms,
                **producer_options,
            )
        except KafkaTimeoutError as error:
            raise _unreachable(bootstrap_servers, error) from error
        logger.info("Kafka checkpoint store ready: topic=%s bootstrap=%s", topic, _servers(bootstrap_servers))

    @staticmethod
    def key(topic: str, partition: int) -> str:
        """Return the message key of the checkpoint of ``topic`` and ``partition``."""
        return f"{topic}:{int(partition)}"

    def write(self, topic: str, partition: int, offset: int, state: EngineState) -> Any:
        """Send the checkpoint of a partition, wait for its acknowledgement and return its RecordMetadata."""
        key = self.key(topic, partition).encode("utf-8")
        value = encode_checkpoint(topic, partition, offset, state)

        ids = f"checkpoint_topic={self.topic} topic={topic} partition={partition} offset={offset}"
        attempts = 0

        def send_and_wait() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                future = self._producer.send(self.topic, key=key, value=value)
                self._producer.flush(timeout=self.timeout_s)
                metadata = future.get(timeout=0)
            except KafkaError:
                self._create_lost_topic(f"after a failed checkpoint write: {ids}")
                raise
            self._check_acknowledged_topic(metadata, retried=attempts > 1, ids=ids)
            return metadata

        try:
            metadata = call_with_retry(
                send_and_wait,
                self.retry,
                "Kafka checkpoint write",
                lambda: "the broker to acknowledge the checkpoint before the offsets are committed",
                lambda: ids,
            )
        except KafkaError as error:
            raise CheckpointDeliveryError(
                f"the checkpoint of {topic}[{partition}] at offset {offset} was not acknowledged by Kafka topic "
                f"{self.topic!r} ({error!r}); its offsets are not committed"
            ) from error
        self._cache[key] = value
        return metadata

    def read(self, topic: str, partition: int) -> PartitionCheckpoint | None:
        """Return the checkpoint of a partition, or None when the topic has none.

        Raises ValueError when the message cannot be read as a checkpoint, or when the topic
        cannot be read (with ``retry``, only after ``retry.stop`` is set).
        """
        if self._loaded_at is None or time.monotonic() - self._loaded_at > self.cache_s:
            try:
                self._cache = call_with_retry(
                    self._load,
                    self.retry,
                    "Kafka checkpoint read",
                    lambda: "the broker to return the checkpoint topic up to its high watermark",
                    lambda: f"checkpoint_topic={self.topic}",
                )
            except KafkaError as error:
                raise ValueError(f"Kafka checkpoint topic {self.topic!r} could not be read ({error!r})") from error
            self._loaded_at = time.monotonic()
        # NOTE: the last message of a key wins, not the highest offset. A checkpoint that the
        # previous owner's producer delivers late can therefore replace the new owner's, and
        # the partition then resumes from that older checkpoint and scores its records again.
        key = self.key(topic, partition)
        data = self._cache.get(key.encode("utf-8"))
        if data is None:
            return None
        return decode_checkpoint(data, f"checkpoint {key!r} in Kafka topic {self.topic!r}")

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the producer, waiting up to ``timeout_s`` seconds for messages still in flight."""
        self._producer.close(timeout=timeout_s)

    def _load(self) -> dict[bytes, bytes]:
        """Read every partition of the topic up to its high watermark and return the last value per key.

        The high watermark comes from ``KafkaConsumer.highwater()`` after a fetch, because
        Tansu 0.6 returns the last batch's base offset for ``end_offsets()``. Raises
        KafkaTimeoutError when the end is not reached within ``timeout_s``.
        """
        started = time.monotonic()
        deadline = started + self.timeout_s
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-reader",
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=self._timeout_ms,
                bootstrap_timeout_ms=self._timeout_ms,
                fetch_max_wait_ms=100,
                max_partition_fetch_bytes=self.max_message_bytes,
                fetch_max_bytes=max(self.max_message_bytes, 52_428_800),
            )
        except KafkaTimeoutError as error:
            raise KafkaTimeoutError(f"connecting to Kafka timed out: {error}") from error
        values: dict[bytes, bytes] = {}
        messages = 0
        try:
            partitions = consumer.partitions_for_topic(self.topic) or set()
            assigned = [TopicPartition(self.topic, partition) for partition in sorted(partitions)]
            if not assigned:
                # The topic existed at start, so it was deleted since, or lost with the memory
                # storage of a Tansu broker. Waiting for it would block the rebalance for good,
                # and without it the next writes would go nowhere or to an uncompacted topic.
                logger.warning(
                    "Kafka checkpoint topic not found, so no partition has a checkpoint: topic=%s", self.topic
                )
                self._create_lost_topic("after a checkpoint read found no partitions")
                self._acknowledged.clear()
                return values
            consumer.assign(assigned)
            consumer.seek_to_beginning(*assigned)
            remaining = set(assigned)
            while remaining:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    raise KafkaTimeoutError(
                        f"the end of {_format_partitions(remaining)} was not reached within {self.timeout_s:g} s"
                    )
                batches = consumer.poll(timeout_ms=min(left_ms, 200))
                for records in batches.values():
                    for record in records:
                        messages += 1
                        if record.key is None:
                            continue
                        if record.value is None:
                            values.pop(bytes(record.key), None)
                        else:
                            values[bytes(record.key)] = bytes(record.value)
                for tp in list(remaining):
                    highwater = consumer.highwater(tp)
                    if highwater is not None and consumer.position(tp, timeout_ms=left_ms) >= highwater:
                        remaining.discard(tp)
        finally:
            consumer.close()
        logger.info(
            "read Kafka checkpoint topic %s in %.2f s: %d messages, %d keys",
            self.topic, time.monotonic() - started, messages, len(values),
        )
        return values

    def _check_acknowledged_topic(self, metadata: Any, *, retried: bool, ids: str) -> None:
        """Raise a retriable error when the broker acknowledged a write to a topic that it no longer lists.

        The offsets of a Kafka partition only grow unless its log is truncated. So an offset
        not above the last acknowledged one means that the partition started again, because
        the topic was deleted or lost with the memory of a restarted Tansu 0.6 broker. A write
        that needed a retry may also have reached a restarted broker. In both cases the broker
        must list the topic. When it does not, the topic is created again and the error makes
        the caller send the checkpoint again.
        """
        checkpoint_partition = int(metadata.partition)
        acknowledged = int(metadata.offset)
        previous = self._acknowledged.get(checkpoint_partition)
        self._acknowledged[checkpoint_partition] = acknowledged
        offset_went_back = previous is not None and acknowledged <= previous
        if offset_went_back:
            # The cache contains checkpoints that the restarted partition may no longer contain.
            self._loaded_at = None
            logger.warning(
                "Kafka checkpoint topic partition started again, so the checkpoints written to it before are lost: "
                "checkpoint_partition=%d acknowledged_offset=%d previous_offset=%d %s",
                checkpoint_partition, acknowledged, previous, ids,
            )
        if not (offset_went_back or retried):
            # NOTE: the first write of this store after a broker restart has no earlier offset to
            # compare, so a lost topic is noticed only when that write needs a retry, or at the next one.
            return
        if not self._create_lost_topic(f"after the broker acknowledged checkpoint_partition={checkpoint_partition} "
                                       f"acknowledged_offset={acknowledged} for it: {ids}"):
            return
        self._acknowledged.clear()
        raise UnknownTopicOrPartitionError(
            f"the broker acknowledged the checkpoint at offset {acknowledged} of {self.topic}[{checkpoint_partition}] "
            f"but did not list topic {self.topic!r}, which was created again, so the checkpoint must be sent again"
        )

    def _create_lost_topic(self, context: str) -> bool:
        """Create the topic again if the broker responds and the topic is missing, and return True when it was created.

        The topic may have been deleted, or lost with the memory storage of a restarted Tansu
        broker, and then no write would ever succeed. Tansu 0.6 returns UNKNOWN_SERVER_ERROR
        for a produce request to such a topic, and a producer without metadata for it times
        out, so every failed write checks. ``context`` names the event and ids for the log.
        """
        try:
            created = self._ensure_topic(again=True)
        except KafkaError as error:
            logger.debug("Kafka checkpoint topic not created again: topic=%s error=%r", self.topic, error)
            return False
        if created:
            logger.warning(
                "Kafka checkpoint topic was missing and is created again: topic=%s partitions=%d cleanup.policy=compact, %s",
                self.topic, self._partitions, context,
            )
        return created

    def _ensure_topic(self, *, again: bool = False) -> bool:
        """Create the topic when it is missing and return True when this call created it.

        With ``again``, the caller logs the creation, and an existing topic's cleanup.policy
        is checked without an INFO line when the broker reports none.
        """
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id=f"{self.client_id}-admin",
                request_timeout_ms=self._timeout_ms,
                bootstrap_timeout_ms=self._timeout_ms,
            )
        except KafkaError as error:
            raise _unreachable(self.bootstrap_servers, error) from error
        try:
            configs = {"cleanup.policy": "compact", "max.message.bytes": str(self.max_message_bytes)}
            new_topic = NewTopic(self.topic, self._partitions, self._replication_factor, topic_configs=configs)
            try:
                admin.create_topics([new_topic], timeout_ms=self._timeout_ms)
            except TopicAlreadyExistsError:
                self._check_cleanup_policy(admin, quiet=again)
                return False
            if not again:
                logger.info(
                    "Kafka checkpoint topic created: topic=%s partitions=%d cleanup.policy=compact", self.topic, self._partitions
                )
            return True
        finally:
            admin.close()

    def _check_cleanup_policy(self, admin: KafkaAdminClient, *, quiet: bool = False) -> None:
        response = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, self.topic)])
        policy = _cleanup_policy(response, self.topic)
        if policy is None:
            logger.log(
                logging.DEBUG if quiet else logging.INFO,
                "Kafka checkpoint topic %s exists, and the broker reports no cleanup.policy, so compaction is not checked",
                self.topic,
            )
        elif "compact" not in policy.split(","):
            raise ValueError(
                f"checkpoint topic {self.topic!r} exists with cleanup.policy={policy}, so Kafka deletes the checkpoints "
                f"of idle partitions after retention.ms; set cleanup.policy=compact on it or use a new topic"
            )


def _cleanup_policy(response: Any, topic: str) -> str | None:
    """Return the cleanup.policy of ``topic`` in a kafka-python 3.0 describe_configs response, or None."""
    configs = response.get("topic", {}).get(topic, {}) if isinstance(response, dict) else {}
    value = configs.get("cleanup.policy") if isinstance(configs, dict) else None
    if isinstance(value, dict):
        value = value.get("value")
    return str(value) if value is not None else None


class MirroredCheckpointStore:
    """Write each checkpoint to every store, and read the one with the highest offset.

    A write raises the first store's error, after which no offset is committed. A read
    that fails in one store logs the error and uses the others.
    """

    def __init__(self, stores: Sequence[Any]) -> None:
        if len(stores) < 2:
            raise ValueError(f"stores={stores!r} is invalid; give two or more checkpoint stores")
        self.stores = list(stores)

    def write(self, topic: str, partition: int, offset: int, state: EngineState) -> None:
        """Write the checkpoint of a partition to every store, in order."""
        for store in self.stores:
            store.write(topic, partition, offset, state)

    def read(self, topic: str, partition: int) -> PartitionCheckpoint | None:
        """Return the checkpoint with the highest offset among the stores, or None when none has one.

        Raises the first ValueError when every store failed.
        """
        found: list[PartitionCheckpoint] = []
        errors: list[ValueError] = []
        for store in self.stores:
            try:
                checkpoint = store.read(topic, partition)
            except ValueError as error:
                errors.append(error)
                continue
            if checkpoint is not None:
                found.append(checkpoint)
        if errors and len(errors) == len(self.stores):
            raise errors[0]
        for error in errors:
            logger.error("checkpoint store skipped: topic=%s partition=%s: %s", topic, partition, error)
        return max(found, key=lambda checkpoint: (checkpoint.offset, checkpoint.written_at), default=None)

    def close(self) -> None:
        """Close the stores that have a ``close()`` method."""
        for store in self.stores:
            close = getattr(store, "close", None)
            if close is not None:
                close()


def _servers(bootstrap_servers: str | Sequence[str]) -> str:
    return bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)


def _unreachable(bootstrap_servers: str | Sequence[str], error: Exception) -> KafkaTimeoutError:
    return KafkaTimeoutError(
        f"Connecting to Kafka at {_servers(bootstrap_servers)} for the checkpoint topic failed ({error}); check that "
        "the broker is running and that the bootstrap address is right"
    )


def _format_partitions(partitions: Any) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))

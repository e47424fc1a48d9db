"""Detect series whose messages arrive on more than one Kafka partition."""

from __future__ import annotations

import logging
from typing import Iterable

logger = logging.getLogger(__name__)


class SeriesPartitionCheck:
    """Warn once per series that arrives on two partitions, because its producer does not key by series id.

    It stores the last (topic, partition) of every series it has seen. The runner uses it
    only without a checkpointer, because
    :class:`~streamad.engine.checkpoint.PartitionCheckpointer` logs the same warning.
    """

    def __init__(self) -> None:
        self._partition_of: dict[str, tuple[str, int]] = {}
        self._warned: set[str] = set()

    def record(self, messages: Iterable) -> None:
        """Note the partition of each message's series, and warn on a series seen on another partition."""
        for message in messages:
            if message.record is None:
                continue
            series = message.record.series
            partition_id = (message.topic, message.partition)
            previous = self._partition_of.get(series)
            self._partition_of[series] = partition_id
            if previous is None or previous == partition_id or series in self._warned:
                continue
            self._warned.add(series)
            logger.warning(
                "series %r arrives on %s[%d] and %s[%d]; key its messages by series id, or its windows "
                "mix records of both partitions",
                series, partition_id[0], partition_id[1], previous[0], previous[1],
            )

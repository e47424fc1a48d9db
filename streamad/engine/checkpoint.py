"""Checkpoints of the engine state per Kafka partition, in a local directory.

One file per (topic, partition) contains the state of the series seen on that partition
and the offset of the last record applied to it. The stream runner writes the files of
all assigned partitions before it commits offsets, so a checkpoint is never older than
the committed offset minus one. When a partition is assigned, its state is restored and
the consumer seeks to the checkpointed offset + 1, so the windows that span a restart
are completed from the restored buffers instead of being lost.

With the default shared threshold (``per_series_threshold=False``) every partition file
also contains the shared quantile at the time of writing. An instance adopts it only
while it has scored no window yet, from the newest file of its first assignment.
Afterwards it keeps its own shared quantile, so series that move to another instance
are thresholded by that instance's quantile, and their results can differ slightly from
an uninterrupted run near the threshold.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from streamad.engine.engine import EngineState, StreamEngine

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_META_KEY = "__meta__"
_TEMPORARY_SUFFIX = ".tmp"
# A temporary file is named after its writer, ".<file>.<host>-<pid>.tmp", so that a store
# opened by another instance on a shared directory leaves live writes alone.
_TEMPORARY_WRITER = re.compile(r"^\..+\.npz\.(?P<host>.+)-(?P<pid>\d+)\.tmp$")
# A temporary file older than this was left by a crash, even when its writer cannot be
# checked, because a write takes milliseconds.
_STALE_TEMPORARY_AGE_S = 3600.0
# Kafka topic names contain only ASCII letters, digits, '.', '_' and '-'.
_TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")

PartitionId = tuple[str, int]


@dataclass
class PartitionCheckpoint:
    """The saved state of one partition: the last offset applied and the state of its series."""

    topic: str
    partition: int
    offset: int
    written_at: float
    state: EngineState


class CheckpointStore:
    """Write and read partition checkpoints in ``directory``, one ``.npz`` file per partition.

    A write goes to a temporary file, which is fsynced and renamed over the old file with
    ``os.replace``, and then the directory is fsynced. A crash at any point therefore
    leaves either the old or the new checkpoint, never a partial one.

    Several instances of a consumer group may share the directory. Opening a store
    removes only the temporary files that a crash left: those written on this host by a
    process that no longer runs, and those older than an hour.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(f".*{_TEMPORARY_SUFFIX}"):
            if _is_stale_temporary(leftover):
                leftover.unlink(missing_ok=True)

    def path(self, topic: str, partition: int) -> Path:
        """Return the file of ``topic`` and ``partition``."""
        if not _TOPIC_PATTERN.match(topic) or topic in (".", ".."):
            raise ValueError(f"topic {topic!r} is not a valid Kafka topic name; use letters, digits, '.', '_' and '-'")
        return self.directory / f"{topic}.{int(partition)}.npz"

    def write(self, topic: str, partition: int, offset: int, state: EngineState) -> Path:
        """Write the checkpoint of a partition atomically and return its path."""
        path = self.path(topic, partition)
        data = encode_checkpoint(topic, partition, offset, state)
        temporary = self.directory / f".{path.name}.{socket.gethostname()}-{os.getpid()}{_TEMPORARY_SUFFIX}"
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_directory(self.directory)
        return path

    def read(self, topic: str, partition: int) -> PartitionCheckpoint | None:
        """Return the checkpoint of a partition, or None when there is none.

        Raises ValueError when the file exists but cannot be read as a checkpoint.
        """
        path = self.path(topic, partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise ValueError(f"checkpoint {path} cannot be read ({error}); delete it to start the partition afresh") from None
        return decode_checkpoint(data, f"checkpoint {path}")


def encode_checkpoint(topic: str, partition: int, offset: int, state: EngineState) -> bytes:
    """Serialize the checkpoint of a partition to the bytes of an ``.npz`` archive.

    The archive contains the arrays of ``state`` and a JSON metadata entry with the format
    version, topic, partition, offset, the time of writing and the engine metadata. Every
    checkpoint store writes these bytes, so a checkpoint reads the same from any store.
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "topic": topic,
        "partition": int(partition),
        "offset": int(offset),
        "written_at": time.time(),
        "engine": state.meta,
    }
    payload = {name: np.asarray(array) for name, array in state.arrays.items()}
    payload[_META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    return buffer.getvalue()


def decode_checkpoint(data: bytes, source: str) -> PartitionCheckpoint:
    """Parse the bytes written by :func:`encode_checkpoint`.

    ``source`` names where the bytes come from, e.g. ``"checkpoint /var/ck/metrics.0.npz"``,
    in the error messages. Raises ValueError when the bytes are not a checkpoint of this
    format version.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{source} cannot be read ({error}); delete it to start the partition afresh") from None

    meta_bytes = arrays.pop(_META_KEY, None)
    if meta_bytes is None:
        raise ValueError(f"{source} has no metadata; delete it to start the partition afresh")
    meta = json.loads(meta_bytes.tobytes().decode("utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{source} has format version {meta.get('format_version')!r}, this version reads "
            f"{FORMAT_VERSION}; delete it to start the partition afresh"
        )
    return PartitionCheckpoint(
        topic=meta["topic"],
        partition=int(meta["partition"]),
        offset=int(meta["offset"]),
        written_at=float(meta["written_at"]),
        state=EngineState(meta["engine"], arrays),
    )


def _is_stale_temporary(path: Path) -> bool:
    """Return whether the temporary checkpoint file ``path`` was left by a crashed writer."""
    try:
        age_s = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age_s > _STALE_TEMPORARY_AGE_S:
        return True

    writer = _TEMPORARY_WRITER.match(path.name)
    if writer is None or writer["host"] != socket.gethostname():
        return False
    return not _process_runs(int(writer["pid"]))


def _process_runs(pid: int) -> bool:
    """Return whether a process with ``pid`` runs on this host (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class PartitionCheckpointer:
    """Track which series and offsets each partition has applied, and checkpoint and restore them.

    The stream runner calls :meth:`record` after each batch whose results the sinks have
    flushed, and :meth:`checkpoint` before each offset commit. The Kafka source calls
    :meth:`on_assigned`, :meth:`on_revoked` and :meth:`on_lost` from its rebalance
    listener. kafka-python runs the listener while the runner's thread is blocked in
    ``poll()`` or ``close()``, so the engine is never used by two threads at once.

    Parameters
    ----------
    engine
        The engine whose state is saved.
    store
        Where the checkpoints are written.
    every_records
        Checkpoint after this many records since the last checkpoint; None for no limit.
    interval_s
        Checkpoint when this many seconds have passed since the last checkpoint; None for
        no limit.
    """

    def __init__(
        self,
        engine: StreamEngine,
        store: CheckpointStore,
        every_records: int | None = 1000,
        interval_s: float | None = 5.0,
    ) -> None:
        if every_records is not None and every_records < 1:
            raise ValueError(f"every_records={every_records!r} is invalid; use a count >= 1, or None")
        if interval_s is not None and not interval_s > 0:
            raise ValueError(f"interval_s={interval_s!r} is invalid; use seconds > 0, or None")
        self.engine = engine
        self.store = store
        self.every_records = every_records
        self.interval_s = interval_s
        # Last offset applied per partition, and the one in its newest checkpoint.
        self.applied: dict[PartitionId, int] = {}
        self.checkpointed: dict[PartitionId, int] = {}
        self.series: dict[PartitionId, set[str]] = {}
        self.checkpoint_count = 0
        self._records_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._shared_threshold_adopted = False
        self._warned_series: set[str] = set()
        self._disabled_reason: str | None = None
        # Functions called with the last events of the open incidents that on_assigned restored.
        self.restored_incident_handlers: list[Callable[[list[dict]], None]] = []

    def record(self, messages: Iterable) -> None:
        """Note the messages of a batch as applied: their offsets and the series they belong to."""
        for message in messages:
            partition_id = (message.topic, message.partition)
            self.applied[partition_id] = max(self.applied.get(partition_id, -1), message.offset)
            series_set = self.series.setdefault(partition_id, set())
            self._records_since_checkpoint += 1
            if message.record is None:
                continue
            series = message.record.series
            if series not in series_set:
                self._check_single_partition(series, partition_id)
                series_set.add(series)

    def disable(self, reason: str) -> None:
        """Stop writing checkpoints and returning offsets to commit, for the rest of this run.

        The runner calls it when a batch failed after the engine had applied it, because the
        engine state is then ahead of the recorded offsets. A checkpoint of that state would
        make a restart skip the failed records as not newer than their series' last timestamp.
        """
        if self._disabled_reason is None:
            logger.error("checkpoints disabled until restart: %s", reason)
        self._disabled_reason = reason

    def due(self) -> bool:
        """Return True when ``every_records`` records or ``interval_s`` seconds have passed since the last checkpoint."""
        if self.every_records is not None and self._records_since_checkpoint >= self.every_records:
            return True
        return self.interval_s is not None and time.monotonic() - self._last_checkpoint >= self.interval_s

    def checkpoint(self, partitions: Iterable[PartitionId] | None = None) -> dict[PartitionId, int]:
        """Write the checkpoints of ``partitions`` (default: all with applied records) and return the offsets to commit.

        Only partitions with records applied since their last checkpoint are written. The
        result maps each partition to its last applied offset + 1, the next offset to read.
        Raises OSError when a file cannot be written, and then no offset should be committed.
        """
        if self._disabled_reason is not None:
            return {}
        partition_ids = list(self.applied) if partitions is None else [p for p in partitions if p in self.applied]
        started = time.monotonic()
        written = 0
        for partition_id in partition_ids:
            offset = self.applied[partition_id]
            if self.checkpointed.get(partition_id) == offset:
                continue
            topic, partition = partition_id
            state = self.engine.snapshot(sorted(self.series.get(partition_id, ())))
            self.store.write(topic, partition, offset, state)
            self.checkpointed[partition_id] = offset
            written += 1
        if partitions is None:
            self._records_since_checkpoint = 0
            self._last_checkpoint = time.monotonic()
        if written:
            self.checkpoint_count += 1
            logger.debug("checkpointed %d partitions in %.3f s", written, time.monotonic() - started)
        return {partition_id: self.applied[partition_id] + 1 for partition_id in partition_ids}

    def on_assigned(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, int]:
        """Restore the state of newly assigned partitions; return the offset to seek to for each restored one.

        A partition without a checkpoint, or with one that cannot be read or does not fit
        the engine, is not in the result, so the consumer starts it at the committed
        offset with no state for its series.
        """
        loaded: list[PartitionCheckpoint] = []
        for topic, partition in partitions:
            try:
                checkpoint = self.store.read(topic, partition)
            except ValueError as error:
                logger.error("checkpoint ignored: topic=%s partition=%s: %s", topic, partition, error)
                continue
            if checkpoint is not None:
                loaded.append(checkpoint)

        restored_series: list[str] = []
        adopt_shared = not self._shared_threshold_adopted and self.engine.stats["windows_scored"] == 0
        newest = max(loaded, key=lambda item: item.written_at, default=None)
        seek_offsets: dict[PartitionId, int] = {}
        for checkpoint in loaded:
            partition_id = (checkpoint.topic, checkpoint.partition)
            include_shared = adopt_shared and checkpoint is newest
            try:
                self.engine.restore(checkpoint.state, include_shared_threshold=include_shared)
            except (KeyError, ValueError) as error:
                logger.error(
                    "checkpoint ignored: topic=%s partition=%s offset=%s: %s",
                    checkpoint.topic, checkpoint.partition, checkpoint.offset, error,
                )
                continue
            self._shared_threshold_adopted = self._shared_threshold_adopted or include_shared
            self.series[partition_id] = set(checkpoint.state.meta["series"])
            self.applied[partition_id] = checkpoint.offset
            self.checkpointed[partition_id] = checkpoint.offset
            seek_offsets[partition_id] = checkpoint.offset + 1
            restored_series.extend(checkpoint.state.meta["series"])
            logger.info(
                "restored checkpoint: topic=%s partition=%s offset=%s series=%d, resuming at offset %d",
                checkpoint.topic, checkpoint.partition, checkpoint.offset,
                len(checkpoint.state.meta["series"]), checkpoint.offset + 1,
            )
        self._report_restored_incidents(restored_series)
        return seek_offsets

    def _report_restored_incidents(self, series_ids: list[str]) -> None:
        """Pass the last events of the restored open incidents to ``restored_incident_handlers``.

        A handler's error is logged, so that it cannot fail the rebalance.
        """
        if not self.restored_incident_handlers:
            return
        events = self.engine.open_incident_events(series_ids)
        if not events:
            return
        for handler in self.restored_incident_handlers:
            try:
                handler(events)
            except Exception as error:  # noqa: BLE001 - a sink's failure must not stop the partition assignment
                logger.error(
                    "restored open incidents not passed on: handler=%r alert_ids=%s error=%r",
                    handler, ",".join(event["alert_id"] for event in events), error,
                )

    def on_revoked(self, partitions: Sequence[PartitionId]) -> dict[PartitionId, int]:
        """Checkpoint the revoked partitions, forget their series and return the offsets to commit.

        When a checkpoint cannot be written, the error is logged, nothing is committed for
        that call, and the new owner resumes from the older checkpoint or committed offset.
        """
        try:
            offsets = self.checkpoint(partitions)
        except OSError as error:
            logger.error("checkpoint on revocation failed, offsets not committed: partitions=%s error=%r", partitions, error)
            offsets = {}
        self._drop(partitions)
        return offsets

    def on_lost(self, partitions: Sequence[PartitionId]) -> None:
        """Forget the series of partitions that another consumer may already own, without a checkpoint."""
        self._drop(partitions)

    def on_reset(self, partitions: Sequence[PartitionId]) -> None:
        """Restart the offsets of partitions whose log was replaced, keeping the state of their series.

        The source calls it when the partition's log was replaced, e.g. by a topic deleted
        and created again, and it reads the partition from its start again. The next
        checkpoint records offset -1, nothing of the new log applied, and commits offset 0,
        so a restart before the first new record does not skip the start of the new log.
        """
        for partition_id in partitions:
            self.applied[partition_id] = -1
            self.checkpointed.pop(partition_id, None)
            logger.info("checkpoint offsets forgotten after an offset reset: topic=%s partition=%d", *partition_id)

    def _drop(self, partitions: Sequence[PartitionId]) -> None:
        for partition_id in partitions:
            self.engine.forget(sorted(self.series.pop(partition_id, ())))
            self.applied.pop(partition_id, None)
            self.checkpointed.pop(partition_id, None)

    def _check_single_partition(self, series: str, partition_id: PartitionId) -> None:
        if series in self._warned_series:
            return
        for other_id, other_series in self.series.items():
            if other_id != partition_id and series in other_series:
                self._warned_series.add(series)
                logger.warning(
                    "series %r arrives on %s[%d] and %s[%d]; key its messages by series id, or its windows "
                    "and checkpoints mix records of both partitions",
                    series, partition_id[0], partition_id[1], other_id[0], other_id[1],
                )
                return

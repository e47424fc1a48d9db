"""Engine snapshots, the partition checkpoint store and the checkpointer, without Kafka."""

import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest

from streamad.data import Series
from streamad.engine import EngineConfig, StreamEngine
from streamad.engine.checkpoint import CheckpointStore, PartitionCheckpointer
from streamad.records import Record
from streamad.thresholds import AdaptiveThreshold
from streamad.training import TrainConfig, train_bundle

WINDOW = 12
SPIKE = slice(150, 170)


def _sine_series(series_id, length=300, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    values = np.stack([np.sin(t / 6.0), np.cos(t / 6.0)], axis=1) + 0.05 * rng.normal(size=(length, 2))
    return Series(series_id, t * 60_000, values, ["c0", "c1"], True)


@pytest.fixture(scope="module")
def bundle():
    config = TrainConfig(window=WINDOW, latent=2, hidden=16, epochs=10, seed=0, patience=5)
    trained = train_bundle([_sine_series("train", 800)], config, progress=False)
    trained.version = "test-version"
    return trained


def _records(series_ids):
    """Interleaved records of several series, each with a spike that opens an incident."""
    columns = []
    for index, series_id in enumerate(series_ids):
        series = _sine_series(series_id, seed=index + 1)
        values = series.values.copy()
        values[SPIKE] += 4.0
        columns.append([Record(series_id, int(series.timestamps[i]), values[i]) for i in range(len(series))])
    return [record for row in zip(*columns) for record in row]


def _event_keys(events):
    return [(event["alert_id"], event["sequence"], event["status"]) for event in events]


@pytest.mark.parametrize("per_series", [False, True])
def test_restored_engine_continues_like_uninterrupted(bundle, tmp_path, per_series):
    config = EngineConfig(per_series_threshold=per_series)
    records = _records(["a", "b"])
    # Cut inside the spike, so an incident is open and windows span the cut.
    cut = 2 * (SPIKE.start + 5)

    whole = StreamEngine(bundle, config).process(records)
    assert any(event["status"] == "firing" for event in whole.events)

    first = StreamEngine(bundle, config)
    before = first.process(records[:cut])
    store = CheckpointStore(tmp_path)
    store.write("metrics", 0, cut - 1, first.snapshot(["a", "b"]))
    checkpoint = store.read("metrics", 0)

    second = StreamEngine(bundle, config)
    second.restore(checkpoint.state)
    after = second.process(records[cut:])

    assert checkpoint.offset == cut - 1
    assert before.events and before.events[-1]["status"] != "resolved"
    assert _event_keys(before.events + after.events) == _event_keys(whole.events)
    scores = [point.score for point in before.points + after.points]
    np.testing.assert_allclose(scores, [point.score for point in whole.points], rtol=1e-5)
    thresholds = [point.threshold for point in before.points + after.points]
    assert thresholds == [point.threshold for point in whole.points]


def test_restore_leaves_other_series_alone(bundle):
    engine = StreamEngine(bundle)
    records = _records(["a", "b"])
    engine.process(records[:100])
    window_of_b = engine.buffers.window_of(engine.buffers.slots["b"]).copy()

    other = StreamEngine(bundle)
    other.process([record for record in records[100:140] if record.series == "a"])
    engine.restore(other.snapshot(["a"], include_shared_threshold=False), include_shared_threshold=False)

    np.testing.assert_array_equal(engine.buffers.window_of(engine.buffers.slots["b"]), window_of_b)
    assert engine.buffers.last_timestamp[engine.buffers.slots["a"]] == records[138].timestamp


def test_forget_resets_series(bundle):
    engine = StreamEngine(bundle)
    records = [record for record in _records(["a"])]
    engine.process(records[:50])
    engine.forget(["a", "never-seen"])
    result = engine.process(records[50 : 50 + WINDOW])
    assert len(result.points) == 1
    assert engine.buffers.seen[engine.buffers.slots["a"]] == WINDOW


def test_restore_rejects_other_threshold_mode(bundle):
    shared = StreamEngine(bundle, EngineConfig(per_series_threshold=False))
    shared.process(_records(["a"])[:40])
    per_series = StreamEngine(bundle, EngineConfig(per_series_threshold=True))
    with pytest.raises(ValueError, match="per_series_threshold"):
        per_series.restore(shared.snapshot(["a"]))


def test_restore_rejects_other_window(bundle):
    engine = StreamEngine(bundle)
    state = engine.snapshot(["a"])
    state.meta["window"] = WINDOW + 1
    with pytest.raises(ValueError, match="window"):
        StreamEngine(bundle).restore(state)


def test_threshold_state_round_trip():
    reference = np.linspace(0.0, 1.0, 200)
    original = AdaptiveThreshold(reference, level=0.9, window_size=50, per_series=True)
    rng = np.random.default_rng(0)
    for score in rng.uniform(0.0, 2.0, size=80):
        original.update("a", float(score))
    copy = AdaptiveThreshold(reference, level=0.9, window_size=50, per_series=True)
    copy.import_state(["a"], original.export_state(["a"]))
    for score in rng.uniform(0.0, 2.0, size=80):
        assert copy.update("a", float(score)) == original.update("a", float(score))


def test_store_missing_partition_is_none(tmp_path):
    assert CheckpointStore(tmp_path).read("metrics", 3) is None


def _finished_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_store_removes_finished_writer_files(tmp_path):
    host = socket.gethostname()
    leftover = tmp_path / f".metrics.0.npz.{host}-{_finished_pid()}.tmp"
    leftover.write_bytes(b"partial")
    CheckpointStore(tmp_path)
    assert not leftover.exists()


def test_store_keeps_live_writer_files(tmp_path):
    # A second instance of the consumer group opens the shared directory while the first
    # one writes the checkpoints of its revoked partitions.
    live = tmp_path / f".metrics.0.npz.{socket.gethostname()}-{os.getpid()}.tmp"
    other_host = tmp_path / f".metrics.1.npz.other-host.example-{_finished_pid()}.tmp"
    for path in (live, other_host):
        path.write_bytes(b"partial")
    CheckpointStore(tmp_path)
    assert live.exists()
    assert other_host.exists()


def test_store_removes_hour_old_files(tmp_path):
    old = tmp_path / ".metrics.1.npz.other-host.example-1234.tmp"
    old.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    CheckpointStore(tmp_path)
    assert not old.exists()




def test_store_rejects_corrupt_file(tmp_path):
    store = CheckpointStore(tmp_path)
    store.path("metrics", 0).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="delete it"):
        store.read("metrics", 0)


@pytest.mark.parametrize("topic", ["", "../etc", "a/b", ".."])
def test_store_rejects_invalid_topic(tmp_path, topic):
    with pytest.raises(ValueError, match="not a valid Kafka topic name"):
        CheckpointStore(tmp_path).path(topic, 0)


def test_store_overwrites_atomically(tmp_path, bundle):
    store = CheckpointStore(tmp_path)
    engine = StreamEngine(bundle)
    store.write("metrics", 0, 10, engine.snapshot(["a"]))
    store.write("metrics", 0, 20, engine.snapshot(["a"]))
    assert store.read("metrics", 0).offset == 20
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.0.npz"]


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    record: Record | None


def _messages(records, partition_of):
    offsets = {}
    messages = []
    for record in records:
        partition = partition_of[record.series]
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        messages.append(FakeMessage("metrics", partition, offset, record))
    return messages


def test_checkpointer_restores_revoked_partition(bundle, tmp_path):
    config = EngineConfig(per_series_threshold=True)
    records = _records(["a", "b"])
    partition_of = {"a": 0, "b": 1}
    messages = _messages(records, partition_of)
    cut = 2 * (SPIKE.start + 5)
    whole = StreamEngine(bundle, config).process(records)

    first_engine = StreamEngine(bundle, config)
    first = PartitionCheckpointer(first_engine, CheckpointStore(tmp_path), every_records=None, interval_s=None)
    first_result = first_engine.process(records[:cut])
    first.record(messages[:cut])
    commits = first.on_revoked([("metrics", 0), ("metrics", 1)])
    assert commits == {("metrics", 0): cut // 2, ("metrics", 1): cut // 2}
    assert not first.applied

    second_engine = StreamEngine(bundle, config)
    second = PartitionCheckpointer(second_engine, CheckpointStore(tmp_path), every_records=None, interval_s=None)
    seeks = second.on_assigned([("metrics", 0), ("metrics", 1), ("metrics", 2)])
    assert seeks == {("metrics", 0): cut // 2, ("metrics", 1): cut // 2}
    second_result = second_engine.process(records[cut:])

    assert _event_keys(first_result.events + second_result.events) == _event_keys(whole.events)


def test_checkpointer_reports_restored_incidents(bundle, tmp_path):
    config = EngineConfig(per_series_threshold=True)
    records = _records(["a", "b"])
    messages = _messages(records, {"a": 0, "b": 1})
    cut = 2 * (SPIKE.start + 5)
    first_engine = StreamEngine(bundle, config)
    first = PartitionCheckpointer(first_engine, CheckpointStore(tmp_path), every_records=None, interval_s=None)
    events = first_engine.process(records[:cut]).events
    first.record(messages[:cut])
    first.on_revoked([("metrics", 0), ("metrics", 1)])
    last_events = {event["alert_id"]: event for event in events}
    open_events = [event for event in last_events.values() if event["status"] != "resolved"]
    assert {event["series"] for event in open_events} == {"a", "b"}

    second_engine = StreamEngine(bundle, config)
    second = PartitionCheckpointer(second_engine, CheckpointStore(tmp_path), every_records=None, interval_s=None)
    reported = []
    second.restored_incident_handlers.append(reported.append)
    second.on_assigned([("metrics", 1)])

    # Only the incident of the assigned partition, as its last event before the checkpoint.
    assert len(reported) == 1
    assert reported[0] == [event for event in open_events if event["series"] == "b"]
    assert second_engine.open_incident_events(["a", "b"]) == reported[0]
    # The incident leaves the engine's list when it resolves.
    later = second_engine.process([record for record in records[cut:] if record.series == "b"]).events
    assert "resolved" in [event["status"] for event in later]
    assert second_engine.open_incident_events(["b"]) == []


def test_checkpointer_due_after_records(bundle, tmp_path):
    engine = StreamEngine(bundle)
    checkpointer = PartitionCheckpointer(engine, CheckpointStore(tmp_path), every_records=5, interval_s=None)
    messages = _messages(_records(["a"])[:7], {"a": 0})
    checkpointer.record(messages[:4])
    assert not checkpointer.due()
    checkpointer.record(messages[4:])
    assert checkpointer.due()
    assert checkpointer.checkpoint() == {("metrics", 0): 7}
    assert not checkpointer.due()
    assert CheckpointStore(tmp_path).read("metrics", 0).offset == 6


def test_checkpointer_ignores_unreadable_checkpoint(bundle, tmp_path):
    store = CheckpointStore(tmp_path)
    store.path("metrics", 0).write_bytes(b"garbage")
    checkpointer = PartitionCheckpointer(StreamEngine(bundle), store)
    assert checkpointer.on_assigned([("metrics", 0)]) == {}


def test_checkpointer_lost_partition_forgets_series(bundle, tmp_path):
    engine = StreamEngine(bundle)
    checkpointer = PartitionCheckpointer(engine, CheckpointStore(tmp_path))
    records = _records(["a"])[:30]
    engine.process(records)
    checkpointer.record(_messages(records, {"a": 0}))
    checkpointer.on_lost([("metrics", 0)])
    assert engine.buffers.seen[engine.buffers.slots["a"]] == 0
    assert CheckpointStore(tmp_path).read("metrics", 0) is None


def test_checkpointer_reset_partition_keeps_series(bundle, tmp_path):
    # The topic was created again, so the next records start at offset 0 of a new log.
    engine = StreamEngine(bundle)
    checkpointer = PartitionCheckpointer(engine, CheckpointStore(tmp_path))
    records = _records(["a"])[:40]
    engine.process(records[:30])
    checkpointer.record(_messages(records[:30], {"a": 0}))
    assert checkpointer.checkpoint() == {("metrics", 0): 30}

    checkpointer.on_reset([("metrics", 0)])
    # A stop before the first record of the new log must not leave the old offset behind.
    assert checkpointer.checkpoint() == {("metrics", 0): 0}
    assert CheckpointStore(tmp_path).read("metrics", 0).offset == -1
    engine.process(records[30:])
    checkpointer.record(_messages(records[30:], {"a": 0}))

    assert checkpointer.checkpoint() == {("metrics", 0): 10}
    saved = CheckpointStore(tmp_path).read("metrics", 0)
    assert saved.offset == 9
    assert saved.state.meta["series"] == ["a"]
    assert engine.buffers.seen[engine.buffers.slots["a"]] == 40


def test_checkpointer_disabled_writes_nothing(bundle, tmp_path):
    engine = StreamEngine(bundle)
    checkpointer = PartitionCheckpointer(engine, CheckpointStore(tmp_path))
    records = _records(["a"])[:30]
    engine.process(records)
    checkpointer.record(_messages(records, {"a": 0}))
    checkpointer.disable("sink flush failed")
    assert checkpointer.checkpoint() == {}
    assert checkpointer.on_revoked([("metrics", 0)]) == {}
    assert CheckpointStore(tmp_path).read("metrics", 0) is None


class FailingSink:
    def send(self, items):
        pass

    def flush(self):
        raise OSError("disk full")

    def close(self):
        pass


class ListSource:
    """A source of fixed batches that records the offsets committed to it."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.commits = []

    def poll(self):
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets):
        self.commits.append(dict(offsets))

    def close(self):
        pass


def test_runner_commits_after_checkpoint(bundle, tmp_path):
    from streamad.engine import run_stream

    engine = StreamEngine(bundle)
    messages = _messages(_records(["a"])[:60], {"a": 0})
    source = ListSource([messages[:30], messages[30:]])
    checkpointer = PartitionCheckpointer(engine, CheckpointStore(tmp_path), every_records=50, interval_s=None)
    run_stream(engine, source, [], checkpointer=checkpointer, until=lambda: not source.batches)
    # The final commit of the loop repeats the offset; KafkaSource skips such repeats.
    assert source.commits[0] == {("metrics", 0): 60}
    assert all(commit == {("metrics", 0): 60} for commit in source.commits)
    assert CheckpointStore(tmp_path).read("metrics", 0).offset == 59


def test_runner_failed_batch_stops_checkpoints(bundle, tmp_path):
    from streamad.engine import run_stream

    engine = StreamEngine(bundle)
    messages = _messages(_records(["a"])[:60], {"a": 0})
    source = ListSource([messages[:30], messages[30:]])
    checkpointer = PartitionCheckpointer(engine, CheckpointStore(tmp_path), every_records=1, interval_s=None)
    with pytest.raises(OSError, match="disk full"):
        run_stream(engine, source, [FailingSink()], checkpointer=checkpointer)
    # The first batch already failed in the sink flush, so no state may be saved after it.
    assert checkpointer.on_revoked([("metrics", 0)]) == {}
    assert source.commits == []
    assert CheckpointStore(tmp_path).read("metrics", 0) is None


def _partition_warnings(caplog):
    return [record.getMessage() for record in caplog.records if "key its messages by series id" in record.getMessage()]


def test_runner_warns_series_on_two_partitions(bundle, caplog):
    from streamad.engine import run_stream

    engine = StreamEngine(bundle)
    records = _records(["a", "b"])[:80]
    # The records alternate a, b, so each series alternates between partitions 0 and 1.
    spread = [FakeMessage("metrics", index // 2 % 2, index, record) for index, record in enumerate(records)]
    source = ListSource([spread[:40], spread[40:]])
    with caplog.at_level(logging.WARNING):
        run_stream(engine, source, [], until=lambda: not source.batches)

    warnings = _partition_warnings(caplog)
    assert len(warnings) == 2
    assert warnings[0].startswith("series 'a' arrives on metrics[")
    assert warnings[1].startswith("series 'b' arrives on metrics[")


def test_runner_keyed_series_no_partition_warning(bundle, caplog):
    from streamad.engine import run_stream

    engine = StreamEngine(bundle)
    messages = _messages(_records(["a", "b"])[:80], {"a": 0, "b": 1})
    source = ListSource([messages[:40], messages[40:]])
    with caplog.at_level(logging.WARNING):
        run_stream(engine, source, [], until=lambda: not source.batches)

    assert _partition_warnings(caplog) == []


def test_runner_with_checkpoints_warns_once(bundle, tmp_path, caplog):
    from streamad.engine import run_stream

    engine = StreamEngine(bundle)
    records = _records(["a"])[:40]
    spread = [FakeMessage("metrics", index % 2, index, record) for index, record in enumerate(records)]
    source = ListSource([spread])
    checkpointer = PartitionCheckpointer(engine, CheckpointStore(tmp_path), every_records=1000, interval_s=None)
    with caplog.at_level(logging.WARNING):
        run_stream(engine, source, [], checkpointer=checkpointer, until=lambda: not source.batches)

    assert len(_partition_warnings(caplog)) == 1

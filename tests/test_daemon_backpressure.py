"""Backpressure: the runner pauses its source while asynchronous sinks fall behind, and resumes after.

The decision and the runner loop are tested without Kafka. The Kafka tests run ``run_stream`` on a
real broker with a real KafkaSource and a sink whose delivery thread is slow.
"""

import collections
import copy
import threading
import time

import numpy as np
import pytest
from conftest import JOIN_TIMEOUT_S
from kafka import KafkaConsumer, TopicPartition

from streamad.engine import EngineConfig, StreamEngine, run_stream
from streamad.engine.backpressure import Backpressure, BackpressureGate, sinks_backlog
from streamad.records import Record
from streamad.replay import SeriesSource, replay_series

STREAM_ROWS = slice(3400, 4600)
MAX_IN_FLIGHT = 200
MAX_POLL_RECORDS = 50
# Maximum time in seconds that a test waits for the stream to be consumed and delivered.
RUN_TIMEOUT_S = 120.0
SERIES_IDS = ("machine-a", "machine-b", "machine-c", "machine-d")


class SlowOutboxSink:
    """A sink that accepts items at once and delivers them from a background thread, ``per_step`` every ``step_s``.

    ``backlog()`` is the number of accepted items not delivered yet. ``max_backlog`` is the
    highest backlog right after a ``send()``. Clearing ``running`` stalls the delivery.
    """

    def __init__(self, per_step: int = 10, step_s: float = 0.05) -> None:
        self.per_step = per_step
        self.step_s = step_s
        self.delivered: list = []
        self.max_backlog = 0
        self.running = threading.Event()
        self.running.set()
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._deliver, name="slow-outbox", daemon=True)
        self._thread.start()

    def send(self, items):
        with self._lock:
            self._queue.extend(items)
            self.max_backlog = max(self.max_backlog, len(self._queue))

    def backlog(self) -> int:
        with self._lock:
            return len(self._queue)

    def flush(self):
        # Items are accepted into the outbox; delivery goes on in the background.
        pass

    def close(self):
        self._closed.set()
        self._thread.join(timeout=10)

    def _deliver(self):
        while not self._closed.is_set():
            time.sleep(self.step_s)
            if not self.running.is_set():
                continue
            with self._lock:
                for _ in range(min(self.per_step, len(self._queue))):
                    self.delivered.append(self._queue.popleft())


class RecordingSource:
    """Wraps a KafkaSource and records batch sizes, processed records and the paused partitions after each poll.

    ``consumed`` counts the records that polls returned, ``processed`` those that the runner committed.
    """

    def __init__(self, source) -> None:
        self.source = source
        self.batch_sizes: list[int] = []
        self.consumed = 0
        self.processed = 0
        self.paused_seen: set = set()
        self.snapshots: list[tuple[frozenset, frozenset]] = []

    def poll(self):
        messages = self.source.poll()
        self.consumed += len(messages)
        if messages:
            self.batch_sizes.append(len(messages))
        paused = frozenset(self.source.paused())
        self.paused_seen |= paused
        self.snapshots.append((frozenset(self.source.assignment()), paused))
        return messages

    def commit(self, messages):
        committed = self.source.commit(messages)
        self.processed += len(messages)
        return committed

    def pause(self):
        return self.source.pause()

    def resume(self):
        return self.source.resume()

    def paused(self):
        return self.source.paused()


# Without Kafka


def test_gate_pauses_above_limit():
    gate = BackpressureGate(100)
    assert gate.update(100) is None
    assert gate.paused is False
    assert gate.update(101) == "pause"
    assert gate.paused is True
    assert gate.update(500) is None


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        ([101, 80, 50], [None, None, None]),  # 50 is not below half of 100
        ([101, 49], [None, "resume"]),
        ([101, 49, 100, 101], [None, "resume", None, "pause"]),
    ],
)
def test_gate_resumes_below_half(readings, expected):
    gate = BackpressureGate(100)
    assert gate.update(readings[0]) == "pause"
    assert [gate.update(backlog) for backlog in readings[1:]] == expected[1:]


def test_gate_limit_one_resumes_at_zero():
    gate = BackpressureGate(1)
    assert gate.update(2) == "pause"
    assert gate.update(1) is None
    assert gate.update(0) == "resume"


@pytest.mark.parametrize("value", [0, -5, 1.5, True, None])
def test_gate_rejects_invalid_limit(value):
    with pytest.raises(ValueError, match="max_in_flight"):
        BackpressureGate(value)


def test_sinks_backlog_sums_sinks_with_backlog():
    class Plain:
        pass

    class WithBacklog:
        def __init__(self, count):
            self.count = count

        def backlog(self):
            return self.count

    assert sinks_backlog([Plain()]) is None
    assert sinks_backlog([]) is None
    assert sinks_backlog([Plain(), WithBacklog(3), WithBacklog(4)]) == 7
    assert sinks_backlog([WithBacklog(0)]) == 0


class FakePausableSource:
    """A source of numbered batches with Kafka-like pause(): paused polls return nothing."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.is_paused = False
        self.polls_while_paused = 0
        self.calls: list[str] = []

    def poll(self):
        if self.is_paused:
            self.polls_while_paused += 1
            return []
        return self.batches.pop(0) if self.batches else []

    def pause(self):
        self.calls.append("pause")
        newly = set() if self.is_paused else {("t", 0)}
        self.is_paused = True
        return newly

    def resume(self):
        self.calls.append("resume")
        self.is_paused = False
        return {("t", 0)}

    def paused(self):
        return {("t", 0)} if self.is_paused else set()


class SettableBacklogSink:
    def __init__(self):
        self.count = 0

    def backlog(self):
        return self.count


def test_backpressure_pauses_and_keeps_polling():
    sink = SettableBacklogSink()
    source = FakePausableSource([["a"], ["b"], ["c"]])
    backpressure = Backpressure([sink], max_in_flight=10)
    stop = threading.Event()

    assert backpressure.poll(source, stop) == ["a"]
    sink.count = 11
    assert backpressure.poll(source, stop) == []
    assert backpressure.paused is True
    assert source.calls[0] == "pause"
    assert source.polls_while_paused == 1

    sink.count = 5  # not below half of 10
    assert backpressure.poll(source, stop) == []
    assert source.polls_while_paused == 2
    sink.count = 4
    assert backpressure.poll(source, stop) == ["b"]
    assert backpressure.paused is False
    assert source.calls[-1] == "resume"
    assert backpressure.pauses == 1
    assert backpressure.resumes == 1
    assert backpressure.max_backlog == 11
    assert backpressure.backlog == 4


def test_backpressure_without_backlog_sinks_polls_directly():
    source = FakePausableSource([["a"]])
    backpressure = Backpressure([object()], max_in_flight=1)
    assert backpressure.poll(source, threading.Event()) == ["a"]
    assert source.calls == []


@pytest.fixture(scope="module")
def bundle(small_machine_bundle):
    # The session's 3-epoch model, trained on the rows before STREAM_ROWS: the tests compare
    # runs of one model, so its quality does not matter. The copy keeps the shared one unchanged.
    return copy.deepcopy(small_machine_bundle)


def test_runner_waits_for_source_without_pause(bundle, machine_temperature):
    stream = machine_temperature.slice(STREAM_ROWS.start, STREAM_ROWS.start + 300)
    sink = SlowOutboxSink(per_step=20, step_s=0.01)
    source = SeriesSource([stream], batch_size=MAX_POLL_RECORDS)
    try:
        stats = run_stream(
            StreamEngine(bundle, EngineConfig()), source, [], point_sinks=[sink],
            until=lambda: source.exhausted, max_in_flight=60,
        )
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while sink.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sink.close()

    clean = []
    replay_series(StreamEngine(bundle, EngineConfig()), [stream], on_points=clean.extend)
    assert stats.pauses >= 1
    assert sink.max_backlog <= 60 + MAX_POLL_RECORDS
    assert [(d["series"], d["timestamp"]) for d in sink.delivered] == [(p.series, p.timestamp) for p in clean]


# On a real broker


def _committed_offset(bootstrap, group_id, topic, partition=0):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False, request_timeout_ms=10_000)
    try:
        return consumer.committed(TopicPartition(topic, partition))
    finally:
        consumer.close()


@pytest.mark.kafka
def test_kafka_backpressure_pauses_and_resumes(kafka_bootstrap, new_topic, group_id, make_source, bundle, machine_temperature):
    from connectors.kafka import produce_records

    stream = machine_temperature.slice(STREAM_ROWS.start, STREAM_ROWS.stop)
    stream.series_id = "machine"
    records = [Record("machine", int(stream.timestamps[i]), stream.values[i]) for i in range(len(stream))]
    topic = new_topic(1, prefix="backpressure")
    produce_records(kafka_bootstrap, topic, records)

    source = RecordingSource(make_source([topic], group_id, max_poll_records=MAX_POLL_RECORDS))
    sink = SlowOutboxSink(per_step=10, step_s=0.05)
    scored = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        stats = run_stream(
            StreamEngine(bundle, EngineConfig()), source, [], point_sinks=[sink], on_points=scored.extend,
            until=lambda: source.processed >= len(records) or time.monotonic() > deadline,
            max_in_flight=MAX_IN_FLIGHT,
        )
        while sink.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sink.close()

    clean = []
    replay_series(StreamEngine(bundle, EngineConfig()), [stream], on_points=clean.extend)

    assert source.processed == len(records)
    assert max(source.batch_sizes) <= MAX_POLL_RECORDS
    assert sink.max_backlog <= MAX_IN_FLIGHT + MAX_POLL_RECORDS
    assert sink.max_backlog > MAX_IN_FLIGHT, "the sink was never slow enough to trigger backpressure"
    assert source.paused_seen == {(topic, 0)}
    assert stats.pauses >= 1
    assert source.paused() == set(), "consumption was not resumed"

    assert [(p.series, p.timestamp) for p in scored] == [(p.series, p.timestamp) for p in clean]
    np.testing.assert_allclose([p.score for p in scored], [p.score for p in clean], rtol=1e-5)
    assert [p.is_alert for p in scored] == [p.is_alert for p in clean]
    assert [(d["series"], d["timestamp"]) for d in sink.delivered] == [(p.series, p.timestamp) for p in clean]

    committed = _committed_offset(kafka_bootstrap, group_id, topic)
    assert committed == len(records)


@pytest.mark.kafka
def test_kafka_backpressure_pauses_reassigned_partitions(kafka_bootstrap, new_topic, group_id, make_source, bundle, machine_temperature):
    """A partition that a rebalance gives back while the runner is paused must be paused too."""
    from connectors.kafka import produce_records

    topic = new_topic(2, prefix="backpressure")
    all_partitions = {(topic, 0), (topic, 1)}
    stream = machine_temperature.slice(STREAM_ROWS.start, STREAM_ROWS.start + 400)
    records = [
        Record(series, int(stream.timestamps[i]), stream.values[i])
        for series in SERIES_IDS
        for i in range(len(stream))
    ]
    produce_records(kafka_bootstrap, topic, records)

    clean = []
    replay_series(StreamEngine(bundle, EngineConfig()), [stream], on_points=clean.extend)
    expected = {(series, point.timestamp) for series in SERIES_IDS for point in clean}

    source = RecordingSource(make_source([topic], group_id, max_poll_records=MAX_POLL_RECORDS))
    sink = SlowOutboxSink(per_step=10, step_s=0.05)
    sink.running.clear()
    stop = threading.Event()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    result = {}
    scored = set()

    def record_points(points):
        scored.update((point.series, point.timestamp) for point in points)

    def run():
        # A commit that fails in a rebalance leaves the offset behind, so the end of the stream
        # is detected from the scored windows, not from the committed records.
        result["stats"] = run_stream(
            StreamEngine(bundle, EngineConfig()), source, [], point_sinks=[sink], stop=stop, on_points=record_points,
            until=lambda: scored == expected and sink.backlog() == 0, max_in_flight=MAX_IN_FLIGHT,
        )

    def wait_for(condition, description):
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {description}"
            assert runner.is_alive() or "stats" in result, "run_stream failed"
            time.sleep(0.05)

    runner = threading.Thread(target=run, name="runner", daemon=True)
    runner.start()
    try:
        wait_for(lambda: source.snapshots and source.snapshots[-1] == (frozenset(all_partitions), frozenset(all_partitions)), "the pause of both partitions")
        processed_at_pause = source.processed

        # A second member takes one partition; when it leaves, the runner gets it back unpaused.
        second = make_source([topic], group_id)
        second.wait_for_assignment(JOIN_TIMEOUT_S)
        wait_for(lambda: len(source.snapshots[-1][0]) == 1, "the rebalance to two members")
        second.close()
        wait_for(lambda: source.snapshots[-1][0] == frozenset(all_partitions), "the rebalance back to one member")
        wait_for(lambda: source.snapshots[-1][1] == frozenset(all_partitions), "the pause of the reassigned partition")
        # The reassigned partition is paused on assignment, so the rebalance returns none of its records.
        assert source.processed == processed_at_pause

        sink.running.set()
        runner.join(timeout=RUN_TIMEOUT_S)
        missing = sorted(expected - scored)
        assert not runner.is_alive(), (
            f"run_stream did not finish after the sink caught up: {len(missing)} windows not scored, "
            f"the first {missing[:3]}; backlog {sink.backlog()}; last (assignment, paused) {source.snapshots[-1]}"
        )
    finally:
        stop.set()
        sink.running.set()
        runner.join(timeout=30)
        sink.close()

    assert source.paused() == set()
    assert result["stats"].pauses >= 1
    assert sink.max_backlog <= MAX_IN_FLIGHT + MAX_POLL_RECORDS
    assert {(d["series"], d["timestamp"]) for d in sink.delivered} == expected
    for partition in (0, 1):
        assert _committed_offset(kafka_bootstrap, group_id, topic, partition) is not None

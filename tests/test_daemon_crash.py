"""`streamad run` under kill -9, failover and SIGTERM, against a real Kafka broker.

Three overlapping slices of NAB's machine-temperature file are three series, each produced to its
own partition of a 3-partition topic. The daemons run with per-partition checkpoints and
per-series thresholds, so every series' results must equal those of one uninterrupted
in-process run, whatever the crashes and partition moves: every window scored at least
once and the same incident events after deduplication.
"""

import json
import random
import signal

import pytest

from daemon_support import (
    committed_offsets, event_set, kill_daemon, machine_slices, replay_windows_and_events, start_streamad_run, tail_logs,
    wait_for,
)
from streamad.engine import EngineConfig
from streamad.records import Record, encode_record

pytestmark = pytest.mark.kafka

# One slice per partition, after the training rows. The slices overlap by 2000 rows, and
# the first one contains NAB's labelled anomaly window of 15 to 17 December 2013. They are
# long enough that ten killed runs, each of which scores a few hundred windows past its
# kill point on an idle machine, cannot finish the stream before the last restart.
SLICE_ROWS = 3000
SLICE_STARTS = (3400, 4400, 5400)
PARTITIONS = len(SLICE_STARTS)
WINDOW = 32

# The reconstruction score needs no decoder Jacobian, so it is several times faster than
# the likelihood and the restarts stay short. The recovery does not depend on the score.
SCORE = "reconstruction"
DAEMON_OPTIONS = [
    "--score", SCORE,
    "--per-series-threshold",
    "--checkpoint-every-records", "100",
    "--checkpoint-interval-s", "1",
    "--max-poll-records", "40",
    "--session-timeout-ms", "6000",
    "--heartbeat-interval-ms", "2000",
    "--max-poll-interval-ms", "10000",
]


@pytest.fixture(scope="module")
def bundle_dir(machine_model_dir):
    """The session's window-32 model, trained on rows 0 to 3400 (see tests/conftest.py)."""
    return machine_model_dir


@pytest.fixture(scope="module")
def streams(machine_temperature):
    """The series of partition 0, 1 and 2, in partition order."""
    return machine_slices(machine_temperature, SLICE_STARTS, SLICE_ROWS)


@pytest.fixture(scope="module")
def clean_run(bundle_dir, streams):
    """Scored windows and incident events of one uninterrupted in-process run."""
    return replay_windows_and_events(bundle_dir, streams, EngineConfig(score=SCORE, per_series_threshold=True))


def _produce(bootstrap, topic, streams, rows):
    """Send ``rows`` of every stream, each to the partition of its index, keyed by series id."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for partition, series in enumerate(streams):
            for row in rows:
                record = Record(series.series_id, int(series.timestamps[row]), series.values[row])
                producer.send(topic, key=series.series_id.encode(), value=encode_record(record, True), partition=partition)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def _start_daemon(bootstrap, bundle_dir, topic, group_id, directory, name):
    arguments = [
        "--model", str(bundle_dir), "--bootstrap-servers", bootstrap, "--topic", topic, "--group-id", group_id,
        "--alerts", str(directory / f"alerts-{name}.jsonl"),
        "--scores", str(directory / f"scores-{name}.jsonl"),
        "--dead-letter", str(directory / f"dead-{name}.jsonl"),
        "--checkpoint-dir", str(directory / "checkpoints"),
        *DAEMON_OPTIONS,
    ]
    return start_streamad_run(arguments, directory / f"daemon-{name}.log")


class JsonLinesReader:
    """Read the complete lines that the daemons appended to JSON-lines files since the last call."""

    def __init__(self):
        self.positions = {}

    def read(self, path):
        if not path.exists():
            return []
        with open(path, "rb") as file:
            file.seek(self.positions.get(path, 0))
            data = file.read()
        end = data.rfind(b"\n") + 1
        self.positions[path] = self.positions.get(path, 0) + end
        items = []
        for line in data[:end].splitlines():
            try:
                items.append(json.loads(line))
            except ValueError:
                # A line cut by kill -9; its batch was not flushed, so it is processed again.
                continue
        return items


class Outputs:
    """The union of the scored windows and incident events that all daemon runs wrote."""

    def __init__(self, directory):
        self.directory = directory
        self.reader = JsonLinesReader()
        self.windows = set()
        self.events = set()
        self.windows_by_daemon = {}

    def update(self):
        for path in sorted(self.directory.glob("scores-*.jsonl")):
            name = path.stem.removeprefix("scores-")
            windows = {(point["series"], point["timestamp"]) for point in self.reader.read(path)}
            self.windows |= windows
            self.windows_by_daemon.setdefault(name, set()).update(windows)
        for path in sorted(self.directory.glob("alerts-*.jsonl")):
            self.events |= event_set(self.reader.read(path))


def _committed(bootstrap, group_id, topic):
    return committed_offsets(bootstrap, group_id, topic, PARTITIONS)


def test_daemon_survives_kill_nine(kafka_bootstrap, new_topic, group_id, bundle_dir, streams, clean_run, tmp_path):
    expected_windows, expected_events = clean_run
    assert len(expected_windows) == PARTITIONS * (SLICE_ROWS - WINDOW + 1)
    assert any(status == "firing" for _, _, status in expected_events)

    topic = new_topic(PARTITIONS, prefix="crash")
    _produce(kafka_bootstrap, topic, streams, range(SLICE_ROWS))
    outputs = Outputs(tmp_path)
    logs = [tmp_path / "daemon-crash.log"]
    # Kill each run after it has written a random number of scored windows, so the kills
    # land at random points of the poll, score, flush, checkpoint and commit loop. At least
    # 150 windows means at least 100 records, so every run writes a checkpoint first.
    rng = random.Random(20131215)
    scores_path = tmp_path / "scores-crash.jsonl"
    for _ in range(10):
        kill_after = rng.randrange(150, 300)
        scored_by_run = []
        daemon = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, "crash")
        try:

            def reached():
                scored_by_run.extend(outputs.reader.read(scores_path))
                assert daemon.poll() is None, f"daemon exited with {daemon.returncode}:\n{tail_logs(logs)}"
                return len(scored_by_run) >= kill_after

            wait_for(reached, 60, f"{kill_after} windows scored by one run", logs)
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=10)
        finally:
            kill_daemon(daemon)
        outputs.windows |= {(point["series"], point["timestamp"]) for point in scored_by_run}
    assert len(outputs.windows) < len(expected_windows), "the killed runs finished the stream"

    daemon = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, "crash")
    try:
        wait_for(
            lambda: _committed(kafka_bootstrap, group_id, topic) == [SLICE_ROWS] * PARTITIONS,
            90, "the commit of every record", logs,
        )
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, tail_logs(logs)
    finally:
        kill_daemon(daemon)

    outputs.update()
    log = logs[0].read_text()
    assert log.count("checkpoints in") == 11
    assert log.count("restored checkpoint") >= 10
    assert outputs.windows == expected_windows
    assert outputs.events == expected_events


def test_daemon_failover_to_second_instance(kafka_bootstrap, new_topic, group_id, bundle_dir, streams, clean_run, tmp_path):
    expected_windows, expected_events = clean_run
    topic = new_topic(PARTITIONS, prefix="failover")
    outputs = Outputs(tmp_path)
    logs = [tmp_path / "daemon-first.log", tmp_path / "daemon-second.log"]
    first = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, "first")
    second = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, "second")
    try:
        # Both members hold partitions before any record arrives, so both score some.
        def both_assigned():
            latest = [_latest_assignment(path) for path in logs]
            return all(latest) and sum(len(partitions) for partitions in latest) == PARTITIONS

        wait_for(both_assigned, 60, "an assignment for both daemons", logs)

        _produce(kafka_bootstrap, topic, streams, range(SLICE_ROWS))

        def first_scored_some():
            outputs.update()
            return len(outputs.windows_by_daemon.get("first", ())) >= 200

        wait_for(first_scored_some, 60, "200 windows scored by the first daemon", logs)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

        wait_for(
            lambda: _committed(kafka_bootstrap, group_id, topic) == [SLICE_ROWS] * PARTITIONS,
            90, "the commit of every record", logs,
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, tail_logs(logs)
    finally:
        kill_daemon(first)
        kill_daemon(second)

    outputs.update()
    assert "restored checkpoint" in logs[1].read_text()
    assert outputs.windows_by_daemon["first"]
    assert outputs.windows == expected_windows
    assert outputs.events == expected_events


def test_daemon_scale_out_mid_stream(kafka_bootstrap, new_topic, group_id, bundle_dir, streams, clean_run, tmp_path):
    expected_windows, expected_events = clean_run
    topic = new_topic(PARTITIONS, prefix="scale")
    outputs = Outputs(tmp_path)
    logs = [tmp_path / "daemon-first.log", tmp_path / "daemon-second.log"]
    # The rest of the rows is produced only after the second member has partitions, so
    # both members have records to score.
    split_row = SLICE_ROWS // 3
    _produce(kafka_bootstrap, topic, streams, range(split_row))
    first = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, "first")
    second = None
    try:
        def first_scored_some():
            outputs.update()
            return len(outputs.windows_by_daemon.get("first", ())) >= 300

        wait_for(first_scored_some, 60, "300 windows scored by the first daemon", logs)
        # The second member's join revokes every partition of the first one, which
        # checkpoints them in its rebalance listener while their state is in its engine.
        second = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, "second")
        wait_for(lambda: _latest_assignment(logs[1]), 60, "an assignment for the second daemon", logs)
        _produce(kafka_bootstrap, topic, streams, range(split_row, SLICE_ROWS))
        wait_for(
            lambda: _committed(kafka_bootstrap, group_id, topic) == [SLICE_ROWS] * PARTITIONS,
            90, "the commit of every record", logs,
        )
        for daemon in (first, second):
            daemon.send_signal(signal.SIGTERM)
        for daemon in (first, second):
            assert daemon.wait(timeout=30) == 0, tail_logs(logs)
    finally:
        kill_daemon(first)
        if second is not None:
            kill_daemon(second)

    outputs.update()
    first_log = logs[0].read_text()
    assert "Kafka partitions revoked" in first_log
    assert "Rebalance handler failed" not in first_log
    assert outputs.windows_by_daemon.get("second")
    assert outputs.windows == expected_windows
    assert outputs.events == expected_events


def _latest_assignment(log_path):
    """Return the partitions of the last 'partitions assigned' line of a daemon log, or an empty list."""
    if not log_path.exists():
        return []
    lines = [line for line in log_path.read_text().splitlines() if "Kafka partitions assigned" in line]
    if not lines:
        return []
    partitions = lines[-1].rsplit("partitions=", 1)[1].strip()
    return [] if partitions == "none" else partitions.split(",")


def test_daemon_sigterm_commits_what_it_processed(kafka_bootstrap, new_topic, group_id, bundle_dir, streams, tmp_path):
    from streamad.engine.checkpoint import CheckpointStore

    topic = new_topic(PARTITIONS, prefix="sigterm")
    outputs = Outputs(tmp_path)
    logs = [tmp_path / "daemon-sigterm.log"]
    _produce(kafka_bootstrap, topic, streams, range(SLICE_ROWS))
    daemon = _start_daemon(kafka_bootstrap, bundle_dir, topic, group_id, tmp_path, "sigterm")
    try:
        def scored_some():
            outputs.update()
            return len(outputs.windows) >= 600

        wait_for(scored_some, 60, "600 scored windows", logs)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, tail_logs(logs)
    finally:
        kill_daemon(daemon)

    outputs.update()
    committed = _committed(kafka_bootstrap, group_id, topic)
    store = CheckpointStore(tmp_path / "checkpoints")
    processed = [offset or 0 for offset in committed]
    assert 0 < sum(processed) < PARTITIONS * SLICE_ROWS, f"committed offsets {committed} are not mid-stream"
    for partition, series in enumerate(streams):
        checkpoint = store.read(topic, partition)
        scored = [timestamp for series_id, timestamp in outputs.windows if series_id == series.series_id]
        if committed[partition] is None:
            # kafka-python may drain one partition before it fetches the next.
            assert checkpoint is None
            assert not scored
            continue
        assert checkpoint is not None
        assert checkpoint.offset + 1 == committed[partition]
        # Offset i of a partition is row i of its series, and every row from WINDOW - 1 on ends a window.
        if committed[partition] >= WINDOW:
            assert max(scored) == int(series.timestamps[committed[partition] - 1])
            assert len(scored) == committed[partition] - WINDOW + 1
    assert "stopped after" in logs[0].read_text()

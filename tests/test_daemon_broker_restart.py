"""`streamad run` and the Kafka sink through a broker outage, each test with its own Tansu broker.

Tansu keeps its data in memory, so a restart loses the topics and the group offsets, and the
tests create the topics again after the restart. They check that the clients reconnect by
themselves and deliver what was pending, not that data survives the broker.
"""

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import require_tansu
from daemon_support import committed_offsets, kill_daemon, start_streamad_run, wait_for

from streamad.records import Record

WINDOW = 32
# Rows produced before the outage. The daemon scores them with the likelihood score, 20
# records per batch, so it is still busy when the broker is killed after KILL_AFTER windows.
BEFORE_ROWS = slice(3400, 5400)
KILL_AFTER = 300
# Rows produced after the restart. They are fewer than the records read before the kill,
# so a consumer that kept its old position gets OFFSET_OUT_OF_RANGE and resets to the
# earliest offset of the new topic instead of skipping records.
AFTER_ROWS = slice(5400, 5550)
DAEMON_OPTIONS = [
    "--retry-backoff-max-s", "2",
    "--request-timeout-ms", "3000",
    "--max-poll-records", "20",
    "--session-timeout-ms", "6000",
    "--heartbeat-interval-ms", "2000",
    "--max-poll-interval-ms", "10000",
]


def test_backoff_doubles_to_cap():
    from connectors.kafka import RetryBackoff

    backoff = RetryBackoff(max_s=4.0)
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for retry, ceiling in enumerate(ceilings, start=1):
        for _ in range(20):
            delay = backoff.delay(retry)
            assert ceiling / 2 <= delay <= ceiling, f"retry {retry}: delay {delay} outside [{ceiling / 2}, {ceiling}]"
    assert backoff.delay(10_000) <= 4.0


def test_backoff_wait_ends_on_stop():
    from connectors.kafka import RetryBackoff

    stop = threading.Event()
    backoff = RetryBackoff(max_s=60.0, stop=stop)
    stop.set()
    started = time.monotonic()

    assert backoff.wait(60.0) is False
    assert time.monotonic() - started < 5.0


def test_retriable_errors_include_unknown_server_error():
    from kafka.errors import CommitFailedError, KafkaConnectionError, KafkaTimeoutError, UnknownError

    from connectors.kafka import KafkaDeliveryError, is_retriable

    assert is_retriable(KafkaTimeoutError())
    assert is_retriable(KafkaConnectionError())
    assert is_retriable(UnknownError())
    assert not is_retriable(CommitFailedError())
    assert not is_retriable(ValueError("not a Kafka error"))
    assert KafkaDeliveryError("m", [(0, KafkaTimeoutError()), (1, UnknownError())]).retriable
    assert not KafkaDeliveryError("m", [(0, KafkaTimeoutError()), (1, CommitFailedError())]).retriable


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("checkpoint_topic = 'metrics'", "--checkpoint-topic 'metrics' is also an input, alert or dead-letter topic"),
        ("checkpoint_topic = 'check points'", "'check points' is not a valid Kafka topic name"),
        ("retry_backoff_max_s = 0", "--retry-backoff-max-s 0.0 is invalid; use seconds > 0"),
        ("request_timeout_ms = 500", "--request-timeout-ms 500 is invalid; use more than 500"),
    ],
)
def test_config_check_rejects_outage_options(tmp_path, capsys, setting, message):
    from streamad.cli import main

    path = tmp_path / "run.toml"
    path.write_text(
        "[run]\n"
        f"model = '{tmp_path / 'model'}'\n"
        "bootstrap_servers = '127.0.0.1:9092'\n"
        "topic = ['metrics']\n"
        "group_id = 'g'\n"
        f"alerts = '{tmp_path / 'alerts.jsonl'}'\n"
        f"{setting}\n"
    )

    assert main(["config", "check", str(path)]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1


def test_backoff_rejects_invalid_cap():
    from connectors.kafka import RetryBackoff

    with pytest.raises(ValueError, match="max_s=0"):
        RetryBackoff(max_s=0)


@pytest.mark.kafka
def test_sink_resends_after_broker_restart(caplog):
    from connectors.kafka import KafkaAlertSink, RetryBackoff, create_topic
    from connectors.tansu import TansuBroker

    with TansuBroker(binary=require_tansu()) as broker:
        create_topic(broker.bootstrap, "alerts", partitions=1)
        retry = RetryBackoff(max_s=1.0)
        sink = KafkaAlertSink(
            broker.bootstrap, "alerts", request_timeout_ms=2000, delivery_timeout_ms=4005, max_block_ms=2000, retry=retry
        )
        try:
            sink.send([{"series": "a", "alert_id": "a-1", "sequence": 0}])
            sink.flush()
            broker.kill()

            sink.send([{"series": "a", "alert_id": "a-1", "sequence": 1}, {"series": "b", "alert_id": "b-1", "sequence": 0}])
            outcome = {}

            def flush():
                try:
                    outcome["acknowledged"] = sink.flush()
                except Exception as error:  # noqa: BLE001 - reported by the assertion below
                    outcome["error"] = error

            with caplog.at_level(logging.INFO, logger="connectors.kafka"):
                flusher = threading.Thread(target=flush)
                flusher.start()
                wait_for(lambda: _retry_lines(caplog.records), 60, "a retry line of the sink")
                broker.restart()
                create_topic(broker.bootstrap, "alerts", partitions=1)
                flusher.join(timeout=120)
                assert not flusher.is_alive(), "the flush did not end within 120 s of the restart"
        finally:
            retry.stop.set()
            sink.close(timeout=5)

        assert "error" not in outcome, f"flush raised {outcome.get('error')!r}"
        assert len(outcome["acknowledged"]) == 2
        warning = _retry_lines(caplog.records)[0]
        assert "Kafka alert delivery failed, retry 1 in" in warning
        assert "waiting for the broker to acknowledge 2 alerts" in warning
        assert "topic=alerts" in warning
        assert any("the broker is reachable again" in record.getMessage() for record in caplog.records)
        received = [json.loads(value) for value in _read_topic(broker.bootstrap, "alerts")]
        # The restart lost the first event, and the two sent during the outage arrived, at least once.
        assert {(event["alert_id"], event["sequence"]) for event in received} == {("a-1", 1), ("b-1", 0)}


def _retry_lines(records):
    return [
        record.getMessage() for record in records
        if record.levelno == logging.WARNING and "failed, retry" in record.getMessage()
    ]


def _read_topic(bootstrap, topic):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    values = []
    try:
        partitions = [TopicPartition(topic, partition) for partition in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                values.extend(record.value for record in records)
            if all(consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp) for tp in partitions):
                return values
    finally:
        consumer.close()
    pytest.fail(f"topic {topic} was not read to its end within 30 s")


# The daemon


@pytest.fixture(scope="module")
def bundle_dir(machine_model_dir):
    """The session's window-32 model, trained on rows 0 to 3400 (see tests/conftest.py)."""
    return machine_model_dir


def _records(series, rows):
    return [Record(series.series_id, int(series.timestamps[row]), series.values[row]) for row in range(rows.start, rows.stop)]


def _scored_timestamps(path):
    if not path.exists():
        return set()
    timestamps = set()
    for line in path.read_text().splitlines():
        try:
            timestamps.add(json.loads(line)["timestamp"])
        except ValueError:
            continue  # a line still being written
    return timestamps


@pytest.mark.kafka
@pytest.mark.parametrize("extra", [[], ["--checkpoint-topic", "checkpoints"]], ids=["commit-per-batch", "checkpoint-topic"])
def test_daemon_survives_broker_restart(bundle_dir, machine_temperature, tmp_path, extra):
    from connectors.kafka import create_topic, produce_records
    from connectors.tansu import TansuBroker

    log_path = tmp_path / "daemon.log"
    scores_path = tmp_path / "scores.jsonl"
    with TansuBroker(binary=require_tansu()) as broker:
        for topic in ("metrics", "alerts"):
            create_topic(broker.bootstrap, topic, partitions=1)
        produce_records(broker.bootstrap, "metrics", _records(machine_temperature, BEFORE_ROWS))
        arguments = [
            "--model", str(bundle_dir), "--bootstrap-servers", broker.bootstrap, "--topic", "metrics",
            "--group-id", "restart", "--alerts-topic", "alerts", "--alerts", str(tmp_path / "alerts.jsonl"),
            "--scores", str(scores_path), *DAEMON_OPTIONS, *extra,
        ]
        daemon = start_streamad_run(arguments, log_path, mode="w")
        try:

            def alive_and(condition):
                def check():
                    assert daemon.poll() is None, f"daemon exited with {daemon.returncode}:\n{log_path.read_text()[-4000:]}"
                    return condition()

                return check

            wait_for(alive_and(lambda: len(_scored_timestamps(scores_path)) >= KILL_AFTER), 120, f"{KILL_AFTER} scored windows", [log_path])
            broker.kill()
            wait_for(alive_and(lambda: "failed, retry" in log_path.read_text()), 60, "a retry line of the daemon", [log_path])
            assert len(_scored_timestamps(scores_path)) < BEFORE_ROWS.stop - BEFORE_ROWS.start - WINDOW + 1, (
                "the daemon scored every record before the broker was killed"
            )

            broker.restart()
            for topic in ("metrics", "alerts"):
                # The daemon's metadata requests may have made Tansu create the topic already.
                create_topic(broker.bootstrap, topic, partitions=1)
            after = _records(machine_temperature, AFTER_ROWS)
            produce_records(broker.bootstrap, "metrics", after)
            # With --checkpoint-topic, a checkpoint of the lost input topic can reach the new
            # checkpoint topic, so the daemon may seek past the end of the new input topic. The
            # source then resets that partition to the earliest offset.
            # Windows that lie wholly after the restart. Earlier ones span the gap to the records
            # lost with the broker's memory, so the engine skips them.
            expected = {record.timestamp for record in after[WINDOW - 1 :]}
            wait_for(
                alive_and(lambda: expected <= _scored_timestamps(scores_path)), 180,
                "the windows of the records produced after the restart", [log_path],
            )
            if extra:
                # The checkpoint topic was lost with the broker's memory too, and the daemon must
                # create it again and checkpoint the records of the new input topic. A SIGTERM
                # during the retries of that write would end them and fail the daemon.
                wait_for(
                    alive_and(
                        lambda: len(after) - 1 in _checkpointed_offsets(broker.bootstrap, "checkpoints")
                        and not _checkpoint_write_retrying(log_path)
                    ),
                    120, "an acknowledged checkpoint of the records produced after the restart", [log_path],
                )

            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0, log_path.read_text()[-4000:]
        finally:
            kill_daemon(daemon)

    log = log_path.read_text()
    assert log.count("Kafka source started") == 1
    retry_lines = [line for line in log.splitlines() if "failed, retry" in line]
    assert retry_lines
    assert all(" WARNING " in line and "waiting for" in line for line in retry_lines)
    assert any("group=restart" in line or "topic=alerts" in line for line in retry_lines)
    assert "the broker is reachable again" in log or "the broker responded again" in log
    assert "stopped after" in log
    if extra:
        # A write that succeeded after retries found the topic listed, so no read after it may miss the topic.
        checkpoint_lines = [line for line in log.splitlines() if "Kafka checkpoint" in line]
        succeeded = [index for index, line in enumerate(checkpoint_lines) if "write succeeded after" in line]
        not_found = [index for index, line in enumerate(checkpoint_lines) if "topic not found" in line]
        assert not succeeded or not not_found or max(not_found) < min(succeeded), "\n".join(checkpoint_lines)


@pytest.mark.kafka
def test_daemon_stops_on_sigterm_during_outage(bundle_dir, machine_temperature, tmp_path):
    from connectors.kafka import create_topic, produce_records
    from connectors.tansu import TansuBroker

    log_path = tmp_path / "daemon.log"
    scores_path = tmp_path / "scores.jsonl"
    with TansuBroker(binary=require_tansu()) as broker:
        create_topic(broker.bootstrap, "metrics", partitions=1)
        produce_records(broker.bootstrap, "metrics", _records(machine_temperature, BEFORE_ROWS))
        # Alerts go to a file only, so the retry that SIGTERM ends is the offset commit's.
        arguments = [
            "--model", str(bundle_dir), "--bootstrap-servers", broker.bootstrap, "--topic", "metrics",
            "--group-id", "sigterm", "--alerts", str(tmp_path / "alerts.jsonl"), "--scores", str(scores_path),
            *DAEMON_OPTIONS,
        ]
        daemon = start_streamad_run(arguments, log_path, mode="w")
        try:
            wait_for(lambda: len(_scored_timestamps(scores_path)) >= KILL_AFTER, 120, f"{KILL_AFTER} scored windows", [log_path])
            broker.kill()
            wait_for(lambda: "Kafka offset commit failed, retry" in log_path.read_text(), 60, "a commit retry line", [log_path])

            daemon.send_signal(signal.SIGTERM)
            returncode = daemon.wait(timeout=60)
        finally:
            kill_daemon(daemon)

    log = log_path.read_text()
    assert returncode == 0, log[-4000:]
    assert "stop requested, no more retries" in log
    assert "stopped after" in log


def _checkpoint_write_retrying(log_path):
    """Return True when the last log line about a Kafka checkpoint write is a retry."""
    lines = [line for line in log_path.read_text().splitlines() if "Kafka checkpoint write" in line]
    return bool(lines) and "failed, retry" in lines[-1]


def _checkpointed_offsets(bootstrap, checkpoint_topic):
    """Return the set of offsets in the checkpoints of the checkpoint topic, empty while it has none.

    A set rather than the highest offset, because a checkpoint of the records produced before
    the restart (higher offsets) can still reach the recreated topic from the producer's retries.
    """
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from streamad.engine.checkpoint import decode_checkpoint

    # list_topics() first, because a consumer's metadata request could make Tansu create the topic.
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        if checkpoint_topic not in admin.list_topics():
            return set()
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, request_timeout_ms=5000)
    offsets = set()
    try:
        partitions = [TopicPartition(checkpoint_topic, partition) for partition in sorted(consumer.partitions_for_topic(checkpoint_topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + 10
        while partitions and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                offsets.update(decode_checkpoint(record.value, "message").offset for record in records)
            if all(consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp) for tp in partitions):
                break
    finally:
        consumer.close()
    return offsets


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("extra", [[], ["--checkpoint-topic", "checkpoints"]], ids=["source", "checkpoint-topic"])
def test_daemon_exits_when_broker_unreachable_at_start(bundle_dir, tmp_path, extra):
    bootstrap = f"127.0.0.1:{_closed_port()}"
    command = [
        sys.executable, "-m", "streamad", "run",
        "--model", str(bundle_dir), "--bootstrap-servers", bootstrap, "--topic", "metrics", "--group-id", "g",
        "--alerts", str(tmp_path / "alerts.jsonl"), "--request-timeout-ms", "2000", *extra,
    ]

    result = subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert result.returncode == 1, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("streamad run: error:")]
    assert len(error_lines) == 1, result.stderr[-3000:]
    assert f"Connecting to Kafka at {bootstrap}" in error_lines[0]
    assert "check that the broker is running" in error_lines[0]


@pytest.mark.kafka
def test_daemon_restarts_recreated_topic(bundle_dir, machine_temperature, tmp_path):
    # The checkpoint of the first run names an offset past the end of the topic created again.
    from connectors.kafka import create_topic, produce_records
    from connectors.tansu import TansuBroker

    from streamad.engine.checkpoint import CheckpointStore

    first_rows, second_rows = slice(3400, 3700), slice(3700, 3850)
    checkpoint_dir = tmp_path / "checkpoints"
    log_path = tmp_path / "daemon.log"
    scores_path = tmp_path / "scores.jsonl"
    with TansuBroker(binary=require_tansu()) as broker:
        arguments = [
            "--model", str(bundle_dir), "--bootstrap-servers", broker.bootstrap, "--topic", "metrics",
            "--group-id", "recreated", "--alerts", str(tmp_path / "alerts.jsonl"), "--scores", str(scores_path),
            "--checkpoint-dir", str(checkpoint_dir), *DAEMON_OPTIONS,
        ]
        create_topic(broker.bootstrap, "metrics", partitions=1)
        produce_records(broker.bootstrap, "metrics", _records(machine_temperature, first_rows))
        first_windows = {int(machine_temperature.timestamps[row]) for row in range(first_rows.start + WINDOW - 1, first_rows.stop)}
        daemon = start_streamad_run(arguments, log_path, mode="w")
        try:
            wait_for(lambda: first_windows <= _scored_timestamps(scores_path), 120, "the windows of the first run", [log_path])
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0, log_path.read_text()[-4000:]
        finally:
            kill_daemon(daemon)
        store = CheckpointStore(checkpoint_dir)
        assert store.read("metrics", 0).offset == first_rows.stop - first_rows.start - 1

        broker.restart()
        create_topic(broker.bootstrap, "metrics", partitions=1)
        produce_records(broker.bootstrap, "metrics", _records(machine_temperature, second_rows))
        # The restored buffers continue the series, so the windows that span both runs are complete.
        second_windows = {int(machine_temperature.timestamps[row]) for row in range(second_rows.start, second_rows.stop)}
        daemon = start_streamad_run(arguments, tmp_path / "daemon-second.log", mode="w")
        try:
            wait_for(
                lambda: second_windows <= _scored_timestamps(scores_path), 120,
                "the windows of the topic created again", [tmp_path / "daemon-second.log"],
            )
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0, (tmp_path / "daemon-second.log").read_text()[-4000:]
        finally:
            kill_daemon(daemon)
        committed = committed_offsets(broker.bootstrap, "recreated", "metrics", 1)

    second_log = (tmp_path / "daemon-second.log").read_text()
    assert "Kafka partition offset beyond the end of the log" in second_log
    assert f"offset={first_rows.stop - first_rows.start}" in second_log
    assert "checkpoint offsets forgotten after an offset reset: topic=metrics partition=0" in second_log
    assert CheckpointStore(checkpoint_dir).read("metrics", 0).offset == second_rows.stop - second_rows.start - 1
    assert committed == [second_rows.stop - second_rows.start]

"""The `streamad` command line on real data: help, train, replay, evaluate, errors, demo."""

import base64
import copy
import csv
import json
import logging
import os
import subprocess
import sys

import pytest

from shared_data import MACHINE_TEMPERATURE, NAB_WINDOWS, SMAP_MSL, require
from streamad.cli import build_parser, main

COMMANDS = ["train", "replay", "run", "evaluate", "demo", "select", "benchmark"]


def _streamad(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "streamad", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: streamad " + command in capsys.readouterr().out


@pytest.fixture(scope="module")
def nab_model(tmp_path_factory):
    data = require(MACHINE_TEMPERATURE)
    out = tmp_path_factory.mktemp("nab") / "model"
    code = main(["train", "--data", str(data), "--out", str(out), "--train-fraction", "0.15", "--epochs", "20", "--hidden", "64"])
    assert code == 0
    return out


def test_cli_replay_writes_scores_and_alerts(nab_model, tmp_path):
    scores_path = tmp_path / "scores.csv"
    alerts_path = tmp_path / "alerts.jsonl"
    code = main(["replay", "--model", str(nab_model), "--data", str(MACHINE_TEMPERATURE), "--scores", str(scores_path), "--alerts", str(alerts_path)])
    assert code == 0

    with open(scores_path) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["timestamp", "series", "score", "threshold", "anomaly_probability", "is_alert"]
    # 22,695 rows, 12 dropped as out of order, the first 31 complete no window of 32.
    assert len(rows) == 22695 - 12 - 31
    assert rows[0]["timestamp"] == "2013-12-02T23:50:00Z"
    assert all(0.0 <= float(row["anomaly_probability"]) <= 1.0 for row in rows)
    assert any(row["is_alert"] == "1" for row in rows)

    events = [json.loads(line) for line in alerts_path.read_text().splitlines()]
    assert events
    assert {event["status"] for event in events} <= {"firing", "update", "resolved"}
    assert all(event["series"] == "machine_temperature_system_failure" for event in events)


def test_cli_evaluate_prints_metrics(nab_model, tmp_path, capsys):
    metrics_path = tmp_path / "metrics.json"
    code = main([
        "evaluate", "--model", str(nab_model), "--data", str(MACHINE_TEMPERATURE), "--labels", str(require(NAB_WINDOWS)),
        "--score", "likelihood,reconstruction", "--skip-fraction", "0.15", "--json", str(metrics_path),
    ])
    assert code == 0
    output = capsys.readouterr().out
    assert "ROC-AUC" in output
    metrics = json.loads(metrics_path.read_text())["scores"]
    assert set(metrics) == {"likelihood", "reconstruction"}
    assert 0.5 < metrics["likelihood"]["roc_auc"] <= 1.0
    assert 0.0 <= metrics["likelihood"]["event_f1"] <= 1.0


def test_cli_train_and_evaluate_smap_channel(tmp_path, capsys):
    train = require(SMAP_MSL / "train" / "A-1.npy")
    model = tmp_path / "a1"
    assert main(["train", "--data", str(train), "--out", str(model), "--channels", "0", "--epochs", "5", "--hidden", "32"]) == 0
    code = main([
        "evaluate", "--model", str(model), "--data", str(SMAP_MSL / "test" / "A-1.npy"),
        "--labels", str(SMAP_MSL / "labeled_anomalies.csv"), "--score", "likelihood",
    ])
    assert code == 0
    assert "A-1: 85 anomalous points of 8640" in capsys.readouterr().out


def test_cli_missing_model_is_one_clear_line(tmp_path):
    result = _streamad("replay", "--model", str(tmp_path / "none"), "--data", str(tmp_path / "x.csv"), "--scores", "s.csv", "--alerts", "a.jsonl")
    assert result.returncode == 2
    assert "not found; train one with 'streamad train" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_data_file(nab_model, tmp_path):
    result = _streamad("replay", "--model", str(nab_model), "--data", str(tmp_path / "missing.csv"), "--scores", "s.csv", "--alerts", "a.jsonl")
    assert result.returncode == 2
    assert "missing.csv' not found" in result.stderr


def test_cli_unknown_score(nab_model, tmp_path):
    result = _streamad("replay", "--model", str(nab_model), "--data", str(MACHINE_TEMPERATURE), "--scores", str(tmp_path / "s.csv"), "--alerts", str(tmp_path / "a.jsonl"), "--score", "nope")
    assert result.returncode == 2
    assert "--score 'nope' is unknown" in result.stderr


def test_cli_invalid_train_option(tmp_path):
    result = _streamad("train", "--data", str(require(MACHINE_TEMPERATURE)), "--out", str(tmp_path / "m"), "--window", "0")
    assert result.returncode == 2
    assert "--window 0 is invalid" in result.stderr


def test_cli_run_needs_alert_destination(nab_model):
    result = _streamad("run", "--model", str(nab_model), "--bootstrap-servers", "127.0.0.1:9", "--topic", "t", "--group-id", "g")
    assert result.returncode == 2
    assert "no alert destination" in result.stderr


@pytest.mark.kafka
def test_cli_demo_end_to_end(kafka_bootstrap, tmp_path):
    result = _streamad("demo", "--bootstrap-servers", kafka_bootstrap, "--out", str(tmp_path), "--epochs", "100", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "produced 571 records" in result.stdout
    assert "consumed 571 records" in result.stdout
    assert "ALERT firing" in result.stdout
    events = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert any(event["status"] == "firing" for event in events)
    assert (tmp_path / "model" / "config.json").is_file()


def test_cli_replay_matches_unnamed_channels_by_position(tmp_path):
    rows = ["timestamp,flow,temp"] + [f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00,{1 + (i % 7) * 0.1},{20 + (i % 5) * 0.2}" for i in range(400)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    model = tmp_path / "model"
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--out", str(model), "--window", "8", "--epochs", "2", "--hidden", "16"]) == 0
    records = [json.dumps({"series": "pump", "timestamp": 1_700_000_000_000 + 60_000 * i, "values": [1.0 + (i % 7) * 0.1, 20.0]}) for i in range(20)]
    (tmp_path / "live.jsonl").write_text("\n".join(records) + "\n")
    scores = tmp_path / "scores.csv"
    code = main(["replay", "--model", str(model), "--data", str(tmp_path / "live.jsonl"), "--scores", str(scores), "--alerts", str(tmp_path / "a.jsonl")])
    assert code == 0
    assert len(scores.read_text().splitlines()) == 1 + 20 - 8 + 1


def test_cli_replay_rejects_same_output_file(nab_model, tmp_path):
    same = tmp_path / "out.txt"
    result = _streamad("replay", "--model", str(nab_model), "--data", str(MACHINE_TEMPERATURE), "--scores", str(same), "--alerts", str(same))
    assert result.returncode == 2
    assert "are the same file" in result.stderr


@pytest.fixture(scope="module")
def two_channel_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("two-channel")
    rows = ["timestamp,flow,temp"] + [f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00,{1 + (i % 7) * 0.1},{20 + (i % 5) * 0.2}" for i in range(400)]
    (directory / "train.csv").write_text("\n".join(rows) + "\n")
    model = directory / "model"
    assert main(["train", "--data", str(directory / "train.csv"), "--out", str(model), "--window", "8", "--epochs", "2", "--hidden", "16"]) == 0
    return model


def _live_lines(series, count, start_ms=1_700_000_000_000, step_ms=60_000):
    return [
        json.dumps({"series": series, "timestamp": start_ms + step_ms * i, "values": [1.0 + (i % 7) * 0.1, 20.0]})
        for i in range(count)
    ]


# (line, reason) of invalid lines inserted into a replayed JSON-lines file.
INVALID_LINES = [
    ('{"series": "pump", "timestamp": ', "invalid_json"),
    ('[1, 2]', "not_object"),
    ('{"series": "pump", "values": [1.0, 20.0]}', "missing_field"),
    ('{"series": "pump", "timestamp": "yesterday", "values": [1.0, 20.0]}', "bad_timestamp"),
    ('{"series": "pump", "timestamp": 1700000000000, "values": [1.0, "x"]}', "bad_type"),
    ('{"series": "pump", "timestamp": 1700000000000, "values": [1.0, 2.0, 3.0]}', "wrong_channel_count"),
]


def _replay_file_with_invalid_lines(path):
    """Write 30 good records with the invalid lines spread among them; return {line number: (line, reason)}."""
    lines = _live_lines("pump", 30)
    invalid = {}
    for index, (line, reason) in enumerate(INVALID_LINES):
        position = 3 + 4 * index
        lines.insert(position, line)
        invalid[position + 1] = (line, reason)
    path.write_text("\n".join(lines) + "\n")
    return invalid


def test_cli_replay_writes_to_dev_null(two_channel_model, tmp_path):
    data = tmp_path / "live.jsonl"
    _replay_file_with_invalid_lines(data)
    argv = ["replay", "--model", str(two_channel_model), "--data", str(data), "--scores", os.devnull, "--alerts", os.devnull, "--dead-letter", os.devnull]

    assert main(argv) == 0


def test_json_lines_sink_appends_to_dev_null():
    from connectors.files import JsonLinesSink

    sink = JsonLinesSink(os.devnull)
    sink.send([{"series": "pump", "value": 1.0}])
    sink.flush()
    sink.close()


def test_cli_replay_dead_letter_file(two_channel_model, tmp_path, capsys):
    data = tmp_path / "live.jsonl"
    invalid = _replay_file_with_invalid_lines(data)
    scores = tmp_path / "scores.csv"
    dead_letters = tmp_path / "dead.jsonl"

    code = main(["replay", "--model", str(two_channel_model), "--data", str(data), "--scores", str(scores), "--alerts", str(tmp_path / "a.jsonl"), "--dead-letter", str(dead_letters)])

    assert code == 0
    assert len(scores.read_text().splitlines()) == 1 + 30 - 8 + 1
    entries = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert [entry["offset"] for entry in entries] == sorted(invalid)
    for entry in entries:
        line, reason = invalid[entry["offset"]]
        assert entry["reason"] == reason, line
        assert entry["topic"] == str(data)
        assert entry["partition"] == 0
        assert base64.b64decode(entry["raw_base64"]).decode() == line
        assert f"line {entry['offset']}" in entry["message"]
    summary = capsys.readouterr().out
    assert f"{len(INVALID_LINES)} invalid lines skipped (written to {dead_letters})" in summary


def test_cli_replay_logs_invalid_lines_without_dead_letter(two_channel_model, tmp_path, capsys, caplog):
    data = tmp_path / "live.jsonl"
    invalid = _replay_file_with_invalid_lines(data)
    scores = tmp_path / "scores.csv"

    with caplog.at_level(logging.WARNING, logger="streamad.cli.commands"):
        code = main(["replay", "--model", str(two_channel_model), "--data", str(data), "--scores", str(scores), "--alerts", str(tmp_path / "a.jsonl")])

    assert code == 0
    assert len(scores.read_text().splitlines()) == 1 + 30 - 8 + 1
    logged = [record.getMessage() for record in caplog.records if "skipping invalid line" in record.getMessage()]
    assert len(logged) == len(invalid)
    for message, line_number in zip(logged, sorted(invalid)):
        assert f"line={line_number} " in message
        assert f"reason={invalid[line_number][1]}" in message
    assert f"{len(INVALID_LINES)} invalid lines skipped (logged only" in capsys.readouterr().out


def test_cli_replay_warns_epoch_seconds(two_channel_model, tmp_path, caplog):
    data = tmp_path / "seconds.jsonl"
    data.write_text("\n".join(_live_lines("pump-in-seconds", 20, start_ms=1_700_000_000, step_ms=60)) + "\n")

    with caplog.at_level(logging.WARNING, logger="streamad.records"):
        code = main(["replay", "--model", str(two_channel_model), "--data", str(data), "--scores", str(tmp_path / "s.csv"), "--alerts", str(tmp_path / "a.jsonl")])

    assert code == 0
    warnings = [record.getMessage() for record in caplog.records if "epoch seconds" in record.getMessage()]
    assert len(warnings) == 1
    assert "pump-in-seconds" in warnings[0]
    assert "1700000000" in warnings[0]
    assert "send milliseconds" in warnings[0]


def test_cli_run_rejects_invalid_max_in_flight(tmp_path, capsys):
    code = main(["run", "--model", str(tmp_path / "none"), "--bootstrap-servers", "127.0.0.1:9", "--topic", "t", "--group-id", "g", "--stdout", "--max-in-flight", "0"])
    assert code == 2
    assert "--max-in-flight 0 is invalid" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--max-fill", "-1"], "streamad train: error: --max-fill -1 is invalid"),
        (["train", "--learning-rate", "0"], "streamad train: error: --learning-rate 0.0 is invalid"),
        (["train", "--validation-fraction", "2"], "streamad train: error: --validation-fraction 2.0 is invalid"),
        (["train", "--train-fraction", "0"], "streamad train: error: --train-fraction 0.0 is invalid"),
        (["train", "--epochs", "0"], "streamad train: error: --epochs 0 is invalid"),
        (["replay", "--resolve-after", "0"], "streamad replay: error: --resolve-after 0 is invalid"),
        (["replay", "--warmup", "-1"], "streamad replay: error: --warmup -1 is invalid"),
        (["replay", "--level", "2"], "streamad replay: error: threshold --level 2.0 is invalid"),
        (["replay", "--speed", "0"], "streamad replay: error: --speed 0.0 is invalid"),
    ],
)
def test_cli_errors_name_options(two_channel_model, tmp_path, capsys, argv, expected):
    data = tmp_path / "live.jsonl"
    data.write_text("\n".join(_live_lines("pump", 40)) + "\n")
    command, *options = argv
    if command == "train":
        full = ["train", "--data", str(data), "--out", str(tmp_path / "model"), *options]
    else:
        full = ["replay", "--model", str(two_channel_model), "--data", str(data), "--scores", str(tmp_path / "s.csv"), "--alerts", str(tmp_path / "a.jsonl"), *options]

    assert main(full) == 2
    error = capsys.readouterr().err
    assert expected in error
    assert "_" not in error.split("error:")[1].split(";")[0]


def test_cli_run_errors_name_options(two_channel_model, capsys):
    argv = ["run", "--model", str(two_channel_model), "--bootstrap-servers", "127.0.0.1:9", "--topic", "t", "--group-id", "g", "--stdout"]
    assert main([*argv, "--heartbeat-interval-ms", "20000"]) == 2
    assert "--heartbeat-interval-ms 20000 is more than a third of --session-timeout-ms 10000" in capsys.readouterr().err


def test_name_options_rewrites_only_options():
    from streamad.cli import build_parser
    from streamad.cli.messages import name_options

    parsers = build_parser().command_parsers
    train = parsers["train"]
    assert name_options("max_fill=-1 is invalid", train) == "--max-fill -1 is invalid"
    assert name_options("(max_fill=3); raise max_fill or clean the data", train) == "(--max-fill 3); raise --max-fill or clean the data"
    assert name_options("too few for window=200; use a smaller window", train) == "too few for --window 200; use a smaller window"
    assert name_options("config.max_fill=3 and self.max_fill", train) == "config.max_fill=3 and self.max_fill"
    assert name_options("update_every=0 is invalid", train) == "update_every=0 is invalid"
    assert name_options("resolve_after=0 (--resolve-after) is invalid", parsers["replay"]) == "--resolve-after 0 is invalid"
    assert name_options("window=200 is too long", parsers["select"]) == "window=200 is too long"
    assert name_options("max_fill=-1 is invalid", None) == "max_fill=-1 is invalid"
    assert name_options("pass channels=['a', 'b'] to load", train) == "pass --channels a,b to load"


def test_stop_handler_logs_signal_once(caplog):
    import signal
    import threading

    from streamad.cli.commands import _install_stop_handlers

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    stop = threading.Event()
    try:
        _install_stop_handlers(stop)
        handle = signal.getsignal(signal.SIGTERM)
        with caplog.at_level(logging.INFO, logger="streamad.cli.commands"):
            # coreutils timeout delivers SIGTERM twice: to the child, then to its process group.
            handle(signal.SIGTERM, None)
            handle(signal.SIGTERM, None)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    assert stop.is_set()
    received = [record.getMessage() for record in caplog.records if record.getMessage().startswith("received")]
    assert received == ["received SIGTERM; finishing the batch, then committing and stopping"]


def test_annotation_error_lists_placeholders(two_channel_model, tmp_path, capsys):
    data = tmp_path / "live.jsonl"
    data.write_text("\n".join(_live_lines("pump", 40)) + "\n")
    argv = ["replay", "--model", str(two_channel_model), "--data", str(data), "--scores", str(tmp_path / "s.csv"), "--alerts", str(tmp_path / "a.jsonl")]

    assert main([*argv, "--annotation", "x={nope}"]) == 2
    error = capsys.readouterr().err
    assert "{nope}" in error
    assert "{top_channels}" in error
    assert "{--" not in error


def test_cli_replay_skips_values_out_of_range(two_channel_model, tmp_path, capsys, caplog):
    lines = _live_lines("pump", 30)
    huge = {10: 1e40, 20: -1e308}
    for row, value in huge.items():
        record = json.loads(lines[row])
        record["values"][0] = value
        lines[row] = json.dumps(record)
    data = tmp_path / "huge.jsonl"
    data.write_text("\n".join(lines) + "\n")
    scores = tmp_path / "scores.csv"
    dead_letters = tmp_path / "dead.jsonl"

    with caplog.at_level(logging.WARNING):
        code = main(["replay", "--model", str(two_channel_model), "--data", str(data), "--scores", str(scores), "--alerts", str(tmp_path / "a.jsonl"), "--dead-letter", str(dead_letters)])

    assert code == 0
    assert len(scores.read_text().splitlines()) == 1 + 30 - len(huge) - 8 + 1
    entries = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert [entry["offset"] for entry in entries] == sorted(huge)
    for entry in entries:
        assert entry["reason"] == "value_out_of_range"
        assert entry["topic"] == "pump"
        assert repr(huge[entry["offset"]]) in entry["message"]
        assert json.loads(base64.b64decode(entry["raw_base64"]))["values"][0] == huge[entry["offset"]]
    assert "rejected 2 records: value_out_of_range" in capsys.readouterr().out
    assert sum("reason=value_out_of_range" in record.getMessage() for record in caplog.records) == 2


def test_cli_model_folder_read_as_versions(tmp_path, capsys):
    folder = tmp_path / "work"
    (folder / "out").mkdir(parents=True)
    (folder / "notes.txt").write_text("not a model\n")
    data = tmp_path / "live.jsonl"
    data.write_text("\n".join(_live_lines("pump", 5)) + "\n")

    code = main(["replay", "--model", str(folder), "--data", str(data), "--scores", str(tmp_path / "s.csv"), "--alerts", str(tmp_path / "a.jsonl")])

    assert code != 0
    error = capsys.readouterr().err
    assert f"{str(folder)!r} has no bundle files, so it was read as a directory of model versions" in error
    assert "current version 'out' (chosen as the subdirectory saved last)" in error
    assert "model.pt is missing" in error


@pytest.fixture(scope="module")
def machine_model(small_machine_bundle, tmp_path_factory):
    """The session's small machine-temperature model, saved for ``streamad replay``."""
    from streamad.bundle import save_bundle

    directory = tmp_path_factory.mktemp("machine-model")
    save_bundle(copy.deepcopy(small_machine_bundle), directory)
    return directory


def _machine_rows(first=4000, count=300):
    """Return (timestamp text, value text) of rows of NAB's machine-temperature file, after its training span."""
    lines = require(MACHINE_TEMPERATURE).read_text().splitlines()
    return [tuple(line.split(",")) for line in lines[1 + first : 1 + first + count]]


def _late_rows(rows):
    """Return the rows with a repeated and an earlier timestamp inserted, and their (index, reason) in the result."""
    late = list(rows)
    late.insert(101, (rows[100][0], "150.0"))
    late.insert(202, (rows[150][0], "0.0"))
    return late, [(101, "duplicate_timestamp"), (202, "timestamp_not_increasing")]


def _row_texts(rows, data_format):
    """Return the line of each row in a CSV or a JSON-lines file."""
    if data_format == "csv":
        return [f"{timestamp},{value}" for timestamp, value in rows]
    return [json.dumps({"timestamp": timestamp.replace(" ", "T") + "Z", "value": float(value)}) for timestamp, value in rows]


def _write_rows(path, rows, data_format):
    """Write rows as CSV or JSON lines. Return the text of each row and the line number of the first row."""
    texts = _row_texts(rows, data_format)
    header = ["timestamp,value"] if data_format == "csv" else []
    path.write_text("\n".join(header + texts) + "\n")
    return texts, 1 + len(header)


def _replay(model, data, out, dead_letters=None):
    out.mkdir()
    argv = ["replay", "--model", str(model), "--data", str(data), "--scores", str(out / "scores.csv"), "--alerts", str(out / "alerts.jsonl")]
    if dead_letters is not None:
        argv += ["--dead-letter", str(dead_letters)]
    assert main(argv) == 0
    return (out / "scores.csv").read_text(), (out / "alerts.jsonl").read_text()


@pytest.mark.parametrize("data_format", ["csv", "jsonl"])
def test_cli_replay_dead_letters_late_rows(machine_model, tmp_path, capsys, data_format):
    rows = _machine_rows()
    late, bad = _late_rows(rows)
    # Both files have the stem "machine", so that the series ids in the scores are equal.
    (tmp_path / "ordered").mkdir()
    (tmp_path / "late").mkdir()
    ordered_path = tmp_path / "ordered" / f"machine.{data_format}"
    late_path = tmp_path / "late" / f"machine.{data_format}"
    _write_rows(ordered_path, rows, data_format)
    texts, first_line = _write_rows(late_path, late, data_format)
    dead_letters = tmp_path / "dead.jsonl"

    ordered_scores, ordered_alerts = _replay(machine_model, ordered_path, tmp_path / "ordered-out")
    capsys.readouterr()
    late_scores, late_alerts = _replay(machine_model, late_path, tmp_path / "late-out", dead_letters)

    assert len(ordered_scores.splitlines()) == 1 + len(rows) - 31
    assert late_scores == ordered_scores
    assert late_alerts == ordered_alerts
    entries = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert [entry["offset"] for entry in entries] == [index + first_line for index, _ in bad]
    for entry, (index, reason) in zip(entries, bad):
        assert entry["reason"] == reason
        assert entry["topic"] == str(late_path)
        assert entry["partition"] == 0
        assert base64.b64decode(entry["raw_base64"]).decode() == texts[index]
        assert f"line {entry['offset']}: series 'machine'" in entry["message"]
    summary = capsys.readouterr().out
    assert "0 invalid lines skipped" in summary
    assert "rejected 1 records: duplicate_timestamp" in summary
    assert "rejected 1 records: timestamp_not_increasing" in summary


def test_cli_replay_dead_letters_follow_file_order(machine_model, tmp_path, capsys):
    texts = _row_texts(_machine_rows(count=60), "jsonl")
    lines = texts[:10] + ["{not json"] + texts[10:20] + [texts[5]] + texts[20:]
    data = tmp_path / "machine.jsonl"
    data.write_text("\n".join(lines) + "\n")
    dead_letters = tmp_path / "dead.jsonl"

    _replay(machine_model, data, tmp_path / "out", dead_letters)

    entries = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert [(entry["offset"], entry["reason"]) for entry in entries] == [(11, "invalid_json"), (22, "timestamp_not_increasing")]
    assert "1 invalid lines skipped" in capsys.readouterr().out


def test_cli_replay_dead_letters_nab_late_rows(machine_model, tmp_path, capsys):
    lines = require(MACHINE_TEMPERATURE).read_text().splitlines()
    dead_letters = tmp_path / "dead.jsonl"

    _replay(machine_model, MACHINE_TEMPERATURE, tmp_path / "out", dead_letters)

    # The file repeats 02:00 to 02:55 on 2014-01-07 after 02:55, on lines 10151 to 10162.
    entries = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert [entry["offset"] for entry in entries] == list(range(10151, 10163))
    assert [entry["reason"] for entry in entries] == ["timestamp_not_increasing"] * 11 + ["duplicate_timestamp"]
    assert [base64.b64decode(entry["raw_base64"]).decode() for entry in entries] == lines[10150:10162]
    assert {entry["topic"] for entry in entries} == {str(MACHINE_TEMPERATURE)}
    assert "timestamp 2014-01-07T02:55:00Z is not after the latest earlier timestamp 2014-01-07T02:55:00Z" in entries[-1]["message"]
    summary = capsys.readouterr().out
    assert "rejected 1 records: duplicate_timestamp" in summary
    assert "rejected 11 records: timestamp_not_increasing" in summary


# (CSV cell, JSON token, reason) of values that replay sends to the dead letters, as the daemon does.
BAD_VALUES = [
    ("inf", "Infinity", "non_finite"),
    ("-inf", "-Infinity", "non_finite"),
    ("1e400", "1e400", "non_finite"),
    ("NaN", "NaN", "non_finite"),
    ("abc", '"abc"', "bad_type"),
]


def _insert_bad_values(rows, data_format):
    """Return the row texts with a row of each bad value inserted, 150 s after a good row, and {index: reason}."""
    import datetime as dt

    texts = _row_texts(rows, data_format)
    bad = {}
    for number, (cell, token, reason) in enumerate(BAD_VALUES):
        index = 40 * (number + 1) + number
        moment = dt.datetime.strptime(rows[index - number - 1][0], "%Y-%m-%d %H:%M:%S") + dt.timedelta(seconds=150)
        if data_format == "csv":
            text = f"{moment:%Y-%m-%d %H:%M:%S},{cell}"
        else:
            text = f'{{"timestamp": "{moment:%Y-%m-%dT%H:%M:%S}Z", "value": {token}}}'
        texts.insert(index, text)
        bad[index] = reason
    return texts, bad


@pytest.mark.parametrize("data_format", ["csv", "jsonl"])
def test_cli_replay_dead_letters_bad_values(machine_model, tmp_path, capsys, data_format):
    rows = _machine_rows()
    texts, bad = _insert_bad_values(rows, data_format)
    (tmp_path / "clean").mkdir()
    (tmp_path / "bad").mkdir()
    clean_path = tmp_path / "clean" / f"machine.{data_format}"
    bad_path = tmp_path / "bad" / f"machine.{data_format}"
    _write_rows(clean_path, rows, data_format)
    header = ["timestamp,value"] if data_format == "csv" else []
    bad_path.write_text("\n".join(header + texts) + "\n")
    first_line = 1 + len(header)
    dead_letters = tmp_path / "dead.jsonl"

    clean_scores, clean_alerts = _replay(machine_model, clean_path, tmp_path / "clean-out")
    capsys.readouterr()
    bad_scores, bad_alerts = _replay(machine_model, bad_path, tmp_path / "bad-out", dead_letters)

    assert len(clean_scores.splitlines()) == 1 + len(rows) - 31
    assert bad_scores == clean_scores
    assert bad_alerts == clean_alerts
    entries = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert [entry["offset"] for entry in entries] == [index + first_line for index in sorted(bad)]
    for entry, index in zip(entries, sorted(bad)):
        assert entry["reason"] == bad[index], texts[index]
        assert entry["topic"] == str(bad_path)
        assert entry["partition"] == 0
        assert base64.b64decode(entry["raw_base64"]).decode() == texts[index]
        assert f"line {entry['offset']}" in entry["message"]
    summary = capsys.readouterr().out
    assert f"{len(BAD_VALUES)} invalid lines skipped (written to {dead_letters})" in summary


def test_cli_replay_dead_letters_bad_csv_timestamps(machine_model, tmp_path):
    rows = _machine_rows()
    texts = _row_texts(rows, "csv")
    bad = {60: ("garbage,55.0", "bad_timestamp"), 121: (",55.0", "missing_field")}
    for index, (text, _) in sorted(bad.items()):
        texts.insert(index, text)
    (tmp_path / "clean").mkdir()
    clean_path = tmp_path / "clean" / "machine.csv"
    bad_path = tmp_path / "machine.csv"
    _write_rows(clean_path, rows, "csv")
    bad_path.write_text("\n".join(["timestamp,value"] + texts) + "\n")
    dead_letters = tmp_path / "dead.jsonl"

    clean_scores, _ = _replay(machine_model, clean_path, tmp_path / "clean-out")
    bad_scores, _ = _replay(machine_model, bad_path, tmp_path / "bad-out", dead_letters)

    assert bad_scores == clean_scores
    entries = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert [entry["offset"] for entry in entries] == [index + 2 for index in sorted(bad)]
    assert [entry["reason"] for entry in entries] == [reason for _, reason in (bad[index] for index in sorted(bad))]
    assert [base64.b64decode(entry["raw_base64"]).decode() for entry in entries] == [text for text, _ in (bad[i] for i in sorted(bad))]


def test_cli_train_bad_cell_names_line(tmp_path, capsys):
    lines = ["timestamp,value"] + [f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00,{i % 7}" for i in range(100)]
    lines[50] = "2024-01-01T00:49:00,abc"
    data = tmp_path / "bad.csv"
    data.write_text("\n".join(lines) + "\n")

    assert main(["train", "--data", str(data), "--out", str(tmp_path / "model")]) == 2

    error = capsys.readouterr().err
    assert "bad.csv: line 51, column 'value' contains 'abc', which is not a number" in error
    assert "channels" not in error


def test_cli_train_text_column_names_channels_option(tmp_path, capsys):
    lines = ["timestamp,value,host"] + [f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00,{i % 7},web1" for i in range(100)]
    data = tmp_path / "hosts.csv"
    data.write_text("\n".join(lines) + "\n")

    assert main(["train", "--data", str(data), "--out", str(tmp_path / "model")]) == 2

    error = capsys.readouterr().err
    assert "column 'host' contains no numbers (line 2 contains 'web1')" in error
    assert "pass --channels value to load only the numeric columns" in error

"""End to end on a labelled NAB file: `streamad train` and `streamad replay` with time-based incident periods."""

import csv
import json
from datetime import datetime, timezone

import pytest

from shared_data import NAB_DATA, NAB_WINDOWS, require
from streamad.alerts.payloads import alertmanager_webhook_payload
from streamad.cli import main

NAB_FILE = "artificialWithAnomaly/art_daily_jumpsup.csv"
RESOLVE_AFTER_S = 3600
UPDATE_INTERVAL_S = 1800


def _epoch_ms(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _incidents_from_points(rows, resolve_after_s):
    """Return (start, end, resolved) of each incident, rebuilt from the is_alert column alone."""
    incidents = []
    start = last_alert = None
    for row in rows:
        timestamp = _epoch_ms(row["timestamp"])
        if row["is_alert"] == "1":
            if start is None:
                start = timestamp
            last_alert = timestamp
        elif start is not None and timestamp - last_alert >= resolve_after_s * 1000:
            incidents.append((start, last_alert, True))
            start = last_alert = None
    if start is not None:
        incidents.append((start, last_alert, False))
    return incidents


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    data = require(NAB_DATA / NAB_FILE)
    out = tmp_path_factory.mktemp("nab")
    model = out / "model"
    assert main([
        "train", "--data", str(data), "--out", str(model), "--train-fraction", "0.15",
        "--window", "32", "--latent", "2", "--hidden", "32", "--epochs", "30", "--seed", "0",
    ]) == 0
    scores, alerts = out / "scores.csv", out / "alerts.jsonl"
    assert main([
        "replay", "--model", str(model), "--data", str(data), "--scores", str(scores), "--alerts", str(alerts),
        "--resolve-after-s", str(RESOLVE_AFTER_S), "--update-interval-s", str(UPDATE_INTERVAL_S),
        "--label", "team=nab", "--annotation", "runbook_url=https://runbooks.example/{series}",
    ]) == 0
    with open(scores, newline="") as handle:
        rows = list(csv.DictReader(handle))
    events = [json.loads(line) for line in alerts.read_text().splitlines()]
    return rows, events


def test_events_match_alert_runs(replayed):
    rows, events = replayed
    expected = _incidents_from_points(rows, RESOLVE_AFTER_S)
    assert expected

    firing = [event for event in events if event["status"] == "firing"]
    resolved = {event["alert_id"]: event for event in events if event["status"] == "resolved"}
    found = [
        (
            _epoch_ms(event["start"]),
            _epoch_ms(resolved[event["alert_id"]]["end"]) if event["alert_id"] in resolved else None,
            event["alert_id"] in resolved,
        )
        for event in firing
    ]
    assert [(start, resolved_flag) for start, _, resolved_flag in found] == [(start, flag) for start, _, flag in expected]
    for (start, end, flag), (expected_start, expected_end, _) in zip(found, expected):
        if flag:
            assert end == expected_end
    assert any(flag for _, _, flag in found)


def test_event_lifecycle_and_content(replayed):
    _, events = replayed
    by_incident = {}
    for event in events:
        by_incident.setdefault(event["alert_id"], []).append(event)
    for incident in by_incident.values():
        statuses = [event["status"] for event in incident]
        assert statuses[0] == "firing"
        assert set(statuses[1:-1]) <= {"update"}
        assert [event["sequence"] for event in incident] == list(range(1, len(incident) + 1))
        updates = [event for event in incident if event["status"] == "update"]
        times = [_epoch_ms(event["timestamp"]) for event in incident if event["status"] != "resolved"]
        assert all(later - earlier >= UPDATE_INTERVAL_S * 1000 for earlier, later in zip(times, times[1:]))
        peaks = [event["peak_score"] for event in incident]
        assert peaks == sorted(peaks)
        for event in updates:
            assert event["end"] is None
        if statuses[-1] == "resolved":
            last = incident[-1]
            assert _epoch_ms(last["timestamp"]) - _epoch_ms(last["end"]) >= RESOLVE_AFTER_S * 1000
            assert last["labels"] == incident[-2]["labels"]
    for event in events:
        for name in (
            "alert_id", "sequence", "status", "series", "start", "end", "peak_score", "threshold",
            "anomaly_probability", "score_name", "model_version", "channels", "severity", "labels", "annotations",
        ):
            assert name in event, name
        assert event["labels"]["team"] == "nab"
        assert event["labels"]["severity"] == event["severity"]
        assert event["annotations"]["runbook_url"] == "https://runbooks.example/art_daily_jumpsup"
        if event["status"] != "resolved":
            assert event["channels"][0]["channel"] == "value"
            assert sum(entry["nats"] for entry in event["channels"]) + event["log_normalizer"] == pytest.approx(event["score"], abs=1e-2)


def test_incident_inside_labelled_window(replayed):
    _, events = replayed
    windows = json.loads(require(NAB_WINDOWS).read_text())[NAB_FILE]
    spans = [
        tuple(int(datetime.fromisoformat(bound).replace(tzinfo=timezone.utc).timestamp() * 1000) for bound in window)
        for window in windows
    ]
    starts = [_epoch_ms(event["start"]) for event in events if event["status"] == "firing"]
    assert any(low <= start <= high for start in starts for low, high in spans)


def test_webhook_body_of_replayed_events(replayed):
    _, events = replayed
    body = alertmanager_webhook_payload(events, receiver="ops", group_labels={"alertname": "StreamADAnomaly"})
    resolved_ids = {event["alert_id"] for event in events if event["status"] == "resolved"}
    assert len(body["alerts"]) == len({event["alert_id"] for event in events})
    assert sum(alert["status"] == "resolved" for alert in body["alerts"]) == len(resolved_ids)
    assert body["commonLabels"]["team"] == "nab"

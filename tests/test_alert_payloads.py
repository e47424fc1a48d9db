"""Severity, labels, annotations and the Alertmanager payload formats of incident events."""

import math
from datetime import datetime, timezone

import pytest

from streamad.alerts.payloads import (
    ZERO_TIME,
    alertmanager_api_alerts,
    alertmanager_webhook_payload,
    event_time,
    generic_payload,
    label_set_fingerprint,
)
from streamad.alerts.severity import AlertContent, SeverityLevels, parse_key_values

RFC3339 = "%Y-%m-%dT%H:%M:%S%z"
NOW = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)


def _event(status="firing", sequence=1, series="pump-7", probability=0.9995, end=None, **overrides):
    event = {
        "alert_id": f"id-{series}",
        "sequence": sequence,
        "status": status,
        "series": series,
        "start": "2024-05-01T12:00:00Z",
        "end": end,
        "timestamp": "2024-05-01T12:05:00Z",
        "score": 150.0,
        "peak_score": 180.5,
        "threshold": 60.25,
        "anomaly_probability": probability,
        "peak_anomaly_probability": probability,
        "score_name": "likelihood",
        "model_version": "5bd0c2a1f9e4",
        "channels": [
            {"channel": "flow", "kind": "channel", "nats": 90.0, "share": 0.75},
            {"channel": "latent", "kind": "latent", "nats": 30.0, "share": 0.25},
        ],
        "log_normalizer": 30.5,
    }
    event.update(overrides)
    return event


def _decorated(content=None, **fields):
    return (content or AlertContent()).decorate(_event(**fields))


# Severity, labels and annotations


@pytest.mark.parametrize(
    "probability, severity",
    [(0.5, "info"), (0.989, "info"), (0.99, "warning"), (0.9989, "warning"), (0.999, "critical"), (1.0, "critical"), (math.nan, "info")],
)
def test_severity_cut_offs(probability, severity):
    assert SeverityLevels().of(probability) == severity


def test_severity_levels_configurable():
    levels = SeverityLevels(warning=0.9, critical=0.95)
    assert levels.of(0.92) == "warning"
    assert levels.of(0.96) == "critical"


def test_severity_levels_reject_inverted():
    with pytest.raises(ValueError, match="--severity-warning 0.999 is above --severity-critical 0.99"):
        SeverityLevels(warning=0.999, critical=0.99)
    with pytest.raises(ValueError, match="--severity-critical 1.5"):
        SeverityLevels(critical=1.5)


def test_severity_uses_peak_probability():
    event = _decorated(probability=0.5, peak_anomaly_probability=0.9999)
    assert event["severity"] == "critical"
    assert event["labels"]["severity"] == "critical"


def test_labels_parse_and_validate():
    assert parse_key_values(["team=pumps", "env=prod", "team=valves"], "--label") == {"team": "valves", "env": "prod"}
    for bad, message in [
        ("team", "use --label key=value"),
        ("1team=x", "invalid name '1team'"),
        ("te-am=x", "invalid name 'te-am'"),
        ("__name__=x", "reserved by Prometheus"),
        ("team=", "empty value"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_key_values([bad], "--label")


def test_labels_reject_builtin_except_alertname():
    with pytest.raises(ValueError, match="--label severity=... would replace"):
        AlertContent(labels={"severity": "page"})
    content = AlertContent(labels={"alertname": "PumpAnomaly", "team": "pumps"})
    labels = _decorated(content)["labels"]
    assert labels == {
        "alertname": "PumpAnomaly",
        "alert_id": "id-pump-7",
        "series": "pump-7",
        "severity": "critical",
        "model_version": "5bd0c2a1f9e4",
        "score_name": "likelihood",
        "team": "pumps",
    }


def test_annotation_templates_render_event_fields():
    content = AlertContent(annotations={"runbook_url": "https://runbooks/{series}?sev={severity}", "summary": "{series}: {top_channels}"})
    annotations = _decorated(content)["annotations"]
    assert annotations["runbook_url"] == "https://runbooks/pump-7?sev=critical"
    assert annotations["summary"] == "pump-7: flow 75.0% (90.0 nats), latent 25.0% (30.0 nats)"
    assert annotations["channels"] == "flow 75.0% (90.0 nats), latent 25.0% (30.0 nats)"


def test_annotation_templates_reject_unknown_placeholder():
    with pytest.raises(ValueError, match="unknown placeholder {host}"):
        AlertContent(annotations={"link": "https://x/{host}"})
    with pytest.raises(ValueError, match="not a valid template"):
        AlertContent(annotations={"link": "https://x/{series"})


def test_generic_payload_is_event():
    event = _decorated()
    assert generic_payload(event) == event
    assert generic_payload(event) is not event


# Alertmanager webhook body (version 4)

WEBHOOK_FIELDS = {
    "version": str,
    "groupKey": str,
    "truncatedAlerts": int,
    "status": str,
    "receiver": str,
    "groupLabels": dict,
    "commonLabels": dict,
    "commonAnnotations": dict,
    "externalURL": str,
    "alerts": list,
}
ALERT_FIELDS = {
    "status": str,
    "labels": dict,
    "annotations": dict,
    "startsAt": str,
    "endsAt": str,
    "generatorURL": str,
    "fingerprint": str,
}


def _check_webhook_shape(body):
    assert set(body) == set(WEBHOOK_FIELDS)
    for name, kind in WEBHOOK_FIELDS.items():
        assert isinstance(body[name], kind), name
    for alert in body["alerts"]:
        assert set(alert) == set(ALERT_FIELDS)
        for name, kind in ALERT_FIELDS.items():
            assert isinstance(alert[name], kind), name
        for mapping in (alert["labels"], alert["annotations"]):
            assert all(isinstance(key, str) and isinstance(value, str) for key, value in mapping.items())
        assert datetime.strptime(alert["startsAt"], RFC3339).tzinfo is not None
        assert datetime.strptime(alert["endsAt"], RFC3339).tzinfo is not None
        assert len(alert["fingerprint"]) == 16
        int(alert["fingerprint"], 16)


def test_webhook_payload_firing_fields():
    events = [_decorated(), _decorated(series="pump-8", probability=0.995)]
    body = alertmanager_webhook_payload(
        events, receiver="ops", group_labels={"alertname": "StreamADAnomaly"}, external_url="http://streamad:8080", now=NOW
    )
    _check_webhook_shape(body)
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "ops"
    assert body["groupKey"] == '{}:{alertname="StreamADAnomaly"}'
    assert body["groupLabels"] == {"alertname": "StreamADAnomaly"}
    assert body["externalURL"] == "http://streamad:8080"
    assert body["truncatedAlerts"] == 0
    assert body["commonLabels"] == {"alertname": "StreamADAnomaly", "model_version": "5bd0c2a1f9e4", "score_name": "likelihood"}
    assert "series" not in body["commonLabels"]
    assert "alert_id" not in body["commonLabels"]
    assert body["commonAnnotations"]["channels"] == "flow 75.0% (90.0 nats), latent 25.0% (30.0 nats)"
    first, second = body["alerts"]
    assert first["status"] == "firing"
    assert first["startsAt"] == "2024-05-01T12:00:00Z"
    assert first["endsAt"] == ZERO_TIME
    assert first["labels"]["severity"] == "critical"
    assert second["labels"]["severity"] == "warning"
    assert first["annotations"]["summary"] == "Anomaly on pump-7 (critical)"
    for name in ("description", "channels", "score", "peak_score", "threshold", "probability"):
        assert first["annotations"][name]
    assert first["fingerprint"] != second["fingerprint"]


def test_webhook_payload_resolved():
    event = _decorated(status="resolved", sequence=3, end="2024-05-01T12:20:00Z", channels=[])
    body = alertmanager_webhook_payload([event], now=NOW)
    _check_webhook_shape(body)
    (alert,) = body["alerts"]
    assert body["status"] == "resolved"
    assert alert["status"] == "resolved"
    assert alert["endsAt"] == "2024-05-01T12:20:00Z"
    assert alert["annotations"]["summary"] == "Anomaly on pump-7 resolved"
    assert "channels" not in alert["annotations"]


def test_webhook_payload_keeps_last_event_per_incident():
    events = [_decorated(), _decorated(series="pump-8"), _decorated(status="resolved", sequence=2, end="2024-05-01T12:10:00Z")]
    body = alertmanager_webhook_payload(events, now=NOW)
    assert [(alert["labels"]["series"], alert["status"]) for alert in body["alerts"]] == [("pump-7", "resolved"), ("pump-8", "firing")]
    assert body["status"] == "firing"


def test_webhook_payload_truncates():
    events = [_decorated(series=f"s{index}") for index in range(5)]
    body = alertmanager_webhook_payload(events, max_alerts=2, now=NOW)
    assert len(body["alerts"]) == 2
    assert body["truncatedAlerts"] == 3


def test_fingerprint_stable_and_matches_prometheus():
    # Test vectors of Prometheus' model.LabelSet.Fingerprint (prometheus/common, model/metric_test.go).
    assert label_set_fingerprint({}) == f"{14695981039346656037:016x}"
    assert label_set_fingerprint({"first_name": "electro", "occupation": "robot", "manufacturer": "westinghouse"}) == f"{5911716720268894962:016x}"
    assert label_set_fingerprint({"x": "y"}) == f"{8241431561484471700:016x}"
    assert label_set_fingerprint({"a": "bb", "b": "c"}) == f"{3016285359649981711:016x}"
    assert label_set_fingerprint({"a": "b", "bb": "c"}) == f"{7122421792099404749:016x}"
    firing = alertmanager_webhook_payload([_decorated()], now=NOW)["alerts"][0]
    update = alertmanager_webhook_payload([_decorated(status="update", sequence=2, score=170.0)], now=NOW)["alerts"][0]
    resolved = alertmanager_webhook_payload([_decorated(status="resolved", sequence=3, end="2024-05-01T12:20:00Z")], now=NOW)["alerts"][0]
    assert firing["fingerprint"] == update["fingerprint"] == resolved["fingerprint"]
    assert firing["fingerprint"] == label_set_fingerprint(firing["labels"])


def test_step_indexed_times_use_now():
    event = _decorated(start="120", timestamp="130")
    (alert,) = alertmanager_webhook_payload([event], now=NOW)["alerts"]
    assert alert["startsAt"] == "2024-05-01T12:30:00Z"
    assert event_time("2013-12-02T21:15:00.250Z", NOW) == "2013-12-02T21:15:00.250Z"
    with pytest.raises(ValueError, match="neither RFC 3339 nor a step index"):
        event_time("yesterday", NOW)


def test_events_without_content_get_builtin_labels():
    event = _event()
    (alert,) = alertmanager_webhook_payload([event], now=NOW)["alerts"]
    assert alert["labels"]["alertname"] == "StreamADAnomaly"
    assert alert["labels"]["severity"] == "critical"
    assert "severity" not in event


# Alertmanager API v2 alerts


def test_api_alerts_firing_and_resolved():
    firing = _decorated()
    resolved = _decorated(series="pump-8", status="resolved", sequence=4, end="2024-05-01T12:20:00Z")
    alerts = alertmanager_api_alerts([firing, resolved], generator_url="http://streamad/alerts", now=NOW)
    assert len(alerts) == 2
    first, second = alerts
    assert set(first) == {"labels", "annotations", "startsAt", "generatorURL"}
    assert first["startsAt"] == "2024-05-01T12:00:00Z"
    assert first["generatorURL"] == "http://streamad/alerts"
    assert set(second) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert second["endsAt"] == "2024-05-01T12:20:00Z"
    assert first["labels"] == firing["labels"]


def test_api_alerts_leave_out_empty_generator_url():
    (alert,) = alertmanager_api_alerts([_decorated()], now=NOW)
    assert "generatorURL" not in alert


def test_consecutive_incidents_distinct_fingerprints():
    first = _decorated(status="resolved", sequence=2, end="2024-05-01T12:10:00Z", alert_id="first")
    second = _decorated(alert_id="second", start="2024-05-01T12:40:00Z")
    body = alertmanager_webhook_payload([first, second], now=NOW)
    fingerprints = [alert["fingerprint"] for alert in body["alerts"]]
    assert len(set(fingerprints)) == 2
    assert [alert["labels"]["alert_id"] for alert in body["alerts"]] == ["first", "second"]

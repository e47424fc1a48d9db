"""Payload formats of incident events: the generic JSON event and Prometheus Alertmanager's.

Two Alertmanager formats are built from the same events:

- :func:`alertmanager_webhook_payload`, the body that Alertmanager itself POSTs to a
  ``webhook_config`` receiver (version 4). Receivers written for Alertmanager can take
  StreamAD's alerts directly.
- :func:`alertmanager_api_alerts`, the list of alerts that a client POSTs to
  Alertmanager's ``/api/v2/alerts``, as Prometheus does.

Times are RFC 3339 in UTC. Events of step-indexed series have no time, so their
``startsAt`` and ``endsAt`` are the ``now`` argument, the time the payload is built.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from streamad.alerts.severity import AlertContent

FORMATS = ("generic", "alertmanager")
# Alertmanager's webhook marks a firing alert's endsAt with Go's zero time.
ZERO_TIME = "0001-01-01T00:00:00Z"
WEBHOOK_VERSION = "4"
# Timestamps of series with a clock, as streamad.data.format_timestamp writes them.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
# FNV-1a, 64 bits, as Prometheus' model.LabelSet.Fingerprint uses it.
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_LABEL_SEPARATOR = 0xFF
_DEFAULT_CONTENT = AlertContent()


def generic_payload(event: Mapping[str, Any]) -> dict[str, Any]:
    """Return the JSON body of one incident event in the generic format: the event itself."""
    return dict(event)


def rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z`` suffix and milliseconds when not zero."""
    moment = moment.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    milliseconds = moment.microsecond // 1000
    return f"{text}.{milliseconds:03d}Z" if milliseconds else f"{text}Z"


def event_time(value: Any, now: datetime) -> str | None:
    """Return an event time as RFC 3339: as it is for a timestamped series, ``now`` for a step index, None for None."""
    if value is None:
        return None
    text = str(value)
    if _RFC3339.match(text):
        return text
    if text.lstrip("-").isdigit():
        return rfc3339(now)
    raise ValueError(f"event time {text!r} is neither RFC 3339 nor a step index")


def label_set_fingerprint(labels: Mapping[str, str]) -> str:
    """Return the fingerprint of a label set as Alertmanager computes it, 16 hex digits.

    It is FNV-1a (64 bits) over the label names in sorted order, each followed by byte
    0xFF, its value and byte 0xFF again, as in Prometheus' ``model.LabelSet.Fingerprint``.
    """
    digest = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            digest = ((digest ^ _LABEL_SEPARATOR) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{digest:016x}"


def event_labels(event: Mapping[str, Any]) -> dict[str, str]:
    """Return the event's ``labels``, or the built-in label set for an event without them."""
    labels = event.get("labels")
    if labels is not None:
        return {str(name): str(value) for name, value in labels.items()}
    return _DEFAULT_CONTENT.labels_of(_with_severity(event))


def event_annotations(event: Mapping[str, Any]) -> dict[str, str]:
    """Return the event's ``annotations``, or the built-in annotations for an event without them."""
    annotations = event.get("annotations")
    if annotations is not None:
        return {str(name): str(value) for name, value in annotations.items()}
    return _DEFAULT_CONTENT.annotations_of(_with_severity(event))


def _with_severity(event: Mapping[str, Any]) -> dict[str, Any]:
    if "severity" in event:
        return dict(event)
    return _DEFAULT_CONTENT.decorate(dict(event))


def alertmanager_alert(event: Mapping[str, Any], *, generator_url: str = "", now: datetime | None = None) -> dict[str, Any]:
    """Return one alert of an Alertmanager webhook body for an incident event.

    A ``resolved`` event becomes a ``resolved`` alert whose ``endsAt`` is the event's
    ``end``, the last alerting point. ``firing`` and ``update`` events become ``firing``
    alerts with the zero time as ``endsAt``.
    """
    now = now or datetime.now(timezone.utc)
    labels = event_labels(event)
    resolved = event["status"] == "resolved"
    return {
        "status": "resolved" if resolved else "firing",
        "labels": labels,
        "annotations": event_annotations(event),
        "startsAt": event_time(event["start"], now),
        "endsAt": event_time(event.get("end"), now) if resolved else ZERO_TIME,
        "generatorURL": generator_url,
        "fingerprint": label_set_fingerprint(labels),
    }


def latest_per_incident(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Return the last event of each ``alert_id``, in the order of their first events."""
    latest: dict[str, Mapping[str, Any]] = {}
    for event in events:
        latest[event["alert_id"]] = event
    return list(latest.values())


def group_key(group_labels: Mapping[str, str]) -> str:
    """Return a group key in Alertmanager's form ``{}:{name="value",...}`` for the root route."""
    pairs = ",".join(f"{name}={json.dumps(str(group_labels[name]))}" for name in sorted(group_labels))
    return "{}:{" + pairs + "}"


def _common(mappings: list[dict[str, str]]) -> dict[str, str]:
    if not mappings:
        return {}
    common = dict(mappings[0])
    for mapping in mappings[1:]:
        common = {name: value for name, value in common.items() if mapping.get(name) == value}
    return common


def alertmanager_webhook_payload(
    events: Sequence[Mapping[str, Any]],
    *,
    receiver: str = "streamad",
    group_labels: Mapping[str, str] | None = None,
    external_url: str = "",
    generator_url: str = "",
    max_alerts: int = 0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return one Alertmanager webhook (version 4) body for a group of incident events.

    Each incident appears once, with its last event in ``events``. ``status`` is
    ``firing`` when any alert fires. ``commonLabels`` and ``commonAnnotations`` are the
    pairs shared by every alert. With ``max_alerts`` > 0 the alerts beyond it are left
    out and counted in ``truncatedAlerts``, as Alertmanager's ``max_alerts`` does.
    """
    if max_alerts < 0:
        raise ValueError(f"max_alerts={max_alerts!r} is invalid; use 0 for no limit or a positive count")
    now = now or datetime.now(timezone.utc)
    alerts = [alertmanager_alert(event, generator_url=generator_url, now=now) for event in latest_per_incident(events)]
    truncated = 0
    if max_alerts and len(alerts) > max_alerts:
        truncated = len(alerts) - max_alerts
        alerts = alerts[:max_alerts]
    group_labels = dict(group_labels or {})
    return {
        "version": WEBHOOK_VERSION,
        "groupKey": group_key(group_labels),
        "truncatedAlerts": truncated,
        "status": "firing" if any(alert["status"] == "firing" for alert in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": _common([alert["labels"] for alert in alerts]),
        "commonAnnotations": _common([alert["annotations"] for alert in alerts]),
        "externalURL": external_url,
        "alerts": alerts,
    }


def alertmanager_api_alerts(
    events: Sequence[Mapping[str, Any]],
    *,
    generator_url: str = "",
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Return the body of ``POST /api/v2/alerts`` for incident events: one alert per incident.

    A firing alert has no ``endsAt``, so Alertmanager resolves it after its
    ``resolve_timeout`` unless the alert is sent again before then. A resolved alert
    has ``endsAt`` at the incident's last alerting point.
    """
    now = now or datetime.now(timezone.utc)
    alerts = []
    for event in latest_per_incident(events):
        alert = {
            "labels": event_labels(event),
            "annotations": event_annotations(event),
            "startsAt": event_time(event["start"], now),
        }
        if generator_url:
            alert["generatorURL"] = generator_url
        if event["status"] == "resolved":
            alert["endsAt"] = event_time(event.get("end"), now)
        alerts.append(alert)
    return alerts

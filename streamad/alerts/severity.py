"""Severity, labels and annotations of incident events.

The severity comes from the calibrated anomaly probability of the incident's peak score,
the fraction of the model's validation windows that score at or below it. It never falls
while an incident is open, so the label set of an incident changes only when its
severity rises. Alertmanager identifies an alert by its label set, so an incident stays one
alert unless its severity rises.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

ALERT_NAME = "StreamADAnomaly"
SEVERITIES = ("info", "warning", "critical")
DEFAULT_WARNING_PROBABILITY = 0.99
DEFAULT_CRITICAL_PROBABILITY = 0.999

# Prometheus label names (https://prometheus.io/docs/concepts/data_model/); Alertmanager
# validates annotation names with the same rule.
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels that StreamAD sets on every event. Only ``alertname`` may be overridden.
# ``alert_id`` makes each incident its own Alertmanager alert, so that an incident that
# opens right after another of the same series does not merge with it.
BUILTIN_LABELS = ("alertname", "alert_id", "series", "severity", "model_version", "score_name")
# Event fields that an annotation template may use as {name}.
TEMPLATE_FIELDS = (
    "alert_id", "series", "status", "severity", "score_name", "model_version", "start", "end", "timestamp",
    "score", "peak_score", "threshold", "anomaly_probability", "peak_anomaly_probability", "top_channels",
)
# Largest width or precision in a template's format spec. A larger one, e.g. {score:>99999999999},
# would allocate that many characters for every event.
MAX_FORMAT_WIDTH = 1000
# An event with every template field, against which each template is rendered once at start.
SAMPLE_EVENT = {
    "alert_id": "0123456789abcdef", "series": "sample-series", "status": "firing", "severity": "warning",
    "score_name": "likelihood", "model_version": "v1", "start": "2024-01-01T00:00:00Z", "end": None,
    "timestamp": "2024-01-01T00:05:00Z", "score": 12.5, "peak_score": 15.0, "threshold": 10.0,
    "anomaly_probability": 0.995, "peak_anomaly_probability": 0.999,
    "channels": [{"channel": "c1", "share": 0.8, "nats": 10.0}],
}


@dataclass(frozen=True)
class SeverityLevels:
    """Cut-offs of the anomaly probability: ``critical`` at or above ``critical``, ``warning``
    at or above ``warning``, ``info`` below."""

    warning: float = DEFAULT_WARNING_PROBABILITY
    critical: float = DEFAULT_CRITICAL_PROBABILITY

    def __post_init__(self) -> None:
        for name, value in (("warning", self.warning), ("critical", self.critical)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--severity-{name} {value!r} is invalid; use a probability in [0, 1]")
        if self.warning > self.critical:
            raise ValueError(
                f"--severity-warning {self.warning!r} is above --severity-critical {self.critical!r}; "
                "use a warning cut-off at or below the critical one"
            )

    def of(self, probability: float) -> str:
        """Return the severity of an anomaly probability; NaN is ``info``."""
        if probability >= self.critical:
            return "critical"
        if probability >= self.warning:
            return "warning"
        return "info"


def parse_key_values(items: Iterable[str] | None, option: str) -> dict[str, str]:
    """Parse repeated ``key=value`` options into a dict; raise ValueError naming the bad item.

    Keys must be Prometheus label names and values must not be empty. A repeated key
    keeps its last value.
    """
    parsed: dict[str, str] = {}
    for item in items or ():
        key, separator, value = item.partition("=")
        key = key.strip()
        if not separator:
            raise ValueError(f"{option} {item!r} is invalid; use {option} key=value")
        if not LABEL_NAME.match(key):
            raise ValueError(
                f"{option} {item!r} has the invalid name {key!r}; use letters, digits and '_', not starting with a digit"
            )
        if key.startswith("__"):
            raise ValueError(f"{option} {item!r}: names starting with '__' are reserved by Prometheus; rename {key!r}")
        if value == "":
            raise ValueError(f"{option} {item!r} has an empty value; give a value, Prometheus treats an empty label as absent")
        parsed[key] = value
    return parsed


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Return ``labels`` as a dict, or raise ValueError if one would replace a built-in label other than alertname."""
    for name in labels:
        if name in BUILTIN_LABELS and name != "alertname":
            raise ValueError(
                f"--label {name}=... would replace the label that StreamAD sets itself; choose another name "
                f"(only alertname may be overridden, built-in labels are {', '.join(BUILTIN_LABELS)})"
            )
    return dict(labels)


def validate_annotations(templates: Mapping[str, str]) -> dict[str, str]:
    """Return ``templates`` as a dict, or raise ValueError on a placeholder that is not an event field."""
    formatter = string.Formatter()
    for name, template in templates.items():
        try:
            fields = [parsed[1] for parsed in formatter.parse(template) if parsed[1] is not None]
        except ValueError as error:
            raise ValueError(f"--annotation {name}={template!r} is not a valid template ({error}); write '{{{{' for a literal brace") from None
        for field_name in fields:
            if field_name not in TEMPLATE_FIELDS:
                raise ValueError(
                    f"--annotation {name}={template!r} uses the unknown placeholder {{{field_name}}}; "
                    f"use one of {', '.join('{' + known + '}' for known in TEMPLATE_FIELDS)}"
                )
        _check_format_specs(name, template, formatter)
        try:
            render_templates({name: template}, SAMPLE_EVENT)
        except (ValueError, TypeError, KeyError, IndexError) as error:
            raise ValueError(
                f"--annotation {name}={template!r} cannot be rendered for a sample event ({error}); "
                "fix its format spec, e.g. {score:.3g}"
            ) from None
    return dict(templates)


def _check_format_specs(name: str, template: str, formatter: string.Formatter) -> None:
    """Raise ValueError on a nested placeholder in a format spec or a width or precision above MAX_FORMAT_WIDTH."""
    for _, field_name, spec, _ in formatter.parse(template):
        if field_name is None or not spec:
            continue
        if "{" in spec:
            raise ValueError(f"--annotation {name}={template!r} has a placeholder inside a format spec; use a literal spec, e.g. {{score:.3g}}")
        sizes = [int(digits) for digits in re.findall(r"\d+", spec)]
        if sizes and max(sizes) > MAX_FORMAT_WIDTH:
            raise ValueError(
                f"--annotation {name}={template!r} has the width or precision {max(sizes)}; use at most {MAX_FORMAT_WIDTH}"
            )


def render_templates(templates: Mapping[str, str], event: Mapping[str, Any]) -> dict[str, str]:
    """Format annotation templates with the event's fields; a missing field is an empty string."""
    values = {name: event.get(name) for name in TEMPLATE_FIELDS}
    values["top_channels"] = format_channels(event.get("channels") or [])
    values = {name: ("" if value is None else value) for name, value in values.items()}
    return {name: template.format_map(values) for name, template in templates.items()}


def format_channels(channels: list[dict]) -> str:
    """Return the channel attribution as text, e.g. ``"c1 82.0% (412.3 nats), latent 3.1% (15.2 nats)"``."""
    parts = []
    for entry in channels:
        name = entry["channel"]
        if entry.get("kind") == "other":
            name = f"{entry.get('channels', '')} other channels".strip()
        share = entry.get("share")
        share_text = "n/a" if share is None else f"{100.0 * share:.1f}%"
        parts.append(f"{name} {share_text} ({entry['nats']:.1f} nats)")
    return ", ".join(parts)


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.6g}"


@dataclass(frozen=True)
class AlertContent:
    """The severity, labels and annotations that every incident event gets.

    Parameters
    ----------
    levels
        Severity cut-offs of the anomaly probability.
    labels
        Extra labels, ``--label key=value``; ``alertname`` replaces the default alert name.
    annotations
        Extra annotation templates, ``--annotation key=value``, formatted with the event's
        fields as in :data:`TEMPLATE_FIELDS`; one named like a built-in annotation
        replaces it.
    """

    levels: SeverityLevels = field(default_factory=SeverityLevels)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", validate_labels(self.labels))
        object.__setattr__(self, "annotations", validate_annotations(self.annotations))

    def decorate(self, event: dict) -> dict:
        """Add ``severity``, ``labels`` and ``annotations`` to ``event`` in place and return it.

        The severity uses ``peak_anomaly_probability``, or ``anomaly_probability`` when the
        event has no peak.
        """
        probability = event.get("peak_anomaly_probability", event.get("anomaly_probability"))
        event["severity"] = self.levels.of(float("nan") if probability is None else probability)
        event["labels"] = self.labels_of(event)
        event["annotations"] = self.annotations_of(event)
        return event

    def labels_of(self, event: Mapping[str, Any]) -> dict[str, str]:
        """Return the label set of an event: the built-in labels, then the configured ones."""
        labels = {
            "alertname": ALERT_NAME,
            "alert_id": str(event["alert_id"]),
            "series": str(event["series"]),
            "severity": str(event["severity"]),
            "model_version": str(event["model_version"]),
            "score_name": str(event["score_name"]),
        }
        labels.update(self.labels)
        return labels

    def annotations_of(self, event: Mapping[str, Any]) -> dict[str, str]:
        """Return the annotations of an event: summary, description, figures, then the configured ones."""
        return {**builtin_annotations(event), **self.render(event)}

    def render(self, event: Mapping[str, Any]) -> dict[str, str]:
        """Format the configured annotation templates with the event's fields."""
        return render_templates(self.annotations, event)


def builtin_annotations(event: Mapping[str, Any]) -> dict[str, str]:
    """Return the annotations StreamAD writes for every event.

    ``channels`` is absent from a ``resolved`` event, whose window is below the threshold
    and whose ``channels`` list is empty.
    """
    series = event["series"]
    severity = event.get("severity", "info")
    score_name = event.get("score_name", "likelihood")
    peak = _number(event.get("peak_score"))
    threshold = _number(event.get("threshold"))
    probability = _number(event.get("peak_anomaly_probability", event.get("anomaly_probability")))
    if event.get("status") == "resolved":
        summary = f"Anomaly on {series} resolved"
        description = (
            f"The {score_name} score of {series} was above its threshold from {event.get('start')} to "
            f"{event.get('end')}, with a peak of {peak}."
        )
    else:
        summary = f"Anomaly on {series} ({severity})"
        description = (
            f"The {score_name} score of {series} has been above its threshold since {event.get('start')}: "
            f"peak {peak}, threshold {threshold}, anomaly probability {probability}."
        )
    annotations = {
        "summary": summary,
        "description": description,
        "score": _number(event.get("score")),
        "peak_score": peak,
        "threshold": threshold,
        "probability": probability,
    }
    channels = event.get("channels") or []
    if channels:
        annotations["channels"] = format_channels(channels)
    return annotations

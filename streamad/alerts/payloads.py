"""Payload formats of incident events: the generic JSON event and Prometheus Alertmanager's."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

FORMATS = ("generic", "alertmanager")


def generic_payload(event: Mapping[str, Any]) -> dict[str, Any]:
    """Return the JSON body of one incident event in the generic format: the event itself."""
    return dict(event)


def alertmanager_webhook_payload(
    events: Sequence[Mapping[str, Any]],
    *,
    receiver: str = "streamad",
    group_labels: Mapping[str, str] | None = None,
    external_url: str = "",
) -> dict[str, Any]:
    """Return one Alertmanager webhook (version 4) body for a group of incident events."""
    raise NotImplementedError("the Alertmanager webhook payload is not built yet")

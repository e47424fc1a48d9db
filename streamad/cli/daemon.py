"""Build the Kafka source and the sinks of ``streamad run`` from its arguments."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def build_daemon(args) -> tuple:
    """Return ``(source, alert_sinks, dead_letter_sinks)`` for the parsed ``run`` arguments.

    At least one alert destination is required, so that alerts never go nowhere.
    """
    from connectors.files import JsonLinesSink, StdoutSink
    from connectors.kafka import KafkaAlertSink, KafkaDeadLetterSink, KafkaSource, KafkaSourceConfig
    from connectors.webhook import WebhookSink
    from streamad.cli.commands import UsageError

    if not (args.alerts_topic or args.alerts or args.webhook or args.stdout):
        raise UsageError("no alert destination; pass --alerts-topic, --alerts, --webhook or --stdout")

    alert_sinks: list = []
    dead_letter_sinks: list = []
    if args.stdout:
        alert_sinks.append(StdoutSink())
    if args.alerts:
        alert_sinks.append(JsonLinesSink(args.alerts))
    for url in args.webhook:
        alert_sinks.append(WebhookSink(url, timeout=args.webhook_timeout))
    if args.alerts_topic:
        alert_sinks.append(KafkaAlertSink(args.bootstrap_servers, args.alerts_topic))
    if args.dead_letter:
        dead_letter_sinks.append(JsonLinesSink(args.dead_letter))
    if args.dead_letter_topic:
        dead_letter_sinks.append(KafkaDeadLetterSink(args.bootstrap_servers, args.dead_letter_topic))
    if not dead_letter_sinks:
        logger.warning("no --dead-letter or --dead-letter-topic: unusable records are only logged")

    config = KafkaSourceConfig(
        bootstrap_servers=args.bootstrap_servers,
        topics=list(args.topic),
        group_id=args.group_id,
        max_poll_records=args.max_poll_records,
        max_poll_interval_ms=args.max_poll_interval_ms,
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
    )
    return KafkaSource(config), alert_sinks, dead_letter_sinks

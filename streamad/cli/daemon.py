"""Build the Kafka source and the sinks of ``streamad run`` from its arguments."""

from __future__ import annotations

import logging

from streamad.cli.config import check_webhooks

logger = logging.getLogger(__name__)


def check_checkpoint_options(args) -> None:
    """Raise UsageError when a checkpoint option of ``run`` is out of range."""
    from streamad.cli.commands import UsageError

    if args.checkpoint_every_records < 1:
        raise UsageError(f"--checkpoint-every-records {args.checkpoint_every_records} is invalid; use a count >= 1")
    if not args.checkpoint_interval_s > 0:
        raise UsageError(f"--checkpoint-interval-s {args.checkpoint_interval_s} is invalid; use seconds > 0")


def source_config(args):
    """Return the KafkaSourceConfig of the parsed ``run`` arguments; it raises ValueError on invalid values."""
    from connectors.kafka import KafkaSourceConfig

    return KafkaSourceConfig(
        bootstrap_servers=args.bootstrap_servers,
        topics=list(args.topic),
        group_id=args.group_id,
        max_poll_records=args.max_poll_records,
        max_poll_interval_ms=args.max_poll_interval_ms,
        session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_interval_ms,
    )


def build_checkpointer(args, engine):
    """Return the partition checkpointer of ``--checkpoint-dir``, or None when it is not given."""
    from streamad.engine.checkpoint import CheckpointStore, PartitionCheckpointer

    check_checkpoint_options(args)
    if not args.checkpoint_dir:
        logger.warning("no --checkpoint-dir: after a restart or a rebalance, windows and incidents start empty")
        return None
    store = CheckpointStore(args.checkpoint_dir)
    logger.info(
        "checkpoints in %s every %d records or %g s", store.directory, args.checkpoint_every_records, args.checkpoint_interval_s
    )
    return PartitionCheckpointer(
        engine, store, every_records=args.checkpoint_every_records, interval_s=args.checkpoint_interval_s
    )


def build_daemon(args) -> tuple:
    """Return ``(source, alert_sinks, dead_letter_sinks, point_sinks)`` for the parsed ``run`` arguments.

    At least one alert destination is required, so that alerts never go nowhere.
    """
    from connectors.files import JsonLinesSink, StdoutSink
    from connectors.kafka import KafkaAlertSink, KafkaDeadLetterSink, KafkaSource
    from streamad.cli.commands import UsageError

    # Raises ConfigError, a ValueError, on an invalid endpoint or a missing --outbox.
    endpoints = check_webhooks(args)
    if not (args.alerts_topic or args.alerts or endpoints or args.stdout or getattr(args, "alertmanager", None)):
        raise UsageError("no alert destination; pass --alerts-topic, --alerts, --webhook, --alertmanager or --stdout")

    alert_sinks: list = []
    dead_letter_sinks: list = []
    point_sinks: list = []
    if args.stdout:
        alert_sinks.append(StdoutSink())
    if args.alerts:
        alert_sinks.append(JsonLinesSink(args.alerts))
    if endpoints:
        alert_sinks.append(build_webhook_sink(args, endpoints))
    elif args.outbox:
        logger.warning("--outbox %s is unused: no --webhook or [webhooks.*] endpoint is configured", args.outbox)
    if args.alerts_topic:
        alert_sinks.append(KafkaAlertSink(args.bootstrap_servers, args.alerts_topic))
    alert_sinks.extend(alertmanager_sinks(args))
    if args.dead_letter:
        dead_letter_sinks.append(JsonLinesSink(args.dead_letter))
    if args.dead_letter_topic:
        dead_letter_sinks.append(KafkaDeadLetterSink(args.bootstrap_servers, args.dead_letter_topic))
    if args.scores:
        point_sinks.append(JsonLinesSink(args.scores))
    if not dead_letter_sinks:
        logger.warning("no --dead-letter or --dead-letter-topic: unusable records are only logged")

    return KafkaSource(source_config(args)), alert_sinks, dead_letter_sinks, point_sinks


def build_webhook_sink(args, endpoints):
    """Return the WebhookSink of ``endpoints`` on the outbox ``--outbox``, with its sender threads started."""
    from connectors.webhook import WebhookSink

    if args.webhook_drain_s < 0:
        raise ValueError(f"--webhook-drain-s {args.webhook_drain_s} is invalid; use seconds >= 0")
    if args.outbox_keep_delivered_s < 0:
        raise ValueError(f"--outbox-keep-delivered-s {args.outbox_keep_delivered_s} is invalid; use seconds >= 0, 0 keeps every row")
    for endpoint in endpoints:
        logger.info(
            "webhook endpoint %s: format %s, %s, timeouts %g s connect and %g s read, at most %d attempts",
            endpoint.name, endpoint.format, "signed" if endpoint.secret else "unsigned",
            endpoint.connect_timeout_s, endpoint.read_timeout_s, endpoint.max_attempts,
        )
    return WebhookSink(
        endpoints, args.outbox, drain_s=args.webhook_drain_s, keep_delivered_s=args.outbox_keep_delivered_s
    )


def alertmanager_sinks(args) -> list:
    """Return the Alertmanager client of ``--alertmanager`` in a list, or an empty list without it."""
    if not getattr(args, "alertmanager", None):
        return []
    from connectors.alertmanager import AlertmanagerClient

    return [
        AlertmanagerClient(
            args.alertmanager, resend_interval_s=args.alertmanager_resend_s, timeout_s=args.alertmanager_timeout_s
        )
    ]

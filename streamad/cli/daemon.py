"""Build the Kafka source and the sinks of ``streamad run`` from its arguments."""

from __future__ import annotations

import logging

from streamad.cli.config import check_webhooks

logger = logging.getLogger(__name__)


def check_checkpoint_options(args) -> None:
    """Raise UsageError when a checkpoint, retry or Kafka timeout option of ``run`` is out of range."""
    from streamad.cli.commands import UsageError

    if args.checkpoint_every_records < 1:
        raise UsageError(f"--checkpoint-every-records {args.checkpoint_every_records} is invalid; use a count >= 1")
    if not args.checkpoint_interval_s > 0:
        raise UsageError(f"--checkpoint-interval-s {args.checkpoint_interval_s} is invalid; use seconds > 0")
    if not args.retry_backoff_max_s > 0:
        raise UsageError(f"--retry-backoff-max-s {args.retry_backoff_max_s} is invalid; use seconds > 0")
    # kafka-python requires a request timeout above the fetch wait of 500 ms.
    if args.request_timeout_ms <= 500:
        raise UsageError(f"--request-timeout-ms {args.request_timeout_ms} is invalid; use more than 500 ms, e.g. 30000")
    if args.checkpoint_topic is not None:
        from connectors.kafka_checkpoints import check_topic_name

        try:
            check_topic_name(args.checkpoint_topic)
        except ValueError as error:
            raise UsageError(f"--checkpoint-topic: {error}") from None
        other_topics = {*args.topic, args.alerts_topic, args.dead_letter_topic} - {None}
        if args.checkpoint_topic in other_topics:
            raise UsageError(
                f"--checkpoint-topic {args.checkpoint_topic!r} is also an input, alert or dead-letter topic; "
                "give the checkpoints a topic of their own"
            )


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
        request_timeout_ms=args.request_timeout_ms,
    )


def build_retry(args, stop=None):
    """Return the backoff of the Kafka retries during a broker outage; setting ``stop`` ends the retries."""
    from connectors.kafka import RetryBackoff

    return RetryBackoff(max_s=args.retry_backoff_max_s, stop=stop)


def build_checkpointer(args, engine, stop=None):
    """Return the partition checkpointer of ``--checkpoint-dir`` and ``--checkpoint-topic``, or None without both.

    With both, every checkpoint is written to the directory and the topic, and the one with
    the higher offset is read. ``stop`` ends the retries of a checkpoint topic write.
    """
    from streamad.engine.checkpoint import CheckpointStore, PartitionCheckpointer

    check_checkpoint_options(args)
    if not args.checkpoint_dir and not args.checkpoint_topic:
        logger.warning(
            "no --checkpoint-dir or --checkpoint-topic: after a restart or a rebalance, windows and incidents start empty"
        )
        return None
    stores = []
    if args.checkpoint_dir:
        stores.append(CheckpointStore(args.checkpoint_dir))
    if args.checkpoint_topic:
        from connectors.kafka_checkpoints import KafkaCheckpointStore

        stores.append(
            KafkaCheckpointStore(
                args.bootstrap_servers,
                args.checkpoint_topic,
                timeout_s=args.request_timeout_ms / 1000,
                retry=build_retry(args, stop),
            )
        )
    if len(stores) == 1:
        store = stores[0]
    else:
        from connectors.kafka_checkpoints import MirroredCheckpointStore

        store = MirroredCheckpointStore(stores)
    logger.info("checkpoints in %s every %d records or %g s", _describe_destinations(args), args.checkpoint_every_records, args.checkpoint_interval_s)
    return PartitionCheckpointer(
        engine, store, every_records=args.checkpoint_every_records, interval_s=args.checkpoint_interval_s
    )


def close_checkpointer(checkpointer) -> None:
    """Close the checkpoint store of ``checkpointer`` when it has a ``close()`` method, e.g. its Kafka producer."""
    close = getattr(getattr(checkpointer, "store", None), "close", None)
    if close is not None:
        close()


def _describe_destinations(args) -> str:
    destinations = []
    if args.checkpoint_dir:
        destinations.append(str(args.checkpoint_dir))
    if args.checkpoint_topic:
        destinations.append(f"Kafka topic {args.checkpoint_topic}")
    return " and ".join(destinations)


def build_daemon(args, stop=None) -> tuple:
    """Return ``(source, alert_sinks, dead_letter_sinks, point_sinks)`` for the parsed ``run`` arguments.

    At least one alert destination is required, so that alerts never go nowhere. The Kafka
    source and sinks retry with backoff during a broker outage, until ``stop`` is set.
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
    kafka_sink_options = _kafka_sink_options(args, stop)
    if args.alerts_topic:
        alert_sinks.append(KafkaAlertSink(args.bootstrap_servers, args.alerts_topic, **kafka_sink_options))
    alert_sinks.extend(alertmanager_sinks(args))
    if args.dead_letter:
        dead_letter_sinks.append(JsonLinesSink(args.dead_letter))
    if args.dead_letter_topic:
        dead_letter_sinks.append(KafkaDeadLetterSink(args.bootstrap_servers, args.dead_letter_topic, **kafka_sink_options))
    if args.scores:
        point_sinks.append(JsonLinesSink(args.scores))
    if not dead_letter_sinks:
        logger.warning("no --dead-letter or --dead-letter-topic: unusable records are only logged")

    return KafkaSource(source_config(args), retry=build_retry(args, stop)), alert_sinks, dead_letter_sinks, point_sinks


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


def connect_restored_incidents(checkpointer, alert_sinks) -> None:
    """Make ``checkpointer`` pass restored open incidents to the alert sinks that send them again.

    Only a sink with ``send_restored``, the Alertmanager client, gets them. The other sinks
    already received those events before the restart, so they would only see duplicates.
    """
    if checkpointer is None:
        return
    for sink in alert_sinks:
        send_restored = getattr(sink, "send_restored", None)
        if send_restored is not None:
            checkpointer.restored_incident_handlers.append(send_restored)


def _kafka_sink_options(args, stop) -> dict:
    """Return the timeouts and retry of the Kafka sinks, derived from ``--request-timeout-ms``.

    The producer itself retries a message for up to twice the request timeout, and the sink
    then sends it again after a backoff delay, so a message waits through an outage of any
    length.
    """
    return {
        "request_timeout_ms": args.request_timeout_ms,
        "delivery_timeout_ms": 2 * args.request_timeout_ms + 5,
        "max_block_ms": args.request_timeout_ms,
        "bootstrap_timeout_ms": args.request_timeout_ms,
        "retry": build_retry(args, stop),
    }

"""``streamad demo``: train, stream through Kafka and alert on river's water-flow series."""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from streamad.bundle import save_bundle
from streamad.data import Series
from streamad.engine import EngineConfig, StreamEngine, run_stream
from streamad.records import Record
from streamad.training import TrainConfig, train_bundle

logger = logging.getLogger(__name__)

SERIES_ID = "water-flow"


def load_water_flow() -> Series:
    """Return river's bundled water-flow series: hourly litres per second, March to May 2022."""
    from river import datasets

    rows = [(x["Time"], y) for x, y in datasets.WaterFlow()]
    timestamps = np.array([int(time_.timestamp() * 1000) for time_, _ in rows], dtype=np.int64)
    values = np.array([[value] for _, value in rows], dtype=np.float64)
    return Series(SERIES_ID, timestamps, values, ["flow"], True)


class _OffsetTracker:
    """Wrap a source and remember the highest offset handed out per (topic, partition)."""

    def __init__(self, source) -> None:
        self.source = source
        self.processed: dict[tuple[str, int], int] = {}

    def poll(self):
        messages = self.source.poll()
        for message in messages:
            key = (message.topic, message.partition)
            self.processed[key] = max(self.processed.get(key, -1), message.offset)
        return messages

    def commit(self, messages) -> None:
        self.source.commit(messages)

    def close(self) -> None:
        self.source.close()


class _AlertPrinter:
    """Print one readable line per incident event as soon as it is emitted."""

    def send(self, items: list[dict]) -> None:
        for event in items:
            channels = ", ".join(
                f"{item['channel']} {item['share']:.0%}"
                for item in event.get("channels", [])
                if item.get("kind") == "channel" and item.get("share") is not None
            )
            print(
                f"ALERT {event['status']:<8} {event['series']} id={event['alert_id']} seq={event['sequence']} "
                f"start={event['start']} at={event['timestamp']} score={event['score']:.2f} "
                f"threshold={event['threshold']:.2f} p={event['anomaly_probability']:.4f}"
                + (f" channels={channels}" if channels else ""),
                flush=True,
            )

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        self.flush()


def run_demo(args) -> int:
    """Train on the start of the series, stream the rest through Kafka, print alerts; return the exit code."""
    from connectors.files import JsonLinesSink
    from connectors.kafka import KafkaSource, KafkaSourceConfig, create_topic, produce_records
    from connectors.tansu import TansuBroker

    with contextlib.ExitStack() as stack:
        out = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamad-demo-")))
        series = load_water_flow()
        split = int(len(series) * args.train_fraction)
        print(f"training on the first {split} of {len(series)} hourly points of river's water-flow series", flush=True)
        # A day per window. The validation part is 40 % of the training span, not the default
        # 20 %, because the threshold is a quantile of its scores and 20 % is under six days.
        config = TrainConfig(window=24, latent=3, hidden=64, epochs=args.epochs, patience=30, validation_fraction=0.4)
        # The model is small, and one torch thread trains it several times faster than two
        # on a 2-core machine.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            bundle = train_bundle([series.slice(0, split)], config, train_fraction=1.0)
        finally:
            torch.set_num_threads(threads)
        version = save_bundle(bundle, out / "model")
        print(f"model {version} saved to {out / 'model'}", flush=True)

        bootstrap = args.bootstrap_servers
        if not bootstrap:
            broker = stack.enter_context(TansuBroker())
            bootstrap = broker.bootstrap
            print(f"started a local Tansu broker on {bootstrap}", flush=True)
        topic = f"streamad-demo-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, partitions=1)
        rest = series.slice(split, len(series))
        records = [Record(SERIES_ID, int(rest.timestamps[i]), rest.values[i]) for i in range(len(rest))]
        acknowledged = produce_records(bootstrap, topic, records)
        last_offsets: dict[tuple[str, int], int] = {}
        for partition, offset in acknowledged:
            last_offsets[(topic, partition)] = max(last_offsets.get((topic, partition), -1), offset)
        print(f"produced {len(records)} records to topic {topic}; the daemon consumes them now", flush=True)

        source = _OffsetTracker(
            KafkaSource(
                KafkaSourceConfig(
                    bootstrap_servers=bootstrap,
                    topics=[topic],
                    group_id=f"streamad-demo-{uuid.uuid4().hex[:8]}",
                    max_poll_interval_ms=5000,
                    session_timeout_ms=5000,
                    heartbeat_interval_ms=1000,
                )
            )
        )
        stack.callback(source.close)
        alerts_file = JsonLinesSink(out / "alerts.jsonl", append=False)
        stack.callback(alerts_file.close)
        engine = StreamEngine(bundle, EngineConfig(has_clock=True))
        deadline = time.monotonic() + args.timeout

        def finished() -> bool:
            done = all(source.processed.get(key, -1) >= offset for key, offset in last_offsets.items())
            return done or time.monotonic() > deadline

        stats = run_stream(engine, source, [_AlertPrinter(), alerts_file], until=finished)
        complete = all(source.processed.get(key, -1) >= offset for key, offset in last_offsets.items())
        print(
            f"consumed {stats.messages} records: {stats.points} windows scored, {engine.stats['alerts']} alerting "
            f"windows, {stats.events} incident events",
            flush=True,
        )
        if not complete:
            print(f"demo failed: the daemon did not consume the topic within {args.timeout:.0f} s", file=sys.stderr)
            return 1
        if args.out:
            print(f"alerts written to {out / 'alerts.jsonl'}", flush=True)
    return 0

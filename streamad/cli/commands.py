"""Handlers of the ``streamad`` sub-commands."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import numpy as np

from streamad.bundle import load_bundle, save_bundle
from streamad.engine import EngineConfig, StreamEngine, run_stream
from streamad.replay import align_points, replay_series
from streamad.scores import SCORE_NAMES
from streamad.training import TrainConfig, train_bundle

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A command-line value is invalid; the message names it and the fix."""


def _engine_config(args, has_clock: bool, score: str | None = None) -> EngineConfig:
    score = score or args.score
    if score not in SCORE_NAMES:
        raise UsageError(f"--score {score!r} is unknown; use one of {', '.join(SCORE_NAMES)}")
    return EngineConfig(
        score=score,
        threshold_level=args.level,
        warmup=getattr(args, "warmup", 0),
        resolve_after=getattr(args, "resolve_after", 3),
        has_clock=has_clock,
        per_series_threshold=getattr(args, "per_series_threshold", False),
    )


def _load_data(paths, channels: list[str] | None = None) -> list:
    """Load the series of every data file, keeping only ``channels`` (by name) when given."""
    from connectors.files import load_file_series

    series_list = []
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"data file {path!r} not found; pass an existing CSV, .npy or JSON-lines file")
        series_list.extend(load_file_series(path, channels=channels))
    return series_list


def _load_model_data(paths, model_channels: list[str]) -> list:
    """Load data files for a model, selecting the model's channels by name.

    A file without channel names (``.npy``, JSON lines with a ``values`` list, whose
    channels are named ``"0"``, ``"1"``, ...) with as many channels as the model is
    matched by position, as ``streamad run`` matches Kafka records.
    """
    try:
        return _load_data(paths, model_channels)
    except ValueError as by_name:
        series_list = _load_data(paths)
        positional = [str(index) for index in range(len(model_channels))]
        if not all(series.channels == positional for series in series_list):
            raise by_name
        for series in series_list:
            series.channels = list(model_channels)
        return series_list


def _parse_channels(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def train(args) -> int:
    """Train a bundle on ``--data`` and save it to ``--out``."""
    series_list = _load_data(args.data, _parse_channels(args.channels))
    config = TrainConfig(
        window=args.window,
        stride=args.stride,
        latent=args.latent,
        architecture=args.architecture,
        hidden=args.hidden,
        layers=args.layers,
        noise=args.noise,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        validation_fraction=args.validation_fraction,
        patience=args.patience,
        max_fill=args.max_fill,
        seed=args.seed,
        device=args.device,
    )
    bundle = train_bundle(series_list, config, train_fraction=args.train_fraction)
    version = save_bundle(bundle, args.out)
    metadata = bundle.metadata
    print(
        f"model {version} written to {args.out}: {metadata['train_windows']} training windows, "
        f"best epoch {metadata['best_epoch']}/{metadata['epochs_run']}, validation log-likelihood "
        f"{metadata['validation_log_likelihood_per_step']:.3f} nats per time step"
    )
    return 0


def replay(args) -> int:
    """Replay ``--data`` through the engine; write the scores CSV and the alerts file."""
    from connectors.files import FileReplaySource, JsonLinesSink, ScoresCsvWriter

    if Path(args.scores).resolve() == Path(args.alerts).resolve():
        raise UsageError(f"--scores and --alerts are the same file {args.scores!r}; give them different paths")
    bundle = load_bundle(args.model)
    series_list = _load_model_data(args.data, bundle.channels)
    has_clock = all(series.has_clock for series in series_list)
    engine = StreamEngine(bundle, _engine_config(args, has_clock))
    writer = ScoresCsvWriter(args.scores, has_clock)
    alerts = JsonLinesSink(args.alerts, append=False)
    try:
        source = FileReplaySource(series_list, speed=args.speed)
        stats = run_stream(engine, source, [alerts], until=lambda: source.exhausted, on_points=writer.write)
    finally:
        writer.close()
        alerts.close()
    skipped = engine.stats["windows_skipped_gap"]
    print(
        f"replayed {stats.messages} records: {stats.points} windows scored, {skipped} skipped for gaps, "
        f"{engine.stats['alerts']} alerting windows, {stats.events} incident events; scores in {args.scores}, "
        f"alerts in {args.alerts}"
    )
    for reason, count in sorted(stats.dead_letters.items()):
        print(f"rejected {count} records: {reason}")
    return 0


def evaluate(args) -> int:
    """Print ROC-AUC, PR-AUC and event-level metrics of each score on a labelled file."""
    from streamad.evaluation import best_f1, event_metrics, load_labels, pr_auc, roc_auc

    bundle = load_bundle(args.model)
    series_list = _load_model_data([args.data], bundle.channels)
    if len(series_list) != 1:
        raise UsageError(f"{args.data} contains {len(series_list)} series; evaluate takes a file with one series")
    (series,) = series_list
    if not Path(args.labels).is_file():
        raise UsageError(f"labels file {args.labels!r} not found; pass NAB's combined_windows.json or SMAP/MSL's labeled_anomalies.csv")
    labels = load_labels(args.labels, args.data, series)
    if not 0.0 <= args.skip_fraction < 1.0:
        raise UsageError(f"--skip-fraction {args.skip_fraction!r} is invalid; use a value in [0, 1)")
    first_scored = int(len(series) * args.skip_fraction)

    names = [name.strip() for name in args.score.split(",") if name.strip()]
    results = {}
    for name in names:
        engine = StreamEngine(bundle, _engine_config(args, series.has_clock, score=name))
        points: list = []
        replay_series(engine, [series], alert_sinks=[], on_points=points.extend)
        scores, alerts = align_points(series, points)
        keep = np.isfinite(scores)
        keep[:first_scored] = False
        results[name] = {
            "roc_auc": roc_auc(scores[keep], labels[keep]),
            "pr_auc": pr_auc(scores[keep], labels[keep]),
            "best_point_f1": best_f1(scores[keep], labels[keep])["f1"],
            **{f"event_{key}": value for key, value in event_metrics(alerts[keep], labels[keep]).items()},
            "windows": int(keep.sum()),
        }

    header = f"{'score':<16}{'ROC-AUC':>9}{'PR-AUC':>9}{'best F1':>9}{'event P':>9}{'event R':>9}{'event F1':>9}"
    print(f"{series.series_id}: {int(labels.sum())} anomalous points of {len(series)}, model {bundle.version}")
    print(header)
    for name, metrics in results.items():
        print(
            f"{name:<16}{metrics['roc_auc']:>9.3f}{metrics['pr_auc']:>9.3f}{metrics['best_point_f1']:>9.3f}"
            f"{metrics['event_precision']:>9.3f}{metrics['event_recall']:>9.3f}{metrics['event_f1']:>9.3f}"
        )
    if args.json_out:
        # NaN (e.g. precision without any alert) becomes null, since strict JSON has no NaN.
        clean = {
            name: {key: (None if isinstance(value, float) and np.isnan(value) else value) for key, value in metrics.items()}
            for name, metrics in results.items()
        }
        document = {"series": series.series_id, "model_version": bundle.version, "scores": clean}
        Path(args.json_out).write_text(json.dumps(document, indent=2, default=float))
    return 0


def _install_stop_handlers(stop: threading.Event) -> None:
    def handle(signum, frame):
        logger.info("received %s; finishing the batch, then committing and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def run(args) -> int:
    """Run the Kafka consumer daemon until SIGINT or SIGTERM."""
    from streamad.cli.daemon import build_checkpointer, build_daemon, close_checkpointer

    bundle = load_bundle(args.model)
    engine = StreamEngine(bundle, _engine_config(args, has_clock=True))
    # Created first, so that SIGTERM also ends the Kafka retries during a broker outage.
    stop = threading.Event()
    _install_stop_handlers(stop)
    checkpointer = build_checkpointer(args, engine, stop)
    source, alert_sinks, dead_letter_sinks, point_sinks = build_daemon(args, stop)
    logger.info("consuming %s as group %s with model %s", ",".join(args.topic), args.group_id, bundle.version)
    try:
        stats = run_stream(
            engine, source, alert_sinks,
            dead_letter_sinks=dead_letter_sinks, point_sinks=point_sinks, stop=stop, checkpointer=checkpointer,
        )
    finally:
        source.close()
        for sink in alert_sinks + dead_letter_sinks + point_sinks:
            sink.close()
        close_checkpointer(checkpointer)
    logger.info(
        "stopped after %d records: %d windows scored, %d events, dead letters %s",
        stats.messages, stats.points, stats.events, dict(stats.dead_letters),
    )
    return 0


def demo(args) -> int:
    """Run the water-flow demo end to end."""
    from streamad.cli.demo import run_demo

    return run_demo(args)

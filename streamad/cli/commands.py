"""Handlers of the ``streamad`` sub-commands."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from streamad.bundle import load_bundle, save_bundle
from streamad.data import format_timestamp
from streamad.data.loaders import OutOfOrderRow
from streamad.engine import EngineConfig, StreamEngine, run_stream
from streamad.engine.runner import dead_letter_entry
from streamad.records import InvalidRecord, decode_record, warn_if_epoch_seconds
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
        **_alert_options(args),
    )


def _alert_options(args) -> dict:
    """Return the EngineConfig fields of the incident and alert-content options, validated."""
    from streamad.alerts.severity import AlertContent, SeverityLevels, parse_key_values

    options = {
        "resolve_after_s": getattr(args, "resolve_after_s", None),
        "update_every": getattr(args, "update_every", 10),
        "update_interval_s": getattr(args, "update_interval_s", None),
        "top_channels": getattr(args, "top_channels", 3),
        "severity_warning": getattr(args, "severity_warning", 0.99),
        "severity_critical": getattr(args, "severity_critical", 0.999),
        "labels": parse_key_values(getattr(args, "label", []), "--label"),
        "annotations": parse_key_values(getattr(args, "annotation", []), "--annotation"),
    }
    if options["top_channels"] < 0:
        raise UsageError(f"--top-channels {options['top_channels']} is invalid; use a count >= 0")
    # Raises ValueError naming the option for a bad cut-off, label or template.
    AlertContent(
        SeverityLevels(options["severity_warning"], options["severity_critical"]), options["labels"], options["annotations"]
    )
    return options


def _load_data(
    paths,
    channels: list[str] | None = None,
    invalid_lines: InvalidLines | None = None,
    out_of_order_rows: OutOfOrderRows | None = None,
) -> list:
    """Load the series of every data file, keeping only ``channels`` (by name) when given.

    With ``invalid_lines``, invalid lines of JSON-lines files and CSV rows with an invalid
    value are skipped and collected there, and a NaN value is invalid, as in a Kafka record.
    Without it, NaN is a missing value and an invalid value raises ValueError.
    With ``out_of_order_rows``, the rows dropped for their timestamps are collected there.
    """
    from connectors.files import load_file_series

    series_list = []
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"data file {path!r} not found; pass an existing CSV, .npy or JSON-lines file")
        handler = None if invalid_lines is None else invalid_lines.handler(path)
        dropped_handler = None if out_of_order_rows is None else out_of_order_rows.handler(path)
        series_list.extend(
            load_file_series(
                path,
                channels=channels,
                on_invalid_line=handler,
                on_out_of_order=dropped_handler,
                reject_nan=invalid_lines is not None,
            )
        )
    return series_list


def _load_model_data(
    paths,
    model_channels: list[str],
    invalid_lines: InvalidLines | None = None,
    out_of_order_rows: OutOfOrderRows | None = None,
) -> list:
    """Load data files for a model, selecting the model's channels by name.

    A file without channel names (``.npy``, JSON lines with a ``values`` list, whose
    channels are named ``"0"``, ``"1"``, ...) with as many channels as the model is
    matched by position, as ``streamad run`` matches Kafka records.
    """
    try:
        return _load_data(paths, model_channels, invalid_lines, out_of_order_rows)
    except ValueError as by_name:
        series_list = _load_data(paths, invalid_lines=invalid_lines, out_of_order_rows=out_of_order_rows)
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


class InvalidLines:
    """Dead-letter entries of the data-file lines that ``replay`` skipped as invalid.

    These are invalid lines of JSON-lines files and CSV rows with an invalid value. An entry
    has the fields of the daemon's dead letters, with ``topic`` the file path, ``partition`` 0
    and ``offset`` the line number, counted from 1 (a CSV header is line 1).
    """

    # At most this many invalid lines are logged one by one; the count covers all of them.
    max_logged = 10

    def __init__(self) -> None:
        # Keyed by (path, line number), because a file can be read twice (see _load_model_data).
        self.entries: dict[tuple[str, int], dict] = {}

    def handler(self, path):
        """Return the ``on_invalid_line(line_number, line, error)`` callback of the loader for ``path``."""
        return lambda line_number, line, error: self.add(str(path), line_number, line, error)

    def add(self, path: str, line_number: int, line: str, error: ValueError) -> None:
        if (path, line_number) in self.entries:
            return
        text = line.rstrip("\r\n")
        # A CSV row comes with the reason of its value. A JSON line is decoded again as a Kafka record.
        reason = error.reason if isinstance(error, InvalidRecord) else _invalid_line_reason(path, text)
        entry = _file_dead_letter(path, line_number, text, reason, str(error))
        self.entries[(path, line_number)] = entry
        if len(self.entries) <= self.max_logged:
            logger.warning("skipping invalid line: file=%s line=%d reason=%s: %s", path, line_number, entry["reason"], error)
        elif len(self.entries) == self.max_logged + 1:
            logger.warning("more invalid lines are skipped without a log line each; the final summary counts them")


def _file_dead_letter(path: str, line_number: int, text: str, reason: str, message: str) -> dict:
    """Return the dead-letter entry of a data-file line: topic the path, partition 0, offset the line number."""
    position = SimpleNamespace(topic=path, partition=0, offset=line_number, raw=text.encode("utf-8", "surrogateescape"))
    return dead_letter_entry(position, reason, message)


def _invalid_line_reason(path: str, text: str) -> str:
    """Return the daemon's dead-letter reason for a line that the file loader rejected.

    The line is decoded as a Kafka record would be, with the file name as the default
    series, as in the loader. A line that decodes is valid alone, so the loader rejected it
    because its channel count differs from earlier lines of its series.
    """
    try:
        value = json.loads(text)
    except ValueError:
        return "invalid_json"
    if not isinstance(value, dict):
        return "not_object"
    value.setdefault("series", Path(path).stem)
    try:
        decode_record(value)
    except InvalidRecord as invalid:
        return invalid.reason
    return "wrong_channel_count"


class OutOfOrderRows:
    """Rows that the file loader dropped in ``replay`` because of their timestamps, as dead-letter entries.

    An entry has the fields of the daemon's dead letters, with ``topic`` the file path,
    ``partition`` 0 and ``offset`` the line number, counted from 1, as in :class:`InvalidLines`.
    Its reason is ``duplicate_timestamp`` or ``timestamp_not_increasing``.
    """

    def __init__(self) -> None:
        # Keyed by (path, line number), because a file can be read twice (see _load_model_data).
        self.entries: dict[tuple[str, int], dict] = {}

    def handler(self, path):
        """Return the ``on_out_of_order(row)`` callback of the loader for ``path``."""
        return lambda row: self.add(str(path), row)

    def add(self, path: str, row: OutOfOrderRow) -> None:
        if (path, row.line_number) in self.entries:
            return
        # The engine gives the same reasons, comparing with the last timestamp it accepted for the series.
        reason = "duplicate_timestamp" if row.timestamp == row.latest_timestamp else "timestamp_not_increasing"
        detail = (
            f"{path}, line {row.line_number}: series {row.series_id!r}: timestamp "
            f"{format_timestamp(row.timestamp, True)} is not after the latest earlier timestamp "
            f"{format_timestamp(row.latest_timestamp, True)}"
        )
        self.entries[(path, row.line_number)] = _file_dead_letter(path, row.line_number, row.line, reason, detail)

    def reason_counts(self) -> Counter:
        """Return the number of entries per reason."""
        return Counter(entry["reason"] for entry in self.entries.values())


def _loader_dead_letters(paths, invalid_lines: InvalidLines, out_of_order_rows: OutOfOrderRows) -> list[dict]:
    """Return the dead-letter entries of the loader in the order of the data files and their lines."""
    file_order = {}
    for path in paths:
        file_order.setdefault(str(path), len(file_order))
    entries = list(invalid_lines.entries.values()) + list(out_of_order_rows.entries.values())
    return sorted(entries, key=lambda entry: (file_order[entry["topic"]], entry["offset"]))


def replay(args) -> int:
    """Replay ``--data`` through the engine; write the scores CSV and the alerts file."""
    from connectors.files import FileReplaySource, JsonLinesSink, ScoresCsvWriter

    check_output_paths(args)
    bundle = load_bundle(args.model)
    invalid_lines = InvalidLines()
    out_of_order_rows = OutOfOrderRows()
    series_list = _load_model_data(args.data, bundle.channels, invalid_lines, out_of_order_rows)
    has_clock = all(series.has_clock for series in series_list)
    if has_clock:
        for series in series_list:
            warn_if_epoch_seconds(series.series_id, int(series.timestamps[0]))
    # --dead-letter starts with the loader's invalid lines and out-of-order rows, by file and
    # line. Records that the engine rejects (e.g. value_out_of_range) follow, with the series
    # id as topic and the row of the series as offset.
    dead_letters = JsonLinesSink(args.dead_letter, append=False) if args.dead_letter else None
    if dead_letters is not None:
        dead_letters.send(_loader_dead_letters(args.data, invalid_lines, out_of_order_rows))
        dead_letters.flush()
    engine = StreamEngine(bundle, _engine_config(args, has_clock))
    writer = ScoresCsvWriter(args.scores, has_clock)
    alerts = JsonLinesSink(args.alerts, append=False)
    try:
        source = FileReplaySource(series_list, speed=args.speed)
        stats = run_stream(
            engine,
            source,
            [alerts],
            dead_letter_sinks=[dead_letters] if dead_letters is not None else [],
            until=lambda: source.exhausted,
            on_points=writer.write,
        )
    finally:
        writer.close()
        alerts.close()
        if dead_letters is not None:
            dead_letters.close()
    skipped = engine.stats["windows_skipped_gap"]
    invalid_destination = f"written to {args.dead_letter}" if args.dead_letter else "logged only, see --dead-letter"
    print(
        f"replayed {stats.messages} records: {stats.points} windows scored, {skipped} skipped for gaps, "
        f"{engine.stats['alerts']} alerting windows, {stats.events} incident events, "
        f"{len(invalid_lines.entries)} invalid lines skipped ({invalid_destination}); scores in {args.scores}, "
        f"alerts in {args.alerts}"
    )
    rejected = Counter(stats.dead_letters) + out_of_order_rows.reason_counts()
    for reason, count in sorted(rejected.items()):
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
    """Set ``stop`` on SIGINT or SIGTERM, and log only the first of these signals.

    One stop request can arrive as two signals: coreutils ``timeout`` sends SIGTERM to the
    child and then to its whole process group, which contains the child too.
    """

    def handle(signum, frame):
        name = signal.Signals(signum).name
        if stop.is_set():
            logger.debug("received %s again; already stopping", name)
            return
        logger.info("received %s; finishing the batch, then committing and stopping", name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def _build_metrics(args, engine):
    """Return the daemon's metrics and its started status server, or ``(None, None)`` without ``--metrics-port``."""
    from connectors.http_status import StatusServer
    from streamad.metrics import CONTENT_TYPE, DaemonMetrics

    max_stall_s = _check_metrics_options(args)
    if args.metrics_port == 0:
        return None, None
    metrics = DaemonMetrics(max_stall_s)
    metrics.set_model(engine.bundle.version, engine.bundle.path)
    server = StatusServer(args.metrics_address, args.metrics_port, metrics.render, metrics.health, CONTENT_TYPE)
    return metrics, server.start()


def _check_metrics_options(args) -> float:
    """Raise UsageError or ValueError on an invalid metrics option; return the health check's stall limit in seconds."""
    from connectors.http_status import check_listen_address

    max_stall_s = args.health_max_stall_s
    if max_stall_s is None:
        max_stall_s = args.max_poll_interval_ms / 1000.0
    if not max_stall_s > 0:
        raise UsageError(f"--health-max-stall-s {max_stall_s} is invalid; use seconds > 0")
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port {args.metrics_port} is invalid; use a TCP port in 1-65535, or 0 for no server")
    check_listen_address(args.metrics_address, args.metrics_allow_remote)
    return max_stall_s


def check_run_options(args) -> None:
    """Raise UsageError or ValueError on an out-of-range option of ``run`` that no other check covers.

    It connects to nothing, so ``streamad config check`` uses it too.
    """
    check_finite_options(args)
    check_output_paths(args)
    _alert_options(args)
    check_max_in_flight(args.max_in_flight)
    _check_metrics_options(args)
    if args.reload_interval_s < 0:
        raise UsageError(f"--reload-interval-s {args.reload_interval_s} is invalid; use seconds > 0, or 0 to disable reloading")
    if args.alertmanager:
        if not args.alertmanager.startswith(("http://", "https://")):
            raise UsageError(f"--alertmanager {args.alertmanager!r} is invalid; use the http:// or https:// base URL of Alertmanager")
        for flag, value in (("--alertmanager-resend-s", args.alertmanager_resend_s), ("--alertmanager-timeout-s", args.alertmanager_timeout_s)):
            if not value > 0:
                raise UsageError(f"{flag} {value!r} is invalid; use a positive number of seconds")


def check_finite_options(args) -> None:
    """Raise UsageError on an option that is an infinite or NaN number, e.g. ``--webhook-timeout inf``.

    argparse's ``float`` accepts ``inf`` and ``nan``, and every float option of ``run`` is a
    number of seconds, a probability or a level, for which neither makes sense.
    """
    for dest, value in sorted(vars(args).items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{dest.replace('_', '-')} {value!r} is invalid; use a finite number")


# Output files of ``run`` and ``replay`` that must each have a path of their own, in the order of the messages.
OUTPUT_FILE_OPTIONS = ("alerts", "scores", "dead_letter", "outbox")


def check_output_paths(args) -> None:
    """Raise UsageError when two of --alerts, --scores, --dead-letter and --outbox resolve to the same file.

    Paths that exist and are not regular files, such as ``/dev/null``, may be shared.
    """
    seen: dict[Path, str] = {}
    for dest in OUTPUT_FILE_OPTIONS:
        path = getattr(args, dest, None)
        if not path:
            continue
        resolved = Path(path).resolve()
        if resolved.exists() and not resolved.is_file():
            continue
        if resolved in seen:
            raise UsageError(
                f"--{seen[resolved].replace('_', '-')} and --{dest.replace('_', '-')} are the same file {str(path)!r}; "
                "give them different paths"
            )
        seen[resolved] = dest


def _build_reloader(args, engine, metrics):
    """Return the model reloader when ``--model`` is a directory of versions and ``--reload-interval-s`` > 0, else None."""
    from streamad.bundle import is_version_directory
    from streamad.engine.reload import BundleReloader

    if args.reload_interval_s < 0:
        raise UsageError(f"--reload-interval-s {args.reload_interval_s} is invalid; use seconds > 0, or 0 to disable reloading")
    if args.reload_interval_s == 0 or not is_version_directory(args.model):
        return None
    logger.info("checking %s for a new model version every %g s", args.model, args.reload_interval_s)
    on_result = None if metrics is None else metrics.count_reload
    return BundleReloader(engine, args.model, args.reload_interval_s, on_result=on_result)


def check_max_in_flight(value) -> None:
    """Raise UsageError when ``--max-in-flight`` is not a positive number of events."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--max-in-flight {value!r} is invalid; use a number of events >= 1, e.g. 10000")


def run(args) -> int:
    """Run the Kafka consumer daemon until SIGINT or SIGTERM."""
    from streamad.cli.daemon import build_checkpointer, build_daemon, check_checkpoint_options, close_checkpointer, source_config
    from streamad.cli.daemon import connect_restored_incidents

    check_run_options(args)
    # Both raise on an invalid Kafka option before anything connects.
    check_checkpoint_options(args)
    source_config(args)
    bundle = load_bundle(args.model)
    engine = StreamEngine(bundle, _engine_config(args, has_clock=True))
    # Created first, so that SIGTERM also ends the Kafka retries during a broker outage.
    stop = threading.Event()
    _install_stop_handlers(stop)
    checkpointer = build_checkpointer(args, engine, stop)
    metrics, status_server = _build_metrics(args, engine)
    reloader = _build_reloader(args, engine, metrics)
    source, alert_sinks, dead_letter_sinks, point_sinks = build_daemon(args, stop)
    connect_restored_incidents(checkpointer, alert_sinks)
    logger.info("consuming %s as group %s with model %s", ",".join(args.topic), args.group_id, bundle.version)
    try:
        stats = run_stream(
            engine, source, alert_sinks,
            dead_letter_sinks=dead_letter_sinks, point_sinks=point_sinks, stop=stop, checkpointer=checkpointer,
            metrics=metrics, reloader=reloader, max_in_flight=args.max_in_flight,
        )
    finally:
        source.close()
        for sink in alert_sinks + dead_letter_sinks + point_sinks:
            sink.close()
        if status_server is not None:
            status_server.close()
        close_checkpointer(checkpointer)
    logger.info(
        "stopped after %d records: %d windows scored, %d events, dead letters %s, %d backpressure pauses",
        stats.messages, stats.points, stats.events, dict(stats.dead_letters), stats.pauses,
    )
    return 0


def demo(args) -> int:
    """Run the water-flow demo end to end."""
    from streamad.cli.demo import run_demo

    return run_demo(args)

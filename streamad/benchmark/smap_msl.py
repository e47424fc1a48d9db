"""Run the detector over NASA SMAP/MSL channels and measure every score against the labels.

The data folder is laid out as the telemanom project publishes it: ``train/<channel>.npy``
and ``test/<channel>.npy`` arrays shaped (time, features), and ``labeled_anomalies.csv``
with the anomalous index ranges of each test array. Column 0 is the telemetry value and the
other columns are one-hot command flags.

Only the telemetry value is modelled by default. The labels mark anomalies of that value,
and telemanom itself predicts only column 0 (``telemanom/channel.py``, khundman/telemanom).
Most command columns are constant in the training arrays, so a model of all columns
learns a tiny noise variance for them and scores every command sent during the test
period as a large anomaly.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from streamad.benchmark.errors import BenchmarkInputError
from streamad.benchmark.report import environment, format_table, summarize_by_score, write_csv, write_json
from streamad.benchmark.scoring import detection_metrics, replay_scores
from streamad.evaluation import load_labels
from streamad.scores import SCORE_NAMES
from streamad.training import TrainConfig, train_bundle

logger = logging.getLogger(__name__)

LABELS_FILE = "labeled_anomalies.csv"
TELEMETRY_CHANNEL = "0"
REPORT_COLUMNS = (
    "channel",
    "spacecraft",
    "score",
    "modelled_channels",
    "test_points",
    "anomalous_points",
    "events",
    "detected_events",
    "alert_runs",
    "false_positive_runs",
    "alert_fraction",
    "event_precision",
    "event_recall",
    "event_f1",
    "best_point_f1",
    "roc_auc",
    "pr_auc",
    "best_epoch",
    "epochs_run",
    "validation_log_likelihood_per_step",
    "train_seconds",
    "score_seconds",
)


@dataclass
class SmapMslOptions:
    """Settings of a SMAP/MSL run.

    Attributes
    ----------
    train
        Training hyper-parameters; every channel gets its own model.
    score_names
        Scores to evaluate, all replayed in one pass per channel.
    level
        Quantile level of the engine's adaptive threshold, which sets the alerts behind
        the event metrics.
    telemetry_only
        Model column 0 only (True) or all columns (False).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    score_names: tuple[str, ...] = SCORE_NAMES
    level: float = 0.999
    telemetry_only: bool = True


def available_channels(data_dir: Path) -> list[str]:
    """Return the channels that have both a ``train/`` and a ``test/`` array, sorted."""
    train = {path.stem for path in (data_dir / "train").glob("*.npy")}
    test = {path.stem for path in (data_dir / "test").glob("*.npy")}
    return sorted(train & test)


def check_channels(data_dir: Path, requested: Sequence[str] | None) -> list[str]:
    """Return the channels to run, checking the folder layout and that each requested channel exists."""
    if not (data_dir / LABELS_FILE).is_file():
        raise BenchmarkInputError(
            f"{data_dir / LABELS_FILE} not found; pass the SMAP/MSL folder that contains train/, test/ and {LABELS_FILE}"
        )
    available = available_channels(data_dir)
    if not available:
        raise BenchmarkInputError(f"no channel in {data_dir} has both train/<channel>.npy and test/<channel>.npy")
    if not requested:
        return available
    missing = [channel for channel in requested if channel not in available]
    if missing:
        raise BenchmarkInputError(f"channel(s) {missing} not found in {data_dir}; available channels: {', '.join(available)}")
    return list(requested)


def spacecraft_of(data_dir: Path) -> dict[str, str]:
    """Return the ``spacecraft`` column of ``labeled_anomalies.csv`` by ``chan_id``."""
    with open(data_dir / LABELS_FILE, newline="", encoding="utf-8") as handle:
        return {row["chan_id"].strip(): row.get("spacecraft", "").strip() for row in csv.DictReader(handle)}


def run_smap_msl(data_dir: Path, channels: Sequence[str] | None, options: SmapMslOptions, out_dir: Path | None) -> dict:
    """Benchmark each channel, and write ``smap_msl.csv`` and ``smap_msl.json`` to ``out_dir`` when given.

    Returns the report document. For each channel and score it contains the event-level
    precision, recall and F1 of the engine's alerts, and the best point-wise F1, ROC-AUC
    and PR-AUC of the raw score over the whole test array. For each score it contains the
    means over channels and the pooled event counts.
    """
    from connectors.files import load_file_series

    selected = check_channels(data_dir, channels)
    spacecraft = spacecraft_of(data_dir)
    modelled = [TELEMETRY_CHANNEL] if options.telemetry_only else None
    labels_path = data_dir / LABELS_FILE
    logger.info("SMAP/MSL benchmark: channels %s, scores %s", ", ".join(selected), ", ".join(options.score_names))

    started = time.perf_counter()
    rows: list[dict] = []
    for position, channel in enumerate(selected, start=1):
        (train_series,) = load_file_series(data_dir / "train" / f"{channel}.npy", channels=modelled)
        test_path = data_dir / "test" / f"{channel}.npy"
        (test_series,) = load_file_series(test_path, channels=modelled)
        labels = load_labels(labels_path, test_path, test_series)

        train_started = time.perf_counter()
        bundle = train_bundle([train_series], options.train, train_fraction=1.0, progress=False)
        train_seconds = time.perf_counter() - train_started
        scored = replay_scores(bundle, test_series, options.score_names, level=options.level, seed=options.train.seed)

        metadata = bundle.metadata
        every_row = np.ones(len(test_series), dtype=bool)
        for name in options.score_names:
            metrics = detection_metrics(scored[name], labels, every_row)
            rows.append(
                {
                    "channel": channel,
                    "spacecraft": spacecraft.get(channel, ""),
                    "score": name,
                    "modelled_channels": len(test_series.channels),
                    "test_points": len(test_series),
                    "best_epoch": metadata["best_epoch"],
                    "epochs_run": metadata["epochs_run"],
                    "validation_log_likelihood_per_step": metadata["validation_log_likelihood_per_step"],
                    "train_seconds": round(train_seconds, 2),
                    "score_seconds": round(scored[name].seconds, 2),
                    **metrics,
                }
            )
        channel_rows = rows[-len(options.score_names) :]
        logger.info(
            "[%d/%d] %s: trained on %d rows in %.1f s (best epoch %d of %d), scored %d rows in %.1f s; event F1 %s",
            position,
            len(selected),
            channel,
            len(train_series),
            train_seconds,
            metadata["best_epoch"],
            metadata["epochs_run"],
            len(test_series),
            sum(row["score_seconds"] for row in channel_rows),
            " ".join(f"{row['score']} {row['event_f1']:.3f}" for row in channel_rows),
        )

    document = {
        "benchmark": "smap-msl",
        "data": str(data_dir),
        "environment": environment(),
        "options": {
            "train": asdict(options.train),
            "score_names": list(options.score_names),
            "level": options.level,
            "telemetry_only": options.telemetry_only,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summarize_by_score(rows, options.score_names),
        "channels": rows,
    }
    if out_dir is not None:
        write_csv(out_dir / "smap_msl.csv", rows, REPORT_COLUMNS)
        write_json(out_dir / "smap_msl.json", document)
    return document


def format_report(document: dict) -> str:
    """Format a report from :func:`run_smap_msl` as one table per score, with the mean and pooled rows.

    ``alerting`` is the share of test rows that alert.
    """
    headers = ("channel", "events", "detected", "false pos.", "alerting", "event P", "event R", "event F1", "best F1", "ROC-AUC", "PR-AUC")
    blocks = []
    for name, summary in document["summary"].items():
        table_rows = [
            (
                row["channel"],
                row["events"],
                row["detected_events"],
                row["false_positive_runs"],
                row["alert_fraction"],
                row["event_precision"],
                row["event_recall"],
                row["event_f1"],
                row["best_point_f1"],
                row["roc_auc"],
                row["pr_auc"],
            )
            for row in document["channels"]
            if row["score"] == name
        ]
        pooled = summary["pooled_events"]
        table_rows.append(
            (
                "mean",
                "",
                "",
                "",
                summary["mean_alert_fraction"],
                summary["mean_event_precision"],
                summary["mean_event_recall"],
                summary["mean_event_f1"],
                summary["mean_best_point_f1"],
                summary["mean_roc_auc"],
                summary["mean_pr_auc"],
            )
        )
        table_rows.append(
            ("pooled", pooled["events"], pooled["detected_events"], pooled["false_positive_runs"], "", pooled["precision"], pooled["recall"], pooled["f1"], "", "", "")
        )
        blocks.append(f"score {name} (scoring {summary['score_seconds']:.1f} s)\n" + format_table(headers, table_rows))
    return "\n\n".join(blocks)

"""Run the detector over NAB data files and write NAB's results format.

For every file, a model is trained on NAB's probationary period and the whole file is
streamed through one engine per score. Each score's ``anomaly_probability`` is written to
``<results>/<detector>/<category>/<detector>_<file>.csv`` with the columns
``timestamp,value,anomaly_score,label``. The file has one line per row of the input file,
because NAB's scorer (``run.py --optimize --score --normalize`` in numenta/NAB) matches
results to labels by position.

NAB's probationary period has ``min(floor(0.15 · rows), 0.15 · 5000)`` rows, as
``getProbationPeriod`` in NAB's ``nab/util.py`` defines it. NAB's scorer ignores detections
inside it and scores everything after it, so training on more than that period would score
rows the model was fitted on.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from streamad.benchmark.errors import BenchmarkInputError
from streamad.benchmark.report import environment, format_table, summarize_by_score, write_csv, write_json
from streamad.benchmark.scoring import ScoredRows, detection_metrics, replay_scores
from streamad.bundle import save_bundle
from streamad.data import parse_timestamp
from streamad.evaluation import load_labels
from streamad.training import TrainConfig, train_bundle

logger = logging.getLogger(__name__)

PROBATIONARY_PERCENT = 0.15
PROBATIONARY_LIMIT_ROWS = int(PROBATIONARY_PERCENT * 5000)
RESULTS_COLUMNS = ("timestamp", "value", "anomaly_score", "label")
SUMMARY_COLUMNS = (
    "file",
    "score",
    "detector",
    "rows",
    "dropped_rows",
    "probationary_rows",
    "train_rows",
    "points",
    "anomalous_points",
    "roc_auc",
    "pr_auc",
    "best_point_f1",
    "alert_fraction",
    "event_precision",
    "event_recall",
    "event_f1",
    "events",
    "detected_events",
    "alert_runs",
    "false_positive_runs",
    "best_epoch",
    "epochs_run",
    "validation_log_likelihood_per_step",
    "train_seconds",
    "score_seconds",
)
# NAB's normalisation step takes the detector name from the results file name by splitting
# at the first "_" and ".", so the name must contain neither.
_DETECTOR_NAME = re.compile(r"^[A-Za-z0-9-]+$")


def probationary_rows(row_count: int) -> int:
    """Return the length of NAB's probationary period for a file of ``row_count`` rows."""
    return int(min(math.floor(PROBATIONARY_PERCENT * row_count), PROBATIONARY_LIMIT_ROWS))


def detector_name(score: str) -> str:
    """Return the default NAB detector name of a score, e.g. ``streamadLikelihood``."""
    return "streamad" + score[:1].upper() + score[1:]


def check_detector_name(name: str) -> str:
    """Return ``name`` if NAB's scorer can parse it back from its results file names, else raise."""
    if not _DETECTOR_NAME.match(name):
        raise BenchmarkInputError(
            f"detector name {name!r} is invalid; use letters, digits and '-' only, because NAB's scorer "
            "splits results file names at '_' and '.' to find the detector"
        )
    return name


@dataclass
class NabFile:
    """A NAB data file and its key, ``<category>/<name>.csv``, in the label table and results tree."""

    key: str
    path: Path

    @property
    def category(self) -> str:
        return self.key.split("/")[0]

    @property
    def name(self) -> str:
        return self.key.split("/")[1]


@dataclass
class NabRows:
    """Every row of a NAB CSV file in file order, with the timestamp and value text as written."""

    timestamp_text: list[str]
    value_text: list[str]
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamp_text)

    def in_order(self) -> np.ndarray:
        """Return a mask of the rows whose timestamp is after every earlier row's.

        These are the rows that ``load_file_series(path, out_of_order="drop")`` keeps.
        """
        if len(self.timestamps) == 0:
            return np.zeros(0, dtype=bool)
        latest_before = np.maximum.accumulate(self.timestamps)[:-1]
        return np.concatenate(([True], self.timestamps[1:] > latest_before))


@dataclass
class NabOptions:
    """Settings of a NAB run.

    Attributes
    ----------
    train
        Training hyper-parameters; every file gets its own model.
    detectors
        Score name to NAB detector name; one results tree is written per score.
    level
        Quantile level of the engine's adaptive threshold, which sets the alerts behind
        the event metrics. NAB's scorer ignores alerts and sweeps its own threshold.
    cap_probation
        True (NAB's rule) to train on the probationary period of at most 750 rows; False
        to train on the first 15 % of every file, which for files over 5000 rows includes
        rows that NAB's scorer scores.
    models_dir
        Where to save each file's model bundle, or None to keep none.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    detectors: dict[str, str] = field(default_factory=lambda: {"likelihood": detector_name("likelihood")})
    level: float = 0.999
    cap_probation: bool = True
    models_dir: Path | None = None


def load_windows(labels_path: Path) -> dict:
    """Read NAB's ``combined_windows.json``: ``{"<category>/<name>.csv": [[start, end], ...]}``."""
    if not labels_path.is_file():
        raise BenchmarkInputError(f"label file {str(labels_path)!r} not found; pass NAB's labels/combined_windows.json with --labels")
    try:
        table = json.loads(labels_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BenchmarkInputError(f"{labels_path} is not valid JSON ({error}); pass NAB's labels/combined_windows.json") from None
    if not isinstance(table, dict):
        raise BenchmarkInputError(f"{labels_path} contains a JSON {type(table).__name__}; NAB's label windows are an object keyed by file")
    return table


def find_nab_files(data_dir: Path, windows: dict, patterns: Sequence[str] | None = None) -> list[NabFile]:
    """List the CSV files under ``data_dir/<category>/`` that have label windows, sorted by key.

    ``patterns`` are shell-style patterns matched against the key, e.g.
    ``realKnownCause/*``; a file is kept when any pattern matches. Files without an entry in
    ``windows`` are skipped with a warning, because NAB's scorer cannot score them.
    """
    if not data_dir.is_dir():
        raise BenchmarkInputError(f"NAB data folder {str(data_dir)!r} not found; pass the 'data' folder of NAB, which contains one folder per category")
    files = []
    for path in sorted(data_dir.glob("*/*.csv")):
        key = f"{path.parent.name}/{path.name}"
        if patterns and not any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            continue
        if key not in windows:
            logger.warning("skipping %s: the label file has no entry %r", path, key)
            continue
        files.append(NabFile(key, path))
    if not files:
        selection = f" matching {list(patterns)}" if patterns else ""
        raise BenchmarkInputError(
            f"no labelled NAB files{selection} in {data_dir}; expected <category>/<name>.csv files with an entry in the label file"
        )
    return files


def read_nab_rows(path: Path) -> NabRows:
    """Read the ``timestamp`` and ``value`` text of every row, including rows out of time order."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in ("timestamp", "value") if name not in header]
        if missing:
            raise BenchmarkInputError(f"{path} has no column(s) {missing}; NAB data files have the header 'timestamp,value'")
        time_column = header.index("timestamp")
        value_column = header.index("value")
        timestamp_text, value_text = [], []
        for row in reader:
            if not row:
                continue
            timestamp_text.append(row[time_column].strip())
            value_text.append(row[value_column].strip())
    timestamps = np.array([parse_timestamp(text) for text in timestamp_text], dtype=np.int64)
    return NabRows(timestamp_text, value_text, timestamps)


def window_labels(timestamps: np.ndarray, windows: list, where: str) -> np.ndarray:
    """Label each timestamp 1 when it lies in a ``[start, end]`` window, ends included, as NAB's labeler does."""
    labels = np.zeros(len(timestamps), dtype=np.int8)
    for entry in windows:
        if not (isinstance(entry, list) and len(entry) == 2):
            raise BenchmarkInputError(f"{where}: window {entry!r} is not a [start, end] pair")
        start, end = (parse_timestamp(bound) for bound in entry)
        labels[(timestamps >= start) & (timestamps <= end)] = 1
    return labels


def results_path(results_dir: Path, detector: str, key: str) -> Path:
    """Return NAB's results file path, ``<results>/<detector>/<category>/<detector>_<file>.csv``."""
    category, name = key.split("/")
    return results_dir / detector / category / f"{detector}_{name}"


def write_results_file(path: Path, rows: NabRows, anomaly_score: np.ndarray, labels: np.ndarray) -> None:
    """Write one NAB results file with a line per input row.

    ``anomaly_score`` has one value per input row. NaN, for rows without a scored window or
    dropped as out of order, is written as 0.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(RESULTS_COLUMNS)
        for row in range(len(rows)):
            score = anomaly_score[row]
            writer.writerow(
                (rows.timestamp_text[row], rows.value_text[row], "0" if np.isnan(score) else repr(float(score)), int(labels[row]))
            )


def run_nab(
    data_dir: Path,
    labels_path: Path,
    results_dir: Path,
    options: NabOptions,
    patterns: Sequence[str] | None = None,
) -> dict:
    """Benchmark every labelled NAB file, writing the results trees, ``summary.csv`` and ``summary.json``.

    Returns the summary document that is also written to ``results_dir/summary.json``.
    """
    for detector in options.detectors.values():
        check_detector_name(detector)
    windows = load_windows(labels_path)
    files = find_nab_files(data_dir, windows, patterns)
    score_names = tuple(options.detectors)
    logger.info("NAB benchmark: %d files, scores %s, results in %s", len(files), ", ".join(score_names), results_dir)

    started = time.perf_counter()
    rows: list[dict] = []
    for position, nab_file in enumerate(files, start=1):
        file_rows = run_nab_file(nab_file, windows[nab_file.key], labels_path, results_dir, options)
        rows.extend(file_rows)
        _log_file(position, len(files), nab_file, file_rows)
    seconds = time.perf_counter() - started

    document = {
        "benchmark": "nab",
        "data": str(data_dir),
        "labels": str(labels_path),
        "environment": environment(),
        "options": {
            "train": asdict(options.train),
            "detectors": options.detectors,
            "level": options.level,
            "cap_probation": options.cap_probation,
        },
        "seconds": round(seconds, 1),
        "summary": summarize_by_score(rows, score_names),
        "files": rows,
    }
    write_csv(results_dir / "summary.csv", rows, SUMMARY_COLUMNS)
    write_json(results_dir / "summary.json", document)
    return document


def run_nab_file(nab_file: NabFile, windows: list, labels_path: Path, results_dir: Path, options: NabOptions) -> list[dict]:
    """Train on one file's probationary period, replay the file and write its results files.

    Returns one summary row per score.
    """
    from connectors.files import load_file_series

    (series,) = load_file_series(nab_file.path, out_of_order="drop")
    rows = read_nab_rows(nab_file.path)
    in_order = rows.in_order()
    if not np.array_equal(rows.timestamps[in_order], series.timestamps):
        raise BenchmarkInputError(
            f"{nab_file.path}: the rows kept by the loader differ from the rows in time order; "
            "check that the file has one 'timestamp' column in YYYY-MM-DD HH:MM:SS form"
        )
    original_row = np.flatnonzero(in_order)

    probation = probationary_rows(len(rows))
    train_until = probation if options.cap_probation else int(math.floor(PROBATIONARY_PERCENT * len(rows)))
    train_rows = int(np.count_nonzero(original_row < train_until))

    train_started = time.perf_counter()
    try:
        bundle = train_bundle([series.slice(0, train_rows)], options.train, train_fraction=1.0, progress=False)
    except ValueError as error:
        raise BenchmarkInputError(f"{nab_file.key}: training on its first {train_rows} rows failed: {error}") from None
    train_seconds = time.perf_counter() - train_started
    if options.models_dir is not None:
        save_bundle(bundle, options.models_dir / nab_file.category / Path(nab_file.name).stem)

    scored = replay_scores(bundle, series, tuple(options.detectors), level=options.level, seed=options.train.seed)

    labels = window_labels(rows.timestamps, windows, f"{labels_path}, entry {nab_file.key!r}")
    series_labels = load_labels(labels_path, nab_file.path, series)
    evaluated = original_row >= train_until

    metadata = bundle.metadata
    common = {
        "file": nab_file.key,
        "rows": len(rows),
        "dropped_rows": int(len(rows) - len(series)),
        "probationary_rows": probation,
        "train_rows": train_rows,
        "best_epoch": metadata["best_epoch"],
        "epochs_run": metadata["epochs_run"],
        "validation_log_likelihood_per_step": metadata["validation_log_likelihood_per_step"],
        "train_seconds": round(train_seconds, 2),
    }
    result_rows = []
    for name, detector in options.detectors.items():
        write_results_file(
            results_path(results_dir, detector, nab_file.key), rows, _per_input_row(scored[name], original_row, len(rows)), labels
        )
        result_rows.append(
            {
                **common,
                "score": name,
                "detector": detector,
                "score_seconds": round(scored[name].seconds, 2),
                **detection_metrics(scored[name], series_labels, evaluated),
            }
        )
    return result_rows


def _per_input_row(scored: ScoredRows, original_row: np.ndarray, row_count: int) -> np.ndarray:
    """Spread the probabilities of the loaded rows over all input rows, with NaN for dropped rows."""
    probability = np.full(row_count, np.nan)
    probability[original_row] = scored.probability
    return probability


def _log_file(position: int, total: int, nab_file: NabFile, rows: list[dict]) -> None:
    first = rows[0]
    roc = " ".join(f"{row['score']} {row['roc_auc']:.3f}" for row in rows)
    logger.info(
        "[%d/%d] %s: %d rows (%d out of order), trained on %d rows in %.1f s (best epoch %d of %d), "
        "scored in %.1f s; ROC-AUC %s",
        position,
        total,
        nab_file.key,
        first["rows"],
        first["dropped_rows"],
        first["train_rows"],
        first["train_seconds"],
        first["best_epoch"],
        first["epochs_run"],
        sum(row["score_seconds"] for row in rows),
        roc,
    )


def format_summary(document: dict) -> str:
    """Format the summary of :func:`run_nab` as a table with one line per score.

    The means are over the files where a metric is defined, with that number of files in
    brackets. ``alerting`` is the mean share of rows that alert. The pooled event columns
    sum events and false-alarm runs over all files.
    """
    headers = ("score", "detector", "ROC-AUC", "PR-AUC", "best F1", "event F1", "alerting", "pooled P", "pooled R", "pooled F1", "scoring s")
    table_rows = []
    for name, summary in document["summary"].items():
        pooled = summary["pooled_events"]
        table_rows.append(
            (
                name,
                document["options"]["detectors"][name],
                f"{summary['mean_roc_auc']:.3f} ({summary['count_roc_auc']})",
                f"{summary['mean_pr_auc']:.3f} ({summary['count_pr_auc']})",
                f"{summary['mean_best_point_f1']:.3f} ({summary['count_best_point_f1']})",
                f"{summary['mean_event_f1']:.3f} ({summary['count_event_f1']})",
                summary["mean_alert_fraction"],
                pooled["precision"],
                pooled["recall"],
                pooled["f1"],
                summary["score_seconds"],
            )
        )
    return format_table(headers, table_rows)

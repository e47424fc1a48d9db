"""Aggregate per-file benchmark metrics, print them as tables and write CSV and JSON."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from streamad.benchmark.scoring import EVENT_COUNT_KEYS

METRIC_KEYS = ("roc_auc", "pr_auc", "best_point_f1", "event_precision", "event_recall", "event_f1", "alert_fraction")


def pooled_event_metrics(rows: Iterable[dict]) -> dict:
    """Sum the event counts of ``rows`` and compute precision, recall and F1 from the sums.

    Pooling weighs every event and every false-alarm run equally, whichever file it is in,
    so files without events (whose recall is undefined) still count their false alarms.
    """
    totals = dict.fromkeys(EVENT_COUNT_KEYS, 0)
    for row in rows:
        for key in EVENT_COUNT_KEYS:
            totals[key] += int(row[key])
    flagged = totals["detected_events"] + totals["false_positive_runs"]
    precision = totals["detected_events"] / flagged if flagged else math.nan
    recall = totals["detected_events"] / totals["events"] if totals["events"] else math.nan
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, **totals}


def summarize_by_score(rows: Sequence[dict], score_names: Sequence[str]) -> dict[str, dict]:
    """Return, per score, the mean of each metric over the rows where it is defined and the pooled events.

    ``mean_<metric>`` averages the finite values only, and ``count_<metric>`` is their
    number. ROC-AUC, PR-AUC and recall are undefined on a file without anomalies.
    """
    summary = {}
    for name in score_names:
        group = [row for row in rows if row["score"] == name]
        entry: dict = {"rows": len(group), "score_seconds": float(sum(row["score_seconds"] for row in group))}
        for key in METRIC_KEYS:
            values = [row[key] for row in group if _is_finite(row[key])]
            entry[f"mean_{key}"] = float(np.mean(values)) if values else math.nan
            entry[f"count_{key}"] = len(values)
        entry["pooled_events"] = pooled_event_metrics(group)
        summary[name] = entry
    return summary


def format_table(headers: Sequence[str], rows: Iterable[Sequence], digits: int = 3) -> str:
    """Format ``rows`` as a plain-text table: text left-aligned, numbers right-aligned, NaN as ``n/a``."""
    rows = [list(row) for row in rows]
    cells = [[_cell(value, digits) for value in row] for row in rows]
    widths = [max([len(header)] + [len(row[column]) for row in cells]) for column, header in enumerate(headers)]
    # A column of numbers, with blanks allowed, is right-aligned.
    numeric = [
        any(_is_number(row[column]) for row in rows) and all(_is_number(row[column]) or row[column] == "" for row in rows)
        for column in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [value.rjust(widths[column]) if numeric[column] else value.ljust(widths[column]) for column, value in enumerate(values)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths])] + [line(row) for row in cells])


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write ``rows`` with the given ``columns``, NaN as an empty field."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if _is_nan(row.get(column)) else row.get(column) for column in columns])


def write_json(path: Path, document: dict) -> None:
    """Write ``document`` as indented JSON with NaN as ``null``, which strict JSON parsers accept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_without_nan(document), indent=2) + "\n", encoding="utf-8")


def environment() -> dict:
    """Return the versions and hardware facts that a benchmark record needs."""
    import torch

    try:
        streamad_version = metadata.version("streamad-vae")
    except metadata.PackageNotFoundError:
        streamad_version = None
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "streamad": streamad_version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_nan(value) -> bool:
    return _is_number(value) and math.isnan(float(value))


def _is_finite(value) -> bool:
    return _is_number(value) and math.isfinite(float(value))


def _cell(value, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _without_nan(value):
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value

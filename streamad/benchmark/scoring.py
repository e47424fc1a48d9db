"""Replay a series once through one engine per score, and measure the result against labels."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from streamad.bundle import ModelBundle
from streamad.data import Series
from streamad.engine import EngineConfig, ScoredPoint, StreamEngine
from streamad.evaluation import best_f1, event_metrics, pr_auc, roc_auc
from streamad.replay import SeriesSource

logger = logging.getLogger(__name__)

EVENT_COUNT_KEYS = ("events", "detected_events", "alert_runs", "false_positive_runs")


@dataclass
class ScoredRows:
    """One score's engine output, aligned with the rows of the replayed series.

    Rows that no complete window ends at (the first ``L - 1`` rows and rows whose window
    was skipped for a gap) hold NaN in ``score`` and ``probability`` and False in ``alert``.

    Attributes
    ----------
    score
        float64 ``(T,)``: the raw score, higher is more anomalous.
    probability
        float64 ``(T,)``: the engine's calibrated ``anomaly_probability`` in [0, 1].
    alert
        bool ``(T,)``: whether the adaptive threshold raised an alert at the row.
    seconds
        Wall time spent in ``StreamEngine.process`` for this score.
    """

    score: np.ndarray
    probability: np.ndarray
    alert: np.ndarray
    seconds: float


def replay_scores(
    bundle: ModelBundle,
    series: Series,
    score_names: Sequence[str],
    level: float = 0.999,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, ScoredRows]:
    """Replay ``series`` through one :class:`StreamEngine` per score in a single pass.

    Each batch of rows is built once and handed to every engine, so the scores share the
    cost of reading and windowing, and each engine keeps its own threshold and incidents
    as ``streamad replay --score NAME`` does.
    """
    engines = {
        name: StreamEngine(
            bundle,
            EngineConfig(score=name, threshold_level=level, has_clock=series.has_clock, seed=seed),
        )
        for name in score_names
    }
    points: dict[str, list[ScoredPoint]] = {name: [] for name in score_names}
    seconds = dict.fromkeys(score_names, 0.0)
    rejected: Counter = Counter()

    source = SeriesSource([series], batch_size=batch_size)
    while not source.exhausted:
        records = [message.record for message in source.poll()]
        for name, engine in engines.items():
            started = time.perf_counter()
            result = engine.process(records)
            seconds[name] += time.perf_counter() - started
            points[name].extend(result.points)
            rejected.update(rejection.reason for rejection in result.rejected)
    if rejected:
        # A loaded Series has strictly increasing timestamps and one value per channel, so
        # the engines should reject nothing. Rejected rows would get no score, so log them.
        logger.warning("series %s: the engines rejected records: %s", series.series_id, dict(rejected))

    return {name: _align(series, points[name], seconds[name]) for name in score_names}


def _align(series: Series, points: list[ScoredPoint], seconds: float) -> ScoredRows:
    score = np.full(len(series), np.nan)
    probability = np.full(len(series), np.nan)
    alert = np.zeros(len(series), dtype=bool)
    if points:
        rows = np.searchsorted(series.timestamps, [point.timestamp for point in points])
        score[rows] = [point.score for point in points]
        probability[rows] = [point.anomaly_probability for point in points]
        alert[rows] = [point.is_alert for point in points]
    return ScoredRows(score, probability, alert, seconds)


def detection_metrics(scored: ScoredRows, labels: np.ndarray, evaluated: np.ndarray) -> dict:
    """Compute point-wise and event-level metrics over the ``evaluated`` rows with a score.

    ``roc_auc``, ``pr_auc`` and ``best_point_f1`` rank the raw scores. The ``event_*``
    metrics and counts come from the engine's alerts, as
    :func:`streamad.evaluation.event_metrics` defines them. A metric that is undefined on
    these rows (ROC-AUC without anomalous points, recall without events) is NaN.

    ``alert_fraction`` is the share of rows that alert. Read the event metrics with it,
    because one alert run over the whole series counts as a detection of every event it
    covers and as no false positive.
    """
    keep = evaluated & np.isfinite(scored.score)
    scores = scored.score[keep]
    truth = np.asarray(labels, dtype=bool)[keep]
    anomalous = int(truth.sum())

    alerts = scored.alert[keep]
    metrics: dict = {
        "points": int(keep.sum()),
        "anomalous_points": anomalous,
        "alert_fraction": float(alerts.mean()) if len(alerts) else math.nan,
    }
    if 0 < anomalous < len(truth):
        best = best_f1(scores, truth)
        metrics.update(
            roc_auc=roc_auc(scores, truth),
            pr_auc=pr_auc(scores, truth),
            best_point_f1=best["f1"],
            best_point_precision=best["precision"],
            best_point_recall=best["recall"],
        )
    else:
        metrics.update(
            roc_auc=math.nan, pr_auc=math.nan, best_point_f1=math.nan, best_point_precision=math.nan, best_point_recall=math.nan
        )

    events = event_metrics(alerts, truth)
    metrics.update(
        event_precision=events["precision"],
        event_recall=events["recall"],
        event_f1=events["f1"],
        **{key: events[key] for key in EVENT_COUNT_KEYS},
    )
    return metrics

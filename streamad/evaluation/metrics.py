"""Point-wise and event-wise detection metrics for anomaly scores and alerts.

The point-wise metrics (:func:`roc_auc`, :func:`pr_auc`, :func:`best_f1`) rank every time step
by its score. :func:`event_metrics` counts anomaly events and false alarms instead, because an
operator cares whether an incident raised an alert, not how many of its points did. There is
deliberately no point-adjusted F1. It counts every point of an event as detected once one
point is, so random scores can reach a high F1 on data with long events.

Higher scores mean more anomalous. NaN scores, such as those of the first ``L - 1`` steps that
no complete window covers, are left out together with their labels.

Examples
--------
>>> import numpy as np
>>> scores = np.array([0.1, 0.4, 0.35, 0.8])
>>> labels = np.array([False, False, True, True])
>>> roc_auc(scores, labels)
0.75
>>> round(pr_auc(scores, labels), 4)
0.8333
"""

from __future__ import annotations

import math

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Compute the area under the ROC curve, with tied scores counted as half a win.

    This is the Mann-Whitney U statistic divided by ``positives * negatives``, with tied
    scores given their average rank, which equals ``sklearn.metrics.roc_auc_score``.

    Raises
    ------
    ValueError
        When the inputs differ in length, labels are not binary, or after dropping NaN scores
        only one class is left.

    Examples
    --------
    >>> import numpy as np
    >>> roc_auc(np.array([1.0, 1.0, 2.0]), np.array([0, 1, 1]))
    0.75
    """
    scores, labels = _scores_and_labels(scores, labels, "roc_auc")
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"roc_auc is undefined with only one class ({positives} positive and {negatives} negative labels "
            "with a finite score); evaluate on data that contains both normal and anomalous points"
        )

    ranks = _average_ranks(scores)
    rank_sum = ranks[labels].sum()
    u_statistic = rank_sum - positives * (positives + 1) / 2.0
    return float(u_statistic / (positives * negatives))


def pr_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Compute the average precision, the step-wise area under the precision-recall curve.

    ``AP = sum_k (R_k - R_(k-1)) * P_k`` over the distinct score thresholds in decreasing
    order, as ``sklearn.metrics.average_precision_score`` defines it. This sum does not
    interpolate, which the trapezoidal rule would do optimistically.

    Raises
    ------
    ValueError
        When the inputs differ in length, labels are not binary, or no positive label has a
        score, because recall is then undefined.

    Examples
    --------
    >>> import numpy as np
    >>> pr_auc(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1]))
    0.8333333333333333
    """
    scores, labels = _scores_and_labels(scores, labels, "pr_auc")
    curve = _precision_recall_points(scores, labels, "pr_auc")
    recall_steps = np.diff(np.concatenate(([0.0], curve["recall"])))
    return float(np.sum(recall_steps * curve["precision"]))


def best_f1(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Find the threshold with the highest point-wise F1 score.

    Every distinct score is tried as a threshold, with a point flagged when its score is
    ``>= threshold``. Among equal F1 values the highest threshold wins, as it raises the
    fewest alerts. The threshold is chosen with the labels, so the result is an upper bound
    for a detector that has to set its threshold without them.

    Returns
    -------
    dict
        ``{"f1", "precision", "recall", "threshold"}`` as floats.

    Raises
    ------
    ValueError
        When the inputs differ in length, labels are not binary, or no positive label has a
        score.

    Examples
    --------
    >>> import numpy as np
    >>> best_f1(np.array([0.1, 0.7, 0.3, 0.9]), np.array([0, 1, 0, 1]))
    {'f1': 1.0, 'precision': 1.0, 'recall': 1.0, 'threshold': 0.7}
    """
    scores, labels = _scores_and_labels(scores, labels, "best_f1")
    curve = _precision_recall_points(scores, labels, "best_f1")
    precision = curve["precision"]
    recall = curve["recall"]
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)

    best = int(np.argmax(f1))
    return {
        "f1": float(f1[best]),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "threshold": float(curve["threshold"][best]),
    }


def event_metrics(alerts: np.ndarray, labels: np.ndarray) -> dict:
    """Count detected anomaly events and false-alarm runs.

    An event is a maximal run of True labels, and it is detected when at least one alert
    lies inside it. An alert run is a maximal run of True alerts, and one that overlaps no
    event is one false positive, however long it is. Then::

        precision = detected_events / (detected_events + false_positive_runs)
        recall    = detected_events / events
        f1        = 2 * precision * recall / (precision + recall)

    Precision counts detected events rather than alert runs, so that several alert runs
    inside one event count once, like one incident ticket.

    Returns
    -------
    dict
        ``events``, ``detected_events``, ``alert_runs`` and ``false_positive_runs`` as ints,
        and ``precision``, ``recall`` and ``f1`` as floats. ``recall`` is NaN when there is
        no event, and ``precision`` is NaN when there is neither a detected event nor a
        false positive. ``f1`` is NaN when either is NaN and 0 when both are 0. Sum the
        counts to combine several series.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([0, 1, 1, 0, 0, 0, 1, 1, 0, 0], dtype=bool)
    >>> alerts = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 1], dtype=bool)
    >>> result = event_metrics(alerts, labels)
    >>> result["detected_events"], result["false_positive_runs"], result["recall"]
    (1, 1, 0.5)
    """
    alerts = _as_binary(alerts, "alerts", "event_metrics")
    labels = _as_binary(labels, "labels", "event_metrics")
    if alerts.shape != labels.shape:
        raise ValueError(
            f"event_metrics: alerts has shape {alerts.shape} but labels has shape {labels.shape}; "
            "give one alert flag and one label per time step"
        )

    event_starts, event_stops = _runs(labels)
    alert_starts, alert_stops = _runs(alerts)

    # Prefix sums turn "any True in [start, stop)" into one subtraction per run.
    alerts_before = np.concatenate(([0], np.cumsum(alerts)))
    labels_before = np.concatenate(([0], np.cumsum(labels)))
    detected = alerts_before[event_stops] - alerts_before[event_starts] > 0
    false_positive = labels_before[alert_stops] - labels_before[alert_starts] == 0

    events = len(event_starts)
    detected_events = int(detected.sum())
    false_positive_runs = int(false_positive.sum())

    recall = detected_events / events if events else math.nan
    flagged = detected_events + false_positive_runs
    precision = detected_events / flagged if flagged else math.nan
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)

    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "events": events,
        "detected_events": detected_events,
        "alert_runs": len(alert_starts),
        "false_positive_runs": false_positive_runs,
    }


def _runs(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the start and stop (exclusive) indices of the maximal runs of True."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Rank the values from 1 upwards, giving tied values the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    group_starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
    group_stops = np.concatenate((group_starts[1:], [len(values)]))
    # Ranks start+1 .. stop have the mean (start + 1 + stop) / 2.
    group_ranks = (group_starts + 1 + group_stops) / 2.0

    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(group_ranks, group_stops - group_starts)
    return ranks


def _precision_recall_points(scores: np.ndarray, labels: np.ndarray, metric: str) -> dict:
    """Return precision, recall and threshold at each distinct score, in decreasing order."""
    positives = int(labels.sum())
    if positives == 0:
        raise ValueError(
            f"{metric} is undefined without positive labels (none of the {len(labels)} points with a finite "
            "score is labelled anomalous); evaluate on data that contains anomalies"
        )

    order = np.argsort(-scores, kind="mergesort")
    ordered_scores = scores[order]
    ordered_labels = labels[order]
    # The last index of each group of equal scores, where the threshold admits the whole group.
    group_ends = np.concatenate((np.flatnonzero(ordered_scores[1:] != ordered_scores[:-1]), [len(scores) - 1]))

    true_positives = np.cumsum(ordered_labels)[group_ends]
    flagged = group_ends + 1
    return {
        "precision": true_positives / flagged,
        "recall": true_positives / positives,
        "threshold": ordered_scores[group_ends],
    }


def _scores_and_labels(scores: np.ndarray, labels: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate the inputs and drop the points whose score is NaN."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = _as_binary(labels, "labels", metric)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"{metric}: scores has shape {scores.shape} but labels has shape {labels.shape}; "
            "both must be 1-D with one entry per time step"
        )
    finite = ~np.isnan(scores)
    return scores[finite], labels[finite]


def _as_binary(flags: np.ndarray, name: str, metric: str) -> np.ndarray:
    array = np.asarray(flags)
    if array.ndim != 1:
        raise ValueError(f"{metric}: {name} must be 1-D, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{metric}: {name} has dtype {array.dtype}; use booleans or 0/1")
    invalid = (array != 0) & (array != 1)
    if invalid.any():
        value = array[np.flatnonzero(invalid)[0]].item()
        raise ValueError(f"{metric}: {name} must be binary (booleans or 0/1), but contains {value!r}")
    return array.astype(bool)

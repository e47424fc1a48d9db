"""Tests of the detection metrics, with scikit-learn as the oracle for the point-wise ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from streamad.evaluation import best_f1, event_metrics, pr_auc, roc_auc


def random_case(seed: int, size: int, distinct: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return scores (rounded to ``distinct`` levels to force ties) and labels with both classes."""
    rng = np.random.default_rng(seed)
    labels = rng.random(size) < 0.2
    labels[0], labels[1] = True, False
    scores = rng.normal(size=size) + labels * rng.uniform(0, 2)
    if distinct is not None:
        scores = np.round(scores * distinct / 4) / distinct
    return scores, labels


CASES = [(seed, size, distinct) for seed in range(6) for size in (2, 7, 200) for distinct in (None, 2, 5)]


@pytest.mark.parametrize(("seed", "size", "distinct"), CASES)
def test_roc_auc_matches_sklearn(seed, size, distinct):
    scores, labels = random_case(seed, size, distinct)

    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize(("seed", "size", "distinct"), CASES)
def test_pr_auc_matches_sklearn(seed, size, distinct):
    scores, labels = random_case(seed, size, distinct)

    assert pr_auc(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize(("seed", "size", "distinct"), CASES)
def test_best_f1_matches_sklearn_curve(seed, size, distinct):
    scores, labels = random_case(seed, size, distinct)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]

    result = best_f1(scores, labels)

    assert result["f1"] == pytest.approx(f1.max(), abs=1e-12)
    predicted = scores >= result["threshold"]
    true_positives = np.sum(predicted & labels)
    assert result["precision"] == pytest.approx(true_positives / predicted.sum())
    assert result["recall"] == pytest.approx(true_positives / labels.sum())


def test_roc_auc_all_tied_is_half():
    assert roc_auc(np.zeros(6), np.array([0, 1, 0, 1, 1, 0])) == 0.5


def test_roc_auc_infinite_scores_rank():
    scores = np.array([-np.inf, 0.0, np.inf, 1.0])
    labels = np.array([0, 0, 1, 1])

    assert roc_auc(scores, labels) == 1.0


def test_metrics_drop_nan_scores():
    scores = np.array([np.nan, np.nan, 0.2, 0.9, 0.1, 0.8])
    labels = np.array([1, 0, 0, 1, 0, 1])
    finite = ~np.isnan(scores)

    assert roc_auc(scores, labels) == roc_auc_score(labels[finite], scores[finite])
    assert pr_auc(scores, labels) == pytest.approx(average_precision_score(labels[finite], scores[finite]))
    assert best_f1(scores, labels)["f1"] == 1.0


def test_roc_auc_one_class_raises():
    with pytest.raises(ValueError, match="only one class.*3 positive and 0 negative"):
        roc_auc(np.array([0.1, 0.2, 0.3]), np.array([1, 1, 1]))


def test_roc_auc_one_class_after_nan_raises():
    with pytest.raises(ValueError, match="only one class"):
        roc_auc(np.array([np.nan, 0.2, 0.3]), np.array([0, 1, 1]))


def test_pr_auc_no_positive_raises():
    with pytest.raises(ValueError, match="pr_auc is undefined without positive labels"):
        pr_auc(np.array([0.1, 0.2]), np.array([0, 0]))


def test_pr_auc_all_positive_is_one():
    assert pr_auc(np.array([0.1, 0.2]), np.array([1, 1])) == 1.0


def test_best_f1_no_positive_raises():
    with pytest.raises(ValueError, match="best_f1 is undefined without positive labels"):
        best_f1(np.array([0.1, 0.2]), np.array([False, False]))


def test_best_f1_tie_picks_highest_threshold():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([1, 0, 1, 0])
    # F1 at 0.9 is 2/3 and at 0.7 is 0.8; at 0.6 it is 2/3 again, so 0.7 wins outright.
    assert best_f1(scores, labels)["threshold"] == 0.7

    tied_scores = np.array([0.9, 0.5, 0.4, 0.3])
    tied_labels = np.array([1, 0, 0, 1])
    # F1 at 0.9 is 2/3 and at 0.3 is 2/3; the higher threshold wins.
    assert best_f1(tied_scores, tied_labels)["threshold"] == 0.9


@pytest.mark.parametrize("metric", [roc_auc, pr_auc, best_f1])
def test_point_metrics_length_mismatch(metric):
    with pytest.raises(ValueError, match=r"scores has shape \(3,\) but labels has shape \(2,\)"):
        metric(np.zeros(3), np.array([0, 1]))


@pytest.mark.parametrize("metric", [roc_auc, pr_auc, best_f1])
def test_point_metrics_non_binary_labels(metric):
    with pytest.raises(ValueError, match="labels must be binary .* contains 2"):
        metric(np.zeros(3), np.array([0, 1, 2]))


# event_metrics -------------------------------------------------------------------------------


def flags(text: str) -> np.ndarray:
    """Turn a string such as "..##." into a boolean array ('#' is True)."""
    return np.array([char == "#" for char in text])


@pytest.mark.parametrize(
    ("labels", "alerts", "events", "detected", "runs", "false_positives"),
    [
        # One event, one alert inside it.
        ("..###...", "...#....", 1, 1, 1, 0),
        # An alert run that overlaps the event's edge is a detection, not a false positive.
        ("..###...", ".##.....", 1, 1, 1, 0),
        # Two alert runs inside one event: one detection, no false positive.
        ("..#####.", "..#.#...", 1, 1, 2, 0),
        # One alert run spanning two events detects both.
        (".##.##..", ".#####..", 2, 2, 1, 0),
        # A long false alarm counts once.
        ("......##", "#####...", 1, 0, 1, 1),
        # Alert right after an event does not detect it.
        ("##......", "..#.....", 1, 0, 1, 1),
        # Events at both ends of the array.
        ("#......#", "#......#", 2, 2, 2, 0),
        # No alerts at all.
        ("..##..##", "........", 2, 0, 0, 0),
    ],
)
def test_event_metrics_counts(labels, alerts, events, detected, runs, false_positives):
    result = event_metrics(flags(alerts), flags(labels))

    assert result["events"] == events
    assert result["detected_events"] == detected
    assert result["alert_runs"] == runs
    assert result["false_positive_runs"] == false_positives


def test_event_metrics_scores():
    labels = flags("##....##....##..")
    alerts = flags(".#.##.......#..#")
    result = event_metrics(alerts, labels)

    # Detected: events 1 and 3. False positive runs: [3, 5) and [15, 16).
    assert result["detected_events"] == 2
    assert result["false_positive_runs"] == 2
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_event_metrics_no_events():
    result = event_metrics(flags("..#."), flags("...."))

    assert result["events"] == 0
    assert math.isnan(result["recall"])
    assert result["precision"] == 0.0
    assert math.isnan(result["f1"])


def test_event_metrics_no_alerts_no_events():
    result = event_metrics(flags("...."), flags("...."))

    assert math.isnan(result["precision"])
    assert math.isnan(result["recall"])


def test_event_metrics_all_missed_f1_zero():
    result = event_metrics(flags("#..."), flags("..#."))

    assert result["precision"] == 0.0
    assert result["recall"] == 0.0
    assert result["f1"] == 0.0


def test_event_metrics_accepts_zero_one():
    result = event_metrics(np.array([0, 1, 0]), np.array([0, 1, 1]))

    assert result["detected_events"] == 1


def test_event_metrics_shape_mismatch():
    with pytest.raises(ValueError, match=r"alerts has shape \(3,\) but labels has shape \(4,\)"):
        event_metrics(np.zeros(3, dtype=bool), np.zeros(4, dtype=bool))


def test_event_metrics_non_binary():
    with pytest.raises(ValueError, match="alerts must be binary .* contains 0.5"):
        event_metrics(np.array([0.5, 0.0]), np.array([0, 1]))

"""Detection metrics and benchmark labels for evaluating anomaly scores and alerts."""

from __future__ import annotations

from streamad.evaluation.labels import load_labels
from streamad.evaluation.metrics import best_f1, event_metrics, pr_auc, roc_auc

__all__ = ["best_f1", "event_metrics", "load_labels", "pr_auc", "roc_auc"]

"""The streaming engine: per-series windows, batched scoring, thresholds and incidents."""

from streamad.engine.engine import EngineConfig, EngineResult, Rejection, ScoredPoint, StreamEngine
from streamad.engine.incidents import IncidentTracker, alert_id_for
from streamad.engine.runner import RunStats, run_stream

__all__ = [
    "EngineConfig",
    "EngineResult",
    "IncidentTracker",
    "Rejection",
    "RunStats",
    "ScoredPoint",
    "StreamEngine",
    "alert_id_for",
    "run_stream",
]

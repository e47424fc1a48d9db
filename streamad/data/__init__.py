"""Time series data: loading, timestamps, scaling, gap filling and sliding windows."""

from __future__ import annotations

from streamad.data.loaders import TIMESTAMP_COLUMN_NAMES, load_series, load_series_collection
from streamad.data.preprocessing import StandardScaler, fill_gaps
from streamad.data.series import Series, format_timestamp, parse_timestamp
from streamad.data.windows import Windows, sliding_windows

__all__ = [
    "TIMESTAMP_COLUMN_NAMES",
    "Series",
    "StandardScaler",
    "Windows",
    "fill_gaps",
    "format_timestamp",
    "load_series",
    "load_series_collection",
    "parse_timestamp",
    "sliding_windows",
]

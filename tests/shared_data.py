"""Locate the labelled benchmarks in ../shared/data for the tests that need them."""

import os
from pathlib import Path

import pytest

# STREAMAD_DATA_DIR points at another copy, e.g. the data/ folder that scripts/fetch_datasets.py writes.
SHARED_DATA = Path(os.environ.get("STREAMAD_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
NAB_DATA = SHARED_DATA / "nab" / "data"
NAB_WINDOWS = SHARED_DATA / "nab" / "labels" / "combined_windows.json"
SMAP_MSL = SHARED_DATA / "smap_msl"
MACHINE_TEMPERATURE = NAB_DATA / "realKnownCause" / "machine_temperature_system_failure.csv"


def require(path: Path) -> Path:
    """Return ``path``, or skip the test when it is missing (fail under CI=true, where it must exist)."""
    if not path.exists():
        message = f"{path} not found; the benchmarks are expected in ../shared/data beside the repository"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path

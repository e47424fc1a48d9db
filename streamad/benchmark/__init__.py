"""Benchmarks on public labelled data: NAB (in NAB's results format) and NASA SMAP/MSL.

Both train one model per file or channel, replay the labelled data through one streaming
engine per score and measure the scores with :mod:`streamad.evaluation`. See
``streamad benchmark --help``.
"""

from streamad.benchmark.errors import BenchmarkInputError
from streamad.benchmark.nab import NabOptions, detector_name, run_nab
from streamad.benchmark.scoring import ScoredRows, detection_metrics, replay_scores
from streamad.benchmark.smap_msl import SmapMslOptions, run_smap_msl

__all__ = [
    "BenchmarkInputError",
    "NabOptions",
    "ScoredRows",
    "SmapMslOptions",
    "detection_metrics",
    "detector_name",
    "replay_scores",
    "run_nab",
    "run_smap_msl",
]

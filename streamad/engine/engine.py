"""The streaming engine: records in, scored points and incident events out, no I/O."""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from streamad.alerts.attribution import attribute_windows, channel_entries, log_normalizer
from streamad.alerts.severity import AlertContent, SeverityLevels
from streamad.bundle import ModelBundle
from streamad.data import StandardScaler, format_timestamp
from streamad.engine.buffers import SeriesBuffers
from streamad.engine.incidents import IncidentEvent, IncidentTracker
from streamad.records import Record
from streamad.scores import SCORE_NAMES, derive_window_seed, score_windows
from streamad.thresholds import AdaptiveThreshold, ScoreCalibrator

logger = logging.getLogger(__name__)

STOCHASTIC_SCORES = ("elbo", "importance")

# Largest magnitude of a scaled value, in training standard deviations, that the engine scores.
# The window buffers and the model compute in float32 (max about 3.4e38), and the encoder sums
# L * C weighted inputs, so values near that limit overflow to inf inside the model. 1e20 leaves
# about 18 orders of magnitude for those sums, and the scores are summed in float64, so the
# square of such a value stays finite.
# NOTE: the headroom was measured on small test models only, whose scores stay finite up to 1e36.
# A model with much larger weights could overflow below this bound, and process() then drops its windows.
MAX_SCALED_MAGNITUDE = 1e20


@dataclass
class EngineConfig:
    """Settings of :class:`StreamEngine`.

    Attributes
    ----------
    score
        Score name, one of ``streamad.scores.SCORE_NAMES``.
    score_options
        Keyword options of the score, e.g. ``{"samples": 64}`` for ``importance``.
    threshold_level
        Quantile level of the adaptive threshold.
    warmup
        Scores per series that never alert.
    resolve_after
        Consecutive non-alerting windows that resolve an incident.
    update_every
        Alerting windows between two ``update`` events of an open incident.
    top_channels
        Channels listed by name in an event, ranked by their whitened squared residual;
        the rest are summed in an ``other`` entry.
    has_clock
        True when timestamps are epoch milliseconds; False for step indexes.
    seed
        Seed of the samples drawn by the ``elbo`` and ``importance`` scores. The draws of a
        window come from a 64-bit seed derived from this seed, the series id and the
        timestamp of the window's last point (see
        :func:`~streamad.scores.sampling.derive_window_seed`). So a window gets the same
        score whatever the batching, after a restore from a checkpoint or a model reload,
        and on every instance, as long as the model is the same.
    per_series_threshold
        One threshold quantile per series (True) or one shared by all series (False).
        Only per-series thresholds make a series' results independent of how its
        records interleave with other series' records, e.g. across Kafka partitions.
    resolve_after_s
        When set and ``has_clock`` is True, an incident resolves at its first
        non-alerting point at least this many seconds after its last alerting point,
        instead of after ``resolve_after`` windows.
    update_interval_s
        When set and ``has_clock`` is True, the minimum seconds between two events of an
        incident before an ``update``, instead of ``update_every`` windows.
    severity_warning, severity_critical
        Anomaly probabilities of the peak score at or above which an incident's severity
        is ``warning`` or ``critical``; below both it is ``info``.
    labels
        Extra labels of every event, name to value.
    annotations
        Extra annotation templates of every event, name to template.
    """

    score: str = "likelihood"
    score_options: dict = field(default_factory=dict)
    threshold_level: float = 0.999
    warmup: int = 0
    resolve_after: int = 3
    update_every: int = 10
    top_channels: int = 3
    has_clock: bool = True
    seed: int = 0
    per_series_threshold: bool = False
    resolve_after_s: float | None = None
    update_interval_s: float | None = None
    severity_warning: float = 0.99
    severity_critical: float = 0.999
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)


@dataclass
class ScoredPoint:
    """The result for one window, attached to the timestamp of its last point."""

    series: str
    timestamp: int
    score: float
    threshold: float
    anomaly_probability: float
    is_alert: bool


@dataclass
class Rejection:
    """A record the engine could not use: its position in the batch and the reason."""

    index: int
    reason: str
    message: str


@dataclass
class EngineState:
    """The state of a set of series, from :meth:`StreamEngine.snapshot`.

    ``meta`` is JSON-serialisable: the series ids, the alert ids of their open incidents,
    the last event of each open incident (``open_events``) and the settings the state
    depends on. ``arrays`` maps names to NumPy arrays with
    one row per series, except ``threshold.windows`` and ``threshold.shared_window``.
    """

    meta: dict
    arrays: dict[str, np.ndarray]


@dataclass
class EngineResult:
    """Output of one call of :meth:`StreamEngine.process`."""

    points: list[ScoredPoint]
    events: list[dict]
    rejected: list[Rejection]


class StreamEngine:
    """Score sliding windows of many series with one model, threshold them and track incidents.

    Each call of :meth:`process` takes a batch of records in arrival order and appends every
    record to its series' window buffer. All windows that the batch completes are scored in
    one forward pass, and then thresholds and incident grouping are applied in record order.

    Records whose timestamp does not increase within their series, whose number of
    values differs from the model's channels, or whose scaled values are infinite or
    beyond :data:`MAX_SCALED_MAGNITUDE` (``value_out_of_range``), are returned as
    rejections and change no state.

    Parameters
    ----------
    bundle
        A loaded model bundle.
    config
        Engine settings; defaults score with ``likelihood`` at level 0.999.
    """

    def __init__(self, bundle: ModelBundle, config: EngineConfig | None = None) -> None:
        self.bundle = bundle
        self.config = config or EngineConfig()
        if self.config.score not in SCORE_NAMES:
            raise ValueError(f"score={self.config.score!r} is unknown; use one of {SCORE_NAMES}")
        reference = bundle.validation_scores.get(self.config.score)
        if reference is None or len(reference) == 0:
            raise ValueError(
                f"model bundle {bundle.path} has no validation scores for {self.config.score!r}; retrain it "
                f"with this score or pick one of {sorted(bundle.validation_scores)}"
            )
        for option in ("generator", "window_seeds"):
            if option in self.config.score_options:
                raise ValueError(
                    f"score option {option!r} is invalid in the engine, which derives the draws of each window "
                    "from EngineConfig.seed, the series id and the window's end timestamp; set seed instead"
                )

        self.model = bundle.model.eval()
        self.channel_names = bundle.channels
        self.buffers = SeriesBuffers(bundle.window, len(self.channel_names), bundle.stride, bundle.max_fill)
        self.threshold = AdaptiveThreshold(
            reference,
            level=self.config.threshold_level,
            warmup=self.config.warmup,
            per_series=self.config.per_series_threshold,
        )
        self.calibrator = ScoreCalibrator(reference)
        _warn_coarse_severity(len(reference), self.config.score, self.config.severity_critical, bundle.version)
        self.incidents = IncidentTracker(
            bundle.version,
            self.config.resolve_after,
            self.config.update_every,
            resolve_after_s=self.config.resolve_after_s,
            update_interval_s=self.config.update_interval_s,
            has_clock=self.config.has_clock,
            score_name=self.config.score,
        )
        if not self.config.has_clock and (self.config.resolve_after_s is not None or self.config.update_interval_s is not None):
            logger.warning(
                "the series have step indexes, not times: incidents resolve after %d windows and update every %d "
                "windows, and the time settings are ignored",
                self.config.resolve_after, self.config.update_every,
            )
        self.content = AlertContent(
            SeverityLevels(self.config.severity_warning, self.config.severity_critical),
            self.config.labels,
            self.config.annotations,
        )
        self.stats: Counter = Counter()
        # Last event of each open incident by alert id, so that a restored incident can be sent again as it was.
        self._open_events: dict[str, dict] = {}

    def process(self, records: Sequence[Record]) -> EngineResult:
        """Feed a batch of records; return the scored points, incident events and rejections."""
        rejected: list[Rejection] = []
        window_slots: list[int] = []
        window_records: list[int] = []
        windows: list[np.ndarray] = []
        channels = len(self.channel_names)

        for index, record in enumerate(records):
            values = np.asarray(record.values, dtype=np.float64)
            if values.shape != (channels,):
                rejected.append(
                    Rejection(index, "wrong_channel_count", f"series {record.series!r}: got {values.size} values, the model expects {channels} ({', '.join(self.channel_names)})")
                )
                continue
            slot = self.buffers.slot(record.series)
            previous = self.buffers.last_timestamp[slot]
            if record.timestamp <= previous:
                reason = "duplicate_timestamp" if record.timestamp == previous else "timestamp_not_increasing"
                rejected.append(
                    Rejection(index, reason, f"series {record.series!r}: timestamp {record.timestamp} is not after the previous {previous}")
                )
                continue

            with np.errstate(over="ignore", invalid="ignore"):
                scaled = self.bundle.scaler.transform(values[None, :])[0]
            out_of_range = self._out_of_range_message(record, values, scaled)
            if out_of_range is not None:
                rejected.append(Rejection(index, "value_out_of_range", out_of_range))
                continue

            self.stats["records"] += 1
            if not self.buffers.push(slot, record.timestamp, scaled):
                continue
            if not self.buffers.window_is_valid(slot):
                self.stats["windows_skipped_gap"] += 1
                continue
            window_slots.append(slot)
            window_records.append(index)
            windows.append(self.buffers.window_of(slot))

        for rejection in rejected:
            self.stats[f"rejected_{rejection.reason}"] += 1
        if not windows:
            return EngineResult([], [], rejected)

        batch = torch.from_numpy(np.stack(windows))
        scores = self._score_or_nan(batch, [records[index] for index in window_records])
        probabilities = self.calibrator.probability(scores)

        points: list[ScoredPoint] = []
        incident_events: list[tuple[IncidentEvent, int]] = []
        dropped: list[tuple[Record, float]] = []
        for position, (slot, record_index) in enumerate(zip(window_slots, window_records)):
            record = records[record_index]
            score = float(scores[position])
            if not np.isfinite(score):
                # A window without a finite score is dropped and counted, and leaves the threshold
                # quantile and the incident untouched, so one bad window can neither stop the daemon
                # nor corrupt the threshold. Values known to overflow were rejected above, so such a
                # score points to a problem of the model, which the error log below reports.
                dropped.append((record, score))
                continue
            self.stats["windows_scored"] += 1
            is_alert, threshold = self.threshold.update(record.series, score)
            probability = float(probabilities[position])
            points.append(ScoredPoint(record.series, record.timestamp, score, threshold, probability, is_alert))
            event = self.incidents.observe(slot, record.series, record.timestamp, score, threshold, probability, is_alert)
            if event is not None:
                incident_events.append((event, position))

        if dropped:
            # The daemon exports this count as streamad_windows_dropped_total{reason="non_finite_score"}.
            self.stats["windows_dropped_non_finite_score"] += len(dropped)
            first_record, first_score = dropped[0]
            logger.error(
                "%d windows have a non-finite score and are dropped, the first of series %r ending at timestamp %d "
                "with score %r; check model bundle %s (%s)",
                len(dropped), first_record.series, first_record.timestamp, first_score, self.bundle.path, self.bundle.version,
            )
        events = self._event_dicts(incident_events, batch)
        self._note_open_events(events)
        self.stats["alerts"] += sum(point.is_alert for point in points)
        return EngineResult(points, events, rejected)

    def snapshot(self, series_ids: Sequence[str], include_shared_threshold: bool = True) -> EngineState:
        """Return a copy of the state of ``series_ids``: window buffers, open incidents with their last events, and thresholds.

        A series the engine has not seen gets the state of a new series. The shared
        threshold quantile, used when ``per_series_threshold`` is False, is included when
        ``include_shared_threshold`` is True. The ``elbo`` and ``importance`` scores keep no
        sampler state, because each window's draws derive from its series and end timestamp.
        """
        series_ids = list(series_ids)
        slots = [self.buffers.slot(series) for series in series_ids]
        arrays = {f"buffers.{name}": array for name, array in self.buffers.export_rows(slots).items()}
        incident_arrays, alert_ids = self.incidents.export_rows(slots)
        arrays.update({f"incidents.{name}": array for name, array in incident_arrays.items()})
        threshold_arrays = self.threshold.export_state(series_ids, include_shared=include_shared_threshold)
        arrays.update({f"threshold.{name}": array for name, array in threshold_arrays.items()})
        meta = {
            "series": series_ids,
            "alert_ids": alert_ids,
            "open_events": [self._open_events[alert_id] for alert_id in alert_ids if alert_id in self._open_events],
            "model_version": self.bundle.version,
            "scaler": self.bundle.scaler.to_dict(),
            "window": self.bundle.window,
            "channels": len(self.channel_names),
            "stride": self.bundle.stride,
            "score": self.config.score,
            "threshold_level": self.config.threshold_level,
            "per_series_threshold": self.config.per_series_threshold,
        }
        return EngineState(meta, arrays)

    def restore(self, state: EngineState, include_shared_threshold: bool = True) -> None:
        """Replace the state of the series in ``state`` with it; other series are unchanged.

        The shared threshold quantile is replaced too when ``include_shared_threshold`` is
        True and ``state`` contains it. Raises ValueError, before changing anything, when
        the state was saved with another window, stride, channel count, score, threshold
        level or threshold mode.

        State saved with another model version, e.g. before a model reload, is restored as
        by :meth:`swap_bundle`: the buffers are rescaled from the saved scaler to this
        model's, open incidents keep their alert ids, and the thresholds of the series
        restart from this model's validation scores. Such state without a saved scaler
        raises ValueError.
        """
        meta = state.meta
        expected = self.snapshot([]).meta
        for key in ("window", "channels", "stride", "score", "threshold_level", "per_series_threshold"):
            if meta.get(key) != expected[key]:
                raise ValueError(
                    f"saved engine state has {key}={meta.get(key)!r}, and this engine has {expected[key]!r}; "
                    "restart with the same model and options, or delete the checkpoints"
                )
        saved_scaler = None
        if meta["model_version"] != self.bundle.version:
            if "scaler" not in meta:
                raise ValueError(
                    f"saved engine state of model {meta['model_version']} has no scaler to convert its windows "
                    f"to model {self.bundle.version}; restart with model {meta['model_version']}, or delete the checkpoints"
                )
            saved_scaler = StandardScaler.from_dict(meta["scaler"])
            logger.warning(
                "restoring state saved with model %s into model %s: windows rescaled, thresholds re-seeded",
                meta["model_version"], self.bundle.version,
            )

        series_ids = list(meta["series"])
        slots = [self.buffers.slot(series) for series in series_ids]
        buffer_arrays = _strip_prefix(state.arrays, "buffers.")
        incident_arrays = _strip_prefix(state.arrays, "incidents.")
        threshold_arrays = _strip_prefix(state.arrays, "threshold.")
        self.buffers.import_rows(slots, buffer_arrays)
        self._drop_open_events(slots)
        self.incidents.import_rows(slots, incident_arrays, list(meta["alert_ids"]))
        restored_ids = set(meta["alert_ids"])
        # Checkpoints written before "open_events" existed restore the incidents without their last event.
        for event in meta.get("open_events", []):
            if event.get("alert_id") in restored_ids:
                self._open_events[event["alert_id"]] = copy.deepcopy(event)
        if saved_scaler is None:
            self.threshold.import_state(series_ids, threshold_arrays, include_shared=include_shared_threshold)
        else:
            _rescale_buffer_rows(self.buffers, slots, saved_scaler, self.bundle.scaler)
            self.threshold.forget(series_ids)

    def swap_bundle(self, bundle: ModelBundle) -> None:
        """Score with ``bundle`` from the next batch on, keeping the state of every series.

        The window buffers stay and are rescaled from the old bundle's scaler to the new
        one's, so windows that span the swap are complete. The thresholds and the score
        calibration are re-seeded from the new bundle's validation scores, because the old
        quantiles are on the old model's score scale, and warm-up counts restart. An
        incident open at the swap keeps its ``alert_id`` until it resolves, and its later
        events carry the new ``model_version``. Incidents opened afterwards get ids with the
        new version.

        Raises ValueError, before changing anything, when ``bundle`` has another window
        length, stride or channel list, or no validation scores for the engine's score.
        """
        old = self.bundle
        for name in ("window", "stride", "channels"):
            if getattr(bundle, name) != getattr(old, name):
                raise ValueError(
                    f"model bundle {bundle.path} ({bundle.version}) has {name} {getattr(bundle, name)!r}, and the "
                    f"running model {old.version} has {getattr(old, name)!r}; a reload keeps the window buffers, "
                    f"so retrain with the same {name}, or restart the daemon, which then ignores the old checkpoints"
                )
        reference = bundle.validation_scores.get(self.config.score)
        if reference is None or len(reference) == 0:
            raise ValueError(
                f"model bundle {bundle.path} ({bundle.version}) has no validation scores for {self.config.score!r}; "
                f"retrain it with this score"
            )
        threshold = AdaptiveThreshold(
            reference,
            level=self.config.threshold_level,
            warmup=self.config.warmup,
            per_series=self.config.per_series_threshold,
        )

        slots = list(range(len(self.buffers.series_ids)))
        _rescale_buffer_rows(self.buffers, slots, old.scaler, bundle.scaler)
        self.buffers.max_fill = bundle.max_fill
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.threshold = threshold
        self.calibrator = ScoreCalibrator(reference)
        # NOTE: the peak_score of an incident open at the swap stays the maximum over both models' scores.
        self.incidents.model_version = bundle.version
        logger.info(
            "model swapped: %s -> %s from %s, %d series kept, %d open incidents keep their alert ids",
            old.version, bundle.version, bundle.path, len(slots), len(self.incidents.alert_ids),
        )

    def forget(self, series_ids: Sequence[str]) -> None:
        """Reset the state of ``series_ids`` to that of unseen series, e.g. when their partition moves away.

        Open incidents of these series are dropped without a ``resolved`` event. The
        shared threshold quantile is kept.
        """
        series_ids = [series for series in series_ids if series in self.buffers.slots]
        slots = [self.buffers.slots[series] for series in series_ids]
        self.buffers.reset_rows(slots)
        self._drop_open_events(slots)
        self.incidents.reset_rows(slots)
        self.threshold.forget(series_ids)

    def open_incident_events(self, series_ids: Sequence[str]) -> list[dict]:
        """Return copies of the last events of the open incidents of ``series_ids``, in the order of ``series_ids``.

        An open incident restored from a checkpoint that did not store its last event is left out.
        """
        events = []
        for series in series_ids:
            slot = self.buffers.slots.get(series)
            alert_id = None if slot is None else self.incidents.alert_ids.get(slot)
            if alert_id is not None and alert_id in self._open_events:
                events.append(copy.deepcopy(self._open_events[alert_id]))
        return events

    def _note_open_events(self, events: list[dict]) -> None:
        for event in events:
            if event["status"] == "resolved":
                self._open_events.pop(event["alert_id"], None)
            else:
                self._open_events[event["alert_id"]] = copy.deepcopy(event)

    def _drop_open_events(self, slots: list[int]) -> None:
        for slot in slots:
            alert_id = self.incidents.alert_ids.get(slot)
            if alert_id is not None:
                self._open_events.pop(alert_id, None)

    def _out_of_range_message(self, record: Record, values: np.ndarray, scaled: np.ndarray) -> str | None:
        """Return why ``record`` cannot be scored when a scaled value is infinite or above the bound, else None.

        NaN stays allowed, because the gap policy of :class:`SeriesBuffers` handles it.
        """
        bad = ~np.isnan(scaled) & ~(np.abs(scaled) <= MAX_SCALED_MAGNITUDE)
        if not bad.any():
            return None
        channel = int(np.flatnonzero(bad)[0])
        return (
            f"series {record.series!r}: value {float(values[channel])!r} of channel {self.channel_names[channel]!r} "
            f"is {float(scaled[channel]):.3g} training standard deviations from the training mean, beyond the "
            f"{MAX_SCALED_MAGNITUDE:.0e} that the model can score without overflow; fix the producer's value or unit, "
            f"or retrain the model on data of this scale"
        )

    def _score_or_nan(self, batch: torch.Tensor, window_records: list[Record]) -> np.ndarray:
        """Score ``batch``; when the batch raises, score window by window and give NaN to each one that raises.

        Window ``i`` of ``batch`` ends at ``window_records[i]``. Each window's ``elbo`` and
        ``importance`` draws depend only on that record, so scoring one by one gives the
        same scores as one batch, up to float rounding.
        """
        seeds = self._window_seeds(window_records)
        try:
            return self._score(batch, seeds)
        except (ValueError, RuntimeError) as error:
            logger.error("scoring a batch of %d windows failed, so they are scored one by one: %s", len(batch), error)
        scores = np.full(len(batch), np.nan)
        failures = []
        for position in range(len(batch)):
            try:
                window_seeds = None if seeds is None else seeds[position : position + 1]
                scores[position] = self._score(batch[position : position + 1], window_seeds)[0]
            except (ValueError, RuntimeError) as error:
                failures.append((window_records[position], error))
        if failures:
            record, error = failures[0]
            logger.error(
                "scoring %d of %d windows failed, the first of series %r ending at timestamp %d: %s",
                len(failures), len(batch), record.series, record.timestamp, error,
            )
        return scores

    def _window_seeds(self, window_records: list[Record]) -> list[int] | None:
        """Return the seed of each window's draws for the ``elbo`` and ``importance`` scores, else None."""
        if self.config.score not in STOCHASTIC_SCORES:
            return None
        return [derive_window_seed(self.config.seed, record.series, record.timestamp) for record in window_records]

    def _score(self, batch: torch.Tensor, window_seeds: list[int] | None) -> np.ndarray:
        options = dict(self.config.score_options)
        if window_seeds is not None:
            options["window_seeds"] = window_seeds
        return score_windows(self.model, batch, self.config.score, **options).cpu().numpy()

    def _event_dicts(self, incident_events: list[tuple[IncidentEvent, int]], batch: torch.Tensor) -> list[dict]:
        if not incident_events:
            return []
        positions = [position for event, position in incident_events if event.status != "resolved"]
        attribution: dict[int, list[dict]] = {}
        if positions:
            attribution = self._attribute(batch[positions], positions)
        normalizer = log_normalizer(self.model)
        return [
            self._event_dict(event, attribution.get(position, []), normalizer) for event, position in incident_events
        ]

    def _attribute(self, windows: torch.Tensor, positions: list[int]) -> dict[int, list[dict]]:
        """Split each window's likelihood score into channels, ``other`` and ``latent`` (see streamad.alerts.attribution).

        With the ``likelihood`` score the parts use its options, so they sum to the
        window's score. Other scores get the parts of the default likelihood estimate.
        """
        options = dict(self.config.score_options) if self.config.score == "likelihood" else {}
        parts = attribute_windows(self.model, windows, **options)
        return {
            position: channel_entries(part, self.channel_names, self.config.top_channels)
            for part, position in zip(parts, positions)
        }

    def _event_dict(self, event: IncidentEvent, channels: list[dict], normalizer: float) -> dict:
        has_clock = self.config.has_clock
        peak_probability = float(self.calibrator.probability([event.peak_score])[0])
        document = {
            "alert_id": event.alert_id,
            "sequence": event.sequence,
            "status": event.status,
            "series": event.series,
            "start": format_timestamp(event.start, has_clock),
            "end": None if event.end is None else format_timestamp(event.end, has_clock),
            "timestamp": format_timestamp(event.timestamp, has_clock),
            "score": round(event.score, 6),
            "peak_score": round(event.peak_score, 6),
            "threshold": round(event.threshold, 6),
            "anomaly_probability": round(event.anomaly_probability, 6),
            "peak_anomaly_probability": round(peak_probability, 6),
            "score_name": self.config.score,
            "model_version": self.bundle.version,
            "channels": channels,
            "log_normalizer": round(normalizer, 4),
        }
        return self.content.decorate(document)


def _rescale_buffer_rows(buffers: SeriesBuffers, slots: list[int], old: StandardScaler, new: StandardScaler) -> None:
    """Convert the scaled values in rows ``slots`` from scaler ``old`` to scaler ``new``; NaN stays NaN."""
    if not slots:
        return
    # new(x) = (old⁻¹(v) − mean_new) / scale_new is affine in v, per channel.
    factor = old.scale_ / new.scale_
    offset = (old.mean_ - new.mean_) / new.scale_
    values = buffers.values[slots].astype(np.float64)
    buffers.values[slots] = (values * factor + offset).astype(np.float32)
    last_values = buffers.last_value[slots].astype(np.float64)
    buffers.last_value[slots] = (last_values * factor + offset).astype(np.float32)


def _warn_coarse_severity(validation_windows: int, score: str, critical: float, version: str) -> None:
    """Log a warning when the ``critical`` cut-off lies beyond the largest validation score.

    With n validation windows, only the tail fitted above the largest of them gives a probability
    above n/(n + 1). Below n = critical/(1 − critical) windows, the critical cut-off lies in that
    tail, as does the threshold at a high level, so most alerts come out critical.
    """
    needed = critical / (1.0 - critical) if critical < 1.0 else float("inf")
    if validation_windows < needed:
        logger.warning(
            "model %s has %d validation windows for the %s score, fewer than the %.0f that a --severity-critical "
            "of %g needs: the severity of alerts then comes from the tail fit above the largest validation score, and "
            "most alerts are critical; retrain with more validation data (--validation-fraction) or lower --severity-critical",
            version, validation_windows, score, needed, critical,
        )


def _strip_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {name[len(prefix) :]: array for name, array in arrays.items() if name.startswith(prefix)}

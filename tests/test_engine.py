"""Streaming engine on a small trained bundle: batching, rejections, incidents."""

from datetime import datetime

import numpy as np
import pytest

from streamad.data import Series
from streamad.engine import EngineConfig, StreamEngine, alert_id_for
from streamad.records import Record
from streamad.replay import align_points, replay_series
from streamad.training import TrainConfig, train_bundle

WINDOW = 12


def _sine_series(series_id, length=500, seed=0, channels=2):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    columns = [np.sin(t / 6.0 + k) for k in range(channels)]
    values = np.stack(columns, axis=1) + 0.05 * rng.normal(size=(length, channels))
    return Series(series_id, t * 60_000, values, [f"c{k}" for k in range(channels)], True)


@pytest.fixture(scope="module")
def bundle():
    config = TrainConfig(window=WINDOW, latent=2, hidden=32, epochs=40, seed=0, patience=5)
    trained = train_bundle([_sine_series("train", 800)], config, progress=False)
    trained.version = "test-version"
    return trained


def _records(series):
    return [Record(series.series_id, int(series.timestamps[i]), series.values[i]) for i in range(len(series))]


def test_engine_scores_one_window_per_point_after_fill(bundle):
    engine = StreamEngine(bundle)
    series = _sine_series("s1", 100, seed=3)
    result = engine.process(_records(series))
    assert len(result.points) == 100 - WINDOW + 1
    assert result.points[0].timestamp == series.timestamps[WINDOW - 1]
    assert not result.rejected


def test_engine_batches_series_in_one_forward_pass(bundle):
    engine = StreamEngine(bundle)
    calls = []
    original = bundle.model.encode

    def counting_encode(x):
        calls.append(x.shape[0])
        return original(x)

    bundle.model.encode = counting_encode
    try:
        first = _sine_series("a", WINDOW, seed=4)
        second = _sine_series("b", WINDOW, seed=5)
        interleaved = [record for pair in zip(_records(first), _records(second)) for record in pair]
        result = engine.process(interleaved)
    finally:
        del bundle.model.encode
    assert len(result.points) == 2
    assert calls == [2]


def test_engine_results_independent_of_batching(bundle):
    series = _sine_series("s", 200, seed=6)
    records = _records(series)
    whole = StreamEngine(bundle).process(records).points
    engine = StreamEngine(bundle)
    pieces = []
    for start in range(0, len(records), 7):
        pieces.extend(engine.process(records[start : start + 7]).points)
    np.testing.assert_allclose([p.score for p in whole], [p.score for p in pieces], rtol=1e-5, atol=1e-5)
    assert [p.is_alert for p in whole] == [p.is_alert for p in pieces]


def test_engine_rejects_wrong_channel_count(bundle):
    engine = StreamEngine(bundle)
    result = engine.process([Record("s", 0, np.array([1.0, 2.0, 3.0]))])
    assert [r.reason for r in result.rejected] == ["wrong_channel_count"]
    assert "expects 2" in result.rejected[0].message


def test_engine_rejects_repeated_and_backward_timestamps(bundle):
    engine = StreamEngine(bundle)
    records = [Record("s", 10, np.zeros(2)), Record("s", 10, np.zeros(2)), Record("s", 5, np.zeros(2)), Record("s", 11, np.zeros(2))]
    result = engine.process(records)
    assert [(r.index, r.reason) for r in result.rejected] == [(1, "duplicate_timestamp"), (2, "timestamp_not_increasing")]
    assert engine.stats["records"] == 2


def test_engine_alerts_on_injected_fault_and_names_channel(bundle):
    series = _sine_series("faulty", 300, seed=7)
    series.values[200:215, 1] += 4.0
    engine = StreamEngine(bundle, EngineConfig(threshold_level=0.999))
    points = []
    events = []
    for start in range(0, len(series), 50):
        result = engine.process(_records(series.slice(start, start + 50)))
        points.extend(result.points)
        events.extend(result.events)
    scores, alerts = align_points(series, points)
    assert alerts[200:215 + WINDOW].any()
    assert alerts[:190].sum() <= 2
    firing = [event for event in events if event["status"] == "firing" and event["start"] >= "1970-01-01T03:20"]
    assert firing
    assert firing[0]["channels"][0]["channel"] == "c1"
    assert firing[0]["model_version"] == "test-version"


def _epoch_ms(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_engine_alert_ids_differ_by_score(bundle):
    series = _sine_series("two-detectors", 300, seed=9)
    series.values[150:160, 0] += 5.0
    firing = {}
    for score in ("likelihood", "reconstruction"):
        events = []
        replay_series(StreamEngine(bundle, EngineConfig(score=score)), [series], alert_sinks=[_ListSink(events)])
        firing[score] = [event for event in events if event["status"] == "firing"]
        assert firing[score], f"the {score} score raised no incident"
        for event in firing[score]:
            assert event["alert_id"] == alert_id_for("two-detectors", _epoch_ms(event["start"]), "test-version", score)
    assert not {event["alert_id"] for event in firing["likelihood"]} & {event["alert_id"] for event in firing["reconstruction"]}


def test_engine_skips_windows_with_long_gaps(bundle):
    series = _sine_series("gappy", 100, seed=8)
    series.values[50:50 + bundle.max_fill + 2, 0] = np.nan
    engine = StreamEngine(bundle)
    points = []
    replay_series(engine, [series], on_points=points.extend)
    assert engine.stats["windows_skipped_gap"] > 0
    assert all(np.isfinite(point.score) for point in points)
    assert len(points) + engine.stats["windows_skipped_gap"] == 100 - WINDOW + 1


def test_engine_incident_ids_are_reproducible(bundle):
    series = _sine_series("repeat", 300, seed=9)
    series.values[150:160, 0] += 5.0
    runs = []
    for _ in range(2):
        events = []
        replay_series(StreamEngine(bundle), [series], alert_sinks=[_ListSink(events)])
        runs.append([(event["alert_id"], event["sequence"], event["status"]) for event in events])
    assert runs[0]
    assert runs[0] == runs[1]


def test_engine_unknown_score_names_choices(bundle):
    with pytest.raises(ValueError, match="'nope' is unknown"):
        StreamEngine(bundle, EngineConfig(score="nope"))


class _ListSink:
    def __init__(self, items):
        self.items = items

    def send(self, items):
        self.items.extend(items)

    def flush(self):
        pass

    def close(self):
        pass


def _with_huge_value(series, row, value):
    records = _records(series)
    poisoned = records[row].values.copy()
    poisoned[0] = value
    records[row] = Record(records[row].series, records[row].timestamp, poisoned)
    return records


@pytest.mark.parametrize("value", [1e40, -1e308, 1e30, 1e21])
def test_engine_rejects_value_out_of_range(bundle, value):
    series = _sine_series("s", 60, seed=3)
    clean_records = _records(series)
    del clean_records[30]
    clean = StreamEngine(bundle).process(clean_records)

    engine = StreamEngine(bundle)
    result = engine.process(_with_huge_value(series, 30, value))

    assert [(r.index, r.reason) for r in result.rejected] == [(30, "value_out_of_range")]
    message = result.rejected[0].message
    assert "'s'" in message
    assert repr(value) in message
    assert "'c0'" in message
    assert "fix the producer" in message
    assert [p.score for p in result.points] == [p.score for p in clean.points]
    assert [p.is_alert for p in result.points] == [p.is_alert for p in clean.points]
    assert engine.stats["rejected_value_out_of_range"] == 1


def test_engine_scores_large_value_below_bound(bundle):
    engine = StreamEngine(bundle)
    result = engine.process(_with_huge_value(_sine_series("s", 60, seed=3), 30, 1e15))
    assert result.rejected == []
    assert all(np.isfinite(p.score) for p in result.points)
    assert any(p.is_alert for p in result.points)


# Raw values that are small in float32 but 1e25 and 1e40 standard deviations out after scaling.
@pytest.mark.parametrize("value", [1e-5, 1e10])
def test_engine_rejects_value_overflowing_after_scaling(bundle, value):
    import copy

    small_std = copy.copy(bundle)
    small_std.scaler = copy.deepcopy(bundle.scaler)
    small_std.scaler.scale_ = np.full_like(bundle.scaler.scale_, 1e-30)
    small_std.scaler.mean_ = np.zeros_like(bundle.scaler.mean_)
    engine = StreamEngine(small_std)
    records = [Record("s", 1, np.array([value, 0.0])), Record("s", 2, np.array([0.0, 0.0]))]

    with np.errstate(all="raise"):
        result = engine.process(records)

    assert [(r.index, r.reason) for r in result.rejected] == [(0, "value_out_of_range")]
    assert engine.stats["records"] == 1
    assert engine.buffers.last_timestamp[engine.buffers.slots["s"]] == 2


def test_engine_drops_window_with_non_finite_score(bundle, monkeypatch, caplog):
    series = _sine_series("s", 40, seed=3)
    clean = StreamEngine(bundle).process(_records(series))
    engine = StreamEngine(bundle)
    original = engine._score

    def score_with_one_nan(batch, window_seeds):
        scores = original(batch, window_seeds).copy()
        scores[5] = np.inf
        return scores

    monkeypatch.setattr(engine, "_score", score_with_one_nan)
    result = engine.process(_records(series))

    assert len(result.points) == len(clean.points) - 1
    expected_scores = [p.score for i, p in enumerate(clean.points) if i != 5]
    assert [p.score for p in result.points] == expected_scores
    assert engine.stats["windows_dropped_non_finite_score"] == 1
    assert "non-finite score" in caplog.text
    assert all(np.isfinite(p.threshold) for p in result.points)


def test_engine_survives_scorer_error(bundle, monkeypatch):
    series = _sine_series("s", 40, seed=3)
    engine = StreamEngine(bundle)
    original = engine._score

    def failing_for_batches(batch, window_seeds):
        if len(batch) > 1:
            raise RuntimeError("linalg.svd: the algorithm failed to converge")
        return original(batch, window_seeds)

    monkeypatch.setattr(engine, "_score", failing_for_batches)
    result = engine.process(_records(series))

    assert len(result.points) == 40 - WINDOW + 1
    assert all(np.isfinite(p.score) for p in result.points)


def test_engine_warns_few_validation_windows(bundle, caplog):
    windows = len(bundle.validation_scores["likelihood"])
    assert windows < 999

    with caplog.at_level("WARNING", logger="streamad.engine.engine"):
        StreamEngine(bundle, EngineConfig(score="likelihood"))
    assert f"has {windows} validation windows for the likelihood score" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="streamad.engine.engine"):
        StreamEngine(bundle, EngineConfig(score="likelihood", severity_warning=0.5, severity_critical=0.9))
    assert "validation windows" not in caplog.text

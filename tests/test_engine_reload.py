"""Model swap in the engine, the directory of bundle versions and the reloader, without Kafka."""

import copy
import json
import logging
import os
import time

import numpy as np
import pytest

from streamad.bundle import BundleError, load_bundle, resolve_bundle_path, save_bundle
from streamad.data import Series
from streamad.engine import EngineConfig, StreamEngine
from streamad.engine.checkpoint import CheckpointStore
from streamad.engine.incidents import alert_id_for
from streamad.engine.reload import BundleReloader
from streamad.records import Record
from streamad.thresholds import AdaptiveThreshold
from streamad.training import TrainConfig, train_bundle

WINDOW = 12
SPIKE = slice(150, 170)
SECOND_SPIKE = slice(240, 250)
# A cut inside the first spike, where an incident of every series is open.
CUT_STEP = SPIKE.start + 5


def _sine_series(series_id, length=300, seed=0, offset=0.0, gain=1.0):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    values = gain * np.stack([np.sin(t / 6.0), np.cos(t / 6.0)], axis=1) + offset + 0.05 * rng.normal(size=(length, 2))
    return Series(series_id, t * 60_000, values, ["c0", "c1"], True)


def _train(seed, offset=0.0, gain=1.0):
    config = TrainConfig(window=WINDOW, latent=2, hidden=16, epochs=8, seed=seed, patience=4)
    return train_bundle([_sine_series("train", 800, seed=seed + 10, offset=offset, gain=gain)], config, progress=False)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two compatible bundles, saved, whose scalers differ: ``old`` and ``new``."""
    directory = tmp_path_factory.mktemp("trained")
    old = _train(seed=0)
    save_bundle(old, directory / "old")
    # Slightly shifted and scaled training data: another scaler, still the same kind of series.
    new = _train(seed=1, offset=0.2, gain=1.1)
    save_bundle(new, directory / "new")
    assert old.version != new.version
    assert not np.allclose(old.scaler.mean_, new.scaler.mean_)
    return old, new


def _records(series_ids, length=300):
    """Interleaved records of several series, each with two spikes that open incidents."""
    columns = []
    for index, series_id in enumerate(series_ids):
        series = _sine_series(series_id, length=length, seed=index + 1)
        values = series.values.copy()
        values[SPIKE] += 4.0
        values[SECOND_SPIKE] -= 4.0
        columns.append([Record(series_id, int(series.timestamps[i]), values[i]) for i in range(len(series))])
    return [record for row in zip(*columns) for record in row]


def _windows(engine, series_id):
    return engine.buffers.window_of(engine.buffers.slots[series_id])


def test_swap_keeps_windows_and_scores_like_new_model(bundles):
    old, new = bundles
    records = _records(["a", "b"])
    cut = 2 * CUT_STEP
    engine = StreamEngine(old, EngineConfig())
    engine.process(records[:cut])
    seen = engine.buffers.seen.copy()

    engine.swap_bundle(new)

    fresh = StreamEngine(new, EngineConfig())
    fresh.process(records[:cut])
    np.testing.assert_array_equal(engine.buffers.seen, seen)
    for series_id in ("a", "b"):
        np.testing.assert_allclose(_windows(engine, series_id), _windows(fresh, series_id), rtol=1e-5, atol=1e-5)
    # The next windows span the swap and score as if the new model had run from the start.
    after = engine.process(records[cut : cut + 10])
    expected = fresh.process(records[cut : cut + 10])
    assert len(after.points) == 10
    np.testing.assert_allclose([p.score for p in after.points], [p.score for p in expected.points], rtol=1e-4)


def test_swap_reseeds_thresholds(bundles):
    old, new = bundles
    engine = StreamEngine(old, EngineConfig(per_series_threshold=True))
    engine.process(_records(["a"])[:100])
    engine.swap_bundle(new)
    seeded = AdaptiveThreshold(new.validation_scores["likelihood"], level=0.999, per_series=True)
    assert engine.threshold.current("a") == pytest.approx(seeded.current("a"))
    assert engine.calibrator.probability(np.array([seeded.current("a")]))[0] == pytest.approx(
        StreamEngine(new, EngineConfig()).calibrator.probability(np.array([seeded.current("a")]))[0]
    )


def test_swap_open_incident_keeps_alert_id(bundles):
    old, new = bundles
    records = _records(["a"])
    engine = StreamEngine(old, EngineConfig())
    before = engine.process(records[:CUT_STEP])
    firing = [event for event in before.events if event["status"] == "firing"]
    assert firing, "the first spike opened no incident"
    open_id = firing[-1]["alert_id"]
    assert firing[-1]["model_version"] == old.version
    assert engine.incidents.is_open(engine.buffers.slots["a"])

    engine.swap_bundle(new)
    after = engine.process(records[CUT_STEP:])

    continued = [event for event in after.events if event["alert_id"] == open_id]
    assert continued, "the open incident emitted nothing after the swap"
    assert continued[-1]["status"] == "resolved"
    assert all(event["model_version"] == new.version for event in after.events)
    later = [event for event in after.events if event["status"] == "firing"]
    assert later, "the second spike opened no incident"
    for event in later:
        start = int(np.datetime64(event["start"].rstrip("Z"), "ms").astype(np.int64))
        assert event["alert_id"] == alert_id_for("a", start, new.version, event["score_name"])


@pytest.mark.parametrize(
    ("name", "value"), [("window", WINDOW + 4), ("stride", 2), ("channels", ["x", "y"]), ("channels", ["c0"])]
)
def test_swap_rejects_incompatible_bundle(bundles, name, value):
    old, new = bundles
    other = copy.copy(new)
    other.config = dict(new.config, **{name: value})
    engine = StreamEngine(old, EngineConfig())
    engine.process(_records(["a"])[:50])
    threshold = engine.threshold

    with pytest.raises(ValueError, match=name):
        engine.swap_bundle(other)
    assert engine.bundle is old
    assert engine.threshold is threshold
    assert engine.incidents.model_version == old.version


def test_swap_rejects_bundle_without_score(bundles):
    old, new = bundles
    other = copy.copy(new)
    other.validation_scores = {"reconstruction": new.validation_scores["reconstruction"]}
    engine = StreamEngine(old, EngineConfig())
    with pytest.raises(ValueError, match="no validation scores for 'likelihood'"):
        engine.swap_bundle(other)
    assert engine.bundle is old


def test_checkpoint_of_old_model_restores_after_reload(bundles, tmp_path):
    old, new = bundles
    records = _records(["a"])
    store = CheckpointStore(tmp_path)
    first = StreamEngine(old, EngineConfig(per_series_threshold=True))
    before = first.process(records[:CUT_STEP])
    open_id = [event for event in before.events if event["status"] == "firing"][-1]["alert_id"]
    store.write("t", 0, CUT_STEP - 1, first.snapshot(["a"]))
    # The daemon reloads, and is restarted with the new model before the partition is checkpointed again.
    first.swap_bundle(new)

    second = StreamEngine(new, EngineConfig(per_series_threshold=True))
    second.restore(store.read("t", 0).state)

    fresh = StreamEngine(new, EngineConfig(per_series_threshold=True))
    fresh.process(records[:CUT_STEP])
    np.testing.assert_allclose(_windows(second, "a"), _windows(fresh, "a"), rtol=1e-5, atol=1e-5)
    seeded = AdaptiveThreshold(new.validation_scores["likelihood"], level=0.999, per_series=True)
    assert second.threshold.current("a") == pytest.approx(seeded.current("a"))
    after = second.process(records[CUT_STEP:])
    assert any(event["alert_id"] == open_id and event["status"] == "resolved" for event in after.events)
    assert all(event["model_version"] == new.version for event in after.events)


def test_checkpoint_after_reload_restores_in_new_model(bundles, tmp_path):
    old, new = bundles
    records = _records(["a"])
    store = CheckpointStore(tmp_path)
    engine = StreamEngine(old, EngineConfig(per_series_threshold=True))
    engine.process(records[:100])
    engine.swap_bundle(new)
    engine.process(records[100:CUT_STEP])
    store.write("t", 0, CUT_STEP - 1, engine.snapshot(["a"]))
    rest = engine.process(records[CUT_STEP:])

    restarted = StreamEngine(new, EngineConfig(per_series_threshold=True))
    restarted.restore(store.read("t", 0).state)
    replayed = restarted.process(records[CUT_STEP:])
    assert replayed.events == rest.events
    np.testing.assert_allclose([p.score for p in replayed.points], [p.score for p in rest.points])


def test_restore_other_model_without_scaler_rejected(bundles):
    old, new = bundles
    engine = StreamEngine(old, EngineConfig())
    engine.process(_records(["a"])[:50])
    state = engine.snapshot(["a"])
    del state.meta["scaler"]
    target = StreamEngine(new, EngineConfig())
    with pytest.raises(ValueError, match="no scaler"):
        target.restore(state)
    assert "a" not in target.buffers.slots


# --- the directory of versions and the reloader ---


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _save(bundle, directory):
    """Save a copy of ``bundle`` to ``directory``, leaving the fixture's bundle unchanged."""
    save_bundle(copy.copy(bundle), directory)
    return directory


def test_resolve_newest_saved_version(bundles, tmp_path):
    old, new = bundles
    _save(new, tmp_path / "b")
    time.sleep(0.01)
    _save(old, tmp_path / "a")
    assert resolve_bundle_path(tmp_path) == tmp_path / "a"
    assert load_bundle(tmp_path).version == old.version
    # A bundle directory resolves to itself.
    assert resolve_bundle_path(tmp_path / "b") == tmp_path / "b"


def test_resolve_current_file_wins(bundles, tmp_path):
    old, new = bundles
    _save(old, tmp_path / "a")
    time.sleep(0.01)
    _save(new, tmp_path / "b")
    (tmp_path / "CURRENT").write_text("a\n")
    assert load_bundle(tmp_path).version == old.version


def test_resolve_ignores_hidden_directories(bundles, tmp_path):
    old, new = bundles
    _save(old, tmp_path / "a")
    time.sleep(0.01)
    _save(new, tmp_path / ".incoming")
    assert resolve_bundle_path(tmp_path) == tmp_path / "a"


@pytest.mark.parametrize("content", ["", "../a", "missing"])
def test_resolve_invalid_current_file(bundles, tmp_path, content):
    old, _ = bundles
    _save(old, tmp_path / "a")
    (tmp_path / "CURRENT").write_text(content)
    with pytest.raises(BundleError, match="CURRENT"):
        resolve_bundle_path(tmp_path)


def test_resolve_empty_directory(tmp_path):
    with pytest.raises(BundleError, match="neither bundle files nor version subdirectories"):
        load_bundle(tmp_path)


def _write_half_bundle(source, target):
    """Write the state of a copy in progress: the config and half of the weights, no metadata yet."""
    target.mkdir()
    (target / "config.json").write_bytes((source / "config.json").read_bytes())
    weights = (source / "model.pt").read_bytes()
    (target / "model.pt").write_bytes(weights[: len(weights) // 2])
    # The newest directory, so it is the current version.
    future = time.time() + 60
    os.utime(target, (future, future))


def _start_reloader(bundle, directory):
    """Save ``bundle`` as version v1 of ``directory`` and watch it with a 30 s reloader on a fake clock.

    Return the engine, the clock, the list of reload results and the reloader.
    """
    _save(bundle, directory / "v1")
    engine = StreamEngine(load_bundle(directory), EngineConfig())
    clock = FakeClock()
    results = []
    reloader = BundleReloader(engine, directory, interval_s=30, on_result=results.append, clock=clock)
    return engine, clock, results, reloader


def test_reloader_swaps_new_version(bundles, tmp_path):
    old, new = bundles
    engine, clock, results, reloader = _start_reloader(old, tmp_path)

    time.sleep(0.01)
    _save(new, tmp_path / "v2")
    clock.now = 29
    assert not reloader.check()
    assert engine.bundle.version == old.version

    clock.now = 30
    assert reloader.check()
    assert engine.bundle.version == new.version
    assert engine.bundle.path == tmp_path / "v2"
    assert results == ["loaded"]
    clock.now = 60
    assert not reloader.check()
    assert results == ["loaded"]


def test_reloader_retries_broken_bundle(bundles, tmp_path, caplog):
    old, new = bundles
    engine, clock, results, reloader = _start_reloader(old, tmp_path)
    _save(new, tmp_path.parent / f"{tmp_path.name}-source")
    _write_half_bundle(tmp_path.parent / f"{tmp_path.name}-source", tmp_path / "v2")

    with caplog.at_level(logging.DEBUG, logger="streamad.engine.reload"):
        for attempt in range(1, 4):
            clock.now = 30 * attempt
            assert not reloader.check()
    assert results == ["failed"] * 3
    assert engine.bundle.version == old.version
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1, "a repeated failure should be logged at ERROR level once"
    assert "v2" in errors[0].getMessage()

    # The copy completes, and the next check loads it.
    _save(new, tmp_path / "v2")
    clock.now = 120
    assert reloader.check()
    assert engine.bundle.version == new.version
    assert results[-1] == "loaded"


def test_reloader_rejects_incompatible_once(bundles, tmp_path, caplog):
    old, new = bundles
    engine, clock, results, reloader = _start_reloader(old, tmp_path)
    other = copy.copy(new)
    other.config = dict(new.config, stride=3)
    time.sleep(0.01)
    save_bundle(other, tmp_path / "v2")

    with caplog.at_level(logging.ERROR, logger="streamad.engine.reload"):
        clock.now = 30
        assert not reloader.check()
        clock.now = 60
        assert not reloader.check()
    assert results == ["rejected"]
    assert engine.bundle.version == old.version
    assert any("stride" in record.getMessage() for record in caplog.records)

    # CURRENT pins a version: here a rollback to v1, then a move to a compatible v3.
    _save(new, tmp_path / "v3")
    (tmp_path / "CURRENT").write_text("v1")
    clock.now = 90
    assert not reloader.check()
    (tmp_path / "CURRENT").write_text("v3")
    clock.now = 120
    assert reloader.check()
    assert engine.bundle.version == new.version


def test_reloader_survives_missing_directory(bundles, tmp_path):
    old, _ = bundles
    _save(old, tmp_path / "models" / "v1")
    engine = StreamEngine(load_bundle(tmp_path / "models"), EngineConfig())
    clock = FakeClock()
    reloader = BundleReloader(engine, tmp_path / "models", interval_s=1, clock=clock)
    (tmp_path / "models").rename(tmp_path / "moved")
    clock.now = 1
    assert not reloader.check()
    assert engine.bundle.version == old.version


def test_saved_bundle_records_saved_at(bundles, tmp_path):
    old, _ = bundles
    _save(old, tmp_path / "a")
    metadata = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert metadata["saved_at"].endswith("+00:00")

"""Channel attribution of alerts: the parts sum to -log p(x), and an injected fault's channel ranks first."""

import numpy as np
import pytest
import torch

from shared_data import SMAP_MSL, require
from streamad.alerts.attribution import attribute_windows, channel_entries
from streamad.data import Series
from streamad.engine import EngineConfig, StreamEngine
from streamad.records import Record
from streamad.scores import score_windows
from streamad.training import TrainConfig, train_bundle

SINE_WINDOW = 12


def _sine_series(series_id, length, seed, channels=5):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    values = np.stack([np.sin(t / (5.0 + k) + k) for k in range(channels)], axis=1) + 0.05 * rng.normal(size=(length, channels))
    return Series(series_id, t * 60_000, values, [f"c{k}" for k in range(channels)], True)


@pytest.fixture(scope="module")
def sine_bundle():
    config = TrainConfig(window=SINE_WINDOW, latent=2, hidden=32, epochs=15, seed=0, patience=5)
    return train_bundle([_sine_series("train", 600, 0)], config, progress=False, score_names=("likelihood",))


@pytest.mark.parametrize(
    "options",
    [{}, {"z_star": "map"}, {"form": "manifold"}, {"jacobian": "encoder"}],
    ids=["default", "map", "manifold", "encoder"],
)
def test_parts_sum_to_likelihood_score(sine_bundle, options):
    series = _sine_series("test", 80, 1)
    series.values[40:50, 3] += 3.0
    model = sine_bundle.model
    scaled = sine_bundle.scaler.transform(series.values)
    windows = torch.from_numpy(np.stack([scaled[i : i + SINE_WINDOW] for i in range(60)])).to(next(model.parameters()).dtype)

    parts = attribute_windows(model, windows, **options)
    scores = score_windows(model, windows, "likelihood", **options).numpy()

    totals = np.array([part.total for part in parts])
    np.testing.assert_allclose(totals, scores, rtol=1e-9, atol=1e-6)
    for part in parts:
        assert np.all(part.residual >= 0)
    if options.get("form", "laplace") == "laplace":
        assert all(part.latent >= 0 for part in parts)


def test_entries_shares_sum_to_one_with_other(sine_bundle):
    model = sine_bundle.model
    scaled = sine_bundle.scaler.transform(_sine_series("test", 40, 2).values)
    windows = torch.from_numpy(scaled[None, :SINE_WINDOW]).to(next(model.parameters()).dtype)
    (part,) = attribute_windows(model, windows)
    names = [f"c{k}" for k in range(5)]

    entries = channel_entries(part, names, top=2)
    assert [entry["kind"] for entry in entries] == ["channel", "channel", "other", "latent"]
    assert entries[2]["channels"] == 3
    assert entries[0]["nats"] >= entries[1]["nats"]
    assert sum(entry["share"] for entry in entries) == pytest.approx(1.0, abs=1e-3)
    assert sum(entry["nats"] for entry in entries) + part.log_normalizer == pytest.approx(part.total, abs=1e-3)

    all_listed = channel_entries(part, names, top=4)
    assert [entry["kind"] for entry in all_listed] == ["channel"] * 5 + ["latent"]


def test_event_channels_sum_to_event_score(sine_bundle):
    series = _sine_series("faulty", 200, 3)
    series.values[120:140, 1] += 4.0
    engine = StreamEngine(sine_bundle, EngineConfig(update_every=1))
    records = [Record("faulty", int(series.timestamps[i]), series.values[i]) for i in range(len(series))]
    events = engine.process(records).events
    with_channels = [event for event in events if event["channels"]]
    assert with_channels
    for event in with_channels:
        nats = sum(entry["nats"] for entry in event["channels"])
        assert nats + event["log_normalizer"] == pytest.approx(event["score"], abs=1e-2)
        assert sum(entry["share"] for entry in event["channels"]) == pytest.approx(1.0, abs=1e-3)
    assert with_channels[0]["channels"][0]["channel"] == "c1"


# SMAP/MSL: a model of the varying columns of one spacecraft channel, with a fault injected
# into one column of the test array.
SMAP_CHANNEL = "A-1"
FAULT_COLUMN = "5"
FAULT = slice(2000, 2050)
TEST_SPAN = slice(1700, 2300)


def _varying_columns(train_path):
    values = np.load(train_path)
    return [str(index) for index in np.flatnonzero(values.std(axis=0) > 0.05)]


def test_injected_fault_channel_ranks_first():
    from connectors.files import load_file_series

    data_dir = require(SMAP_MSL)
    train_path = data_dir / "train" / f"{SMAP_CHANNEL}.npy"
    test_path = data_dir / "test" / f"{SMAP_CHANNEL}.npy"
    require(train_path)
    columns = _varying_columns(train_path)
    assert FAULT_COLUMN in columns
    assert len(columns) >= 5

    (train_series,) = load_file_series(train_path, channels=columns)
    (test_series,) = load_file_series(test_path, channels=columns)
    config = TrainConfig(window=16, latent=4, hidden=64, epochs=12, patience=4, seed=0)
    bundle = train_bundle([train_series], config, progress=False, score_names=("likelihood",))

    test_series = test_series.slice(TEST_SPAN.start, TEST_SPAN.stop)
    column = test_series.channels.index(FAULT_COLUMN)
    spread = train_series.values[:, column].std()
    start = FAULT.start - TEST_SPAN.start
    test_series.values[start : start + (FAULT.stop - FAULT.start), column] += 25.0 * spread

    engine = StreamEngine(bundle, EngineConfig(has_clock=False, top_channels=3))
    records = [Record(test_series.series_id, int(test_series.timestamps[i]), test_series.values[i]) for i in range(len(test_series))]
    events = engine.process(records).events

    in_fault = [
        event
        for event in events
        if event["status"] in ("firing", "update") and FAULT.start <= int(event["timestamp"]) < FAULT.stop + 16
    ]
    assert in_fault, f"no firing or update event during the fault; events: {[(e['status'], e['timestamp']) for e in events]}"
    for event in in_fault:
        assert event["channels"][0]["channel"] == FAULT_COLUMN
        assert event["channels"][0]["kind"] == "channel"
    first = in_fault[0]
    assert [entry["kind"] for entry in first["channels"]][-2:] == ["other", "latent"]
    assert sum(entry["share"] for entry in first["channels"]) == pytest.approx(1.0, abs=1e-3)
    nats = sum(entry["nats"] for entry in first["channels"])
    assert nats + first["log_normalizer"] == pytest.approx(first["score"], abs=1e-2)

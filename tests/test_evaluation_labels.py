"""Tests of load_labels on the real NAB and SMAP/MSL label files and on small temp files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamad.data import Series, load_series, parse_timestamp
from streamad.evaluation import load_labels

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NAB_WINDOWS = SHARED_DATA / "nab" / "labels" / "combined_windows.json"
NAB_POINTS = SHARED_DATA / "nab" / "labels" / "combined_labels.json"
NAB_MACHINE = SHARED_DATA / "nab" / "data" / "realKnownCause" / "machine_temperature_system_failure.csv"
SMAP_LABELS = SHARED_DATA / "smap_msl" / "labeled_anomalies.csv"
SMAP_A1_TEST = SHARED_DATA / "smap_msl" / "test" / "A-1.npy"
SMAP_A1_TRAIN = SHARED_DATA / "smap_msl" / "train" / "A-1.npy"

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"the benchmark data folder {SHARED_DATA} is absent"
)

TELEMANOM_HEADER = "chan_id,spacecraft,anomaly_sequences,class,num_values\n"


def clock_series(length: int, step_ms: int = 60_000) -> Series:
    return Series("demo", np.arange(length) * step_ms, np.zeros(length), ["value"], True)


def step_series(length: int, series_id: str = "X-1") -> Series:
    return Series(series_id, np.arange(length), np.zeros((length, 2)), ["0", "1"], False)


def write_json(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


# Real files ----------------------------------------------------------------------------------


@needs_shared_data
def test_nab_machine_temperature_windows():
    series = load_series(NAB_MACHINE, out_of_order="drop")
    labels = load_labels(NAB_WINDOWS, NAB_MACHINE, series)
    windows = json.loads(NAB_WINDOWS.read_text())["realKnownCause/machine_temperature_system_failure.csv"]

    assert labels.shape == (len(series),)
    assert labels.dtype == bool
    assert len(windows) == 4
    starts = np.flatnonzero(np.diff(labels.astype(int)) == 1) + 1
    stops = np.flatnonzero(np.diff(labels.astype(int)) == -1)
    assert len(starts) == len(windows)
    for (start_text, end_text), first, last in zip(windows, starts, stops):
        assert series.timestamps[first] == parse_timestamp(start_text)
        assert series.timestamps[last] == parse_timestamp(end_text)


@needs_shared_data
def test_nab_point_labels_file():
    series = load_series(NAB_MACHINE, out_of_order="drop")
    labels = load_labels(NAB_POINTS, NAB_MACHINE, series)
    points = json.loads(NAB_POINTS.read_text())["realKnownCause/machine_temperature_system_failure.csv"]

    assert labels.sum() == len(points)
    assert sorted(series.timestamps[labels].tolist()) == sorted(parse_timestamp(point) for point in points)


@needs_shared_data
def test_smap_a1_labels():
    series = load_series(SMAP_A1_TEST)
    labels = load_labels(SMAP_LABELS, SMAP_A1_TEST, series)

    # labeled_anomalies.csv: A-1,SMAP,"[[4690, 4774]]",[point],8640
    assert labels.shape == (8640,)
    assert labels.sum() == 4774 - 4690 + 1
    assert labels[4690]
    assert labels[4774]
    assert not labels[4689]
    assert not labels[4775]


@needs_shared_data
def test_smap_train_file_rejected():
    series = load_series(SMAP_A1_TRAIN)

    with pytest.raises(ValueError) as caught:
        load_labels(SMAP_LABELS, SMAP_A1_TRAIN, series)

    message = str(caught.value)
    assert "num_values is 8640" in message
    assert f"has {len(series)} points" in message
    assert "test/ folder" in message


@needs_shared_data
def test_nab_unknown_key_real_file():
    with pytest.raises(ValueError) as caught:
        load_labels(NAB_WINDOWS, "data/realKnownCause/machine_temperature_failure.csv", clock_series(3))

    message = str(caught.value)
    assert "'realKnownCause/machine_temperature_failure.csv'" in message
    assert "Similar entries: ['realKnownCause/machine_temperature_system_failure.csv'" in message


# NAB format ----------------------------------------------------------------------------------


def test_nab_windows_inclusive(tmp_path):
    labels_path = write_json(
        tmp_path / "combined_windows.json",
        {"cat/x.csv": [["1970-01-01 00:01:00.000000", "1970-01-01 00:02:00.000000"], ["1970-01-01 00:05:00", "1970-01-01 00:05:00"]]},
    )
    labels = load_labels(labels_path, tmp_path / "cat" / "x.csv", clock_series(7))

    assert labels.tolist() == [False, True, True, False, False, True, False]


def test_nab_window_between_points(tmp_path):
    labels_path = write_json(tmp_path / "w.json", {"cat/x.csv": [["1970-01-01 00:01:10", "1970-01-01 00:02:50"]]})
    labels = load_labels(labels_path, "cat/x.csv", clock_series(4))

    assert labels.tolist() == [False, False, True, False]


def test_nab_empty_entry(tmp_path):
    labels_path = write_json(tmp_path / "w.json", {"cat/x.csv": []})

    assert not load_labels(labels_path, "cat/x.csv", clock_series(3)).any()


def test_nab_window_outside_series_warns(tmp_path, caplog):
    labels_path = write_json(tmp_path / "w.json", {"cat/x.csv": [["2000-01-01", "2000-01-02"]]})
    labels = load_labels(labels_path, "cat/x.csv", clock_series(3))

    assert not labels.any()
    assert "covers no point of series demo" in caplog.text


def test_nab_unknown_key_lists_entries(tmp_path):
    labels_path = write_json(tmp_path / "w.json", {"cat/a.csv": [], "cat/b.csv": []})

    with pytest.raises(ValueError) as caught:
        load_labels(labels_path, "other/zzz.csv", clock_series(3))

    message = str(caught.value)
    assert "no entry 'other/zzz.csv'" in message
    assert "Some valid entries: ['cat/a.csv', 'cat/b.csv'] (2 in total)" in message


def test_nab_needs_clock(tmp_path):
    labels_path = write_json(tmp_path / "w.json", {"cat/x.csv": []})

    with pytest.raises(ValueError, match="series 'X-1' has no clock"):
        load_labels(labels_path, "cat/x.csv", step_series(3))


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([["1970-01-01", "yesterday"]], "timestamp 'yesterday'"),
        ([["1970-01-01"]], "is neither a [start, end] window nor a single timestamp"),
        ([["1970-01-02", "1970-01-01"]], "ends before it starts"),
        ("1970-01-01", "expected a list of windows"),
    ],
)
def test_nab_malformed_entry(tmp_path, entries, fragment):
    labels_path = write_json(tmp_path / "w.json", {"cat/x.csv": entries})

    with pytest.raises(ValueError) as caught:
        load_labels(labels_path, "cat/x.csv", clock_series(3))

    assert fragment in str(caught.value)
    assert "'cat/x.csv'" in str(caught.value)


def test_nab_not_an_object(tmp_path):
    labels_path = write_json(tmp_path / "w.json", [1, 2])

    with pytest.raises(ValueError, match="w.json contains a JSON list"):
        load_labels(labels_path, "cat/x.csv", clock_series(3))


def test_nab_invalid_json(tmp_path):
    labels_path = tmp_path / "w.json"
    labels_path.write_text("{oops", encoding="utf-8")

    with pytest.raises(ValueError, match="w.json is not valid JSON"):
        load_labels(labels_path, "cat/x.csv", clock_series(3))


# SMAP/MSL format -----------------------------------------------------------------------------


def test_telemanom_sequences_inclusive(tmp_path):
    labels_path = tmp_path / "labeled_anomalies.csv"
    labels_path.write_text(TELEMANOM_HEADER + 'X-1,SMAP,"[[1, 2], [5, 5]]",[point],7\n', encoding="utf-8")
    labels = load_labels(labels_path, tmp_path / "test" / "X-1.npy", step_series(7))

    assert labels.tolist() == [False, True, True, False, False, True, False]


def test_telemanom_duplicate_rows_union(tmp_path, caplog):
    labels_path = tmp_path / "labeled_anomalies.csv"
    labels_path.write_text(
        TELEMANOM_HEADER + 'X-1,SMAP,"[[1, 2]]",[point],6\nX-1,SMAP,"[[4, 4]]",[point],6\n', encoding="utf-8"
    )
    labels = load_labels(labels_path, "X-1.npy", step_series(6))

    assert labels.tolist() == [False, True, True, False, True, False]
    assert "on 2 rows" in caplog.text


def test_telemanom_python_literal_sequences(tmp_path):
    labels_path = tmp_path / "labels.csv"
    labels_path.write_text(TELEMANOM_HEADER + "X-1,SMAP,\"[(0, 1)]\",[point],3\n", encoding="utf-8")

    assert load_labels(labels_path, "X-1.npy", step_series(3)).tolist() == [True, True, False]


def test_telemanom_unknown_channel(tmp_path):
    labels_path = tmp_path / "labels.csv"
    labels_path.write_text(TELEMANOM_HEADER + 'A-1,SMAP,"[[1, 2]]",[point],3\nA-2,SMAP,"[]",[],3\n', encoding="utf-8")

    with pytest.raises(ValueError) as caught:
        load_labels(labels_path, "test/A-3.npy", step_series(3, "A-3"))

    message = str(caught.value)
    assert "no row with chan_id 'A-3'" in message
    assert "Some valid entries: ['A-1', 'A-2']" in message


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ('X-1,SMAP,"[[1, 9]]",[point],5', "sequence [1, 9] is outside the series' 5 points"),
        ('X-1,SMAP,"[[3, 1]]",[point],5', "sequence [3, 1] is outside"),
        ('X-1,SMAP,"[[1, 2, 3]]",[point],5', "contains [1, 2, 3]; expected [start, end] integers"),
        ('X-1,SMAP,"[[1.5, 2]]",[point],5', "contains [1.5, 2]"),
        ("X-1,SMAP,oops,[point],5", "anomaly_sequences 'oops' is not a list"),
        ('X-1,SMAP,"[[1, 2]]",[point],many', "num_values 'many' is not an integer"),
        ('X-1,SMAP,"[[1, 2]]",[point],9', "num_values is 9, but series 'X-1' has 5 points"),
    ],
)
def test_telemanom_malformed_row(tmp_path, row, fragment):
    labels_path = tmp_path / "labels.csv"
    labels_path.write_text(TELEMANOM_HEADER + row + "\n", encoding="utf-8")

    with pytest.raises(ValueError) as caught:
        load_labels(labels_path, "X-1.npy", step_series(5))

    message = str(caught.value)
    assert fragment in message
    assert "line 2 (chan_id 'X-1')" in message


def test_telemanom_missing_columns(tmp_path):
    labels_path = tmp_path / "labels.csv"
    labels_path.write_text("channel,sequences\nX-1,[]\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"no column\(s\) \['chan_id', 'anomaly_sequences'\]"):
        load_labels(labels_path, "X-1.npy", step_series(5))


def test_unknown_label_format(tmp_path):
    with pytest.raises(ValueError, match="unknown label format '.txt'"):
        load_labels(tmp_path / "labels.txt", "X-1.npy", step_series(5))

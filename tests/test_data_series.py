"""Tests of Series and the timestamp helpers."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from streamad.data import Series, format_timestamp, parse_timestamp


def make_series(length: int = 5, channels: int = 2) -> Series:
    values = np.arange(length * channels, dtype=float).reshape(length, channels)
    names = [f"c{index}" for index in range(channels)]
    return Series("demo", np.arange(length) * 1000, values, names, True)


def test_series_converts_dtypes():
    series = Series("s", [0, 1, 2], [1, 2, 3], ["value"], False)

    assert series.timestamps.dtype == np.int64
    assert series.values.dtype == np.float64
    assert series.values.shape == (3, 1)
    assert len(series) == 3


def test_series_rejects_length_mismatch():
    with pytest.raises(ValueError, match="3 timestamps but 2 rows"):
        Series("s", [0, 1, 2], np.zeros((2, 1)), ["value"], False)


def test_series_rejects_channel_name_count():
    with pytest.raises(ValueError, match=r"1 channel names \['a'\] for 2 value columns"):
        Series("s", [0, 1], np.zeros((2, 2)), ["a"], False)


def test_series_rejects_repeated_channel():
    with pytest.raises(ValueError, match="repeat a name"):
        Series("s", [0, 1], np.zeros((2, 2)), ["a", "a"], False)


def test_series_rejects_unordered_timestamps():
    with pytest.raises(ValueError, match="timestamp 5 at index 2 is not after 7"):
        Series("s", [0, 7, 5], np.zeros(3), ["value"], False)


def test_series_slice_is_view():
    series = make_series()
    part = series.slice(1, 3)

    assert len(part) == 2
    assert part.timestamps.tolist() == [1000, 2000]
    assert part.channels == series.channels
    assert part.has_clock
    assert np.shares_memory(part.values, series.values)


def test_series_slice_negative_bounds():
    series = make_series()

    assert series.slice(-2, None).timestamps.tolist() == [3000, 4000]
    assert len(series.slice(3, 100)) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2013-12-02 21:15:00", 1386018900000),
        ("2013-12-02T21:15:00", 1386018900000),
        ("2013-12-02T21:15:00Z", 1386018900000),
        ("2013-12-02T22:15:00+01:00", 1386018900000),
        ("2014-04-10 07:15:00.000000", 1397114100000),
        ("2013-12-02T21:15:00.250Z", 1386018900250),
        ("  2013-12-02T21:15:00Z ", 1386018900000),
    ],
)
def test_parse_timestamp_strings(text, expected):
    assert parse_timestamp(text) == expected


def test_parse_timestamp_numbers():
    assert parse_timestamp(1386018900000) == 1386018900000
    assert parse_timestamp(np.int64(5)) == 5
    assert parse_timestamp(1386018900000.4) == 1386018900000
    assert parse_timestamp(np.float64(2.6)) == 3


def test_parse_timestamp_datetimes():
    aware = dt.datetime(2013, 12, 2, 22, 15, tzinfo=dt.timezone(dt.timedelta(hours=1)))

    assert parse_timestamp(aware) == 1386018900000
    assert parse_timestamp(dt.datetime(2013, 12, 2, 21, 15)) == 1386018900000
    assert parse_timestamp(pd.Timestamp("2013-12-02 21:15:00")) == 1386018900000
    assert parse_timestamp(np.datetime64("2013-12-02T21:15:00")) == 1386018900000


@pytest.mark.parametrize("value", ["yesterday", "2013-13-02 00:00:00", "", float("nan"), True, None, [1]])
def test_parse_timestamp_rejects(value):
    with pytest.raises(ValueError) as caught:
        parse_timestamp(value)

    assert repr(value) in str(caught.value)


def test_parse_timestamp_rejects_nat():
    with pytest.raises(ValueError, match="NaT"):
        parse_timestamp(np.datetime64("NaT"))


def test_format_timestamp_with_clock():
    assert format_timestamp(1386018900000, True) == "2013-12-02T21:15:00Z"
    assert format_timestamp(1386018900007, True) == "2013-12-02T21:15:00.007Z"
    assert format_timestamp(-1000, True) == "1969-12-31T23:59:59Z"


def test_format_timestamp_without_clock():
    assert format_timestamp(42, False) == "42"
    assert format_timestamp(np.int64(7), False) == "7"


@pytest.mark.parametrize("timestamp", [0, 1386018900000, 1386018900999, 4102444800123])
def test_format_parse_round_trip(timestamp):
    assert parse_timestamp(format_timestamp(timestamp, True)) == timestamp

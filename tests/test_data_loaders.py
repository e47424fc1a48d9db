"""Tests of load_series and load_series_collection on small files and on the real benchmarks."""

from __future__ import annotations

import gzip
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from shared_data import MACHINE_TEMPERATURE, require
from streamad.data import load_series, load_series_collection, parse_timestamp

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NAB_MACHINE = SHARED_DATA / "nab" / "data" / "realKnownCause" / "machine_temperature_system_failure.csv"
NAB_TRAFFIC = SHARED_DATA / "nab" / "data" / "realTraffic" / "occupancy_6005.csv"
SMAP_A1 = SHARED_DATA / "smap_msl" / "test" / "A-1.npy"

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"the benchmark data folder {SHARED_DATA} is absent"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    return write(path, "".join(json.dumps(record) + "\n" for record in records))


# Real files ----------------------------------------------------------------------------------


@needs_shared_data
def test_nab_csv_real_file():
    series = load_series(NAB_TRAFFIC)

    assert series.series_id == "occupancy_6005"
    assert series.channels == ["value"]
    assert series.has_clock
    assert series.values.shape == (2380, 1)
    assert series.timestamps[0] == parse_timestamp("2015-09-01 13:45:00")
    assert series.values[0, 0] == pytest.approx(3.06)
    assert np.all(np.diff(series.timestamps) > 0)


@needs_shared_data
def test_nab_out_of_order_file_raises():
    with pytest.raises(ValueError) as caught:
        load_series(NAB_MACHINE)

    message = str(caught.value)
    assert "machine_temperature_system_failure.csv" in message
    assert "line 10151 (2014-01-07T02:00:00Z)" in message
    assert "sort the file" in message


@needs_shared_data
def test_nab_out_of_order_file_drop(caplog):
    with caplog.at_level(logging.WARNING, logger="streamad.data.loaders"):
        series = load_series(NAB_MACHINE, out_of_order="drop")

    # The file repeats 02:00 to 02:55 on 2014-01-07 after 02:55; those 12 rows are dropped.
    assert len(series) == 22695 - 12
    assert np.all(np.diff(series.timestamps) > 0)
    assert series.values[0, 0] == pytest.approx(73.96732207)
    assert "dropped 12 row(s)" in caplog.text
    assert "the first at line 10151" in caplog.text


@needs_shared_data
def test_smap_npy_real_file():
    series = load_series(SMAP_A1)

    assert series.series_id == "A-1"
    assert series.values.shape == (8640, 25)
    assert series.channels[:3] == ["0", "1", "2"]
    assert not series.has_clock
    assert series.timestamps.tolist() == list(range(8640))


@needs_shared_data
def test_smap_npy_select_channel():
    series = load_series(SMAP_A1, channels=["0"])

    assert series.values.shape == (8640, 1)
    np.testing.assert_array_equal(series.values[:, 0], np.load(SMAP_A1)[:, 0])


# CSV -----------------------------------------------------------------------------------------


def test_csv_nab_style(tmp_path):
    path = write(tmp_path / "cpu.csv", "timestamp,value\n2024-01-01 00:00:00,1.5\n2024-01-01 00:05:00,2.5\n")
    series = load_series(path)

    assert series.series_id == "cpu"
    assert series.timestamps.tolist() == [1704067200000, 1704067500000]
    assert series.values[:, 0].tolist() == [1.5, 2.5]


def test_csv_missing_values_are_nan(tmp_path):
    path = write(tmp_path / "m.csv", "timestamp,a,b\n2024-01-01,1,\n2024-01-02,NaN,4\n2024-01-03,,5\n")
    series = load_series(path)

    assert series.channels == ["a", "b"]
    np.testing.assert_array_equal(np.isnan(series.values), [[False, True], [True, False], [True, False]])


@pytest.mark.parametrize("name", ["Time", "DATE", "datetime", "timestamp"])
def test_csv_detects_timestamp_column(tmp_path, name):
    path = write(tmp_path / "t.csv", f"x,{name}\n1,2024-01-01T00:00:00Z\n2,2024-01-01T00:01:00Z\n")
    series = load_series(path)

    assert series.channels == ["x"]
    assert series.has_clock
    assert series.timestamps[1] - series.timestamps[0] == 60_000


def test_csv_explicit_timestamp_column(tmp_path):
    path = write(tmp_path / "t.csv", "when,load\n2024-01-01T00:00:00+02:00,1\n2024-01-01T00:00:00Z,2\n")
    series = load_series(path, timestamp_column="when")

    assert series.timestamps.tolist() == [1704060000000, 1704067200000]


def test_csv_epoch_milliseconds(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n1704067200000,1\n1704067260000,2\n")
    series = load_series(path)

    assert series.timestamps.tolist() == [1704067200000, 1704067260000]
    assert series.has_clock


def test_csv_without_timestamp_is_step_indexed(tmp_path):
    path = write(tmp_path / "t.csv", "a,b\n1,2\n3,4\n5,6\n")
    series = load_series(path)

    assert not series.has_clock
    assert series.timestamps.tolist() == [0, 1, 2]
    assert series.channels == ["a", "b"]


def test_csv_channels_select_and_order(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,host,a,b\n2024-01-01,web1,1,2\n2024-01-02,web2,3,4\n")
    series = load_series(path, channels=["b", "a"])

    assert series.channels == ["b", "a"]
    assert series.values.tolist() == [[2.0, 1.0], [4.0, 3.0]]


def test_csv_mixed_iso_forms_fall_back(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01 00:00:00,1\n2024-01-01T00:01:00.5+00:00,2\n")
    series = load_series(path)

    assert series.timestamps.tolist() == [1704067200000, 1704067260500]


def test_csv_gzip(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("timestamp,v\n2024-01-01,1\n2024-01-02,2\n")
    series = load_series(path)

    assert series.series_id == "t.csv"
    assert len(series) == 2


def test_csv_series_id_override(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n")

    assert load_series(path, series_id="web-1").series_id == "web-1"


def test_csv_non_numeric_column_raises(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,host,v\n2024-01-01,web1,1\n")

    with pytest.raises(ValueError) as caught:
        load_series(path)

    message = str(caught.value)
    assert "t.csv" in message
    assert "'host'" in message
    assert "'web1'" in message
    assert "line 2" in message
    assert "pass channels=['v']" in message


def test_csv_bad_number_in_selected_channel(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n2024-01-02,oops\n")

    with pytest.raises(ValueError) as caught:
        load_series(path, channels=["v"])

    message = str(caught.value)
    assert "t.csv: line 3, column 'v' contains 'oops', which is not a number" in message
    assert "channels" not in message


def test_csv_unknown_channel_raises(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n")

    with pytest.raises(ValueError, match=r"no channel\(s\) \['w'\]; the available channels are \['v'\]"):
        load_series(path, channels=["w"])


def test_csv_channels_as_string_raises(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n")

    with pytest.raises(ValueError, match=r"use channels=\['v'\]"):
        load_series(path, channels="v")


def test_csv_unknown_timestamp_column_raises(tmp_path):
    path = write(tmp_path / "t.csv", "ts,v\n2024-01-01,1\n")

    with pytest.raises(ValueError, match=r"no column 'when' for timestamp_column; its columns are \['ts', 'v'\]"):
        load_series(path, timestamp_column="when")


def test_csv_ambiguous_timestamp_columns(tmp_path):
    path = write(tmp_path / "t.csv", "date,time,v\n2024-01-01,00:00,1\n")

    with pytest.raises(ValueError, match=r"several timestamp-like columns \['date', 'time'\]"):
        load_series(path)


def test_csv_invalid_timestamp_names_row(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\nnot-a-date,2\n")

    with pytest.raises(ValueError) as caught:
        load_series(path)

    message = str(caught.value)
    assert "line 3, column 'timestamp'" in message
    assert "'not-a-date'" in message


def test_csv_missing_timestamp_names_row(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n,2\n")

    with pytest.raises(ValueError, match="line 3 has no value in the timestamp column 'timestamp'"):
        load_series(path)


def test_csv_unsorted_raises(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-02,1\n2024-01-01,2\n")

    with pytest.raises(ValueError) as caught:
        load_series(path)

    message = str(caught.value)
    assert "line 3 (2024-01-01T00:00:00Z)" in message
    assert "sort the file by timestamp" in message


def test_csv_duplicate_raises(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n2024-01-02,2\n2024-01-02,3\n")

    with pytest.raises(ValueError, match="line 4 repeats the timestamp 2024-01-02T00:00:00Z of line 3"):
        load_series(path)


def test_csv_drop_keeps_first_of_duplicates(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n2024-01-02,2\n2024-01-02,3\n2024-01-01,4\n2024-01-03,5\n")
    series = load_series(path, out_of_order="drop")

    assert series.values[:, 0].tolist() == [1.0, 2.0, 5.0]


def test_csv_drop_reports_rows(tmp_path):
    # Line 2 is blank, line 5 is whitespace, and the quoted note of line 3 spans line 4.
    text = (
        "timestamp,v,note\n"
        "\n"
        '2024-01-01 00:00:00,1,"two\nlines"\n'
        "2024-01-01 00:02:00,2,ok\n"
        "   \n"
        "2024-01-01 00:02:00,3,repeated\n"
        ' 2024-01-01 00:01:00 , 4 , "back"\n'
        "2024-01-01 00:03:00,5,ok\n"
    )
    path = write(tmp_path / "t.csv", text)
    rows = []

    series = load_series(path, channels=["v"], out_of_order="drop", on_out_of_order=rows.append)

    assert series.values[:, 0].tolist() == [1.0, 2.0, 5.0]
    latest = parse_timestamp("2024-01-01 00:02:00")
    assert [row.line_number for row in rows] == [7, 8]
    assert [row.line for row in rows] == ["2024-01-01 00:02:00,3,repeated", ' 2024-01-01 00:01:00 , 4 , "back"']
    assert [row.timestamp for row in rows] == [latest, parse_timestamp("2024-01-01 00:01:00")]
    assert [row.latest_timestamp for row in rows] == [latest, latest]
    assert {row.series_id for row in rows} == {"t"}


def test_csv_drop_reports_rows_of_gzip(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt", newline="") as handle:
        handle.write("timestamp,v\r\n2024-01-02,1\r\n2024-01-01,2\r\n2024-01-03,3\r\n")
    rows = []

    load_series(path, out_of_order="drop", on_out_of_order=rows.append)

    assert [(row.line_number, row.line) for row in rows] == [(3, "2024-01-01,2")]


def test_csv_drop_from_zip_is_only_logged(tmp_path, caplog):
    path = tmp_path / "t.csv.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("t.csv", "timestamp,v\n2024-01-02,1\n2024-01-01,2\n2024-01-03,3\n")
    rows = []

    with caplog.at_level(logging.WARNING, logger="streamad.data.loaders"):
        series = load_series(path, out_of_order="drop", on_out_of_order=rows.append)

    assert series.values[:, 0].tolist() == [1.0, 3.0]
    assert rows == []
    assert "1 row(s) dropped for out-of-order timestamps are not passed to on_out_of_order" in caplog.text
    assert "a .zip archive is not supported" in caplog.text


def test_csv_ordered_file_reports_no_rows(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n2024-01-02,2\n")
    rows = []

    load_series(path, out_of_order="drop", on_out_of_order=rows.append)

    assert rows == []


def test_nab_drop_reports_rows():
    path = require(MACHINE_TEMPERATURE)
    lines = path.read_text().splitlines()
    rows = []

    load_series(path, out_of_order="drop", on_out_of_order=rows.append)

    # 02:00 to 02:55 on 2014-01-07 come again after 02:55, on lines 10151 to 10162.
    assert [row.line_number for row in rows] == list(range(10151, 10163))
    assert [row.line for row in rows] == lines[10150:10162]
    assert {row.latest_timestamp for row in rows} == {parse_timestamp("2014-01-07 02:55:00")}
    assert [row.timestamp == row.latest_timestamp for row in rows] == [False] * 11 + [True]


def test_invalid_out_of_order_policy(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n")

    with pytest.raises(ValueError, match="out_of_order='sort' is invalid"):
        load_series(path, out_of_order="sort")


def test_csv_empty_file_raises(tmp_path):
    path = write(tmp_path / "t.csv", "")

    with pytest.raises(ValueError, match="t.csv is empty"):
        load_series(path)


def test_csv_header_only_raises(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,value\n")

    with pytest.raises(ValueError, match="t.csv has a header but no data rows"):
        load_series(path)


def test_csv_only_timestamp_raises(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp\n2024-01-01\n")

    with pytest.raises(ValueError, match="no channel columns besides the timestamp column 'timestamp'"):
        load_series(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        load_series(tmp_path / "nothing.csv")


# NumPy ---------------------------------------------------------------------------------------


def test_npy_one_dimensional(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(4, dtype=np.int32))
    series = load_series(path)

    assert series.values.shape == (4, 1)
    assert series.values.dtype == np.float64
    assert series.channels == ["0"]


def test_npy_channels_reorder(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(6.0).reshape(3, 2))
    series = load_series(path, channels=["1", "0"])

    assert series.values[0].tolist() == [1.0, 0.0]


def test_npy_bad_shape_raises(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 2, 2)))

    with pytest.raises(ValueError, match=r"x.npy has shape \(2, 2, 2\)"):
        load_series(path)


def test_npy_object_array_raises(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)

    with pytest.raises(ValueError, match="x.npy is not a plain numeric .npy array"):
        load_series(path)


def test_npy_text_array_raises(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.array(["a", "b"]))

    with pytest.raises(ValueError, match="x.npy has dtype <U1"):
        load_series(path)


def test_npy_empty_raises(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((0, 3)))

    with pytest.raises(ValueError, match=r"x.npy has shape \(0, 3\)"):
        load_series(path)


def test_npy_rejects_timestamp_column(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(3))

    with pytest.raises(ValueError, match="timestamp_column='t' applies only to CSV files"):
        load_series(path, timestamp_column="t")


def test_npy_detected_by_content(tmp_path):
    path = tmp_path / "x.bin"
    with open(path, "wb") as handle:
        np.save(handle, np.arange(3.0))

    assert load_series(path).values[:, 0].tolist() == [0.0, 1.0, 2.0]


# JSON lines ----------------------------------------------------------------------------------


def test_jsonl_values(tmp_path):
    path = jsonl(
        tmp_path / "host.jsonl",
        [
            {"series": "web1", "timestamp": "2024-01-01T00:00:00Z", "values": [1.0, 2.0]},
            {"series": "web1", "timestamp": 1704067260000, "values": [3.0, None]},
        ],
    )
    series = load_series(path)

    assert series.series_id == "web1"
    assert series.channels == ["0", "1"]
    assert series.timestamps.tolist() == [1704067200000, 1704067260000]
    assert series.values[1, 0] == 3.0
    assert np.isnan(series.values[1, 1])


def test_jsonl_value_without_series_id(tmp_path):
    path = jsonl(
        tmp_path / "temp.ndjson",
        [{"timestamp": "2024-01-01T00:00:00", "value": 1}, {"timestamp": "2024-01-01T00:00:01", "value": 2}],
    )
    series = load_series(path)

    assert series.series_id == "temp"
    assert series.channels == ["value"]
    assert series.values[:, 0].tolist() == [1.0, 2.0]


def test_jsonl_skips_blank_lines(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        '{"timestamp": 0, "value": 1}\n\n   \n{"timestamp": 1, "value": 2}\n',
    )

    assert len(load_series(path)) == 2


def test_jsonl_several_series_raises(tmp_path):
    path = jsonl(
        tmp_path / "t.jsonl",
        [{"series": "a", "timestamp": 0, "value": 1}, {"series": "b", "timestamp": 0, "value": 2}],
    )

    with pytest.raises(ValueError) as caught:
        load_series(path)

    message = str(caught.value)
    assert "contains 2 series ('a', 'b')" in message
    assert "load_series_collection(path)" in message


def test_jsonl_collection_interleaved(tmp_path):
    path = jsonl(
        tmp_path / "t.jsonl",
        [
            {"series": "b", "timestamp": 0, "value": 1},
            {"series": "a", "timestamp": 5, "values": [1, 2]},
            {"series": "b", "timestamp": 1, "value": 2},
        ],
    )
    collection = load_series_collection(path)

    assert [item.series_id for item in collection] == ["b", "a"]
    assert collection[0].values[:, 0].tolist() == [1.0, 2.0]
    assert collection[1].values.tolist() == [[1.0, 2.0]]


def test_jsonl_collection_checks_order_per_series(tmp_path):
    path = jsonl(
        tmp_path / "t.jsonl",
        [
            {"series": "a", "timestamp": 5, "value": 1},
            {"series": "b", "timestamp": 9, "value": 1},
            {"series": "a", "timestamp": 4, "value": 2},
        ],
    )

    with pytest.raises(ValueError, match=r"series 'a'.*line 3 \(1970-01-01T00:00:00.004Z\) is not after line 1"):
        load_series_collection(path)


def test_collection_of_csv_is_one_series(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n")

    collection = load_series_collection(path)

    assert len(collection) == 1
    assert collection[0].series_id == "t"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "line 2 is not valid JSON"),
        ("[1, 2]", "line 2 contains a JSON list"),
        ('{"value": 1}', 'line 2: the record has no "timestamp"'),
        ('{"timestamp": "noon", "value": 1}', "line 2: timestamp 'noon'"),
        ('{"timestamp": 1, "value": "high"}', "line 2: 'value' contains 'high'"),
        ('{"timestamp": 1, "value": true}', "line 2: 'value' contains True"),
        ('{"timestamp": 1, "values": []}', 'line 2: "values" must be a non-empty list'),
        ('{"timestamp": 1}', 'line 2: the record needs exactly one of "values"'),
        ('{"timestamp": 1, "value": 1, "values": [1]}', 'line 2: the record needs exactly one of "values"'),
        ('{"timestamp": 1, "values": [1, 2]}', "line 2: series 't' has 2 value(s) in 'values' here but 1"),
        ('{"series": 7, "timestamp": 1, "value": 1}', 'line 2: "series" must be a string, got 7'),
    ],
)
def test_jsonl_invalid_record(tmp_path, line, fragment):
    path = write(tmp_path / "t.jsonl", '{"timestamp": 0, "value": 0}\n' + line + "\n")

    with pytest.raises(ValueError) as caught:
        load_series(path)

    assert fragment in str(caught.value)
    assert "t.jsonl" in str(caught.value)


def test_jsonl_empty_raises(tmp_path):
    path = write(tmp_path / "t.jsonl", "\n")

    with pytest.raises(ValueError, match="t.jsonl contains no records"):
        load_series(path)


def test_jsonl_duplicate_timestamp_raises(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"timestamp": 7, "value": 1}, {"timestamp": 7, "value": 2}])

    with pytest.raises(ValueError, match="line 2 repeats the timestamp .* of line 1"):
        load_series(path)


def test_jsonl_drop_reports_rows_per_series(tmp_path):
    lines = [
        '{"series": "a", "timestamp": 5, "value": 1}',
        '{"series": "b", "timestamp": 9, "value": 1}',
        '{"series": "a", "timestamp": 5, "value": 2}',
        "",
        '{"series": "b", "timestamp": 3, "value": 2}',
        '{"series": "a", "timestamp": 4, "value": 3}',
        '{"series": "a", "timestamp": 6, "value": 4}',
    ]
    path = tmp_path / "t.jsonl"
    path.write_bytes("".join(line + "\r\n" for line in lines).encode())
    rows = []

    collection = load_series_collection(path, out_of_order="drop", on_out_of_order=rows.append)

    assert [item.values[:, 0].tolist() for item in collection] == [[1.0, 4.0], [1.0]]
    by_line = {row.line_number: row for row in rows}
    assert sorted(by_line) == [3, 5, 6]
    assert [by_line[number].line for number in (3, 5, 6)] == [lines[2], lines[4], lines[5]]
    assert [by_line[number].series_id for number in (3, 5, 6)] == ["a", "b", "a"]
    assert [by_line[number].timestamp for number in (3, 5, 6)] == [5, 3, 4]
    assert [by_line[number].latest_timestamp for number in (3, 5, 6)] == [5, 9, 5]


def test_jsonl_raise_ignores_handler(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"timestamp": 7, "value": 1}, {"timestamp": 7, "value": 2}])
    rows = []

    with pytest.raises(ValueError, match="line 2 repeats the timestamp"):
        load_series(path, on_out_of_order=rows.append)
    assert rows == []


def test_jsonl_detected_by_content(tmp_path):
    path = write(tmp_path / "stream.log", '{"timestamp": 0, "value": 1}\n')

    assert load_series(path).channels == ["value"]


# Invalid values ------------------------------------------------------------------------------

# (cell, reason) of CSV cells that a replay rejects, as the daemon's decoder rejects such values.
INVALID_CSV_CELLS = [
    ("inf", "non_finite"),
    ("-inf", "non_finite"),
    ("1e400", "non_finite"),
    ("NaN", "non_finite"),
    ("abc", "bad_type"),
]


def _csv_with_cells(path, cells):
    """Write a CSV file with a good row before and after each cell; return {line number: row text}."""
    lines = ["timestamp,v"]
    bad = {}
    for index, cell in enumerate(cells):
        lines.append(f"2024-01-01 00:{3 * index:02d}:00,{index}")
        lines.append(f"2024-01-01 00:{3 * index + 1:02d}:00,{cell}")
        bad[len(lines)] = lines[-1]
    lines.append("2024-01-01 01:00:00,99")
    write(path, "\n".join(lines) + "\n")
    return bad


def test_csv_invalid_cells_go_to_handler(tmp_path):
    path = tmp_path / "t.csv"
    bad = _csv_with_cells(path, [cell for cell, _ in INVALID_CSV_CELLS])
    invalid = []

    series = load_series(path, on_invalid_line=lambda *call: invalid.append(call), reject_nan=True)

    assert series.values[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 99.0]
    assert [line_number for line_number, _, _ in invalid] == sorted(bad)
    for (line_number, line, error), (cell, reason) in zip(invalid, INVALID_CSV_CELLS):
        assert line == bad[line_number]
        assert error.reason == reason, cell
        assert f"t.csv: line {line_number}, column 'v' contains {cell!r}" in str(error)


def test_csv_nan_is_missing_without_reject_nan(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n2024-01-02,NaN\n2024-01-03,\n2024-01-04,inf\n")
    invalid = []

    series = load_series(path, on_invalid_line=lambda *call: invalid.append(call))

    assert np.isnan(series.values[1:, 0]).all()
    assert len(series) == 3
    assert [(line_number, error.reason) for line_number, _, error in invalid] == [(5, "non_finite")]


def test_csv_empty_cell_stays_missing_with_reject_nan(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v\n2024-01-01,1\n2024-01-02,\n")

    series = load_series(path, reject_nan=True, on_invalid_line=lambda *call: pytest.fail(f"rejected {call}"))

    assert series.values[0, 0] == 1.0
    assert np.isnan(series.values[1, 0])


@pytest.mark.parametrize("cell", ["inf", "-Infinity", "1e400"])
def test_csv_infinity_raises_without_handler(tmp_path, cell):
    path = write(tmp_path / "t.csv", f"timestamp,v\n2024-01-01,1\n2024-01-02,{cell}\n")

    with pytest.raises(ValueError) as caught:
        load_series(path)

    message = str(caught.value)
    assert "t.csv: line 3, column 'v' contains" in message
    assert "which is infinite or too large for float64" in message


def test_csv_invalid_rows_keep_out_of_order_lines(tmp_path):
    path = write(
        tmp_path / "t.csv",
        "timestamp,v\n2024-01-01,1\n2024-01-02,abc\n2024-01-03,3\n2024-01-02,4\n2024-01-04,5\n",
    )
    invalid = []
    dropped = []

    series = load_series(
        path, out_of_order="drop", on_out_of_order=dropped.append, on_invalid_line=lambda *call: invalid.append(call)
    )

    assert series.values[:, 0].tolist() == [1.0, 3.0, 5.0]
    assert [(line_number, line) for line_number, line, _ in invalid] == [(3, "2024-01-02,abc")]
    assert [(row.line_number, row.line) for row in dropped] == [(5, "2024-01-02,4")]


def test_csv_text_column_raises_with_handler(tmp_path):
    path = write(tmp_path / "t.csv", "timestamp,v,host\n2024-01-01,1,web1\n2024-01-02,2,web2\n")

    with pytest.raises(ValueError, match=r"column 'host' contains no numbers .* pass channels=\['v'\]"):
        load_series(path, on_invalid_line=lambda *call: None)


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("Infinity", "'value' contains inf, which is infinite"),
        ("-Infinity", "'value' contains -inf, which is infinite"),
        ("1e400", "'value' contains inf, which is infinite"),
        ("1" + "0" * 400, "'value' contains an integer too large for float64"),
    ],
)
def test_jsonl_infinity_raises(tmp_path, token, fragment):
    path = write(tmp_path / "t.jsonl", '{"timestamp": 0, "value": 0}\n{"timestamp": 1, "value": ' + token + "}\n")

    with pytest.raises(ValueError) as caught:
        load_series(path)

    assert f"t.jsonl, line 2: {fragment}" in str(caught.value)


def test_jsonl_nan_token_missing_unless_rejected(tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        '{"timestamp": 0, "value": 0}\n{"timestamp": 1, "value": NaN}\n{"timestamp": 2, "value": null}\n',
    )
    invalid = []

    assert np.isnan(load_series(path).values[1:, 0]).all()
    series = load_series_collection(path, reject_nan=True, on_invalid_line=lambda *call: invalid.append(call))[0]

    assert len(series) == 2
    assert np.isnan(series.values[1, 0])
    assert [line_number for line_number, _, _ in invalid] == [2]
    assert "'value' contains NaN, which is not a JSON number; use null" in str(invalid[0][2])


def test_jsonl_all_lines_invalid_raises(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"timestamp": 0, "value": Infinity}\n{"timestamp": 1, "value": NaN}\n')
    invalid = []

    with pytest.raises(ValueError, match="t.jsonl contains no valid records: all of its 2 record lines are invalid"):
        load_series_collection(path, reject_nan=True, on_invalid_line=lambda *call: invalid.append(call))
    assert [line_number for line_number, _, _ in invalid] == [1, 2]

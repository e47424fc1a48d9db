"""Tests of the record wire format: decoding, validation, encoding and a fuzz of malformed input."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamad.records import (
    MAX_SERIES_LENGTH,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    REASONS,
    InvalidRecord,
    Record,
    decode_record,
    encode_record,
    warn_if_epoch_seconds,
)


def _payload(**fields) -> bytes:
    return json.dumps(fields).encode("utf-8")


# Epoch seconds


def _epoch_seconds_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "streamad.records" and "epoch seconds" in r.getMessage()]


def test_epoch_seconds_warned_once_per_series(caplog):
    caplog.set_level(logging.WARNING, logger="streamad.records")
    first = decode_record(_payload(series="seconds-a", timestamp=1714564800, value=1.0))
    decode_record(_payload(series="seconds-a", timestamp=1714564801, value=1.0))
    decode_record(_payload(series="seconds-b", timestamp=1714564800.5, value=1.0))

    # The value is still read as milliseconds, not rescaled.
    assert first.timestamp == 1714564800
    messages = _epoch_seconds_warnings(caplog)
    assert len(messages) == 2
    assert "series='seconds-a'" in messages[0]
    assert "1714564800" in messages[0]
    assert "2024-05-01T12:00:00" in messages[0]
    assert "send milliseconds" in messages[0]
    assert "series='seconds-b'" in messages[1]


@pytest.mark.parametrize(
    "timestamp",
    [1714564800250, "2024-05-01T12:00:00Z", 0, 3, 99_999_999, 100_000_000_000],
)
def test_epoch_seconds_not_warned(caplog, timestamp):
    caplog.set_level(logging.WARNING, logger="streamad.records")
    decode_record(_payload(series=f"ms-{timestamp}", timestamp=timestamp, value=1.0))
    assert _epoch_seconds_warnings(caplog) == []


def test_epoch_seconds_range_edges():
    assert warn_if_epoch_seconds("edge", 100_000_001) is True
    assert warn_if_epoch_seconds("edge", 99_999_999_999) is True
    assert warn_if_epoch_seconds("edge", 100_000_000) is False
    assert warn_if_epoch_seconds("edge", 100_000_000_000) is False


# Decoding valid records


def test_decode_values_list():
    record = decode_record(b'{"series": "pump-7", "timestamp": 1714564800250, "values": [0.5, 2]}')

    assert record.series == "pump-7"
    assert record.timestamp == 1714564800250
    assert record.values.dtype == np.float64
    assert record.values.shape == (2,)
    assert record.values.tolist() == [0.5, 2.0]


def test_decode_single_value():
    record = decode_record(b'{"series": "s", "timestamp": 3, "value": -1.5}')

    assert record.values.tolist() == [-1.5]
    assert record.timestamp == 3


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("2024-05-01T12:00:00.250Z", 1714564800250),
        ("2024-05-01T12:00:00.250z", 1714564800250),
        ("2024-05-01T12:00:00.250+00:00", 1714564800250),
        ("2024-05-01T14:00:00.250+02:00", 1714564800250),
        ("2024-05-01T12:00:00.250", 1714564800250),  # naive means UTC
        ("2024-05-01T12:00:00", 1714564800000),
        ("2024-05-01", 1714521600000),
        ("1970-01-01T00:00:00.000999Z", 0),  # sub-millisecond digits are floored
        ("1969-12-31T23:59:59.999500Z", -1),
    ],
)
def test_decode_iso_timestamp(text, expected_ms):
    record = decode_record(_payload(series="s", timestamp=text, value=1.0))

    assert record.timestamp == expected_ms


def test_decode_fractional_ms_floored():
    assert decode_record(_payload(series="s", timestamp=1.9, value=1)).timestamp == 1
    assert decode_record(_payload(series="s", timestamp=-0.5, value=1)).timestamp == -1


def test_decode_timestamp_range_limits():
    low = decode_record(_payload(series="s", timestamp=MIN_TIMESTAMP_MS, value=1))
    high = decode_record(_payload(series="s", timestamp="9999-12-31T23:59:59.999Z", value=1))

    assert low.timestamp == MIN_TIMESTAMP_MS
    assert high.timestamp == MAX_TIMESTAMP_MS


def test_decode_accepts_str_and_dict():
    text = '{"series": "s", "timestamp": 0, "values": [1.0]}'

    assert decode_record(text) == decode_record(text.encode())
    assert decode_record(json.loads(text)) == decode_record(text.encode())


def test_decode_ignores_unknown_fields():
    record = decode_record(_payload(series="s", timestamp=0, values=[1.0], unit="bar", tags={"a": 1}))

    assert record.values.tolist() == [1.0]


def test_decode_unicode_series():
    record = decode_record(_payload(series="Zürich 💧", timestamp=0, value=1.0))

    assert record.series == "Zürich 💧"


def test_decode_large_integer_value():
    record = decode_record(b'{"series": "s", "timestamp": 0, "value": 123456789012345678901234567890}')

    assert record.values[0] == pytest.approx(1.2345678901234568e29)


def test_decode_values_read_only():
    record = decode_record(_payload(series="s", timestamp=0, values=[1.0, 2.0]))

    with pytest.raises(ValueError):
        record.values[0] = 5.0


# Rejections


REJECTED = [
    # (payload, reason, words the message must contain)
    (b"\xff\xfe{}", "invalid_utf8", "UTF-8"),
    (b'{"series": "s", "timestamp": 0, "value": 1', "invalid_json", "not valid JSON"),
    (b"", "invalid_json", "empty"),
    (b" \n", "invalid_json", "empty"),
    (b"[" * 100_000, "invalid_json", "nested too deeply"),
    (b'{"series": "s", "timestamp": 0, "value": ' + b"9" * 5000 + b"}", "invalid_json", "4300"),
    (b"[1, 2]", "not_object", "array"),
    (b'"text"', "not_object", "string"),
    (b"null", "not_object", "null"),
    (b'{"series": "a", "series": "b", "timestamp": 0, "value": 1}', "duplicate_field", "'series'"),
    (b'{"timestamp": 0, "value": 1}', "missing_field", "'series'"),
    (b'{"series": "s", "value": 1}', "missing_field", "'timestamp'"),
    (b'{"series": "s", "timestamp": 0}', "missing_field", "'values'"),
    (b'{"series": "s", "timestamp": 0, "value": 1, "values": [1]}', "conflicting_fields", "both"),
    (b'{"series": 7, "timestamp": 0, "value": 1}', "bad_type", "'series'"),
    (b'{"series": null, "timestamp": 0, "value": 1}', "bad_type", "null"),
    (b'{"series": "", "timestamp": 0, "value": 1}', "bad_series", "empty"),
    (b'{"series": "  ", "timestamp": 0, "value": 1}', "bad_series", "empty"),
    (b'{"series": "a\\u0000b", "timestamp": 0, "value": 1}', "bad_series", "control character"),
    (_payload(series="x" * (MAX_SERIES_LENGTH + 1), timestamp=0, value=1), "bad_series", str(MAX_SERIES_LENGTH)),
    (b'{"series": "s", "timestamp": true, "value": 1}', "bad_type", "boolean"),
    (b'{"series": "s", "timestamp": [0], "value": 1}', "bad_type", "array"),
    (b'{"series": "s", "timestamp": "yesterday", "value": 1}', "bad_timestamp", "'yesterday'"),
    (b'{"series": "s", "timestamp": "2024-13-01T00:00:00Z", "value": 1}', "bad_timestamp", "ISO-8601"),
    (_payload(series="s", timestamp="2024-01-01" + "0" * 100, value=1), "bad_timestamp", "too long"),
    (b'{"series": "s", "timestamp": 1e300, "value": 1}', "bad_timestamp", "milliseconds"),
    (b'{"series": "s", "timestamp": 1714564800250000000, "value": 1}', "bad_timestamp", "nanoseconds"),
    (b'{"series": "s", "timestamp": 0, "value": true}', "bad_type", "boolean"),
    (b'{"series": "s", "timestamp": 0, "value": "1.5"}', "bad_type", "'1.5'"),
    (b'{"series": "s", "timestamp": 0, "values": [1, false]}', "bad_type", "values[1]"),
    (b'{"series": "s", "timestamp": 0, "values": [1, null]}', "bad_type", "values[1]"),
    (b'{"series": "s", "timestamp": 0, "values": [[1]]}', "bad_type", "values[0]"),
    (b'{"series": "s", "timestamp": 0, "values": 1}', "bad_type", "'value'"),
    (b'{"series": "s", "timestamp": 0, "values": []}', "empty_values", "empty"),
    (b'{"series": "s", "timestamp": 0, "values": [1, NaN]}', "non_finite", "NaN"),
    (b'{"series": "s", "timestamp": 0, "value": Infinity}', "non_finite", "Infinity"),
    (b'{"series": "s", "timestamp": 0, "value": -Infinity}', "non_finite", "-Infinity"),
    (b'{"series": "s", "timestamp": 0, "value": 1e400}', "non_finite", "inf"),
    (b'{"series": "s", "timestamp": 0, "value": ' + b"9" * 400 + b"}", "non_finite", "float64"),
]


@pytest.mark.parametrize(("payload", "reason", "words"), REJECTED)
def test_decode_rejects(payload, reason, words):
    with pytest.raises(InvalidRecord) as caught:
        decode_record(payload)

    assert caught.value.reason == reason
    assert words in str(caught.value)
    assert len(str(caught.value)) < 400


def test_reject_reasons_are_known():
    for _, reason, _ in REJECTED:
        assert reason in REASONS


def test_decode_too_large():
    payload = _payload(series="s", timestamp=0, values=[1.0] * 100)

    with pytest.raises(InvalidRecord) as caught:
        decode_record(payload, max_bytes=100)

    assert caught.value.reason == "too_large"
    assert str(len(payload)) in str(caught.value)
    assert decode_record(payload, max_bytes=len(payload)).values.shape == (100,)


def test_decode_too_large_counts_utf8_bytes():
    text = json.dumps({"series": "é" * 40, "timestamp": 0, "value": 1}, ensure_ascii=False)

    assert len(text) < 100
    with pytest.raises(InvalidRecord) as caught:
        decode_record(text, max_bytes=100)
    assert caught.value.reason == "too_large"


def test_decode_lone_surrogate_text():
    with pytest.raises(InvalidRecord) as caught:
        decode_record('{"series": "\ud800", "timestamp": 0, "value": 1}')

    assert caught.value.reason == "invalid_utf8"


@pytest.mark.parametrize("payload", [5, None, [1, 2], 1.5])
def test_decode_rejects_non_object_payload(payload):
    with pytest.raises(InvalidRecord) as caught:
        decode_record(payload)

    assert caught.value.reason == "not_object"


def test_decode_rejects_bad_max_bytes():
    with pytest.raises(ValueError, match="max_bytes"):
        decode_record(b"{}", max_bytes=0)


def test_error_message_truncates_value():
    payload = _payload(series="s", timestamp=0, value="x" * 10_000)

    with pytest.raises(InvalidRecord) as caught:
        decode_record(payload)

    assert len(str(caught.value)) < 300


def test_invalid_record_pickles():
    error = InvalidRecord("bad_type", "The field 'value' is wrong.")

    restored = pickle.loads(pickle.dumps(error))

    assert restored.reason == "bad_type"
    assert str(restored) == "The field 'value' is wrong."


def test_invalid_record_unknown_reason():
    with pytest.raises(ValueError, match="unknown InvalidRecord reason"):
        InvalidRecord("oops", "message")


# The Record constructor


def test_record_converts_values():
    record = Record("s", np.int64(5), [1, 2])

    assert record.timestamp == 5
    assert type(record.timestamp) is int
    assert record.values.dtype == np.float64
    assert record.values.flags.c_contiguous
    assert not record.values.flags.writeable


def test_record_copies_values():
    source = np.array([1.0, 2.0])

    record = Record("s", 0, source)
    source[0] = 9.0

    assert record.values[0] == 1.0


@pytest.mark.parametrize(
    ("series", "timestamp", "values", "reason"),
    [
        ("s", 0, [], "empty_values"),
        ("s", 0, [[1.0]], "bad_type"),
        ("s", 0, ["1"], "bad_type"),
        ("s", 0, [1 + 2j], "bad_type"),
        ("s", 0, [True, False], "bad_type"),
        ("s", 0, [1.0, np.inf], "non_finite"),
        ("s", 0, [-np.inf], "non_finite"),
        ("s", 0, [2**1100], "non_finite"),
        ("s", 0.5, [1.0], "bad_type"),
        ("s", True, [1.0], "bad_type"),
        ("s", MAX_TIMESTAMP_MS + 1, [1.0], "bad_timestamp"),
        ("", 0, [1.0], "bad_series"),
        (b"s", 0, [1.0], "bad_type"),
    ],
)
def test_record_rejects(series, timestamp, values, reason):
    with pytest.raises(InvalidRecord) as caught:
        Record(series, timestamp, values)

    assert caught.value.reason == reason


def test_record_allows_nan_gap():
    record = Record("s", 0, [1.0, np.nan])

    assert np.isnan(record.values[1])
    assert record == Record("s", 0, [1.0, np.nan])


def test_encode_rejects_nan_gap():
    record = Record("pump", 5, [np.nan])

    with pytest.raises(ValueError, match="NaN at index 0"):
        encode_record(record)


def test_record_equality_and_hash():
    first = Record("s", 1, [1.0, 2.0])
    same = Record("s", 1, np.array([1.0, 2.0]))
    other = Record("s", 1, [1.0, 3.0])

    assert first == same
    assert hash(first) == hash(same)
    assert first != other
    assert first != Record("s", 1, [1.0])


# Encoding


def test_encode_with_clock():
    record = Record("pump-7", 1714564800250, [0.5, 2.0])

    obj = json.loads(encode_record(record))

    assert obj == {"series": "pump-7", "timestamp": "2024-05-01T12:00:00.250Z", "values": [0.5, 2.0]}


def test_encode_step_index():
    record = Record("s", 42, [1.0])

    obj = json.loads(encode_record(record, has_clock=False))

    assert obj["timestamp"] == 42


@pytest.mark.parametrize("timestamp", [MIN_TIMESTAMP_MS, -1, 0, 999, MAX_TIMESTAMP_MS])
def test_encode_round_trip_extremes(timestamp):
    record = Record("s", timestamp, [1.0])

    assert decode_record(encode_record(record)) == record
    assert decode_record(encode_record(record, has_clock=False)) == record


series_ids = st.text(min_size=1, max_size=40).filter(
    lambda text: text.strip() and all(ord(char) >= 0x20 and not 0x7F <= ord(char) <= 0x9F for char in text)
)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)


@given(
    series=series_ids,
    timestamp=st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS),
    values=st.lists(finite_floats, min_size=1, max_size=8),
    has_clock=st.booleans(),
)
def test_encode_decode_round_trip(series, timestamp, values, has_clock):
    record = Record(series, timestamp, values)

    assert decode_record(encode_record(record, has_clock=has_clock)) == record


# Fuzz: every malformed input raises InvalidRecord with a known reason and a message, never anything else.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)

# Objects that mostly have the record fields, so the fuzz reaches the field checks.
record_like = st.fixed_dictionaries(
    {},
    optional={
        "series": json_values | st.text(max_size=300),
        "timestamp": json_values | st.integers() | st.text(max_size=40) | st.datetimes().map(str),
        "values": json_values | st.lists(st.floats() | st.integers() | st.booleans(), max_size=5),
        "value": json_values,
    },
)


def _check_outcome(payload, max_bytes=1_000_000):
    try:
        record = decode_record(payload, max_bytes=max_bytes)
    except InvalidRecord as error:
        assert error.reason in REASONS
        assert str(error).strip()
        return
    assert isinstance(record, Record)
    assert np.all(np.isfinite(record.values))
    assert record.values.size >= 1


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(payload):
    _check_outcome(payload)


@settings(max_examples=300)
@given(json_values | record_like)
def test_fuzz_json_values(value):
    _check_outcome(json.dumps(value).encode("utf-8"))


@settings(max_examples=300)
@given(record_like)
def test_fuzz_parsed_objects(value):
    _check_outcome(value)


@settings(max_examples=200)
@given(st.text(max_size=200), st.integers(1, 300))
def test_fuzz_text_with_limits(text, max_bytes):
    _check_outcome(text, max_bytes=max_bytes)

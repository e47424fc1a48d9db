"""Time-series records and their JSON wire format.

A record is one multichannel sample of one series. On the wire (Kafka message values, replay
files) it is a UTF-8 JSON object::

    {"series": "pump-7", "timestamp": "2024-05-01T12:00:00.250Z", "values": [0.5, 1.25]}
    {"series": "pump-7", "timestamp": 1714564800250, "value": 0.5}

``timestamp`` is either an ISO-8601 string (a string without a UTC offset is read as UTC) or
a number of milliseconds since the Unix epoch. A series without clock time may send a step
index as the number instead. A number that looks like epoch seconds is still read as
milliseconds, with one warning per series (:func:`warn_if_epoch_seconds`). ``value`` is shorthand for a single channel. Fields other than
``series``, ``timestamp``, ``values`` and ``value`` are ignored.

:func:`decode_record` raises :class:`InvalidRecord` for every malformed payload, so a consumer
can send the payload to a dead-letter sink with ``error.reason`` and go on with the stream.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import operator
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1_000_000

# A numeric timestamp in this open range is epoch seconds from 1973 to 5138 or, read as the
# milliseconds it is taken for, a time between 1970-01-02 and 1973-03-03. Current clocks give
# about 1.7e9 in seconds and 1.7e12 in milliseconds, so such a value is most likely in seconds.
EPOCH_SECONDS_RANGE = (100_000_000, 100_000_000_000)

# At most this many series are remembered as warned about epoch seconds; later ones are not warned.
_MAX_WARNED_SERIES = 10_000
_series_warned_for_seconds: set[str] = set()

# Longer series ids are rejected because the id becomes the Kafka key of alerts and appears in
# every log line of the series.
MAX_SERIES_LENGTH = 256

# Timestamps must fit Python's datetime range (years 1 to 9999), so that every accepted record
# can be written back as ISO-8601.
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MS = dt.timedelta(milliseconds=1)
MIN_TIMESTAMP_MS = (dt.datetime.min.replace(tzinfo=dt.timezone.utc) - _EPOCH) // _ONE_MS
MAX_TIMESTAMP_MS = (dt.datetime.max.replace(tzinfo=dt.timezone.utc) - _EPOCH) // _ONE_MS

# Maximum length of a timestamp string that is parsed. ISO-8601 with microseconds and an offset has 32 characters.
_MAX_TIMESTAMP_TEXT = 64

# Maximum length of the repr of an offending value quoted in an error message.
_MAX_QUOTED = 80

REASONS = frozenset(
    {
        "invalid_utf8",  # the payload bytes are not valid UTF-8
        "invalid_json",  # the text is not JSON, or is nested too deeply to parse
        "not_object",  # the JSON value is not an object
        "duplicate_field",  # a field name occurs twice in the object
        "missing_field",  # series, timestamp, or both values and value are missing
        "conflicting_fields",  # both values and value are present
        "bad_type",  # a field has the wrong JSON type (booleans are not numbers)
        "bad_series",  # the series id is empty, too long or contains control characters
        "bad_timestamp",  # the timestamp is unparsable or outside years 1 to 9999
        "empty_values",  # values is an empty list
        "non_finite",  # a value is NaN, infinite or too large for float64
        "too_large",  # the payload exceeds max_bytes
        "decoder_error",  # the decoder raised an unexpected exception (a bug), set by callers that catch it
    }
)


class InvalidRecord(ValueError):
    """A payload or field that is not a valid record.

    ``reason`` is one of :data:`REASONS`, fit for metrics and dead-letter entries.
    ``str(error)`` names the offending value and the fix.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown InvalidRecord reason {reason!r}; use one of {sorted(REASONS)}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, str(self)))


@dataclass(frozen=True, eq=False)
class Record:
    """One sample of one series.

    ``timestamp`` is in milliseconds since the Unix epoch (UTC), or a step index for a series
    without clock time. ``values`` is a read-only float64 array of shape ``(C,)`` with ``C >= 1``.
    A NaN value marks a missing sample, as file replay produces for gaps, and infinity is
    rejected. :func:`decode_record` rejects NaN too, so records from Kafka are finite. The
    constructor validates and converts its arguments and raises :class:`InvalidRecord`.
    """

    series: str
    timestamp: int
    values: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "series", _check_series(self.series))
        object.__setattr__(self, "timestamp", _check_timestamp_ms(self.timestamp))
        object.__setattr__(self, "values", _check_values_array(self.values))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.series == other.series
            and self.timestamp == other.timestamp
            and np.array_equal(self.values, other.values, equal_nan=True)
        )

    def __hash__(self) -> int:
        return hash((self.series, self.timestamp, self.values.tobytes()))


def decode_record(payload: bytes | str | Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Record:
    """Parse and validate one record from JSON bytes, JSON text or an already parsed object.

    ``max_bytes`` limits the UTF-8 size of bytes and text payloads. It does not apply to a mapping.
    Raises :class:`InvalidRecord` for every malformed payload, whatever its type.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes!r} is invalid; use a positive number of bytes")

    if isinstance(payload, Mapping):
        return _record_from_object(payload)

    if isinstance(payload, str):
        try:
            data = payload.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidRecord(
                "invalid_utf8",
                f"The payload text contains a lone surrogate at index {error.start}, which has no "
                "UTF-8 encoding; send valid Unicode text.",
            ) from None
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    else:
        raise InvalidRecord(
            "not_object",
            f"The payload has type {type(payload).__name__}, not JSON bytes, text or an object; "
            'send a JSON object such as {"series": "s1", "timestamp": 0, "values": [1.0]}.',
        )

    if len(data) > max_bytes:
        raise InvalidRecord(
            "too_large",
            f"The payload has {len(data)} bytes, more than the limit of {max_bytes}; "
            "send one sample per message or raise max_bytes.",
        )

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRecord(
            "invalid_utf8",
            f"The payload is not valid UTF-8 (byte {data[error.start]:#04x} at position {error.start}); "
            "encode the JSON text as UTF-8.",
        ) from None

    if not text.strip():
        raise InvalidRecord(
            "invalid_json",
            "The payload is empty (a Kafka tombstone has no value); send one JSON object per message.",
        )
    obj = _parse_json(text)
    if not isinstance(obj, dict):
        raise InvalidRecord(
            "not_object",
            f"The payload has JSON type {_json_type_name(obj)}, not object; "
            'send a JSON object such as {"series": "s1", "timestamp": 0, "values": [1.0]}.',
        )
    return _record_from_object(obj)


def encode_record(record: Record, has_clock: bool = True) -> bytes:
    """Serialize a record to the UTF-8 JSON that :func:`decode_record` reads back unchanged.

    Raises ValueError for a record with a NaN value, because the wire format has no missing values.

    With ``has_clock`` the timestamp is written as ISO-8601 UTC with milliseconds and a ``Z``
    suffix. Without it, as for step indices, it is written as a JSON integer.
    """
    if not isinstance(record, Record):
        raise TypeError(f"encode_record expects a Record, got {type(record).__name__}")
    if np.any(np.isnan(record.values)):
        index = int(np.flatnonzero(np.isnan(record.values))[0])
        raise ValueError(
            f"The record of series {_quote(record.series)} at {record.timestamp} has NaN at index {index}, "
            "which the JSON wire format cannot carry; fill the missing value or skip the record."
        )
    timestamp: int | str = record.timestamp
    if has_clock:
        moment = _EPOCH + dt.timedelta(milliseconds=record.timestamp)
        timestamp = (
            f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
        )
    obj = {"series": record.series, "timestamp": timestamp, "values": record.values.tolist()}
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_fields, parse_constant=_reject_constant)
    except InvalidRecord:
        raise
    except RecursionError:
        raise InvalidRecord(
            "invalid_json",
            "The payload JSON is nested too deeply to parse; send a flat JSON object.",
        ) from None
    except json.JSONDecodeError as error:
        raise InvalidRecord(
            "invalid_json",
            f"The payload is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
            "send one JSON object per message.",
        ) from None
    except ValueError as error:
        # For example, an integer literal longer than Python's int parsing limit of 4300 digits.
        raise InvalidRecord(
            "invalid_json",
            f"The payload JSON cannot be parsed ({_quote(str(error))}); send one JSON object per message.",
        ) from None


def _reject_duplicate_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidRecord(
                "duplicate_field",
                f"The field {_quote(key)} occurs more than once in a JSON object; send each field once.",
            )
        obj[key] = value
    return obj


def _reject_constant(name: str) -> float:
    # Python's json module accepts NaN, Infinity and -Infinity, which are not JSON.
    raise InvalidRecord(
        "non_finite",
        f"The payload contains {name}, which is not a JSON number; send only finite numbers "
        "and drop or interpolate missing samples before producing.",
    )


def _record_from_object(obj: Mapping[Any, Any]) -> Record:
    for name in ("series", "timestamp"):
        if name not in obj:
            raise InvalidRecord(
                "missing_field",
                f"The record has no {name!r} field; add it (fields present: {_field_list(obj)}).",
            )

    has_values = "values" in obj
    has_value = "value" in obj
    if has_values and has_value:
        raise InvalidRecord(
            "conflicting_fields",
            "The record has both 'values' and 'value'; send a list in 'values' or one number in 'value'.",
        )
    if not has_values and not has_value:
        raise InvalidRecord(
            "missing_field",
            f"The record has neither 'values' nor 'value'; add a list of numbers as 'values' "
            f"(fields present: {_field_list(obj)}).",
        )

    series = _check_series(obj["series"])
    timestamp = _parse_timestamp(obj["timestamp"])
    if _is_number(obj["timestamp"]):
        warn_if_epoch_seconds(series, timestamp)
    if has_value:
        values = np.array([float(_check_number(obj["value"], "value"))], dtype=np.float64)
    else:
        values = _values_from_list(obj["values"])
    return Record(series, timestamp, values)


def warn_if_epoch_seconds(series: str, timestamp: int) -> bool:
    """Log a warning, once per series, when a numeric timestamp looks like epoch seconds; return True if it does.

    The timestamp is still read as milliseconds. A series that counts steps instead of clock
    time may send such values on purpose and can ignore the warning.
    """
    low, high = EPOCH_SECONDS_RANGE
    if not low < timestamp < high:
        return False
    if series in _series_warned_for_seconds or len(_series_warned_for_seconds) >= _MAX_WARNED_SERIES:
        return True
    _series_warned_for_seconds.add(series)
    as_seconds = _EPOCH + dt.timedelta(seconds=timestamp)
    as_milliseconds = _EPOCH + dt.timedelta(milliseconds=timestamp)
    logger.warning(
        "series=%s timestamp=%d looks like epoch seconds (%s) but is read as milliseconds (%s); send "
        "milliseconds since the Unix epoch or an ISO-8601 string. Logged once per series.",
        _quote(series), timestamp, as_seconds.isoformat(), as_milliseconds.isoformat(timespec="milliseconds"),
    )
    return True


def _check_series(series: Any) -> str:
    if not isinstance(series, str):
        raise InvalidRecord(
            "bad_type",
            f"The field 'series' has JSON type {_json_type_name(series)} ({_quote(series)}), not string; "
            "send the series id as a JSON string.",
        )
    if not series.strip():
        raise InvalidRecord(
            "bad_series",
            f"The series id {_quote(series)} is empty or only whitespace; send a non-empty id.",
        )
    if len(series) > MAX_SERIES_LENGTH:
        raise InvalidRecord(
            "bad_series",
            f"The series id {_quote(series)} has {len(series)} characters, more than the limit of "
            f"{MAX_SERIES_LENGTH}; use a shorter id.",
        )
    for index, char in enumerate(series):
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise InvalidRecord(
                "bad_series",
                f"The series id {_quote(series)} contains the control character {char!r} at index {index}; "
                "remove control characters from series ids.",
            )
    return series


def _parse_timestamp(value: Any) -> int:
    if isinstance(value, str):
        return _parse_iso_timestamp(value)
    if _is_number(value):
        if isinstance(value, (float, np.floating)):
            if not math.isfinite(value):
                raise InvalidRecord(
                    "bad_timestamp",
                    f"The timestamp {float(value)!r} is not a finite number; send milliseconds since the Unix epoch.",
                )
            # Fractions of a millisecond are floored, as for ISO-8601 strings.
            return _check_timestamp_ms(math.floor(value))
        return _check_timestamp_ms(value)
    raise InvalidRecord(
        "bad_type",
        f"The field 'timestamp' has JSON type {_json_type_name(value)} ({_quote(value)}); send an ISO-8601 "
        "string or a number of milliseconds since the Unix epoch.",
    )


def _parse_iso_timestamp(text: str) -> int:
    hint = "send ISO-8601 such as '2024-05-01T12:00:00.250Z' or a number of milliseconds since the Unix epoch."
    if len(text) > _MAX_TIMESTAMP_TEXT:
        raise InvalidRecord(
            "bad_timestamp",
            f"The timestamp {_quote(text)} has {len(text)} characters, which is too long for ISO-8601; {hint}",
        )
    # datetime.fromisoformat accepts a trailing Z only from Python 3.11.
    normalized = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        moment = dt.datetime.fromisoformat(normalized)
    except ValueError:
        raise InvalidRecord("bad_timestamp", f"The timestamp {_quote(text)} is not valid ISO-8601; {hint}") from None

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    try:
        milliseconds = (moment - _EPOCH) // _ONE_MS
    except OverflowError:
        milliseconds = None
    if milliseconds is None or not MIN_TIMESTAMP_MS <= milliseconds <= MAX_TIMESTAMP_MS:
        raise InvalidRecord(
            "bad_timestamp",
            f"The timestamp {_quote(text)} is outside the years 1 to 9999 in UTC; {hint}",
        )
    return milliseconds


def _check_timestamp_ms(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InvalidRecord(
            "bad_type",
            f"The timestamp {value!r} is a boolean; send an integer number of milliseconds.",
        )
    try:
        milliseconds = operator.index(value)
    except TypeError:
        raise InvalidRecord(
            "bad_type",
            f"The timestamp {_quote(value)} has type {type(value).__name__}, not int; "
            "send an integer number of milliseconds.",
        ) from None
    if not MIN_TIMESTAMP_MS <= milliseconds <= MAX_TIMESTAMP_MS:
        raise InvalidRecord(
            "bad_timestamp",
            f"The timestamp {_quote(milliseconds)} ms is outside the years 1 to 9999 in UTC "
            f"(from {MIN_TIMESTAMP_MS} to {MAX_TIMESTAMP_MS}); send milliseconds, not microseconds "
            "or nanoseconds, since the Unix epoch.",
        )
    return milliseconds


def _values_from_list(values: Any) -> np.ndarray:
    if not isinstance(values, (list, tuple)):
        raise InvalidRecord(
            "bad_type",
            f"The field 'values' has JSON type {_json_type_name(values)} ({_quote(values)}), not array; "
            "send a list of numbers, or one number in 'value'.",
        )
    if not values:
        raise InvalidRecord(
            "empty_values",
            "The field 'values' is an empty list; send at least one number per sample.",
        )
    numbers = [float(_check_number(item, f"values[{index}]")) for index, item in enumerate(values)]
    return np.array(numbers, dtype=np.float64)


def _check_values_array(values: Any) -> np.ndarray:
    try:
        raw = np.asarray(values)
    except (TypeError, ValueError):
        raise InvalidRecord(
            "bad_type",
            f"Record values {_quote(values)} are not a 1-D sequence of numbers; pass one number per channel.",
        ) from None
    if raw.dtype.kind == "O":
        # Python ints beyond int64, or a mix of number types, give an object array.
        raw = np.array([_check_number(item, "values") for item in raw.reshape(-1)], dtype=np.float64).reshape(raw.shape)
    elif raw.dtype.kind not in "iuf":
        raise InvalidRecord(
            "bad_type",
            f"Record values have dtype {raw.dtype}; pass real numbers (not booleans, strings or complex numbers).",
        )
    array = np.array(raw, dtype=np.float64, order="C")
    if array.ndim != 1:
        raise InvalidRecord(
            "bad_type",
            f"Record values have shape {array.shape}; pass a 1-D sequence with one number per channel.",
        )
    if array.size == 0:
        raise InvalidRecord("empty_values", "Record values are empty; pass at least one number.")
    if np.any(np.isinf(array)):
        index = int(np.flatnonzero(np.isinf(array))[0])
        raise InvalidRecord(
            "non_finite",
            f"Record values contain {float(array[index])!r} at index {index}; pass finite numbers, or NaN for a missing value.",
        )
    array.flags.writeable = False
    return array


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_number(value: Any, field: str) -> int | float:
    """Return ``value`` as an int or a finite float, or raise InvalidRecord naming ``field``."""
    if not _is_number(value):
        raise InvalidRecord(
            "bad_type",
            f"The field {field!r} has JSON type {_json_type_name(value)} ({_quote(value)}), not number; "
            "send a JSON number (booleans and strings are not accepted).",
        )
    if isinstance(value, (int, np.integer)):
        number: int | float = int(value)
        if abs(number) > sys.float_info.max:
            raise InvalidRecord(
                "non_finite",
                f"The field {field!r} is {_quote(number)}, too large for float64; send a smaller number.",
            )
        return number
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRecord(
            "non_finite",
            f"The field {field!r} is {number!r}; send only finite numbers and drop or interpolate "
            "missing samples before producing.",
        )
    return number


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _field_list(obj: Mapping[Any, Any]) -> str:
    names = [_quote(key) for key in list(obj)[:10]]
    if len(obj) > 10:
        names.append("...")
    return ", ".join(names) if names else "none"


def _quote(value: Any) -> str:
    """Return a repr of ``value`` cut to a length that fits in an error message."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > _MAX_QUOTED:
        text = text[: _MAX_QUOTED - 3] + "..."
    return text

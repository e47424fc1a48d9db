"""Loaders that read a time series file into a :class:`~streamad.data.series.Series`.

Supported formats, chosen by the file extension and, for other extensions, by the content:

- CSV (``.csv``, also compressed as ``.csv.gz`` and the like): a timestamp column and numeric
  channel columns, such as NAB's ``timestamp,value`` files. Without a timestamp column the
  rows are indexed by step.
- NumPy ``.npy`` arrays of shape ``(time, channels)``, such as the SMAP/MSL telemetry. They
  have no clock, and their channels are named ``"0"``, ``"1"``, ...
- JSON lines (``.jsonl``, ``.ndjson``, ``.json``): one object per line,
  ``{"series": "id", "timestamp": "2013-12-02T21:15:00Z", "values": [1.0, 2.0]}`` or with
  ``"value": 1.0``. ``"series"`` is optional and defaults to the file stem. The timestamp is
  an ISO-8601 string or epoch milliseconds.

A missing value is an empty CSV cell or a JSON ``null``. It becomes NaN, which training
forward-fills up to ``max_fill`` steps and the streaming engine treats as a gap. By default a
CSV cell that pandas reads as missing (``NaN``, ``NA``, ``null`` and the like) and the
non-standard JSON token ``NaN`` are missing values too. With ``reject_nan=True`` they are
invalid, as in a Kafka record, which cannot carry NaN. An infinite value (``inf``,
``Infinity``, or a number too large for float64 such as ``1e400``) and a CSV cell that is not a
number are always invalid. With an ``on_invalid_line`` callback the loaders skip each line or
row with an invalid value and pass it to the callback. Without one, they raise ValueError.

Timestamps must be strictly increasing within a series. The loaders never sort, because
sorting could interleave two recordings of the same period. By default they raise ValueError
naming the first row that is out of order. With ``out_of_order="drop"`` they keep the file
order and drop each row whose timestamp is not after every earlier row, which is what a
streaming consumer does with a late or repeated record. Six of NAB's files contain such rows,
among them ``realKnownCause/machine_temperature_system_failure.csv``. An ``on_out_of_order``
callback gets each dropped row as an :class:`OutOfOrderRow`, e.g. for a dead-letter file.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import logging
import lzma
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from streamad.data.series import Series, format_timestamp, parse_timestamp
from streamad.records import InvalidRecord

logger = logging.getLogger(__name__)

TIMESTAMP_COLUMN_NAMES = ("timestamp", "time", "date", "datetime")

_JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")

# Called with (line number, line text, error) for each invalid line of a JSON lines file, or
# each CSV row with an invalid value, that is skipped. Line numbers count from 1, so a CSV
# header is line 1. For a CSV row the error is an InvalidRecord whose reason is the one that the
# daemon's decoder gives such a value: "bad_type" for text, "non_finite" for NaN or infinity.
InvalidLineHandler = Callable[[int, str, ValueError], None]


@dataclass(frozen=True)
class OutOfOrderRow:
    """A row that ``out_of_order="drop"`` skipped because its timestamp is not after every earlier row."""

    # The series as named in the file: the "series" field of a JSON lines record, else the file stem.
    series_id: str
    # The line of the file where the row starts, counted from 1, so a CSV header is line 1.
    line_number: int
    # The row as written in the file, without the line ending. A CSV row whose quoted field
    # contains a line break spans several lines.
    line: str
    # The row's timestamp and the latest timestamp of the earlier rows of its series, in epoch milliseconds.
    timestamp: int
    latest_timestamp: int


# Called with each row that out_of_order="drop" skipped, in file order within a series.
OutOfOrderHandler = Callable[[OutOfOrderRow], None]

_NPY_MAGIC = b"\x93NUMPY"

OUT_OF_ORDER_POLICIES = ("raise", "drop")


def load_series(
    path: str | Path,
    *,
    timestamp_column: str | None = None,
    channels: list[str] | None = None,
    series_id: str | None = None,
    out_of_order: str = "raise",
    on_out_of_order: OutOfOrderHandler | None = None,
    on_invalid_line: InvalidLineHandler | None = None,
    reject_nan: bool = False,
) -> Series:
    """Load one time series from a CSV, ``.npy`` or JSON lines file.

    Parameters
    ----------
    path
        The file to read. The module docstring lists the formats.
    timestamp_column
        CSV only: the name of the timestamp column. By default the column named
        ``timestamp``, ``time``, ``date`` or ``datetime`` (in any case) is used, and a CSV
        file without such a column is indexed by step (``has_clock`` is False). Numeric
        timestamps are read as epoch milliseconds.
    channels
        The channels to keep, in this order. For a CSV file these are column names, and
        columns that are not selected may be non-numeric. For ``.npy`` and JSON lines files
        with a ``"values"`` list they are the column positions as strings (``"0"``, ``"1"``).
    series_id
        The id of the result. Defaults to the file stem, or to the ``"series"`` field of a
        JSON lines file.
    out_of_order
        ``"raise"`` to reject a row whose timestamp is not after the previous row's, or
        ``"drop"`` to skip every such row with a logged warning.
    on_out_of_order
        With ``out_of_order="drop"``, called with an :class:`OutOfOrderRow` for each
        skipped row, after the warning. ``.npy`` files and CSV files without a timestamp
        column have no such rows.
    on_invalid_line
        Called with ``(line_number, line, error)`` for each invalid line of a JSON lines file
        and each CSV row with an invalid value, which are then skipped instead of raising.
        The module docstring lists the invalid values.
    reject_nan
        Treat a NaN written as a value (a CSV cell ``NaN``, the JSON token ``NaN``) as
        invalid, as the daemon does, instead of as a missing value. An empty CSV cell and a
        JSON ``null`` stay missing values.

    Raises
    ------
    ValueError
        When the file is malformed, a requested column is missing, a value is not a finite
        number or a missing value (without ``on_invalid_line``),
        the timestamps are not strictly increasing (with ``out_of_order="raise"``), or a
        JSON lines file contains more than
        one series (use :func:`load_series_collection` for those). The message names the
        file, the row or line and the value.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "cpu.csv").write_text("timestamp,value\\n2024-01-01 00:00:00,1.5\\n2024-01-01 00:05:00,\\n")
    >>> series = load_series(folder / "cpu.csv")
    >>> series.series_id, series.channels, series.has_clock
    ('cpu', ['value'], True)
    >>> series.values[:, 0].tolist()
    [1.5, nan]
    """
    path = Path(path)
    _check_out_of_order_policy(out_of_order)
    kind = _detect_format(path)

    if kind != "csv" and timestamp_column is not None:
        raise ValueError(
            f"{path}: timestamp_column={timestamp_column!r} applies only to CSV files, "
            f"but this is a {kind} file; leave timestamp_column unset"
        )

    if kind == "csv":
        series = _load_csv(path, timestamp_column, channels, out_of_order, on_out_of_order, on_invalid_line, reject_nan)
    elif kind == "npy":
        # NOTE: .npy arrays are not checked for infinite values.
        series = _load_npy(path, channels)
    else:
        collection = _load_json_lines(path, channels, out_of_order, on_invalid_line, on_out_of_order, reject_nan)
        if len(collection) > 1:
            ids = ", ".join(repr(item.series_id) for item in collection[:5])
            raise ValueError(
                f"{path} contains {len(collection)} series ({ids}{', ...' if len(collection) > 5 else ''}), "
                "but load_series reads a single series; call load_series_collection(path) instead"
            )
        series = collection[0]

    if series_id is not None:
        series.series_id = str(series_id)
    logger.debug(
        "loaded series %s from %s: %d points, channels %s", series.series_id, path, len(series), series.channels
    )
    return series


def load_series_collection(
    path: str | Path,
    *,
    channels: list[str] | None = None,
    out_of_order: str = "raise",
    on_invalid_line: InvalidLineHandler | None = None,
    on_out_of_order: OutOfOrderHandler | None = None,
    reject_nan: bool = False,
) -> list[Series]:
    """Load every series in a file, in order of first appearance.

    A JSON lines file may interleave records of several series, identified by their
    ``"series"`` field. CSV and ``.npy`` files contain one series, which is returned as a
    one-element list. ``channels``, ``out_of_order``, ``on_out_of_order``, ``on_invalid_line``
    and ``reject_nan`` work as in :func:`load_series`, and the order of timestamps is checked
    within each series.

    By default an invalid line of a JSON lines file, or a CSV row with an invalid value,
    raises ValueError. With ``on_invalid_line(line_number, line, error)`` the line is passed
    to it and skipped instead. Line numbers start at 1. It does not apply to ``.npy`` files.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "hosts.jsonl"
    >>> _ = path.write_text(
    ...     '{"series": "a", "timestamp": "2024-01-01T00:00:00Z", "value": 1.0}\\n'
    ...     '{"series": "b", "timestamp": 1704067200000, "value": 7.0}\\n'
    ...     '{"series": "a", "timestamp": "2024-01-01T00:01:00Z", "value": 2.0}\\n'
    ... )
    >>> [(item.series_id, len(item)) for item in load_series_collection(path)]
    [('a', 2), ('b', 1)]
    """
    path = Path(path)
    _check_out_of_order_policy(out_of_order)
    if _detect_format(path) == "jsonl":
        return _load_json_lines(path, channels, out_of_order, on_invalid_line, on_out_of_order, reject_nan)
    series = load_series(
        path,
        channels=channels,
        out_of_order=out_of_order,
        on_out_of_order=on_out_of_order,
        on_invalid_line=on_invalid_line,
        reject_nan=reject_nan,
    )
    return [series]


def _detect_format(path: Path) -> str:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".npy":
        return "npy"
    if suffixes and suffixes[-1] in _JSON_LINES_SUFFIXES:
        return "jsonl"
    if ".csv" in suffixes:
        return "csv"

    # Any other extension: look at the first bytes.
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.lstrip().startswith(b"{"):
        return "jsonl"
    return "csv"


# CSV ---------------------------------------------------------------------------------------


def _load_csv(
    path: Path,
    timestamp_column: str | None,
    channels: Sequence[str] | None,
    out_of_order: str,
    on_out_of_order: OutOfOrderHandler | None = None,
    on_invalid_line: InvalidLineHandler | None = None,
    reject_nan: bool = False,
) -> Series:
    # With reject_nan only empty cells are missing, so that a cell "NaN" stays text and is found below.
    missing_options = {"keep_default_na": False, "na_values": [""]} if reject_nan else {}
    try:
        frame = pd.read_csv(path, skipinitialspace=True, **missing_options)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; a CSV file needs a header row and at least one data row") from None
    except pd.errors.ParserError as error:
        raise ValueError(f"{path} is not a valid CSV file: {error}") from None

    frame.columns = [str(name).strip() for name in frame.columns]
    if frame.empty:
        raise ValueError(f"{path} has a header but no data rows")
    describe_row = _CsvRowNames(path, len(frame))

    time_name = _find_timestamp_column(path, list(frame.columns), timestamp_column)
    candidates = [name for name in frame.columns if name != time_name]
    if channels is None:
        selected = candidates
    else:
        selected = _check_requested_channels(path, channels, candidates)
    if not selected:
        raise ValueError(f"{path} has no channel columns besides the timestamp column {time_name!r}")
    _check_numeric_columns(path, frame, selected, describe_row)

    values = np.empty((len(frame), len(selected)), dtype=np.float64)
    # The first invalid value or timestamp of each row with one, by row.
    invalid: dict[int, InvalidRecord] = {}
    for position, name in enumerate(selected):
        values[:, position] = _numeric_column(path, frame[name], name, describe_row, invalid)
    if time_name is not None:
        all_timestamps = _parse_timestamp_column(path, frame[time_name], time_name, describe_row, invalid)
    if invalid and on_invalid_line is None:
        raise invalid[min(invalid)]
    rows = np.array([row for row in range(len(frame)) if row not in invalid], dtype=np.int64)
    if invalid:
        _report_invalid_csv_rows(path, invalid, len(frame), on_invalid_line)
        if len(rows) == 0:
            raise ValueError(f"{path} has no data row with valid values; every row has an invalid value")

    if time_name is None:
        logger.info("%s has no timestamp column; indexing its %d rows by step", path, len(rows))
        timestamps = np.arange(len(rows), dtype=np.int64)
        values = values[rows]
    else:
        timestamps = all_timestamps[rows]
        keep = _ordered_rows(path, timestamps, lambda index: describe_row(int(rows[index])), out_of_order)
        if on_out_of_order is not None and not keep.all():
            _report_csv_rows(path, timestamps, rows, len(frame), keep, on_out_of_order)
        timestamps = timestamps[keep]
        values = values[rows][keep]

    return Series(path.stem, timestamps, values, list(selected), has_clock=time_name is not None)


class _CsvRowNames:
    """Names of the data rows of a CSV file by their lines, e.g. "line 306", for messages.

    The lines are found by reading the file again, because a blank line or a quoted line
    break shifts them. When that fails, a row is named "data row N", counted from 1 after
    the header.
    """

    def __init__(self, path: Path, row_count: int) -> None:
        self.path = path
        self.row_count = row_count
        self.names: dict[int, str] = {}

    def load(self, rows) -> None:
        """Find the lines of ``rows`` in one pass over the file."""
        missing = {int(row) for row in rows} - set(self.names)
        if not missing:
            return
        try:
            records = _csv_records(self.path, missing, self.row_count)
        except (OSError, ValueError, csv.Error, UnicodeDecodeError):
            records = {}
        for row in missing:
            self.names[row] = f"line {records[row][0]}" if row in records else f"data row {row + 1}"

    def __call__(self, row: int) -> str:
        self.load([row])
        return self.names[row]


# Openers of the compressions that pandas infers from these suffixes and the standard library reads.
_COMPRESSED_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _report_csv_rows(
    path: Path, timestamps: np.ndarray, rows: np.ndarray, row_count: int, keep: np.ndarray, handler: OutOfOrderHandler
) -> None:
    """Pass the CSV rows that ``keep`` drops to ``handler``, with their lines read again from the file.

    ``timestamps`` and ``keep`` belong to the data rows ``rows`` of the file, which has ``row_count`` data rows.
    """
    dropped = _dropped_rows(timestamps, keep)
    try:
        records = _csv_records(path, {int(rows[index]) for index, _ in dropped}, row_count)
    except (OSError, ValueError, csv.Error, UnicodeDecodeError) as error:
        logger.warning(
            "%s: %d row(s) dropped for out-of-order timestamps are not passed to on_out_of_order, "
            "because their text could not be read again: %s",
            path,
            len(dropped),
            error,
        )
        return
    for index, latest in dropped:
        line_number, line = records[int(rows[index])]
        handler(OutOfOrderRow(path.stem, line_number, line, int(timestamps[index]), latest))


def _report_invalid_csv_rows(
    path: Path, invalid: dict[int, InvalidRecord], row_count: int, handler: InvalidLineHandler
) -> None:
    """Pass the CSV rows with an invalid value to ``handler``, with their lines read again from the file."""
    try:
        records = _csv_records(path, set(invalid), row_count)
    except (OSError, ValueError, csv.Error, UnicodeDecodeError) as error:
        logger.warning(
            "%s: %d row(s) skipped for invalid values are not passed to on_invalid_line, "
            "because their text could not be read again: %s",
            path,
            len(invalid),
            error,
        )
        return
    for row in sorted(invalid):
        line_number, line = records[row]
        handler(line_number, line, invalid[row])


def _csv_records(path: Path, rows: set[int], row_count: int) -> dict[int, tuple[int, str]]:
    """Return the first line number and the text of the given data rows of a CSV file.

    Rows are counted from 0 after the header, as pandas counts them: lines of whitespace are
    skipped, and a quoted field may span lines. Raises ValueError when the file has another
    number of data rows than ``row_count``, the rows that pandas read.
    """
    suffixes = [suffix.lower() for suffix in path.suffixes] or [""]
    if suffixes[-1] in (".zip", ".zst") or ".tar" in suffixes[-2:]:
        # NOTE: pandas reads these archives, but this function does not open them.
        raise ValueError(f"reading rows again from a {suffixes[-1]} archive is not supported")
    opener = _COMPRESSED_OPENERS.get(suffixes[-1], open)

    found: dict[int, tuple[int, str]] = {}
    consumed: list[str] = []

    def lines_of(handle):
        for line in handle:
            consumed.append(line)
            yield line

    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        # skipinitialspace=True as in pd.read_csv, because it decides whether ' "a' starts a quoted field.
        reader = csv.reader(lines_of(handle), skipinitialspace=True)
        lines_before = 0
        row = -2
        for _ in reader:
            text = "".join(consumed)
            first_line = lines_before + 1
            lines_before += len(consumed)
            consumed.clear()
            if not text.strip():
                continue
            # The first record that is not blank is the header, row -1.
            row += 1
            if row in rows:
                found[row] = (first_line, text.rstrip("\r\n"))

    if row + 1 != row_count:
        raise ValueError(f"the csv module found {row + 1} data rows, but pandas read {row_count}")
    return found


def _find_timestamp_column(path: Path, columns: list[str], requested: str | None) -> str | None:
    if requested is not None:
        if requested not in columns:
            raise ValueError(
                f"{path} has no column {requested!r} for timestamp_column; its columns are {columns}"
            )
        return requested

    matches = [name for name in columns if name.lower() in TIMESTAMP_COLUMN_NAMES]
    if len(matches) > 1:
        raise ValueError(
            f"{path} has several timestamp-like columns {matches}; pick one with timestamp_column=..."
        )
    return matches[0] if matches else None


def _check_numeric_columns(path: Path, frame: pd.DataFrame, names: list[str], describe_row: _CsvRowNames) -> None:
    """Raise ValueError when a column has text cells and no number, naming the numeric columns to select."""
    text_columns = {}
    for name in names:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            continue
        converted = pd.to_numeric(column, errors="coerce")
        if column.notna().any() and not converted.notna().any():
            text_columns[name] = int(np.flatnonzero(column.notna().to_numpy())[0])
    if not text_columns:
        return
    name, row = next(iter(text_columns.items()))
    numeric = [column for column in names if column not in text_columns]
    if numeric:
        fix = f"pass channels={numeric!r} to load only the numeric columns"
    else:
        fix = "add a column of numbers"
    raise ValueError(
        f"{path}: column {name!r} contains no numbers ({describe_row(row)} contains {frame[name].iloc[row]!r}); {fix}"
    )


def _numeric_column(
    path: Path, column: pd.Series, name: str, describe_row: _CsvRowNames, invalid: dict[int, InvalidRecord]
) -> np.ndarray:
    """Return a column as float64, with NaN for missing cells; add the rows of its invalid cells to ``invalid``.

    An invalid cell is text that is not a number (reason ``bad_type``), NaN text that pandas
    did not read as missing (``non_finite``), or an infinite number (``non_finite``).
    """
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        converted = column.to_numpy(dtype=np.float64, na_value=np.nan)
        text = np.zeros(len(column), dtype=bool)
    else:
        converted = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        text = np.isnan(converted) & column.notna().to_numpy()

    bad_rows = [int(row) for row in np.flatnonzero(text | np.isinf(converted)) if int(row) not in invalid]
    describe_row.load(bad_rows)
    for row in bad_rows:
        cell = column.iloc[row]
        if not isinstance(cell, str):
            # pandas read the column as numbers, so it quotes the number that it read.
            cell = float(cell)
        where = f"{path}: {describe_row(row)}, column {name!r}"
        if np.isinf(converted[row]):
            invalid[row] = InvalidRecord(
                "non_finite",
                f"{where} contains {cell!r}, which is infinite or too large for float64; "
                "use a finite number, or an empty cell for a missing value",
            )
        elif _is_nan_text(cell):
            invalid[row] = InvalidRecord(
                "non_finite", f"{where} contains {cell!r}; leave the cell empty for a missing value"
            )
        else:
            invalid[row] = InvalidRecord(
                "bad_type",
                f"{where} contains {cell!r}, which is not a number; fix the value, or leave the cell "
                "empty for a missing value",
            )
    return converted


def _is_nan_text(cell: object) -> bool:
    try:
        return math.isnan(float(str(cell)))
    except ValueError:
        return False


def _parse_timestamp_column(
    path: Path, column: pd.Series, name: str, describe_row: _CsvRowNames, invalid: dict[int, InvalidRecord]
) -> np.ndarray:
    """Return a timestamp column as epoch milliseconds; add the rows of its invalid cells to ``invalid``.

    An empty cell is ``missing_field`` and a text that is no date-time ``bad_timestamp``, the
    daemon's reasons. Their rows get the timestamp 0 in the result. A column of booleans
    raises ValueError, because no row of it is usable.
    """
    missing = column.isna().to_numpy()
    if missing.any():
        missing_rows = [int(row) for row in np.flatnonzero(missing) if int(row) not in invalid]
        describe_row.load(missing_rows)
        for row in missing_rows:
            invalid[row] = InvalidRecord(
                "missing_field", f"{path}: {describe_row(row)} has no value in the timestamp column {name!r}; fill it or drop the row"
            )
        column = column.where(~missing, 0 if pd.api.types.is_numeric_dtype(column) else "1970-01-01T00:00:00")

    if pd.api.types.is_bool_dtype(column):
        raise ValueError(f"{path}: timestamp column {name!r} contains booleans; give ISO-8601 strings or epoch milliseconds")
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(column):
        return np.rint(column.to_numpy(dtype=np.float64)).astype(np.int64)

    # Fast path for ISO-8601 text. pandas' parser rejects some strings that
    # datetime.fromisoformat accepts, so a failure falls back to parsing row by row.
    try:
        parsed = pd.to_datetime(column, format="ISO8601", utc=True)
    except (ValueError, TypeError, OverflowError):
        parsed = None
    if parsed is not None:
        naive_utc = parsed.dt.tz_localize(None).to_numpy()
        return naive_utc.astype("datetime64[ms]").astype(np.int64)

    timestamps = np.zeros(len(column), dtype=np.int64)
    unparsable: dict[int, ValueError] = {}
    for row, value in enumerate(column.tolist()):
        try:
            timestamps[row] = parse_timestamp(value)
        except ValueError as error:
            unparsable[row] = error
    describe_row.load([row for row in unparsable if row not in invalid])
    for row, error in unparsable.items():
        if row not in invalid:
            invalid[row] = InvalidRecord("bad_timestamp", f"{path}: {describe_row(row)}, column {name!r}: {error}")
    return timestamps


# NumPy -------------------------------------------------------------------------------------


def _load_npy(path: Path, channels: Sequence[str] | None) -> Series:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path} is not a plain numeric .npy array ({error}); save it with numpy.save") from None

    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"{path} has shape {array.shape}; a .npy series must have shape (time,) or (time, channels)")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path} has dtype {array.dtype}; a .npy series must contain real numbers")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{path} has shape {array.shape}; it needs at least one time step and one channel")

    values = array.astype(np.float64)
    names = [str(index) for index in range(values.shape[1])]
    values, names = _select_channels(path, values, names, channels)
    timestamps = np.arange(len(values), dtype=np.int64)
    return Series(path.stem, timestamps, values, names, has_clock=False)


# JSON lines --------------------------------------------------------------------------------


class _SeriesRecords:
    """Rows of one series in a JSON lines file, collected before conversion to arrays."""

    def __init__(self, series_id: str, field: str, width: int, line: int) -> None:
        self.series_id = series_id
        self.field = field
        self.width = width
        self.first_line = line
        self.timestamps: list[int] = []
        self.rows: list[list[float]] = []
        self.lines: list[int] = []


def _load_json_lines(
    path: Path,
    channels: Sequence[str] | None,
    out_of_order: str,
    on_invalid_line: InvalidLineHandler | None = None,
    on_out_of_order: OutOfOrderHandler | None = None,
    reject_nan: bool = False,
) -> list[Series]:
    collected: dict[str, _SeriesRecords] = {}
    invalid_count = 0

    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                _collect_json_line(path, line_number, line, collected, reject_nan)
            except ValueError as error:
                if on_invalid_line is None:
                    raise
                invalid_count += 1
                on_invalid_line(line_number, line, error)

    if not collected and invalid_count:
        raise ValueError(f"{path} contains no valid records: all of its {invalid_count} record lines are invalid")
    if not collected:
        raise ValueError(f"{path} contains no records; a JSON lines file needs one JSON object per line")

    result = []
    dropped: list[tuple[str, int, int, int]] = []
    for records in collected.values():
        timestamps = np.asarray(records.timestamps, dtype=np.int64)
        lines = records.lines
        keep = _ordered_rows(
            path, timestamps, lambda row: f"line {lines[row]}", out_of_order, series_id=records.series_id
        )
        if on_out_of_order is not None and not keep.all():
            for row, latest in _dropped_rows(timestamps, keep):
                dropped.append((records.series_id, lines[row], int(timestamps[row]), latest))
        timestamps = timestamps[keep]
        values = np.asarray(records.rows, dtype=np.float64)[keep]
        if records.field == "value":
            names = ["value"]
        else:
            names = [str(index) for index in range(records.width)]
        values, names = _select_channels(path, values, names, channels)
        result.append(Series(records.series_id, timestamps, values, names, has_clock=True))

    if on_out_of_order is not None and dropped:
        texts = _json_lines_text(path, {line_number for _, line_number, _, _ in dropped})
        for series_id, line_number, timestamp, latest in dropped:
            on_out_of_order(OutOfOrderRow(series_id, line_number, texts[line_number], timestamp, latest))
    return result


def _json_lines_text(path: Path, line_numbers: set[int]) -> dict[int, str]:
    """Return the text of the given lines of a file, counted from 1, without their line endings."""
    texts = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line_number in line_numbers:
                texts[line_number] = line.rstrip("\r\n")
    return texts


def _collect_json_line(
    path: Path, line_number: int, line: str, collected: dict[str, _SeriesRecords], reject_nan: bool = False
) -> None:
    """Add the record of one line to ``collected``, or raise ValueError and leave ``collected`` unchanged."""
    where = f"{path}, line {line_number}"
    record = _parse_json_record(where, line)

    series_id = record.get("series", path.stem)
    if not isinstance(series_id, str):
        raise ValueError(f'{where}: "series" must be a string, got {series_id!r}')

    if "timestamp" not in record:
        raise ValueError(f'{where}: the record has no "timestamp"; add an ISO-8601 string or epoch milliseconds')
    try:
        timestamp = parse_timestamp(record["timestamp"])
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None

    field, row = _record_values(where, record, reject_nan)
    records = collected.get(series_id)
    if records is None:
        records = _SeriesRecords(series_id, field, len(row), line_number)
        collected[series_id] = records
    elif field != records.field or len(row) != records.width:
        raise ValueError(
            f"{where}: series {series_id!r} has {len(row)} value(s) in {field!r} here but "
            f"{records.width} in {records.field!r} on line {records.first_line}; "
            "every record of a series needs the same channels"
        )
    records.timestamps.append(timestamp)
    records.rows.append(row)
    records.lines.append(line_number)


def _parse_json_record(where: str, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{where} is not valid JSON ({error.msg}); a JSON lines file needs one complete object per line"
        ) from None
    if not isinstance(record, dict):
        raise ValueError(f"{where} contains a JSON {type(record).__name__}, but each line must be an object")
    return record


def _record_values(where: str, record: dict, reject_nan: bool) -> tuple[str, list[float]]:
    has_list = "values" in record
    has_scalar = "value" in record
    if has_list == has_scalar:
        raise ValueError(
            f'{where}: the record needs exactly one of "values" (a list of numbers) and "value" (a number)'
        )

    if has_scalar:
        return "value", [_json_number(where, "value", record["value"], reject_nan)]

    items = record["values"]
    if not isinstance(items, list) or not items:
        raise ValueError(f'{where}: "values" must be a non-empty list of numbers, got {items!r}')
    return "values", [_json_number(where, "values", item, reject_nan) for item in items]


def _json_number(where: str, field: str, item: object, reject_nan: bool) -> float:
    """Return a JSON value as a float: NaN for null, and for the token NaN unless ``reject_nan``.

    Python's json module reads the non-standard tokens NaN, Infinity and -Infinity, and reads a
    number too large for float64, such as 1e400, as infinity.
    """
    if item is None:
        return math.nan
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        raise ValueError(f'{where}: {field!r} contains {item!r}, which is not a number; use a number or null for a missing value')
    if isinstance(item, int) and abs(item) > sys.float_info.max:
        raise ValueError(f"{where}: {field!r} contains an integer too large for float64; use a smaller number")
    number = float(item)
    if math.isinf(number):
        raise ValueError(
            f"{where}: {field!r} contains {number!r}, which is infinite or too large for float64; "
            "use a finite number, or null for a missing value"
        )
    if math.isnan(number) and reject_nan:
        raise ValueError(f"{where}: {field!r} contains NaN, which is not a JSON number; use null for a missing value")
    return number


# Shared checks -----------------------------------------------------------------------------


def _check_requested_channels(path: Path, requested: Sequence[str], available: list[str]) -> list[str]:
    if isinstance(requested, str):
        raise ValueError(f"channels must be a list of names, got the string {requested!r}; use channels=[{requested!r}]")
    names = [str(name) for name in requested]
    if not names:
        raise ValueError(f"{path}: channels=[] selects nothing; leave channels unset to load every channel")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: channels={names} names a channel twice")
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(f"{path} has no channel(s) {missing}; the available channels are {available}")
    return names


def _select_channels(
    path: Path, values: np.ndarray, names: list[str], requested: Sequence[str] | None
) -> tuple[np.ndarray, list[str]]:
    if requested is None:
        return values, names
    selected = _check_requested_channels(path, requested, names)
    positions = [names.index(name) for name in selected]
    return values[:, positions], selected


def _check_out_of_order_policy(out_of_order: str) -> None:
    if out_of_order not in OUT_OF_ORDER_POLICIES:
        raise ValueError(f"out_of_order={out_of_order!r} is invalid; use one of {OUT_OF_ORDER_POLICIES}")


def _dropped_rows(timestamps: np.ndarray, keep: np.ndarray) -> list[tuple[int, int]]:
    """Return the row and the latest earlier timestamp of each row that ``keep`` drops."""
    latest = np.maximum.accumulate(timestamps)
    return [(int(row), int(latest[row - 1])) for row in np.flatnonzero(~keep)]


def _ordered_rows(
    path: Path,
    timestamps: np.ndarray,
    describe_row: Callable[[int], str],
    out_of_order: str,
    *,
    series_id: str | None = None,
) -> np.ndarray:
    """Return a mask of the rows to keep, or raise on the first row out of order.

    A row is out of order when its timestamp is not greater than every earlier timestamp.
    The kept rows are exactly the rows that set a new maximum.
    """
    if len(timestamps) == 0:
        return np.ones(0, dtype=bool)
    latest_before = np.maximum.accumulate(timestamps)[:-1]
    keep = np.concatenate(([True], timestamps[1:] > latest_before))
    if keep.all():
        return keep

    row = int(np.flatnonzero(~keep)[0])
    subject = f"{path}" if series_id is None else f"{path}, series {series_id!r}"
    if out_of_order == "drop":
        logger.warning(
            "%s: dropped %d row(s) whose timestamp is not after every earlier row, the first at %s",
            subject,
            int(np.count_nonzero(~keep)),
            describe_row(row),
        )
        return keep

    current = format_timestamp(int(timestamps[row]), True)
    previous = format_timestamp(int(timestamps[row - 1]), True)
    if timestamps[row] == timestamps[row - 1]:
        raise ValueError(
            f"{subject}: {describe_row(row)} repeats the timestamp {current} of {describe_row(row - 1)}; "
            "remove or merge the duplicate rows, or pass out_of_order='drop' to keep the first"
        )
    raise ValueError(
        f"{subject}: timestamps must be strictly increasing, but {describe_row(row)} ({current}) "
        f"is not after {describe_row(row - 1)} ({previous}); sort the file by timestamp, "
        "or pass out_of_order='drop' to skip the rows that are out of order"
    )

"""Point labels for the public benchmarks, aligned with a loaded series.

Two label formats are read:

- NAB's ``labels/combined_windows.json`` (``.json``): ``{"<category>/<name>.csv": [[start,
  end], ...]}`` with inclusive timestamp windows. The point list ``combined_labels.json``,
  whose entries are single timestamps, is read too, each point as a one-instant window.
- The SMAP/MSL ``labeled_anomalies.csv`` of the telemanom project (``.csv``): one row per
  channel, where ``chan_id`` is the stem of the test file and ``anomaly_sequences`` lists
  inclusive ``[start, end]`` index pairs into the test array.
"""

from __future__ import annotations

import ast
import csv
import difflib
import json
import logging
from pathlib import Path

import numpy as np

from streamad.data.series import Series, parse_timestamp

logger = logging.getLogger(__name__)


def load_labels(labels_path: str | Path, data_path: str | Path, series: Series) -> np.ndarray:
    """Return the boolean ``(T,)`` anomaly labels of ``series``, loaded from ``data_path``.

    ``labels_path`` selects the format by its extension. For NAB the label key is the last two
    parts of ``data_path`` (``realKnownCause/nyc_taxi.csv``) and the windows are matched
    against ``series.timestamps``, so rows that the loader dropped do not shift the labels.
    For SMAP/MSL the key is the stem of ``data_path`` (``A-1``), the labels index rows, and
    the series must have the length given by ``num_values``, which is the length of the test
    array. A channel listed on several rows (P-2 in telemanom's file) gets the union of their
    sequences.

    Raises
    ------
    ValueError
        When the file has no entry for the series (the message lists similar and valid
        keys), the entry is malformed, or the series does not fit it.

    Examples
    --------
    >>> import json, tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from streamad.data import Series
    >>> folder = Path(tempfile.mkdtemp())
    >>> windows = {"realKnownCause/demo.csv": [["1970-01-01 00:01:00", "1970-01-01 00:02:00"]]}
    >>> _ = (folder / "combined_windows.json").write_text(json.dumps(windows))
    >>> series = Series("demo", np.arange(4) * 60_000, np.zeros(4), ["value"], True)
    >>> load_labels(folder / "combined_windows.json", "data/realKnownCause/demo.csv", series).tolist()
    [False, True, True, False]
    """
    labels_path = Path(labels_path)
    data_path = Path(data_path)
    suffix = labels_path.suffix.lower()
    if suffix == ".json":
        return _nab_labels(labels_path, data_path, series)
    if suffix == ".csv":
        return _telemanom_labels(labels_path, data_path, series)
    raise ValueError(
        f"{labels_path}: unknown label format {suffix!r}; use NAB's combined_windows.json (.json) "
        "or telemanom's labeled_anomalies.csv (.csv)"
    )


def _nab_labels(labels_path: Path, data_path: Path, series: Series) -> np.ndarray:
    try:
        with open(labels_path, encoding="utf-8") as handle:
            table = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{labels_path} is not valid JSON ({error})") from None
    if not isinstance(table, dict):
        raise ValueError(
            f"{labels_path} contains a JSON {type(table).__name__}; NAB labels are an object "
            'of the form {"<category>/<name>.csv": [[start, end], ...]}'
        )

    key = f"{data_path.parent.name}/{data_path.name}"
    if key not in table:
        raise ValueError(
            f"{labels_path} has no entry {key!r} for {data_path}; the key is built from the last two parts of "
            f"the data path. {_suggest_keys(key, list(table))}"
        )
    if not series.has_clock:
        raise ValueError(
            f"NAB labels for {key!r} are timestamps, but series {series.series_id!r} has no clock; "
            "load the NAB CSV file with its timestamp column"
        )

    labels = np.zeros(len(series), dtype=bool)
    entries = table[key]
    if not isinstance(entries, list):
        raise ValueError(f"{labels_path}, entry {key!r}: expected a list of windows, got {entries!r}")

    for entry in entries:
        start, end = _nab_window(labels_path, key, entry)
        first = np.searchsorted(series.timestamps, start, side="left")
        stop = np.searchsorted(series.timestamps, end, side="right")
        if first == stop:
            logger.warning("%s, entry %r: window %r covers no point of series %s", labels_path, key, entry, series.series_id)
        labels[first:stop] = True
    return labels


def _nab_window(labels_path: Path, key: str, entry: object) -> tuple[int, int]:
    where = f"{labels_path}, entry {key!r}"
    if isinstance(entry, str):
        bounds = [entry, entry]
    elif isinstance(entry, list) and len(entry) == 2:
        bounds = entry
    else:
        raise ValueError(f"{where}: {entry!r} is neither a [start, end] window nor a single timestamp")

    try:
        start, end = (parse_timestamp(bound) for bound in bounds)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if start > end:
        raise ValueError(f"{where}: window {entry!r} ends before it starts; swap start and end")
    return start, end


def _telemanom_labels(labels_path: Path, data_path: Path, series: Series) -> np.ndarray:
    channel = data_path.stem
    with open(labels_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [name for name in ("chan_id", "anomaly_sequences") if name not in columns]
        if missing:
            raise ValueError(
                f"{labels_path} has no column(s) {missing}; expected telemanom's labeled_anomalies.csv "
                f"with chan_id and anomaly_sequences, found {columns}"
            )
        rows = list(reader)

    matches = [(number, row) for number, row in enumerate(rows, start=2) if row["chan_id"].strip() == channel]
    if not matches:
        known = [row["chan_id"].strip() for row in rows]
        raise ValueError(
            f"{labels_path} has no row with chan_id {channel!r} for {data_path}; the chan_id is the "
            f"data file's stem. {_suggest_keys(channel, known)}"
        )
    if len(matches) > 1:
        logger.warning(
            "%s lists channel %s on %d rows; using the union of their anomaly sequences",
            labels_path,
            channel,
            len(matches),
        )

    labels = np.zeros(len(series), dtype=bool)
    for line, row in matches:
        where = f"{labels_path}, line {line} (chan_id {channel!r})"
        _check_num_values(where, row.get("num_values"), series)
        for start, end in _anomaly_sequences(where, row["anomaly_sequences"]):
            if not 0 <= start <= end < len(series):
                raise ValueError(
                    f"{where}: sequence [{start}, {end}] is outside the series' {len(series)} points "
                    "or ends before it starts"
                )
            labels[start : end + 1] = True
    return labels


def _check_num_values(where: str, text: str | None, series: Series) -> None:
    if text is None or not text.strip():
        return
    try:
        expected = int(text)
    except ValueError:
        raise ValueError(f"{where}: num_values {text!r} is not an integer") from None
    if expected != len(series):
        raise ValueError(
            f"{where}: num_values is {expected}, but series {series.series_id!r} has {len(series)} points; "
            "the labels index the test array, so load the file from the test/ folder"
        )


def _anomaly_sequences(where: str, text: str) -> list[tuple[int, int]]:
    try:
        sequences = json.loads(text)
    except json.JSONDecodeError:
        # The column is "JSON-like"; fall back to Python literal syntax.
        try:
            sequences = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}: anomaly_sequences {text!r} is not a list of [start, end] pairs") from None

    pairs = []
    for item in sequences if isinstance(sequences, (list, tuple)) else [sequences]:
        valid = (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and all(isinstance(bound, int) and not isinstance(bound, bool) for bound in item)
        )
        if not valid:
            raise ValueError(f"{where}: anomaly_sequences {text!r} contains {item!r}; expected [start, end] integers")
        pairs.append((item[0], item[1]))
    return pairs


def _suggest_keys(key: str, known: list[str]) -> str:
    if not known:
        return "The label file has no entries."
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    sample = known[:5]
    hint = f"Similar entries: {close}. " if close else ""
    return f"{hint}Some valid entries: {sample} ({len(known)} in total)."

"""Tests of StandardScaler, fill_gaps and sliding_windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.preprocessing import StandardScaler as SklearnScaler

from streamad.data import StandardScaler, fill_gaps, sliding_windows

# StandardScaler ------------------------------------------------------------------------------


def test_scaler_matches_sklearn():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=(200, 4))
    values[:, 2] = 7.25
    ours = StandardScaler().fit(values)
    theirs = SklearnScaler().fit(values)

    np.testing.assert_allclose(ours.mean_, theirs.mean_)
    np.testing.assert_allclose(ours.scale_, theirs.scale_)
    np.testing.assert_allclose(ours.transform(values), theirs.transform(values))


def test_scaler_ignores_nan_like_sklearn():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(100, 3))
    values[rng.random(values.shape) < 0.2] = np.nan
    ours = StandardScaler().fit(values)
    theirs = SklearnScaler().fit(values)

    np.testing.assert_allclose(ours.mean_, theirs.mean_)
    np.testing.assert_allclose(ours.scale_, theirs.scale_)
    transformed = ours.transform(values)
    np.testing.assert_array_equal(np.isnan(transformed), np.isnan(values))


def test_scaler_constant_channel_scale_one():
    values = np.column_stack([np.full(1000, 0.1), np.arange(1000.0)])
    scaler = StandardScaler().fit(values)

    assert scaler.scale_[0] == 1.0
    np.testing.assert_allclose(scaler.transform(values)[:, 0], 0.0, atol=1e-12)


def test_scaler_windows_shape():
    rng = np.random.default_rng(2)
    series = rng.normal(size=(50, 2))
    scaler = StandardScaler().fit(series)
    windows = sliding_windows(series, window=5).x

    scaled = scaler.transform(windows)

    assert scaled.shape == windows.shape
    np.testing.assert_allclose(scaled[3], scaler.transform(series[3:8]), rtol=1e-6)


def test_scaler_fit_accepts_windows():
    values = np.arange(24.0).reshape(2, 4, 3)
    scaler = StandardScaler().fit(values)

    np.testing.assert_allclose(scaler.mean_, values.reshape(-1, 3).mean(axis=0))


def test_scaler_inverse_round_trip():
    rng = np.random.default_rng(3)
    values = rng.normal(5.0, 3.0, size=(30, 2))
    scaler = StandardScaler().fit(values)

    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(values)), values)


def test_scaler_dict_round_trip():
    scaler = StandardScaler().fit(np.array([[1.0, 10.0], [3.0, 30.0]]))
    state = json.loads(json.dumps(scaler.to_dict()))
    restored = StandardScaler.from_dict(state)

    np.testing.assert_array_equal(restored.mean_, scaler.mean_)
    np.testing.assert_array_equal(restored.scale_, scaler.scale_)


def test_scaler_one_dimensional():
    scaler = StandardScaler().fit(np.array([1.0, 2.0, 3.0]))

    assert scaler.transform(np.array([2.0])).shape == (1, 1)


def test_scaler_unfitted_raises():
    with pytest.raises(RuntimeError, match="call fit"):
        StandardScaler().transform(np.zeros((2, 2)))


def test_scaler_channel_mismatch_raises():
    scaler = StandardScaler().fit(np.zeros((3, 2)))

    with pytest.raises(ValueError, match=r"shape \(4, 3\).*fitted on 2 channel\(s\)"):
        scaler.transform(np.zeros((4, 3)))


def test_scaler_all_nan_channel_raises():
    values = np.array([[1.0, np.nan], [2.0, np.nan]])

    with pytest.raises(ValueError, match="channel 1 has no finite value"):
        StandardScaler().fit(values)


def test_scaler_inf_raises():
    with pytest.raises(ValueError, match="channel 0 contains ±inf"):
        StandardScaler().fit(np.array([[np.inf], [1.0]]))


def test_scaler_empty_raises():
    with pytest.raises(ValueError, match="at least one row"):
        StandardScaler().fit(np.zeros((0, 2)))


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        ({"mean": [0.0]}, "missing ['scale']"),
        ({"mean": [0.0, 1.0], "scale": [1.0]}, "both must be lists of the same length"),
        ({"mean": [0.0], "scale": [0.0]}, "scale finite and positive"),
    ],
)
def test_scaler_from_dict_invalid(state, fragment):
    with pytest.raises(ValueError) as caught:
        StandardScaler.from_dict(state)

    assert fragment in str(caught.value)


# fill_gaps -----------------------------------------------------------------------------------


def fill_gaps_reference(values: np.ndarray, max_fill: int) -> np.ndarray:
    """Fill gaps with a plain loop over runs, the specification of fill_gaps."""
    result = np.array(values, dtype=float)
    table = result.reshape(len(result), -1)
    for column in range(table.shape[1]):
        row = 0
        while row < len(table):
            if not np.isnan(table[row, column]):
                row += 1
                continue
            stop = row
            while stop < len(table) and np.isnan(table[stop, column]):
                stop += 1
            if row > 0 and stop - row <= max_fill:
                table[row:stop, column] = table[row - 1, column]
            row = stop
    return result


def test_fill_gaps_runs():
    nan = np.nan
    values = np.array([nan, 1.0, nan, 3.0, nan, nan, nan, 7.0, nan, nan])
    filled = fill_gaps(values, max_fill=2)

    np.testing.assert_array_equal(filled, [nan, 1.0, 1.0, 3.0, nan, nan, nan, 7.0, 7.0, 7.0])


def test_fill_gaps_per_channel():
    nan = np.nan
    values = np.array([[1.0, nan], [nan, 2.0], [nan, nan], [4.0, 5.0]])
    filled = fill_gaps(values, max_fill=1)

    np.testing.assert_array_equal(filled, [[1.0, nan], [nan, 2.0], [nan, 2.0], [4.0, 5.0]])


def test_fill_gaps_zero_and_copy():
    values = np.array([1.0, np.nan, 3.0])
    filled = fill_gaps(values, max_fill=0)

    assert np.isnan(filled[1])
    filled[0] = 9.0
    assert values[0] == 1.0
    assert np.isnan(values[1])


@pytest.mark.parametrize("max_fill", [-1, 1.5, True, "2"])
def test_fill_gaps_invalid_max_fill(max_fill):
    with pytest.raises(ValueError, match=f"max_fill={max_fill!r} is invalid"):
        fill_gaps(np.zeros(3), max_fill=max_fill)


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.integers(1, 3)),
        elements=st.one_of(st.just(np.nan), st.floats(-5, 5)),
    ),
    max_fill=st.integers(0, 6),
)
def test_fill_gaps_matches_loop(values, max_fill):
    np.testing.assert_array_equal(fill_gaps(values, max_fill), fill_gaps_reference(values, max_fill))


# sliding_windows -----------------------------------------------------------------------------


def test_windows_shape_and_end():
    values = np.arange(20.0).reshape(10, 2)
    windows = sliding_windows(values, window=4, stride=3)

    assert windows.x.shape == (3, 4, 2)
    assert windows.x.dtype == np.float32
    assert windows.x.flags["C_CONTIGUOUS"]
    assert windows.end.dtype == np.int64
    assert windows.end.tolist() == [3, 6, 9]
    np.testing.assert_array_equal(windows.x[1], values[3:7])
    assert windows.skipped == 0
    assert len(windows) == 3


def test_windows_skip_missing():
    values = np.arange(8.0)
    values[3] = np.nan
    values[7] = np.inf
    windows = sliding_windows(values, window=2)

    assert windows.end.tolist() == [1, 2, 5, 6]
    assert windows.skipped == 3


def test_windows_full_length():
    windows = sliding_windows(np.ones((5, 1)), window=5)

    assert windows.x.shape == (1, 5, 1)
    assert windows.end.tolist() == [4]


def test_windows_all_skipped():
    windows = sliding_windows(np.full(4, np.nan), window=2)

    assert windows.x.shape == (0, 2, 1)
    assert windows.skipped == 3


def test_windows_do_not_alias_input():
    values = np.zeros((5, 1), dtype=np.float32)
    windows = sliding_windows(values, window=2)
    windows.x[0, 0, 0] = 1.0

    assert values[0, 0] == 0.0


@settings(max_examples=100, deadline=None)
@given(
    length=st.integers(1, 30),
    channels=st.integers(1, 3),
    window=st.integers(1, 30),
    stride=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_windows_match_loop(length, channels, window, stride, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(length, channels))
    values[rng.random(values.shape) < 0.1] = np.nan
    if window > length:
        return
    windows = sliding_windows(values, window, stride)

    expected_x, expected_end, expected_skipped = [], [], 0
    for start in range(0, length - window + 1, stride):
        chunk = values[start : start + window]
        if np.isnan(chunk).any():
            expected_skipped += 1
            continue
        expected_x.append(chunk)
        expected_end.append(start + window - 1)

    assert windows.end.tolist() == expected_end
    assert windows.skipped == expected_skipped
    if expected_x:
        np.testing.assert_array_equal(windows.x, np.array(expected_x, dtype=np.float32))


@pytest.mark.parametrize(
    ("window", "stride", "fragment"),
    [
        (0, 1, "window=0 is invalid"),
        (2.0, 1, "window=2.0 is invalid"),
        (2, 0, "stride=0 is invalid"),
        (True, 1, "window=True is invalid"),
        (6, 1, "window=6 is longer than the series (5 points)"),
    ],
)
def test_windows_invalid_arguments(window, stride, fragment):
    with pytest.raises(ValueError) as caught:
        sliding_windows(np.zeros(5), window, stride)

    assert fragment in str(caught.value)


def test_windows_invalid_shape():
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 2\)"):
        sliding_windows(np.zeros((2, 2, 2)), 1)

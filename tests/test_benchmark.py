"""`streamad benchmark` on real NAB and SMAP/MSL files: NAB's results layout, rows, labels and the reports."""

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest

from shared_data import NAB_DATA, NAB_WINDOWS, SMAP_MSL, require
from streamad.benchmark.nab import probationary_rows
from streamad.benchmark.report import pooled_event_metrics
from streamad.cli import main
from streamad.scores import SCORE_NAMES

# 1,624 rows, one of them (data row 1305) repeats an earlier hour and is dropped by the loader.
NAB_KEY = "realAdExchange/exchange-2_cpc_results.csv"
DETECTORS = ["streamadLikelihood", "streamadReconstruction", "streamadElbo", "streamadImportance"]
WINDOW = 32
FAST_TRAINING = ["--epochs", "2", "--hidden", "16"]


@pytest.fixture(scope="module")
def nab_results(tmp_path_factory):
    require(NAB_DATA / NAB_KEY)
    out = tmp_path_factory.mktemp("nab-results")
    code = main(
        ["benchmark", "nab", "--data", str(NAB_DATA), "--labels", str(require(NAB_WINDOWS)), "--out", str(out), "--files", NAB_KEY]
        + FAST_TRAINING
    )
    assert code == 0
    return out


def _expected_labels(timestamps: pd.Series) -> np.ndarray:
    """Label rows inside a combined window, ends included, straight from the JSON file."""
    windows = json.loads(NAB_WINDOWS.read_text())[NAB_KEY]
    moments = pd.to_datetime(timestamps)
    labels = np.zeros(len(moments), dtype=int)
    for start, end in windows:
        labels[((moments >= pd.Timestamp(start)) & (moments <= pd.Timestamp(end))).to_numpy()] = 1
    return labels


def test_nab_layout_has_one_tree_per_score(nab_results):
    for detector in DETECTORS:
        assert (nab_results / detector / "realAdExchange" / f"{detector}_exchange-2_cpc_results.csv").is_file()
    assert (nab_results / "summary.csv").is_file()
    assert (nab_results / "summary.json").is_file()


@pytest.mark.parametrize("detector", DETECTORS)
def test_nab_results_file_matches_input_rows(nab_results, detector):
    original = pd.read_csv(NAB_DATA / NAB_KEY, dtype=str)
    results = pd.read_csv(nab_results / detector / "realAdExchange" / f"{detector}_exchange-2_cpc_results.csv", dtype=str)

    assert list(results.columns) == ["timestamp", "value", "anomaly_score", "label"]
    assert len(results) == len(original) == 1624
    assert results["timestamp"].tolist() == original["timestamp"].tolist()
    assert results["value"].tolist() == original["value"].tolist()

    scores = results["anomaly_score"].astype(float).to_numpy()
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.all(scores[: WINDOW - 1] == 0.0)
    assert np.any(scores > 0.5)
    np.testing.assert_array_equal(results["label"].astype(int).to_numpy(), _expected_labels(original["timestamp"]))


def test_nab_dropped_row_kept_with_zero_score(nab_results):
    original = pd.read_csv(NAB_DATA / NAB_KEY, dtype=str)
    results = pd.read_csv(nab_results / "streamadLikelihood" / "realAdExchange" / "streamadLikelihood_exchange-2_cpc_results.csv", dtype=str)
    moments = pd.to_datetime(original["timestamp"]).to_numpy()
    out_of_order = np.concatenate(([False], moments[1:] <= np.maximum.accumulate(moments)[:-1]))

    assert out_of_order.sum() == 1
    assert results.loc[out_of_order, "anomaly_score"].astype(float).tolist() == [0.0]
    assert results.loc[out_of_order, "timestamp"].tolist() == original.loc[out_of_order, "timestamp"].tolist()


def test_nab_summary_has_metrics_per_score(nab_results):
    with open(nab_results / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["score"] for row in rows] == list(SCORE_NAMES)
    for row in rows:
        assert row["file"] == NAB_KEY
        assert int(row["rows"]) == 1624
        assert int(row["dropped_rows"]) == 1
        assert int(row["probationary_rows"]) == 243
        assert int(row["train_rows"]) == 243
        assert 0.0 <= float(row["roc_auc"]) <= 1.0
        assert 0.0 <= float(row["pr_auc"]) <= 1.0
        assert int(row["events"]) == 1
        assert 0.0 <= float(row["alert_fraction"]) <= 1.0

    document = json.loads((nab_results / "summary.json").read_text())
    assert set(document["summary"]) == set(SCORE_NAMES)
    assert document["environment"]["torch"]
    assert document["options"]["detectors"]["likelihood"] == "streamadLikelihood"


def test_nab_custom_detector_name(tmp_path):
    require(NAB_DATA / NAB_KEY)
    code = main(
        ["benchmark", "nab", "--data", str(NAB_DATA), "--out", str(tmp_path), "--files", NAB_KEY, "--score", "likelihood", "--detector", "vaeLaplace"]
        + FAST_TRAINING
    )
    assert code == 0
    assert (tmp_path / "vaeLaplace" / "realAdExchange" / "vaeLaplace_exchange-2_cpc_results.csv").is_file()
    assert not (tmp_path / "streamadLikelihood").exists()


def test_nab_uncapped_probation_and_models(tmp_path):
    key = "realKnownCause/nyc_taxi.csv"
    require(NAB_DATA / key)
    out = tmp_path / "results"
    code = main(
        ["benchmark", "nab", "--data", str(NAB_DATA), "--out", str(out), "--files", key, "--score", "likelihood"]
        + ["--uncapped-probation", "--models", str(tmp_path / "models")]
        + FAST_TRAINING
    )
    assert code == 0

    with open(out / "summary.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    # 10,320 rows: NAB's probationary period is capped at 750, the uncapped span is 15 %.
    assert int(row["probationary_rows"]) == 750
    assert int(row["train_rows"]) == 1548
    assert int(row["points"]) == 10320 - 1548
    assert (tmp_path / "models" / "realKnownCause" / "nyc_taxi" / "model.pt").is_file()


def test_nab_rejects_detector_name_with_underscore(tmp_path, capsys):
    require(NAB_DATA / NAB_KEY)
    code = main(["benchmark", "nab", "--data", str(NAB_DATA), "--out", str(tmp_path), "--files", NAB_KEY, "--score", "likelihood", "--detector", "vae_laplace"])
    assert code == 2
    assert "detector name 'vae_laplace' is invalid" in capsys.readouterr().err


def test_nab_rejects_pattern_without_files(tmp_path, capsys):
    require(NAB_DATA)
    code = main(["benchmark", "nab", "--data", str(NAB_DATA), "--out", str(tmp_path), "--files", "noSuchCategory/*"])
    assert code == 2
    assert "no labelled NAB files matching" in capsys.readouterr().err


def test_nab_probationary_period_follows_nab():
    assert probationary_rows(1624) == 243
    assert probationary_rows(5000) == 750
    assert probationary_rows(22695) == 750


def test_smap_msl_report_fields(tmp_path, capsys):
    data = require(SMAP_MSL)
    code = main(["benchmark", "smap-msl", "--data", str(data), "--channels", "C-1", "--out", str(tmp_path)] + FAST_TRAINING)
    assert code == 0
    printed = capsys.readouterr().out
    assert "score likelihood" in printed
    assert "pooled" in printed

    document = json.loads((tmp_path / "smap_msl.json").read_text())
    assert document["options"]["telemetry_only"] is True
    rows = document["channels"]
    assert [row["score"] for row in rows] == list(SCORE_NAMES)
    for row in rows:
        assert row["channel"] == "C-1"
        assert row["spacecraft"] == "MSL"
        assert row["modelled_channels"] == 1
        assert row["test_points"] == 2264
        assert row["points"] == 2264 - (WINDOW - 1)
        # labeled_anomalies.csv lists [550, 750] and [2100, 2210] for C-1.
        assert row["events"] == 2
        assert row["anomalous_points"] == 201 + 111
        assert row["false_positive_runs"] <= row["alert_runs"]
        for key in ("alert_fraction", "event_precision", "event_recall", "event_f1", "best_point_f1", "roc_auc", "pr_auc"):
            assert row[key] is None or 0.0 <= row[key] <= 1.0, key
        assert 0.0 <= row["roc_auc"] <= 1.0

    with open(tmp_path / "smap_msl.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(SCORE_NAMES)


def test_pooled_event_metrics_sum_counts():
    rows = [
        {"events": 2, "detected_events": 1, "alert_runs": 3, "false_positive_runs": 2},
        {"events": 0, "detected_events": 0, "alert_runs": 1, "false_positive_runs": 1},
    ]
    pooled = pooled_event_metrics(rows)
    assert pooled["precision"] == 0.25
    assert pooled["recall"] == 0.5
    assert math.isclose(pooled["f1"], 2 * 0.25 * 0.5 / 0.75)
    assert pooled["false_positive_runs"] == 3

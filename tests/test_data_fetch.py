"""Offline tests of scripts/fetch_datasets.py: local copies, archives and file:// downloads."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DATA = REPOSITORY.parent / "shared" / "data"

spec = importlib.util.spec_from_file_location("fetch_datasets", REPOSITORY / "scripts" / "fetch_datasets.py")
fetch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch)

NAB_CSV = "timestamp,value\n2014-04-01 00:00:00,1.5\n2014-04-01 00:05:00,2.5\n"
TELEMANOM_CSV = (
    "chan_id,spacecraft,anomaly_sequences,class,num_values\n"
    'A-1,SMAP,"[[1, 2]]",[point],4\n'
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_upstream(root: Path) -> dict[str, str | None]:
    """Write a tiny copy of both datasets under ``root`` and return its digest table.

    The table has no digest for data.zip, like the script's own table before it is filled in.
    """
    files = {
        "nab/LICENSE.txt": "MIT\n",
        "nab/data/realTest/a.csv": NAB_CSV,
        "nab/data/realTest/b.csv": NAB_CSV.replace("1.5", "9.5"),
        "nab/labels/combined_windows.json": json.dumps(
            {"realTest/a.csv": [["2014-04-01 00:00:00", "2014-04-01 00:05:00"]], "realTest/b.csv": []}
        ),
        "nab/labels/combined_labels.json": json.dumps({"realTest/a.csv": ["2014-04-01 00:05:00"], "realTest/b.csv": []}),
        "smap_msl/labeled_anomalies.csv": TELEMANOM_CSV,
    }
    for key, text in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    table: dict[str, str | None] = {key: digest(root / key) for key in files}
    table["smap_msl/data.zip"] = None
    return table


def write_arrays(root: Path, channel: str = "A-1", test_rows: int = 4) -> None:
    for split, rows in (("train", 3), ("test", test_rows)):
        (root / split).mkdir(parents=True, exist_ok=True)
        np.save(root / split / f"{channel}.npy", np.arange(rows * 2, dtype=np.float64).reshape(rows, 2))


def make_data_zip(path: Path) -> None:
    """Write a zip laid out like telemanom's data.zip, with members that must not be unpacked."""
    array = np.zeros((4, 2))
    train = np.zeros((3, 2))
    with zipfile.ZipFile(path, "w") as bundle:
        for name, values in (("data/train/A-1.npy", train), ("data/test/A-1.npy", array)):
            with bundle.open(name, "w") as handle:
                np.save(handle, values)
        bundle.writestr("__MACOSX/data/train/._A-1.npy", b"resource fork")
        bundle.writestr("data/2018-05-19_15.00.10/y_hat/A-1.npy", b"predictions")
        bundle.writestr("data/../../evil/test/../x.txt", b"never unpacked")


def use_file_urls(monkeypatch, upstream: Path) -> None:
    monkeypatch.setattr(fetch, "NAB_BASE_URL", (upstream / "nab").as_uri())
    monkeypatch.setattr(fetch, "TELEMANOM_BASE_URL", (upstream / "smap_msl").as_uri())
    monkeypatch.setattr(fetch, "TELEMANOM_DATA_URL", (upstream / "smap_msl" / "data.zip").as_uri())


def error_text(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)


@pytest.fixture
def upstream(tmp_path, monkeypatch):
    root = tmp_path / "upstream"
    table = make_upstream(root)
    monkeypatch.setattr(fetch, "SHA256", table)
    return root


# --from-dir with an extracted layout ---------------------------------------------------------


def test_from_dir_installs_layout(upstream, tmp_path):
    write_arrays(upstream / "smap_msl")
    out = tmp_path / "out"

    assert fetch.main(["--from-dir", str(upstream), "--out", str(out)]) == 0

    assert (out / "nab" / "data" / "realTest" / "a.csv").read_text() == NAB_CSV
    assert (out / "nab" / "labels" / "combined_windows.json").is_file()
    assert (out / "smap_msl" / "labeled_anomalies.csv").read_text() == TELEMANOM_CSV
    np.testing.assert_array_equal(np.load(out / "smap_msl" / "test" / "A-1.npy"), np.load(upstream / "smap_msl" / "test" / "A-1.npy"))
    assert not list(out.glob(".fetch-*"))
    assert not (out / "smap_msl" / ".staging").exists()


def test_from_dir_one_dataset(upstream, tmp_path):
    out = tmp_path / "out"

    assert fetch.main(["--from-dir", str(upstream), "--out", str(out), "--dataset", "nab"]) == 0

    assert (out / "nab").is_dir()
    assert not (out / "smap_msl").exists()


def test_from_dir_modified_file_rejected(upstream, tmp_path, caplog):
    write_arrays(upstream / "smap_msl")
    (upstream / "nab" / "data" / "realTest" / "a.csv").write_text(NAB_CSV + "2014-04-01 00:10:00,3.5\n")

    assert fetch.main(["--from-dir", str(upstream), "--out", str(tmp_path / "out")]) == 1

    message = error_text(caplog)
    assert "SHA-256 mismatch" in message
    assert "realTest/a.csv" in message
    assert "--allow-unverified" in message


def test_from_dir_modified_file_allowed(upstream, tmp_path, caplog):
    write_arrays(upstream / "smap_msl")
    (upstream / "nab" / "data" / "realTest" / "a.csv").write_text(NAB_CSV + "2014-04-01 00:10:00,3.5\n")
    out = tmp_path / "out"

    assert fetch.main(["--from-dir", str(upstream), "--out", str(out), "--allow-unverified"]) == 0

    assert "2014-04-01 00:10:00" in (out / "nab" / "data" / "realTest" / "a.csv").read_text()
    assert "differs from the file at the pinned commit" in caplog.text


def test_from_dir_subset_warns(upstream, tmp_path, caplog):
    (upstream / "nab" / "data" / "realTest" / "b.csv").unlink()
    out = tmp_path / "out"

    assert fetch.main(["--from-dir", str(upstream), "--out", str(out), "--dataset", "nab"]) == 0

    assert "1 of 5 NAB files are missing" in caplog.text
    assert not (out / "nab" / "data" / "realTest" / "b.csv").exists()


def test_from_dir_without_nab_files(upstream, tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()

    assert fetch.main(["--from-dir", str(empty), "--out", str(tmp_path / "out"), "--dataset", "nab"]) == 1

    assert "contains none of the 5 NAB files" in error_text(caplog)


def test_from_dir_without_arrays(upstream, tmp_path, caplog):
    assert fetch.main(["--from-dir", str(upstream), "--out", str(tmp_path / "out"), "--dataset", "smap_msl"]) == 1

    assert "contains neither data.zip nor train/ and test/ folders" in error_text(caplog)


def test_from_dir_same_as_out(upstream, caplog):
    assert fetch.main(["--from-dir", str(upstream), "--out", str(upstream)]) == 1

    assert "--from-dir and --out are both" in error_text(caplog)


def test_from_dir_not_a_folder(tmp_path, caplog):
    assert fetch.main(["--from-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 1

    assert "is not a folder" in error_text(caplog)


# --from-dir with telemanom's data.zip --------------------------------------------------------


def test_archive_without_digest_rejected(upstream, tmp_path, caplog):
    make_data_zip(upstream / "smap_msl" / "data.zip")

    assert fetch.main(["--from-dir", str(upstream), "--out", str(tmp_path / "out"), "--dataset", "smap_msl"]) == 1

    message = error_text(caplog)
    assert "smap_msl/data.zip has no SHA-256 digest" in message
    assert "--allow-unverified" in message


def test_archive_without_digest_allowed(upstream, tmp_path):
    make_data_zip(upstream / "smap_msl" / "data.zip")
    out = tmp_path / "out"

    code = fetch.main(["--from-dir", str(upstream), "--out", str(out), "--dataset", "smap_msl", "--allow-unverified"])

    assert code == 0
    assert sorted(path.relative_to(out).as_posix() for path in out.rglob("*.npy")) == [
        "smap_msl/test/A-1.npy",
        "smap_msl/train/A-1.npy",
    ]
    assert not list(out.rglob("*.txt"))


def test_archive_with_digest(upstream, tmp_path, monkeypatch):
    archive = upstream / "smap_msl" / "data.zip"
    make_data_zip(archive)
    monkeypatch.setitem(fetch.SHA256, "smap_msl/data.zip", digest(archive))
    out = tmp_path / "out"

    assert fetch.main(["--from-dir", str(upstream), "--out", str(out), "--dataset", "smap_msl"]) == 0

    assert np.load(out / "smap_msl" / "test" / "A-1.npy").shape == (4, 2)


def test_archive_digest_mismatch(upstream, tmp_path, monkeypatch, caplog):
    make_data_zip(upstream / "smap_msl" / "data.zip")
    monkeypatch.setitem(fetch.SHA256, "smap_msl/data.zip", "0" * 64)

    assert fetch.main(["--from-dir", str(upstream), "--out", str(tmp_path / "out"), "--dataset", "smap_msl"]) == 1

    message = error_text(caplog)
    assert f"expected {'0' * 64}, got {digest(upstream / 'smap_msl' / 'data.zip')}" in message


def test_archive_not_a_zip(upstream, tmp_path, caplog):
    (upstream / "smap_msl" / "data.zip").write_bytes(b"not a zip")

    code = fetch.main(["--from-dir", str(upstream), "--out", str(tmp_path / "out"), "--dataset", "smap_msl", "--allow-unverified"])

    assert code == 1
    assert "data.zip is not a valid zip archive" in error_text(caplog)


def test_archive_without_arrays(upstream, tmp_path, caplog):
    with zipfile.ZipFile(upstream / "smap_msl" / "data.zip", "w") as bundle:
        bundle.writestr("data/readme.txt", "nothing here")

    code = fetch.main(["--from-dir", str(upstream), "--out", str(tmp_path / "out"), "--dataset", "smap_msl", "--allow-unverified"])

    assert code == 1
    assert "contains no train/<channel>.npy or test/<channel>.npy files" in error_text(caplog)


# Downloads over file:// URLs -----------------------------------------------------------------


def test_download_installs_and_skips_installed(upstream, tmp_path, monkeypatch):
    use_file_urls(monkeypatch, upstream)
    make_data_zip(upstream / "smap_msl" / "data.zip")
    out = tmp_path / "out"

    assert fetch.main(["--out", str(out), "--allow-unverified"]) == 0
    assert (out / "nab" / "data" / "realTest" / "b.csv").is_file()
    assert (out / "smap_msl" / "train" / "A-1.npy").is_file()
    assert not (out / "smap_msl" / "data.zip").exists()

    # A second run finds every file installed and downloads nothing.
    for path in sorted(upstream.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert fetch.main(["--out", str(out), "--allow-unverified"]) == 0


def test_download_mismatch_always_rejected(upstream, tmp_path, monkeypatch, caplog):
    use_file_urls(monkeypatch, upstream)
    (upstream / "nab" / "LICENSE.txt").write_text("tampered\n")

    code = fetch.main(["--out", str(tmp_path / "out"), "--dataset", "nab", "--allow-unverified"])

    assert code == 1
    message = error_text(caplog)
    assert "SHA-256 mismatch for file://" in message
    assert "LICENSE.txt" in message
    assert "download is corrupt" in message
    assert not (tmp_path / "out" / "nab" / "LICENSE.txt").exists()


def test_download_failure_names_url(upstream, tmp_path, monkeypatch, caplog):
    use_file_urls(monkeypatch, upstream)
    (upstream / "nab" / "data" / "realTest" / "a.csv").unlink()

    assert fetch.main(["--out", str(tmp_path / "out"), "--dataset", "nab"]) == 1

    message = error_text(caplog)
    assert "download of file://" in message
    assert "realTest/a.csv failed" in message
    assert "--from-dir" in message


def test_download_urls_are_pinned():
    assert fetch.download_url("nab/data/realKnownCause/nyc_taxi.csv") == (
        f"https://raw.githubusercontent.com/numenta/NAB/{fetch.NAB_COMMIT}/data/realKnownCause/nyc_taxi.csv"
    )
    assert fetch.download_url("smap_msl/labeled_anomalies.csv").endswith(
        f"/khundman/telemanom/{fetch.TELEMANOM_COMMIT}/labeled_anomalies.csv"
    )
    assert fetch.download_url("smap_msl/data.zip") == "https://s3-us-west-2.amazonaws.com/telemanom/data.zip"


def test_digest_table_is_complete():
    table = fetch.SHA256

    assert sum(key.startswith("nab/data/") for key in table) == 58
    assert all(value is None or len(value) == 64 for value in table.values())
    assert [key for key, value in table.items() if value is None] == ["smap_msl/data.zip"]
    assert all(key.split("/", 1)[0] in fetch.DATASETS for key in table)


# --print-hashes -------------------------------------------------------------------------------


def test_print_hashes_from_dir(upstream, capsys):
    assert fetch.main(["--from-dir", str(upstream), "--print-hashes", "--dataset", "nab"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert f'    "nab/LICENSE.txt": "{digest(upstream / "nab" / "LICENSE.txt")}",' in lines
    assert len(lines) == 5


def test_print_hashes_download(upstream, tmp_path, monkeypatch, capsys):
    use_file_urls(monkeypatch, upstream)
    archive = upstream / "smap_msl" / "data.zip"
    make_data_zip(archive)
    out = tmp_path / "out"

    assert fetch.main(["--print-hashes", "--dataset", "smap_msl", "--out", str(out)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == [
        f'    "smap_msl/data.zip": "{digest(archive)}",',
        f'    "smap_msl/labeled_anomalies.csv": "{digest(upstream / "smap_msl" / "labeled_anomalies.csv")}",',
    ]
    assert not out.exists()


# Validation ----------------------------------------------------------------------------------


def test_validate_truncated_array(upstream, tmp_path, caplog):
    write_arrays(upstream / "smap_msl")
    array_path = upstream / "smap_msl" / "test" / "A-1.npy"
    array_path.write_bytes(array_path.read_bytes()[:-8])

    assert fetch.main(["--from-dir", str(upstream), "--out", str(tmp_path / "out"), "--dataset", "smap_msl"]) == 1

    message = error_text(caplog)
    assert "A-1.npy has" in message
    assert "truncated or corrupt" in message


def test_validate_channel_in_one_split(upstream, tmp_path, caplog):
    write_arrays(upstream / "smap_msl")
    (upstream / "smap_msl" / "train" / "A-1.npy").unlink()
    write_arrays(upstream / "smap_msl", channel="B-1")

    assert fetch.main(["--from-dir", str(upstream), "--out", str(tmp_path / "out"), "--dataset", "smap_msl"]) == 1

    assert "channel A-1 has an array in test/ only" in error_text(caplog)


def test_validate_num_values_mismatch_warns(upstream, tmp_path, caplog):
    write_arrays(upstream / "smap_msl", test_rows=5)

    assert fetch.main(["--from-dir", str(upstream), "--out", str(tmp_path / "out"), "--dataset", "smap_msl"]) == 0

    assert "gives num_values 4 but test/A-1.npy has 5 rows" in caplog.text


def test_validate_nab_header(tmp_path):
    root = tmp_path / "nab"
    make_upstream(tmp_path)
    (root / "data" / "realTest" / "a.csv").write_text("time,value\n2014-04-01 00:00:00,1\n")

    with pytest.raises(fetch.DatasetError, match=r"a.csv: the header is \['time', 'value'\]"):
        fetch.validate_nab(root)


def test_validate_nab_bad_value(tmp_path):
    root = tmp_path / "nab"
    make_upstream(tmp_path)
    (root / "data" / "realTest" / "a.csv").write_text("timestamp,value\n2014-04-01 00:00:00,high\n")

    with pytest.raises(fetch.DatasetError, match="a.csv, line 2: the value 'high' is not a number"):
        fetch.validate_nab(root)


def test_validate_nab_missing_label_entry(tmp_path):
    root = tmp_path / "nab"
    make_upstream(tmp_path)
    (root / "labels" / "combined_windows.json").write_text(json.dumps({"realTest/a.csv": []}))

    with pytest.raises(fetch.DatasetError, match="has no entry 'realTest/b.csv'"):
        fetch.validate_nab(root)


def test_validate_lists_every_problem(tmp_path):
    root = tmp_path / "nab"
    make_upstream(tmp_path)
    (root / "labels" / "combined_windows.json").write_text("[]")
    (root / "labels" / "combined_labels.json").write_text("{broken")

    with pytest.raises(fetch.DatasetError) as caught:
        fetch.validate_nab(root)

    message = str(caught.value)
    assert "2 problem(s)" in message
    assert "combined_windows.json contains a JSON list" in message
    assert "combined_labels.json is not valid JSON" in message


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_read_npy_header_versions(tmp_path, version):
    path = tmp_path / "x.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array(handle, np.zeros((3, 5), dtype=np.float32), version=version)

    assert fetch.read_npy_header(path) == (3, 5)


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros(3), "has shape (3,)"),
        (np.zeros((2, 2), dtype=np.int64), "has dtype '<i8'"),
    ],
)
def test_read_npy_header_rejects(tmp_path, array, fragment):
    path = tmp_path / "x.npy"
    np.save(path, array)

    with pytest.raises(fetch.DatasetError) as caught:
        fetch.read_npy_header(path)

    assert fragment in str(caught.value)


def test_read_npy_header_not_npy(tmp_path):
    path = tmp_path / "x.npy"
    path.write_text("hello")

    with pytest.raises(fetch.DatasetError, match="x.npy is not a .npy file"):
        fetch.read_npy_header(path)


# The real benchmark copy ---------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the benchmark data folder {SHARED_DATA} is absent")
def test_real_copy_needs_allow_unverified(tmp_path, caplog):
    # The copy ships 46 of NAB's 58 files, with label files cut down to match, so the label
    # files differ from the pinned upstream versions while the data files match.
    assert fetch.main(["--from-dir", str(SHARED_DATA), "--out", str(tmp_path / "out"), "--dataset", "nab"]) == 1

    assert "SHA-256 mismatch" in error_text(caplog)
    assert "labels/combined_" in error_text(caplog)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the benchmark data folder {SHARED_DATA} is absent")
def test_real_copy_installs(tmp_path, caplog):
    out = tmp_path / "out"

    assert fetch.main(["--from-dir", str(SHARED_DATA), "--out", str(out), "--allow-unverified"]) == 0

    mismatches = [record.getMessage() for record in caplog.records if "differs from the file" in record.getMessage()]
    assert len(mismatches) == 3
    assert not any("/nab/data/" in message for message in mismatches)
    assert len(list((out / "nab" / "data").glob("*/*.csv"))) == len(list((SHARED_DATA / "nab" / "data").glob("*/*.csv")))
    assert (out / "smap_msl" / "test" / "A-1.npy").read_bytes() == (SHARED_DATA / "smap_msl" / "test" / "A-1.npy").read_bytes()

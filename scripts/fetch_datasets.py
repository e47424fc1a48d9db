#!/usr/bin/env python3
"""Download the public NAB and SMAP/MSL benchmarks and check their SHA-256 digests.

    python scripts/fetch_datasets.py                        # both datasets into data/
    python scripts/fetch_datasets.py --dataset nab --out /tmp/benchmarks
    python scripts/fetch_datasets.py --print-hashes         # download and print digests only
    python scripts/fetch_datasets.py --from-dir COPY        # install a local copy instead

The layout under --out is the one the loaders and tests use:

    nab/data/<category>/<name>.csv    nab/labels/combined_windows.json
    nab/LICENSE.txt                   nab/labels/combined_labels.json
    smap_msl/train/<channel>.npy      smap_msl/test/<channel>.npy
    smap_msl/labeled_anomalies.csv

NAB (MIT licence) comes file by file from the numenta/NAB repository at a pinned commit. The
SMAP/MSL arrays come from the telemanom project's data.zip, of which only train/ and test/
are unpacked, and its labeled_anomalies.csv comes from that repository at a pinned commit.

The script uses only the standard library, so it runs before the project is installed.
Exit status: 0 on success, 1 when a download, digest check or validation fails, 2 on
invalid arguments.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

NAB_COMMIT = "ea702d75cc2258d9d7dd35ca8e5e2539d71f3140"
TELEMANOM_COMMIT = "2e6c5b6c3558e7835601519b7bdef37c649bdbdc"

NAB_BASE_URL = f"https://raw.githubusercontent.com/numenta/NAB/{NAB_COMMIT}"
TELEMANOM_BASE_URL = f"https://raw.githubusercontent.com/khundman/telemanom/{TELEMANOM_COMMIT}"
# NOTE: telemanom's README has pointed to a Kaggle copy (which needs an API key) instead of this
# URL since January 2025, so the S3 object may be gone. A copy of its train/ and test/ folders
# can still be installed with --from-dir.
TELEMANOM_DATA_URL = "https://s3-us-west-2.amazonaws.com/telemanom/data.zip"

# SHA-256 of every file that the script downloads, keyed by its path under --out.
# The NAB and labeled_anomalies.csv digests were computed from the git blobs at the pinned
# commits, not from a download. raw.githubusercontent.com serves a blob's bytes unchanged, and
# neither repository uses Git LFS or a .gitattributes file at those commits.
# TODO: smap_msl/data.zip has no digest yet. Run
#   python scripts/fetch_datasets.py --print-hashes --dataset smap_msl
# once on a machine with internet access, compare the digest with a second download, and paste
# it here. Until then, installing SMAP/MSL from the network needs --allow-unverified.
SHA256: dict[str, str | None] = {
    "smap_msl/data.zip": None,
    "smap_msl/labeled_anomalies.csv": "057ce2d6c8875982bf4e5404aefea14efdcbce413d80826d2b737c95b59b7539",
    "nab/LICENSE.txt": "0a0b4d0b10cb1f7ed9ab2993ef93defc03447e6eba9daca1315dd32dae4877e3",
    "nab/labels/combined_labels.json": "98724014c162fcfd4be605683517f194051a54e98756c53667bd33ddbc644d9b",
    "nab/labels/combined_windows.json": "1e1fbc4601321aad8d0f8b3784c8134299379f68f6c1f7777565f8ffd57ab6b1",
    "nab/data/artificialNoAnomaly/art_daily_no_noise.csv": "ccb7743ac2de8ca110db4af796d11ba31a23ad448a28e353a935c15f637756bc",
    "nab/data/artificialNoAnomaly/art_daily_perfect_square_wave.csv": "662ff0a295b81eb0ff8e81116a54a497cd6f6b07c19c7a5ea72cce494913ce62",
    "nab/data/artificialNoAnomaly/art_daily_small_noise.csv": "c4b304229f69f108eaa024fb2406fcd4510c5c5d95cd0053e2da6989682e4e6d",
    "nab/data/artificialNoAnomaly/art_flatline.csv": "1cc10761ddd6d55fb5f0d9cfc73610416abbb120ee14bb65eff288509a463397",
    "nab/data/artificialNoAnomaly/art_noisy.csv": "ad455adeaf06852222500955f2aefe6bd389cc762ef68e7102ee543209c8607f",
    "nab/data/artificialWithAnomaly/art_daily_flatmiddle.csv": "ea5df125947e9ee2b977ac3d341f3c2a029588862af97cae4a654fc56e838702",
    "nab/data/artificialWithAnomaly/art_daily_jumpsdown.csv": "4af31802e87dff4b4ba3ceb21714ba9d905f7888e1f53d47cc6dd4f856f9debc",
    "nab/data/artificialWithAnomaly/art_daily_jumpsup.csv": "f79f92b93ee4f9c10e2dc552505e8880b0c618639ed5e0f9816e044b75c26456",
    "nab/data/artificialWithAnomaly/art_daily_nojump.csv": "65c85d1834376ed5e622f01721d478609577ea0df0a067c5a5ebe5edea03b077",
    "nab/data/artificialWithAnomaly/art_increase_spike_density.csv": "0959d8871d5c1a3fc3120fb7421e4ef113fffb434af2889085b52aebdb69360c",
    "nab/data/artificialWithAnomaly/art_load_balancer_spikes.csv": "99f7130e54c7c3e818df8e3bdc0974cd241914bb14a10a9c3fa7c1374125d224",
    "nab/data/realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv": "ab446fbd8b9f37507eb2fdb06315826d8daeef02e241133ce06e0ee571ba53d9",
    "nab/data/realAWSCloudwatch/ec2_cpu_utilization_53ea38.csv": "8942e498de7b40f1b4a6d802755592c09b8fb73ce8f658763a09cb9ea1ea94ac",
    "nab/data/realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv": "01613e6f632d067f11a5dfd40a188b0789752b388d9bc77a398bd06333878a76",
    "nab/data/realAWSCloudwatch/ec2_cpu_utilization_77c1ca.csv": "90ceabd570b449241ee24ff8a116a793979b7671ce4490707311bfea0e0aae1f",
    "nab/data/realAWSCloudwatch/ec2_cpu_utilization_825cc2.csv": "d768419037c9db269343822957314f57ee21a7d9a4d41df2add0d1ba45ba84de",
    "nab/data/realAWSCloudwatch/ec2_cpu_utilization_ac20cd.csv": "749a15c2e1a4543c21fee9cbf3338cd8a7ed5f5f8a1308b9b099b06c2c66e66b",
    "nab/data/realAWSCloudwatch/ec2_cpu_utilization_c6585a.csv": "d936cea74682ed43ac96b778352d7de294c0b0c168f4a7e6817162346cdb28c1",
    "nab/data/realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv": "f3433f8171f4dcea86c0c7af9996d0f166f812fa0f4567f1d5cd85d2d2cd69b4",
    "nab/data/realAWSCloudwatch/ec2_disk_write_bytes_1ef3de.csv": "ce3d6c6a652ed7c31a6dd3727a36e128fcac6fb2381c63267ad0fbc02eccd9df",
    "nab/data/realAWSCloudwatch/ec2_disk_write_bytes_c0d644.csv": "a0e734a66098bb81833835f0839dadafbc8ae829c51494670ee8849e46eb5b63",
    "nab/data/realAWSCloudwatch/ec2_network_in_257a54.csv": "39104b08f2e0a673b5137eb7681897fcadf0955fedf565740a6a94edc63a81a4",
    "nab/data/realAWSCloudwatch/ec2_network_in_5abac7.csv": "c27ef93f582af63bf42e80d804764cbe64ae987620f3cfab5477d6ebb3c6157e",
    "nab/data/realAWSCloudwatch/elb_request_count_8c0756.csv": "74c26574a01ca9fb89dddb5021e2e13c3a93eb25dc640438a9acb1ceb00f1021",
    "nab/data/realAWSCloudwatch/grok_asg_anomaly.csv": "86a0abe9d58e376858d2fd4f4a438f1997e24c64a09e5af03accd4e1b372ac47",
    "nab/data/realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv": "f115fbe6542159eed5612445bfa620708a28ab6b41349d1432bb15c3a3b8414d",
    "nab/data/realAWSCloudwatch/rds_cpu_utilization_cc0c53.csv": "d5df979ef85928769a016cd0f935919d8c2a113926e21e1eb3a5001d688760e2",
    "nab/data/realAWSCloudwatch/rds_cpu_utilization_e47b3b.csv": "6b712b922ab3b3404c5a629d64a570c390c99471ee8b9b0ff7665f553fda92c1",
    "nab/data/realAdExchange/exchange-2_cpc_results.csv": "d869ab165254f3ee77ee21fd9fab2be1d07c1f80b8133cf01bbaf2d768c2ac64",
    "nab/data/realAdExchange/exchange-2_cpm_results.csv": "1f01b9438566d2fe1ac446faa202a395ac86db9240a1955bc1f118c8eada2a19",
    "nab/data/realAdExchange/exchange-3_cpc_results.csv": "e70b24dba107a2589657cb3feb9ca5605b4f3f7de49ff445f32f5991bc0bdbe5",
    "nab/data/realAdExchange/exchange-3_cpm_results.csv": "74d354a94fb1730e14b469c7c1c6e99c2ad69af53afdb85f65220bd3cf01ce4a",
    "nab/data/realAdExchange/exchange-4_cpc_results.csv": "d4c13abd6f28594dc446f22106562ebe917fdbe76170f60a500c2a402ecc09e2",
    "nab/data/realAdExchange/exchange-4_cpm_results.csv": "4e5c955b632145b77b93fba4a5e3bf615d47e00416e17091d64e05ae109c760e",
    "nab/data/realKnownCause/ambient_temperature_system_failure.csv": "230b68ccca20f59d562afd5d24ad52939c9b784386bed0054018358bf9120581",
    "nab/data/realKnownCause/cpu_utilization_asg_misconfiguration.csv": "58ba65dc0737cfbac11b51514476d50c438d44011232144bb8d93f392df58f9f",
    "nab/data/realKnownCause/ec2_request_latency_system_failure.csv": "98378580aa80157e057c61d59d81daddccc6c65a2c0c800e3f01f603b8215c3f",
    "nab/data/realKnownCause/machine_temperature_system_failure.csv": "92bf5b87fc7f9bba8ca0b7ec63ccaac8cb4a1371a258e8c29a10ae9c018d82a4",
    "nab/data/realKnownCause/nyc_taxi.csv": "d8fa6f7f0734bf5c8be12c52a94e20a82664c397d9dec4449156bd453d32856d",
    "nab/data/realKnownCause/rogue_agent_key_hold.csv": "47b110baa8e3636574c1033dda1cce780873647fab58223d159d4fee6f180e86",
    "nab/data/realKnownCause/rogue_agent_key_updown.csv": "9797cfef477c13306f7a33874ab4d6cf700f8f2c7e5825a2a5bc02004370909a",
    "nab/data/realTraffic/TravelTime_387.csv": "38e70e9ead8227fd023bff6e93247d5bc01ee008f781b921a156962419b399bb",
    "nab/data/realTraffic/TravelTime_451.csv": "7c174adfc457b201cd111d60688f7ec37eb7201c8080790dc41eeff477bd7345",
    "nab/data/realTraffic/occupancy_6005.csv": "cd357d7820d675074270fd976d4af1fc1e7854ecb764783028cbcb18d980c91d",
    "nab/data/realTraffic/occupancy_t4013.csv": "5663a8122a300360eb51fbbd0f21706da05af1af55262926d6a226bb6d071704",
    "nab/data/realTraffic/speed_6005.csv": "7976e7596cd1e579696c737576e96a26fe041484472ed7d0a463ce2b094d7aa7",
    "nab/data/realTraffic/speed_7578.csv": "15ba994384730cb5a2e6818f17ded1430b40d92eb7a08e5b1a48a445c8c350f6",
    "nab/data/realTraffic/speed_t4013.csv": "fa5532d6f7db36cadc73e657fd4dfef05cb1ec44d4010243b314d3f1bbd6a7b5",
    "nab/data/realTweets/Twitter_volume_AAPL.csv": "826f5cf404c2890784a7824f7102fd00cb134a4948e12e44ec320d095cbbc217",
    "nab/data/realTweets/Twitter_volume_AMZN.csv": "234f5e63f19a62720dfb7ccfd6ecc8349b94d93b33ef8aafbdb17edda0b654f3",
    "nab/data/realTweets/Twitter_volume_CRM.csv": "e7133bf26479623d58fc7367107aea1cd7df6020420dece48b0eee4d26cdb28a",
    "nab/data/realTweets/Twitter_volume_CVS.csv": "f0bdc89cba3dd2265b47069187c750eeae18ef48f76f86067ee26ea1af9c3114",
    "nab/data/realTweets/Twitter_volume_FB.csv": "a7096bd646759486bda6796b5600cd33a4590f0842bf274ea7acba001b3ba591",
    "nab/data/realTweets/Twitter_volume_GOOG.csv": "3a39cc23d1ff6a0f234b55298d0c46c21d2e94ddb81a0dad9e1e46e3aaa9ec90",
    "nab/data/realTweets/Twitter_volume_IBM.csv": "4309bd56d28ddcbdc168e207da9717395fa2e9f74dba41fa768e0f7da8a116fa",
    "nab/data/realTweets/Twitter_volume_KO.csv": "f3aa8157043c6569911031535bd1f7a73b428b5a2d95238d79b9d5b88ceebbd2",
    "nab/data/realTweets/Twitter_volume_PFE.csv": "18d2804d6a5dae63fe711baaba9242dce38a32bfade3dcdee1d8a7c1a866e41b",
    "nab/data/realTweets/Twitter_volume_UPS.csv": "be50f06bbb9d020f37653c8c5cf19af63f77aa0019d8cf10849d91f4af455af4",
}

DATASETS = ("nab", "smap_msl")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data"
DOWNLOAD_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20
MAX_LISTED_PROBLEMS = 10

# A SMAP/MSL array inside data.zip or a local copy: <anything>/train/<channel>.npy or test/.
# The channel name must start with a letter or digit, which excludes macOS "._" files and "..".
ARRAY_MEMBER = re.compile(r"(?:^|/)(train|test)/([A-Za-z0-9][A-Za-z0-9_.-]*\.npy)$")

logger = logging.getLogger("fetch_datasets")


class DatasetError(Exception):
    """A failed download, digest check or validation, with a message for the user."""


# Sources -------------------------------------------------------------------------------------


class UrlSource:
    """Downloads each file from its upstream URL."""

    local = False

    def describe(self, key: str) -> str:
        return download_url(key)

    def obtain(self, key: str, scratch: Path) -> Path:
        """Download the file stored under ``key`` into ``scratch`` and return its path."""
        destination = scratch / key.replace("/", "__")
        url = download_url(key)
        logger.info("downloading %s", url)
        download(url, destination)
        return destination


class DirectorySource:
    """Reads each file from a local copy laid out like --out."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def obtain(self, key: str, scratch: Path) -> Path | None:
        """Return the path of the local file stored under ``key``, or None when it is absent."""
        path = self.root / key
        return path if path.is_file() else None


def download_url(key: str) -> str:
    """Return the upstream URL of the file stored under ``key``."""
    if key == "smap_msl/data.zip":
        return TELEMANOM_DATA_URL
    if key == "smap_msl/labeled_anomalies.csv":
        return f"{TELEMANOM_BASE_URL}/labeled_anomalies.csv"
    if key.startswith("nab/"):
        return f"{NAB_BASE_URL}/{key.removeprefix('nab/')}"
    raise KeyError(f"no URL is known for {key!r}")


def download(url: str, destination: Path) -> None:
    """Download ``url`` to ``destination``, or raise DatasetError."""
    request = urllib.request.Request(url, headers={"User-Agent": "streamad-fetch-datasets"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with open(destination, "wb") as handle:
                shutil.copyfileobj(response, handle, CHUNK_BYTES)
    except OSError as error:
        # URLError, HTTPError and timeouts are all subclasses of OSError.
        destination.unlink(missing_ok=True)
        raise DatasetError(
            f"download of {url} failed: {error}. Check the network connection, or get the file another way "
            "and install it with --from-dir"
        ) from None


# Digests -------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(key: str, path: Path, source: UrlSource | DirectorySource, allow_unverified: bool) -> None:
    """Raise DatasetError unless the file's SHA-256 matches SHA256[key].

    With ``allow_unverified``, a file without a digest in the table is accepted, and so is a
    local file that differs from the pinned upstream version. A download that differs from
    its digest is always rejected.
    """
    expected = SHA256[key]
    actual = sha256_of(path)
    origin = source.describe(key)

    if expected is None:
        if not allow_unverified:
            raise DatasetError(
                f"{key} has no SHA-256 digest in this script, so {origin} cannot be verified. Fill in "
                f"SHA256[{key!r}] (see the TODO above the table in {Path(__file__).name}) or pass --allow-unverified"
            )
        logger.warning("%s has no digest to check; accepted unverified with sha256 %s", origin, actual)
        return

    if actual == expected:
        return
    if source.local and allow_unverified:
        logger.warning(
            "%s differs from the file at the pinned commit (sha256 %s, expected %s); accepted because of --allow-unverified",
            origin,
            actual,
            expected,
        )
        return
    if source.local:
        fix = "The local copy differs from the pinned upstream file; pass --allow-unverified to accept a modified copy"
    else:
        fix = "The download is corrupt or the upstream file has changed; retry, and if it persists check the URL"
    raise DatasetError(f"SHA-256 mismatch for {origin}: expected {expected}, got {actual}. {fix}")


# Installation --------------------------------------------------------------------------------


def install(
    dataset: str, out: Path, source: UrlSource | DirectorySource, *, allow_unverified: bool, force: bool
) -> None:
    """Install one dataset under ``out`` and validate the result."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out) as scratch_name:
        scratch = Path(scratch_name)
        if dataset == "nab":
            install_nab(out, source, scratch, allow_unverified=allow_unverified, force=force)
            validate_nab(out / "nab")
        else:
            install_smap_msl(out, source, scratch, allow_unverified=allow_unverified, force=force)
            validate_smap_msl(out / "smap_msl")
    logger.info("%s is installed in %s", dataset, out / dataset)


def install_file(
    key: str, out: Path, source: UrlSource | DirectorySource, scratch: Path, *, allow_unverified: bool, force: bool
) -> bool:
    """Install one plain file, skipping it when the installed copy already matches its digest.

    Returns False when a local source does not have the file.
    """
    target = out / key
    if not force and SHA256[key] is not None and target.is_file() and sha256_of(target) == SHA256[key]:
        logger.debug("%s is already installed", target)
        return True

    path = source.obtain(key, scratch)
    if path is None:
        return False
    verify(key, path, source, allow_unverified)

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    shutil.copyfile(path, partial)
    os.replace(partial, target)
    return True


def install_nab(
    out: Path, source: UrlSource | DirectorySource, scratch: Path, *, allow_unverified: bool, force: bool
) -> None:
    keys = [key for key in SHA256 if key.startswith("nab/")]
    missing = [
        key
        for key in keys
        if not install_file(key, out, source, scratch, allow_unverified=allow_unverified, force=force)
    ]
    if len(missing) == len(keys):
        raise DatasetError(f"{source.describe('nab')} contains none of the {len(keys)} NAB files, such as {keys[0]}")
    if missing:
        logger.warning(
            "%d of %d NAB files are missing from %s and were not installed, such as %s",
            len(missing),
            len(keys),
            source.describe("nab"),
            missing[0],
        )


def install_smap_msl(
    out: Path, source: UrlSource | DirectorySource, scratch: Path, *, allow_unverified: bool, force: bool
) -> None:
    root = out / "smap_msl"
    labels_key = "smap_msl/labeled_anomalies.csv"
    if not install_file(labels_key, out, source, scratch, allow_unverified=allow_unverified, force=force):
        raise DatasetError(f"{source.describe(labels_key)} is missing; SMAP/MSL needs its label file")

    if not force and arrays_installed(root):
        logger.info("%s already contains train/ and test/ arrays; pass --force to replace them", root)
        return

    archive_key = "smap_msl/data.zip"
    if isinstance(source, DirectorySource) and not (source.root / archive_key).is_file():
        copy_arrays(source.root / "smap_msl", root)
        return

    archive = source.obtain(archive_key, scratch)
    verify(archive_key, archive, source, allow_unverified)
    extract_arrays(archive, root)


def arrays_installed(root: Path) -> bool:
    return all((root / split).is_dir() and any((root / split).glob("*.npy")) for split in ("train", "test"))


def extract_arrays(archive: Path, root: Path) -> None:
    """Unpack the train/ and test/ arrays of telemanom's data.zip into ``root``."""
    staging = root / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    members: dict[tuple[str, str], str] = {}
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                match = ARRAY_MEMBER.search(info.filename)
                if info.is_dir() or "__MACOSX" in info.filename or match is None:
                    continue
                split, name = match.groups()
                if (split, name) in members:
                    raise DatasetError(
                        f"{archive} contains {split}/{name} twice ({members[split, name]} and {info.filename}); "
                        "it is not telemanom's data.zip"
                    )
                members[split, name] = info.filename
                destination = staging / split / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as packed, open(destination, "wb") as handle:
                    shutil.copyfileobj(packed, handle, CHUNK_BYTES)
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{archive} is not a valid zip archive ({error})") from None

    if not members:
        raise DatasetError(f"{archive} contains no train/<channel>.npy or test/<channel>.npy files")
    replace_arrays(staging, root)
    logger.info("unpacked %d arrays from %s", len(members), archive)


def copy_arrays(source_root: Path, root: Path) -> None:
    """Copy the train/ and test/ arrays of a local SMAP/MSL copy into ``root``."""
    if not (source_root / "test").is_dir():
        raise DatasetError(
            f"{source_root} contains neither data.zip nor train/ and test/ folders of .npy arrays; "
            "point --from-dir at a folder whose smap_msl/ has one of them"
        )

    staging = root / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    copied = 0
    for split in ("train", "test"):
        for path in sorted((source_root / split).glob("*.npy")):
            if not ARRAY_MEMBER.search(f"{split}/{path.name}"):
                logger.warning("skipping %s: the channel name is not a plain file name", path)
                continue
            read_npy_header(path)
            destination = staging / split / path.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            copied += 1
    replace_arrays(staging, root)
    # NOTE: no digests exist for the single arrays, only for data.zip, so a copied array is
    # checked for a valid .npy header and size but not for its content.
    logger.warning("copied %d arrays from %s without a digest check (only their .npy structure is validated)", copied, source_root)


def replace_arrays(staging: Path, root: Path) -> None:
    for split in ("train", "test"):
        target = root / split
        shutil.rmtree(target, ignore_errors=True)
        if (staging / split).is_dir():
            os.replace(staging / split, target)
    shutil.rmtree(staging, ignore_errors=True)


# Validation ----------------------------------------------------------------------------------


def validate_nab(root: Path) -> None:
    """Raise DatasetError unless ``root`` contains readable NAB files with a label entry each."""
    problems: list[str] = []
    csv_files = sorted((root / "data").glob("*/*.csv"))
    if not csv_files:
        raise DatasetError(f"{root / 'data'} contains no <category>/<name>.csv files")

    windows_path = root / "labels" / "combined_windows.json"
    windows = read_json_object(windows_path, problems)
    for path in csv_files:
        problem = check_nab_csv(path)
        if problem:
            problems.append(problem)
        key = f"{path.parent.name}/{path.name}"
        if windows is not None and key not in windows:
            problems.append(f"{windows_path} has no entry {key!r}")

    points_path = root / "labels" / "combined_labels.json"
    if points_path.exists():
        read_json_object(points_path, problems)
    raise_problems(root, problems)


def check_nab_csv(path: Path) -> str | None:
    """Return a description of the first problem in a NAB CSV file, or None."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["timestamp", "value"]:
            return f"{path}: the header is {header}, expected ['timestamp', 'value']"
        rows = 0
        for row in reader:
            rows += 1
            line = reader.line_num
            if len(row) != 2 or not row[0].strip():
                return f"{path}, line {line}: expected a timestamp and a value, got {row}"
            try:
                float(row[1])
            except ValueError:
                return f"{path}, line {line}: the value {row[1]!r} is not a number"
    if rows == 0:
        return f"{path} has no data rows"
    return None


def read_json_object(path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        problems.append(f"{path} is missing")
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{path} is not valid JSON ({error})")
        return None
    if not isinstance(payload, dict):
        problems.append(f"{path} contains a JSON {type(payload).__name__}, expected an object")
        return None
    return payload


def validate_smap_msl(root: Path) -> None:
    """Raise DatasetError unless ``root`` contains valid SMAP/MSL arrays and label rows.

    A test array whose length differs from ``num_values``, or that has no label row, is
    logged as a warning rather than rejected, because only a subset of the 82 channels has
    been checked against the published label file.
    """
    problems: list[str] = []
    lengths = read_telemanom_lengths(root / "labeled_anomalies.csv", problems)

    shapes: dict[str, dict[str, tuple[int, ...]]] = {"train": {}, "test": {}}
    for split, found in shapes.items():
        for path in sorted((root / split).glob("*.npy")):
            try:
                found[path.stem] = read_npy_header(path)
            except DatasetError as error:
                problems.append(str(error))
    if not shapes["test"]:
        problems.append(f"{root / 'test'} contains no .npy arrays")

    for channel in sorted(set(shapes["train"]) ^ set(shapes["test"])):
        side = "train" if channel in shapes["train"] else "test"
        problems.append(f"channel {channel} has an array in {side}/ only; every channel needs both")
    for channel in sorted(set(shapes["train"]) & set(shapes["test"])):
        train_shape, test_shape = shapes["train"][channel], shapes["test"][channel]
        if train_shape[1:] != test_shape[1:]:
            problems.append(f"channel {channel}: train shape {train_shape} and test shape {test_shape} differ in features")

    if lengths is not None:
        for channel, shape in sorted(shapes["test"].items()):
            if channel not in lengths:
                logger.warning("%s has no row for test channel %s, so it has no labels", root / "labeled_anomalies.csv", channel)
            elif lengths[channel] != shape[0]:
                logger.warning(
                    "channel %s: labeled_anomalies.csv gives num_values %d but test/%s.npy has %d rows",
                    channel,
                    lengths[channel],
                    channel,
                    shape[0],
                )
    raise_problems(root, problems)


def read_telemanom_lengths(path: Path, problems: list[str]) -> dict[str, int] | None:
    """Return ``num_values`` by ``chan_id`` from labeled_anomalies.csv, recording problems."""
    if not path.is_file():
        problems.append(f"{path} is missing")
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        required = ["chan_id", "anomaly_sequences", "num_values"]
        missing = [name for name in required if name not in (reader.fieldnames or [])]
        if missing:
            problems.append(f"{path} has no column(s) {missing}")
            return None

        lengths: dict[str, int] = {}
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            try:
                lengths[row["chan_id"].strip()] = int(row["num_values"])
                sequences = ast.literal_eval(row["anomaly_sequences"])
            except (ValueError, SyntaxError):
                problems.append(f"{where}: num_values or anomaly_sequences is malformed")
                continue
            if not isinstance(sequences, list) or not all(
                isinstance(pair, list) and len(pair) == 2 for pair in sequences
            ):
                problems.append(f"{where}: anomaly_sequences is not a list of [start, end] pairs")
    return lengths


def read_npy_header(path: Path) -> tuple[int, ...]:
    """Return the shape of a 2-D float .npy array, checking its header and file size.

    Raises DatasetError when the file is not such an array or is truncated.
    """
    with open(path, "rb") as handle:
        magic = handle.read(8)
        if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
            raise DatasetError(f"{path} is not a .npy file")
        major = magic[6]
        if major == 1:
            size_field = handle.read(2)
            header_size = struct.unpack("<H", size_field)[0] if len(size_field) == 2 else -1
        elif major in (2, 3):
            size_field = handle.read(4)
            header_size = struct.unpack("<I", size_field)[0] if len(size_field) == 4 else -1
        else:
            raise DatasetError(f"{path} has the unknown .npy format version {major}")
        header_bytes = handle.read(max(header_size, 0))
        data_offset = handle.tell()

    try:
        header = ast.literal_eval(header_bytes.decode("utf-8" if major == 3 else "latin1"))
        descr, shape = header["descr"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError, UnicodeDecodeError):
        raise DatasetError(f"{path} has an unreadable .npy header") from None

    dtype = re.fullmatch(r"[<>|=]?f(\d+)", descr) if isinstance(descr, str) else None
    if dtype is None:
        raise DatasetError(f"{path} has dtype {descr!r}; SMAP/MSL arrays are floating point")
    if len(shape) != 2:
        raise DatasetError(f"{path} has shape {shape}; SMAP/MSL arrays have shape (time, features)")

    expected_size = data_offset + math.prod(shape) * int(dtype.group(1))
    actual_size = path.stat().st_size
    if actual_size != expected_size:
        raise DatasetError(
            f"{path} has {actual_size} bytes but its header (shape {shape}, dtype {descr}) needs "
            f"{expected_size}; the file is truncated or corrupt, so fetch it again"
        )
    return shape


def raise_problems(root: Path, problems: list[str]) -> None:
    if not problems:
        return
    listed = "\n".join(f"  - {problem}" for problem in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    suffix = f"\n  ... and {more} more" if more > 0 else ""
    raise DatasetError(f"{root} failed validation with {len(problems)} problem(s):\n{listed}{suffix}")


# Command line --------------------------------------------------------------------------------


def print_hashes(datasets: Iterable[str], source: UrlSource | DirectorySource, write: Callable[[str], None]) -> None:
    """Print ``"key": "sha256",`` for every file of ``datasets``, ready to paste into SHA256."""
    with tempfile.TemporaryDirectory(prefix="fetch-datasets-") as scratch_name:
        scratch = Path(scratch_name)
        for key in SHA256:
            if key.split("/", 1)[0] not in datasets:
                continue
            path = source.obtain(key, scratch)
            if path is None:
                logger.warning("%s is missing; no digest printed", source.describe(key))
                continue
            write(f'    "{key}": "{sha256_of(path)}",')
            if path.parent == scratch:
                path.unlink()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Download the NAB and SMAP/MSL benchmarks and check their SHA-256 digests.",
        epilog="Exit status: 0 on success, 1 on a failed download, digest check or validation.",
    )
    parser.add_argument(
        "--dataset",
        choices=[*DATASETS, "all"],
        default="all",
        help="the dataset to install (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="the folder to install into (default: data/ in the repository root)",
    )
    parser.add_argument(
        "--from-dir",
        type=Path,
        metavar="DIR",
        help="install from a local copy with the same layout as --out instead of downloading; "
        "smap_msl/ may contain data.zip in place of train/ and test/",
    )
    parser.add_argument(
        "--print-hashes",
        action="store_true",
        help="download every file (or read it from --from-dir) and print its SHA-256 in the form of the "
        "SHA256 table, without checking or installing anything",
    )
    parser.add_argument(
        "--allow-unverified",
        action="store_true",
        help="accept files without a digest in the SHA256 table and, with --from-dir, local files that "
        "differ from the pinned upstream version; a download that differs from its digest is always rejected",
    )
    parser.add_argument("--force", action="store_true", help="fetch every file again even when it is installed")
    parser.add_argument("--verbose", action="store_true", help="also log the files that are already installed and skipped")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    datasets = DATASETS if args.dataset == "all" else (args.dataset,)

    source: UrlSource | DirectorySource = UrlSource()
    if args.from_dir is not None:
        if not args.from_dir.is_dir():
            logger.error("--from-dir %s is not a folder", args.from_dir)
            return 1
        source = DirectorySource(args.from_dir)

    try:
        if args.print_hashes:
            print_hashes(datasets, source, print)
            return 0
        if args.from_dir is not None and args.from_dir.resolve() == args.out.resolve():
            raise DatasetError(f"--from-dir and --out are both {args.out}; install into another folder")
        for dataset in datasets:
            install(dataset, args.out, source, allow_unverified=args.allow_unverified, force=args.force)
    except DatasetError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

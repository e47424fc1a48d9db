"""HMAC-SHA256 request signatures: signing, verification, stale timestamps and replays."""

import hashlib
import hmac

import pytest

from streamad.alerts.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SeenSignatures,
    SignatureError,
    sign,
    verify,
)

SECRET = "s3cret-for-tests"
BODY = b'{"alert_id": "abc", "sequence": 1}'
NOW = 1_700_000_000


def test_signature_round_trip():
    headers = sign(BODY, SECRET, timestamp=NOW)
    assert verify(BODY, headers, SECRET, now=NOW + 5) == NOW


def test_signature_matches_documented_formula():
    headers = sign(BODY, SECRET, timestamp=NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert headers[TIMESTAMP_HEADER] == str(NOW)


def test_verify_reads_headers_case_insensitively():
    headers = {name.lower(): value for name, value in sign(BODY, SECRET, timestamp=NOW).items()}
    assert verify(BODY, headers, SECRET, now=NOW) == NOW


def test_verify_rejects_tampered_body():
    headers = sign(BODY, SECRET, timestamp=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY.replace(b"1", b"2"), headers, SECRET, now=NOW)


def test_verify_rejects_other_secret():
    headers = sign(BODY, SECRET, timestamp=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, headers, "another-secret", now=NOW)


def test_verify_rejects_changed_timestamp():
    headers = sign(BODY, SECRET, timestamp=NOW)
    headers[TIMESTAMP_HEADER] = str(NOW + 1)
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, headers, SECRET, now=NOW)


@pytest.mark.parametrize("offset", [-301, 301, -3600])
def test_verify_rejects_timestamp_outside_tolerance(offset):
    headers = sign(BODY, SECRET, timestamp=NOW + offset)
    with pytest.raises(SignatureError, match="outside the tolerance of 300 s"):
        verify(BODY, headers, SECRET, now=NOW)


def test_verify_accepts_timestamp_at_tolerance():
    headers = sign(BODY, SECRET, timestamp=NOW - 300)
    assert verify(BODY, headers, SECRET, now=NOW) == NOW - 300


def test_verify_rejects_replay():
    seen = SeenSignatures()
    headers = sign(BODY, SECRET, timestamp=NOW)
    verify(BODY, headers, SECRET, seen=seen, now=NOW)
    with pytest.raises(SignatureError, match="replay"):
        verify(BODY, headers, SECRET, seen=seen, now=NOW + 1)


def test_verify_accepts_resigned_retry():
    seen = SeenSignatures()
    verify(BODY, sign(BODY, SECRET, timestamp=NOW), SECRET, seen=seen, now=NOW)
    assert verify(BODY, sign(BODY, SECRET, timestamp=NOW + 2), SECRET, seen=seen, now=NOW + 2) == NOW + 2


def test_bad_signature_is_not_remembered():
    seen = SeenSignatures()
    headers = sign(BODY, SECRET, timestamp=NOW)
    with pytest.raises(SignatureError):
        verify(b"tampered", headers, SECRET, seen=seen, now=NOW)
    assert verify(BODY, headers, SECRET, seen=seen, now=NOW) == NOW


def test_seen_signatures_forget_old_entries():
    seen = SeenSignatures(max_age_s=10)
    assert seen.add("a", now=0)
    assert not seen.add("a", now=5)
    assert seen.add("a", now=20)


def test_seen_signatures_bounded():
    seen = SeenSignatures(max_entries=2)
    for name in ("a", "b", "c"):
        assert seen.add(name, now=0)
    assert seen.add("a", now=0)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing"),
        ({TIMESTAMP_HEADER: str(NOW)}, "missing"),
        ({TIMESTAMP_HEADER: "yesterday", SIGNATURE_HEADER: "sha256=00"}, "expected unix seconds"),
        ({TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: "md5=00"}, "malformed"),
        ({TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: "sha256="}, "malformed"),
    ],
)
def test_verify_rejects_malformed_headers(headers, message):
    with pytest.raises(SignatureError, match=message):
        verify(BODY, headers, SECRET, now=NOW)


def test_sign_rejects_empty_secret():
    with pytest.raises(ValueError, match="secret is empty"):
        sign(BODY, "")


@pytest.mark.parametrize(("offset", "words"), [(-1000, "1000 s behind the receiver's clock"), (999, "999 s ahead of the receiver's clock")])
def test_verify_names_direction_of_clock_skew(offset, words):
    headers = sign(BODY, SECRET, timestamp=NOW + offset)
    with pytest.raises(SignatureError, match=words):
        verify(BODY, headers, SECRET, now=NOW)


@pytest.mark.parametrize("text", [f" {NOW}", f"+{NOW}", f"{NOW} ", f"{NOW:_}", f"-{NOW}", "١٢٣"])
def test_verify_rejects_timestamp_that_is_not_digits(text):
    headers = sign(BODY, SECRET, timestamp=NOW)
    headers[TIMESTAMP_HEADER] = text
    with pytest.raises(SignatureError, match="expected unix seconds as digits only"):
        verify(BODY, headers, SECRET, now=NOW)

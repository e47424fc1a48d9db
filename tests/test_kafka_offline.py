"""Tests of the Kafka connector parts that need no broker: source settings and dead-letter documents."""

from __future__ import annotations

import base64

import pytest

from connectors.kafka import KafkaSourceConfig, SourceMessage, dead_letter_document
from streamad.records import InvalidRecord, Record

BASE = {"bootstrap_servers": "127.0.0.1:9092", "topics": ["t"], "group_id": "g"}


def test_config_defaults():
    config = KafkaSourceConfig(**BASE)

    assert config.topics == ("t",)
    assert config.enable_auto_commit is False
    assert config.auto_offset_reset == "earliest"
    assert config.max_poll_records == 500
    assert config.heartbeat_interval_ms * 3 <= config.session_timeout_ms


def test_config_single_topic_string():
    assert KafkaSourceConfig(**{**BASE, "topics": "t"}).topics == ("t",)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"enable_auto_commit": True}, "enable_auto_commit"),
        ({"session_timeout_ms": 3000, "heartbeat_interval_ms": 3000}, "heartbeat_interval_ms"),
        ({"topics": []}, "topics"),
        ({"topics": ["t", ""]}, "topics"),
        ({"group_id": ""}, "group_id"),
        ({"auto_offset_reset": "smallest"}, "auto_offset_reset"),
        ({"max_poll_records": 0}, "max_poll_records"),
        ({"poll_timeout_ms": True}, "poll_timeout_ms"),
        ({"request_timeout_ms": 500}, "request_timeout_ms"),
    ],
)
def test_config_rejects(overrides, words):
    with pytest.raises(ValueError, match=words):
        KafkaSourceConfig(**{**BASE, **overrides})


def test_dead_letter_from_message():
    error = InvalidRecord("invalid_json", "The payload is not valid JSON.")
    message = SourceMessage("metrics", 2, 41, b"pump", b"{oops", None, error)

    document = dead_letter_document(message)

    assert document == {
        "topic": "metrics",
        "partition": 2,
        "offset": 41,
        "reason": "invalid_json",
        "message": "The payload is not valid JSON.",
        "raw_base64": base64.b64encode(b"{oops").decode("ascii"),
        "key_base64": base64.b64encode(b"pump").decode("ascii"),
    }


def test_dead_letter_from_mapping():
    entry = {"raw": b"\xff", "topic": "t", "partition": 0, "offset": 7, "reason": "invalid_utf8", "message": "m"}

    document = dead_letter_document(entry)

    assert base64.b64decode(document["raw_base64"]) == b"\xff"
    assert document["key_base64"] is None
    assert document["offset"] == 7


def test_dead_letter_from_encoded_mapping():
    raw_base64 = base64.b64encode(b"{bad").decode("ascii")
    entry = {"raw_base64": raw_base64, "topic": "t", "partition": 1, "offset": 3, "reason": "r", "message": "m"}

    document = dead_letter_document(entry)

    assert document["raw_base64"] == raw_base64
    assert document["key_base64"] is None


def test_dead_letter_rejects_bad_base64():
    entry = {"raw_base64": "not base64!", "topic": "t", "partition": 1, "offset": 3, "reason": "r", "message": "m"}

    with pytest.raises(ValueError, match="raw_base64"):
        dead_letter_document(entry)


def test_dead_letter_rejects_valid_message():
    message = SourceMessage("t", 0, 1, None, b"{}", Record("s", 0, [1.0]), None)

    with pytest.raises(ValueError, match="decoded without error"):
        dead_letter_document(message)


def test_dead_letter_rejects_incomplete_entry():
    with pytest.raises(ValueError, match="reason, message"):
        dead_letter_document({"raw": b"x", "topic": "t", "partition": 0, "offset": 1})
    with pytest.raises(ValueError, match="raw or raw_base64"):
        dead_letter_document({"topic": "t", "partition": 0, "offset": 1, "reason": "r", "message": "m"})
    with pytest.raises(TypeError, match="original bytes"):
        dead_letter_document({"raw": "x", "topic": "t", "partition": 0, "offset": 1, "reason": "r", "message": "m"})

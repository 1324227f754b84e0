"""What the stages produce: keys, values and headers (no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson

from exnet.contracts import headers as H
from exnet.contracts.registry import load_registry
from exnet.contracts.topics import Topic
from exnet.contracts.validation import Accepted, Origin, Rejected, Validator
from exnet.settings import DEMO_REGISTRY
from exnet.streams.messages import (
    accepted_message,
    conflict_message,
    deadletter_message,
    validated_message,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
EVENT = {
    "schema": "assessment/1",
    "event_id": "A6E2F0C4-1111-4222-8333-444455556666",
    "occurred_at": "2026-05-01T10:00:00+02:00",
    "node_id": "N01",
    "site_id": "N01-S01",
    "participant_id": "P-0123456789",
    "instrument": "PHQ9",
    "score": 12,
    "week": 4,
}


def _accepted() -> tuple[Accepted, bytes]:
    raw = orjson.dumps(EVENT)
    outcome = Validator(load_registry(DEMO_REGISTRY)).validate_message(
        raw, b"P-0123456789", Origin("exnet.assessment", 3, 77), NOW
    )
    assert isinstance(outcome, Accepted)
    return outcome, raw


def test_validated_message_is_keyed_by_the_normalised_event_id_and_carries_its_origin() -> None:
    accepted, raw = _accepted()
    message = validated_message(accepted, raw, 1_700_000_000_000)
    headers = dict(message.headers)
    assert message.topic is Topic.VALIDATED
    assert message.key == b"a6e2f0c4-1111-4222-8333-444455556666"
    assert orjson.loads(message.value)["occurred_at"] == "2026-05-01T08:00:00Z"
    assert headers[H.SOURCE_TOPIC] == b"exnet.assessment"
    assert (headers[H.SOURCE_PARTITION], headers[H.SOURCE_OFFSET]) == (b"3", b"77")
    assert headers[H.ORIGINAL] == raw and headers[H.EVENT_TYPE] == b"assessment"
    assert headers[H.FINGERPRINT] == accepted.fingerprint().encode()
    forwarded = accepted_message(message.key or b"", message.value, headers)
    assert forwarded.topic is Topic.ACCEPTED
    assert H.ORIGINAL not in dict(forwarded.headers)  # the sink does not need the bytes
    assert dict(forwarded.headers)[H.SOURCE_TIMESTAMP] == b"1700000000000"


def test_deadletter_message_has_the_spec_headers_and_original_bytes() -> None:
    raw = orjson.dumps({**EVENT, "score": 99})
    outcome = Validator(None).validate_message(
        raw, b"P-0123456789", Origin("exnet.assessment", 1, 5), NOW
    )
    assert isinstance(outcome, Rejected)
    message = deadletter_message(outcome, raw, b"P-0123456789", NOW, None)
    headers = dict(message.headers)
    assert message.topic is Topic.DEADLETTER and message.value == raw
    assert headers[H.REASON] == b"invalid_field"
    assert json.loads(headers[H.DETAIL])["errors"][0]["path"] == "score"
    assert headers[H.SOURCE_OFFSET] == b"5"
    assert headers[H.EVENT_ID] == b"a6e2f0c4-1111-4222-8333-444455556666"


def test_conflict_message_points_at_the_first_accepted_copy() -> None:
    accepted, raw = _accepted()
    validated = validated_message(accepted, raw, None)
    message = conflict_message(
        validated.key or b"",
        validated.value,
        dict(validated.headers),
        ("exnet.assessment", 0, 1),
        NOW,
    )
    headers = dict(message.headers)
    detail = json.loads(headers[H.DETAIL])
    assert message.value == raw and message.key == b"P-0123456789"
    assert detail["reason"] == "conflicting_duplicate"
    assert "partition 0 offset 1" in detail["errors"][0]["message"]

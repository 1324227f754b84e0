"""What the stages produce: keys, values and headers (no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson

from contracts import headers as H
from contracts.registry import DEMO_REGISTRY, load_registry
from contracts.topics import Topic
from contracts.validation import Accepted, Origin, Rejected, Validator
from contracts.wire import (
    conflict_message,
    deadletter_message,
    pack_accepted,
    pack_validated,
    unpack_accepted,
    unpack_validated,
    validated_record,
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


def test_validated_records_carry_the_normalised_event_its_origin_and_the_original() -> None:
    accepted, raw = _accepted()
    record = validated_record(accepted, raw, 1_700_000_000_000)
    assert record.event_id == "a6e2f0c4-1111-4222-8333-444455556666"
    assert orjson.loads(record.event)["occurred_at"] == "2026-05-01T08:00:00Z"
    assert record.source == Origin("exnet.assessment", 3, 77)
    assert record.original == raw.decode() and record.event_type == "assessment"
    assert record.fingerprint == accepted.fingerprint()
    # packed for the internal hop and unpacked unchanged, in order
    other = validated_record(accepted, raw.replace(b"12", b"12 "), None)
    assert unpack_validated(pack_validated([record, other])) == [record, other]


def test_accepted_records_reach_the_sink_as_parsed_events_with_their_origin() -> None:
    accepted, raw = _accepted()
    record = validated_record(accepted, raw, 1_700_000_000_000)
    (onward,) = unpack_accepted(pack_accepted([record]))
    assert onward.event == orjson.loads(record.event)
    assert onward.source == record.source and onward.timestamp_ms == 1_700_000_000_000
    assert onward.event_type == "assessment"


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
    record = validated_record(accepted, raw, None)
    message = conflict_message(record, Origin("exnet.assessment", 0, 1), NOW)
    headers = dict(message.headers)
    detail = json.loads(headers[H.DETAIL])
    assert message.value == raw and message.key == b"P-0123456789"
    assert detail["reason"] == "conflicting_duplicate"
    assert "partition 0 offset 1" in detail["errors"][0]["message"]
    assert headers[H.SOURCE_OFFSET] == b"77"  # the conflicting message's own origin

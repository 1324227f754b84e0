"""The two stream stages over a batch, without a broker: every message gets one outcome."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from contracts import headers as H
from contracts.registry import DEMO_REGISTRY, load_registry
from contracts.validation import Origin, Validator
from contracts.wire import Received, read_validated, validated_partition
from streams.dedup import DeduplicateStage
from streams.validate import ValidateStage

NOW = datetime(2026, 6, 1, tzinfo=UTC)
EVENT = {
    "schema": "assessment/1",
    "event_id": "a6e2f0c4-1111-4222-8333-444455556666",
    "occurred_at": "2026-05-01T10:00:00+02:00",
    "node_id": "N01",
    "site_id": "N01-S01",
    "participant_id": "P-0123456789",
    "instrument": "PHQ9",
    "score": 12,
    "week": 4,
}


@dataclass
class _Record:
    """What aiokafka hands a batch: the fields the stages read."""

    offset: int
    key: bytes | None
    value: bytes
    timestamp: int | None = 1_700_000_000_000
    headers: tuple[tuple[str, bytes], ...] = ()


def test_validate_sends_valid_events_by_event_id_and_rejections_to_the_dead_letter_topic() -> None:
    good = _Record(10, b"P-0123456789", orjson.dumps(EVENT))
    bad = _Record(11, b"P-0123456789", orjson.dumps({**EVENT, "score": 99}))
    stage = ValidateStage(Validator(load_registry(DEMO_REGISTRY)), "v", "dl", 6)
    result = stage("exnet.assessment", 3, [good, bad], NOW)
    assert result.received == 2 and dict(result.rejected) == {"invalid_field": 1}
    (topic, partition, key, value, headers, _), dead = result.outgoing
    assert (topic, key) == ("v", b"a6e2f0c4-1111-4222-8333-444455556666")
    assert key is not None and value is not None
    assert partition == validated_partition(key, 6)
    record = read_validated(key, value, headers)
    assert record.route.origin == Origin("exnet.assessment", 3, 10)
    assert record.original == good.value and record.route.timestamp_ms == good.timestamp
    assert dead[0] == "dl" and dead[1] is None  # Kafka's partitioner, keyed by the site's key
    assert dead[2] == b"P-0123456789" and dead[3] == bad.value
    named = dict(dead[4])
    assert named[H.REASON] == b"invalid_field" and named[H.SOURCE_OFFSET] == b"11"


def _validated(offset: int, event: dict[str, object], topic: str = "exnet.assessment") -> Received:
    stage = ValidateStage(Validator(load_registry(DEMO_REGISTRY)), "v", "dl", 6)
    raw = orjson.dumps(event)
    result = stage(topic, 0, [_Record(offset, str(event["participant_id"]).encode(), raw)], NOW)
    (_, _, key, value, headers, _) = result.outgoing[0]
    assert key is not None and value is not None
    return read_validated(key, value, headers)


def test_deduplicate_passes_on_new_and_replayed_events_drops_duplicates_rejects_conflicts() -> None:
    stage = DeduplicateStage("acc", "dl")
    table: dict[bytes, bytes] = {}
    first = _validated(1, EVENT)
    replay = _validated(1, EVENT)  # the same source message, read again after a crash
    duplicate = _validated(2, {**EVENT, "occurred_at": "2026-05-01T08:00:00Z"})  # same content
    conflict = _validated(3, {**EVENT, "score": 13})
    result = stage([first, replay, duplicate, conflict], table, NOW)
    assert dict(result.accepted) == {"assessment": 2}
    assert dict(result.duplicates) == {"assessment": 1}
    assert result.conflicts == {("N01", "N01-S01"): 1}
    topics = [message[0] for message in result.outgoing]
    assert topics == ["acc", "acc", "dl"]
    assert result.outgoing[0][2] == b"P-0123456789"  # keyed by participant onward
    assert len(table) == 1
    assert result.per_site == {("N01", "N01-S01"): 2}
    assert result.newest[("N01", "N01-S01")] == datetime(2026, 5, 1, 8, tzinfo=UTC).timestamp()
    dead = dict(result.outgoing[2][4])
    assert dead[H.REASON] == b"conflicting_duplicate" and dead[H.SOURCE_OFFSET] == b"3"

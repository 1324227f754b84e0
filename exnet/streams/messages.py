"""Pure builders of the messages the stream stages produce (no I/O).

Internal topics carry the site's origin in headers all the way to the sink,
so that every row and every rejection can name the original message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson

from exnet.contracts import headers as H
from exnet.contracts.reasons import Reason
from exnet.contracts.topics import Topic
from exnet.contracts.validation import Accepted, FieldIssue, Origin, Rejected

__all__ = [
    "OutMessage",
    "accepted_message",
    "conflict_message",
    "deadletter_message",
    "validated_message",
]

HeaderList = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to produce: logical topic, key, value, headers."""

    topic: Topic
    key: bytes | None
    value: bytes
    headers: HeaderList


def _source_headers(
    topic: str, partition: int, offset: int, timestamp_ms: int | None
) -> HeaderList:
    headers = [
        (H.SOURCE_TOPIC, topic.encode()),
        (H.SOURCE_PARTITION, str(partition).encode()),
        (H.SOURCE_OFFSET, str(offset).encode()),
    ]
    if timestamp_ms is not None:
        headers.append((H.SOURCE_TIMESTAMP, str(timestamp_ms).encode()))
    return headers


def validated_message(accepted: Accepted, original: bytes, timestamp_ms: int | None) -> OutMessage:
    """Stage 1 -> 2: the validated event, keyed by event_id, with what dedup needs."""
    origin = accepted.origin
    assert origin is not None, "stream messages always have an origin"  # noqa: S101  # invariant
    canonical = accepted.canonical_json()
    headers = _source_headers(origin.topic, origin.partition, origin.offset, timestamp_ms)
    headers += [
        (H.EVENT_TYPE, accepted.event_type.encode()),
        (H.FINGERPRINT, accepted.fingerprint().encode()),
        (H.ORIGINAL, original),
    ]
    return OutMessage(Topic.VALIDATED, accepted.event_id.encode(), canonical, headers)


def deadletter_message(
    rejected: Rejected,
    original: bytes | None,
    key: bytes | None,
    rejected_at: datetime,
    timestamp_ms: int | None,
) -> OutMessage:
    """A rejection: the original bytes, with SPEC §2's headers."""
    origin = rejected.origin
    assert origin is not None, "stream messages always have an origin"  # noqa: S101  # invariant
    headers = [
        (H.REASON, rejected.reason.value.encode()),
        (H.DETAIL, rejected.detail_json().encode()),
        *_source_headers(origin.topic, origin.partition, origin.offset, timestamp_ms),
        (H.REJECTED_AT, rejected_at.isoformat().encode()),
    ]
    if rejected.event_id is not None:
        headers.append((H.EVENT_ID, rejected.event_id.encode()))
    return OutMessage(Topic.DEADLETTER, key, original or b"", headers)


def accepted_message(key: bytes, value: bytes, headers: Mapping[str, bytes]) -> OutMessage:
    """Stage 2 -> sink: a deduplicated event, its origin and type, without the original bytes."""
    kept = [
        (name, headers[name])
        for name in (H.EVENT_TYPE, H.SOURCE_TOPIC, H.SOURCE_PARTITION, H.SOURCE_OFFSET)
    ]
    if H.SOURCE_TIMESTAMP in headers:
        kept.append((H.SOURCE_TIMESTAMP, headers[H.SOURCE_TIMESTAMP]))
    return OutMessage(Topic.ACCEPTED, key, value, kept)


def conflict_message(
    key: bytes,
    value: bytes,
    headers: Mapping[str, bytes],
    first: tuple[str, int, int],
    rejected_at: datetime,
) -> OutMessage:
    """Stage 2 -> dead letter: same event_id as an accepted event, other content."""
    event_id = key.decode()
    topic, partition, offset = first
    issue = FieldIssue(
        "event_id",
        f"event {event_id} was already accepted with other content "
        f"(from {topic} partition {partition} offset {offset}); send a new event_id",
        "conflicting_duplicate",
    )
    origin_topic = headers[H.SOURCE_TOPIC].decode()
    rejected = Rejected(
        Reason.CONFLICTING_DUPLICATE,
        (issue,),
        Origin(origin_topic, int(headers[H.SOURCE_PARTITION]), int(headers[H.SOURCE_OFFSET])),
        event_id,
    )
    participant = orjson.loads(value).get("participant_id", "")
    timestamp = headers.get(H.SOURCE_TIMESTAMP)
    return deadletter_message(
        rejected,
        headers[H.ORIGINAL],
        participant.encode(),
        rejected_at,
        int(timestamp) if timestamp else None,
    )

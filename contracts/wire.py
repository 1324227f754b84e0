"""Pure builders and readers of the messages the stream stages produce (no I/O).

The internal topics (``exnet.validated``, ``exnet.accepted``) carry *packed*
messages: one Kafka message holds the records of one stage batch bound for
one partition. Faust spends far more on each message it consumes (tasks, flow
control, acks) than the stages spend on an event, so packing the internal
hops leaves that cost on the site-facing input alone. Every record carries its
site origin (topic, partition, offset, Kafka timestamp) all the way to the
sink, so that every row and every rejection names the original message.

The dead-letter topic is not packed: one message per rejected original, with
its bytes and SPEC §2's headers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from contracts import headers as H
from contracts.reasons import Reason
from contracts.topics import Topic
from contracts.validation import Accepted, FieldIssue, Origin, Rejected

__all__ = [
    "PACKED_FORMAT",
    "AcceptedRecord",
    "OutMessage",
    "ValidatedRecord",
    "conflict_message",
    "deadletter_message",
    "pack_accepted",
    "pack_validated",
    "packed_headers",
    "source_origin",
    "unpack_accepted",
    "unpack_validated",
    "validated_record",
]

HeaderList = list[tuple[str, bytes]]

#: Header value naming the packing of an internal message (``exnet-format``).
PACKED_FORMAT = b"packed/1"
FORMAT_HEADER = "exnet-format"


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to produce: logical topic, key, value, headers (partition from the key)."""

    topic: Topic
    key: bytes | None
    value: bytes
    headers: HeaderList


@dataclass(frozen=True, slots=True)
class ValidatedRecord:
    """Stage 1 -> 2: a validated event with what deduplication needs."""

    event_id: str
    event_type: str
    fingerprint: str
    source: Origin
    timestamp_ms: int | None
    #: The canonical JSON of the event (UTC times, defaults filled in).
    event: str
    #: The site's original message (needed if it proves a conflicting duplicate).
    original: str


@dataclass(frozen=True, slots=True)
class AcceptedRecord:
    """Stage 2 -> sink: a deduplicated event and its origin."""

    event_type: str
    source: Origin
    timestamp_ms: int | None
    event: dict[str, Any]


def validated_record(
    accepted: Accepted, original: bytes, timestamp_ms: int | None
) -> ValidatedRecord:
    origin = accepted.origin
    assert origin is not None, "stream messages always have an origin"  # noqa: S101  # invariant
    canonical = accepted.canonical_json()
    return ValidatedRecord(
        accepted.event_id,
        accepted.event_type,
        accepted.fingerprint(),
        origin,
        timestamp_ms,
        canonical.decode(),
        # It parsed as JSON, so it is UTF-8.
        original.decode(),
    )


def _origin_fields(origin: Origin) -> list[Any]:
    return [origin.topic, origin.partition, origin.offset]


def pack_validated(records: Sequence[ValidatedRecord]) -> bytes:
    return orjson.dumps(
        [
            [
                r.event_id,
                r.event_type,
                r.fingerprint,
                *_origin_fields(r.source),
                r.timestamp_ms,
                r.event,
                r.original,
            ]
            for r in records
        ]
    )


def unpack_validated(value: bytes) -> list[ValidatedRecord]:
    return [
        ValidatedRecord(
            event_id,
            event_type,
            fingerprint,
            Origin(topic, partition, offset),
            timestamp_ms,
            event,
            original,
        )
        for (
            event_id,
            event_type,
            fingerprint,
            topic,
            partition,
            offset,
            timestamp_ms,
            event,
            original,
        ) in orjson.loads(value)
    ]


def pack_accepted(records: Sequence[ValidatedRecord]) -> bytes:
    """The sink's input: the canonical events embedded as JSON (parsed once, by the sink)."""
    return orjson.dumps(
        [
            [r.event_type, *_origin_fields(r.source), r.timestamp_ms, orjson.Fragment(r.event)]
            for r in records
        ]
    )


def unpack_accepted(value: bytes) -> list[AcceptedRecord]:
    return [
        AcceptedRecord(event_type, Origin(topic, partition, offset), timestamp_ms, event)
        for event_type, topic, partition, offset, timestamp_ms, event in orjson.loads(value)
    ]


def packed_headers() -> HeaderList:
    return [(FORMAT_HEADER, PACKED_FORMAT)]


def _source_headers(origin: Origin, timestamp_ms: int | None) -> HeaderList:
    headers = [
        (H.SOURCE_TOPIC, origin.topic.encode()),
        (H.SOURCE_PARTITION, str(origin.partition).encode()),
        (H.SOURCE_OFFSET, str(origin.offset).encode()),
    ]
    if timestamp_ms is not None:
        headers.append((H.SOURCE_TIMESTAMP, str(timestamp_ms).encode()))
    return headers


def source_origin(headers: Mapping[str, bytes]) -> Origin:
    """The site's original message that a dead-letter message's headers name."""
    return Origin(
        headers[H.SOURCE_TOPIC].decode(),
        int(headers[H.SOURCE_PARTITION]),
        int(headers[H.SOURCE_OFFSET]),
    )


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
        *_source_headers(origin, timestamp_ms),
        (H.REJECTED_AT, rejected_at.isoformat().encode()),
    ]
    if rejected.event_id is not None:
        headers.append((H.EVENT_ID, rejected.event_id.encode()))
    return OutMessage(Topic.DEADLETTER, key, original or b"", headers)


def conflict_message(record: ValidatedRecord, first: Origin, rejected_at: datetime) -> OutMessage:
    """Stage 2 -> dead letter: same event_id as an accepted event, other content."""
    issue = FieldIssue(
        "event_id",
        f"event {record.event_id} was already accepted with other content "
        f"(from {first.topic} partition {first.partition} offset {first.offset}); "
        "send a new event_id",
        "conflicting_duplicate",
    )
    rejected = Rejected(Reason.CONFLICTING_DUPLICATE, (issue,), record.source, record.event_id)
    participant = orjson.loads(record.event).get("participant_id", "")
    return deadletter_message(
        rejected, record.original.encode(), participant.encode(), rejected_at, record.timestamp_ms
    )

"""The messages the stages exchange through Kafka: builders and readers, no I/O.

Every stage imports this module and none owns it (like the event contracts).
One Kafka message per event on every topic:

``exnet.validated`` (stage 1 -> stage 2), keyed by ``event_id`` so that every
copy of an event meets in one partition:
    value: the event's canonical JSON (UTC times, defaults filled in, fixed order);
    headers: its type, content fingerprint, origin (the site's topic,
    partition, offset, Kafka timestamp) and the site's original bytes (needed
    if it proves a conflicting duplicate).

``exnet.accepted`` (stage 2 -> sinks and aggregation), keyed by ``participant_id``
so that all of a participant's events meet in one partition:
    value: the canonical JSON; headers: type and origin.

``exnet.deadletter``: the site's original bytes with SPEC §2's headers.

Every record carries its site origin all the way to the sink, so that every
row and every rejection names the original message.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from contracts import headers as H
from contracts.reasons import Reason
from contracts.topics import Topic
from contracts.validation import Accepted, FieldIssue, Origin, Rejected

__all__ = [
    "Headers",
    "OutMessage",
    "Outgoing",
    "Received",
    "accepted_message",
    "conflict_message",
    "deadletter_message",
    "read_accepted",
    "read_validated",
    "source_origin",
    "validated_message",
    "validated_partition",
]

#: Kafka headers as a list of (name, value) pairs, as clients take and give them.
Headers = Sequence[tuple[str, bytes]]
#: A message ready to produce: (physical topic, partition or None to let Kafka's
#: default partitioner hash the key, key, value, headers).
Outgoing = tuple[str, int | None, bytes | None, bytes, list[tuple[str, bytes]]]


def validated_partition(event_id: bytes, partitions: int) -> int:
    """The partition of ``exnet.validated`` (and of the dedup table) for an event_id.

    CRC-32 (in C) rather than Kafka's murmur2 (pure Python in the clients): only
    exnet's stages read this topic, and what matters is that every worker maps
    an event_id to the same partition.
    """
    return zlib.crc32(event_id) % partitions


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to produce: logical topic, key, value, headers (partition from the key)."""

    topic: Topic
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Received:
    """A validated or accepted event as the next stage reads it."""

    event_id: str
    event_type: str
    #: The canonical JSON of the event.
    event: bytes
    #: The site's message it came from, and that message's Kafka timestamp (ms).
    origin: Origin
    timestamp_ms: int | None
    #: Content digest of the canonical event (``exnet.validated`` only).
    fingerprint: str = ""
    #: The site's original bytes (``exnet.validated`` only).
    original: bytes = b""


def _origin_headers(origin: Origin, timestamp_ms: int | None) -> list[tuple[str, bytes]]:
    headers = [
        (H.SOURCE_TOPIC, origin.topic.encode()),
        (H.SOURCE_PARTITION, str(origin.partition).encode()),
        (H.SOURCE_OFFSET, str(origin.offset).encode()),
    ]
    if timestamp_ms is not None:
        headers.append((H.SOURCE_TIMESTAMP, str(timestamp_ms).encode()))
    return headers


def source_origin(headers: Mapping[str, bytes]) -> Origin:
    """The site's original message that a message's origin headers name."""
    return Origin(
        headers[H.SOURCE_TOPIC].decode(),
        int(headers[H.SOURCE_PARTITION]),
        int(headers[H.SOURCE_OFFSET]),
    )


def _timestamp(headers: Mapping[str, bytes]) -> int | None:
    value = headers.get(H.SOURCE_TIMESTAMP)
    return int(value) if value else None


def validated_message(
    accepted: Accepted, original: bytes, timestamp_ms: int | None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Stage 1 -> 2: (key, value, headers) of an event that passed validation."""
    origin = accepted.origin
    assert origin is not None, "stream messages always have an origin"  # noqa: S101  # invariant
    canonical = accepted.canonical_json()
    headers = [
        (H.EVENT_TYPE, accepted.event_type.encode()),
        (H.FINGERPRINT, accepted.fingerprint().encode()),
        *_origin_headers(origin, timestamp_ms),
        (H.ORIGINAL, original),
    ]
    return accepted.event_id.encode(), canonical, headers


def read_validated(key: bytes, value: bytes, headers: Headers) -> Received:
    """The record of :func:`validated_message` as stage 2 reads it."""
    named = dict(headers)
    return Received(
        key.decode(),
        named[H.EVENT_TYPE].decode(),
        value,
        source_origin(named),
        _timestamp(named),
        named[H.FINGERPRINT].decode(),
        named[H.ORIGINAL],
    )


def accepted_message(
    record: Received, participant_id: str
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Stage 2 -> sinks: (key, value, headers) of a deduplicated event."""
    headers = [
        (H.EVENT_TYPE, record.event_type.encode()),
        (H.EVENT_ID, record.event_id.encode()),
        *_origin_headers(record.origin, record.timestamp_ms),
    ]
    return participant_id.encode(), record.event, headers


def read_accepted(value: bytes, headers: Headers) -> Received:
    """The record of :func:`accepted_message` as a sink reads it."""
    named = dict(headers)
    return Received(
        named[H.EVENT_ID].decode(),
        named[H.EVENT_TYPE].decode(),
        value,
        source_origin(named),
        _timestamp(named),
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
        *_origin_headers(origin, timestamp_ms),
        (H.REJECTED_AT, rejected_at.isoformat().encode()),
    ]
    if rejected.event_id is not None:
        headers.append((H.EVENT_ID, rejected.event_id.encode()))
    return OutMessage(Topic.DEADLETTER, key, original or b"", headers)


def conflict_message(record: Received, first: Origin, rejected_at: datetime) -> OutMessage:
    """Stage 2 -> dead letter: same event_id as an accepted event, other content."""
    issue = FieldIssue(
        "event_id",
        f"event {record.event_id} was already accepted with other content "
        f"(from {first.topic} partition {first.partition} offset {first.offset}); "
        "send a new event_id",
        "conflicting_duplicate",
    )
    rejected = Rejected(Reason.CONFLICTING_DUPLICATE, (issue,), record.origin, record.event_id)
    participant = orjson.loads(record.event).get("participant_id", "")
    return deadletter_message(
        rejected, record.original, participant.encode(), rejected_at, record.timestamp_ms
    )

"""The messages the stages exchange through Kafka: builders and readers, no I/O.

Every stage imports this module and none owns it (like the event contracts).
One Kafka message per event on every topic; each carries the Kafka timestamp
of the site's original message (publish time, for the latency figures) in its
value or headers, never as its own timestamp (an old one would expose it to
early deletion by time-based retention):

``exnet.validated`` (validate -> deduplicate), keyed by ``event_id`` and
partitioned by :func:`validated_partition`, so that every copy of an event
meets in one partition:
    value: the event's canonical JSON (UTC times, defaults filled in, fixed order);
    headers: its content fingerprint, its origin (``<topic> <partition> <offset>
    <timestamp>`` of the site's message; ``None`` for no timestamp) and the site's
    original bytes (needed if it proves a conflicting duplicate).

``exnet.accepted`` (deduplicate -> sinks), keyed by ``participant_id`` so that
all of a participant's events meet in one partition:
    value: ``{"source": [topic, partition, offset, timestamp], "event": <canonical JSON>}``.
    No headers: the sinks read it with one JSON parse.

``exnet.deadletter``: the site's original bytes with SPEC §2's headers.

Every record carries its site origin all the way to the sink, so that every
row and every rejection names the original message.
"""

from __future__ import annotations

import zlib
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
#: default partitioner hash the key, key, value, headers, timestamp in ms or None
#: for now).
Outgoing = tuple[str, int | None, bytes | None, bytes, list[tuple[str, bytes]], int | None]


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
    #: The event's fields, as its canonical JSON gives them.
    fields: dict[str, Any]
    #: The site's message it came from, and that message's Kafka timestamp (ms).
    origin: Origin
    timestamp_ms: int | None
    #: The canonical JSON, content digest and the site's original bytes
    #: (``exnet.validated`` only).
    canonical: bytes = b""
    fingerprint: str = ""
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
    """The site's original message that a dead-letter message's headers name."""
    return Origin(
        headers[H.SOURCE_TOPIC].decode(),
        int(headers[H.SOURCE_PARTITION]),
        int(headers[H.SOURCE_OFFSET]),
    )


def validated_message(
    accepted: Accepted, original: bytes, timestamp_ms: int | None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Validate -> deduplicate: (key, value, headers) of an event that passed validation;
    its partition is :func:`validated_partition` of the key."""
    origin = accepted.origin
    assert origin is not None, "stream messages always have an origin"  # noqa: S101  # invariant
    headers = [
        (H.FINGERPRINT, accepted.fingerprint().encode()),
        (H.SOURCE, f"{origin.topic} {origin.partition} {origin.offset} {timestamp_ms}".encode()),
        (H.ORIGINAL, original),
    ]
    return accepted.event_id.encode(), accepted.canonical_json(), headers


def read_validated(key: bytes, value: bytes, headers: Headers) -> Received:
    """The message of :func:`validated_message` as deduplicate reads it."""
    named = dict(headers)
    topic, partition, offset, timestamp = named[H.SOURCE].decode().split(" ")
    fields = orjson.loads(value)
    return Received(
        key.decode(),
        fields["schema"].partition("/")[0],
        fields,
        Origin(topic, int(partition), int(offset)),
        None if timestamp == "None" else int(timestamp),
        value,
        named[H.FINGERPRINT].decode(),
        named[H.ORIGINAL],
    )


def accepted_message(record: Received) -> tuple[bytes, bytes]:
    """Deduplicate -> sinks: (key, value) of a deduplicated event; its partition is
    Kafka's default for the key (participant_id)."""
    origin = record.origin
    value = orjson.dumps(
        {
            "source": (origin.topic, origin.partition, origin.offset, record.timestamp_ms),
            "event": orjson.Fragment(record.canonical),
        }
    )
    return record.fields["participant_id"].encode(), value


def read_accepted(value: bytes) -> Received:
    """The message of :func:`accepted_message` as a sink reads it."""
    document = orjson.loads(value)
    fields = document["event"]
    topic, partition, offset, timestamp_ms = document["source"]
    return Received(
        fields["event_id"],
        fields["schema"].partition("/")[0],
        fields,
        Origin(topic, partition, offset),
        timestamp_ms,
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
    participant = str(record.fields.get("participant_id", ""))
    return deadletter_message(
        rejected, record.original, participant.encode(), rejected_at, record.timestamp_ms
    )

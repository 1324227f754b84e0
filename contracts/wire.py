"""The messages the stages exchange through Kafka: builders and readers, no I/O.

Every stage imports this module and none owns it (like the event contracts).
One Kafka message per event on every topic. The event travels as its fact row:
validate writes, once, the JSON that the sink hands ClickHouse unchanged
(``JSONEachRow``), so no later stage parses or re-serialises it. What the
later stages need to know of an event travels beside it in one header, the
*route*. The Kafka timestamp of the site's original message (publish time,
for the latency figures) rides in the route, never as the message's own
timestamp (an old one would expose it to early deletion by time-based
retention).

``exnet.validated`` (validate -> deduplicate), keyed by ``event_id`` and
partitioned by :func:`validated_partition`, so that every copy of an event
meets in one partition:
    value: :func:`fact_json` (the canonical event, its lineage, canonical units);
    headers: ``exnet-route`` (:class:`Route`) and ``exnet-original`` (the site's
    original bytes, needed if it proves a conflicting duplicate).

``exnet.accepted`` (deduplicate -> sinks), keyed by ``participant_id`` so that
all of a participant's events meet in one partition:
    value: the same bytes; headers: the same ``exnet-route``.

``exnet.deadletter``: the site's original bytes with SPEC §2's headers.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Final, NamedTuple

import orjson

from contracts import headers as H
from contracts.reasons import Reason
from contracts.topics import Topic
from contracts.units import to_canonical
from contracts.validation import Accepted, FieldIssue, Origin, Rejected

__all__ = [
    "DEADLETTER_MAX_ORIGINAL",
    "Headers",
    "OutMessage",
    "Outgoing",
    "Received",
    "Route",
    "accepted_message",
    "conflict_message",
    "deadletter_message",
    "fact_json",
    "local_date",
    "read_route",
    "read_validated",
    "sent_utc_offset",
    "source_origin",
    "uuid_bytes",
    "validated_message",
    "validated_partition",
]

#: Kafka headers as a list of (name, value) pairs, as clients take and give them.
Headers = Sequence[tuple[str, bytes]]
#: A message ready to produce: (physical topic, partition or None to let Kafka's
#: default partitioner hash the key, key, value (None: a tombstone), headers,
#: timestamp in ms or None for now).
Outgoing = tuple[str, int | None, bytes | None, bytes | None, list[tuple[str, bytes]], int | None]


def uuid_bytes(event_id: str) -> bytes:
    """The 16 bytes of a UUID's canonical text (``8-4-4-4-12`` hex digits, as
    :data:`contracts.envelope.EventId` stores an ``event_id``): how the stages' tables
    key an event compactly. Raises ValueError for anything else."""
    uid = bytes.fromhex(event_id.replace("-", ""))
    if len(uid) != 16:  # noqa: PLR2004  # a UUID's size
        raise ValueError(f"event_id {event_id!r} is no UUID")
    return uid


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
    #: None: a tombstone (only a dead-letter copy of a site's tombstone is one).
    value: bytes | None
    headers: list[tuple[str, bytes]]


#: Space-separated parts of an encoded :class:`Route` (its origin counts three).
_ROUTE_PARTS = 10


class Route(NamedTuple):
    """What the stages after validation know of an event without parsing it.

    Encoded as one header (``exnet-route``): its fields, space-separated, in
    this order (none of them can hold a space: patterns and topic names). A
    named tuple: one is read for every event, twice.
    """

    #: :meth:`~contracts.validation.Accepted.fingerprint` of the event: its content identity.
    fingerprint: str
    event_type: str
    participant_id: str
    node_id: str
    site_id: str
    #: ``occurred_at``, Unix seconds.
    occurred_s: float
    #: The site's message it came from, and that message's Kafka timestamp (ms).
    origin: Origin
    timestamp_ms: int | None

    def encode(self) -> bytes:
        origin = self.origin
        return (
            f"{self.fingerprint} {self.event_type} {self.participant_id} {self.node_id} "
            f"{self.site_id} {self.occurred_s!r} {origin.topic} {origin.partition} "
            f"{origin.offset} {self.timestamp_ms}"
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Route:
        """Raises ValueError for anything :meth:`encode` did not write."""
        fields = data.decode().split(" ")
        if len(fields) != _ROUTE_PARTS:
            raise ValueError(
                f"not an {H.ROUTE} header: {data[:80]!r}; messages of an earlier exnet on "
                "the internal topics? drain the pipeline (exnet up --drain) before upgrading"
            )
        fingerprint, event_type, participant, node, site, occurred, topic, partition, offset, ts = (
            fields
        )
        return cls(
            fingerprint,
            event_type,
            participant,
            node,
            site,
            float(occurred),
            Origin(topic, int(partition), int(offset)),
            None if ts == "None" else int(ts),
        )


@dataclass(slots=True)
class Received:
    """A message of ``exnet.validated`` or ``exnet.accepted`` as the next stage reads it."""

    event_id: str
    route: Route
    #: The route header as read (passed on unchanged).
    route_header: bytes
    #: :func:`fact_json` of the event.
    value: bytes
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
    """The site's original message that a dead-letter message's headers name."""
    return Origin(
        headers[H.SOURCE_TOPIC].decode(),
        int(headers[H.SOURCE_PARTITION]),
        int(headers[H.SOURCE_OFFSET]),
    )


#: ``occurred_at`` as a site wrote it, when it holds no escape (the usual case).
_OCCURRED_AT = re.compile(rb'"occurred_at"\s*:\s*"([^"\\]*)"')


def sent_utc_offset(original: bytes) -> int:
    """The UTC offset, in minutes east (``-300`` for ``-05:00``; ``Z`` is 0), that the
    site wrote ``occurred_at`` with, in ``original``: the bytes of a message the
    validator accepted (so ``occurred_at`` ends in ``Z`` or ``±hh:mm``).

    Read from the bytes, as the event itself holds the time in UTC (its canonical,
    comparable form); a value written with JSON escapes is read by parsing.
    """
    found = _OCCURRED_AT.search(original)
    text = found.group(1).decode() if found else orjson.loads(original)["occurred_at"]
    if text.endswith("Z"):
        return 0
    minutes = int(text[-5:-3]) * 60 + int(text[-2:])
    return -minutes if text[-6] == "-" else minutes


def local_date(occurred_at: datetime, offset_min: int, zone: tzinfo | None) -> date:
    """The day ``occurred_at`` fell on where it happened: in the site's IANA ``zone``
    (the registry's, SPEC §3) when known, else at the offset the site sent."""
    if zone is not None:
        return occurred_at.astimezone(zone).date()
    return (occurred_at + timedelta(minutes=offset_min)).date()


def fact_json(accepted: Accepted, canonical: bytes, local: tuple[int, date] | None = None) -> bytes:
    """The event's fact-table row as one JSON object, ``ingested_at`` aside (the sink's).

    ``canonical``: :meth:`~contracts.validation.Accepted.canonical_json` of
    ``accepted``; then, for assays, the value in the analyte's canonical unit
    (``value_canonical``, ``unit_canonical``); the UTC offset the site wrote
    ``occurred_at`` with and the local date it fell on (``utc_offset_min``,
    ``local_date``, from ``local``; omitted when None); and the lineage of the
    site's message (``source_topic``, ``source_partition``, ``source_offset``).
    The keys are the fact table's columns (SPEC §4).
    """
    origin = accepted.origin
    assert origin is not None, "stream messages always have an origin"  # noqa: S101  # invariant
    lineage: dict[str, Any] = {}
    if accepted.event_type == "assay":
        event = accepted.event.__dict__
        # Finite: the contract refuses a value its unit's factor would overflow.
        value, unit = to_canonical(event["analyte"], event["value"], event["unit"])
        lineage["value_canonical"] = value
        lineage["unit_canonical"] = unit
    if local is not None:
        lineage["utc_offset_min"] = local[0]
        lineage["local_date"] = local[1].isoformat()
    lineage["source_topic"] = origin.topic
    lineage["source_partition"] = origin.partition
    lineage["source_offset"] = origin.offset
    return canonical[:-1] + b"," + orjson.dumps(lineage)[1:]


def validated_message(
    accepted: Accepted,
    original: bytes,
    timestamp_ms: int | None,
    zones: Mapping[str, tzinfo] | None = None,
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Validate -> deduplicate: (key, value, headers) of an event that passed validation;
    its partition is :func:`validated_partition` of the key. ``zones``: site_id ->
    its time zone (the registry's), for the event's local date."""
    origin = accepted.origin
    assert origin is not None, "stream messages always have an origin"  # noqa: S101  # invariant
    canonical = accepted.canonical_json()
    event = accepted.event
    route = Route(
        accepted.fingerprint(canonical),
        event.EVENT_TYPE,
        event.participant_id,
        event.node_id,
        event.site_id,
        event.occurred_at.timestamp(),
        origin,
        timestamp_ms,
    )
    headers = [(H.ROUTE, route.encode()), (H.ORIGINAL, original)]
    offset = sent_utc_offset(original)
    zone = zones.get(event.site_id) if zones is not None else None
    local = (offset, local_date(event.occurred_at, offset, zone))
    return event.event_id.encode(), fact_json(accepted, canonical, local), headers


def read_validated(key: bytes, value: bytes, headers: Headers) -> Received:
    """The message of :func:`validated_message` as deduplicate reads it."""
    route = original = b""
    for name, header in headers:
        if name == H.ROUTE:
            route = header
        elif name == H.ORIGINAL:
            original = header
    return Received(key.decode(), Route.decode(route), route, value, original)


def accepted_message(record: Received) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Deduplicate -> sinks: (key, value, headers) of a deduplicated event; its
    partition is Kafka's default for the key (participant_id)."""
    return (
        record.route.participant_id.encode(),
        record.value,
        [(H.ROUTE, record.route_header)],
    )


def read_route(headers: Headers) -> Route:
    """The route of an ``exnet.accepted`` message (a sink needs its type and timestamp)."""
    for name, header in headers:
        if name == H.ROUTE:
            return Route.decode(header)
    raise ValueError(f"an exnet.accepted message without its {H.ROUTE} header")


#: The most of a rejected message's bytes its dead-letter message carries: a
#: ``too_large`` message that Kafka stored compressed may be far larger than any record
#: the dead-letter topic (2 MiB) or a producer batch (1 MiB) takes; sent whole, it
#: failed every delivery and stopped the stream worker at each start, on the same
#: message. 8x the contract's 64 KiB: enough for a site to see what it sent.
DEADLETTER_MAX_ORIGINAL: Final = 512 * 1024


def deadletter_message(
    rejected: Rejected,
    original: bytes | None,
    key: bytes | None,
    rejected_at: datetime,
    timestamp_ms: int | None,
) -> OutMessage:
    """A rejection: the original bytes, with SPEC §2's headers (a tombstone stays one:
    no value, not an empty one). An original over :data:`DEADLETTER_MAX_ORIGINAL` bytes
    is cut to them, with its length and SHA-256 in headers."""
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
    if original is not None and len(original) > DEADLETTER_MAX_ORIGINAL:
        headers += [
            (H.ORIGINAL_LENGTH, str(len(original)).encode()),
            (H.ORIGINAL_SHA256, hashlib.sha256(original).hexdigest().encode()),
        ]
        original = original[:DEADLETTER_MAX_ORIGINAL]
    return OutMessage(Topic.DEADLETTER, key, original, headers)


def conflict_message(record: Received, first: Origin, rejected_at: datetime) -> OutMessage:
    """Stage 2 -> dead letter: same event_id as an accepted event, other content."""
    issue = FieldIssue(
        "event_id",
        f"event {record.event_id} was already accepted with other content "
        f"(from {first.topic} partition {first.partition} offset {first.offset}); "
        "send a new event_id",
        "conflicting_duplicate",
    )
    route = record.route
    rejected = Rejected(Reason.CONFLICTING_DUPLICATE, (issue,), route.origin, record.event_id)
    return deadletter_message(
        rejected, record.original, route.participant_id.encode(), rejected_at, route.timestamp_ms
    )

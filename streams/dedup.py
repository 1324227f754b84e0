"""The pure deduplication stage: what to do with a validated event, given what was seen.

State per ``event_id``: the content fingerprint of the first accepted copy and
where that copy came from (its :class:`~contracts.Origin`). The origin tells a
*replay* (the same source message read again after a crash or rebalance, which
must flow on again: its first pass may not have reached the sink) from a
*duplicate* (another message carrying the same event).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Final, NamedTuple

from contracts import Origin
from contracts.topics import Topic
from contracts.wire import Outgoing, Received, accepted_message, conflict_message, uuid_bytes

__all__ = [
    "Decision",
    "DeduplicateStage",
    "Deduplicated",
    "Seen",
    "SeenTable",
    "decide",
    "remember",
]


class Decision(Enum):
    NEW = "new"  # first time: accept, remember
    REPLAY = "replay"  # the remembered message itself again: accept again (writes are idempotent)
    DUPLICATE = "duplicate"  # another message, same content: drop and count
    CONFLICT = "conflict"  # another message, other content: reject (conflicting_duplicate)


class Seen(NamedTuple):
    """What is remembered of an accepted event (the dedup table's value)."""

    #: :meth:`~contracts.validation.Accepted.fingerprint`: 32 hex digits.
    fingerprint: str
    origin: Origin


#: A remembered origin's topic as one byte, by the input topic it is under the
#: deployment's prefix. Append only: the codes are in every deployment's changelog.
#: 0: another topic, whose name follows in full.
_TOPIC_CODES: Final[dict[Topic, int]] = {
    Topic.ENROLLMENT: 1,
    Topic.SESSION: 2,
    Topic.ASSAY: 3,
    Topic.ASSESSMENT: 4,
}
UUID_BYTES: Final = 16
#: fingerprint (16 bytes), topic code, partition, offset; then the topic's name for code 0.
_PACKED = struct.Struct(">16sBIQ")


class SeenTable:
    """How the dedup table holds a :class:`Seen` per event_id: its keys and values.

    The key is the ``event_id``'s 16 UUID bytes; the value 29 bytes, packed:
    the fingerprint's 16 bytes, the origin's topic as one byte (its name
    follows only for a topic that is not one of the four inputs), partition
    (4 bytes) and offset (8), big-endian. About 60 bytes an event less, in
    memory, than the first layout (measured over a million events: 207 MB of
    keys, values and dict against 162), which this reads still: key the
    ``event_id``'s text, value ``<fingerprint>|<topic>|<partition>|<offset>``.
    A table may hold both: a deployment's state carries over.

    ``topic_prefix``: the deployment's ``EXNET_TOPIC_PREFIX``.
    """

    def __init__(self, topic_prefix: str = "") -> None:
        self._codes = {f"{topic_prefix}{topic.value}": code for topic, code in _TOPIC_CODES.items()}
        self._names = {code: name for name, code in self._codes.items()}

    def get(self, table: Mapping[bytes, bytes], event_id: str) -> tuple[bytes, Seen | None]:
        """``event_id``'s key in this layout, and its remembered copy from either layout."""
        key = _uuid_bytes(event_id)
        if key is not None:
            stored = table.get(key)
            if stored is not None:
                return key, self.decode(stored)
        text = event_id.encode()
        legacy = table.get(text)
        return key or text, self.decode_text(legacy) if legacy is not None else None

    def encode(self, key: bytes, seen: Seen) -> bytes:
        """``seen`` as the value under ``key`` (from :meth:`get`)."""
        topic, partition, offset = seen.origin
        if len(key) != UUID_BYTES:  # an event_id that is not a UUID: the first layout
            return f"{seen.fingerprint}|{topic}|{partition}|{offset}".encode()
        code = self._codes.get(topic, 0)
        packed = _PACKED.pack(bytes.fromhex(seen.fingerprint), code, partition, offset)
        return packed if code else packed + topic.encode()

    def decode(self, data: bytes) -> Seen:
        """A value of this layout."""
        digest, code, partition, offset = _PACKED.unpack_from(data)
        topic = self._names[code] if code else data[_PACKED.size :].decode()
        return Seen(digest.hex(), Origin(topic, partition, offset))

    @staticmethod
    def decode_text(data: bytes) -> Seen:
        """A value of the first layout."""
        fingerprint, topic, partition, offset = data.decode().rsplit("|", 3)
        return Seen(fingerprint, Origin(topic, int(partition), int(offset)))


def _uuid_bytes(event_id: str) -> bytes | None:
    """:func:`~contracts.wire.uuid_bytes`; None for anything else (not on
    ``exnet.validated``, whose keys the validator wrote)."""
    try:
        return uuid_bytes(event_id)
    except ValueError:
        return None


def decide(prior: Seen | None, incoming: Seen) -> Decision:
    """The decision for ``incoming`` given the remembered copy of its event_id."""
    if prior is None:
        return Decision.NEW
    if prior.origin == incoming.origin:
        return Decision.REPLAY
    if prior.fingerprint == incoming.fingerprint:
        return Decision.DUPLICATE
    return Decision.CONFLICT


def remember(
    table: MutableMapping[bytes, bytes], layout: SeenTable, event_id: str, incoming: Seen
) -> tuple[Decision, Seen | None]:
    """:func:`decide` against ``table`` (held as ``layout`` says), and remember
    ``incoming`` when it is new; returns the decision and the prior copy.

    Only the first accepted copy is ever remembered: a duplicate or a conflict
    never replaces it, so the same conflicting message read again is again a
    conflict, and a replay of the first copy is still told from other copies.
    """
    key, prior = layout.get(table, event_id)
    decision = decide(prior, incoming)
    if decision is Decision.NEW:
        table[key] = layout.encode(key, incoming)
    return decision, prior


# --- the stage over a batch ------------------------------------------------------------


@dataclass
class Deduplicated:
    """What one batch of validated events produced, and its counts for the metrics."""

    outgoing: list[Outgoing] = field(default_factory=list)
    #: event type -> events passed on (new, and replays of the first copy).
    accepted: Counter[str] = field(default_factory=Counter)
    #: event type -> exact duplicates dropped.
    duplicates: Counter[str] = field(default_factory=Counter)
    #: (node_id, site_id) -> conflicting duplicates rejected.
    conflicts: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (node_id, site_id) -> accepted events, and the newest occurred_at (Unix s).
    per_site: Counter[tuple[str, str]] = field(default_factory=Counter)
    newest: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class DeduplicateStage:
    """Deduplicates batches of one partition of ``exnet.validated`` against its table."""

    accepted_topic: str
    deadletter_topic: str
    #: The deployment's ``EXNET_TOPIC_PREFIX`` (how the table packs an origin's topic).
    topic_prefix: str = ""
    layout: SeenTable = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", SeenTable(self.topic_prefix))  # frozen

    def __call__(
        self, records: Sequence[Received], table: MutableMapping[bytes, bytes], now: datetime
    ) -> Deduplicated:
        """``table``: event_id -> its first accepted copy, as :class:`SeenTable` holds
        it; written for new events only (see :func:`remember`)."""
        result = Deduplicated()
        out = result.outgoing
        layout = self.layout
        for record in records:
            route = record.route
            incoming = Seen(route.fingerprint, route.origin)
            decision, prior = remember(table, layout, record.event_id, incoming)
            if decision is Decision.DUPLICATE:
                result.duplicates[route.event_type] += 1
                continue
            if decision is Decision.CONFLICT:
                assert prior is not None  # noqa: S101  # a conflict has a prior by definition
                dead = conflict_message(record, prior.origin, now)
                out.append((self.deadletter_topic, None, dead.key, dead.value, dead.headers, None))
                result.conflicts[route.node_id, route.site_id] += 1
                continue
            key, value, headers = accepted_message(record)
            out.append((self.accepted_topic, None, key, value, headers, None))
            result.accepted[route.event_type] += 1
            site = (route.node_id, route.site_id)
            result.per_site[site] += 1
            if route.occurred_s > result.newest.get(site, 0.0):
                result.newest[site] = route.occurred_s
        return result

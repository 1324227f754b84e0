"""The pure deduplication stage: what to do with a validated event, given what was seen.

State per ``event_id``: the content fingerprint of the first accepted copy and
where that copy came from (its :class:`~contracts.Origin`). The origin tells a
*replay* (the same source message read again after a crash or rebalance, which
must flow on again: its first pass may not have reached the sink) from a
*duplicate* (another message carrying the same event).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import NamedTuple

from contracts import Origin
from contracts.wire import Outgoing, Received, accepted_message, conflict_message

__all__ = ["Decision", "DeduplicateStage", "Deduplicated", "Seen", "decide", "remember"]


class Decision(Enum):
    NEW = "new"  # first time: accept, remember
    REPLAY = "replay"  # the remembered message itself again: accept again (writes are idempotent)
    DUPLICATE = "duplicate"  # another message, same content: drop and count
    CONFLICT = "conflict"  # another message, other content: reject (conflicting_duplicate)


class Seen(NamedTuple):
    """What is remembered of an accepted event (the dedup table's value)."""

    fingerprint: str
    origin: Origin

    def encode(self) -> bytes:
        origin = self.origin
        return f"{self.fingerprint}|{origin.topic}|{origin.partition}|{origin.offset}".encode()

    @classmethod
    def decode(cls, data: bytes) -> Seen:
        fingerprint, topic, partition, offset = data.decode().rsplit("|", 3)
        return cls(fingerprint, Origin(topic, int(partition), int(offset)))


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
    table: MutableMapping[bytes, bytes], event_id: bytes, incoming: Seen
) -> tuple[Decision, Seen | None]:
    """:func:`decide` against ``table`` (event_id -> :meth:`Seen.encode`), and
    remember ``incoming`` when it is new; returns the decision and the prior copy.

    Only the first accepted copy is ever remembered: a duplicate or a conflict
    never replaces it, so the same conflicting message read again is again a
    conflict, and a replay of the first copy is still told from other copies.
    """
    stored = table.get(event_id)
    prior = Seen.decode(stored) if stored is not None else None
    decision = decide(prior, incoming)
    if decision is Decision.NEW:
        table[event_id] = incoming.encode()
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
    conflicts: int = 0
    #: (node_id, site_id) -> accepted events, and the newest occurred_at (Unix s).
    per_site: Counter[tuple[str, str]] = field(default_factory=Counter)
    newest: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class DeduplicateStage:
    """Deduplicates batches of one partition of ``exnet.validated`` against its table."""

    accepted_topic: str
    deadletter_topic: str

    def __call__(
        self, records: Sequence[Received], table: MutableMapping[bytes, bytes], now: datetime
    ) -> Deduplicated:
        """``table``: event_id -> :meth:`Seen.encode` of its first accepted copy; written
        for new events only (see :func:`remember`)."""
        result = Deduplicated()
        out = result.outgoing
        for record in records:
            route = record.route
            incoming = Seen(route.fingerprint, route.origin)
            decision, prior = remember(table, record.event_id.encode(), incoming)
            if decision is Decision.DUPLICATE:
                result.duplicates[route.event_type] += 1
                continue
            if decision is Decision.CONFLICT:
                assert prior is not None  # noqa: S101  # a conflict has a prior by definition
                dead = conflict_message(record, prior.origin, now)
                out.append((self.deadletter_topic, None, dead.key, dead.value, dead.headers, None))
                result.conflicts += 1
                continue
            key, value, headers = accepted_message(record)
            out.append((self.accepted_topic, None, key, value, headers, None))
            result.accepted[route.event_type] += 1
            site = (route.node_id, route.site_id)
            result.per_site[site] += 1
            if route.occurred_s > result.newest.get(site, 0.0):
                result.newest[site] = route.occurred_s
        return result

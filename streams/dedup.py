"""The pure deduplication stage: what to do with a validated event, given what was seen.

State per ``event_id``: the content fingerprint of the first accepted copy and
where that copy came from (its :class:`~contracts.Origin`). The origin tells a
*replay* (the same source message read again after a crash or rebalance, which
must flow on again: its first pass may not have reached the sink) from a
*duplicate* (another message carrying the same event).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from enum import Enum

from contracts import Origin

__all__ = ["Decision", "Seen", "decide", "remember"]


class Decision(Enum):
    NEW = "new"  # first time: accept, remember
    REPLAY = "replay"  # the remembered message itself again: accept again (writes are idempotent)
    DUPLICATE = "duplicate"  # another message, same content: drop and count
    CONFLICT = "conflict"  # another message, other content: reject (conflicting_duplicate)


@dataclass(frozen=True, slots=True)
class Seen:
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


def remember(table: MutableMapping[str, Seen], event_id: str, incoming: Seen) -> Decision:
    """:func:`decide`, and remember ``incoming`` when it is new.

    Only the first accepted copy is ever remembered: a duplicate or a conflict
    never replaces it, so the same conflicting message read again is again a
    conflict, and a replay of the first copy is still told from other copies.
    """
    decision = decide(table.get(event_id), incoming)
    if decision is Decision.NEW:
        table[event_id] = incoming
    return decision

"""The pure deduplication stage: what to do with a validated event, given what was seen.

State per ``event_id``: the content fingerprint of the first accepted copy and
where that copy came from (source topic, partition, offset). The origin tells
a *replay* (the same source message read again after a crash or rebalance,
which must flow on again: its first pass may not have reached the sink) from a
*duplicate* (another message carrying the same event).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Decision", "Seen", "decide"]


class Decision(Enum):
    NEW = "new"  # first time: accept, remember
    REPLAY = "replay"  # the remembered message itself again: accept again (writes are idempotent)
    DUPLICATE = "duplicate"  # another message, same content: drop and count
    CONFLICT = "conflict"  # another message, other content: reject (conflicting_duplicate)


@dataclass(frozen=True, slots=True)
class Seen:
    """What is remembered of an accepted event (the dedup table's value)."""

    fingerprint: str
    topic: str
    partition: int
    offset: int

    def encode(self) -> bytes:
        return f"{self.fingerprint}|{self.topic}|{self.partition}|{self.offset}".encode()

    @classmethod
    def decode(cls, data: bytes) -> Seen:
        fingerprint, topic, partition, offset = data.decode().rsplit("|", 3)
        return cls(fingerprint, topic, int(partition), int(offset))


def decide(prior: Seen | None, incoming: Seen) -> Decision:
    if prior is None:
        return Decision.NEW
    if (prior.topic, prior.partition, prior.offset) == (
        incoming.topic,
        incoming.partition,
        incoming.offset,
    ):
        return Decision.REPLAY
    if prior.fingerprint == incoming.fingerprint:
        return Decision.DUPLICATE
    return Decision.CONFLICT

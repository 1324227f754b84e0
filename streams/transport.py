"""Faust's aiokafka transport, made safe for partitions that have no committed offset yet.

faust-streaming 0.15 can commit past a message it never processed, and so
lose it, on a partition whose group has committed nothing yet (or offset 0):

1. During a rebalance the streams skip the messages they receive while flow
   is suspended (table recovery); ``Consumer.perform_seek`` then rewinds every
   partition to its committed offset so that they are read again. aiokafka's
   ``seek_to_committed`` does not move a partition that has no committed
   offset, so there the skipped messages are never read again.
2. ``Consumer._new_offset`` then commits the first run of acknowledged offsets
   it holds. Its check for a hole *before* that run is skipped when nothing
   was committed (and lets a hole of one offset through when something was).

Seen here as one missing event in about one of five runs of two workers that
start while sites publish (the first events of a partition, at offset 0).

So this transport's consumer (a) after every seek to committed offsets also
seeks the partitions with no committed offset to their beginning, which is
what ``auto_offset_reset=earliest`` means for them; and (b) commits nothing
for a partition while its lowest acknowledged offset lies beyond the first
offset not yet known to be processed: the highest of the committed offset and
the last offset ``_new_offset`` gave out (it forgets the offsets it gives out,
whether or not their commit then lands), or, with neither, the partition's
beginning. :func:`first_unprocessed` decides; it is unit-tested, and the
pipeline's fault tests check the whole under rebalances. A hold that lasts
(Faust can drop a message read again after a seek, when records fetched
before it arrive after it) reads the partition again from the held offset:
the stages treat what they read twice as replays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.imports import FactoryMapping

__all__ = ["SCHEME", "Consumer", "Transport", "first_unprocessed", "register"]

log = logging.getLogger(__name__)

#: The broker URL scheme that selects this transport: ``exnet-kafka://host:port``.
SCHEME = "exnet-kafka"
#: Seconds a partition's commits may be held before it is read again from the hole.
HOLD_REWIND_S = 5.0


def first_unprocessed(
    committed: int | None, given_out: int | None, beginning: int | None
) -> int | None:
    """The lowest offset of a partition not known to be processed, or None if unknown.

    ``committed``: Faust's committed offset (None or 0 when nothing was committed);
    ``given_out``: the last offset ``_new_offset`` returned since the last seek;
    ``beginning``: the partition's first offset, looked up when nothing was committed.
    """
    known = [offset for offset in (committed, given_out) if offset]
    return max(known) if known else beginning


class Consumer(faust_aiokafka.Consumer):
    """The aiokafka consumer with the two fixes above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Each assigned partition's beginning, for those with no committed offset.
        self._beginnings: dict[TP, int] = {}
        #: The last offset `_new_offset` gave out per partition, since the last seek.
        self._given_out: dict[TP, int] = {}
        #: (partition, held offset) -> when the hold began or the last rewind was asked.
        self._holding: dict[tuple[TP, int], float] = {}
        self._rewinds: set[asyncio.Task[None]] = set()

    async def perform_seek(self) -> None:
        await super().perform_seek()
        acking = self.app.topics.acks_enabled_for
        uncommitted = [
            tp
            for tp in self.assignment()
            if acking(tp.topic) and not self._committed_offset.get(tp)
        ]
        self._beginnings = {}
        self._given_out = {}  # everything after the committed offsets is read again
        self._holding = {}
        if not uncommitted:
            return
        beginnings: Mapping[TP, int] = await self.earliest_offsets(*uncommitted)
        await self.seek_wait(beginnings)  # also resets Faust's read offsets
        self._beginnings = dict(beginnings)

    def _new_offset(self, tp: TP) -> int | None:
        acked: Collection[int] = self._acked[tp]
        if acked:
            first = first_unprocessed(
                self._committed_offset[tp], self._given_out.get(tp), self._beginnings.get(tp)
            )
            if (
                first is not None
                and min(acked) > first
                and not self._gap[tp].overlaps_point(first)  # a hole Faust knows of
            ):
                self._hold(tp, first)
                return None
        offset: int | None = super()._new_offset(tp)
        if offset is not None:
            self._given_out[tp] = offset
        return offset

    def _hold(self, tp: TP, first: int) -> None:
        now = time.monotonic()
        since = self._holding.setdefault((tp, first), now)
        if since == now:
            log.info("holding %s's commits until offset %d is processed", tp, first)
        elif now - since >= HOLD_REWIND_S:
            self._holding[(tp, first)] = now
            log.warning("offset %d of %s was skipped: reading from it again", first, tp)
            task = asyncio.ensure_future(self.seek(tp, first))
            self._rewinds.add(task)
            task.add_done_callback(self._rewinds.discard)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


def register(transports: FactoryMapping[Any]) -> None:
    """Make :data:`SCHEME` URLs select :class:`Transport` (idempotent)."""
    transports.aliases[SCHEME] = f"{__name__}:Transport"

"""Stage 1, validate: one batch of a site topic's messages -> validated events and rejections.

Pure (no I/O): the agent hands it the records Kafka gave and produces what it
returns. Every message gets exactly one outcome (SPEC §2): a validated event
for ``exnet.validated``, keyed and partitioned by ``event_id`` so that every
copy of an event meets in one partition of stage 2, or its original bytes on
``exnet.deadletter`` with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contracts import Accepted, Origin, Validator, site_named_in
from contracts.wire import Outgoing, deadletter_message, validated_message, validated_partition

__all__ = ["ValidateStage", "Validated"]


@dataclass
class Validated:
    """What one batch produced, and its counts for the metrics and the guard."""

    outgoing: list[Outgoing] = field(default_factory=list)
    received: int = 0
    #: reason -> rejected messages.
    rejected: Counter[str] = field(default_factory=Counter)
    #: site the message names (None: none) -> accepted messages.
    accepted_by_site: Counter[str | None] = field(default_factory=Counter)
    #: (site the message names, reason) -> rejected messages.
    rejected_by_site: Counter[tuple[str | None, str]] = field(default_factory=Counter)

    def by_site(self) -> dict[str | None, tuple[int, int]]:
        """site -> (received, rejected): what the invalid-ratio guard watches."""
        rejected: Counter[str | None] = Counter()
        for (site, _), count in self.rejected_by_site.items():
            rejected[site] += count
        return {
            site: (self.accepted_by_site[site] + rejected[site], rejected[site])
            for site in self.accepted_by_site.keys() | rejected.keys()
        }


@dataclass(frozen=True)
class ValidateStage:
    """Validates batches against the contracts and the registry (one per worker)."""

    validator: Validator
    #: Physical names of the output topics.
    validated_topic: str
    deadletter_topic: str
    #: Partitions of ``exnet.validated`` (every worker must agree on them).
    validated_partitions: int

    def __call__(
        self, topic: str, partition: int, records: Sequence[Any], now: datetime
    ) -> Validated:
        """``records``: Kafka records (``offset``, ``timestamp`` ms, ``key``, ``value``)
        read from ``topic``/``partition``; ``now``: processing time (aware)."""
        result = Validated(received=len(records))
        validate = self.validator.validate_message
        out = result.outgoing
        accepted_by_site = result.accepted_by_site
        for record in records:
            value = record.value
            outcome = validate(value, record.key, Origin(topic, partition, record.offset), now)
            if isinstance(outcome, Accepted):
                key, fact, headers = validated_message(
                    outcome, value, record.timestamp, self.validator.site_zones
                )
                partition_out = validated_partition(key, self.validated_partitions)
                out.append((self.validated_topic, partition_out, key, fact, headers, None))
                accepted_by_site[outcome.event.site_id] += 1
            else:
                result.rejected[outcome.reason.value] += 1
                result.rejected_by_site[site_named_in(value), outcome.reason.value] += 1
                dead = deadletter_message(outcome, value, record.key, now, record.timestamp)
                out.append((self.deadletter_topic, None, dead.key, dead.value, dead.headers, None))
        return result

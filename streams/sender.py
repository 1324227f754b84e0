"""Producing a stream batch's output with aiokafka's batch API: one record batch per partition.

``AIOKafkaProducer.send`` costs tens of microseconds per message (partitioning,
a future, accumulator bookkeeping); a stage produces one message per input, so
that was a large share of the stage's time. Grouping a batch's messages per
partition and handing each group over as one record batch keeps the order
within every partition and does the bookkeeping once per group.

Delivery is unchanged: the batches go through the same producer, which Faust
flushes before it commits the input offsets.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from aiokafka.partitioner import murmur2

__all__ = ["BatchSender", "Outgoing"]

#: (physical topic, partition or None to hash the key, key, value, headers)
Outgoing = tuple[str, int | None, bytes | None, bytes, list[tuple[str, bytes]]]


class BatchSender:
    """Sends groups of messages through one aiokafka producer, keyed like Kafka's default."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._partitions: dict[str, int] = {}

    async def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = len(await self._producer.partitions_for(topic))
            self._partitions[topic] = count
        return count

    async def partition_for(self, topic: str, key: str) -> int:
        """A stable partition of ``topic`` for ``key``, for topics only exnet reads and writes.

        CRC-32 (in C) rather than Kafka's murmur2 (pure Python in the clients):
        what matters is that every worker maps a key to the same partition.
        """
        count = await self._partition_count(topic)
        return zlib.crc32(key.encode()) % count

    async def send_all(self, messages: Iterable[Outgoing]) -> None:
        """Hand every message to the producer (returns once enqueued, not delivered)."""
        groups: dict[tuple[str, int], list[Outgoing]] = defaultdict(list)
        for message in messages:
            topic, partition, key, _, _ = message
            if partition is None:
                # Kafka's default partitioner: murmur2 of the key, positive, modulo.
                count = await self._partition_count(topic)
                partition = (murmur2(key or b"") & 0x7FFFFFFF) % count
            groups[(topic, partition)].append(message)
        producer = self._producer
        for (topic, partition), group in groups.items():
            batch = producer.create_batch()
            for _, _, key, value, headers in group:
                if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    await producer.send_batch(batch, topic, partition=partition)
                    batch = producer.create_batch()
                    if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                        raise ValueError(
                            f"a {len(value)}-byte message for {topic} exceeds the producer's "
                            "batch size"
                        )
            await producer.send_batch(batch, topic, partition=partition)

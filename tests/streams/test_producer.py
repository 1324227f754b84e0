"""The transport's producer against the real broker: order, coalescing, acknowledgement."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
import pytest
from faust.transport.drivers import TRANSPORTS
from kafka import KafkaConsumer, TopicPartition

from contracts.wire import Outgoing
from streams.transport import SCHEME, Producer, register
from tests.conftest import TopicFactory

pytestmark = pytest.mark.kafka

#: Small record batches, so that a partition's open batch fills and one delivery
#: spans several of them.
BATCH_BYTES = 16 * 1024


def _app(bootstrap: str, topic: str) -> faust.App:
    """An app with exnet's transport, whose producer's record batches are small."""
    register(TRANSPORTS)
    return faust.App(
        f"test-producer-{topic}",
        broker=f"{SCHEME}://{bootstrap}",
        producer_max_batch_size=BATCH_BYTES,
        producer_acks=-1,
    )


def _read_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    read: list[tuple[bytes, bytes]] = []
    for _ in range(100):
        for records in consumer.poll(timeout_ms=200).values():
            read.extend((record.key, record.value) for record in records)
        if len(read) >= expected:
            break
    consumer.close()
    return read


def test_deliveries_keep_their_order_and_complete_once_kafka_has_them(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=1)
    app = _app(kafka_bootstrap, topic)
    value = b"x" * 500

    def messages(agent: str, count: int) -> list[Outgoing]:
        return [(topic, 0, f"{agent}-{n}".encode(), value, [], None) for n in range(count)]

    async def run() -> list[Any]:
        producer = cast(Producer, app.producer)
        await producer.start()
        try:
            # Two agents deliver at once, each far more than one record batch holds,
            # while aiokafka still holds the partition's earlier batches.
            first, second = await asyncio.gather(
                producer.deliver(messages("a", 300)), producer.deliver(messages("b", 300))
            )
            third = await producer.deliver(messages("c", 5))
            return list(await asyncio.wait_for(asyncio.gather(first, second, third), 60))
        finally:
            await producer.stop()

    acknowledged = asyncio.run(run())
    assert len(acknowledged) == 3  # every delivery's future completed without error

    read = _read_all(kafka_bootstrap, topic, 605)
    keys = [key.decode() for key, _ in read]
    assert len(keys) == 605 and len(set(keys)) == 605  # each message once
    assert all(v == value for _, v in read)
    for agent, count in (("a", 300), ("b", 300), ("c", 5)):
        # each agent's messages arrive in the order it delivered them
        assert [k for k in keys if k.startswith(f"{agent}-")] == [
            f"{agent}-{n}" for n in range(count)
        ]
    # the later delivery follows both earlier ones
    assert keys[-5:] == [f"c-{n}" for n in range(5)]


def test_a_flush_returns_once_kafka_acknowledged_every_delivery(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """Faust's flush before a rebalance's recovery: open batches aiokafka has not taken
    (several per partition here) are acknowledged by the time it returns."""
    topic = topic_factory(partitions=2)
    app = _app(kafka_bootstrap, topic)
    value = b"y" * 500

    async def run() -> tuple[bool, int]:
        producer = cast(Producer, app.producer)
        await producer.start()
        try:
            deliveries = [
                await producer.deliver(
                    [(topic, n % 2, f"{n}".encode(), value, [], None) for n in range(200)]
                )
                for _ in range(3)
            ]
            pending = sum(not delivery.done() for delivery in deliveries)
            await asyncio.wait_for(producer.flush(), 60)
            return all(delivery.done() for delivery in deliveries), pending
        finally:
            await producer.stop()

    all_done, pending_before = asyncio.run(run())
    assert pending_before > 0  # the flush had something to wait for
    assert all_done
